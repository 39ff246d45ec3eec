//! 15008: HBONE tunnels into the pod. The wire protocol is `hbone::server`'s; this handler
//! decides what a CONNECT may reach (one of this pod's addresses, never a proxy port), asks the
//! policy engine (401 if denied), dials the app inside the pod with the client pod's IP kept as
//! the source, and copies until the tunnel ends or a policy change denies it (stream reset).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Request, StatusCode};
use tokio::net::TcpStream;

use super::admission::HandshakeGuard;
use super::authz::{self, Inbound};
use super::task::ConnectionTask;
use super::{count_failure, dial, telemetry, PodScope};
use crate::config::{HBONE_PORT, PROXY_PORTS};
use crate::flows::Listener;
use crate::hbone::server::{respond_error, respond_ok, Accepted};
use crate::hbone::stream::Copy;
use crate::hbone::{forwarded_for, parse_target};
use crate::identity::revocation::revoked_or_never;
use crate::identity::Identity;
use crate::metrics::count_tls_handshake;
use crate::metrics::tcp::ResponseFlags;

/// Serves one accepted TCP connection on 15008 until it closes. `handshake` is its admission
/// slot, released once the handshakes are done. The connection is pinged (a dead client is
/// dropped) and, when the daemon drains, sent a GOAWAY so the client opens new streams
/// elsewhere while the streams it has run to their end.
pub(crate) async fn serve_connection(
    scope: Arc<PodScope>,
    tcp: TcpStream,
    peer: SocketAddr,
    handshake: Option<HandshakeGuard>,
) {
    let config = match (scope.security.server_tls)() {
        Ok(c) => c,
        Err(e) => {
            refuse(&scope, peer, format!("no server credentials: {e}"));
            return;
        }
    };
    let Accepted {
        mut conn,
        client: client_id,
        client_chain,
        tls_group,
    } = match Box::pin(crate::hbone::server::accept(tcp, config)).await {
        Ok(accepted) => accepted,
        Err(e) => {
            refuse(&scope, peer, e.to_string());
            return;
        }
    };
    drop(handshake);
    scope.ctx.metrics.hbone_accepted.inc();
    count_tls_handshake(&scope.ctx.metrics.tls_handshakes, tls_group, "server");
    let client_id = Arc::new(client_id);
    // Every stream's flow names the client: one shared copy of its text.
    let client_text: Arc<str> = client_id.to_string().into();
    let keepalive = crate::hbone::keepalive::watch_or_never(conn.ping_pong());
    tokio::pin!(keepalive);
    let drain = scope.ctx.drain.clone();
    let mut draining = false;
    let revoked = revoked_or_never(scope.security.revocation.clone(), client_chain);
    tokio::pin!(revoked);
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            why = &mut revoked => {
                // Dropping the connection ends its tunnels: their apps see the close.
                tracing::warn!(pod = %scope.key, %peer, client = %client_id, error = %why,
                    "closing HBONE connection: client certificate revoked");
                break;
            }
            dead = &mut keepalive => {
                tracing::info!(pod = %scope.key, %peer, error = %dead, "closing HBONE connection");
                break;
            }
            _ = drain.started(), if !draining => {
                // GOAWAY: the client stops opening streams here; the connection must still be
                // polled (below) for its open streams to finish.
                draining = true;
                conn.graceful_shutdown();
                continue;
            }
        };
        let Some(next) = next else { break };
        match next {
            Ok((req, respond)) => {
                // The request, the decision and the dial are freed once the 200 is sent; the
                // task then holds only the copy (see `proxy::task`).
                tokio::spawn(ConnectionTask::new(accept_stream(
                    scope.clone(),
                    peer,
                    client_id.clone(),
                    client_text.clone(),
                    tls_group,
                    req,
                    respond,
                )));
            }
            Err(e) => {
                tracing::debug!(pod = %scope.key, %peer, error = %e, "HBONE connection ended");
                break;
            }
        }
    }
}

/// Records a connection refused before any tunnel was opened.
fn refuse(scope: &PodScope, peer: SocketAddr, why: String) {
    let local = SocketAddr::new(
        scope.pod.ips.first().copied().unwrap_or(peer.ip()),
        HBONE_PORT,
    );
    let flow = scope
        .ctx
        .flows
        .start(&scope.key, Listener::Hbone, peer, local);
    tracing::warn!(pod = %scope.key, %peer, "{why}");
    flow.fail(why);
    count_failure(scope, Listener::Hbone);
}

