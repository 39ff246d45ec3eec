//! 15001: connections the pod itself opened, redirected here by the nat rules.
//!
//! [`decide`] is the single decision point: a destination that is an enrolled mesh workload is
//! reached through an HBONE tunnel to its 15008, authenticated by its SPIFFE identity;
//! anything else is passed through as plain TCP from the pod's own namespace (so it leaves with
//! the pod's IP, subject to the pod's network policy).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::net::TcpStream;

use super::task::ConnectionTask;
use super::{copy_ended, count_failure, dial, open_flow, relay, telemetry, PodScope, Refusal};
use crate::config::{HBONE_DIAL_TIMEOUT, HBONE_PORT, PROXY_PORTS};
use crate::copy::Tally;
use crate::flows::{Flow, Listener};
use crate::hbone::early::EarlyError;
use crate::hbone::pool::StreamSlot;
use crate::hbone::{self, TunnelRequest};
use crate::identity::Identity;
use crate::metrics::tcp::{Connection, ResponseFlags, SecurityPolicy};
use crate::workload::Directory;

/// How an outbound connection is carried on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Plain TCP to `target` (not a mesh workload).
    Passthrough {
        /// The original destination, or the chosen endpoint of a Service.
        target: SocketAddr,
    },
    /// HBONE to `peer` (the destination pod's 15008), which must present `identity`, asking
    /// for `target`.
    Hbone {
        /// The destination pod's address and port (the CONNECT authority).
        target: SocketAddr,
        /// `<destination pod IP>:15008`.
        peer: SocketAddr,
        /// The destination pod's identity.
        identity: Identity,
    },
}

/// The decision point: what to do with a connection to `dst`. A Service's ClusterIP is first
/// resolved to one of its ready endpoints; the endpoint then decides like any destination.
pub(crate) fn decide(scope: &PodScope, dst: SocketAddr) -> Result<Route, Refusal> {
    let directory = scope.ctx.directory.borrow().clone();
    let turn = scope.ctx.endpoint_turn.fetch_add(1, Ordering::Relaxed);
    decide_in(
        &directory,
        &scope.ctx.trust_domain,
        &scope.pod.ips,
        dst,
        turn,
    )
}

/// [`decide`] on explicit inputs: the directory, the trust domain, the source pod's own
/// addresses and the round-robin turn for a Service's endpoints (`ambit explain` asks it too).
pub(crate) fn decide_in(
    directory: &Directory,
    trust_domain: &str,
    own: &[IpAddr],
    dst: SocketAddr,
    turn: usize,
) -> Result<Route, Refusal> {
    if PROXY_PORTS.contains(&dst.port()) && (dst.ip().is_loopback() || own.contains(&dst.ip())) {
        return Err(Refusal::SelfCall(dst));
    }
    let target = match directory.service(dst.ip()) {
        Some(svc) => directory
            .pick_endpoint(svc, dst, turn)
            .ok_or_else(|| Refusal::NoEndpoints(svc.key(), dst))?,
        None => dst,
    };
    let Some((pod, true)) = directory.lookup(target.ip()) else {
        return Ok(Route::Passthrough { target });
    };
    let identity = Identity::new(trust_domain, &pod.namespace, &pod.service_account)
        .map_err(|e| Refusal::BadPeer(format!("destination {}: {e}", pod.key())))?;
    Ok(Route::Hbone {
        target,
        peer: SocketAddr::new(target.ip(), HBONE_PORT),
        identity,
    })
}

/// The task of one accepted outbound connection: its opening ([`connect`], boxed), then its
/// copy.
pub(crate) fn serve(
    scope: Arc<PodScope>,
    stream: TcpStream,
    peer: SocketAddr,
) -> ConnectionTask<impl Future<Output = Option<Connected>>, Connected> {
    ConnectionTask::new(connect(scope, stream, peer))
}

/// An outbound connection whose upstream is open: its copy, as the connection's task runs it.
// The tunnel stays inline: it is the common case, and boxing it would add an allocation per
// connection while the task holds one variant either way.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Connected {
    /// Plain TCP to the destination. Boxed: the plain-TCP copy (buffered or spliced) is the
    /// larger of the two.
    Passthrough(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// A CONNECT stream the peer accepted.
    Hbone(Tunnelled),
}

impl Future for Connected {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut() {
            Connected::Passthrough(relay) => relay.as_mut().poll(cx),
            Connected::Hbone(tunnelled) => Pin::new(tunnelled).poll(cx),
        }
    }
}

