//! Why a pod's network namespace could not be found or confirmed: [`DiscoveryError`], and the
//! helpers that keep its messages short (abbreviated pid and name lists, IP lists).

use std::borrow::Cow;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

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
    /// A pod IP that must be configured in a namespace is not
    /// ([`confirm_ips`](super::confirm_ips)).
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
pub(super) fn abbreviate<T: ToString>(items: &[T]) -> String {
    let mut s: Vec<String> = items.iter().take(MAX_LISTED).map(T::to_string).collect();
    if items.len() > MAX_LISTED {
        s.push(format!("... ({} in all)", items.len()));
    }
    s.join(", ")
}

pub(super) fn ip_list(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn or_none(ips: &[IpAddr]) -> Cow<'static, str> {
    if ips.is_empty() {
        Cow::Borrowed("no addresses")
    } else {
        Cow::Owned(ip_list(ips))
    }
}
