//! Finding a pod's network namespace on the node (DESIGN.md §3).
//!
//! Order of preference (the caller handles the first step; [`Finder`] the other two):
//!
//! 1. **Explicit path** from the workload source (CNI `netns` argument, the lab's
//!    `/var/run/netns/<lab>-n<N>-p<M>`): open it with [`NetNs::open`](crate::netns::NetNs::open)
//!    and check it with [`confirm_ips`].
//! 2. **Cgroup scan** ([`find_pod_netns`]): every `<host proc>/<pid>/cgroup` is read once and
//!    parsed for a pod UID ([`cgroup`] knows the cgroupfs and systemd spellings, cgroup v1 and
//!    v2); the processes of the pod give candidate namespaces (`<pid>/ns/net`), the host's
//!    (`<host proc>/1/ns/net`) and the daemon's own are skipped, duplicates are merged by
//!    (dev, inode), and the one
//!    candidate with a pod IP configured inside is returned. [`index_pods`] +
//!    [`find_pod_netns_indexed`] do the same for many pods with one scan.
//! 3. **Named namespaces** ([`find_named_netns`]): for runtimes that pin namespaces under
//!    `/var/run/netns`, the namespace holding a pod IP, optionally among names with a prefix.
//!    Matching is by IP only, so two namespaces holding the IP is an error, not a guess.
//!
//! "Configured inside" means listed by `getifaddrs` run in the namespace ([`addresses`]).
//! Everything here blocks (file system, `setns` on the calling thread): call it from a
//! blocking thread.

pub mod cgroup;
mod confirm;
mod error;
mod finder;
mod scan;

#[cfg(test)]
mod tests;

pub use cgroup::{normalize_uid, pod_from_cgroup, pod_uid_from_cgroup, CgroupPod};
pub use confirm::{addresses, confirm_ips};
pub use error::DiscoveryError;
pub use finder::Finder;
pub use scan::{
    find_named_netns, find_pod_netns, find_pod_netns_indexed, index_pods, DEFAULT_HOST_PROC,
    DEFAULT_NETNS_DIR,
};
