//! The certificate authority that signs workload certificates, read from Istio's plug-in CA
//! directory layout, and the certificates it issues.
//!
//! | file | contents |
//! |---|---|
//! | `ca-cert.pem` | the signing certificate (a CA: basicConstraints cA=true) |
//! | `ca-key.pem` | its private key: PKCS#8, PKCS#1 (RSA) or SEC1 (ECDSA) |
//! | `root-cert.pem` | the trust anchor(s) peers are verified against |
//! | `cert-chain.pem` | the chain from `ca-cert.pem` towards the root, sent after each leaf |
//! | `ca-crl.pem` | optional: revoked certificates, CRLs signed by the CA ([`super::crl`]) |

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::RootCertStore;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{keys, tls, Identity, IdentityError};

mod sign;

pub use super::cert::{SignedLeaf, WorkloadCert};

/// Signing certificate file name.
pub const CA_CERT: &str = "ca-cert.pem";
/// Signing key file name.
pub const CA_KEY: &str = "ca-key.pem";
/// Trust anchors file name.
pub const ROOT_CERT: &str = "root-cert.pem";
/// Chain (signing certificate up to the root) file name.
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// Certificate revocation list file name (Istio's plug-in layout; optional).
pub const CA_CRL: &str = "ca-crl.pem";

