//! The [`Lab`] methods that run ambit in the lab: start a node daemon or a sidecar in its
//! namespace, stop it, wait until it is ready, and query its admin and readiness endpoints.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::super::{lock, Lab, LabError};
use super::http::{http_get, HttpResponse};
use super::{log_path, log_tail, spawn, ADMIN_PORT, READY_PORT, STOP_GRACE};
use crate::netns::NetNs;
use crate::workload::enroll::SIDECAR_STATUS_ANNOTATION;

impl Lab {
    /// Starts `<binary> run --node <node> --workloads <lab dir>/workloads.json
    /// --ca-address … --ca-root … --ca-token … <extra_args>` (in Kubernetes mode `--kube
    /// --kubeconfig <lab dir>/kubeconfig` instead of `--workloads …`; the CA flags name the
    /// lab's CA service, started first if needed, and a token minted for the node's daemon,
    /// unless `extra_args` choose `--insecure-local-ca-dir`)
    /// inside node `node`'s namespace, logging to `<lab dir>/ambit-<node>.log`, and records its
    /// pid in `lab.json`. Returns the pid.
    pub fn start_daemon(
        &self,
        node: &str,
        binary: &Path,
        extra_args: &[String],
    ) -> Result<u32, LabError> {
        self.node(node)?;
        let args = self.daemon_args(node, binary, extra_args)?;
        self.start_process(node, binary, &args)
    }

    /// The arguments of `ambit run` for `node` in this lab (with a fresh CA token), then
    /// `extra_args`.
    pub(super) fn daemon_args(
        &self,
        node: &str,
        binary: &Path,
        extra_args: &[String],
    ) -> Result<Vec<std::ffi::OsString>, LabError> {
        let mut args: Vec<std::ffi::OsString> = vec!["run".into(), "--node".into(), node.into()];
        // Kubernetes mode: the daemon watches the lab's stand-in API server.
        if self.state.kube {
            args.extend([
                "--kube".into(),
                "--kubeconfig".into(),
                self.kubeconfig_path().into(),
            ]);
        } else {
            args.extend(["--workloads".into(), self.workloads_path().into()]);
        }
        let token = super::super::ca::TokenSpec::daemon(node, self.name());
        args.extend(self.ca_client_args(node, &token, binary, extra_args)?);
        args.extend(extra_args.iter().map(Into::into));
        Ok(args)
    }

    /// Starts `<binary> sidecar --pod <ns>/<pod> --workloads … --ca-address … <extra_args>`
    /// (with a token bound to the pod) inside
    /// pod `pod`'s namespace (sidecar topology), logging to `<lab dir>/ambit-<pod>.log`. Its
    /// readiness and admin endpoints are then reached with [`Lab::wait_ready`] and
    /// [`Lab::admin_get`] under the pod's name.
    pub fn start_sidecar(
        &self,
        pod: &str,
        binary: &Path,
        extra_args: &[String],
    ) -> Result<u32, LabError> {
        let p = self.pod(pod)?;
        let mut args: Vec<std::ffi::OsString> = vec![
            "sidecar".into(),
            "--pod".into(),
            format!("{}/{}", p.namespace, p.name).into(),
            "--workloads".into(),
            self.workloads_path().into(),
        ];
        // The sidecar's own token, bound to its pod.
        let token = super::super::ca::TokenSpec {
            namespace: p.namespace.clone(),
            service_account: p.service_account.clone(),
            node: p.node.clone(),
            pod: Some((p.name.clone(), p.uid.clone())),
            ..super::super::ca::TokenSpec::daemon(&p.node, self.name())
        };
        args.extend(self.ca_client_args(pod, &token, binary, extra_args)?);
        args.extend(extra_args.iter().map(Into::into));
        self.start_process(pod, binary, &args)
    }

