//! Scanning the node for a pod's network namespace: by the pod UID in `/proc/<pid>/cgroup`,
//! and by the pod IP among named namespaces. Every candidate is confirmed by listing the
//! addresses configured inside it.
//!
//! All of this is blocking file-system work plus short `setns` switches on the calling thread:
//! call it from a blocking thread (`tokio::task::spawn_blocking`), not from async code.
//!
//! This file holds the two scans; the errors are in `error.rs`, the confirmation of candidates
//! by their addresses in `confirm.rs`, the cgroup parsing in `cgroup.rs`, and the order the
//! scans are tried in ([`Finder`](super::Finder)) in `finder.rs`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::Path;

use super::cgroup::{normalize_uid, pod_uid_from_cgroup};
use super::confirm::{add_candidate, pick_confirmed};
use super::error::{abbreviate, DiscoveryError};
use crate::netns::{NetNs, NetNsError, NetNsId};

/// Where the host's `/proc` is when the daemon runs on the host itself.
pub const DEFAULT_HOST_PROC: &str = "/proc";
/// Where `ip netns` and several runtimes pin named network namespaces.
pub const DEFAULT_NETNS_DIR: &str = "/var/run/netns";

/// Pod UID as the scan compares it: dashed and lowercase when UUID-shaped, else as given.
fn canonical_uid(uid: &str) -> String {
    normalize_uid(uid).unwrap_or_else(|| uid.to_string())
}

/// Whether an error on one pid means the process went away during the scan.
fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

fn parse_pid(name: &str) -> Option<u32> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// Result of one pass over `<host proc>`.
struct ProcScan {
    /// Pod UID -> pids (ascending).
    pods: HashMap<String, Vec<u32>>,
    /// Pids whose cgroup file could not be read for a reason other than the process exiting.
    unreadable: usize,
}

/// Reads every `<host proc>/<pid>/cgroup` once. With `only`, keeps that pod's pids alone.
fn scan_proc(host_proc: &Path, only: Option<&str>) -> Result<ProcScan, DiscoveryError> {
    let dir = std::fs::read_dir(host_proc).map_err(|source| DiscoveryError::List {
        path: host_proc.to_path_buf(),
        source,
    })?;
    let mut pods: HashMap<String, Vec<u32>> = HashMap::new();
    let mut unreadable = 0;
    let mut buf = Vec::with_capacity(4096);
    for entry in dir {
        // An entry error is a process that vanished mid-listing, or worse; neither is fatal.
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(parse_pid) else {
            continue;
        };
        buf.clear();
        let path = entry.path().join("cgroup");
        if let Err(e) = File::open(&path).and_then(|mut f| f.read_to_end(&mut buf)) {
            if !vanished(&e) {
                unreadable += 1;
            }
            continue;
        }
        let text = String::from_utf8_lossy(&buf);
        // Most processes on a node are not in a pod; skip the line parsing for them.
        if !text.contains("pod") {
            continue;
        }
        let Some(uid) = pod_uid_from_cgroup(&text) else {
            continue;
        };
        if only.is_some_and(|o| o != uid) {
            continue;
        }
        pods.entry(uid).or_default().push(pid);
    }
    for pids in pods.values_mut() {
        pids.sort_unstable();
    }
    Ok(ProcScan { pods, unreadable })
}

/// Every pod with a process on this node: pod UID (dashed) -> its pids, ascending. One pass
/// over `<host proc>/*/cgroup`; use it with [`find_pod_netns_indexed`] when enrolling many pods.
pub fn index_pods(host_proc: &Path) -> Result<HashMap<String, Vec<u32>>, DiscoveryError> {
    Ok(scan_proc(host_proc, None)?.pods)
}

/// Finds pod `pod_uid`'s network namespace by the cgroup scan: the processes whose
/// `<host proc>/<pid>/cgroup` names the pod, their `ns/net` (the host's namespace
/// `<host proc>/1/ns/net` and the daemon's own skipped, de-duplicated by (dev, inode)), confirmed by one of `pod_ips` being configured inside.
///
/// This is the UID-based step only; [`Finder::find`](super::Finder::find) adds the
/// named-namespace fallback.
/// The returned handle's path is `<host proc>/<pid>/ns/net` of the pod's lowest pid; the handle
/// keeps the namespace open even after that process exits.
pub fn find_pod_netns(
    host_proc: &Path,
    pod_uid: &str,
    pod_ips: &[IpAddr],
) -> Result<NetNs, DiscoveryError> {
    let uid = canonical_uid(pod_uid);
    if pod_ips.is_empty() {
        return Err(DiscoveryError::NoIps { uid });
    }
    let scan = scan_proc(host_proc, Some(&uid))?;
    let pids = scan.pods.get(&uid).map(Vec::as_slice).unwrap_or(&[]);
    netns_of_pids(host_proc, &uid, pids, pod_ips, scan.unreadable)
}

