//! rustls configurations for HBONE: TLS 1.3 only, ALPN `h2`, mutual TLS with SPIFFE identities.
//!
//! Cost per connection: the chain and key of a [`WorkloadCert`] are parsed into a rustls
//! `CertifiedKey` once, when the certificate is issued, and the roots are shared behind an
//! `Arc`; building a config here is then a handful of small allocations and `Arc` clones.
//! A client config has to be built per destination anyway (it carries the expected server
//! identities). A server config depends only on the local identity's certificate, so
//! [`CertManager::server_config`](super::CertManager::server_config) caches one per
//! (identity, certificate serial) and a rotation naturally switches new connections over.
//!
//! Crypto: aws-lc-rs. Key exchange: the post-quantum hybrid X25519MLKEM768 where both sides
//! have it, classical groups otherwise, unless `--tls-policy` ([`TlsPolicy`]) requires or
//! excludes it ([`kx_groups`]). The group each handshake used is [`negotiated_group`].

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};

use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::ServerName;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, ClientConfig, CommonState, PeerIncompatible, RootCertStore, ServerConfig,
    SignatureScheme,
};

use super::revocation::{guard_client, guard_server, Revocation};
use super::verify::{spiffe_identities, uri_sans, ServerIdentityVerifier, TrustDomainVerifier};
use super::{Identity, IdentityError, WorkloadCert};
pub use crate::config::TlsPolicy;

/// The crypto provider for identity TLS under the default [`TlsPolicy`]; see [`provider_for`].
pub fn provider() -> Arc<CryptoProvider> {
    provider_for(TlsPolicy::Default)
}

/// The crypto provider for identity TLS under `policy`: aws-lc-rs (ztunnel's, and the rustls
/// provider that has ML-KEM), restricted to the TLS 1.3 AES-GCM suites ztunnel offers (no ChaCha20),
/// so both sides negotiate the same way, and to the key-exchange groups of `policy`
/// ([`kx_groups`]). Built once per policy.
pub fn provider_for(policy: TlsPolicy) -> Arc<CryptoProvider> {
    static PROVIDERS: [OnceLock<Arc<CryptoProvider>>; 3] = [const { OnceLock::new() }; 3];
    let slot = match policy {
        TlsPolicy::Default => 0,
        TlsPolicy::Pqc => 1,
        TlsPolicy::Classical => 2,
    };
    PROVIDERS[slot]
        .get_or_init(|| {
            Arc::new(CryptoProvider {
                cipher_suites: vec![
                    aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
                    aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
                ],
                kx_groups: kx_groups(policy),
                ..aws_lc_rs::default_provider()
            })
        })
        .clone()
}

/// The key-exchange groups offered (client) and accepted (server) under `policy`, most
/// preferred first.
///
/// - `Default`: the hybrid X25519MLKEM768 first, then X25519, P-256 and P-384. A client sends
///   key shares for both X25519MLKEM768 and X25519 (the X25519 half is shared), so a classical
///   server answers without a HelloRetryRequest. A server picks the hybrid whenever the client
///   sent a share for it; a client that only lists it (ztunnel's default sends an X25519
///   share) gets X25519 rather than a HelloRetryRequest, which would cost a round trip.
/// - `Pqc`: X25519MLKEM768 only, as ztunnel's `COMPLIANCE_POLICY=pqc`: a peer without it is
///   refused (no common group).
/// - `Classical`: X25519, P-256, P-384: what ambit offered before post-quantum key exchange.
pub fn kx_groups(policy: TlsPolicy) -> Vec<&'static dyn SupportedKxGroup> {
    match policy {
        TlsPolicy::Default => vec![
            kx_group::X25519MLKEM768,
            kx_group::X25519,
            kx_group::SECP256R1,
            kx_group::SECP384R1,
        ],
        TlsPolicy::Pqc => vec![kx_group::X25519MLKEM768],
        TlsPolicy::Classical => vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
    }
}

/// Installs aws-lc-rs, unrestricted, as the process-wide rustls provider: the one that TLS
/// built without an explicit provider uses (the Kubernetes client's). Identity TLS always
/// names its own ([`provider_for`]). Call once at start; a second call changes nothing.
pub fn install_process_provider() {
    // Err only means a provider is installed already, which is what we want.
    let _ = aws_lc_rs::default_provider().install_default();
}

/// The IANA name of the key-exchange group a completed handshake used (`X25519MLKEM768`,
/// `X25519`, `secp256r1`, ...), for flows, logs and metrics.
pub fn negotiated_group(conn: &CommonState) -> Option<&'static str> {
    let group = conn.negotiated_key_exchange_group()?.name();
    Some(group.as_str().unwrap_or("unknown"))
}

