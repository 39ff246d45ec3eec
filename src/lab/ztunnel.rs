//! Running Istio's ztunnel standalone for one lab pod, as the bench and the interop tests do:
//! the environment ztunnel reads for a dedicated-mode proxy with a fake CA and a local config
//! file (no istiod), keeping the client's source address and marking its own packets with
//! ambit's mark so the in-pod rules let them out; and supervising one such process.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Lab, LabError, LabPod, READY_PORT};
use crate::capture::CaptureOptions;
use crate::config::DEFAULT_TRUST_DOMAIN;
use crate::rules::{self, Backend, Families, MARK};

/// Environment variable naming the ztunnel binary.
pub const ZTUNNEL_ENV: &str = "AMBIT_ZTUNNEL";
/// How long ztunnel gets to exit after SIGTERM before it is killed.
const ZTUNNEL_STOP_GRACE: Duration = Duration::from_secs(3);
/// Log lines quoted when a ztunnel fails.
const LOG_TAIL_LINES: usize = 20;

/// The ztunnel binary: `$AMBIT_ZTUNNEL`, else `<repo>/../shared/peers/ztunnel/ztunnel`; `Err`
/// says where it looked when it is absent.
pub fn locate() -> Result<PathBuf, String> {
    let path = match std::env::var_os(ZTUNNEL_ENV) {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/ztunnel/ztunnel"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no ztunnel binary at {} (set {ZTUNNEL_ENV} to its path)",
            path.display()
        ))
    }
}

/// ztunnel's local config (`LOCAL_XDS_PATH`): the pods of `mesh` as HBONE workloads of the
/// default trust domain (the fake CA's), no policies or services, so every other address is
/// passthrough. JSON, which its YAML reader accepts.
pub fn local_config(lab: &Lab, mesh: &[&str]) -> Result<String, LabError> {
    let mut workloads = Vec::new();
    for name in mesh {
        let p = lab.pod(name)?;
        workloads.push(json!({
            "uid": format!("{}//v1/Pod/{}/{}", lab.name(), p.namespace, p.name),
            "name": p.name,
            "namespace": p.namespace,
            "serviceAccount": p.service_account,
            "workloadIps": [p.ipv4.to_string(), p.ipv6.to_string()],
            "protocol": "HBONE",
            "node": p.node,
            "network": "",
            "trustDomain": DEFAULT_TRUST_DOMAIN,
            "services": {},
        }));
    }
    let config = json!({"workloads": workloads, "policies": [], "services": []});
    Ok(format!("{config:#}\n"))
}

/// A `Command` for `binary` serving `pod` from the local config `local_config`; [`Ztunnel::start`]
/// adds the caller's variables, working directory, output and namespace entry.
fn standalone_command(binary: &Path, local_config: &Path, pod: &LabPod) -> Command {
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("RUST_LOG", "info")
        .env("FAKE_CA", "true")
        .env("XDS_ADDRESS", "")
        .env("CA_ADDRESS", "")
        .env("LOCAL_XDS_PATH", local_config)
        .env("PROXY_MODE", "dedicated")
        .env(
            "PROXY_WORKLOAD_INFO",
            format!("{}/{}/{}", pod.namespace, pod.name, pod.service_account),
        )
        .env("PACKET_MARK", MARK.to_string())
        .env("ENABLE_ORIG_SRC", "true")
        .env("NODE_NAME", &pod.node);
    cmd
}

/// One ztunnel serving one lab pod, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Ztunnel {
    pod: String,
    child: Child,
    log: PathBuf,
}

impl Ztunnel {
    /// Installs Istio's in-pod rules in `pod` (ambit's own `rules::apply`: the same chains,
    /// marks and ports as Istio's CNI) and starts `binary` there with the local config file
    /// `config` and `env` added, working and logging (`ztunnel.log`) in `work`.
    pub fn start(
        lab: &Lab,
        binary: &Path,
        config: &Path,
        work: &Path,
        pod: &str,
        env: &[(&str, &str)],
    ) -> Result<Ztunnel, LabError> {
        let failed = |message: String| LabError::Ztunnel {
            pod: pod.to_string(),
            message,
        };
        let io = |context: String| move |source| LabError::Io { context, source };
        std::fs::create_dir_all(work).map_err(io(format!("creating {}", work.display())))?;
        let ns = lab.pod_netns(pod)?;
        rules::apply(
            &ns,
            Backend::Iptables,
            &CaptureOptions::default(),
            Families::BOTH,
        )
        .map_err(|e| failed(format!("installing the in-pod rules: {e}")))?;
        let log = work.join("ztunnel.log");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(format!("opening {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("opening {}", log.display())))?;
        let mut cmd = standalone_command(binary, config, lab.pod(pod)?);
        cmd.envs(env.iter().copied())
            .current_dir(work)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = ns
            .spawn(&mut cmd)
            .map_err(|e| failed(format!("starting {}: {e}", binary.display())))?;
        Ok(Ztunnel {
            pod: pod.to_string(),
            child,
            log,
        })
    }

    /// Waits until ztunnel answers 200 on `/healthz/ready`; fails, quoting its log's last
    /// lines, if it exits or is not ready by `deadline`.
    pub fn wait_ready(&mut self, lab: &Lab, deadline: Instant) -> Result<(), LabError> {
        loop {
            let status = self.child.try_wait().map_err(|source| LabError::Io {
                context: format!("waiting for ztunnel in {}", self.pod),
                source,
            })?;
            if let Some(status) = status {
                return Err(self.failed(format!("exited ({status})")));
            }
            match lab.node_http_get(&self.pod, READY_PORT, "/healthz/ready") {
                Ok(r) if r.status == 200 => return Ok(()),
                _ if Instant::now() >= deadline => {
                    return Err(self.failed("not ready in time".to_string()))
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn failed(&self, what: String) -> LabError {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        LabError::Ztunnel {
            pod: self.pod.clone(),
            message: format!(
                "{what}\n--- last lines of {} ---\n{tail}",
                self.log.display()
            ),
        }
    }

    /// Everything ztunnel has logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pod it serves.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet, so its
        // pid is still ours.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + ZTUNNEL_STOP_GRACE;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            tracing::warn!(pod = %self.pod, "ztunnel ignored SIGTERM; killing it");
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
