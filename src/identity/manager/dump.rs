//! What the config dump shows of the certificates: per identity, the certificate held (serial,
//! validity, seconds to expiry, the chain in PEM) and the last failure to issue one. Only
//! public material: the private key never leaves [`super::CertManager`].

use std::time::SystemTime;

use serde::Serialize;

use super::super::ca::fmt_time;
use super::CertManager;

/// One identity's certificate state.
#[derive(Clone, Debug, Serialize)]
pub struct CertView {
    /// The SPIFFE identity.
    pub identity: String,
    /// The certificate held, if any.
    pub certificate: Option<CertDetails>,
    /// Why the last attempt to issue or renew failed, if it did.
    pub last_error: Option<String>,
    /// Failed attempts since the last success.
    pub failed_attempts: u32,
}

/// A held certificate.
#[derive(Clone, Debug, Serialize)]
pub struct CertDetails {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Start of validity (RFC 3339, UTC).
    pub not_before: String,
    /// End of validity (RFC 3339, UTC).
    pub not_after: String,
    /// Seconds until `not_after` (negative once expired).
    pub expires_in_secs: i64,
    /// When it is due to be replaced (half-life).
    pub refresh_at: String,
    /// The chain, leaf first, as PEM `CERTIFICATE` blocks.
    pub chain: Vec<String>,
}

impl CertManager {
    /// Every identity allowed on this node (or held), sorted, with its certificate state.
    pub fn dump(&self) -> Vec<CertView> {
        let state = self.read();
        let mut ids: Vec<_> = state.certs.keys().chain(state.failures.keys()).collect();
        if let Some(allowed) = &state.allowed {
            ids.extend(allowed.iter());
        }
        ids.sort_by_key(|id| id.to_string());
        ids.dedup();
        let now = SystemTime::now();
        ids.into_iter()
            .map(|id| {
                let failure = state.failures.get(id);
                CertView {
                    identity: id.to_string(),
                    certificate: state.certs.get(id).map(|e| {
                        let c = &e.cert;
                        CertDetails {
                            serial: c.serial_hex(),
                            not_before: fmt_time(c.not_before),
                            not_after: fmt_time(c.not_after),
                            expires_in_secs: seconds_between(now, c.not_after),
                            refresh_at: fmt_time(c.refresh_at()),
                            chain: c
                                .chain
                                .iter()
                                .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())))
                                .collect(),
                        }
                    }),
                    last_error: failure.map(|f| f.error.clone()),
                    failed_attempts: failure.map_or(0, |f| f.attempts),
                }
            })
            .collect()
    }
}

/// `to - from` in whole seconds, negative when `to` is earlier.
fn seconds_between(from: SystemTime, to: SystemTime) -> i64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}