/// A CONNECT the pod accepted, copied between the tunnel and the app until either ends or a
/// policy change denies it (then the stream is reset with CONNECT_ERROR and the app's
/// connection with RST). Fields drop in order: the sockets and the stream first, then the
/// records.
struct AcceptedStream {
    copy: Copy,
    admitted: authz::Registration,
    flow: crate::flows::Flow,
    tcp: crate::metrics::tcp::Connection,
    scope: Arc<PodScope>,
}

impl Future for AcceptedStream {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let s = self.get_mut();
        // The app answers (server → client) into the tunnel; the tunnel carries the client's
        // bytes to the app.
        let ended = ready!(s.copy.poll_until(
            cx,
            &(s.flow.received(), s.tcp.response_bytes()),
            &(s.flow.sent(), s.tcp.request_bytes()),
            &mut s.admitted.denied(),
        ));
        super::guarded_copy_ended(&s.scope, Listener::Hbone, &s.flow, &s.tcp, ended);
        Poll::Ready(())
    }
}

/// The opening of a CONNECT stream's task: checks the CONNECT's target, asks policy, dials the
/// app and answers 200; `None` once a refusal has been answered and recorded.
async fn accept_stream(
    owned_scope: Arc<PodScope>,
    peer: SocketAddr,
    client_id: Arc<Identity>,
    client_text: Arc<str>,
    tls_group: Option<&'static str>,
    req: Request<h2::RecvStream>,
    respond: SendResponse<Bytes>,
) -> Option<AcceptedStream> {
    let (scope, client_id) = (&*owned_scope, &client_id);
    let client = forwarded_for(req.headers().get("forwarded"))
        .filter(|c| c.port() != 0)
        .unwrap_or(peer);
    let target = parse_target(&req);
    let dst = *target.as_ref().unwrap_or(&SocketAddr::new(peer.ip(), 0));
    let flow = scope
        .ctx
        .flows
        .start(&scope.key, Listener::Hbone, client, dst);
    flow.set_peer_identity(client_text);
    flow.set_tls_group(tls_group);
    let refusal = match &target {
        Err(e) => Some((StatusCode::BAD_REQUEST, e.to_string())),
        Ok(t) if !scope.owns(t.ip()) => Some((
            StatusCode::BAD_REQUEST,
            format!("{t} is not an address of this pod"),
        )),
        Ok(t) if PROXY_PORTS.contains(&t.port()) => Some((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{t} is the proxy's own port"),
        )),
        Ok(_) => None,
    };
    if let Some((status, why)) = refusal {
        respond_error(respond, status);
        flow.fail(format!("{} {why}", status.as_u16()));
        count_failure(scope, Listener::Hbone);
        return None;
    }
    // Policy sees the outer connection's peer, as ztunnel's does (`src/proxy/inbound.rs`: the
    // RBAC connection's `src` is the TLS socket's peer address): the `forwarded` header is the
    // client's claim, the TCP peer is what the kernel saw.
    let conn = Inbound {
        pod: scope.pod.clone(),
        src_ip: peer.ip(),
        identity: Some(Arc::clone(client_id)),
        dst,
    };
    let tcp = telemetry::inbound(scope, peer.ip(), dst, Some(client_id));
    let admitted = match authz::admit(scope, &flow, conn) {
        Ok(admitted) => admitted,
        Err(decision) => {
            respond_error(respond, StatusCode::UNAUTHORIZED);
            flow.fail(format!("401 {}", authz::denial(&decision)));
            count_failure(scope, Listener::Hbone);
            tcp.fail(ResponseFlags::Deny);
            return None;
        }
    };
    // The HBONE connection comes from the client pod's own IP (it is dialled from inside the
    // client's netns), so in ambient that is the source the app sees; a sidecar uses 127.0.0.6.
    let source = scope.placement.app_source(peer.ip(), dst.ip());
    flow.set_route("app");
    let app = match dial(scope, dst, source).await {
        Ok(app) => app,
        Err(e) => {
            respond_error(respond, StatusCode::SERVICE_UNAVAILABLE);
            flow.fail(format!("503 {e}"));
            count_failure(scope, Listener::Hbone);
            tcp.fail(ResponseFlags::Connect);
            return None;
        }
    };
    let send = match respond_ok(respond) {
        Ok(s) => s,
        Err(e) => {
            flow.fail(format!("sending 200: {e}"));
            tcp.fail(ResponseFlags::Connect);
            return None;
        }
    };
    Some(AcceptedStream {
        copy: Copy::new(app, send, req.into_body()),
        admitted,
        flow,
        tcp,
        scope: owned_scope,
    })
}
