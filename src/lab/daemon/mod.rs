//! Running one ambit daemon per node and talking to its HTTP endpoints from inside the node.
//!
//! This file holds the process side (spawning a daemon in a namespace, checking and stopping
//! it, its log); `control` has the [`Lab`](super::Lab) methods that start, stop and query the
//! node daemons and sidecars, and `http` the minimal HTTP/1.1 client they are queried with.

mod control;
mod http;
mod upgrade;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::LabError;
use crate::netns::NetNs;

pub(crate) use http::http_get_addr;
pub use http::HttpResponse;
pub use upgrade::Retiring;

/// Port of the daemon's readiness endpoint (`/healthz/ready`).
pub const READY_PORT: u16 = 15021;
/// Port of the daemon's admin endpoint.
pub const ADMIN_PORT: u16 = 15000;
/// How long a daemon gets to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of the daemon log quoted in errors.
const LOG_TAIL_LINES: usize = 30;

/// A daemon the lab started (or found in `lab.json`).
#[derive(Debug)]
pub(crate) struct Daemon {
    pub pid: u32,
    /// Present when this process spawned the daemon, so it can be reaped; absent for a lab
    /// reopened with [`super::Lab::load`].
    pub child: Option<Child>,
}

/// Spawns `binary <args>` inside `ns`, in its own process group, appending stdout and stderr
/// to `log`. `label` names the process in errors.
pub(crate) fn spawn(
    ns: &NetNs,
    label: &str,
    binary: &Path,
    args: &[std::ffi::OsString],
    log: &Path,
) -> Result<Daemon, LabError> {
    let io_err = |context: String| move |source| LabError::Io { context, source };
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(format!("cannot open {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io_err(format!("cannot open {}", log.display())))?;
    let mut cmd = Command::new(binary);
    cmd.args(args);
    // Marks where each run starts when a daemon is restarted into the same log.
    let _ = writeln!(
        out,
        "=== lab: starting {cmd:?} in {} ===",
        ns.path().display()
    );
    // Own process group: a terminal's Ctrl-C does not hit it, and stop can kill its children.
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = ns.spawn(&mut cmd).map_err(io_err(format!(
        "cannot start {} for {label}",
        binary.display()
    )))?;
    Ok(Daemon {
        pid: child.id(),
        child: Some(child),
    })
}

impl Daemon {
    /// Whether the daemon is still running. A spawned daemon that exited stays an unreaped
    /// zombie until [`Daemon::stop`], so its pid (and process group id) cannot be recycled in
    /// between. A daemon this process did not spawn must still be inside `ns`, which guards
    /// against a recycled pid.
    /// Without `ns` (node namespace gone) such a daemon cannot be verified and counts as gone.
    pub fn running(&self, ns: Option<&NetNs>) -> bool {
        match (&self.child, ns) {
            (Some(_), _) => !exited_unreaped(self.pid),
            (None, Some(ns)) => NetNs::open(format!("/proc/{}/ns/net", self.pid))
                .map(|own| own.id() == ns.id())
                .unwrap_or(false),
            (None, None) => false,
        }
    }

    /// Sends SIGTERM if the daemon is running.
    pub fn terminate(&self, ns: Option<&NetNs>) {
        if self.running(ns) {
            send_signal(self.pid, libc::SIGTERM);
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL (the whole process group for a spawned
    /// daemon, which also reaches children it left behind).
    pub fn stop(&mut self, ns: Option<&NetNs>, grace: Duration) -> Result<(), String> {
        if self.running(ns) {
            send_signal(self.pid, libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while self.running(ns) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let survived = self.running(ns);
        match &mut self.child {
            Some(child) => {
                // Not reaped yet, so the group id still belongs to this daemon.
                send_signal_group(self.pid, libc::SIGKILL);
                child
                    .wait()
                    .map_err(|e| format!("cannot reap daemon {}: {e}", self.pid))?;
            }
            None if survived => {
                send_signal(self.pid, libc::SIGKILL);
            }
            None => {}
        }
        if survived {
            return Err(format!(
                "daemon {} ignored SIGTERM for {grace:?} and was killed",
                self.pid
            ));
        }
        Ok(())
    }
}

/// Sends `signal` to process `pid`; a process that is already gone is not an error here.
pub(crate) fn send_signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Sends `signal` to process group `pgid`.
fn send_signal_group(pgid: u32, signal: libc::c_int) {
    // SAFETY: killpg has no memory-safety preconditions.
    unsafe { libc::killpg(pgid as libc::pid_t, signal) };
}

/// Whether child `pid` has exited, without reaping it (`waitid` with `WNOWAIT`).
fn exited_unreaped(pid: u32) -> bool {
    // SAFETY: waitid only writes into the zeroed siginfo we own.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        // rc != 0 means no such child (already reaped): not running either.
        rc != 0 || info.si_pid() != 0
    }
}

/// The last lines of the log at `path` (empty when it cannot be read).
pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Path of the log of the daemon on `node`.
pub(crate) fn log_path(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("ambit-{node}.log"))
}