/// Why a TLS handshake failed, in words: a failure for lack of a common key-exchange group
/// (refused here: `NoKxGroupsInCommon`; refused by the peer: a `handshake_failure` alert)
/// names the groups this side allows (`offered`, from the config's provider), so a
/// `--tls-policy pqc` mismatch is recognisable in the log; anything else is rustls' own text.
pub fn handshake_failure(err: &std::io::Error, offered: &CryptoProvider) -> String {
    let groups = || {
        offered
            .kx_groups
            .iter()
            .map(|g| g.name().as_str().unwrap_or("unknown"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::PeerIncompatible(PeerIncompatible::NoKxGroupsInCommon)) => format!(
            "no key-exchange group in common with the peer: this side allows only {} \
             (--tls-policy), the peer offered none of them",
            groups()
        ),
        Some(rustls::Error::AlertReceived(AlertDescription::HandshakeFailure)) => format!(
            "the peer refused the handshake (handshake_failure alert), most likely for lack \
             of a common key-exchange group: this side allows only {} (--tls-policy)",
            groups()
        ),
        _ => err.to_string(),
    }
}

/// The server name to pass to `TlsConnector::connect`.
///
/// It is never sent (SNI is disabled) and never checked (the verifier checks SPIFFE identities,
/// not names); rustls just requires one. `0.0.0.0` is what ztunnel uses too.
pub fn dummy_server_name() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into())
}

/// Client config presenting `own` and accepting only servers that chain to `roots` and present
/// one of `expected_server` (an empty list accepts no server), offering the key-exchange groups
/// of `policy`.
///
/// Session resumption is off so that every connection performs (and verifies) a full handshake
/// against the current expected identities.
pub fn client_config(
    own: &WorkloadCert,
    roots: Arc<RootCertStore>,
    expected_server: Vec<Identity>,
    policy: TlsPolicy,
) -> Result<Arc<ClientConfig>, IdentityError> {
    client_config_revocable(own, roots, expected_server, policy, None)
}

/// [`client_config`], also refusing servers whose chain `revocation` revokes.
pub fn client_config_revocable(
    own: &WorkloadCert,
    roots: Arc<RootCertStore>,
    expected_server: Vec<Identity>,
    policy: TlsPolicy,
    revocation: Option<&Arc<Revocation>>,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let provider = provider_for(policy);
    let verifier = ServerIdentityVerifier::new(
        roots,
        expected_server,
        provider.signature_verification_algorithms,
    );
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(guard_server(Arc::new(verifier), revocation))
        .with_client_cert_resolver(Arc::new(FixedCert(own.certified_key())));
    config.alpn_protocols = vec![crate::config::HBONE_ALPN.to_vec()];
    config.enable_sni = false;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Server config presenting `own`, requiring a client certificate that chains to `roots` and
/// carries a SPIFFE identity in `own`'s trust domain, accepting the key-exchange groups of
/// `policy`.
pub fn server_config(
    own: &WorkloadCert,
    roots: Arc<RootCertStore>,
    policy: TlsPolicy,
) -> Result<Arc<ServerConfig>, IdentityError> {
    server_config_revocable(own, roots, policy, None)
}

/// [`server_config`], also refusing clients whose chain `revocation` revokes.
pub fn server_config_revocable(
    own: &WorkloadCert,
    roots: Arc<RootCertStore>,
    policy: TlsPolicy,
    revocation: Option<&Arc<Revocation>>,
) -> Result<Arc<ServerConfig>, IdentityError> {
    let provider = provider_for(policy);
    let webpki = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| IdentityError::Tls(rustls::Error::General(e.to_string())))?;
    let verifier = TrustDomainVerifier::new(webpki, own.identity.trust_domain());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(guard_client(Arc::new(verifier), revocation))
        .with_cert_resolver(Arc::new(FixedCert(own.certified_key())));
    config.alpn_protocols = vec![crate::config::HBONE_ALPN.to_vec()];
    // Clients never resume, so issuing tickets or caching sessions would be wasted work.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// The SPIFFE identity in the peer's end-entity certificate (its first SPIFFE URI SAN).
///
/// Works on either side of a completed handshake (`ClientConnection` and `ServerConnection`
/// deref to `CommonState`; with tokio-rustls use `stream.get_ref().1`).
pub fn peer_identity(conn: &CommonState) -> Result<Identity, IdentityError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(IdentityError::NoPeerCertificate)?;
    match spiffe_identities(leaf)?.into_iter().next() {
        Some(id) => Ok(id),
        None => Err(IdentityError::BadPeerCertificate(format!(
            "no SPIFFE URI SAN; URI SANs presented: {:?}",
            uri_sans(leaf)?
        ))),
    }
}

/// Always presents the same certificate, on either side of the handshake.
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests;
