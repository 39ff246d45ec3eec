//! HTTP/2 PING keepalive for HBONE connections, both pooled (client) and accepted (server).
//!
//! TCP alone notices a silently dead peer only after minutes of retransmissions; until then a
//! pooled connection looks usable and every new tunnel to it waits for its dial timeout. A PING
//! every [`H2_PING_INTERVAL`] that must be answered within [`H2_PING_TIMEOUT`] bounds detection
//! to about 30 s, as ztunnel does. The PING is sent on busy connections too: a transfer that
//! stalls because the peer vanished is a dead peer as well.

use h2::{Ping, PingPong};

use crate::config::{H2_PING_INTERVAL, H2_PING_TIMEOUT};

/// Why a connection's keepalive gave up on the peer.
#[derive(Debug, thiserror::Error)]
pub enum KeepaliveError {
    /// No PONG within the deadline.
    #[error("peer did not answer an HTTP/2 PING within {0:?}")]
    Timeout(std::time::Duration),
    /// The PING could not be sent or the connection failed meanwhile.
    #[error("HTTP/2 PING failed: {0}")]
    Failed(h2::Error),
}

/// [`watch`] when the connection still has its `PingPong` (h2 hands it out once), else a future
/// that never resolves.
pub async fn watch_or_never(ping_pong: Option<PingPong>) -> KeepaliveError {
    match ping_pong {
        Some(p) => watch(p).await,
        None => std::future::pending().await,
    }
}

/// Pings the peer forever; returns only when the peer has stopped answering. Run it beside
/// the connection (in the same `select!` as its driver): the connection must be polled for
/// the PONG to be read.
pub async fn watch(mut ping_pong: PingPong) -> KeepaliveError {
    loop {
        tokio::time::sleep(H2_PING_INTERVAL).await;
        match tokio::time::timeout(H2_PING_TIMEOUT, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return KeepaliveError::Failed(e),
            Err(_) => return KeepaliveError::Timeout(H2_PING_TIMEOUT),
        }
    }
}