/// A client connection copied through an open tunnel, adding the bytes to the flow and to the
/// connection's metrics (`tcp`) as they move. Fields drop in order: the sockets and the
/// stream, then the records.
pub(crate) struct Tunnelled {
    copy: hbone::stream::Copy,
    /// The stream's place on the pooled connection, given back as soon as the copy ends.
    slot: Option<StreamSlot>,
    flow: Flow,
    tcp: Connection,
    scope: Arc<PodScope>,
}

impl Future for Tunnelled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let t = self.get_mut();
        let result = ready!(t.copy.poll_copy(
            cx,
            &(t.flow.sent(), t.tcp.request_bytes()),
            &(t.flow.received(), t.tcp.response_bytes()),
        ));
        drop(t.slot.take());
        copy_ended(&t.scope, Listener::Outbound, &t.flow, result);
        Poll::Ready(())
    }
}

/// Decides the route and opens the upstream; `None` once a failure has been recorded.
async fn connect(
    owned_scope: Arc<PodScope>,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Option<Connected> {
    let scope = &*owned_scope;
    let (dst, flow) = open_flow(scope, Listener::Outbound, &stream, peer)?;
    let route = match decide(scope, dst) {
        Ok(r) => r,
        Err(refusal) => {
            flow.fail(refusal);
            count_failure(scope, Listener::Outbound);
            return None;
        }
    };
    match route {
        Route::Passthrough { target } => {
            flow.set_route("passthrough");
            flow.set_upstream(target);
            let tcp = telemetry::outbound(scope, dst, target, SecurityPolicy::Unknown);
            match dial(scope, target, None).await {
                Ok(upstream) => Some(Connected::Passthrough(Box::pin(async move {
                    let scope = &*owned_scope;
                    relay(scope, Listener::Outbound, flow, &tcp, stream, upstream).await
                }))),
                Err(e) => {
                    flow.fail(e);
                    count_failure(scope, Listener::Outbound);
                    tcp.fail(ResponseFlags::Connect);
                    None
                }
            }
        }
        Route::Hbone {
            target,
            peer: via,
            identity,
        } => {
            flow.set_route("hbone");
            flow.set_upstream(target);
            let tcp = telemetry::outbound(scope, dst, target, SecurityPolicy::MutualTls);
            match open_tunnel(scope, &mut stream, peer, target, via, &identity).await {
                Ok(OpenTunnel {
                    lease,
                    send,
                    recv,
                    sent_early,
                }) => {
                    // The TLS verifier accepted the server only if it presented this identity.
                    flow.set_peer_identity(lease.peer_identity());
                    flow.set_tls_group(lease.tls_group());
                    (flow.sent(), tcp.request_bytes()).add(sent_early);
                    Some(Connected::Hbone(Tunnelled {
                        copy: hbone::stream::Copy::new(stream, send, recv),
                        slot: Some(lease.into_slot()),
                        flow,
                        tcp,
                        scope: owned_scope,
                    }))
                }
                Err((e, flags)) => {
                    flow.fail(e);
                    count_failure(scope, Listener::Outbound);
                    if let Some(flags) = flags {
                        tcp.fail(flags);
                    }
                    None
                }
            }
        }
    }
}

/// Why a CONNECT stream could not be opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    /// No connection to the peer (dial, TLS, credentials) or a malformed request, with the
    /// metrics' name for it.
    #[error("{0}")]
    Connection(String, ResponseFlags),
    /// HTTP/2 failed on an established connection before any response; the connection was
    /// discarded from the pool. `retry_safe`: opening it again cannot deliver the client's
    /// bytes twice.
    #[error("{message}")]
    Stream { message: String, retry_safe: bool },
    /// The client failed while its first bytes were read (see [`hbone::early`]).
    #[error("reading the client: {0}")]
    Client(std::io::Error),
}

/// A pooled connection to `via` and a CONNECT stream on it, with its response. The client's
/// first bytes go out before the response (kept in `first`; see [`hbone::early`]).
async fn open_stream(
    scope: &PodScope,
    client: &mut TcpStream,
    first: &mut Option<Bytes>,
    request: &TunnelRequest,
    via: SocketAddr,
    identity: &Identity,
) -> Result<
    (
        crate::hbone::pool::Lease,
        http::Response<h2::RecvStream>,
        h2::SendStream<Bytes>,
    ),
    OpenError,
