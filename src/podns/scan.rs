//! Scanning the node for a pod's network namespace: by the pod UID in `/proc/<pid>/cgroup`,
//! and by the pod IP among named namespaces. Every candidate is confirmed by listing the
//! addresses configured inside it.
//!
//! All of this is blocking file-system work plus short `setns` switches on the calling thread:
//! call it from a blocking thread (`tokio::task::spawn_blocking`), not from async code.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::cgroup::{normalize_uid, pod_uid_from_cgroup};
use crate::netns::{NetNs, NetNsError, NetNsId};

/// Where the host's `/proc` is when the daemon runs on the host itself.
pub const DEFAULT_HOST_PROC: &str = "/proc";
/// Where `ip netns` and several runtimes pin named network namespaces.
pub const DEFAULT_NETNS_DIR: &str = "/var/run/netns";

/// Most pids or names listed in one error message.
const MAX_LISTED: usize = 6;

/// Why a pod's network namespace could not be found (or confirmed).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The pod has no IP yet, so no namespace can be confirmed as its own.
    #[error("pod {uid}: no pod IP known yet, so no network namespace can be confirmed as its own")]
    NoIps {
        /// Pod UID.
        uid: String,
    },
    /// A directory to scan (`<host proc>`, the named-netns dir) could not be listed.
    #[error("cannot list {}: {source}", path.display())]
    List {
        /// The directory.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// No process's cgroup names the pod.
    #[error("no process of pod {uid} under {}{}", host_proc.display(), unreadable_note(*unreadable))]
    NoProcess {
        /// Pod UID.
        uid: String,
        /// The `/proc` that was scanned.
        host_proc: PathBuf,
        /// Processes whose cgroup file could not be read (other than vanished ones).
        unreadable: usize,
    },
    /// The pod's processes were found but none of their namespaces could be opened.
    #[error("pod {uid}: processes {pids} found under {}, but their network namespaces cannot be opened: {error}", host_proc.display())]
    Unopenable {
        /// Pod UID.
        uid: String,
        /// The `/proc` that was scanned.
        host_proc: PathBuf,
        /// The pids (abbreviated).
        pids: String,
        /// The first error.
        error: String,
    },
    /// Every process of the pod is in the host network namespace (or the daemon's own).
    #[error("pod {uid}: all its processes ({pids}) are in the host network namespace (a hostNetwork pod?)")]
    HostNetwork {
        /// Pod UID.
        uid: String,
        /// The pids (abbreviated).
        pids: String,
    },
    /// Candidate namespaces were found but none has any of the pod's IPs.
    #[error(
        "pod {uid}: candidate network namespaces found but none has pod IP {ips}: {candidates}"
    )]
    NoIpMatch {
        /// Pod UID.
        uid: String,
        /// The pod IPs, comma-separated.
        ips: String,
        /// What was checked, with the addresses each holds.
        candidates: String,
    },
    /// More than one distinct namespace holds a pod IP.
    #[error("pod {uid}: several distinct network namespaces hold pod IP {ips}: {candidates}")]
    Ambiguous {
        /// Pod UID.
        uid: String,
        /// The pod IPs, comma-separated.
        ips: String,
        /// The namespaces that matched.
        candidates: String,
    },
    /// The named-namespace scan found no namespace holding a pod IP.
    #[error("pod {uid}: no network namespace under {}{} holds pod IP {ips} ({checked} checked)", dir.display(), prefix_note(prefix))]
    NoNamedNetns {
        /// Pod UID.
        uid: String,
        /// The directory scanned.
        dir: PathBuf,
        /// Name prefix the scan was restricted to.
        prefix: Option<String>,
        /// The pod IPs, comma-separated.
        ips: String,
        /// Distinct namespaces checked.
        checked: usize,
    },
    /// Both the cgroup scan and the named-namespace fallback failed.
    #[error("{cgroup}; fallback: {named}")]
    NotFound {
        /// Why the cgroup scan failed.
        cgroup: Box<DiscoveryError>,
        /// Why the named-namespace scan failed.
        named: Box<DiscoveryError>,
    },
    /// A pod IP that must be configured in a namespace is not ([`confirm_ips`]).
    #[error("pod IP {ip} is not configured in network namespace {} (it has: {has})", path.display())]
    IpMissing {
        /// The missing IP.
        ip: IpAddr,
        /// The namespace's path.
        path: PathBuf,
        /// The addresses it does have.
        has: String,
    },
    /// The addresses of a namespace could not be listed.
    #[error("cannot list the addresses in network namespace {}: {detail}", path.display())]
    Addresses {
        /// The namespace's path.
        path: PathBuf,
        /// What failed (entering the namespace, or getifaddrs).
        detail: String,
    },
}

fn unreadable_note(n: usize) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} processes' cgroup files could not be read)")
    }
}

fn prefix_note(prefix: &Option<String>) -> String {
    match prefix {
        Some(p) => format!(" (names starting with {p:?})"),
        None => String::new(),
    }
}

/// `a, b, c, ... (N in all)`.
fn abbreviate<T: ToString>(items: &[T]) -> String {
    let mut s: Vec<String> = items.iter().take(MAX_LISTED).map(T::to_string).collect();
    if items.len() > MAX_LISTED {
        s.push(format!("... ({} in all)", items.len()));
    }
    s.join(", ")
}

fn ip_list(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

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
/// This is the UID-based step only; [`Finder::find`] adds the named-namespace fallback.
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

/// A distinct namespace found while scanning, and how it was found.
struct Candidate {
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
fn add_candidate(
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

/// Keeps the candidates holding one of `pod_ips`; exactly one must remain.
fn pick_confirmed(
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

fn or_none(ips: &[IpAddr]) -> Cow<'static, str> {
    if ips.is_empty() {
        Cow::Borrowed("no addresses")
    } else {
        Cow::Owned(ip_list(ips))
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

/// Where to look for pods' network namespaces, in this order:
///
/// 1. an explicit path from the workload source (CNI `netns` argument, the lab's pod paths) —
///    the caller opens that itself with [`NetNs::open`] and [`confirm_ips`];
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
