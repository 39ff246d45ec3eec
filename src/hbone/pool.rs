//! The HBONE client: one pool per source pod, of mutual-TLS HTTP/2 connections to peers.
//!
//! Connections are keyed by (peer address, expected peer identity); the source identity is the
//! pod's own. Each connection carries up to [`MAX_STREAMS_PER_CONNECTION`] tunnels at once;
//! beyond that another connection to the same key is dialled. Concurrent first requests for a
//! key wait on the same dial instead of each opening a connection. A connection idle for longer
//! than the idle timeout is dropped from the pool, which closes it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use rustls::pki_types::ServerName;

use crate::config::{
    H2_CONNECTION_WINDOW as CONNECTION_WINDOW, H2_MAX_FRAME as MAX_FRAME, H2_MAX_HEADER_LIST_SIZE,
    H2_STREAM_WINDOW as STREAM_WINDOW, HBONE_DIAL_TIMEOUT as DIAL_TIMEOUT,
    POOL_MAX_STREAMS_PER_CONNECTION as MAX_STREAMS_PER_CONNECTION,
};
use crate::identity::revocation::{peer_chain, revoked_or_never, Revocation};
use crate::identity::{tls, Identity};
use crate::metrics::{count_tls_handshake, DialCounters};
use crate::socket::Placement;

/// Errors of the HBONE client.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// TCP connect to the peer's 15008 failed.
    #[error("HBONE connect to {peer}: {reason}")]
    Connect {
        /// Peer address.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed (includes identity mismatches).
    #[error("HBONE TLS handshake with {peer} (expecting {expected}): {reason}")]
    Tls {
        /// Peer address.
        peer: SocketAddr,
        /// Identity the peer had to present.
        expected: Identity,
        /// Why.
        reason: String,
    },
    /// No certificate or TLS configuration for the source pod.
    #[error("HBONE client credentials: {0}")]
    Credentials(String),
    /// HTTP/2 failed on the connection.
    #[error("HBONE HTTP/2 with {peer}: {reason}")]
    Http2 {
        /// Peer address.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The whole dial took too long.
    #[error("HBONE dial to {0} timed out")]
    Timeout(SocketAddr),
}

/// Supplies the client TLS configuration for a tunnel from this pod to a peer that must
/// present `expected`. Called for every new connection, so rotated certificates are used.
pub type ClientTls =
    Arc<dyn Fn(&Identity) -> Result<Arc<rustls::ClientConfig>, String> + Send + Sync>;

#[derive(Clone, Hash, PartialEq, Eq)]
struct Key {
    peer: SocketAddr,
    expected: Identity,
}

/// One pooled HTTP/2 connection.
#[derive(Clone)]
struct Conn {
    send: SendRequest<Bytes>,
    /// Key-exchange group of the connection's TLS handshake.
    tls_group: Option<&'static str>,
    /// The identity the peer presented, as text: one copy shared by the flows of its tunnels.
    peer_identity: Arc<str>,
    streams: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    idle_since: Arc<Mutex<Option<Instant>>>,
    opened: Instant,
}

/// A pooled connection as the config dump shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PooledConnection {
    /// The peer's 15008 address.
    pub peer: SocketAddr,
    /// The identity the peer had to present (and did, or the connection would not exist).
    pub identity: String,
    /// Tunnels open on it now.
    pub streams: usize,
    /// Seconds since it was dialled.
    pub age_secs: u64,
    /// Seconds since its last tunnel closed, while it has none.
    pub idle_secs: Option<u64>,
}

impl Conn {
    /// Whether new streams may go on this connection: not closed, not failed by keepalive, and
    /// no GOAWAY received. h2 records a GOAWAY as a connection error that `poll_ready` reports
    /// at once, so the check never waits (a connection merely at its stream limit is usable).
    fn usable(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let mut send = self.send.clone();
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        match send.poll_ready(&mut cx) {
            std::task::Poll::Ready(Err(_)) => {
                self.closed.store(true, Ordering::Release);
                false
            }
            _ => true,
        }
    }
}

