//! Workload identity: SPIFFE names, the certificate authority, per-identity certificates and the
//! rustls configurations used for HBONE mutual TLS.
//!
//! The flow is:
//!
//! ```text
//! Issuer: CA service client (CSR over gRPC, key stays local)  or  local Ca::load (dev only)
//!   └─► CertManager::ensure(identity) ─► WorkloadCert (leaf + chain + key, rotated at half-life)
//!         └─► CertManager::get(identity) on the hot path (never issues)
//!         └─► tls::client_config / tls::server_config ─► tokio-rustls connect / accept
//!               └─► tls::peer_identity(conn) ─► policy and access logs
//! ```
//!
//! Compatibility with Istio ambient (ztunnel) is a goal: identities are URI SANs of the form
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, connections are TLS 1.3 with
//! ALPN `h2`, a client checks that the server presents one of the identities it expects, and a
//! server accepts any client of its own trust domain whose chain leads to the roots.

pub mod ca;
pub mod cert;
pub mod crl;
pub mod csr;
pub mod issuer;
mod keys;
pub mod manager;
pub mod revocation;
pub mod spiffe;
pub mod tls;
pub mod verify;

#[cfg(test)]
mod testutil;

use std::path::PathBuf;

pub use ca::{Ca, WorkloadCert};
pub use manager::CertManager;
pub use spiffe::{Identity, DEFAULT_TRUST_DOMAIN};

/// Everything that can go wrong in the identity layer.
///
/// Messages name the thing at fault (a file, an identity, a certificate) and what was expected,
/// so that an operator can fix the cause from the log line alone.
#[derive(thiserror::Error)]
pub enum IdentityError {
    /// A string is not a SPIFFE identity of the shape this mesh uses.
    #[error(
        "invalid SPIFFE identity {input:?}: {reason}; expected \
         spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    InvalidIdentity {
        /// The rejected input.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A file of the CA directory is missing, unreadable or has unusable contents.
    #[error("CA file {}: {problem}", path.display())]
    CaFile {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong and what was expected.
        problem: String,
    },

    /// Creating a new CA directory failed.
    #[error("cannot create CA in {}: {problem}", path.display())]
    CaInit {
        /// The file or directory at fault.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },

    /// The CA could not sign a certificate for an identity.
    #[error("cannot issue a certificate for {identity}: {problem}")]
    Issue {
        /// The identity the certificate was for.
        identity: String,
        /// What went wrong.
        problem: String,
    },

    /// No valid certificate is held for the identity (never issued, expired, or the last
    /// issuance failed); connections that need it are refused rather than sent without one.
    #[error("no valid certificate for {identity}: {reason}")]
    NoCertificate {
        /// The identity.
        identity: String,
        /// Why: the last issuance error, or that none was asked for yet.
        reason: String,
    },

    /// The identity does not belong to a pod enrolled on this node, so no certificate is issued.
    #[error("identity {0} is not allowed on this node (no enrolled pod runs as it)")]
    NotAllowed(Identity),

    /// Building a rustls configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),

    /// The peer sent no certificate (the handshake has not completed or was anonymous).
    #[error("peer presented no certificate")]
    NoPeerCertificate,

    /// The peer's certificate could not be parsed or carries no SPIFFE identity.
    #[error("peer certificate: {0}")]
    BadPeerCertificate(String),

    /// The server's certificate carries none of the identities the client expected.
    #[error(
        "server identity mismatch: expected one of [{}], server presented [{}]",
        join(expected),
        join(presented)
    )]
    UnexpectedServerIdentity {
        /// The identities the client would accept.
        expected: Vec<Identity>,
        /// The URI SANs of the server's certificate.
        presented: Vec<String>,
    },

    /// The client's certificate does not carry a SPIFFE identity of the server's trust domain.
    #[error(
        "client identity not in trust domain {expected:?}: client presented [{}]",
        join(presented)
    )]
    TrustDomainMismatch {
        /// The server's own trust domain.
        expected: String,
        /// The URI SANs of the client's certificate.
        presented: Vec<String>,
    },
}

/// Debug prints the same text as Display: rustls embeds verifier errors in its own error with
/// `{:?}` (`CertificateError::Other`), and that text ends up in connection logs.
impl std::fmt::Debug for IdentityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Joins displayable items with ", " for error messages.
fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
