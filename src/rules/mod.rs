//! In-pod traffic capture rules: the Istio ambient rule set (`reference/istio-rules.md` §3),
//! installed in a pod's network namespace with iptables or nftables, plus the policy route that
//! source-preserving inbound needs.
//!
//! One data model ([`model::RuleSet`]) is built from the pod's [`CaptureOptions`] and rendered by
//! either backend. Chain, table, mark and port values are Istio's, so Istio's agent and ztunnel
//! recognise (and can remove) our rules, and the reverse.
//!
//! Every call is synchronous and spawns tools inside the namespace; the daemon calls it from
//! `spawn_blocking`. Each apply is atomic per backend and family: traffic never sees half a set.
//!
//! DNS capture (port 15053, raw table) is not installed yet: it comes with the DNS proxy.

use std::path::PathBuf;
use std::process::ExitStatus;

use crate::capture::CaptureOptions;
use crate::netns::NetNs;

pub mod counters;
mod exec;
pub mod iptables;
#[cfg(test)]
mod kernel_tests;
pub mod model;
pub mod nftables;
#[cfg(test)]
mod render_tests;
pub mod route;
pub mod sidecar;
#[cfg(test)]
pub(crate) mod testns;
pub mod trace;

pub use sidecar::{apply_sidecar, counters, remove_sidecar, RuleCounter, SidecarRuleSet};

pub use crate::config::{
    Backend, UnknownBackend, CONNMARK, HBONE_PORT, INBOUND_PORT, MARK, MARK_MASK, OUTBOUND_PORT,
    PROBE_SOURCE_V4, PROBE_SOURCE_V6, ROUTE_TABLE, RULE_PREF,
};

/// An IP address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Family of a network.
    pub fn of(net: &ipnet::IpNet) -> Family {
        match net {
            ipnet::IpNet::V4(_) => Family::V4,
            ipnet::IpNet::V6(_) => Family::V6,
        }
    }
}

/// Which families get rules (a dual-stack pod gets both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Families {
    /// Install IPv4 rules.
    pub v4: bool,
    /// Install IPv6 rules.
    pub v6: bool,
}

impl Families {
    /// IPv4 and IPv6.
    pub const BOTH: Families = Families { v4: true, v6: true };
    /// IPv4 only.
    pub const V4: Families = Families {
        v4: true,
        v6: false,
    };
    /// IPv6 only.
    pub const V6: Families = Families {
        v4: false,
        v6: true,
    };

    /// Whether `family` is selected.
    pub fn contains(self, family: Family) -> bool {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }

    /// The selected families, v4 first.
    pub fn iter(self) -> impl Iterator<Item = Family> {
        [Family::V4, Family::V6]
            .into_iter()
            .filter(move |f| self.contains(*f))
    }
}

/// What [`apply`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApplyOutcome {
    /// Nothing of ours was there; the full set was installed.
    Installed,
    /// Everything was already exactly as expected; nothing was written.
    Unchanged,
    /// Some of ours was there but differed (drift, other options, leftovers); rewritten.
    Repaired,
}

impl ApplyOutcome {
    /// Outcome of several parts applied together: all the same → that, otherwise repaired.
    fn combine(parts: impl IntoIterator<Item = ApplyOutcome>) -> ApplyOutcome {
        let mut parts = parts.into_iter();
        let Some(first) = parts.next() else {
            return ApplyOutcome::Unchanged;
        };
        parts.fold(first, |acc, p| {
            if acc == p {
                acc
            } else {
                ApplyOutcome::Repaired
            }
        })
    }
}

/// Failure to read or change the rules of a namespace.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The tool could not be started (not installed, or the namespace could not be entered).
    #[error("in network namespace {netns}: cannot run `{command}`: {source}")]
    Spawn {
        /// Namespace path.
        netns: PathBuf,
        /// Command line.
        command: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The tool ran and failed.
    #[error("in network namespace {netns}: `{command}` failed ({status}): {stderr}")]
    Command {
        /// Namespace path.
        netns: PathBuf,
        /// Command line.
        command: String,
        /// Exit status.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The rules read back right after a successful write are not the ones written.
    #[error("in network namespace {netns}: {what} read back after writing differ from the expected set: {detail}")]
    Verify {
        /// Namespace path.
        netns: PathBuf,
        /// Which rules (`iptables nat`, ...).
        what: String,
        /// First difference.
        detail: String,
    },
    /// The backend cannot install this rule set.
    #[error("the {backend} backend does not support {what}; use the iptables backend")]
    Unsupported {
        /// Backend asked for.
        backend: Backend,
        /// What it was asked to do.
        what: &'static str,
    },
}

/// Our rules and routes as currently installed in a namespace, as the tools print them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct InstalledRules {
    /// Netfilter rules per table and family; only tables holding something of ours.
    pub sections: Vec<InstalledSection>,
    /// Our ip rules and table-100 routes, one per line.
    pub routes: Vec<String>,
}

