//! Istio's classic **sidecar** redirect rules (REDIRECT mode, `reference/istio-rules.md` §1.2,
//! §1.5, annotations §2), built from the same rule model as the ambient set ([`Rule`]) and
//! rendered by the same iptables renderer, in `iptables-save` canonical form.
//!
//! Everything lives in the nat table: `ISTIO_INBOUND` (jumped to from `PREROUTING -p tcp`),
//! `ISTIO_IN_REDIRECT` (→ 15006), `ISTIO_OUTPUT` (jumped to from `OUTPUT`, all protocols) and
//! `ISTIO_REDIRECT` (→ 15001). The proxy's own traffic is told apart by socket owner (uid/gid),
//! not by mark.
//!
//! Applying is idempotent and atomic per family, like the ambient set: `iptables-save` is
//! compared with the expected rules; equal → nothing written; otherwise one
//! `iptables-restore --noflush` rewrites our chains and jumps and removes every other Istio
//! chain (`ISTIO_*` in nat, mangle and raw, e.g. an ambient set or a TPROXY leftover), as Istio's
//! own reconcile does (§3.6, `HasIstioLeftovers`).
//!
//! Only the iptables backend is supported (Istio's native nft sidecar tables `inet
//! istio-proxy-*`, §6, are not written); [`Backend::Nftables`] is refused with
//! [`RulesError::Unsupported`]. DNS capture (§1.4), TPROXY (§1.3), virtual and excluded
//! interfaces (`-k`, `-c`) and the owner-group env filters are not part of this set.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::exec::{run, run_ok};
use super::iptables::render_rule;
use super::model::{Action, OwnerKind, Proto, Rule};
use super::{
    nftables, ApplyOutcome, Backend, Families, Family, InstalledSection, RulesError, INBOUND_PORT,
    OUTBOUND_PORT, TUNNEL_PORT,
};
use crate::capture::{CaptureOptions, Selection};
use crate::netns::NetNs;

/// Inbound chain, jumped to from nat `PREROUTING` for TCP.
pub const INBOUND_CHAIN: &str = "ISTIO_INBOUND";
/// Inbound redirect to the proxy's inbound listener (15006).
pub const IN_REDIRECT_CHAIN: &str = "ISTIO_IN_REDIRECT";
/// Outbound chain, jumped to from nat `OUTPUT` for every protocol.
pub const OUTPUT_CHAIN: &str = "ISTIO_OUTPUT";
/// Outbound redirect to the proxy's outbound listener (15001).
pub const REDIRECT_CHAIN: &str = "ISTIO_REDIRECT";
/// Istio's proxy uid (and gid: the injector never passes `-g`, so GID = UID).
pub const PROXY_UID: u32 = 1337;
/// Istio's proxy gid.
pub const PROXY_GID: u32 = 1337;
/// Ports the injector puts before the pod's `excludeInboundPorts` (Envoy prometheus, health).
pub const LEADING_EXCLUDED_INBOUND_PORTS: [u16; 2] = [15090, 15021];
/// Agent status port, appended after the pod's `excludeInboundPorts` unless already listed.
pub const STATUS_PORT: u16 = 15020;
/// Source Envoy binds for inbound passthrough to the app (IPv4).
pub const PASSTHROUGH_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// Same for IPv6 (§1.5); Istio adds it to `lo`, which otherwise only has `::1`.
pub const PASSTHROUGH_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

/// Tables scanned for Istio chains (ours, and leftovers of other Istio modes).
const SCANNED_TABLES: [&str; 3] = ["nat", "mangle", "raw"];

/// The sidecar nat rules for one address family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarRuleSet {
    /// Family the addresses below belong to.
    pub family: Family,
    /// Rules appended to the built-in nat `PREROUTING` (the jump; none if inbound is off).
    pub prerouting: Vec<Rule>,
    /// Rules appended to the built-in nat `OUTPUT` (the jump).
    pub output: Vec<Rule>,
    /// `ISTIO_INBOUND`.
    pub inbound: Vec<Rule>,
    /// `ISTIO_REDIRECT`.
    pub redirect: Vec<Rule>,
    /// `ISTIO_IN_REDIRECT`.
    pub in_redirect: Vec<Rule>,
    /// `ISTIO_OUTPUT`.
    pub istio_output: Vec<Rule>,
}

