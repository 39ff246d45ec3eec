//! iptables backend: one `iptables-restore --noflush` per family writes every table at once
//! (atomic), and `iptables-save` is read back to decide whether anything needs writing.
//!
//! Rules are rendered in the exact form `iptables-save` prints them, so the installed state can
//! be compared line by line with the expected one: equal → nothing is written; different → our
//! chains are rewritten in a single restore (declaring `:ISTIO_PRERT - [0:0]` flushes an existing
//! chain under `--noflush`), with missing jumps added and extra ones deleted in the same restore.

use std::collections::BTreeMap;

use super::exec::run_ok;
use super::model::{Action, AddrMatch, Chain, MarkMatch, OwnerKind, Proto, Rule, RuleSet, Table};
use super::{ApplyOutcome, Families, Family, InstalledSection, RulesError};
use crate::capture::CaptureOptions;
use crate::netns::NetNs;

/// Our chain names, and the built-in chain each is jumped to from.
const CHAINS: [(&str, &str); 2] = [("ISTIO_PRERT", "PREROUTING"), ("ISTIO_OUTPUT", "OUTPUT")];
/// Tables we install in.
const TABLES: [(Table, &str); 2] = [(Table::Mangle, "mangle"), (Table::Nat, "nat")];
/// Tables scanned for chains of ours: ours, plus `raw` where Istio's DNS capture puts chains of
/// the same names (removed as leftovers until we capture DNS ourselves).
const SCANNED_TABLES: [&str; 3] = ["mangle", "nat", "raw"];

pub(super) fn chain_name(chain: Chain) -> &'static str {
    match chain {
        Chain::Prerouting => CHAINS[0].0,
        Chain::Output => CHAINS[1].0,
    }
}

pub(super) fn tools(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::V4 => ("iptables-save", "iptables-restore"),
        Family::V6 => ("ip6tables-save", "ip6tables-restore"),
    }
}

pub(super) fn family_label(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

/// One rule as `iptables-save` prints it, without the leading `-A CHAIN`.
pub fn render_rule(rule: &Rule) -> String {
    let mut out: Vec<String> = Vec::new();
    let addr = |flag: &str, a: &AddrMatch| {
        let not = if a.negate { "! " } else { "" };
        format!("{not}{flag} {}", a.net)
    };
    out.extend(rule.src.as_ref().map(|a| addr("-s", a)));
    out.extend(rule.dst.as_ref().map(|a| addr("-d", a)));
    if let Some(iface) = rule.out_iface {
        out.push(format!("-o {iface}"));
    }
    match rule.proto {
        Proto::Any => {}
        Proto::Tcp => out.push("-p tcp".into()),
        Proto::TcpPort(port) => {
            out.push("-p tcp -m tcp".into());
            if let Some((port, negate)) = port {
                out.push(format!("{}--dport {port}", if negate { "! " } else { "" }));
            }
        }
        Proto::UdpPort(port) => {
            out.push("-p udp -m udp".into());
            if let Some((port, negate)) = port {
                out.push(format!("{}--dport {port}", if negate { "! " } else { "" }));
            }
        }
    }
    if let Some(o) = &rule.owner {
        let not = if o.negate { "! " } else { "" };
        let kind = match o.kind {
            OwnerKind::Uid => "uid",
            OwnerKind::Gid => "gid",
        };
        out.push(format!("-m owner {not}--{kind}-owner {}", o.id));
    }
    let mark = |module: &str, m: &MarkMatch| {
        let not = if m.negate { "! " } else { "" };
        format!("-m {module} {not}--mark {:#x}/{:#x}", m.value, m.mask)
    };
    out.extend(rule.mark.as_ref().map(|m| mark("mark", m)));
    out.extend(rule.connmark.as_ref().map(|m| mark("connmark", m)));
    out.push(match rule.action {
        Action::Accept => "-j ACCEPT".into(),
        Action::Redirect(port) => format!("-j REDIRECT --to-ports {port}"),
        Action::SetConnmark { value, mask } => {
            format!("-j CONNMARK --set-xmark {value:#x}/{mask:#x}")
        }
        Action::RestoreMark => {
            "-j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff".into()
        }
        Action::Return => "-j RETURN".into(),
        Action::Jump(chain) => format!("-j {chain}"),
    });
    out.join(" ")
}

/// Our part of one table, as found in (or expected in) `iptables-save` output. Which chains
/// are "ours" depends on the caller: ambit's ambient chains here, any `ISTIO_*` chain for the
/// sidecar set (see [`parse_tables`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Ours {
    /// Our chains that exist, with their rules (`-A ISTIO_PRERT ...` lines) in order.
    pub(super) chains: BTreeMap<String, Vec<String>>,
    /// Rules elsewhere that jump to one of our chains (whole `-A` lines), sorted.
    pub(super) jumps: Vec<String>,
}

