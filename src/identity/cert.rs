//! A workload's certificate (chain and key) as held by the cert manager, and the leaf a CA
//! signs. Built the same way whether the CA is in-process or a remote CA service.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ca::fmt_time;
use super::{tls, Identity, IdentityError};

/// A workload's certificate chain and private key, valid for one identity.
///
/// Immutable: rotation produces a new `WorkloadCert`, so a connection that holds one keeps it.
pub struct WorkloadCert {
    /// The identity in the leaf's URI SAN.
    pub identity: Identity,
    /// Leaf first, then the CA chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8, ECDSA P-256).
    pub key: PrivateKeyDer<'static>,
    /// The leaf's notBefore (back-dated by [`CLOCK_SKEW`]).
    pub not_before: SystemTime,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
    /// When the leaf was issued (whole seconds).
    pub issued_at: SystemTime,
    /// The leaf's serial number (big-endian bytes).
    pub serial: Vec<u8>,
    certified: Arc<CertifiedKey>,
}

/// A leaf the CA signed, followed by the CA chain.
#[derive(Debug)]
pub struct SignedLeaf {
    /// Leaf first, then the CA chain (without the root unless the chain file includes it).
    pub chain: Vec<CertificateDer<'static>>,
    /// When it was signed (whole seconds).
    pub issued_at: SystemTime,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
}

impl WorkloadCert {
    /// Assembles a certificate from a chain (leaf first) and the leaf's private key, checking
    /// that the leaf is for `id` alone and that the key belongs to it. Validity and serial are
    /// read from the leaf; `issued_at` is when it was asked for (rotation is at half-way
    /// between that and expiry).
    pub fn new(
        id: &Identity,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        issued_at: SystemTime,
    ) -> Result<WorkloadCert, IdentityError> {
        let err = |problem: String| IdentityError::Issue {
            identity: id.to_string(),
            problem,
        };
        let leaf = chain
            .first()
            .ok_or_else(|| err("empty certificate chain".into()))?;
        let (_, x509) = X509Certificate::from_der(leaf)
            .map_err(|e| err(format!("leaf is not an X.509 certificate: {e}")))?;
        let uris = super::verify::uri_sans(leaf)?;
        if uris != [id.to_string()] {
            return Err(err(format!(
                "the leaf's URI SANs are [{}], expected exactly {id}",
                uris.join(", ")
            )));
        }
        let validity = x509.validity();
        let secs = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
        let not_before = secs(validity.not_before.timestamp());
        let not_after = secs(validity.not_after.timestamp());
        let serial = x509.raw_serial().to_vec();
        // Parsed once here so that building a TLS config per connection stays cheap; rustls
        // also checks that the key matches the leaf.
        let certified = CertifiedKey::from_der(chain.clone(), key.clone_key(), &tls::provider())
            .map_err(|e| err(e.to_string()))?;
        Ok(WorkloadCert {
            identity: id.clone(),
            chain,
            key,
            not_before,
            not_after,
            issued_at: issued_at.clamp(not_before, not_after),
            serial,
            certified: Arc::new(certified),
        })
    }

    /// When the certificate stops being valid.
    pub fn expires_at(&self) -> SystemTime {
        self.not_after
    }

    /// When to replace it: half-way between issuance and expiry, which leaves the other half
    /// to retry if the CA is briefly unusable. The back-dating is not counted, so a short
    /// validity still gets a useful first half.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.issued_at)
            .unwrap_or_default();
        self.issued_at + life / 2
    }

    /// The end-entity certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The serial number as lowercase hex, for logs.
    pub fn serial_hex(&self) -> String {
        self.serial.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The chain and key as rustls wants them, parsed once at issuance.
    pub(crate) fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }
}

impl fmt::Debug for WorkloadCert {
    // The private key is deliberately left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial_hex())
            .field("not_before", &fmt_time(self.not_before))
            .field("not_after", &fmt_time(self.not_after))
            .finish_non_exhaustive()
    }
}