fn host(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

fn tcp_port(port: u16, negate: bool) -> Proto {
    Proto::TcpPort(Some((port, negate)))
}

/// The `-d` list istio-init gets: `15090,15021,<excludeInboundPorts>` plus the status port
/// 15020 if not already listed (injector `excludeInboundPort`). Later duplicates are dropped;
/// istio-init would write a second identical RETURN for, say, a pod listing 15090 itself
/// (harmless either way). The CNI plugin path (§1.6) orders them `<pod's>,15020,15021,15090`
/// instead; we follow the injector/istio-init order of the §1.2 golden listing.
pub fn excluded_inbound_ports(opts: &CaptureOptions) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    let all = LEADING_EXCLUDED_INBOUND_PORTS
        .iter()
        .chain(&opts.exclude_inbound_ports)
        .chain(std::iter::once(&STATUS_PORT));
    for &p in all {
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    ports
}

impl SidecarRuleSet {
    /// Istio's sidecar nat rules (REDIRECT mode) for `opts`, keeping only the address ranges of
    /// `family`, with the proxy running as `proxy_uid`/`proxy_gid` (Istio: 1337/1337).
    pub fn build(
        opts: &CaptureOptions,
        family: Family,
        proxy_uid: u32,
        proxy_gid: u32,
    ) -> SidecarRuleSet {
        let (lo, passthrough) = match family {
            Family::V4 => (
                host(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                host(IpAddr::V4(PASSTHROUGH_SOURCE_V4)),
            ),
            Family::V6 => (
                host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                host(IpAddr::V6(PASSTHROUGH_SOURCE_V6)),
            ),
        };
        let of_family = |net: &&IpNet| Family::of(net) == family;
        let ret = || Rule::new(Action::Return);
        let to_in_redirect = || Rule::new(Action::Jump(IN_REDIRECT_CHAIN));
        let to_redirect = || Rule::new(Action::Jump(REDIRECT_CHAIN));

        // Inbound. The 15008 RETURN is written first and always (even with inbound off).
        let mut inbound = vec![ret().proto(tcp_port(TUNNEL_PORT, false))];
        let mut prerouting = Vec::new();
        let inbound_on = !matches!(&opts.include_inbound_ports, Selection::Only(p) if p.is_empty());
        if inbound_on {
            prerouting.push(Rule::new(Action::Jump(INBOUND_CHAIN)).proto(Proto::Tcp));
        }
        match &opts.include_inbound_ports {
            Selection::All => {
                for port in excluded_inbound_ports(opts) {
                    inbound.push(ret().proto(tcp_port(port, false)));
                }
                inbound.push(to_in_redirect().proto(Proto::Tcp));
            }
            // A port list ignores the exclusions, the default ones included (§1.2 variants).
            Selection::Only(ports) => {
                for &port in ports {
                    inbound.push(to_in_redirect().proto(tcp_port(port, false)));
                }
            }
        }
        let in_redirect = vec![Rule::new(Action::Redirect(INBOUND_PORT)).proto(Proto::Tcp)];
        let redirect = vec![Rule::new(Action::Redirect(OUTBOUND_PORT)).proto(Proto::Tcp)];

        // Outbound, in run.go's fixed order (§1.2 steps 1-9; steps 4 and 5 produce nothing
        // here: owner-group env filters at their defaults, no DNS capture).
        let output = vec![Rule::new(Action::Jump(OUTPUT_CHAIN))];
        let mut out = Vec::new();
        for &port in &opts.exclude_outbound_ports {
            out.push(ret().proto(tcp_port(port, false)));
            out.push(ret().proto(Proto::UdpPort(Some((port, false)))));
        }
        out.push(ret().src(passthrough).out_iface("lo"));
        // Istio checks both families' include lists (`HasLoopBackIP` of v4 || v6), so a
        // loopback include of either family drops the lo RETURNs in both rule sets. The
        // reference does not say per family or not; this is our reading of run.go.
        let lo_included = match &opts.include_outbound_ip_ranges {
            Selection::All => false,
            Selection::Only(nets) => nets.iter().any(|n| n.addr().is_loopback()),
        };
        for (kind, id) in [(OwnerKind::Uid, proxy_uid), (OwnerKind::Gid, proxy_gid)] {
            // The proxy calling its own pod IP over lo (app → VIP → proxy → own pod).
            out.push(
                to_in_redirect()
                    .dst(lo, true)
                    .out_iface("lo")
                    .proto(tcp_port(TUNNEL_PORT, true))
                    .owner(kind, id, false),
            );
            // App → app over lo: not captured.
            if !lo_included {
                out.push(ret().out_iface("lo").owner(kind, id, true));
            }
            // The proxy's own traffic, any protocol.
            out.push(ret().owner(kind, id, false));
        }
        out.push(ret().dst(lo, false));
        for &net in opts.exclude_outbound_ip_ranges.iter().filter(of_family) {
            out.push(ret().dst(net, false));
        }
        for &port in &opts.include_outbound_ports {
            out.push(to_redirect().proto(tcp_port(port, false)));
        }
        match &opts.include_outbound_ip_ranges {
            Selection::All => out.push(to_redirect()),
            Selection::Only(nets) => {
                for &net in nets.iter().filter(of_family) {
                    out.push(to_redirect().dst(net, false));
                }
            }
        }

        SidecarRuleSet {
            family,
            prerouting,
            output,
            inbound,
            redirect,
            in_redirect,
            istio_output: out,
        }
    }

    /// Our chains with their rules, in Istio's `-N` order.
    pub fn chains(&self) -> [(&'static str, &[Rule]); 4] {
        [
            (INBOUND_CHAIN, &self.inbound),
            (REDIRECT_CHAIN, &self.redirect),
            (IN_REDIRECT_CHAIN, &self.in_redirect),
            (OUTPUT_CHAIN, &self.istio_output),
        ]
    }

    /// The jumps from the built-in chains, as `-A` lines.
    pub fn jump_lines(&self) -> Vec<String> {
        let hooks = [("PREROUTING", &self.prerouting), ("OUTPUT", &self.output)];
        hooks
            .into_iter()
            .flat_map(|(hook, rules)| rules.iter().map(move |r| line(hook, r)))
            .collect()
    }

    /// Every rule as an `-A` line in `iptables-save` form: the jumps, then each chain.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = self.jump_lines();
        for (chain, rules) in self.chains() {
            lines.extend(rules.iter().map(|r| line(chain, r)));
        }
        lines
    }

    /// What `iptables-save` should show for nat.
    fn expected(&self) -> Found {
        let mut found = Found::default();
        for (chain, rules) in self.chains() {
            let lines = rules.iter().map(|r| line(chain, r)).collect();
            found.chains.insert(chain.to_string(), lines);
        }
        found.jumps = self.jump_lines();
        found.jumps.sort();
        found
    }
}

fn line(chain: &str, rule: &Rule) -> String {
    format!("-A {chain} {}", render_rule(rule))
}

/// The `iptables-restore --noflush` input that installs `set` into a namespace holding no
/// Istio rules: `*nat`, the chain declarations, the jumps, the chains' rules, `COMMIT`.
pub fn render_script(set: &SidecarRuleSet) -> String {
    render_restore(set, &Saved::default())
}

/// Istio chains (`ISTIO_*`) of one table, as found in `iptables-save` output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Found {
    /// Each Istio chain with its `-A` lines in order.
    chains: BTreeMap<String, Vec<String>>,
    /// Rules in other chains that jump to an Istio chain (`-A` lines), sorted.
    jumps: Vec<String>,
}

#[derive(Debug, Default)]
struct Saved {
    tables: BTreeMap<String, Found>,
}

fn is_istio(chain: &str) -> bool {
    chain.starts_with("ISTIO_")
}

/// Target of a rule (`-j X` or `-g X`), if any.
fn target(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" {
            return words.next();
        }
    }
    None
}

