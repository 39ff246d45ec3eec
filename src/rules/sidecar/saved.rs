//! `iptables-save` output reduced to the Istio chains, and the `iptables-restore` text that
//! turns it into the expected state.

use std::collections::BTreeMap;

use super::super::iptables::{delete_line, target};
use super::SidecarRuleSet;

/// Tables scanned for Istio chains (ours, and leftovers of other Istio modes).
const SCANNED_TABLES: [&str; 3] = ["nat", "mangle", "raw"];

/// The `iptables-restore --noflush` input that installs `set` into a namespace holding no
/// Istio rules: `*nat`, the chain declarations, the jumps, the chains' rules, `COMMIT`.
pub fn render_script(set: &SidecarRuleSet) -> String {
    render_restore(set, &Saved::default())
}

/// Istio chains (`ISTIO_*`) of one table, as found in `iptables-save` output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Found {
    /// Each Istio chain with its `-A` lines in order.
    pub(super) chains: BTreeMap<String, Vec<String>>,
    /// Rules in other chains that jump to an Istio chain (`-A` lines), sorted.
    pub(super) jumps: Vec<String>,
}

#[derive(Debug, Default)]
pub(super) struct Saved {
    pub(super) tables: BTreeMap<String, Found>,
}

pub(super) fn is_istio(chain: &str) -> bool {
    chain.starts_with("ISTIO_")
}

impl Saved {
    pub(super) fn parse(dump: &str) -> Saved {
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
    pub(super) fn difference(&self, set: &SidecarRuleSet) -> Option<String> {
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

/// Restore text removing every Istio chain of one table and every jump to them.
pub(super) fn render_removal(table: &str, found: &Found, out: &mut String) {
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
pub(super) fn render_restore(set: &SidecarRuleSet, saved: &Saved) -> String {
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