/// How far a leaf's notBefore is moved into the past, so that a peer whose clock is slightly
/// behind ours does not reject a certificate we just issued as "not yet valid".
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Lifetime of a root created by [`init`].
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A loaded certificate authority able to sign workload certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Certificates sent after each leaf: `ca-cert.pem` first, then the rest of the chain.
    chain: Vec<CertificateDer<'static>>,
    root_certs: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    not_after: SystemTime,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("chain_len", &self.chain.len())
            .field("roots", &self.root_certs.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads and checks a CA directory (see the module documentation for the layout).
    ///
    /// Besides parsing, this checks that the signing certificate is a currently valid CA, that
    /// the key belongs to it, and, by issuing and verifying a throw-away leaf, that the chain
    /// really leads to a trust anchor in `root-cert.pem`: a CA that cannot produce verifiable
    /// certificates should fail at start-up, not at the first connection.
    pub fn load(dir: &Path) -> Result<Ca, IdentityError> {
        Self::load_at(dir, SystemTime::now())
    }

    fn load_at(dir: &Path, now: SystemTime) -> Result<Ca, IdentityError> {
        let ca_path = dir.join(CA_CERT);
        let ca_cert = read_certs(&ca_path, "the CA's signing certificate")?.swap_remove(0);
        let (_, x509) = X509Certificate::from_der(&ca_cert)
            .map_err(|e| file_err(&ca_path, format!("not an X.509 certificate: {e}")))?;
        if !x509.is_ca() {
            return Err(file_err(
                &ca_path,
                "is not a CA certificate (basicConstraints cA=true is missing)",
            ));
        }
        if let Ok(Some(ku)) = x509.key_usage() {
            if !ku.value.key_cert_sign() {
                return Err(file_err(&ca_path, "key usage does not allow keyCertSign"));
            }
        }
        let validity = x509.validity();
        let (not_before, not_after) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        let now_secs = unix_secs(now);
        if now_secs > not_after {
            return Err(file_err(
                &ca_path,
                format!("CA certificate expired at {}", validity.not_after),
            ));
        }
        if now_secs < not_before {
            return Err(file_err(
                &ca_path,
                format!("CA certificate not valid before {}", validity.not_before),
            ));
        }

        let key_path = dir.join(CA_KEY);
        let key_pem = read_file(&key_path)?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            pem::Error::NoItemsFound => file_err(
                &key_path,
                "no private key found; expected a PEM block 'PRIVATE KEY' (PKCS#8), \
                 'RSA PRIVATE KEY' (PKCS#1) or 'EC PRIVATE KEY' (SEC1)",
            ),
            e => file_err(&key_path, format!("not valid PEM: {e}")),
        })?;
        let key = keys::key_pair_from_der(&key_der).map_err(|e| file_err(&key_path, e))?;
        if key.public_key_raw() != &*x509.public_key().subject_public_key.data {
            return Err(file_err(
                &key_path,
                format!("private key does not match the public key of {CA_CERT}"),
            ));
        }

        let root_path = dir.join(ROOT_CERT);
        let root_certs = read_certs(&root_path, "one or more trust anchors")?;
        let mut roots = RootCertStore::empty();
        for (i, c) in root_certs.iter().enumerate() {
            roots.add(c.clone()).map_err(|e| {
                file_err(
                    &root_path,
                    format!("certificate #{} unusable as trust anchor: {e}", i + 1),
                )
            })?;
        }

        let chain_path = dir.join(CERT_CHAIN);
        let mut chain = vec![ca_cert.clone()];
        for c in read_certs(&chain_path, "the chain from the CA certificate to the root")? {
            // The file usually starts with ca-cert.pem itself; never send a certificate twice.
            if !chain.contains(&c) {
                chain.push(c);
            }
        }

        let issuer = Issuer::from_ca_cert_der(&ca_cert, key)
            .map_err(|e| file_err(&ca_path, format!("cannot be used to sign: {e}")))?;
        let ca = Ca {
            issuer,
            chain,
            root_certs,
            roots: Arc::new(roots),
            not_after: UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64),
        };
        ca.self_check(now).map_err(|e| {
            file_err(
                &chain_path,
                format!(
                    "{CA_CERT} and {CERT_CHAIN} do not lead to a trust anchor in {ROOT_CERT}: {e}"
                ),
            )
        })?;
        Ok(ca)
    }

    /// Issues a leaf and verifies it against our own roots, as a peer would.
    fn self_check(&self, now: SystemTime) -> Result<(), String> {
        let probe =
            Identity::new("ambit.invalid", "ambit", "self-check").map_err(|e| e.to_string())?;
        let cert = self
            .issue(&probe, Duration::from_secs(60), now)
            .map_err(|e| e.to_string())?;
        let parsed = ParsedCertificate::try_from(&cert.chain[0]).map_err(|e| e.to_string())?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            &cert.chain[1..],
            UnixTime::since_unix_epoch(Duration::from_secs(unix_secs(now).max(0) as u64)),
            tls::provider().signature_verification_algorithms.all,
        )
        .map_err(|e| e.to_string())
    }

    /// Issues a certificate for `id` with a fresh ECDSA P-256 key.
    ///
    /// The leaf carries the identity as its only SAN (a URI), may be used for both TLS server
    /// and client authentication, is valid from `now - CLOCK_SKEW` to `now + validity` (but
    /// never beyond the CA's own expiry, which would make it unverifiable anyway) and is
    /// followed in the chain by the CA chain.
    pub fn issue(
        &self,
        id: &Identity,
        validity: Duration,
        now: SystemTime,
    ) -> Result<WorkloadCert, IdentityError> {
        let err = |problem: String| IdentityError::Issue {
            identity: id.to_string(),
            problem,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| err(e.to_string()))?;
        let leaf = self.sign_leaf(id, &key, validity, now)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        WorkloadCert::new(id, leaf.chain, key_der, leaf.issued_at)
    }

    /// Signs a leaf for `id` over `public_key`: the identity as the only SAN (a URI), usable
    /// for TLS server and client authentication, valid from `now - CLOCK_SKEW` to
    /// `now + validity` (never beyond the CA's own expiry, which would make it unverifiable),
    /// followed by the CA chain.
    pub(crate) fn sign_leaf(
        &self,
        id: &Identity,
        public_key: &impl rcgen::PublicKeyData,
        validity: Duration,
        now: SystemTime,
    ) -> Result<SignedLeaf, IdentityError> {
        let err = |problem: String| IdentityError::Issue {
            identity: id.to_string(),
            problem,
        };
        // Certificates carry whole seconds; keep our own view equal to what is in the cert.
        let issued_at = UNIX_EPOCH + Duration::from_secs(unix_secs(now).max(0) as u64);
        let not_before = issued_at.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH);
        let not_after = issued_at
            .checked_add(validity)
            .unwrap_or(self.not_after)
            .min(self.not_after);
        if not_after <= issued_at {
            return Err(err(format!(
                "the CA expires at {}, no validity left",
                fmt_time(self.not_after)
            )));
        }

        let mut params = CertificateParams::default();
        // Istio workload certificates have an empty subject; the identity lives in the SAN
        // (rcgen then marks the SAN critical, as RFC 5280 requires).
        params.distinguished_name = DistinguishedName::new();
        let uri = Ia5String::try_from(id.to_string()).map_err(|e| err(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_offset(not_before).map_err(err)?;
        params.not_after = to_offset(not_after).map_err(err)?;

        let leaf = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| err(e.to_string()))?;
        let mut chain = Vec::with_capacity(1 + self.chain.len());
        chain.push(leaf.der().clone());
        chain.extend(self.chain.iter().cloned());
        Ok(SignedLeaf {
            chain,
            issued_at,
            not_after,
        })
    }

    /// The trust anchors from `root-cert.pem`, ready for rustls verifiers.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// The trust anchors from `root-cert.pem` as DER.
    pub fn root_certs(&self) -> &[CertificateDer<'static>] {
        &self.root_certs
    }

    /// The certificates sent after every leaf (`ca-cert.pem` first).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// When the signing certificate expires; no leaf outlives it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The signing certificate and key, for CRLs ([`super::crl::sign`]).
    pub(crate) fn signer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