/// Strips a leading `[packets:bytes] ` (from `iptables-save -c`).
fn split_counters(line: &str) -> (Option<(u64, u64)>, &str) {
    let parsed = line.strip_prefix('[').and_then(|rest| {
        let (counts, rule) = rest.split_once("] ")?;
        let (p, b) = counts.split_once(':')?;
        Some(((p.parse().ok()?, b.parse().ok()?), rule))
    });
    match parsed {
        Some((c, rule)) => (Some(c), rule),
        None => (None, line),
    }
}

impl Saved {
    fn parse(dump: &str) -> Saved {
        let mut saved = Saved::default();
        let mut table: Option<&mut Found> = None;
        for line in dump.lines().map(str::trim_end) {
            if let Some(name) = line.strip_prefix('*') {
                let keep = SCANNED_TABLES.contains(&name);
                table = keep.then(|| saved.tables.entry(name.to_string()).or_default());
                continue;
            }
            let Some(found) = table.as_deref_mut() else {
                continue;
            };
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if is_istio(name) {
                    found.chains.entry(name.to_string()).or_default();
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let chain = rule.split_whitespace().next().unwrap_or_default();
                if is_istio(chain) {
                    let lines = found.chains.entry(chain.to_string()).or_default();
                    lines.push(line.to_string());
                } else if target(line).is_some_and(is_istio) {
                    found.jumps.push(line.to_string());
                }
            }
        }
        saved
            .tables
            .retain(|_, f| !f.chains.is_empty() || !f.jumps.is_empty());
        for found in saved.tables.values_mut() {
            found.jumps.sort();
        }
        saved
    }

    /// First difference from the expected state of `set`, if any.
    fn difference(&self, set: &SidecarRuleSet) -> Option<String> {
        let want = set.expected();
        let have = self.tables.get("nat").cloned().unwrap_or_default();
        if want != have {
            return Some(format!("table nat: expected {want:?}, found {have:?}"));
        }
        self.tables
            .keys()
            .find(|name| *name != "nat")
            .map(|name| format!("leftover Istio chains in table {name}"))
    }
}

fn delete_line(rule: &str) -> String {
    format!("-D {}\n", rule.strip_prefix("-A ").unwrap_or(rule))
}