/// Our part of one table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InstalledSection {
    /// `iptables nat`, `ip6tables mangle`, `inet istio-ambient-nat`, ...
    pub name: String,
    /// Rules (iptables-save lines) or the table listing (nft).
    pub lines: Vec<String>,
}

impl InstalledRules {
    /// Whether any netfilter rule or route of ours is present.
    pub fn any(&self) -> bool {
        !self.sections.is_empty() || !self.routes.is_empty()
    }

    /// Whether any netfilter rule of ours is present.
    pub fn has_rules(&self) -> bool {
        !self.sections.is_empty()
    }
}

/// Installs (or verifies, or repairs) the capture rules `opts` ask for in `ns`.
///
/// The policy route goes in first, as Istio does, so connmarked replies have their route before
/// any inbound connection is redirected. Families not in `families` lose any rules of ours, and
/// rules of ours left by the other backend are removed (a backend switch must not capture twice).
pub fn apply(
    ns: &NetNs,
    backend: Backend,
    opts: &CaptureOptions,
    families: Families,
) -> Result<ApplyOutcome, RulesError> {
    let routes = route::apply(ns, families)?;
    let rules = match backend {
        Backend::Iptables => iptables::apply(ns, opts, families)?,
        Backend::Nftables => nftables::apply(ns, opts, families)?,
    };
    let other_removed = match backend {
        Backend::Iptables => nftables::remove_if_available(ns)?,
        Backend::Nftables => iptables::remove_if_available(ns)?,
    };
    let mut parts = vec![routes, rules];
    if other_removed {
        parts.push(ApplyOutcome::Repaired);
    }
    Ok(ApplyOutcome::combine(parts))
}

/// Removes our rules of `backend` (both families), then the policy route. Parts already gone
/// are fine.
pub fn remove(ns: &NetNs, backend: Backend) -> Result<(), RulesError> {
    match backend {
        Backend::Iptables => iptables::remove(ns)?,
        Backend::Nftables => nftables::remove(ns)?,
    }
    route::remove(ns)
}

/// Our rules of `backend` and our routes as currently installed in `ns`.
pub fn installed(ns: &NetNs, backend: Backend) -> Result<InstalledRules, RulesError> {
    let sections = match backend {
        Backend::Iptables => iptables::installed(ns)?,
        Backend::Nftables => nftables::installed(ns)?,
    };
    Ok(InstalledRules {
        sections,
        routes: route::installed(ns)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_parses_and_prints() {
        assert_eq!("iptables".parse::<Backend>().unwrap(), Backend::Iptables);
        assert_eq!("nftables".parse::<Backend>().unwrap(), Backend::Nftables);
        assert_eq!(Backend::Nftables.to_string(), "nftables");
        let err = "nft".parse::<Backend>().unwrap_err();
        assert!(err.to_string().contains("\"nft\""), "{err}");
    }

    #[test]
    fn outcomes_combine() {
        use ApplyOutcome::*;
        assert_eq!(ApplyOutcome::combine([Unchanged, Unchanged]), Unchanged);
        assert_eq!(ApplyOutcome::combine([Installed, Installed]), Installed);
        assert_eq!(ApplyOutcome::combine([Installed, Unchanged]), Repaired);
        assert_eq!(ApplyOutcome::combine([Unchanged, Repaired]), Repaired);
        assert_eq!(ApplyOutcome::combine([]), Unchanged);
    }

    #[test]
    fn families_iterate_in_order() {
        assert_eq!(
            Families::BOTH.iter().collect::<Vec<_>>(),
            [Family::V4, Family::V6]
        );
        assert_eq!(Families::V6.iter().collect::<Vec<_>>(), [Family::V6]);
    }
}