    /// Sidecar topology for the whole lab: marks every pod as carrying a sidecar (Istio's
    /// `sidecar.istio.io/status` annotation, so node daemons leave it alone and peers reach it
    /// through HBONE), starts `ambit sidecar` in every pod and waits until all are ready.
    pub fn start_sidecars(&self, binary: &Path, extra_args: &[String]) -> Result<(), LabError> {
        self.update_workloads(|s| {
            for p in &mut s.pods {
                p.annotations.insert(
                    SIDECAR_STATUS_ANNOTATION.into(),
                    r#"{"proxy":"ambit"}"#.into(),
                );
            }
        })?;
        let pods: Vec<String> = self.pods().iter().map(|p| p.name.clone()).collect();
        for pod in &pods {
            self.start_sidecar(pod, binary, extra_args)?;
        }
        for pod in &pods {
            self.wait_ready(pod, Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// Starts a process for `target` (a node or a pod) in its namespace and records it.
    pub(crate) fn start_process(
        &self,
        target: &str,
        binary: &Path,
        args: &[std::ffi::OsString],
    ) -> Result<u32, LabError> {
        let ns = self.target_netns(target)?;
        let mut daemons = lock(&self.daemons);
        if let Some(old) = daemons.get_mut(target) {
            if old.running(Some(&ns)) {
                return Err(self.daemon_error(target, format!("already running (pid {})", old.pid)));
            }
            // Reap the exited one before replacing it.
            let _ = old.stop(Some(&ns), Duration::ZERO);
        }
        let log = self.daemon_log_path(target);
        let daemon = spawn(&ns, target, binary, args, &log)?;
        let pid = daemon.pid;
        daemons.insert(target.to_string(), daemon);
        self.save(&daemons)?;
        Ok(pid)
    }

    /// The namespace of a node or a pod.
    pub(crate) fn target_netns(&self, target: &str) -> Result<NetNs, LabError> {
        let name = self.netns_name_of(target)?;
        NetNs::open(super::super::state::netns_path(name)).map_err(LabError::from)
    }

    /// Stops the daemon on `node`: SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL (which
    /// is reported as an error). No daemon running is not an error.
    pub fn stop_daemon(&self, node: &str) -> Result<(), LabError> {
        let ns = self.target_netns(node)?;
        let mut daemons = lock(&self.daemons);
        let Some(mut daemon) = daemons.remove(node) else {
            return Ok(());
        };
        let stopped = daemon.stop(Some(&ns), STOP_GRACE);
        self.save(&daemons)?;
        stopped.map_err(|message| self.daemon_error(node, message))
    }

    /// Pid of the daemon started on `node`, if any.
    pub fn daemon_pid(&self, node: &str) -> Option<u32> {
        lock(&self.daemons).get(node).map(|d| d.pid)
    }

    /// Waits until the daemon on `node` answers 200 on `/healthz/ready` (port 15021 inside the
    /// node namespace). Fails at once, quoting its log, if the daemon exits.
    pub fn wait_ready(&self, node: &str, timeout: Duration) -> Result<(), LabError> {
        let ns = self.target_netns(node)?;
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match lock(&self.daemons).get(node) {
                None => return Err(self.daemon_error(node, "no daemon was started".into())),
                Some(d) if !d.running(Some(&ns)) => {
                    let message = format!("pid {} exited before becoming ready", d.pid);
                    return Err(self.daemon_error(node, message));
                }
                Some(_) => {}
            }
            let attempt = Duration::from_secs(1).min(timeout);
            match http_get(&ns, READY_PORT, "/healthz/ready", attempt) {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => last = format!("status {}: {}", r.status, r.body.trim()),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                let message = format!("not ready after {timeout:?} (last attempt: {last})");
                return Err(self.daemon_error(node, message));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` on the daemon's admin endpoint (127.0.0.1:15000 inside the node namespace);
    /// the body, or an error unless the status is 200.
    pub fn admin_get(&self, node: &str, path: &str) -> Result<String, LabError> {
        let resp = self.node_http_get(node, ADMIN_PORT, path)?;
        if resp.status != 200 {
            return Err(LabError::Http {
                node: node.to_string(),
                url: format!("http://127.0.0.1:{ADMIN_PORT}{path}"),
                message: format!("status {}: {}", resp.status, resp.body.trim()),
            });
        }
        Ok(resp.body)
    }

    /// `GET path` on 127.0.0.1:`port` inside node `node`'s namespace, whatever the status.
    pub fn node_http_get(
        &self,
        node: &str,
        port: u16,
        path: &str,
    ) -> Result<HttpResponse, LabError> {
        let ns = self.target_netns(node)?;
        http_get(&ns, port, path, Duration::from_secs(5)).map_err(|message| LabError::Http {
            node: node.to_string(),
            url: format!("http://127.0.0.1:{port}{path}"),
            message,
        })
    }

    /// Path of the log of the daemon on `node`.
    pub fn daemon_log_path(&self, node: &str) -> PathBuf {
        log_path(self.dir(), node)
    }

    /// Everything the daemon on `node` has logged (empty if nothing yet).
    pub fn daemon_log(&self, node: &str) -> String {
        std::fs::read(self.daemon_log_path(node))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub(super) fn daemon_error(&self, node: &str, message: String) -> LabError {
        let log = self.daemon_log_path(node);
        LabError::Daemon {
            node: node.to_string(),
            message,
            tail: log_tail(&log),
            log,
        }
    }
}
