//! The per-pod proxy: three listeners inside the pod's network namespace and the handlers
//! behind them. Each handler reads top-down: accept → decide → dial → copy.
//!
//! - 15001 outbound ([`outbound`]): the pod's own connections, redirected by the nat rules;
//! - 15006 inbound plaintext ([`inbound`]): connections to the pod, handed to the app with the
//!   client's IP;
//! - 15008 inbound HBONE ([`tunnel`]): the mesh tunnel port (never redirected).
//!
//! Both inbound handlers ask the policy engine before dialling the app ([`authz`]), and keep
//! the connection registered so a later policy change can close it.
//!
//! Sockets come from [`crate::socket`], byte copying from [`crate::copy`] and
//! [`crate::hbone::stream`]; the HBONE wire protocol from [`crate::hbone`], which imports
//! nothing from here.

pub mod admission;
pub mod authz;
mod inbound;
pub(crate) mod outbound;
mod task;
mod telemetry;
mod tunnel;

pub use authz::LiveConns;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{
    CONNECT_TIMEOUT, HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT, POOL_EVICT_INTERVAL,
};
use crate::copy;
use crate::flows::{Flow, FlowTable, Listener};
use crate::hbone::pool::Pool;
use crate::identity::Identity;
use crate::metrics::tcp::{Connection, ResponseFlags};
use crate::metrics::{ListenerLabels, Metrics};
use crate::policy::PolicySnapshot;
use crate::socket;
use crate::workload::{Directory, Pod};

/// What every pod proxy shares: the directory for routing decisions, the flow table, metrics.
#[derive(Clone)]
pub struct ProxyContext {
    /// Trust domain of every identity in this mesh.
    pub trust_domain: String,
    /// Round-robin counter for Service endpoints; outlives directory rebuilds so that the
    /// spread does not restart with every change in the cluster.
    pub endpoint_turn: Arc<std::sync::atomic::AtomicUsize>,
    /// Current directory of workloads, replaced on every snapshot.
    pub directory: watch::Receiver<Arc<Directory>>,
    /// Flow records.
    pub flows: Arc<FlowTable>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// 15008 handshakes in progress per source address, node-wide.
    pub handshakes: Arc<admission::HandshakeSlots>,
    /// Tells accept loops and HBONE server connections to drain.
    pub drain: crate::drain::DrainWatcher,
    /// Current security policy, replaced whenever policies or workloads change; every inbound
    /// connection is decided by the snapshot current when it arrives.
    pub policy: watch::Receiver<Arc<PolicySnapshot>>,
    /// Live inbound connections, re-decided when the policy changes
    /// ([`LiveConns::follow`] must run on the same `policy` channel).
    pub live: Arc<LiveConns>,
    /// How plain TCP connections are copied.
    pub tcp_copy: crate::copy::TcpCopy,
    /// Whether a new HBONE stream carries the client's first bytes before the peer's 200
    /// (`hbone::early`).
    pub hbone_early_data: bool,
    /// The cluster this proxy's pods run in, named in the metrics' `*_cluster` labels.
    pub cluster_id: String,
}

/// Errors from starting a pod's proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener could not be opened.
    #[error("cannot open listener {port} for pod {pod}: {source}")]
    Listen {
        /// Port.
        port: u16,
        /// The pod.
        pod: String,
        /// Cause.
        source: socket::SocketError,
    },
}

