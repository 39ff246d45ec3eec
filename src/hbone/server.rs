//! The server half of the HBONE protocol: terminate mutual TLS, learn the client's SPIFFE
//! identity, complete the HTTP/2 handshake with HBONE's settings, and answer CONNECT requests.
//!
//! This module knows the wire, not pods: what a CONNECT may reach and how it is dialled is the
//! 15008 handler's business (`proxy::tunnel`). Status codes follow ztunnel: 200 only once the
//! app accepted the connection, 400 for a malformed or misaddressed request, 503 when the target
//! cannot be reached. Every error response ends the stream at once, so a client never hangs.

use std::sync::Arc;

use bytes::Bytes;
use h2::server::{Connection, SendResponse};
use http::{Response, StatusCode};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::config::{
    H2_CONNECTION_WINDOW, H2_MAX_CONCURRENT_RESETS, H2_MAX_FRAME, H2_MAX_HEADER_LIST_SIZE,
    H2_MAX_PENDING_ACCEPT_RESETS, H2_SERVER_MAX_STREAMS, H2_STREAM_WINDOW, HBONE_HANDSHAKE_TIMEOUT,
};
use crate::identity::Identity;

/// An HBONE connection whose TLS and HTTP/2 handshakes are complete.
pub struct Accepted {
    /// The HTTP/2 connection; `accept()` on it yields CONNECT requests.
    pub conn: Connection<TlsStream<TcpStream>, Bytes>,
    /// The client's SPIFFE identity, from its verified certificate.
    pub client: Identity,
    /// The client's verified chain (leaf first), re-checked when the CRL changes.
    pub client_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The key-exchange group the TLS handshake used (e.g. `X25519MLKEM768`).
    pub tls_group: Option<&'static str>,
}

/// Why an HBONE connection was refused before any request.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The TLS handshake failed (bad or missing client certificate, wrong trust domain, no
    /// key-exchange group in common, ...), explained by `identity::tls::handshake_failure`.
    #[error("TLS handshake refused: {0}")]
    Tls(String),
    /// The client certificate carries no usable SPIFFE identity.
    #[error("client identity: {0}")]
    Identity(String),
    /// The HTTP/2 preface or settings exchange failed.
    #[error("HTTP/2 handshake: {0}")]
    Http2(h2::Error),
    /// The client did not complete both handshakes in time.
    #[error("TLS and HTTP/2 handshakes not completed within {0:?}")]
    Timeout(std::time::Duration),
}

/// Runs the TLS and HTTP/2 handshakes of one accepted TCP connection with `tls`, within
/// [`HBONE_HANDSHAKE_TIMEOUT`]: a client that connects and stays silent is dropped.
pub async fn accept(
    tcp: TcpStream,
    tls: Arc<rustls::ServerConfig>,
) -> Result<Accepted, AcceptError> {
    tokio::time::timeout(HBONE_HANDSHAKE_TIMEOUT, handshake(tcp, tls))
        .await
        .map_err(|_| AcceptError::Timeout(HBONE_HANDSHAKE_TIMEOUT))?
}

async fn handshake(
    tcp: TcpStream,
    tls: Arc<rustls::ServerConfig>,
) -> Result<Accepted, AcceptError> {
    let provider = tls.crypto_provider().clone();
    let tls = tokio_rustls::TlsAcceptor::from(tls)
        .accept(tcp)
        .await
        .map_err(|e| AcceptError::Tls(crate::identity::tls::handshake_failure(&e, &provider)))?;
    let client = crate::identity::tls::peer_identity(tls.get_ref().1)
        .map_err(|e| AcceptError::Identity(e.to_string()))?;
    let client_chain = crate::identity::revocation::peer_chain(tls.get_ref().1);
    let tls_group = crate::identity::tls::negotiated_group(tls.get_ref().1);
    let conn = h2::server::Builder::new()
        .initial_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_concurrent_streams(H2_SERVER_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST_SIZE)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_concurrent_reset_streams(H2_MAX_CONCURRENT_RESETS)
        .max_send_buffer_size(H2_STREAM_WINDOW as usize)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(AcceptError::Http2)?;
    Ok(Accepted {
        conn,
        client,
        client_chain,
        tls_group,
    })
}

/// Answers a CONNECT with an error `status` and ends the stream.
pub fn respond_error(mut respond: SendResponse<Bytes>, status: StatusCode) {
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    // The client may already be gone; there is nobody left to tell.
    let _ = respond.send_response(resp, true);
}

/// Answers a CONNECT with 200 and returns the stream's sending half.
pub fn respond_ok(mut respond: SendResponse<Bytes>) -> Result<h2::SendStream<Bytes>, h2::Error> {
    respond.send_response(Response::new(()), false)
}
