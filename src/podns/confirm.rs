//! Confirming a candidate namespace as a pod's: the addresses configured inside it (listed
//! with `getifaddrs` from inside), the check that it holds the pod IPs, and picking the one
//! candidate among those a scan found.

use std::collections::HashMap;
use std::net::IpAddr;

use super::error::{abbreviate, ip_list, or_none, DiscoveryError};
use crate::netns::{NetNs, NetNsId};

/// A distinct namespace found while scanning, and how it was found.
pub(super) struct Candidate {
    ns: NetNs,
    /// Pids in it, or the names it is pinned under.
    via: Vec<String>,
}

impl Candidate {
    fn describe(&self, what: &str) -> String {
        format!(
            "{} (inode {}, {what} {})",
            self.ns.path().display(),
            self.ns.id().ino,
            abbreviate(&self.via)
        )
    }
}

/// Adds `ns` (found via `via`) to `candidates` unless it is the host's; merges duplicates.
pub(super) fn add_candidate(
    candidates: &mut Vec<Candidate>,
    index: &mut HashMap<NetNsId, usize>,
    ns: NetNs,
    via: String,
) {
    match index.get(&ns.id()) {
        Some(&i) => candidates[i].via.push(via),
        None => {
            index.insert(ns.id(), candidates.len());
            candidates.push(Candidate { ns, via: vec![via] });
        }
    }
}

/// Keeps the candidates holding one of `pod_ips`; exactly one must remain.
pub(super) fn pick_confirmed(
    uid: &str,
    candidates: Vec<Candidate>,
    pod_ips: &[IpAddr],
    via: &str,
) -> Result<NetNs, DiscoveryError> {
    let mut matched = Vec::new();
    let mut rejected = Vec::new();
    for c in candidates {
        match addresses(&c.ns) {
            Ok(has) if pod_ips.iter().any(|ip| has.contains(ip)) => matched.push(c),
            Ok(has) => rejected.push(format!("{} has {}", c.describe(via), or_none(&has))),
            Err(e) => rejected.push(format!("{}: {e}", c.describe(via))),
        }
    }
    match matched.len() {
        1 => Ok(matched.pop().expect("one match").ns),
        0 => Err(DiscoveryError::NoIpMatch {
            uid: uid.to_string(),
            ips: ip_list(pod_ips),
            candidates: rejected.join("; "),
        }),
        _ => Err(DiscoveryError::Ambiguous {
            uid: uid.to_string(),
            ips: ip_list(pod_ips),
            candidates: matched
                .iter()
                .map(|c| c.describe(via))
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}

/// Addresses configured on the interfaces of `netns` (any interface, any scope), listed with
/// `getifaddrs` from inside the namespace. Unlike a bind test this is not fooled by
/// `ip_nonlocal_bind` or `IP_FREEBIND`.
pub fn addresses(netns: &NetNs) -> Result<Vec<IpAddr>, DiscoveryError> {
    let err = |detail: String| DiscoveryError::Addresses {
        path: netns.path().to_path_buf(),
        detail,
    };
    let listed = netns
        .run(|| {
            // getifaddrs opens its netlink socket now, on this thread, so in `netns`.
            nix::ifaddrs::getifaddrs().map(|it| {
                it.filter_map(|a| {
                    let addr = a.address?;
                    if let Some(v4) = addr.as_sockaddr_in() {
                        Some(IpAddr::V4(v4.ip()))
                    } else {
                        addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                    }
                })
                .collect::<Vec<_>>()
            })
        })
        .map_err(|e| err(e.to_string()))?;
    let mut ips = listed.map_err(|e| err(format!("getifaddrs: {e}")))?;
    ips.sort();
    ips.dedup();
    Ok(ips)
}

/// Checks that every one of `ips` is configured in `netns` (what the reconciler requires before
/// enrolling a pod). No IPs is trivially fine.
pub fn confirm_ips(netns: &NetNs, ips: &[IpAddr]) -> Result<(), DiscoveryError> {
    if ips.is_empty() {
        return Ok(());
    }
    let has = addresses(netns)?;
    match ips.iter().find(|ip| !has.contains(ip)) {
        None => Ok(()),
        Some(ip) => Err(DiscoveryError::IpMissing {
            ip: *ip,
            path: netns.path().to_path_buf(),
            has: or_none(&has).into_owned(),
        }),
    }
}