/// One enrolled pod's proxy. Dropping it closes the listeners; connections already accepted
/// run to their end.
pub struct PodProxy {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for PodProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Supplies the 15008 server TLS configuration of a pod (called per accepted connection, so a
/// rotated certificate is used at once).
pub type ServerTls = Arc<dyn Fn() -> Result<Arc<rustls::ServerConfig>, String> + Send + Sync>;

/// A pod's mesh credentials.
pub struct PodSecurity {
    /// The pod's SPIFFE identity.
    pub identity: Identity,
    /// Outbound HBONE connections of this pod.
    pub pool: Arc<Pool>,
    /// Server side of 15008.
    pub server_tls: ServerTls,
    /// The CRL set live 15008 connections are re-checked against, if any.
    pub revocation: Option<Arc<crate::identity::revocation::Revocation>>,
}

impl PodSecurity {
    /// Credentials for `identity` from `certs`: a pool dialling from `placement` whose TLS
    /// presents the identity's current certificate, and the 15008 server configuration.
    /// Both are looked up per connection, so rotated certificates are used at once.
    pub fn new(
        identity: Identity,
        certs: &Arc<crate::identity::manager::CertManager>,
        placement: socket::Placement,
        pool_idle: Duration,
        counters: crate::metrics::DialCounters,
    ) -> PodSecurity {
        let (c, id) = (certs.clone(), identity.clone());
        let client_tls: crate::hbone::pool::ClientTls = Arc::new(move |expected| {
            c.client_config(&id, vec![expected.clone()])
                .map_err(|e| e.to_string())
        });
        let (c, id) = (certs.clone(), identity.clone());
        let server_tls: ServerTls =
            Arc::new(move || c.server_config(&id).map_err(|e| e.to_string()));
        PodSecurity {
            identity,
            pool: Pool::new(placement, client_tls, pool_idle, counters)
                .with_revocation(certs.revocation()),
            server_tls,
            revocation: certs.revocation(),
        }
    }
}

/// Everything a handler needs about the pod it serves.
pub(crate) struct PodScope {
    pub pod: Arc<Pod>,
    pub key: Arc<str>,
    pub placement: socket::Placement,
    pub ctx: ProxyContext,
    pub security: PodSecurity,
    /// 15008 connections of this pod still in their handshake (see [`admission`]).
    pub pending_handshakes: Arc<std::sync::atomic::AtomicUsize>,
}

impl PodScope {
    pub(crate) fn owns(&self, ip: IpAddr) -> bool {
        self.pod.ips.contains(&ip)
    }
}

impl PodProxy {
    /// Opens the three listeners in the pod (see [`socket::Placement`]) and starts serving them
    /// on `runtime`.
    /// Either all three are open or none is.
    pub fn start(
        ctx: ProxyContext,
        pod: Arc<Pod>,
        placement: socket::Placement,
        security: PodSecurity,
        runtime: &tokio::runtime::Handle,
    ) -> Result<PodProxy, ProxyError> {
        let open = |port| {
            placement.listen(port).map_err(|source| ProxyError::Listen {
                port,
                pod: pod.key(),
                source,
            })
        };
        let listeners = [
            (Listener::Outbound, open(OUTBOUND_PORT)?),
            (Listener::Inbound, open(INBOUND_PORT)?),
            (Listener::Hbone, open(HBONE_PORT)?),
        ];
        let scope = Arc::new(PodScope {
            key: pod.key().into(),
            pod,
            placement,
            ctx,
            security,
            pending_handshakes: Arc::default(),
        });
        let pool = scope.security.pool.clone();
        let evictor = runtime.spawn(async move {
            let mut tick = tokio::time::interval(POOL_EVICT_INTERVAL);
            loop {
                tick.tick().await;
                pool.evict_idle();
            }
        });
        let tasks = listeners
            .into_iter()
            .map(|(kind, std_listener)| {
                let scope = scope.clone();
                runtime.spawn(async move {
                    match TcpListener::from_std(std_listener) {
                        Ok(l) => accept_loop(scope, kind, l).await,
                        Err(e) => tracing::error!(pod = %scope.key, listener = kind.as_str(), error = %e, "cannot register listener"),
                    }
                })
            })
            .chain(std::iter::once(evictor))
            .collect();
        Ok(PodProxy { tasks })
    }
}

/// Accepts until the pod is released (the task is aborted) or the daemon drains (the listener is
/// closed by returning; queued connections then migrate to a successor daemon's listener).
async fn accept_loop(scope: Arc<PodScope>, kind: Listener, listener: TcpListener) {
    let drain = scope.ctx.drain.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.started() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(pod = %scope.key, listener = kind.as_str(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        socket::tune_accepted(&stream);
        let peer = socket::canonical(peer);
        // Unauthenticated clients are bounded before any TLS work (see `admission`).
        let handshake = match kind {
            Listener::Hbone => match scope
                .ctx
                .handshakes
                .admit(&scope.pending_handshakes, peer.ip())
            {
                Ok(guard) => Some(guard),
                Err(shed) => {
                    scope
                        .ctx
                        .metrics
                        .handshakes_shed
                        .get_or_create(&crate::metrics::OutcomeLabels {
                            outcome: shed.as_str(),
                        })
                        .inc();
                    tracing::debug!(pod = %scope.key, %peer, reason = shed.as_str(), "15008 connection shed");
                    socket::close_with_reset(stream);
                    continue;
                }
            },
            _ => None,
        };
        scope
            .ctx
            .metrics
            .connections_opened
            .get_or_create(&ListenerLabels {
                listener: kind.as_str(),
            })
            .inc();
        let scope = scope.clone();
        // One spawn per kind: a task's allocation is its future's size, and a match over the
        // three would make every connection pay for the largest (the 15008 handshake's).
        match kind {
            Listener::Outbound => tokio::spawn(outbound::serve(scope, stream, peer)),
            Listener::Inbound => {
                tokio::spawn(async move { inbound::serve(&scope, stream, peer).await })
            }
            Listener::Hbone => {
                tokio::spawn(tunnel::serve_connection(scope, stream, peer, handshake))
            }
        };
    }
}

/// Recovers the original destination of a redirected connection and opens its flow; `None`
/// (already counted and logged) when the kernel has no destination for it.
pub(crate) fn open_flow(
    scope: &PodScope,
    kind: Listener,
    stream: &tokio::net::TcpStream,
    peer: SocketAddr,
) -> Option<(SocketAddr, Flow)> {
    match socket::original_dst(stream) {
        Ok(dst) => Some((dst, scope.ctx.flows.start(&scope.key, kind, peer, dst))),
        Err(e) => {
            tracing::warn!(pod = %scope.key, %peer, error = %e, "no original destination");
            count_failure(scope, kind);
            None
        }
    }
}

/// Why a connection was refused before reaching any upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// The destination is one of the proxy's own ports: carrying it on would loop.
    #[error("refused: {0} is the proxy's own port (recursive call to ourselves)")]
    SelfCall(SocketAddr),
    /// Inbound connection addressed to an IP this pod does not own.
    #[error("refused: {0} is not an address of this pod")]
    NotThisPod(SocketAddr),
    /// The destination's identity cannot be formed from its pod record.
    #[error("refused: {0}")]
    BadPeer(String),
    /// A Service with no ready endpoint for the port.
    #[error("refused: service {0} has no ready endpoint for {1}")]
    NoEndpoints(String, SocketAddr),
    /// Denied by policy (the text names the policy, see [`authz::denial`]).
    #[error("refused: {0}")]
    Denied(String),
}

pub(crate) fn count_failure(scope: &PodScope, kind: Listener) {
    scope
        .ctx
        .metrics
        .connections_failed
        .get_or_create(&ListenerLabels {
            listener: kind.as_str(),
        })
        .inc();
}

/// Dials `dst` from inside the pod (optionally as `source`), with a deadline.
pub(crate) async fn dial(
    scope: &PodScope,
    dst: SocketAddr,
    source: Option<IpAddr>,
) -> Result<tokio::net::TcpStream, String> {
    // Boxed: the dial's state (netns entry, socket set-up) is held only while dialling, not
    // for the connection's whole life inside its task.
    let connect = Box::pin(scope.placement.connect(dst, source));
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "connect to {dst} timed out after {CONNECT_TIMEOUT:?}"
        )),
    }
}

