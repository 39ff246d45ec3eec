//! Upgrading a node's daemon in place, as a DaemonSet rollout with `maxSurge: 1,
//! maxUnavailable: 0` does: the successor starts while the old daemon runs (it binds the pods'
//! capture listeners and the node's ports beside the old ones, SO_REUSEPORT), becomes ready by
//! adopting every pod, and only then is the old daemon sent SIGTERM to drain and exit.

use std::path::Path;
use std::time::{Duration, Instant};

use super::super::{lock, Lab, LabError};
use super::http::http_get;
use super::{log_path, spawn, Daemon};
use crate::netns::NetNs;

/// A daemon that was sent SIGTERM by [`Lab::upgrade_daemon`] and is draining. Dropping it
/// kills it if it is still running.
pub struct Retiring {
    daemon: Option<Daemon>,
    ns: NetNs,
    log: std::path::PathBuf,
}

impl Retiring {
    /// Whether the old daemon is still running (draining).
    pub fn running(&self) -> bool {
        self.daemon
            .as_ref()
            .is_some_and(|d| d.running(Some(&self.ns)))
    }

    /// Waits up to `timeout` for the old daemon to exit by itself; an error (with its log) if it
    /// had to be killed.
    pub fn wait_exit(mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        match self.daemon.take() {
            Some(mut d) => d
                .stop(Some(&self.ns), Duration::ZERO)
                .map_err(|e| format!("{e}\n{}", super::log_tail(&self.log))),
            None => Ok(()),
        }
    }

    /// The old daemon's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Retiring {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.stop(Some(&self.ns), Duration::ZERO);
        }
    }
}

impl Lab {
    /// Starts a successor daemon on `node` with the running daemon's base arguments plus
    /// `extra_args` (give it its own `--readiness`, and `ready_port` is where its readiness is
    /// polled), waits until it is ready, then SIGTERMs the old daemon, which drains. The
    /// successor becomes the node's daemon; its log replaces the node's log (the old one is kept
    /// as `ambit-<node>.prev.log`). The old daemon is returned, to wait for its exit.
    pub fn upgrade_daemon(
        &self,
        node: &str,
        binary: &Path,
        extra_args: &[String],
        ready_port: u16,
    ) -> Result<Retiring, LabError> {
        let ns = self.target_netns(node)?;
        let next_log = self.dir().join(format!("ambit-{node}.next.log"));
        let args = self.daemon_args(node, binary, extra_args)?;
        let mut successor = spawn(&ns, node, binary, &args, &next_log)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if !successor.running(Some(&ns)) {
                let message = format!(
                    "successor pid {} exited before becoming ready",
                    successor.pid
                );
                return Err(self.upgrade_error(node, message, &next_log));
            }
            match http_get(&ns, ready_port, "/healthz/ready", Duration::from_secs(1)) {
                Ok(r) if r.status == 200 => break,
                _ if Instant::now() >= deadline => {
                    let _ = successor.stop(Some(&ns), Duration::ZERO);
                    let message = "successor not ready within 30 s".to_string();
                    return Err(self.upgrade_error(node, message, &next_log));
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let mut daemons = lock(&self.daemons);
        let old = daemons.remove(node);
        if let Some(old) = &old {
            old.terminate(Some(&ns));
        }
        let current = log_path(self.dir(), node);
        let prev = self.dir().join(format!("ambit-{node}.prev.log"));
        let _ = std::fs::rename(&current, &prev);
        let _ = std::fs::rename(&next_log, &current);
        daemons.insert(node.to_string(), successor);
        self.save(&daemons)?;
        Ok(Retiring {
            daemon: old,
            ns,
            log: prev,
        })
    }

    fn upgrade_error(&self, node: &str, message: String, log: &Path) -> LabError {
        LabError::Daemon {
            node: node.to_string(),
            message,
            tail: super::log_tail(log),
            log: log.to_path_buf(),
        }
    }
}
