//! `iptables-save` output reduced to the Istio chains, and the `iptables-restore` text that
//! turns it into the expected state.

use std::collections::BTreeMap;

pub(super) use super::super::iptables::render_removal;
use super::super::iptables::{delete_line, parse_tables, Ours};
use super::SidecarRuleSet;

/// The `iptables-restore --noflush` input that installs `set` into a namespace holding no
/// Istio rules: `*nat`, the chain declarations, the jumps, the chains' rules, `COMMIT`.
pub fn render_script(set: &SidecarRuleSet) -> String {
    render_restore(set, &Saved::default())
}

/// Istio chains (`ISTIO_*`) of one table, as found in `iptables-save` output.
pub(super) type Found = Ours;

#[derive(Debug, Default)]
pub(super) struct Saved {
    pub(super) tables: BTreeMap<String, Found>,
}

pub(super) fn is_istio(chain: &str) -> bool {
    chain.starts_with("ISTIO_")
}

impl Saved {
    pub(super) fn parse(dump: &str) -> Saved {
        Saved {
            tables: parse_tables(dump, is_istio),
        }
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
