//! 15001: connections the pod itself opened, redirected here by the nat rules.
//!
//! [`decide`] is the single decision point: a destination that is an enrolled mesh workload is
//! reached through an HBONE tunnel to its 15008, authenticated by its SPIFFE identity;
//! anything else is passed through as plain TCP from the pod's own namespace (so it leaves with
//! the pod's IP, subject to the pod's network policy).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use super::{account_bytes, count_failure, dial, open_flow, relay, PodScope, Refusal};
use crate::config::{HBONE_DIAL_TIMEOUT, HBONE_PORT, PROXY_PORTS};
use crate::flows::{Flow, Listener};
use crate::hbone::{self, TunnelRequest};
use crate::identity::Identity;

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
    if PROXY_PORTS.contains(&dst.port()) && (dst.ip().is_loopback() || scope.owns(dst.ip())) {
        return Err(Refusal::SelfCall(dst));
    }
    let directory = scope.ctx.directory.borrow().clone();
    let target = match directory.service(dst.ip()) {
        Some(svc) => directory
            .pick_endpoint(
                svc,
                dst,
                scope.ctx.endpoint_turn.fetch_add(1, Ordering::Relaxed),
            )
            .ok_or_else(|| Refusal::NoEndpoints(svc.key(), dst))?,
        None => dst,
    };
    let Some((pod, true)) = directory.lookup(target.ip()) else {
        return Ok(Route::Passthrough { target });
    };
    let identity = Identity::new(
        &scope.ctx.trust_domain,
        &pod.namespace,
        &pod.service_account,
    )
    .map_err(|e| Refusal::BadPeer(format!("destination {}: {e}", pod.key())))?;
    Ok(Route::Hbone {
        target,
        peer: SocketAddr::new(target.ip(), HBONE_PORT),
        identity,
    })
}

/// Handles one accepted outbound connection.
pub(crate) async fn serve(scope: &PodScope, stream: TcpStream, peer: SocketAddr) {
    let Some((dst, flow)) = open_flow(scope, Listener::Outbound, &stream, peer) else {
        return;
    };
    let route = match decide(scope, dst) {
        Ok(r) => r,
        Err(refusal) => {
            flow.fail(refusal);
            count_failure(scope, Listener::Outbound);
            return;
        }
    };
    match route {
        Route::Passthrough { target } => {
            flow.set_route("passthrough");
            flow.set_upstream(target);
            match dial(scope, target, None).await {
                Ok(upstream) => relay(scope, Listener::Outbound, flow, stream, upstream).await,
                Err(e) => {
                    flow.fail(e);
                    count_failure(scope, Listener::Outbound);
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
            if let Err(e) = tunnel(scope, &flow, stream, peer, target, via, &identity).await {
                flow.fail(e);
                count_failure(scope, Listener::Outbound);
            }
        }
    }
}

/// Why a CONNECT stream could not be opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    /// No connection to the peer (dial, TLS, credentials) or a malformed request.
    #[error("{0}")]
    Connection(String),
    /// HTTP/2 failed on an established connection before any response; the connection was
    /// discarded from the pool.
    #[error("{0}")]
    Stream(String),
}

/// A pooled connection to `via` and a CONNECT stream on it, with its response.
async fn open_stream(
    scope: &PodScope,
    request: &TunnelRequest,
    via: SocketAddr,
    identity: &Identity,
) -> Result<
    (
        crate::hbone::pool::Lease,
        http::Response<h2::RecvStream>,
        h2::SendStream<bytes::Bytes>,
    ),
    OpenError,
> {
    let dst = request.target;
    let lease = scope
        .security
        .pool
        .checkout(via, identity)
        .await
        .map_err(|e| OpenError::Connection(e.to_string()))?;
    let built = hbone::build_request(request)
        .map_err(|e| OpenError::Connection(format!("building CONNECT: {e}")))?;
    let opened = async {
        let mut send = lease.send.clone().ready().await?;
        let (response, stream) = send.send_request(built, false)?;
        Ok::<_, h2::Error>((response.await?, stream))
    };
    match tokio::time::timeout(HBONE_DIAL_TIMEOUT, opened).await {
        Ok(Ok((response, stream))) => Ok((lease, response, stream)),
        Ok(Err(e)) => {
            lease.discard();
            Err(OpenError::Stream(format!(
                "HBONE CONNECT to {dst} via {via}: {e}"
            )))
        }
        Err(_) => {
            // No answer at all: the connection is likely dead; later tunnels must not wait on
            // it too. Not retried: the client has waited long enough.
            lease.discard();
            Err(OpenError::Connection(format!(
                "HBONE CONNECT to {dst} via {via}: no response"
            )))
        }
    }
}

/// Opens a CONNECT stream to `dst` through `via` and copies the client connection through it.
async fn tunnel(
    scope: &PodScope,
    flow: &Flow,
    client: TcpStream,
    client_addr: SocketAddr,
    dst: SocketAddr,
    via: SocketAddr,
    identity: &Identity,
) -> Result<(), String> {
    let request = TunnelRequest {
        target: dst,
        client: client_addr,
        baggage: vec![
            ("k8s.namespace.name".into(), scope.pod.namespace.clone()),
            ("k8s.pod.name".into(), scope.pod.name.clone()),
        ],
    };
    let (lease, response, send_stream) = match open_stream(scope, &request, via, identity).await {
        Ok(opened) => opened,
        // The stream failed at the HTTP/2 level before the app sent a byte through it (a
        // GOAWAY raced the checkout, the peer restarted): safe to try once more on a fresh
        // connection, which the discarded one no longer shadows.
        Err(OpenError::Stream(first)) => {
            tracing::debug!(pod = %scope.key, %via, error = %first, "retrying CONNECT on a fresh connection");
            open_stream(scope, &request, via, identity)
                .await
                .map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    if response.status() != http::StatusCode::OK {
        return Err(format!(
            "HBONE CONNECT to {dst} via {via}: peer answered {}",
            response.status()
        ));
    }
    // The TLS verifier accepted the server only if it presented this identity.
    flow.set_peer_identity(identity.to_string());
    flow.set_tls_group(lease.tls_group());
    let recv = response.into_body();
    let result =
        hbone::stream::bidirectional(client, send_stream, recv, flow.sent(), flow.received()).await;
    drop(lease);
    account_bytes(scope, Listener::Outbound, flow);
    result.map(|_| ()).map_err(|e| format!("copy: {e}"))
}