/// Runs the copy for an established pair and records its outcome. Bytes are added to the
/// flow and to the connection's metrics (`tcp`) as they move.
pub(crate) async fn relay(
    scope: &PodScope,
    kind: Listener,
    flow: Flow,
    tcp: &Connection,
    downstream: tokio::net::TcpStream,
    upstream: tokio::net::TcpStream,
) {
    let result = copy::bidirectional(
        downstream,
        upstream,
        &(flow.sent(), tcp.request_bytes()),
        &(flow.received(), tcp.response_bytes()),
        scope.ctx.tcp_copy,
    )
    .await;
    copy_ended(scope, kind, &flow, result);
}

/// [`relay`] for an inbound connection admitted by policy: cut (both sides reset) if a policy
/// change denies it.
pub(crate) async fn relay_guarded(
    scope: &PodScope,
    kind: Listener,
    flow: Flow,
    tcp: &Connection,
    downstream: tokio::net::TcpStream,
    upstream: tokio::net::TcpStream,
    admitted: authz::Registration,
) {
    let ended = copy::bidirectional_until(
        downstream,
        upstream,
        &(flow.sent(), tcp.request_bytes()),
        &(flow.received(), tcp.response_bytes()),
        scope.ctx.tcp_copy,
        admitted.denied(),
    )
    .await;
    guarded_copy_ended(scope, kind, &flow, tcp, ended);
}

/// Records how a copy ended: its bytes on the byte counters and, if it failed, why. (A copy
/// error is not a failed connection in Istio's metrics: no response flag.)
pub(crate) fn copy_ended(
    scope: &PodScope,
    kind: Listener,
    flow: &Flow,
    result: std::io::Result<copy::Transferred>,
) {
    account_bytes(scope, kind, flow);
    if let Err(e) = result {
        flow.fail(format!("copy: {e}"));
        count_failure(scope, kind);
    }
}

/// [`copy_ended`] for a copy a policy change can stop: a stop is recorded as a denial.
pub(crate) fn guarded_copy_ended(
    scope: &PodScope,
    kind: Listener,
    flow: &Flow,
    tcp: &Connection,
    ended: copy::Ended<crate::policy::Decision>,
) {
    match ended {
        copy::Ended::Copied(result) => copy_ended(scope, kind, flow, result),
        copy::Ended::Stopped(decision) => {
            account_bytes(scope, kind, flow);
            authz::closed_by_policy(scope, flow, &decision);
            count_failure(scope, kind);
            tcp.fail(ResponseFlags::Deny);
        }
    }
}

/// Adds a finished flow's bytes to the byte counters.
pub(crate) fn account_bytes(scope: &PodScope, kind: Listener, flow: &Flow) {
    use std::sync::atomic::Ordering::Relaxed;
    let labels = |direction| crate::metrics::BytesLabels {
        listener: kind.as_str(),
        direction,
    };
    let m = &scope.ctx.metrics;
    m.bytes
        .get_or_create(&labels("sent"))
        .inc_by(flow.sent().load(Relaxed));
    m.bytes
        .get_or_create(&labels("received"))
        .inc_by(flow.received().load(Relaxed));
}
