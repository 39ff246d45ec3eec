//! Publication of the CA's revocation list: `ambit ca serve --publish-crl PATH` watches
//! `<ca dir>/ca-crl.pem` (which `ambit ca revoke` rewrites) and copies each new version to
//! PATH, the file the proxies' `--ca-crl` reads — beside the distributed root, as Istio's CA
//! publishes the plug-in CA's CRL next to its root certificate.
//!
//! A version is published only if it loads as a proxy would load it (PEM CRLs, signed by this
//! CA or by a root, not expired): a bad CRL in the CA directory is reported here and never
//! reaches the mesh, and the proxies keep the one published before.

use std::path::PathBuf;
use std::time::SystemTime;

use rustls::pki_types::CertificateDer;

use crate::config::CRL_POLL_INTERVAL;
use crate::identity::ca::CA_CRL;
use crate::identity::crl::sign::write_atomic;
use crate::identity::crl::CrlSet;
use crate::identity::Ca;

/// Polls `ca_dir/ca-crl.pem` and publishes each good new version to `target`, forever.
pub async fn publish_crl(ca: &Ca, ca_dir: PathBuf, target: PathBuf) {
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
            Ok(set) => match write_atomic(&target, &bytes) {
                Ok(()) => tracing::info!(target = %target.display(), crls = set.len(),
                    revoked = set.revoked_count(), "CRL published"),
                Err(e) => tracing::error!(error = %e, "cannot publish the CRL"),
            },
            Err(e) => tracing::error!(source = %source.display(), error = %e,
                "not publishing the CRL: it would not load on the proxies; they keep the \
                 previous one"),
        }
    }
}
