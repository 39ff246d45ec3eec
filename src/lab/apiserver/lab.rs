//! The lab's Kubernetes mode: the stand-in API server as a process in the fabric namespace,
//! the lab's kubeconfig, and publishing the lab's workloads to it.
//!
//! The stand-in listens on the fabric bridge address (`172.31.0.1:6443`), which every node
//! reaches over the fabric. The lab itself runs in the machine's own namespace, which cannot
//! reach the fabric, so it publishes from a short-lived thread that enters the fabric
//! namespace for the duration of the publish ([`super::publish::block_on_in_netns`]): the
//! kube client's sockets are created there, and nothing in the machine's namespace changes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::publish::{self, SyncReport};
use crate::lab::daemon::{self, Daemon};
use crate::lab::{lock, state, Lab, LabError, STOP_GRACE};
use crate::netns::NetNs;
use crate::workload::Snapshot;

/// Port the lab's stand-in listens on (the real API server's usual port).
pub const APISERVER_PORT: u16 = 6443;
/// The lab's kubeconfig, in the lab directory.
pub const KUBECONFIG_FILE: &str = "kubeconfig";
/// The stand-in's state file, in the lab directory.
pub const STATE_FILE: &str = "apiserver.json";
/// The stand-in's log, in the lab directory.
const LOG_FILE: &str = "apiserver.log";
/// The snapshot last published to the stand-in (for the three-way label merge).
const PUBLISHED_FILE: &str = "published.json";
/// How long the stand-in gets to answer after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The stand-in process of a lab.
#[derive(Debug)]
pub(crate) struct ApiServerProcess {
    daemon: Daemon,
    /// Killed when dropped (spawned by this process for a lab this value owns).
    kill_on_drop: bool,
}

impl ApiServerProcess {
    /// The process recorded in `lab.json` of a lab that was loaded, not started here.
    pub fn recorded(pid: u32) -> Self {
        ApiServerProcess {
            daemon: Daemon { pid, child: None },
            kill_on_drop: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid
    }

    /// Leaves the process running when this value is dropped (`Lab::detach`).
    pub fn detach(&mut self) {
        self.kill_on_drop = false;
    }
}

impl Drop for ApiServerProcess {
    fn drop(&mut self) {
        if self.kill_on_drop && self.daemon.child.is_some() {
            let _ = self.daemon.stop(None, Duration::from_secs(2));
        }
    }
}

impl Lab {
    /// Path of the lab's kubeconfig (written by `Lab::up` in Kubernetes mode).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir().join(KUBECONFIG_FILE)
    }

    /// `http://172.31.0.1:6443`: the stand-in as nodes and pods reach it.
    pub fn apiserver_url(&self) -> String {
        format!("http://{}", self.apiserver_addr())
    }

