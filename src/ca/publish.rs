//! Publication of the CA's revocation list: `ambit ca serve` watches `<ca dir>/ca-crl.pem`
//! (which `ambit ca revoke` rewrites, or the `ca-crl.pem` key of the mounted `cacerts` Secret)
//! and publishes each new version where the proxies' `--ca-crl` finds it, as Istio's CA
//! publishes the plug-in CA's CRL next to its root certificate:
//!
//! - `--publish-crl PATH`: a file (beside the distributed root; the lab's way);
//! - `--publish-crl-configmap NAMESPACE/NAME` (with `--kube`): the `ca-crl.pem` key of a
//!   ConfigMap, by server-side apply — Istio's `istio-ca-crl`, which the DaemonSet mounts.
//!
//! A version is published only if it loads as a proxy would load it (PEM CRLs, signed by this
//! CA or by a root, not expired): a bad CRL in the CA directory is reported here and never
//! reaches the mesh, and the proxies keep the one published before.

use std::path::PathBuf;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use rustls::pki_types::CertificateDer;

use crate::config::CRL_POLL_INTERVAL;
use crate::identity::ca::CA_CRL;
use crate::identity::crl::sign::write_atomic;
use crate::identity::crl::CrlSet;
use crate::identity::Ca;

/// Where a CRL is published.
pub enum CrlTarget {
    /// A file, replaced atomically.
    File(PathBuf),
    /// The `ca-crl.pem` key of a ConfigMap.
    ConfigMap {
        /// Client with the rights to apply it.
        client: kube::Client,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl CrlTarget {
    async fn write(&self, bytes: &[u8]) -> Result<String, String> {
        match self {
            CrlTarget::File(path) => {
                write_atomic(path, bytes)?;
                Ok(path.display().to_string())
            }
            CrlTarget::ConfigMap {
                client,
                namespace,
                name,
            } => {
                let pem = std::str::from_utf8(bytes)
                    .map_err(|_| "the CRL file is not text (PEM)".to_string())?;
                let cm = serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": namespace},
                    "data": {CA_CRL: pem},
                });
                Api::<ConfigMap>::namespaced(client.clone(), namespace)
                    .patch(
                        name,
                        &PatchParams::apply("ambit-ca").force(),
                        &Patch::Apply(&cm),
                    )
                    .await
                    .map_err(|e| format!("ConfigMap {namespace}/{name}: {e}"))?;
                Ok(format!("ConfigMap {namespace}/{name}"))
            }
        }
    }
}

/// Polls `ca_dir/ca-crl.pem` and publishes each good new version to every target, forever.
pub async fn publish_crl(ca: &Ca, ca_dir: PathBuf, targets: Vec<CrlTarget>) {
    // The CA's own certificate verifies its CRL even when it is an intermediate.
    let mut signers: Vec<CertificateDer<'static>> = ca.chain().to_vec();
    signers.extend(ca.root_certs().iter().cloned());
    let source = ca_dir.join(CA_CRL);
    let mut seen: Option<Vec<u8>> = None;
    let mut tick = tokio::time::interval(CRL_POLL_INTERVAL);
    loop {
        tick.tick().await;
        let bytes = match tokio::fs::read(&source).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::error!(source = %source.display(), error = %e, "cannot read the CRL");
                continue;
            }
        };
        if seen.as_ref() == Some(&bytes) {
            continue;
        }
        seen = Some(bytes.clone());
        match CrlSet::parse(&bytes, &signers, SystemTime::now()) {
            Ok(set) => {
                for target in &targets {
                    match target.write(&bytes).await {
                        Ok(to) => tracing::info!(
                            to,
                            crls = set.len(),
                            revoked = set.revoked_count(),
                            "CRL published"
                        ),
                        // Retried on the next change only; the proxies keep the previous one.
                        Err(e) => tracing::error!(error = %e, "cannot publish the CRL"),
                    }
                }
            }
            Err(e) => tracing::error!(source = %source.display(), error = %e,
                "not publishing the CRL: it would not load on the proxies; they keep the \
                 previous one"),
        }
    }
}