/// A checked-out connection: a handle to open one stream on. Dropping it marks the stream slot
/// free again.
pub struct Lease {
    /// Request sender on the connection.
    pub send: SendRequest<Bytes>,
    conn: Conn,
    slot: StreamSlot,
}

/// A stream's place on a pooled connection; dropping it frees the place. All a tunnel keeps of
/// its [`Lease`] once its stream is open (a lease carries two request senders, ~120 B, which an
/// idle tunnel has no use for).
pub struct StreamSlot {
    streams: Arc<AtomicUsize>,
    idle_since: Arc<Mutex<Option<Instant>>>,
}

impl Lease {
    /// The key-exchange group the connection's TLS handshake used (e.g. `X25519MLKEM768`).
    pub fn tls_group(&self) -> Option<&'static str> {
        self.conn.tls_group
    }

    /// The identity the peer presented (the TLS verifier accepted only the expected one).
    pub fn peer_identity(&self) -> Arc<str> {
        self.conn.peer_identity.clone()
    }

    /// Takes the connection out of service (a stream failed on it before any byte was sent):
    /// the next checkout dials afresh instead of finding it.
    pub fn discard(&self) {
        self.conn.closed.store(true, Ordering::Release);
    }

    /// Keeps only the stream's place on the connection.
    pub fn into_slot(self) -> StreamSlot {
        self.slot
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *lock(&self.idle_since) = Some(Instant::now());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pool of one source pod.
pub struct Pool {
    placement: Placement,
    tls: ClientTls,
    idle_timeout: Duration,
    slots: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Vec<Conn>>>>>,
    counters: DialCounters,
    /// Live connections are closed when this set revokes their server's chain.
    revocation: Option<Arc<Revocation>>,
}

impl Pool {
    /// A pool dialling from the pod (`placement`) with credentials from `tls`.
    /// `counters` count every connection dialled and its handshake's key-exchange group.
    pub fn new(
        placement: Placement,
        tls: ClientTls,
        idle_timeout: Duration,
        counters: DialCounters,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            placement,
            tls,
            idle_timeout,
            slots: Mutex::new(HashMap::new()),
            counters,
            revocation: None,
        })
    }

    /// Closes pooled connections whose server certificate `revocation` comes to revoke.
    /// Called right after [`Pool::new`], before the pool is shared.
    pub fn with_revocation(mut self: Arc<Self>, revocation: Option<Arc<Revocation>>) -> Arc<Self> {
        if let Some(pool) = Arc::get_mut(&mut self) {
            pool.revocation = revocation;
        }
        self
    }

    /// A connection to `peer` (which must present `expected`) with room for one more stream.
    pub async fn checkout(
        &self,
        peer: SocketAddr,
        expected: &Identity,
    ) -> Result<Lease, DialError> {
        let key = Key {
            peer,
            expected: expected.clone(),
        };
        let slot = lock(&self.slots).entry(key).or_default().clone();
        // Holding the per-key lock across the dial is what makes concurrent first requests
        // share one connection: they wait here and then find it.
        let mut conns = slot.lock().await;
        conns.retain(Conn::usable);
        let found = conns
            .iter()
            .find(|c| c.streams.load(Ordering::Acquire) < MAX_STREAMS_PER_CONNECTION)
            .cloned();
        let conn = match found {
            Some(c) => c,
            None => {
                let c = self.dial(peer, expected).await?;
                conns.push(c.clone());
                c
            }
        };
        conn.streams.fetch_add(1, Ordering::AcqRel);
        *lock(&conn.idle_since) = None;
        let slot = StreamSlot {
            streams: conn.streams.clone(),
            idle_since: conn.idle_since.clone(),
        };
        Ok(Lease {
            send: conn.send.clone(),
            conn,
            slot,
        })
    }

    /// Drops connections idle for longer than the idle timeout. Called periodically.
    pub fn evict_idle(&self) {
        let now = Instant::now();
        for slot in lock(&self.slots).values() {
            // A slot being dialled is busy, not idle.
            let Ok(mut conns) = slot.try_lock() else {
                continue;
            };
            conns.retain(|c| {
                let idle = lock(&c.idle_since).is_some_and(|t| now - t >= self.idle_timeout);
                c.usable() && !idle
            });
        }
        // Keys with no connection left go too (a pod IP reused later starts from nothing);
        // a slot held by a checkout is not empty-and-idle, so it stays.
        lock(&self.slots).retain(|_, slot| slot.try_lock().map_or(true, |c| !c.is_empty()));
    }

    /// Connections currently pooled (for the admin page).
    pub fn open_connections(&self) -> usize {
        lock(&self.slots)
            .values()
            .filter_map(|s| s.try_lock().ok().map(|v| v.len()))
            .sum()
    }

    /// The pooled connections, by peer. A key whose dial is in progress is skipped.
    pub fn connections(&self) -> Vec<PooledConnection> {
        let now = Instant::now();
        let mut out: Vec<PooledConnection> = lock(&self.slots)
            .iter()
            .filter_map(|(key, slot)| Some((key, slot.try_lock().ok()?.clone())))
            .flat_map(|(key, conns)| {
                conns.into_iter().filter(Conn::usable).map(move |c| {
                    let idle_secs = lock(&c.idle_since).map(|t| (now - t).as_secs());
                    PooledConnection {
                        peer: key.peer,
                        identity: key.expected.to_string(),
                        streams: c.streams.load(Ordering::Acquire),
                        age_secs: (now - c.opened).as_secs(),
                        idle_secs,
                    }
                })
            })
            .collect();
        out.sort_by_key(|c| (c.peer, c.age_secs));
        out
    }

    async fn dial(&self, peer: SocketAddr, expected: &Identity) -> Result<Conn, DialError> {
        tokio::time::timeout(DIAL_TIMEOUT, self.dial_inner(peer, expected))
            .await
            .map_err(|_| DialError::Timeout(peer))?
    }

    async fn dial_inner(&self, peer: SocketAddr, expected: &Identity) -> Result<Conn, DialError> {
        let config = (self.tls)(expected).map_err(DialError::Credentials)?;
        let tcp = self
            .placement
            .connect(peer, None)
            .await
            .map_err(|e| DialError::Connect {
                peer,
                reason: e.to_string(),
            })?;
        // No SNI is sent and the name is not used for verification: the peer is checked by
        // its SPIFFE identity.
        let name = ServerName::IpAddress(peer.ip().into());
        let provider = config.crypto_provider().clone();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| DialError::Tls {
                peer,
                expected: expected.clone(),
                reason: tls::handshake_failure(&e, &provider),
            })?;
        let chain = peer_chain(tls.get_ref().1);
        let tls_group = tls::negotiated_group(tls.get_ref().1);
        count_tls_handshake(&self.counters.handshakes, tls_group, "client");
        let (send, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_send_buffer_size(STREAM_WINDOW as usize)
            .initial_max_send_streams(MAX_STREAMS_PER_CONNECTION)
            .enable_push(false)
            .max_header_list_size(H2_MAX_HEADER_LIST_SIZE)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| DialError::Http2 {
                peer,
                reason: e.to_string(),
            })?;
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let keepalive = super::keepalive::watch_or_never(connection.ping_pong());
        let revoked = revoked_or_never(self.revocation.clone(), chain);
        let peer_identity: Arc<str> = expected.to_string().into();
        let expected = expected.clone();
        tokio::spawn(async move {
            tokio::select! {
                ended = &mut connection => if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "HBONE connection ended");
                },
                dead = keepalive => {
                    tracing::warn!(%peer, error = %dead, "HBONE peer unresponsive; connection closed");
                }
                why = revoked => {
                    // Flag first, so no new stream is put on it while it closes.
                    flag.store(true, Ordering::Release);
                    tracing::warn!(%peer, server = %expected, error = %why,
                        "closing HBONE connection: server certificate revoked");
                }
            }
            flag.store(true, Ordering::Release);
        });
        self.counters.dials.inc();
        Ok(Conn {
            send,
            tls_group,
            peer_identity,
            streams: Arc::new(AtomicUsize::new(0)),
            closed,
            idle_since: Arc::new(Mutex::new(Some(Instant::now()))),
            opened: Instant::now(),
        })
    }
}