    fn apiserver_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.fabric_ipv4()), APISERVER_PORT)
    }

    /// Path of the stand-in's log.
    pub fn apiserver_log_path(&self) -> PathBuf {
        self.dir().join(LOG_FILE)
    }

    /// Path of the stand-in's state file.
    pub fn apiserver_state_path(&self) -> PathBuf {
        self.dir().join(STATE_FILE)
    }

    /// Pid of the stand-in, if one was started (or recorded in `lab.json`).
    pub fn apiserver_pid(&self) -> Option<u32> {
        lock(&self.apiserver).as_ref().map(ApiServerProcess::pid)
    }

    /// Whether the stand-in is running.
    pub fn apiserver_running(&self) -> bool {
        let Ok(ns) = self.fabric_netns() else {
            return false;
        };
        lock(&self.apiserver)
            .as_ref()
            .is_some_and(|p| p.daemon.running(Some(&ns)))
    }

    /// Writes the kubeconfig pointing at the lab's stand-in (`Lab::up` in Kubernetes mode).
    pub(crate) fn write_kubeconfig(&self) -> Result<(), LabError> {
        let path = self.kubeconfig_path();
        super::write_kubeconfig(&path, &self.apiserver_url()).map_err(|source| LabError::Io {
            context: format!("cannot write {}", path.display()),
            source,
        })
    }

    /// Starts `<binary> lab apiserver --listen 172.31.0.1:6443 --state <lab dir>/apiserver.json`
    /// in the fabric namespace (own process group, log in `<lab dir>/apiserver.log`, pid in
    /// `lab.json`), waits until it answers `/version`, then publishes the workload file to it.
    /// Returns the pid. Only for a lab built with `kube: true`.
    pub fn start_apiserver(&self, binary: &Path) -> Result<u32, LabError> {
        if !self.state().kube {
            return Err(LabError::Spec(format!(
                "lab {} was not built in Kubernetes mode (LabSpec.kube / `ambit lab up --kube`)",
                self.name()
            )));
        }
        let ns = self.fabric_netns()?;
        let pid = {
            let mut slot = lock(&self.apiserver);
            if let Some(old) = slot.as_mut() {
                if old.daemon.running(Some(&ns)) {
                    let message = format!("already running (pid {})", old.pid());
                    return Err(self.apiserver_error(message));
                }
                // Reap the exited one before replacing it.
                let _ = old.daemon.stop(Some(&ns), Duration::ZERO);
            }
            let process = self.spawn_apiserver(&ns, binary)?;
            let pid = process.pid();
            *slot = Some(process);
            pid
        };
        self.save(&lock(&self.daemons))?;
        self.wait_apiserver(&ns, START_TIMEOUT)?;
        let _guard = lock(&self.workloads_lock);
        self.publish(&self.workloads()?)?;
        Ok(pid)
    }

    /// Stops the stand-in: SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL (reported as an
    /// error). Its state file stays, so a restarted stand-in has the same objects. Not running
    /// is not an error.
    pub fn stop_apiserver(&self) -> Result<(), LabError> {
        let ns = self.fabric_netns()?;
        let Some(mut process) = lock(&self.apiserver).take() else {
            return Ok(());
        };
        process.kill_on_drop = false;
        let stopped = process.daemon.stop(Some(&ns), STOP_GRACE);
        self.save(&lock(&self.daemons))?;
        stopped.map_err(|message| self.apiserver_error(message))
    }

    /// Stops and starts the stand-in (it reloads its state file).
    pub fn restart_apiserver(&self, binary: &Path) -> Result<u32, LabError> {
        self.stop_apiserver()?;
        self.start_apiserver(binary)
    }

    /// Everything the stand-in has logged.
    pub fn apiserver_log(&self) -> String {
        std::fs::read(self.apiserver_log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// After the workload file was written: in Kubernetes mode with the stand-in running, make
    /// its objects match `snapshot`. (A stopped stand-in gets the workload file when started.)
    /// The caller holds `workloads_lock`.
    pub(crate) fn publish_if_kube(&self, snapshot: &Snapshot) -> Result<(), LabError> {
        if !self.state().kube || !self.apiserver_running() {
            return Ok(());
        }
        self.publish(snapshot).map(|_| ())
    }

    /// Makes the stand-in's objects match `snapshot`, from a thread in the fabric namespace.
    fn publish(&self, snapshot: &Snapshot) -> Result<SyncReport, LabError> {
        let nodes: Vec<String> = self.nodes().iter().map(|n| n.name.clone()).collect();
        let snapshot = &crate::lab::ca::with_daemon_pods(self.name(), &nodes, snapshot);
        let published = self.dir().join(PUBLISHED_FILE);
        let old: Option<Snapshot> = state::read_snapshot(&published).ok();
        let host_ips: BTreeMap<String, Vec<IpAddr>> = self
            .nodes()
            .iter()
            .map(|n| (n.name.clone(), vec![IpAddr::V4(n.ipv4), IpAddr::V6(n.ipv6)]))
            .collect();
        let kubeconfig = self.kubeconfig_path();
        let ns = self.fabric_netns()?;
        let report = publish::block_on_in_netns(&ns, || async {
            let client = publish::client_from_kubeconfig(&kubeconfig).await?;
            publish::sync(&client, old.as_ref(), snapshot, &host_ips).await
        })
        .map_err(|e| self.apiserver_error(format!("publishing the workloads: {e:#}")))?;
        state::write_snapshot(&published, snapshot)?;
        Ok(report)
    }

    fn spawn_apiserver(&self, ns: &NetNs, binary: &Path) -> Result<ApiServerProcess, LabError> {
        let args: Vec<std::ffi::OsString> = vec![
            "lab".into(),
            "apiserver".into(),
            "--listen".into(),
            self.apiserver_addr().to_string().into(),
            "--state".into(),
            self.apiserver_state_path().into(),
        ];
        let daemon = daemon::spawn(
            ns,
            "the stand-in API server",
            binary,
            &args,
            &self.apiserver_log_path(),
        )?;
        Ok(ApiServerProcess {
            daemon,
            kill_on_drop: true,
        })
    }

    /// Polls `/version` from inside the fabric until the stand-in answers 200.
    fn wait_apiserver(&self, ns: &NetNs, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        let addr = self.apiserver_addr();
        let mut last;
        loop {
            let running = lock(&self.apiserver)
                .as_ref()
                .map(|p| (p.pid(), p.daemon.running(Some(ns))));
            match running {
                None => {
                    return Err(self.apiserver_error("no stand-in API server was started".into()))
                }
                Some((pid, false)) => {
                    return Err(self.apiserver_error(format!("pid {pid} exited before answering")))
                }
                Some(_) => {}
            }
            match daemon::http_get_addr(ns, addr, "/version", Duration::from_secs(1)) {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => last = format!("status {}: {}", r.status, r.body.trim()),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                let message =
                    format!("not answering on {addr} after {timeout:?} (last attempt: {last})");
                return Err(self.apiserver_error(message));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn apiserver_error(&self, message: String) -> LabError {
        let log = self.apiserver_log_path();
        LabError::ApiServer {
            message,
            tail: daemon::log_tail(&log),
            log,
        }
    }
}
