//! ztunnel, Istio's node proxy, as ambit's HBONE peer in a lab pod.
//!
//! One ztunnel runs in one pod (`PROXY_MODE=dedicated`) with Istio's in-pod rules installed
//! there by ambit's own `rules::apply` (its outbound capture and the connmark route that
//! source-preserving inbound needs), its local config listing the lab's pods as HBONE
//! workloads, and its fake CA. ambit trusts ztunnel (and ztunnel ambit) because the lab's CA
//! directory is replaced by the fake CA's root and key before any ambit daemon starts: both
//! sides then sign with the same key.

use std::path::Path;

use ambit::identity::ca::{CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
use ambit::lab::{Lab, CA_DIR};
use anyhow::Context;

pub use ambit::lab::ztunnel::{locate, Ztunnel};

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

/// Starts ztunnel in `pod` with Istio's in-pod rules, knowing `mesh` as HBONE workloads, with
/// `env` added (e.g. `COMPLIANCE_POLICY=pqc`).
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
    Ok(Ztunnel::start(lab, binary, &config, &work, pod, env)?)
}
