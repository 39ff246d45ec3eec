//! nftables backend: tables `inet istio-ambient-nat` and `inet istio-ambient-mangle`
//! (`reference/istio-rules.md` §6), both families in each, replaced together by one `nft -f`
//! script (`add table` + `delete table` + the full table = one atomic transaction).
//!
//! Idempotence: nft prints rules in its own normalised form (`0x00000fff`, `127.0.0.1`, ...),
//! so the expected listing is learnt rather than predicted: the script is loaded once into a
//! throwaway network namespace and listed back (`nft -s`, without counters). That listing is
//! cached per script for the life of the process, so every pod with the same options costs one
//! probe in total, and a freshly started daemon still recognises the tables it wrote before.
//! A pod's tables equal to it → `Unchanged`, nothing written; otherwise the tables are replaced.
//! Each table also carries a comment with a hash of its rules, so people can tell ours apart.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use super::exec::{run, run_ok};
use super::model::{Action, AddrMatch, Chain, MarkMatch, OwnerKind, Proto, Rule, RuleSet, Table};
use super::{ApplyOutcome, Families, Family, InstalledSection, RulesError};
use crate::capture::CaptureOptions;
use crate::netns::NetNs;

/// nat table name.
pub const NAT_TABLE: &str = "istio-ambient-nat";
/// mangle table name.
pub const MANGLE_TABLE: &str = "istio-ambient-mangle";
/// Istio's DNS table; removed as a leftover until we capture DNS ourselves.
pub const RAW_TABLE: &str = "istio-ambient-raw";
const ALL_TABLES: [&str; 3] = [NAT_TABLE, MANGLE_TABLE, RAW_TABLE];

/// Our tables as listed, by name.
type Listing = BTreeMap<String, String>;

pub(super) fn chain_name(chain: Chain) -> &'static str {
    match chain {
        Chain::Prerouting => "istio-prerouting",
        Chain::Output => "istio-output",
    }
}

/// One rule in nft syntax for an `inet` table.
pub fn render_rule(rule: &Rule, family: Family) -> String {
    let (ip, nfproto) = match family {
        Family::V4 => ("ip", "ipv4"),
        Family::V6 => ("ip6", "ipv6"),
    };
    let mut out: Vec<String> = Vec::new();
    let addr = |dir: &str, a: &AddrMatch| {
        let op = if a.negate { "!= " } else { "" };
        format!("{ip} {dir} {op}{}", a.net)
    };
    out.extend(rule.src.as_ref().map(|a| addr("saddr", a)));
    out.extend(rule.dst.as_ref().map(|a| addr("daddr", a)));
    // An address match implies the family; without one, say it, so a v4 rule stays v4.
    if rule.src.is_none() && rule.dst.is_none() {
        out.push(format!("meta nfproto {nfproto}"));
    }
    if let Some(iface) = rule.out_iface {
        out.push(format!("oifname \"{iface}\""));
    }
    match rule.proto {
        Proto::Any => {}
        Proto::Tcp | Proto::TcpPort(None) => out.push("meta l4proto tcp".into()),
        Proto::TcpPort(Some((port, negate))) => {
            out.push(format!(
                "tcp dport {}{port}",
                if negate { "!= " } else { "" }
            ));
        }
        // Sidecar-set rule kinds (only rendered here so the model stays one; the sidecar set
        // itself is installed with iptables only, see `sidecar.rs`).
        Proto::UdpPort(None) => out.push("meta l4proto udp".into()),
        Proto::UdpPort(Some((port, negate))) => {
            out.push(format!(
                "udp dport {}{port}",
                if negate { "!= " } else { "" }
            ));
        }
    }
    if let Some(o) = &rule.owner {
        let key = match o.kind {
            OwnerKind::Uid => "skuid",
            OwnerKind::Gid => "skgid",
        };
        let op = if o.negate { "!= " } else { "" };
        out.push(format!("meta {key} {op}{}", o.id));
    }
    let mark = |what: &str, m: &MarkMatch| {
        let op = if m.negate { "!=" } else { "==" };
        format!("{what} & {:#x} {op} {:#x}", m.mask, m.value)
    };
    out.extend(rule.mark.as_ref().map(|m| mark("meta mark", m)));
    out.extend(rule.connmark.as_ref().map(|m| mark("ct mark", m)));
    out.push("counter".into());
    out.push(match rule.action {
        Action::Accept => "accept".into(),
        Action::Redirect(port) => format!("redirect to :{port}"),
        Action::SetConnmark { value, mask } => {
            format!("ct mark set ct mark & {:#x} | {:#x}", !mask, value & mask)
        }
        Action::RestoreMark => "meta mark set ct mark".into(),
        Action::Return => "return".into(),
        // Istio's nft chain names are its iptables ones in lower case with dashes.
        Action::Jump(chain) => format!("jump {}", chain.to_lowercase().replace('_', "-")),
    });
    out.join(" ")
}

