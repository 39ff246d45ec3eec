//! [`Finder`]: the order in which a pod's network namespace is looked for, the cgroup scan
//! first and the named-namespace scan as its fallback.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use super::error::DiscoveryError;
use super::scan::{
    find_named_netns, find_pod_netns, find_pod_netns_indexed, index_pods, DEFAULT_HOST_PROC,
    DEFAULT_NETNS_DIR,
};
use crate::netns::NetNs;

/// Where to look for pods' network namespaces, in this order:
///
/// 1. an explicit path from the workload source (CNI `netns` argument, the lab's pod paths) —
///    the caller opens that itself with [`NetNs::open`] and [`confirm_ips`](super::confirm_ips);
/// 2. the cgroup scan of `host_proc` ([`find_pod_netns`]), matching the pod UID;
/// 3. if that finds no usable process of the pod (none at all, their namespaces cannot be
///    opened, or `host_proc` cannot be listed), the named-namespace scan of `netns_dir`
///    ([`find_named_netns`]), matching the pod IP.
///
/// A pod whose processes are found but whose namespace does not (yet) hold its IP, is
/// ambiguous, or is a hostNetwork pod gets the cgroup scan's error: the named scan could only
/// guess.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finder {
    /// The host's `/proc` (`/host/proc` in a DaemonSet).
    pub host_proc: PathBuf,
    /// Named-namespace directory for the fallback; `None` disables it.
    pub netns_dir: Option<PathBuf>,
    /// Only names starting with this are considered by the fallback.
    pub netns_prefix: Option<String>,
}

impl Default for Finder {
    fn default() -> Self {
        Finder {
            host_proc: DEFAULT_HOST_PROC.into(),
            netns_dir: Some(DEFAULT_NETNS_DIR.into()),
            netns_prefix: None,
        }
    }
}

impl Finder {
    /// One pass over the host's processes; see [`index_pods`].
    pub fn index(&self) -> Result<HashMap<String, Vec<u32>>, DiscoveryError> {
        index_pods(&self.host_proc)
    }

    /// Cgroup scan, then the named-namespace fallback (see the type's documentation).
    pub fn find(&self, pod_uid: &str, pod_ips: &[IpAddr]) -> Result<NetNs, DiscoveryError> {
        let first = find_pod_netns(&self.host_proc, pod_uid, pod_ips);
        self.fallback(first, pod_uid, pod_ips)
    }

    /// [`Finder::find`] with the cgroup step answered from `index` (see [`index_pods`]).
    pub fn find_indexed(
        &self,
        index: &HashMap<String, Vec<u32>>,
        pod_uid: &str,
        pod_ips: &[IpAddr],
    ) -> Result<NetNs, DiscoveryError> {
        let first = find_pod_netns_indexed(&self.host_proc, index, pod_uid, pod_ips);
        self.fallback(first, pod_uid, pod_ips)
    }

    fn fallback(
        &self,
        first: Result<NetNs, DiscoveryError>,
        pod_uid: &str,
        pod_ips: &[IpAddr],
    ) -> Result<NetNs, DiscoveryError> {
        let cgroup_err = match first {
            Ok(ns) => return Ok(ns),
            Err(
                e @ (DiscoveryError::NoProcess { .. }
                | DiscoveryError::Unopenable { .. }
                | DiscoveryError::List { .. }),
            ) => e,
            Err(e) => return Err(e),
        };
        let Some(dir) = &self.netns_dir else {
            return Err(cgroup_err);
        };
        find_named_netns(
            dir,
            self.netns_prefix.as_deref(),
            &self.host_proc,
            pod_uid,
            pod_ips,
        )
        .map_err(|named| DiscoveryError::NotFound {
            cgroup: Box::new(cgroup_err),
            named: Box::new(named),
        })
    }
}