/// Restore text removing every Istio chain of one table and every jump to them.
fn render_removal(table: &str, found: &Found, out: &mut String) {
    out.push_str(&format!("*{table}\n"));
    // Declaring flushes, so chains referring to each other can all be deleted.
    for chain in found.chains.keys() {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for jump in &found.jumps {
        out.push_str(&delete_line(jump));
    }
    for chain in found.chains.keys() {
        out.push_str(&format!("-X {chain}\n"));
    }
    out.push_str("COMMIT\n");
}

/// Restore text turning the saved state into the expected one, in one transaction.
fn render_restore(set: &SidecarRuleSet, saved: &Saved) -> String {
    let want = set.expected();
    let have = saved.tables.get("nat").cloned().unwrap_or_default();
    let ours = set.chains().map(|(c, _)| c);
    let leftovers: Vec<&String> = have
        .chains
        .keys()
        .filter(|c| !ours.contains(&c.as_str()))
        .collect();
    let mut out = String::from("*nat\n");
    for chain in ours
        .iter()
        .copied()
        .chain(leftovers.iter().map(|c| c.as_str()))
    {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    // Keep one of each expected jump where it is; delete duplicates and any other jump.
    let mut missing = set.jump_lines();
    for jump in &have.jumps {
        match missing.iter().position(|j| j == jump) {
            Some(i) => {
                missing.remove(i);
            }
            None => out.push_str(&delete_line(jump)),
        }
    }
    for jump in &missing {
        out.push_str(&format!("{jump}\n"));
    }
    for chain in ours {
        for line in want.chains.get(chain).into_iter().flatten() {
            out.push_str(&format!("{line}\n"));
        }
    }
    for chain in &leftovers {
        out.push_str(&format!("-X {chain}\n"));
    }
    out.push_str("COMMIT\n");
    for (name, found) in &saved.tables {
        if name != "nat" {
            render_removal(name, found, &mut out);
        }
    }
    out
}

fn save_tool(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables-save",
        Family::V6 => "ip6tables-save",
    }
}

fn restore(ns: &NetNs, family: Family, text: &str) -> Result<(), RulesError> {
    let tool = match family {
        Family::V4 => "iptables-restore",
        Family::V6 => "ip6tables-restore",
    };
    run_ok(ns, tool, &["--noflush", "-w", "5"], Some(text)).map(drop)
}

fn label(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

fn save(ns: &NetNs, family: Family) -> Result<Saved, RulesError> {
    Ok(Saved::parse(&run_ok(ns, save_tool(family), &[], None)?))
}

fn apply_family(ns: &NetNs, set: &SidecarRuleSet) -> Result<ApplyOutcome, RulesError> {
    let saved = save(ns, set.family)?;
    if saved.difference(set).is_none() {
        return Ok(ApplyOutcome::Unchanged);
    }
    restore(ns, set.family, &render_restore(set, &saved))?;
    if let Some(detail) = save(ns, set.family)?.difference(set) {
        return Err(RulesError::Verify {
            netns: ns.path().to_path_buf(),
            what: format!("{} sidecar rules", label(set.family)),
            detail,
        });
    }
    Ok(match saved.tables.is_empty() {
        true => ApplyOutcome::Installed,
        false => ApplyOutcome::Repaired,
    })
}

/// Removes every Istio chain and jump of one family; `Ok(true)` if there was any. A failing
/// save (no IPv6 in the kernel) means nothing can be there, unless `required`.
fn remove_family(ns: &NetNs, family: Family, required: bool) -> Result<bool, RulesError> {
    let saved = match save(ns, family) {
        Ok(saved) => saved,
        Err(e) if required => return Err(e),
        Err(_) => return Ok(false),
    };
    let mut text = String::new();
    for (name, found) in &saved.tables {
        render_removal(name, found, &mut text);
    }
    if text.is_empty() {
        return Ok(false);
    }
    restore(ns, family, &text)?;
    Ok(true)
}

/// `ip -6 addr add ::6/128 dev lo`, as istio-iptables does when IPv6 is on (§1.5): Envoy's
/// inbound passthrough binds `::6`, and IPv6 `lo` only has `::1`. Never removed (Istio keeps it
/// too; it is harmless without the rules).
fn ensure_passthrough_v6(ns: &NetNs) -> Result<ApplyOutcome, RulesError> {
    let addr = format!("{PASSTHROUGH_SOURCE_V6}/128");
    let shown = run_ok(ns, "ip", &["-6", "-o", "addr", "show", "dev", "lo"], None)?;
    if shown.contains(&format!("inet6 {addr} ")) {
        return Ok(ApplyOutcome::Unchanged);
    }
    let out = run(ns, "ip", &["-6", "addr", "add", &addr, "dev", "lo"], None)?;
    if !out.success && !out.stderr.contains("File exists") {
        out.check(ns)?;
    }
    Ok(ApplyOutcome::Installed)
}

fn refuse_nft(backend: Backend, what: &'static str) -> Result<(), RulesError> {
    match backend {
        Backend::Iptables => Ok(()),
        Backend::Nftables => Err(RulesError::Unsupported { backend, what }),
    }
}

/// Installs (or verifies, or repairs) Istio's sidecar rules for `opts` in `ns`, for the
/// selected families, with the proxy running as `proxy_uid`/`proxy_gid`.
///
/// Families not selected lose any Istio rules; Istio chains of other modes (ambient, TPROXY,
/// DNS) are removed in the same transaction, and so are ambit's ambient nft tables, so nothing
/// captures twice. Only [`Backend::Iptables`] is supported.
pub fn apply_sidecar(
    ns: &NetNs,
    backend: Backend,
    opts: &CaptureOptions,
    families: Families,
    proxy_uid: u32,
    proxy_gid: u32,
) -> Result<ApplyOutcome, RulesError> {
    refuse_nft(backend, "the sidecar rule set")?;
    let mut parts = Vec::new();
    if families.v6 {
        parts.push(ensure_passthrough_v6(ns)?);
    }
    for family in [Family::V4, Family::V6] {
        if families.contains(family) {
            let set = SidecarRuleSet::build(opts, family, proxy_uid, proxy_gid);
            parts.push(apply_family(ns, &set)?);
        } else if remove_family(ns, family, false)? {
            parts.push(ApplyOutcome::Repaired);
        }
    }
    if nftables::remove_if_available(ns)? {
        parts.push(ApplyOutcome::Repaired);
    }
    Ok(ApplyOutcome::combine(parts))
}

/// Removes every Istio chain (`ISTIO_*` in nat, mangle, raw) and every jump to one, both
/// families. Parts already gone are fine; IPv6 tools failing means nothing to remove there.
/// The ambient policy route is not touched (see [`super::remove`]).
pub fn remove_sidecar(ns: &NetNs, backend: Backend) -> Result<(), RulesError> {
    refuse_nft(backend, "the sidecar rule set")?;
    remove_family(ns, Family::V4, true)?;
    remove_family(ns, Family::V6, false)?;
    Ok(())
}

/// The Istio sidecar chains as installed, per family and table, in `iptables-save` form.
pub fn installed(ns: &NetNs) -> Result<Vec<InstalledSection>, RulesError> {
    let mut sections = Vec::new();
    for family in [Family::V4, Family::V6] {
        let saved = match save(ns, family) {
            Ok(saved) => saved,
            Err(e) if family == Family::V4 => return Err(e),
            Err(_) => continue,
        };
        for (name, found) in saved.tables {
            let mut lines: Vec<String> = found.chains.keys().map(|c| format!(":{c}")).collect();
            lines.extend(found.jumps);
            lines.extend(found.chains.into_values().flatten());
            sections.push(InstalledSection {
                name: format!("{} {name}", label(family)),
                lines,
            });
        }
    }
    Ok(sections)
}

/// One rule's packet and byte counters, from `iptables-save -c`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RuleCounter {
    /// `nat`, `mangle`, ...
    pub table: String,
    /// Chain the rule is in.
    pub chain: String,
    /// The rule as rendered, without `-A CHAIN` (same text as `iptables::render_rule`).
    pub rule: String,
    /// Packets matched.
    pub packets: u64,
    /// Bytes matched.
    pub bytes: u64,
}

/// Counters of every rule in an Istio chain or jumping to one (any table, ambient or sidecar),
/// in `iptables-save` order. Note nat rules only see the first packet of each connection.
pub fn counters(ns: &NetNs, family: Family) -> Result<Vec<RuleCounter>, RulesError> {
    let dump = run_ok(ns, save_tool(family), &["-c"], None)?;
    let mut out = Vec::new();
    let mut table = String::new();
    for line in dump.lines().map(str::trim_end) {
        if let Some(name) = line.strip_prefix('*') {
            table = name.to_string();
            continue;
        }
        let (counts, rest) = split_counters(line);
        let Some(rule) = rest.strip_prefix("-A ") else {
            continue;
        };
        let (chain, text) = rule.split_once(' ').unwrap_or((rule, ""));
        if !is_istio(chain) && !target(rest).is_some_and(is_istio) {
            continue;
        }
        let (packets, bytes) = counts.unwrap_or_default();
        out.push(RuleCounter {
            table: table.clone(),
            chain: chain.to_string(),
            rule: text.to_string(),
            packets,
            bytes,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> CaptureOptions {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("traffic.sidecar.istio.io/{k}"), v.to_string()))
            .collect();
        CaptureOptions::from_annotations(&map).unwrap()
    }

    fn lines(opts: &CaptureOptions, family: Family) -> Vec<String> {
        SidecarRuleSet::build(opts, family, PROXY_UID, PROXY_GID).lines()
    }

    /// §1.2 in `iptables-save` form (addresses with prefix, `-m tcp`, `-s`/`-d` before `-o`).
    const DEFAULT_V4: &[&str] = &[
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A OUTPUT -j ISTIO_OUTPUT",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
    ];

    #[test]
    fn default_v4_is_istio_golden() {
        let got = lines(&CaptureOptions::default(), Family::V4);
        assert_eq!(got, DEFAULT_V4);
        let set = SidecarRuleSet::build(&CaptureOptions::default(), Family::V4, 1337, 1337);
        assert_eq!(set.istio_output.len(), 9);
        let script = render_script(&set);
        let golden = format!(
            "*nat\n:ISTIO_INBOUND - [0:0]\n:ISTIO_REDIRECT - [0:0]\n:ISTIO_IN_REDIRECT - [0:0]\n\
             :ISTIO_OUTPUT - [0:0]\n{}\nCOMMIT\n",
            DEFAULT_V4.join("\n")
        );
        assert_eq!(script, golden);
    }

    #[test]
    fn default_v6_uses_v6_loopback_and_passthrough() {
        let want: Vec<String> = DEFAULT_V4
            .iter()
            .map(|l| {
                l.replace("127.0.0.6/32", "::6/128")
                    .replace("127.0.0.1/32", "::1/128")
            })
            .collect();
        assert_eq!(lines(&CaptureOptions::default(), Family::V6), want);
    }

    #[test]
    fn exclusions_and_inclusions_in_run_go_order() {
        let o = opts(&[
            ("excludeInboundPorts", "22,15020,15090"),
            ("excludeOutboundPorts", "25,53"),
            ("includeOutboundPorts", "3306"),
            ("excludeOutboundIPRanges", "10.96.0.0/12,fd00:10:96::/112"),
            ("includeOutboundIPRanges", "10.0.0.0/8,2001:db8::/32"),
        ]);
        let v4 = lines(&o, Family::V4);
        let inbound: Vec<_> = v4
            .iter()
            .filter(|l| l.starts_with("-A ISTIO_INBOUND"))
            .collect();
        assert_eq!(
            inbound,
            [
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
                "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
            ]
        );
        let out: Vec<_> = v4
            .iter()
            .filter(|l| l.starts_with("-A ISTIO_OUTPUT"))
            .collect();
        assert_eq!(
            out[..5],
            [
                "-A ISTIO_OUTPUT -p tcp -m tcp --dport 25 -j RETURN",
                "-A ISTIO_OUTPUT -p udp -m udp --dport 25 -j RETURN",
                "-A ISTIO_OUTPUT -p tcp -m tcp --dport 53 -j RETURN",
                "-A ISTIO_OUTPUT -p udp -m udp --dport 53 -j RETURN",
                "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
            ]
        );
        assert_eq!(
            out[11..],
            [
                "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-A ISTIO_OUTPUT -d 10.96.0.0/12 -j RETURN",
                "-A ISTIO_OUTPUT -p tcp -m tcp --dport 3306 -j ISTIO_REDIRECT",
                "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
            ]
        );
        let v6 = lines(&o, Family::V6);
        assert!(v6.contains(&"-A ISTIO_OUTPUT -d fd00:10:96::/112 -j RETURN".to_string()));
        assert!(v6.contains(&"-A ISTIO_OUTPUT -d 2001:db8::/32 -j ISTIO_REDIRECT".to_string()));
        assert!(!v6.iter().any(|l| l.contains("10.")), "{v6:?}");
    }

    #[test]
    fn inbound_port_list_empty_inbound_and_loopback_include() {
        let list = lines(&opts(&[("includeInboundPorts", "80,8080")]), Family::V4);
        let inbound: Vec<_> = list
            .iter()
            .filter(|l| l.contains("ISTIO_INBOUND"))
            .collect();
        assert_eq!(
            inbound,
            [
                "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 80 -j ISTIO_IN_REDIRECT",
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT",
            ]
        );
        let off = lines(&opts(&[("includeInboundPorts", "")]), Family::V4);
        assert!(!off.iter().any(|l| l.starts_with("-A PREROUTING")));
        assert!(off.contains(&"-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN".into()));
        assert_eq!(
            off.iter()
                .filter(|l| l.starts_with("-A ISTIO_INBOUND"))
                .count(),
            1
        );

        // A loopback include (either family) drops both `-o lo ! --owner` RETURNs.
        let lo = opts(&[("includeOutboundIPRanges", "127.0.0.0/8,10.0.0.0/8")]);
        // 127.0.0.6, 2 × (IN_REDIRECT, owner RETURN), localhost, then the v4 includes.
        for (family, count) in [(Family::V4, 6 + 2), (Family::V6, 6)] {
            let l = lines(&lo, family);
            assert!(!l.iter().any(|l| l.contains("-o lo -m owner !")), "{l:?}");
            let out = l.iter().filter(|l| l.starts_with("-A ISTIO_OUTPUT"));
            assert_eq!(out.count(), count, "{l:?}");
        }
        // No outbound capture at all: no redirect rule in ISTIO_OUTPUT.
        let none = lines(&opts(&[("includeOutboundIPRanges", "")]), Family::V4);
        assert!(!none.iter().any(|l| l.ends_with("-j ISTIO_REDIRECT")));
    }

    #[test]
    fn other_proxy_ids() {
        let set = SidecarRuleSet::build(&CaptureOptions::default(), Family::V4, 2000, 3000);
        let l = set.lines();
        assert!(l.contains(&"-A ISTIO_OUTPUT -m owner --uid-owner 2000 -j RETURN".into()));
        assert!(l.contains(&"-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 3000 -j RETURN".into()));
    }

    #[test]
    fn repair_replaces_ambient_chains_and_stray_jumps() {
        let dump = "*mangle\n:PREROUTING ACCEPT [0:0]\n:ISTIO_PRERT - [0:0]\n\
            -A PREROUTING -j ISTIO_PRERT\n-A ISTIO_PRERT -j ACCEPT\nCOMMIT\n\
            *nat\n:PREROUTING ACCEPT [0:0]\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n\
            -A PREROUTING -j ISTIO_PRERT\n-A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OUTPUT\n\
            -A ISTIO_OUTPUT -j ACCEPT\nCOMMIT\n*filter\n:ISTIO_X - [0:0]\nCOMMIT\n";
        let saved = Saved::parse(dump);
        assert_eq!(saved.tables.keys().collect::<Vec<_>>(), ["mangle", "nat"]);
        let set = SidecarRuleSet::build(&CaptureOptions::default(), Family::V4, 1337, 1337);
        assert!(saved.difference(&set).is_some());
        let text = render_restore(&set, &saved);
        assert!(text.starts_with(
            "*nat\n:ISTIO_INBOUND - [0:0]\n:ISTIO_REDIRECT - [0:0]\n:ISTIO_IN_REDIRECT - [0:0]\n\
             :ISTIO_OUTPUT - [0:0]\n:ISTIO_PRERT - [0:0]\n-D OUTPUT -j ISTIO_OUTPUT\n\
             -D PREROUTING -j ISTIO_PRERT\n-A PREROUTING -p tcp -j ISTIO_INBOUND\n"
        ), "{text}");
        assert!(text.contains("-X ISTIO_PRERT\nCOMMIT\n*mangle\n"), "{text}");
        assert!(text.ends_with("-D PREROUTING -j ISTIO_PRERT\n-X ISTIO_PRERT\nCOMMIT\n"));
        // Its own rendering reads back as equal.
        assert_eq!(Saved::parse(&render_script(&set)).difference(&set), None);
    }

    #[test]
    fn counter_prefix_parses() {
        assert_eq!(
            split_counters("[12:720] -A OUTPUT -j ISTIO_OUTPUT"),
            (Some((12, 720)), "-A OUTPUT -j ISTIO_OUTPUT")
        );
        assert_eq!(split_counters("-A X"), (None, "-A X"));
    }
}

/// Kernel tests: each in its own throwaway network namespace (root required).
#[cfg(test)]
mod kernel_tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;

    use super::super::testns::TestNs;
    use super::*;

    fn save(t: &TestNs, family: Family) -> String {
        t.exec(save_tool(family), &[])
    }

    /// Istio lines (`ISTIO_*` chains and jumps to them) of `iptables-save` output, per table.
    fn istio_lines(dump: &str) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut table = String::new();
        for line in dump.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.to_string();
            } else if line.starts_with("-A ") && line.contains("ISTIO_") {
                out.entry(table.clone()).or_default().push(line.to_string());
            }
        }
        out
    }

    /// What the kernel should list: the set's lines, grouped by chain in the listing's order.
    fn assert_installed_exactly(t: &TestNs, set: &SidecarRuleSet) {
        let saved = istio_lines(&save(t, set.family));
        assert_eq!(saved.keys().collect::<Vec<_>>(), ["nat"], "{saved:?}");
        let mut have = saved["nat"].clone();
        let mut want = set.lines();
        // iptables-save lists chain by chain; compare per chain, order within a chain kept.
        let key = |l: &String| l.split(' ').nth(1).unwrap_or_default().to_string();
        have.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(have, want, "{:?}", set.family);
    }

    #[test]
    fn apply_reapply_repair_remove() {
        let t = TestNs::new();
        let ns = &t.ns;
        // Someone else's rule in nat PREROUTING must survive everything below.
        t.exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-p",
                "udp",
                "--dport",
                "9999",
                "-j",
                "ACCEPT",
            ],
        );
        let opts = CaptureOptions::default();
        let apply = |opts: &CaptureOptions, fam| {
            apply_sidecar(ns, Backend::Iptables, opts, fam, PROXY_UID, PROXY_GID).unwrap()
        };
        assert_eq!(apply(&opts, Families::BOTH), ApplyOutcome::Installed);
        for family in [Family::V4, Family::V6] {
            assert_installed_exactly(&t, &SidecarRuleSet::build(&opts, family, 1337, 1337));
        }
        assert!(t
            .exec("ip", &["-6", "-o", "addr", "show", "dev", "lo"])
            .contains("inet6 ::6/128"));
        assert_eq!(apply(&opts, Families::BOTH), ApplyOutcome::Unchanged);

        // Drift: a rule deleted by hand and a duplicated jump.
        t.exec("iptables", &["-t", "nat", "-D", "ISTIO_OUTPUT", "3"]);
        t.exec(
            "ip6tables",
            &["-t", "nat", "-A", "OUTPUT", "-j", "ISTIO_OUTPUT"],
        );
        assert_eq!(apply(&opts, Families::BOTH), ApplyOutcome::Repaired);
        for family in [Family::V4, Family::V6] {
            assert_installed_exactly(&t, &SidecarRuleSet::build(&opts, family, 1337, 1337));
        }
        assert_eq!(apply(&opts, Families::BOTH), ApplyOutcome::Unchanged);

        // Other annotations: rewritten in place.
        let map: BTreeMap<String, String> = [
            ("excludeInboundPorts", "22"),
            ("includeOutboundPorts", "3306"),
            ("excludeOutboundPorts", "25"),
            ("excludeOutboundIPRanges", "10.96.0.0/12,fd00:10:96::/112"),
            ("includeOutboundIPRanges", "10.0.0.0/8,2001:db8::/32"),
        ]
        .into_iter()
        .map(|(k, v)| (format!("traffic.sidecar.istio.io/{k}"), v.to_string()))
        .collect();
        let annotated = CaptureOptions::from_annotations(&map).unwrap();
        assert_eq!(apply(&annotated, Families::BOTH), ApplyOutcome::Repaired);
        for family in [Family::V4, Family::V6] {
            assert_installed_exactly(&t, &SidecarRuleSet::build(&annotated, family, 1337, 1337));
        }
        assert_eq!(apply(&annotated, Families::BOTH), ApplyOutcome::Unchanged);
        let names: Vec<_> = installed(ns).unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["iptables nat", "ip6tables nat"]);

        // v4 only: the v6 rules go.
        assert_eq!(apply(&annotated, Families::V4), ApplyOutcome::Repaired);
        assert!(!save(&t, Family::V6).contains("ISTIO"));

        remove_sidecar(ns, Backend::Iptables).unwrap();
        for family in [Family::V4, Family::V6] {
            assert!(!save(&t, family).contains("ISTIO"), "{family:?}");
        }
        assert!(installed(ns).unwrap().is_empty());
        assert!(save(&t, Family::V4).contains("-A PREROUTING -p udp -m udp --dport 9999 -j ACCEPT"));
        remove_sidecar(ns, Backend::Iptables).unwrap();

        let err = apply_sidecar(ns, Backend::Nftables, &opts, Families::V4, 1337, 1337);
        let err = err.unwrap_err().to_string();
        assert!(err.contains("nftables backend does not support"), "{err}");
        assert!(remove_sidecar(ns, Backend::Nftables).is_err());
    }

    #[test]
    fn replaces_ambient_rules() {
        let t = TestNs::new();
        let opts = CaptureOptions::default();
        super::super::apply(&t.ns, Backend::Iptables, &opts, Families::BOTH).unwrap();
        assert!(save(&t, Family::V4).contains("ISTIO_PRERT"));
        assert_eq!(
            apply_sidecar(&t.ns, Backend::Iptables, &opts, Families::BOTH, 1337, 1337).unwrap(),
            ApplyOutcome::Repaired
        );
        for family in [Family::V4, Family::V6] {
            assert_installed_exactly(&t, &SidecarRuleSet::build(&opts, family, 1337, 1337));
        }
        super::super::route::remove(&t.ns).unwrap();
    }

    /// Packets of each ISTIO_OUTPUT / ISTIO_REDIRECT / ISTIO_IN_REDIRECT rule, in order.
    fn nat_counts(t: &TestNs) -> Vec<(String, String, u64)> {
        counters(&t.ns, Family::V4)
            .unwrap()
            .into_iter()
            .filter(|c| c.table == "nat" && c.chain != "ISTIO_INBOUND" && c.chain != "PREROUTING")
            .map(|c| (c.chain, c.rule, c.packets))
            .collect()
    }

    /// Rules whose packet counter went up, with by how much, sorted (chain order in
    /// `iptables-save` differs between the legacy and nft flavours).
    fn delta(before: &[(String, String, u64)], after: &[(String, String, u64)]) -> Vec<String> {
        assert_eq!(before.len(), after.len());
        before
            .iter()
            .zip(after)
            .filter(|(b, a)| a.2 != b.2)
            .map(|(b, a)| format!("{} {} +{}", a.0, a.1, a.2 - b.2))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    fn listen(t: &TestNs, addr: &str) -> TcpListener {
        let addr: SocketAddr = addr.parse().unwrap();
        t.ns.run(|| TcpListener::bind(addr)).unwrap().unwrap()
    }

    fn accept_one(l: &TcpListener) -> SocketAddr {
        l.set_nonblocking(false).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let local = s.local_addr().unwrap();
        s.write_all(b"x").unwrap();
        local
    }

    #[test]
    fn counters_follow_local_connections() {
        let t = TestNs::new();
        // A veth pair (no dummy driver on every test kernel) gives the pod an address and a
        // non-lo route.
        t.exec(
            "ip",
            &["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
        );
        t.exec("ip", &["addr", "add", "10.99.0.1/24", "dev", "v0"]);
        t.exec("ip", &["link", "set", "v1", "up"]);
        t.exec("ip", &["link", "set", "v0", "up"]);
        let opts = CaptureOptions::default();
        apply_sidecar(&t.ns, Backend::Iptables, &opts, Families::V4, 1337, 1337).unwrap();
        let app = listen(&t, "10.99.0.1:8080");
        let outbound = listen(&t, "0.0.0.0:15001");
        let inbound = listen(&t, "0.0.0.0:15006");

        // Root (uid 0) to the pod's own non-loopback address: leaves lo, not captured.
        let before = nat_counts(&t);
        assert!(before.iter().all(|c| c.2 == 0), "{before:?}");
        let mut c =
            t.ns.run(|| {
                TcpStream::connect_timeout(
                    &"10.99.0.1:8080".parse().unwrap(),
                    Duration::from_secs(2),
                )
            })
            .unwrap()
            .unwrap();
        assert_eq!(accept_one(&app).port(), 8080);
        c.read_exact(&mut [0u8; 1]).unwrap();
        let after = nat_counts(&t);
        assert_eq!(
            delta(&before, &after),
            [
                "ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN +1",
                "OUTPUT -j ISTIO_OUTPUT +1",
            ]
        );

        // Root to another host: captured, redirected to 15001.
        let before = after;
        let mut c =
            t.ns.run(|| {
                TcpStream::connect_timeout(&"10.99.0.2:80".parse().unwrap(), Duration::from_secs(2))
            })
            .unwrap()
            .unwrap();
        assert_eq!(accept_one(&outbound).port(), 15001);
        c.read_exact(&mut [0u8; 1]).unwrap();
        let after = nat_counts(&t);
        assert_eq!(
            delta(&before, &after),
            [
                "ISTIO_OUTPUT -j ISTIO_REDIRECT +1",
                "ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001 +1",
                "OUTPUT -j ISTIO_OUTPUT +1",
            ]
        );

        // The proxy (uid 1337) to its own pod IP over lo: sent to the inbound listener.
        let before = after;
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args([
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            "bash",
            "-c",
        ])
        .arg("exec 3<>/dev/tcp/10.99.0.1/8080 && head -c1 <&3 >/dev/null");
        t.ns.prepare_command(&mut cmd);
        let child = cmd.spawn().unwrap();
        assert_eq!(accept_one(&inbound).port(), 15006);
        assert!(child.wait_with_output().unwrap().status.success());
        let after = nat_counts(&t);
        assert_eq!(
            delta(&before, &after),
            [
                "ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006 +1",
                "ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT +1",
                "OUTPUT -j ISTIO_OUTPUT +1",
            ]
        );
    }
}