/// Creates a new self-signed root CA (ECDSA P-256, 10 years) in `dir` in the plug-in layout and
/// loads it. Refuses to overwrite any existing file, so an existing CA is never lost.
pub fn init(dir: &Path) -> Result<Ca, IdentityError> {
    let init_err = |path: &Path, problem: String| IdentityError::CaInit {
        path: path.to_owned(),
        problem,
    };
    fs::create_dir_all(dir).map_err(|e| init_err(dir, e.to_string()))?;
    for name in [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN] {
        let path = dir.join(name);
        if path.exists() {
            return Err(init_err(
                &path,
                "refusing to overwrite an existing file".into(),
            ));
        }
    }

    let now = SystemTime::now();
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| init_err(dir, e.to_string()))?;
    let mut params = CertificateParams::default();
    // A per-CA suffix keeps two independently created roots apart: with equal subject names a
    // peer trusting the other root would report a confusing "bad signature" instead of
    // "unknown issuer".
    let key_id: String = params
        .key_identifier(&key)
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "ambit");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("ambit root CA {key_id}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let start = now.checked_sub(CLOCK_SKEW).unwrap_or(now);
    params.not_before = to_offset(start).map_err(|e| init_err(dir, e))?;
    params.not_after = to_offset(now + ROOT_VALIDITY).map_err(|e| init_err(dir, e))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| init_err(dir, e.to_string()))?;

    let cert_pem = cert.pem();
    write_new(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)
        .map_err(|(p, e)| init_err(&p, e))?;
    for name in [CA_CERT, ROOT_CERT, CERT_CHAIN] {
        write_new(&dir.join(name), cert_pem.as_bytes(), 0o644).map_err(|(p, e)| init_err(&p, e))?;
    }
    Ca::load(dir)
}

/// Writes a file that must not exist yet (`O_EXCL`), with the given permissions from the start
/// so that a key is never readable by others, not even briefly.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), (PathBuf, String)> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| (path.to_owned(), e.to_string()))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(|e| (path.to_owned(), e.to_string()))
}

fn file_err(path: &Path, problem: impl Into<String>) -> IdentityError {
    IdentityError::CaFile {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, IdentityError> {
    fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => file_err(path, "missing"),
        _ => file_err(path, format!("cannot read: {e}")),
    })
}

/// Reads all `CERTIFICATE` PEM blocks of a file; at least one is required.
fn read_certs(path: &Path, expected: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let data = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("not valid PEM ({e}); expected {expected}")))?;
    if certs.is_empty() {
        return Err(file_err(
            path,
            format!("no PEM 'CERTIFICATE' block found; expected {expected}"),
        ));
    }
    Ok(certs)
}

/// Seconds since the Unix epoch (negative before it).
fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn to_offset(t: SystemTime) -> Result<OffsetDateTime, String> {
    OffsetDateTime::from_unix_timestamp(unix_secs(t)).map_err(|e| format!("time out of range: {e}"))
}

/// RFC 3339 (UTC, whole seconds) rendering for messages; Debug for unrepresentable times.
pub(crate) fn fmt_time(t: SystemTime) -> String {
    match to_offset(t) {
        Ok(o) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            o.year(),
            u8::from(o.month()),
            o.day(),
            o.hour(),
            o.minute(),
            o.second()
        ),
        Err(_) => format!("{t:?}"),
    }
}

#[cfg(test)]
mod tests;