impl Ours {
    pub(super) fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.jumps.is_empty()
    }

    /// What `set` should look like in `table`.
    fn expected(set: &RuleSet, table: Table) -> Ours {
        let mut ours = Ours::default();
        for (_, chain, rules) in set.chains().into_iter().filter(|(t, _, _)| *t == table) {
            let name = chain_name(chain);
            let lines = rules
                .iter()
                .map(|r| format!("-A {name} {}", render_rule(r)))
                .collect();
            ours.chains.insert(name.to_string(), lines);
        }
        ours.jumps = CHAINS
            .iter()
            .map(|(chain, hook)| format!("-A {hook} -j {chain}"))
            .collect();
        ours.jumps.sort();
        ours
    }
}

/// The tables of an `iptables-save` dump, reduced to what concerns us.
#[derive(Debug, Default)]
struct Saved {
    tables: BTreeMap<String, Ours>,
}

fn is_ours(name: &str) -> bool {
    CHAINS.iter().any(|(c, _)| *c == name)
}

/// Target of a rule (`-j X` or `-g X`), if any.
pub(super) fn target(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" {
            return words.next();
        }
    }
    None
}

/// The chains of `dump` (an `iptables-save` listing) for which `is_ours` holds, and every
/// jump to them, per table of mangle/nat/raw that has any.
pub(super) fn parse_tables(dump: &str, is_ours: fn(&str) -> bool) -> BTreeMap<String, Ours> {
    let mut tables: BTreeMap<String, Ours> = BTreeMap::new();
    let mut table: Option<&mut Ours> = None;
    for line in dump.lines().map(str::trim_end) {
        if let Some(name) = line.strip_prefix('*') {
            let keep = SCANNED_TABLES.contains(&name);
            table = keep.then(|| tables.entry(name.to_string()).or_default());
            continue;
        }
        let Some(ours) = table.as_deref_mut() else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if is_ours(name) {
                ours.chains.entry(name.to_string()).or_default();
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            if is_ours(chain) {
                ours.chains
                    .entry(chain.to_string())
                    .or_default()
                    .push(line.to_string());
            } else if target(line).is_some_and(is_ours) {
                ours.jumps.push(line.to_string());
            }
        }
    }
    tables.retain(|_, ours| !ours.is_empty());
    for ours in tables.values_mut() {
        ours.jumps.sort();
    }
    tables
}

impl Saved {
    fn parse(dump: &str) -> Saved {
        Saved {
            tables: parse_tables(dump, is_ours),
        }
    }

    fn table(&self, name: &str) -> Ours {
        self.tables.get(name).cloned().unwrap_or_default()
    }

    /// First difference from the expected state of `set`, if any.
    fn difference(&self, set: &RuleSet) -> Option<String> {
        for (table, name) in TABLES {
            let (want, have) = (Ours::expected(set, table), self.table(name));
            if want != have {
                return Some(format!("table {name}: expected {want:?}, found {have:?}"));
            }
        }
        self.tables
            .keys()
            .find(|name| !TABLES.iter().any(|(_, t)| t == name))
            .map(|name| format!("leftover chains in table {name}"))
    }
}

/// `-D` line deleting the rule saved as `jump` (an `-A` line).
pub(super) fn delete_line(jump: &str) -> String {
    format!("-D {}\n", jump.strip_prefix("-A ").unwrap_or(jump))
}