/// [`find_pod_netns`] with the pids taken from an [`index_pods`] result instead of a new scan.
/// A pod missing from the index gives [`DiscoveryError::NoProcess`]; pids that exited since
/// the index was built are skipped.
pub fn find_pod_netns_indexed(
    host_proc: &Path,
    index: &HashMap<String, Vec<u32>>,
    pod_uid: &str,
    pod_ips: &[IpAddr],
) -> Result<NetNs, DiscoveryError> {
    let uid = canonical_uid(pod_uid);
    if pod_ips.is_empty() {
        return Err(DiscoveryError::NoIps { uid });
    }
    let pids = index.get(&uid).map(Vec::as_slice).unwrap_or(&[]);
    netns_of_pids(host_proc, &uid, pids, pod_ips, 0)
}

/// Namespaces that are never a pod's: the host's (`<host proc>/1/ns/net`) and the daemon's
/// own (the host's too when it runs with hostNetwork, the node's in the lab). Pid 1's link may
/// be unreadable (a pid 1 with capabilities the daemon lacks fails the ptrace access check);
/// then only the daemon's own is skipped, and IP confirmation keeps the host out anyway.
fn not_pod_netns(host_proc: &Path) -> Vec<NetNsId> {
    let host = NetNs::open(host_proc.join("1").join("ns").join("net"));
    [host.ok(), NetNs::current().ok()]
        .into_iter()
        .flatten()
        .map(|ns| ns.id())
        .collect()
}

fn netns_of_pids(
    host_proc: &Path,
    uid: &str,
    pids: &[u32],
    pod_ips: &[IpAddr],
    unreadable: usize,
) -> Result<NetNs, DiscoveryError> {
    if pids.is_empty() {
        return Err(DiscoveryError::NoProcess {
            uid: uid.to_string(),
            host_proc: host_proc.to_path_buf(),
            unreadable,
        });
    }
    let host = not_pod_netns(host_proc);
    let mut candidates = Vec::new();
    let mut seen = HashMap::new();
    let mut in_host = Vec::new();
    let mut open_error: Option<String> = None;
    for &pid in pids {
        let path = host_proc.join(pid.to_string()).join("ns").join("net");
        match NetNs::open(&path) {
            Ok(ns) if host.contains(&ns.id()) => in_host.push(pid),
            Ok(ns) => add_candidate(&mut candidates, &mut seen, ns, pid.to_string()),
            Err(NetNsError::Open { source, .. }) if vanished(&source) => {}
            Err(e) => {
                open_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    if candidates.is_empty() {
        return Err(match (open_error, in_host.is_empty()) {
            (Some(error), _) => DiscoveryError::Unopenable {
                uid: uid.to_string(),
                host_proc: host_proc.to_path_buf(),
                pids: abbreviate(pids),
                error,
            },
            (None, false) => DiscoveryError::HostNetwork {
                uid: uid.to_string(),
                pids: abbreviate(&in_host),
            },
            // Every process exited between the cgroup read and the namespace open.
            (None, true) => DiscoveryError::NoProcess {
                uid: uid.to_string(),
                host_proc: host_proc.to_path_buf(),
                unreadable,
            },
        });
    }
    pick_confirmed(uid, candidates, pod_ips, "pids")
}

/// Finds the namespace pinned under `dir` (`/var/run/netns`) that holds one of `pod_ips`:
/// every entry whose name starts with `name_prefix` (all when `None`) is opened (entries that
/// are not network namespaces are skipped), the host's and the daemon's own namespace are
/// skipped, duplicates (same (dev, inode) under two names) are merged, and each is checked
/// for the IPs. The UID only names the pod in errors: this step matches by IP alone.
///
/// Pod IPs are unique within a cluster, but not necessarily across everything pinned on a
/// machine (labs, other clusters' test namespaces): if two distinct namespaces hold a pod IP
/// the result is [`DiscoveryError::Ambiguous`], never a guess. Restrict the scan with
/// `name_prefix` (e.g. `cni-` for CNI-pinned namespaces, `<lab>-` in the lab) to avoid that.
pub fn find_named_netns(
    dir: &Path,
    name_prefix: Option<&str>,
    host_proc: &Path,
    pod_uid: &str,
    pod_ips: &[IpAddr],
) -> Result<NetNs, DiscoveryError> {
    let uid = canonical_uid(pod_uid);
    if pod_ips.is_empty() {
        return Err(DiscoveryError::NoIps { uid });
    }
    let entries = std::fs::read_dir(dir).map_err(|source| DiscoveryError::List {
        path: dir.to_path_buf(),
        source,
    })?;
    let host = not_pod_netns(host_proc);
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| name_prefix.is_none_or(|p| n.starts_with(p)))
        .collect();
    names.sort();
    let mut candidates = Vec::new();
    let mut seen = HashMap::new();
    for name in names {
        // Stale entries (namespace gone, file left) and other files fail to open: skip them.
        let Ok(ns) = NetNs::open(dir.join(&name)) else {
            continue;
        };
        if !host.contains(&ns.id()) {
            add_candidate(&mut candidates, &mut seen, ns, name);
        }
    }
    let checked = candidates.len();
    match pick_confirmed(&uid, candidates, pod_ips, "names") {
        Err(DiscoveryError::NoIpMatch { uid, ips, .. }) => Err(DiscoveryError::NoNamedNetns {
            uid,
            dir: dir.to_path_buf(),
            prefix: name_prefix.map(str::to_string),
            ips,
            checked,
        }),
        other => other,
    }
}
