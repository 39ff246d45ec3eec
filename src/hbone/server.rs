//! The 15008 side of HBONE: terminate mutual TLS, accept CONNECT streams, and connect each one
//! to the app inside the pod, keeping the client pod's IP as the source.
//!
//! Status codes follow ztunnel: 200 only once the app accepted the connection; 400 for a
//! request that is not a CONNECT to one of this pod's addresses; 503 when the app refused or
//! the target is one of the proxy's own ports. Every error response ends the stream at once, so
//! a client never hangs.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Request, Response, StatusCode};
use tokio::net::TcpStream;

use super::{
    forwarded_for, parse_target, CONNECTION_WINDOW, MAX_FRAME, SERVER_MAX_STREAMS, STREAM_WINDOW,
};
use crate::flows::Listener;
use crate::identity::Identity;
use crate::proxy::{count_failure, dial, PodScope, PROXY_PORTS};

/// Serves one accepted TCP connection on 15008 until it closes.
pub(crate) async fn serve_connection(scope: Arc<PodScope>, tcp: TcpStream, peer: SocketAddr) {
    let config = match (scope.security.server_tls)() {
        Ok(c) => c,
        Err(e) => {
            refuse(&scope, peer, format!("no server credentials: {e}"));
            return;
        }
    };
    let tls = match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
        Ok(tls) => tls,
        Err(e) => {
            refuse(&scope, peer, format!("TLS handshake refused: {e}"));
            return;
        }
    };
    let client_id = match crate::identity::tls::peer_identity(tls.get_ref().1) {
        Ok(id) => id,
        Err(e) => {
            refuse(&scope, peer, format!("client identity: {e}"));
            return;
        }
    };
    let mut conn = match h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(SERVER_MAX_STREAMS)
        .handshake::<_, Bytes>(tls)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            refuse(&scope, peer, format!("HTTP/2 handshake: {e}"));
            return;
        }
    };
    scope.ctx.metrics.hbone_accepted.inc();
    let client_id = Arc::new(client_id);
    while let Some(next) = conn.accept().await {
        match next {
            Ok((req, respond)) => {
                let (scope, client_id) = (scope.clone(), client_id.clone());
                tokio::spawn(
                    async move { serve_stream(&scope, peer, &client_id, req, respond).await },
                );
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
        super::PORT,
    );
    let flow = scope
        .ctx
        .flows
        .start(&scope.key, Listener::Hbone, peer, local);
    tracing::warn!(pod = %scope.key, %peer, "{why}");
    flow.fail(why);
    count_failure(scope, Listener::Hbone);
}

fn respond_error(mut respond: SendResponse<Bytes>, status: StatusCode) {
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    let _ = respond.send_response(resp, true);
}

async fn serve_stream(
    scope: &PodScope,
    peer: SocketAddr,
    client_id: &Identity,
    req: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let client = forwarded_for(req.headers().get("forwarded"))
        .filter(|c| c.port() != 0)
        .unwrap_or(peer);
    let target = parse_target(&req);
    let dst = *target.as_ref().unwrap_or(&SocketAddr::new(peer.ip(), 0));
    let flow = scope
        .ctx
        .flows
        .start(&scope.key, Listener::Hbone, client, dst);
    flow.set_peer_identity(client_id.to_string());
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
        return;
    }
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
            return;
        }
    };
    let send = match respond.send_response(Response::new(()), false) {
        Ok(s) => s,
        Err(e) => {
            flow.fail(format!("sending 200: {e}"));
            return;
        }
    };
    let recv = req.into_body();
    let result = super::stream::bidirectional(app, send, recv, flow.received(), flow.sent()).await;
    crate::proxy::account_bytes(scope, Listener::Hbone, &flow);
    if let Err(e) = result {
        flow.fail(format!("copy: {e}"));
        count_failure(scope, Listener::Hbone);
    }
}