/// Restore text that removes our chains and every jump to them from one table.
pub(super) fn render_removal(table: &str, ours: &Ours, out: &mut String) {
    out.push_str(&format!("*{table}\n"));
    for chain in ours.chains.keys() {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for jump in &ours.jumps {
        out.push_str(&delete_line(jump));
    }
    for chain in ours.chains.keys() {
        out.push_str(&format!("-X {chain}\n"));
    }
    out.push_str("COMMIT\n");
}

/// Restore text that turns the saved state into the expected one, in one transaction.
fn render_restore(set: &RuleSet, saved: &Saved) -> String {
    let mut out = String::new();
    for (table, name) in TABLES {
        let want = Ours::expected(set, table);
        let have = saved.table(name);
        out.push_str(&format!("*{name}\n"));
        // Declaring a chain creates it, or flushes it when it exists (with --noflush).
        for (chain, _) in CHAINS {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        // Keep one of each expected jump; delete duplicates and any other jump to our chains.
        let mut missing = want.jumps.clone();
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
        for (chain, _) in CHAINS {
            for line in want.chains.get(chain).into_iter().flatten() {
                out.push_str(&format!("{line}\n"));
            }
        }
        out.push_str("COMMIT\n");
    }
    for (name, ours) in &saved.tables {
        if !TABLES.iter().any(|(_, t)| t == name) {
            render_removal(name, ours, &mut out);
        }
    }
    out
}

/// The `iptables-restore` input that installs `set` into a namespace holding nothing of ours.
pub fn render_script(set: &RuleSet) -> String {
    render_restore(set, &Saved::default())
}

fn save(ns: &NetNs, family: Family) -> Result<Saved, RulesError> {
    let dump = run_ok(ns, tools(family).0, &[], None)?;
    Ok(Saved::parse(&dump))
}

pub(super) fn restore(ns: &NetNs, family: Family, text: &str) -> Result<(), RulesError> {
    run_ok(ns, tools(family).1, &["--noflush", "-w", "5"], Some(text)).map(drop)
}

fn apply_family(ns: &NetNs, set: &RuleSet) -> Result<ApplyOutcome, RulesError> {
    let saved = save(ns, set.family)?;
    if saved.difference(set).is_none() {
        return Ok(ApplyOutcome::Unchanged);
    }
    restore(ns, set.family, &render_restore(set, &saved))?;
    // Reading back catches a rendering that the kernel stores differently, which would
    // otherwise look like drift on every later apply.
    if let Some(detail) = save(ns, set.family)?.difference(set) {
        return Err(RulesError::Verify {
            netns: ns.path().to_path_buf(),
            what: family_label(set.family).to_string(),
            detail,
        });
    }
    Ok(match saved.tables.is_empty() {
        true => ApplyOutcome::Installed,
        false => ApplyOutcome::Repaired,
    })
}

/// Removes our chains found in `saved`; `Ok(true)` if there was something to remove.
fn remove_saved(ns: &NetNs, family: Family, saved: &Saved) -> Result<bool, RulesError> {
    let mut text = String::new();
    for (name, ours) in &saved.tables {
        render_removal(name, ours, &mut text);
    }
    if text.is_empty() {
        return Ok(false);
    }
    restore(ns, family, &text)?;
    Ok(true)
}

/// Removes our chains of one family if its tools work at all; `Ok(true)` if something was
/// removed. A failing save means no such tables (no IPv6 in the kernel, no iptables on the
/// node): nothing of ours can be there.
fn remove_if_present(ns: &NetNs, family: Family) -> Result<bool, RulesError> {
    match save(ns, family) {
        Ok(saved) => remove_saved(ns, family, &saved),
        Err(_) => Ok(false),
    }
}

/// Installs the rules for the selected families and removes ours from the others.
pub fn apply(
    ns: &NetNs,
    opts: &CaptureOptions,
    families: Families,
) -> Result<ApplyOutcome, RulesError> {
    let mut parts = Vec::new();
    for family in [Family::V4, Family::V6] {
        if families.contains(family) {
            parts.push(apply_family(ns, &RuleSet::build(opts, family))?);
        } else if remove_if_present(ns, family)? {
            parts.push(ApplyOutcome::Repaired);
        }
    }
    Ok(ApplyOutcome::combine(parts))
}

/// Removes our chains and jumps from both families. IPv6 tools failing (no IPv6 in the kernel)
/// is not an error: there is nothing to remove then.
pub fn remove(ns: &NetNs) -> Result<(), RulesError> {
    remove_saved(ns, Family::V4, &save(ns, Family::V4)?)?;
    remove_if_present(ns, Family::V6)?;
    Ok(())
}

/// Removes our iptables rules if the tools exist; `Ok(true)` if something was removed. Used
/// when the other backend is active, so a backend switch does not capture twice.
pub fn remove_if_available(ns: &NetNs) -> Result<bool, RulesError> {
    let v4 = remove_if_present(ns, Family::V4)?;
    Ok(remove_if_present(ns, Family::V6)? || v4)
}

/// Our chains as installed, per family and table, in `iptables-save` form.
pub fn installed(ns: &NetNs) -> Result<Vec<InstalledSection>, RulesError> {
    installed_chains(ns, is_ours)
}

/// The chains `is_ours` selects, as installed, per family and table, in `iptables-save`
/// form. IPv6 tools failing (no IPv6 in the kernel) means no IPv6 sections.
pub(super) fn installed_chains(
    ns: &NetNs,
    is_ours: fn(&str) -> bool,
) -> Result<Vec<InstalledSection>, RulesError> {
    let mut sections = Vec::new();
    for family in [Family::V4, Family::V6] {
        let dump = match run_ok(ns, tools(family).0, &[], None) {
            Ok(dump) => dump,
            Err(e) if family == Family::V4 => return Err(e),
            Err(_) => continue,
        };
        for (name, ours) in parse_tables(&dump, is_ours) {
            let mut lines: Vec<String> = ours.chains.keys().map(|c| format!(":{c}")).collect();
            lines.extend(ours.jumps);
            lines.extend(ours.chains.into_values().flatten());
            sections.push(InstalledSection {
                name: format!("{} {name}", family_label(family)),
                lines,
            });
        }
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repair_deletes_extra_jumps_adds_missing_ones_and_drops_raw_leftovers() {
        let dump = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n\
            :OUTPUT ACCEPT [0:0]\n:ISTIO_PRERT - [0:0]\n\
            -A PREROUTING -j ISTIO_PRERT\n-A PREROUTING -j ISTIO_PRERT\n\
            -A PREROUTING -p udp -j ISTIO_PRERT\n-A PREROUTING -p udp -j ACCEPT\n\
            -A ISTIO_PRERT -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n\
            *raw\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n\
            *filter\n:ISTIO_OUTPUT - [0:0]\nCOMMIT\n";
        let saved = Saved::parse(dump);
        assert_eq!(saved.tables.keys().collect::<Vec<_>>(), ["nat", "raw"]);
        let set = RuleSet::build(&CaptureOptions::default(), Family::V4);
        assert!(saved.difference(&set).is_some());
        let text = render_restore(&set, &saved);
        let nat = &text[text.find("*nat").unwrap()..];
        let nat = &nat[..nat.find("COMMIT").unwrap()];
        assert!(nat.starts_with(
            "*nat\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n\
             -D PREROUTING -j ISTIO_PRERT\n-D PREROUTING -p udp -j ISTIO_PRERT\n\
             -A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_PRERT -s 169.254.7.127/32"
        ));
        assert!(text.ends_with(
            "*raw\n:ISTIO_OUTPUT - [0:0]\n-D OUTPUT -j ISTIO_OUTPUT\n-X ISTIO_OUTPUT\nCOMMIT\n"
        ));
    }

    #[test]
    fn expected_state_compares_equal_to_its_own_rendering() {
        let set = RuleSet::build(&CaptureOptions::default(), Family::V6);
        let saved = Saved::parse(&render_script(&set));
        assert_eq!(saved.difference(&set), None);
    }
}