/// 64-bit FNV-1a: stable across builds, unlike std's hasher; only labels tables.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Chains of one table (rules of every family, v4 first) and its comment hash.
fn render_table(sets: &[RuleSet], table: Table) -> String {
    let (name, pre_type, out_type, pre_prio, out_prio) = match table {
        Table::Nat => (NAT_TABLE, "nat", "nat", "dstnat", "-100"),
        Table::Mangle => (MANGLE_TABLE, "filter", "route", "mangle", "mangle"),
    };
    let mut chains = String::new();
    for chain in [Chain::Prerouting, Chain::Output] {
        chains.push_str(&format!("\tchain {} {{\n", chain_name(chain)));
        for set in sets {
            for rule in set.rules(table, chain) {
                chains.push_str(&format!("\t\t{}\n", render_rule(rule, set.family)));
            }
        }
        chains.push_str("\t}\n");
    }
    format!(
        "table inet {name} {{\n\
         \tcomment \"ambit {hash:016x}\"\n\
         \tchain prerouting {{\n\
         \t\ttype {pre_type} hook prerouting priority {pre_prio}; policy accept;\n\
         \t\tjump istio-prerouting\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype {out_type} hook output priority {out_prio}; policy accept;\n\
         \t\tjump istio-output\n\
         \t}}\n\
         {chains}}}\n",
        hash = fnv1a(&chains),
    )
}

/// The whole `nft -f` script: drop our tables (and Istio's DNS leftover) and recreate them, in
/// one transaction. `add` before `delete` makes the delete succeed when a table is absent.
pub fn render_script(sets: &[RuleSet]) -> String {
    let mut out = String::new();
    for name in ALL_TABLES {
        out.push_str(&format!(
            "add table inet {name}\ndelete table inet {name}\n"
        ));
    }
    out.push_str(&render_table(sets, Table::Nat));
    out.push_str(&render_table(sets, Table::Mangle));
    out
}

/// Our tables in an `nft list ruleset inet` dump, by name.
fn parse_listing(dump: &str) -> Listing {
    let mut tables = Listing::new();
    let mut current: Option<(String, String)> = None;
    for line in dump.lines() {
        if let Some(rest) = line.strip_prefix("table inet ") {
            let name = rest.trim_end_matches(" {").trim();
            current = ALL_TABLES
                .contains(&name)
                .then(|| (name.to_string(), String::new()));
        }
        if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
        if line == "}" {
            if let Some((name, text)) = current.take() {
                tables.insert(name, text);
            }
        }
    }
    tables
}

/// Lists our tables; `stateless` leaves counter values out (for comparisons).
fn list(ns: &NetNs, stateless: bool) -> Result<Listing, RulesError> {
    let args: &[&str] = match stateless {
        true => &["-s", "list", "ruleset", "inet"],
        false => &["list", "ruleset", "inet"],
    };
    Ok(parse_listing(&run_ok(ns, "nft", args, None)?))
}

fn load(ns: &NetNs, script: &str) -> Result<(), RulesError> {
    run_ok(ns, "nft", &["-f", "/dev/stdin"], Some(script)).map(drop)
}

