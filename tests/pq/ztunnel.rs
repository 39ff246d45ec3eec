//! ztunnel, Istio's node proxy, as ambit's HBONE peer in a lab pod.
//!
//! One ztunnel runs in one pod (`PROXY_MODE=dedicated`) with Istio's in-pod rules installed
//! there by ambit's own `rules::apply` (its outbound capture and the connmark route that
//! source-preserving inbound needs), its local config listing the lab's pods as HBONE
//! workloads, and its fake CA. ambit trusts ztunnel (and ztunnel ambit) because the lab's CA
//! directory is replaced by the fake CA's root and key before any ambit daemon starts: both
//! sides then sign with the same key.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ambit::capture::CaptureOptions;
use ambit::identity::ca::{CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
use ambit::lab::{Lab, CA_DIR, READY_PORT};
use ambit::rules::{self, Backend, Families};
use anyhow::{bail, Context};

/// Environment variable naming the ztunnel binary (as for the bench).
const ZTUNNEL_ENV: &str = "AMBIT_ZTUNNEL";
/// How long ztunnel gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The ztunnel binary: `$AMBIT_ZTUNNEL`, else `<repo>/../shared/peers/ztunnel/ztunnel`; `Err`
/// says where it looked.
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

/// Makes the lab's CA the fake CA that ztunnel's `FAKE_CA=true` signs with (its files lie
/// beside the binary): a self-signed root as Istio's plug-in layout.
pub fn use_fake_ca(lab: &Lab, binary: &Path) -> anyhow::Result<()> {
    let from = binary.parent().context("ztunnel binary path")?;
    let dir = lab.dir().join(CA_DIR);
    let root = from.join("fake-ca-root-cert.pem");
    for file in [CA_CERT, ROOT_CERT, CERT_CHAIN] {
        std::fs::copy(&root, dir.join(file)).with_context(|| format!("{}", root.display()))?;
    }
    let key = from.join("fake-ca-key.pem");
    std::fs::copy(&key, dir.join(CA_KEY)).with_context(|| format!("{}", key.display()))?;
    Ok(())
}

/// One ztunnel in one lab pod, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Ztunnel {
    child: Child,
    log: PathBuf,
}

impl Ztunnel {
    /// Installs Istio's in-pod rules in `pod` and starts ztunnel there, knowing `mesh` as
    /// HBONE workloads, with `env` added (e.g. `COMPLIANCE_POLICY=pqc`).
    pub fn start(
        lab: &Lab,
        binary: &Path,
        pod: &str,
        mesh: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Ztunnel> {
        let work = lab.dir().join(format!("ztunnel-{pod}"));
        std::fs::create_dir_all(&work)?;
        let config = work.join("config.yaml");
        std::fs::write(&config, ambit::lab::ztunnel::local_config(lab, mesh)?)?;
        let ns = lab.pod_netns(pod)?;
        rules::apply(
            &ns,
            Backend::Iptables,
            &CaptureOptions::default(),
            Families::BOTH,
        )
        .with_context(|| format!("installing the in-pod rules in {pod}"))?;
        let p = lab.pod(pod)?;
        let log = work.join("ztunnel.log");
        let out = OpenOptions::new().create(true).append(true).open(&log)?;
        let mut cmd = ambit::lab::ztunnel::standalone_command(binary, &config, p);
        cmd.envs(env.iter().copied())
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        ns.prepare_command(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} in {pod}", binary.display()))?;
        Ok(Ztunnel { child, log })
    }

    /// Waits until ztunnel in `pod` answers 200 on `/healthz/ready`; fails quoting its log if
    /// it exits or is not ready by `timeout`.
    pub fn wait_ready(&mut self, lab: &Lab, pod: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("ztunnel in {pod} exited ({status}):\n{}", self.log());
            }
            match lab.node_http_get(pod, READY_PORT, "/healthz/ready") {
                Ok(r) if r.status == 200 => return Ok(()),
                _ if Instant::now() >= deadline => {
                    bail!(
                        "ztunnel in {pod} not ready after {timeout:?}:\n{}",
                        self.log()
                    )
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Everything ztunnel has logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet, so its
        // pid is still ours.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
