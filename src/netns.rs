//! Network namespaces: open one by path, run a short synchronous piece of work inside it, and
//! spawn commands inside it.
//!
//! A socket keeps the namespace it was created in, so the daemon only needs to be inside a pod's
//! namespace for the instant it calls `socket()`. [`NetNs::run`] switches the *calling thread*
//! into the namespace, runs the closure, and switches back before returning. The closure must not
//! block or await: it runs on whatever thread called it (often a tokio worker).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};

use nix::sched::{setns, CloneFlags};

/// Errors from opening or entering a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// The namespace file could not be opened (missing, or no permission).
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// Path that was tried.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The file exists but is not a network namespace.
    #[error("{path} is not a network namespace (expected an nsfs file such as /var/run/netns/<name> or /proc/<pid>/ns/net)")]
    NotANetns {
        /// Path that was tried.
        path: PathBuf,
    },
    /// `setns` into the namespace failed.
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        /// Path of the namespace.
        path: PathBuf,
        /// Underlying error.
        source: nix::Error,
    },
}

/// Identity of a network namespace: the (device, inode) pair of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct NetNsId {
    /// Device number of the nsfs mount.
    pub dev: u64,
    /// Inode number; unique per live namespace.
    pub ino: u64,
}

/// An open handle to a network namespace. Cheap to clone; the namespace stays alive while any
/// clone (or any socket created in it) exists.
#[derive(Clone, Debug)]
pub struct NetNs {
    file: Arc<File>,
    path: PathBuf,
    id: NetNsId,
}

/// The namespace this process started in, opened once so every thread can switch back to it.
fn home() -> &'static io::Result<File> {
    static HOME: OnceLock<io::Result<File>> = OnceLock::new();
    HOME.get_or_init(|| File::open("/proc/self/ns/net"))
}

/// `_IO(0xb7, 0x3)` from `linux/nsfs.h`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

impl NetNs {
    /// Opens the network namespace at `path` (`/var/run/netns/<name>`, `/proc/<pid>/ns/net`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetNsError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| NetNsError::Open {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        // NS_GET_NSTYPE tells what kind of namespace an fd refers to, whatever filesystem the
        // path came through (nsfs bind mount or /proc/<pid>/ns/net).
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
        if kind != libc::CLONE_NEWNET {
            return Err(NetNsError::NotANetns { path });
        }
        Ok(NetNs {
            id: NetNsId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            file: Arc::new(file),
            path,
        })
    }

    /// The namespace the daemon itself runs in.
    pub fn current() -> Result<Self, NetNsError> {
        Self::open("/proc/self/ns/net")
    }

    /// Path this handle was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (dev, inode) identity of the namespace.
    pub fn id(&self) -> NetNsId {
        self.id
    }

    /// Runs `work` with the calling thread inside this namespace, then switches back.
    ///
    /// `work` must be short and must not block on I/O: create sockets, nothing more.
    pub fn run<T>(&self, work: impl FnOnce() -> T) -> Result<T, NetNsError> {
        let home = home().as_ref().map_err(|e| NetNsError::Open {
            path: "/proc/self/ns/net".into(),
            source: io::Error::new(e.kind(), e.to_string()),
        })?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetNsError::Enter {
            path: self.path.clone(),
            source,
        })?;
        let out = work();
        if let Err(e) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A thread stuck in a pod's namespace would put later sockets in the wrong place;
            // there is no safe way to continue.
            eprintln!("fatal: cannot return to the daemon's network namespace: {e}");
            std::process::abort();
        }
        Ok(out)
    }

    /// Starts `cmd` inside this namespace.
    ///
    /// A child inherits the namespace of the thread that creates it, so the command is spawned
    /// from this thread while it is inside. That keeps the spawn free of `pre_exec`, which lets
    /// std use `posix_spawn` (a clone sharing the parent's memory until exec) instead of `fork`:
    /// a fork copies the daemon's page tables and write-protects its heap, which stalled every
    /// connection for up to 150 ms at each periodic rule check (`benches/README.md`).
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Child> {
        self.run(|| cmd.spawn()).map_err(io::Error::other)?
    }

    /// Runs `cmd` inside this namespace to completion, capturing its stdout and stderr, like
    /// [`Command::output`].
    pub fn output(&self, cmd: &mut Command) -> io::Result<Output> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        self.spawn(cmd)?.wait_with_output()
    }
}

impl PartialEq for NetNs {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for NetNs {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_namespace_opens_and_has_identity() {
        let ns = NetNs::current().expect("own netns");
        assert!(ns.id().ino > 0);
        let again = NetNs::current().expect("own netns");
        assert_eq!(ns, again);
    }

    #[test]
    fn regular_file_is_rejected_with_its_path() {
        let err = NetNs::open("/proc/self/status").unwrap_err();
        assert!(err.to_string().contains("/proc/self/status"), "{err}");
    }

    #[test]
    fn missing_path_is_reported() {
        let err = NetNs::open("/nonexistent/netns").unwrap_err();
        assert!(matches!(err, NetNsError::Open { .. }), "{err}");
    }
}
