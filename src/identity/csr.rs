//! Certificate signing requests (PKCS#10): building one for a workload identity on the client
//! side, and checking one on the CA side before anything is signed.
//!
//! The CA signs only the request's public key; everything else in the certificate is decided
//! by the CA. The request is still checked strictly: its self-signature proves the caller holds
//! the private key, its key must be one peers can verify and that is strong enough, and its
//! URI SAN must be exactly the identity the caller is authorized for, so a request can never
//! come back as a certificate for something other than what it asked for.

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::Identity;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Why a CSR was refused. The text is sent back to the caller as the gRPC status message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    /// The `csr` field holds no PEM `CERTIFICATE REQUEST` block.
    #[error("CSR is not PEM: expected one 'CERTIFICATE REQUEST' block ({0})")]
    NotPem(String),
    /// The DER inside is not a PKCS#10 request.
    #[error("CSR is not a valid PKCS#10 request: {0}")]
    Malformed(String),
    /// The self-signature does not verify (or uses an algorithm we do not verify).
    #[error("CSR signature does not verify: {0}")]
    BadSignature(String),
    /// The public key is of a type or size that is not allowed.
    #[error("CSR key not allowed: {0}; allowed are ECDSA P-256, ECDSA P-384 and RSA >= {MIN_RSA_BITS} bits")]
    KeyNotAllowed(String),
    /// The request's URI SANs are not exactly the authorized identity.
    #[error("CSR URI SANs [{}] do not equal the authorized identity {expected}", .found.join(", "))]
    SanMismatch {
        /// The identity the caller is authorized for.
        expected: String,
        /// The URI SANs in the request.
        found: Vec<String>,
    },
}

/// A request whose signature, key and encoding passed the checks; its SAN is checked against
/// an identity with [`CheckedCsr::require_identity`].
#[derive(Debug)]
pub struct CheckedCsr {
    spki: rcgen::SubjectPublicKeyInfo,
    uris: Vec<String>,
    key: String,
}

impl CheckedCsr {
    /// Parses a PEM request and checks its self-signature and key.
    pub fn parse(pem: &str) -> Result<CheckedCsr, CsrError> {
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| CsrError::NotPem(e.to_string()))?;
        let (rest, req) = X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed(format!(
                "{} trailing bytes after the request",
                rest.len()
            )));
        }
        let info = &req.certification_request_info;
        // The key first: a weak key is the better reason (and *ring* will not even verify
        // an RSA-1024 signature).
        let key = key_description(&info.subject_pki)?;
        req.verify_signature()
            .map_err(|e| CsrError::BadSignature(e.to_string()))?;
        let mut uris = Vec::new();
        for ext in req.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        uris.push((*uri).to_string());
                    }
                }
            }
        }
        let spki = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
            .map_err(|e| CsrError::KeyNotAllowed(format!("unusable public key: {e}")))?;
        Ok(CheckedCsr { spki, uris, key })
    }

    /// Checks that the request asks for exactly `id` (one URI SAN, equal to it).
    pub fn require_identity(&self, id: &Identity) -> Result<(), CsrError> {
        let expected = id.to_string();
        if self.uris.len() == 1 && self.uris[0] == expected {
            return Ok(());
        }
        Err(CsrError::SanMismatch {
            expected,
            found: self.uris.clone(),
        })
    }

    /// The URI SANs of the request.
    pub fn uris(&self) -> &[String] {
        &self.uris
    }

    /// The key type, e.g. "ECDSA P-256" or "RSA 2048", for logs.
    pub fn key_type(&self) -> &str {
        &self.key
    }

    /// The public key to put into the certificate.
    pub(crate) fn public_key(&self) -> &rcgen::SubjectPublicKeyInfo {
        &self.spki
    }
}

/// Names the key and refuses anything but ECDSA P-256/P-384 and RSA >= [`MIN_RSA_BITS`].
fn key_description(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<String, CsrError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::KeyNotAllowed("EC key without a named curve".into()))?;
        return if curve == OID_EC_P256 {
            Ok("ECDSA P-256".into())
        } else if curve == OID_NIST_EC_P384 {
            Ok("ECDSA P-384".into())
        } else {
            Err(CsrError::KeyNotAllowed(format!("EC curve {curve}")))
        };
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(CsrError::KeyNotAllowed("unparsable RSA key".into())),
        };
        return if bits >= MIN_RSA_BITS {
            Ok(format!("RSA {bits}"))
        } else {
            Err(CsrError::KeyNotAllowed(format!("RSA {bits} bits")))
        };
    }
    Err(CsrError::KeyNotAllowed(format!("key algorithm {alg}")))
}

/// A new ECDSA P-256 key and a PEM CSR for `id` (its only SAN, empty subject, as Istio's
/// clients send). The key never leaves this process.
pub fn new_request(id: &Identity) -> Result<(PrivateKeyDer<'static>, String), String> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = Ia5String::try_from(id.to_string()).map_err(|e| e.to_string())?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((der, csr))
}

#[cfg(test)]
mod tests;