> {
    let dst = request.target;
    let lease = scope
        .security
        .pool
        .checkout(via, identity)
        .await
        .map_err(|e| OpenError::Connection(e.to_string(), telemetry::dial_failure(&e)))?;
    let built = hbone::build_request(request).map_err(|e| {
        OpenError::Connection(format!("building CONNECT: {e}"), ResponseFlags::Connect)
    })?;
    let opened = async {
        let unsent = |error| EarlyError::Stream {
            error,
            retry_safe: true,
        };
        let mut send = lease.send.clone().ready().await.map_err(unsent)?;
        let (response, mut stream) = send.send_request(built, false).map_err(unsent)?;
        let response = if scope.ctx.hbone_early_data {
            hbone::early::answer_sending_first_bytes(client, &mut stream, response, first).await?
        } else {
            response.await.map_err(unsent)?
        };
        Ok::<_, EarlyError>((response, stream))
    };
    match tokio::time::timeout(HBONE_DIAL_TIMEOUT, opened).await {
        Ok(Ok((response, stream))) => Ok((lease, response, stream)),
        Ok(Err(EarlyError::Stream { error, retry_safe })) => {
            lease.discard();
            Err(OpenError::Stream {
                message: format!("HBONE CONNECT to {dst} via {via}: {error}"),
                retry_safe,
            })
        }
        Ok(Err(EarlyError::Client(e))) => Err(OpenError::Client(e)),
        Err(_) => {
            // No answer at all: the connection is likely dead; later tunnels must not wait on
            // it too. Not retried: the client has waited long enough.
            lease.discard();
            Err(OpenError::Connection(
                format!("HBONE CONNECT to {dst} via {via}: no response"),
                ResponseFlags::Connect,
            ))
        }
    }
}

/// Why a tunnel failed: the flow's error text and the metrics' response flag (`None` for an
/// error while copying, which Istio does not count as a failed connection).
type TunnelError = (String, Option<ResponseFlags>);

/// A CONNECT stream the peer accepted, with the lease it was opened on and how many of the
/// client's bytes went out before the answer.
struct OpenTunnel {
    lease: crate::hbone::pool::Lease,
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    sent_early: u64,
}

/// A CONNECT stream to `dst` through `via` that the peer answered with 200.
async fn open_tunnel(
    scope: &PodScope,
    client: &mut TcpStream,
    client_addr: SocketAddr,
    dst: SocketAddr,
    via: SocketAddr,
    identity: &Identity,
) -> Result<OpenTunnel, TunnelError> {
    let request = TunnelRequest {
        target: dst,
        client: client_addr,
        baggage: vec![
            ("k8s.namespace.name".into(), scope.pod.namespace.clone()),
            ("k8s.pod.name".into(), scope.pod.name.clone()),
        ],
    };
    let mut first = None;
    let opened = open_stream(scope, client, &mut first, &request, via, identity).await;
    let (lease, response, send) = match opened {
        Ok(opened) => opened,
        // The stream failed at the HTTP/2 level before the peer could have passed anything on
        // (a GOAWAY raced the checkout, the peer restarted): safe to try once more on a fresh
        // connection, which the discarded one no longer shadows.
        Err(OpenError::Stream {
            message,
            retry_safe: true,
        }) => {
            tracing::debug!(pod = %scope.key, %via, error = %message, "retrying CONNECT on a fresh connection");
            open_stream(scope, client, &mut first, &request, via, identity)
                .await
                .map_err(failed_open)?
        }
        Err(e) => return Err(failed_open(e)),
    };
    if response.status() != http::StatusCode::OK {
        // Any refusal by the peer, its policy's 401 included, is CONNECT at the source, as in
        // ztunnel (the destination reports the DENY).
        let flags = ResponseFlags::Connect;
        let why = format!(
            "HBONE CONNECT to {dst} via {via}: peer answered {}",
            response.status()
        );
        return Err((why, Some(flags)));
    }
    Ok(OpenTunnel {
        lease,
        send,
        recv: response.into_body(),
        sent_early: first.map_or(0, |b| b.len() as u64),
    })
}

fn failed_open(e: OpenError) -> TunnelError {
    let flags = match &e {
        OpenError::Connection(_, flags) => Some(*flags),
        OpenError::Stream { .. } => Some(ResponseFlags::Connect),
        // The client went away: a copy error, which Istio does not count as a failed connection.
        OpenError::Client(_) => None,
    };
    (e.to_string(), flags)
}
