//! Process resource limits the daemons need: the open-file limit raised to what the system
//! allows.
//!
//! Every proxied connection costs the daemon two or three file descriptors, and containers
//! often start processes with a soft `RLIMIT_NOFILE` of 1024 while the hard limit is far
//! higher. Left as inherited, a node daemon would refuse connections after a few hundred of
//! them. Raising the soft limit to the hard limit needs no privilege, so `ambit run` and
//! `ambit sidecar` do it first thing and log both values.

use std::path::Path;

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// Where the kernel's per-process ceiling on file descriptors is published. A soft limit
/// above it is refused even when the hard limit is "unlimited".
const NR_OPEN_PATH: &str = "/proc/sys/fs/nr_open";

/// The open-file limit before and after [`raise_open_files`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// Soft limit found at start.
    pub old_soft: u64,
    /// Soft limit now in force.
    pub new_soft: u64,
    /// Hard limit (unchanged).
    pub hard: u64,
}

/// Reading or changing the open-file limit failed.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// `getrlimit(RLIMIT_NOFILE)` failed.
    #[error("cannot read the open-file limit (getrlimit RLIMIT_NOFILE): {0}")]
    Read(nix::Error),
    /// `setrlimit(RLIMIT_NOFILE)` refused the new soft limit.
    #[error("cannot raise the open-file soft limit from {from} to {to} (setrlimit RLIMIT_NOFILE): {source}")]
    Raise {
        /// Soft limit in force.
        from: u64,
        /// Soft limit asked for.
        to: u64,
        /// What the kernel said.
        source: nix::Error,
    },
}

/// The soft limit to ask for: the hard limit, or the kernel's `nr_open` ceiling when the hard
/// limit is unlimited; `None` when the soft limit is already there (or above: never lower it).
pub fn target_soft(soft: u64, hard: u64, nr_open: u64) -> Option<u64> {
    let ceiling = if hard == RLIM_INFINITY { nr_open } else { hard };
    (soft != RLIM_INFINITY && soft < ceiling).then_some(ceiling)
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (threads and children spawned
/// afterwards inherit it) and reports both values.
pub fn raise_open_files() -> Result<OpenFiles, LimitsError> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(LimitsError::Read)?;
    let Some(target) = target_soft(soft, hard, nr_open(Path::new(NR_OPEN_PATH))) else {
        return Ok(OpenFiles {
            old_soft: soft,
            new_soft: soft,
            hard,
        });
    };
    setrlimit(Resource::RLIMIT_NOFILE, target, hard).map_err(|source| LimitsError::Raise {
        from: soft,
        to: target,
        source,
    })?;
    Ok(OpenFiles {
        old_soft: soft,
        new_soft: target,
        hard,
    })
}

/// [`raise_open_files`], with the outcome logged. A failure is a warning, not fatal: the
/// daemon still works, only with fewer connections.
pub fn raise_open_files_logged() {
    match raise_open_files() {
        Ok(l) if l.new_soft != l.old_soft => tracing::info!(
            old_soft = l.old_soft,
            new_soft = l.new_soft,
            hard = l.hard,
            "raised the open-file limit (RLIMIT_NOFILE) to the hard limit"
        ),
        Ok(l) => tracing::info!(
            soft = l.old_soft,
            hard = l.hard,
            "open-file limit (RLIMIT_NOFILE) already at the hard limit"
        ),
        Err(e) => tracing::warn!(error = %e, "open-file limit left as inherited"),
    }
}

/// The kernel's `nr_open`, or its compiled-in default (1 << 20) when it cannot be read.
fn nr_open(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_goes_up_to_hard_and_never_down() {
        assert_eq!(target_soft(1024, 524_288, 1 << 20), Some(524_288));
        assert_eq!(target_soft(4096, 4096, 1 << 20), None);
        assert_eq!(target_soft(8192, 4096, 1 << 20), None, "never lowered");
    }

    #[test]
    fn unlimited_hard_means_the_kernel_ceiling() {
        assert_eq!(target_soft(1024, RLIM_INFINITY, 1 << 20), Some(1 << 20));
        assert_eq!(target_soft(RLIM_INFINITY, RLIM_INFINITY, 1 << 20), None);
        assert_eq!(target_soft(1 << 20, RLIM_INFINITY, 1 << 20), None);
    }

    #[test]
    fn nr_open_falls_back_when_unreadable() {
        assert_eq!(nr_open(Path::new("/nonexistent/nr_open")), 1 << 20);
        assert!(nr_open(Path::new(NR_OPEN_PATH)) >= 1024);
    }

    /// On this very process: afterwards the soft limit equals the hard limit (or the
    /// kernel ceiling), and a second call changes nothing.
    #[test]
    fn raising_is_idempotent() {
        let first = raise_open_files().unwrap();
        assert!(first.new_soft >= first.old_soft);
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, first.new_soft);
        let second = raise_open_files().unwrap();
        assert_eq!(second.old_soft, second.new_soft);
        assert_eq!(second.new_soft, first.new_soft);
    }
}