/// A new, empty network namespace held only by the returned handle: `unshare` on a
/// short-lived thread (only that thread moves), then the thread's namespace file is opened.
fn scratch_netns() -> Option<NetNs> {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        NetNs::open("/proc/thread-self/ns/net").ok()
    })
    .join()
    .ok()
    .flatten()
}

fn cache() -> &'static Mutex<HashMap<String, Arc<Listing>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Listing>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn cached(script: &str) -> Option<Arc<Listing>> {
    let cache = cache().lock().unwrap_or_else(|e| e.into_inner());
    cache.get(script).cloned()
}

fn remember(script: &str, listing: Listing) -> Arc<Listing> {
    let mut cache = cache().lock().unwrap_or_else(|e| e.into_inner());
    // Distinct option sets are few; the bound only guards against unbounded growth.
    if cache.len() >= 256 {
        cache.clear();
    }
    let listing = Arc::new(listing);
    cache.insert(script.to_string(), listing.clone());
    listing
}

/// What nft lists after loading `script`, learnt in a scratch namespace. `None` if no scratch
/// namespace can be made (then the pod's tables are rewritten once and learnt from there).
pub(super) fn expected_listing(script: &str) -> Option<Arc<Listing>> {
    if let Some(listing) = cached(script) {
        return Some(listing);
    }
    let scratch = scratch_netns()?;
    load(&scratch, script).ok()?;
    Some(remember(script, list(&scratch, true).ok()?))
}

/// Installs the rules for the selected families (the other family gets no rules).
pub fn apply(
    ns: &NetNs,
    opts: &CaptureOptions,
    families: Families,
) -> Result<ApplyOutcome, RulesError> {
    let sets: Vec<RuleSet> = families.iter().map(|f| RuleSet::build(opts, f)).collect();
    let script = render_script(&sets);
    let expected = expected_listing(&script);
    let current = list(ns, true)?;
    if expected.as_deref() == Some(&current) {
        return Ok(ApplyOutcome::Unchanged);
    }
    load(ns, &script)?;
    let written = list(ns, true)?;
    match expected {
        Some(expected) if *expected != written => {
            return Err(RulesError::Verify {
                netns: ns.path().to_path_buf(),
                what: "nftables tables".into(),
                detail: format!("expected {expected:?}, found {written:?}"),
            })
        }
        Some(_) => {}
        None => {
            remember(&script, written);
        }
    }
    Ok(match current.is_empty() {
        true => ApplyOutcome::Installed,
        false => ApplyOutcome::Repaired,
    })
}

/// Deletes our tables present in `current`, all in one transaction.
fn remove_listed(ns: &NetNs, current: &Listing) -> Result<bool, RulesError> {
    if current.is_empty() {
        return Ok(false);
    }
    let mut script = String::new();
    for name in current.keys() {
        script.push_str(&format!(
            "add table inet {name}\ndelete table inet {name}\n"
        ));
    }
    load(ns, &script)?;
    Ok(true)
}

/// Deletes our tables; absent tables are fine.
pub fn remove(ns: &NetNs) -> Result<(), RulesError> {
    remove_listed(ns, &list(ns, true)?).map(drop)
}

/// Deletes our tables if `nft` works at all; `Ok(true)` if something was removed. Used when
/// the other backend is active, so a backend switch does not capture twice.
pub fn remove_if_available(ns: &NetNs) -> Result<bool, RulesError> {
    match run(ns, "nft", &["-s", "list", "ruleset", "inet"], None) {
        Ok(out) if out.success => remove_listed(ns, &parse_listing(&out.stdout)),
        _ => Ok(false),
    }
}

/// Our tables as installed (with counters), one section per table.
pub fn installed(ns: &NetNs) -> Result<Vec<InstalledSection>, RulesError> {
    Ok(list(ns, false)?
        .into_iter()
        .map(|(name, text)| InstalledSection {
            name: format!("inet {name}"),
            lines: text.lines().map(str::to_string).collect(),
        })
        .collect())
}
