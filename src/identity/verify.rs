//! Certificate verifiers for HBONE mutual TLS.
//!
//! - [`ServerIdentityVerifier`] (client side): the server's chain must lead to our roots for
//!   server authentication, and one of its URI SANs must equal one of the identities we expect
//!   for the destination. DNS names and the TLS server name are never looked at: pods are
//!   addressed by IP and named by SPIFFE identity.
//! - [`TrustDomainVerifier`] (server side): the client's chain is checked by rustls'
//!   `WebPkiClientVerifier`, then the client must carry a SPIFFE identity of the server's own
//!   trust domain. Which workload it is does not matter here; policy decides that later from
//!   [`peer_identity`](super::tls::peer_identity).
//!
//! Handshake signatures are checked with the crypto provider's algorithms in both directions.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
};
use rustls::{Error as TlsError, SignatureScheme};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Identity, IdentityError};

/// The three signature methods of rustls' verifier traits, handed to `self.inner` unchanged:
/// our verifiers add identity and revocation checks, never their own signature checks.
macro_rules! delegate_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}
pub(crate) use delegate_signature_checks;

/// All URI SANs of a certificate, in certificate order.
pub fn uri_sans(cert: &CertificateDer<'_>) -> Result<Vec<String>, IdentityError> {
    let (_, x509) = X509Certificate::from_der(cert)
        .map_err(|e| IdentityError::BadPeerCertificate(format!("not an X.509 certificate: {e}")))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| IdentityError::BadPeerCertificate(format!("bad subjectAltName: {e}")))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The SPIFFE identities among a certificate's URI SANs (other URIs are ignored).
pub fn spiffe_identities(cert: &CertificateDer<'_>) -> Result<Vec<Identity>, IdentityError> {
    Ok(uri_sans(cert)?
        .iter()
        .filter_map(|u| u.parse().ok())
        .collect())
}

/// Wraps our error so rustls reports it (locally, with its full message) as a certificate
/// failure; the peer only sees a generic `certificate_unknown` alert.
fn reject(e: IdentityError) -> TlsError {
    TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Client-side verifier: chain to the roots plus "the server is one of the expected identities".
#[derive(Debug)]
pub struct ServerIdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<Identity>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerIdentityVerifier {
    /// A verifier accepting servers that present any of `expected` (none accepted if empty).
    pub fn new(
        roots: Arc<RootCertStore>,
        expected: Vec<Identity>,
        algs: WebPkiSupportedAlgorithms,
    ) -> Self {
        ServerIdentityVerifier {
            roots,
            expected,
            algs,
        }
    }
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        // Chain, validity period and the serverAuth purpose; no name check (see module docs).
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let presented = uri_sans(end_entity).map_err(reject)?;
        let matches = presented
            .iter()
            .filter_map(|u| u.parse::<Identity>().ok())
            .any(|id| self.expected.contains(&id));
        if !matches {
            return Err(reject(IdentityError::UnexpectedServerIdentity {
                expected: self.expected.clone(),
                presented,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Server-side verifier: a normal webpki client verification plus "same trust domain as us".
#[derive(Debug)]
pub struct TrustDomainVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl TrustDomainVerifier {
    /// Wraps `inner` (which must require a client certificate) to also demand a SPIFFE
    /// identity in `trust_domain`.
    pub fn new(inner: Arc<dyn ClientCertVerifier>, trust_domain: impl Into<String>) -> Self {
        TrustDomainVerifier {
            inner,
            trust_domain: trust_domain.into(),
        }
    }
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let presented = uri_sans(end_entity).map_err(reject)?;
        let ok = presented
            .iter()
            .filter_map(|u| u.parse::<Identity>().ok())
            .any(|id| id.trust_domain() == self.trust_domain);
        if !ok {
            return Err(reject(IdentityError::TrustDomainMismatch {
                expected: self.trust_domain.clone(),
                presented,
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    delegate_signature_checks!();
}
