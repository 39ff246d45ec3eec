//! rustls configurations for HBONE: TLS 1.3 only, ALPN `h2`, mutual TLS with SPIFFE identities.
//!
//! Cost per connection: the chain and key of a [`WorkloadCert`] are parsed into a rustls
//! `CertifiedKey` once, when the certificate is issued, and the roots are shared behind an
//! `Arc`; building a config here is then a handful of small allocations and `Arc` clones.
//! A client config has to be built per destination anyway (it carries the expected server
//! identities). A server config depends only on the local identity's certificate, so
//! [`CertManager::server_config`](super::CertManager::server_config) caches one per
//! (identity, certificate serial) and a rotation naturally switches new connections over.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};

use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::ServerName;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, CommonState, RootCertStore, ServerConfig, SignatureScheme};

use super::revocation::{guard_client, guard_server, Revocation};
use super::verify::{spiffe_identities, uri_sans, ServerIdentityVerifier, TrustDomainVerifier};
use super::{Identity, IdentityError, WorkloadCert};

/// The crypto provider for all identity TLS: *ring*, restricted to the TLS 1.3 AES-GCM suites
/// ztunnel offers (no ChaCha20), so both sides negotiate the same way.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            Arc::new(CryptoProvider {
                cipher_suites: vec![
                    ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
                    ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
                ],
                ..ring::default_provider()
            })
        })
        .clone()
}

/// The server name to pass to `TlsConnector::connect`.
///
/// It is never sent (SNI is disabled) and never checked (the verifier checks SPIFFE identities,
/// not names); rustls just requires one. `0.0.0.0` is what ztunnel uses too.
pub fn dummy_server_name() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into())
}

/// Client config presenting `own` and accepting only servers that chain to `roots` and present
/// one of `expected_server` (an empty list accepts no server).
///
/// Session resumption is off so that every connection performs (and verifies) a full handshake
/// against the current expected identities.
pub fn client_config(
    own: &WorkloadCert,
    roots: Arc<RootCertStore>,
    expected_server: Vec<Identity>,
) -> Result<Arc<ClientConfig>, IdentityError> {
    client_config_revocable(own, roots, expected_server, None)
}

/// [`client_config`], also refusing servers whose chain `revocation` revokes.
pub fn client_config_revocable(
    own: &WorkloadCert,
    roots: Arc<RootCertStore>,
    expected_server: Vec<Identity>,
    revocation: Option<&Arc<Revocation>>,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let provider = provider();
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
/// carries a SPIFFE identity in `own`'s trust domain.
pub fn server_config(
    own: &WorkloadCert,
    roots: Arc<RootCertStore>,
) -> Result<Arc<ServerConfig>, IdentityError> {
    server_config_revocable(own, roots, None)
}

/// [`server_config`], also refusing clients whose chain `revocation` revokes.
pub fn server_config_revocable(
    own: &WorkloadCert,
    roots: Arc<RootCertStore>,
    revocation: Option<&Arc<Revocation>>,
) -> Result<Arc<ServerConfig>, IdentityError> {
    let provider = provider();
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
