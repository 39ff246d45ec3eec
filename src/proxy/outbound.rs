//! 15001: connections the pod itself opened, redirected here by the nat rules.
//!
//! The original destination decides how the connection is carried. Today every destination is
//! reached by plain TCP from inside the pod's namespace (so it leaves with the pod's own IP);
//! [`decide`] is the one place where mesh destinations will be sent through HBONE instead.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::{count_failure, dial, relay, socket, PodScope, Refusal, PROXY_PORTS};
use crate::flows::Listener;

/// How an outbound connection is carried on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Plain TCP to the original destination. `mesh` says whether the destination is an
    /// enrolled workload (carried in plaintext until HBONE is enabled) or outside the mesh.
    Passthrough { mesh: bool },
}

impl Route {
    fn label(&self) -> &'static str {
        match self {
            Route::Passthrough { mesh: true } => "passthrough (mesh destination)",
            Route::Passthrough { mesh: false } => "passthrough",
        }
    }
}

/// The decision point: what to do with a connection to `dst`.
pub(crate) fn decide(scope: &PodScope, dst: SocketAddr) -> Result<Route, Refusal> {
    if PROXY_PORTS.contains(&dst.port()) && (dst.ip().is_loopback() || scope.owns(dst.ip())) {
        return Err(Refusal::SelfCall(dst));
    }
    let directory = scope.ctx.directory.borrow().clone();
    let mesh = directory
        .lookup(dst.ip())
        .is_some_and(|(_, in_mesh)| in_mesh);
    Ok(Route::Passthrough { mesh })
}

/// Handles one accepted outbound connection.
pub(crate) async fn serve(scope: &PodScope, stream: TcpStream, peer: SocketAddr) {
    let dst = match socket::original_dst(&stream) {
        Ok(dst) => dst,
        Err(e) => {
            tracing::warn!(pod = %scope.key, %peer, error = %e, "no original destination");
            count_failure(scope, Listener::Outbound);
            return;
        }
    };
    let flow = scope
        .ctx
        .flows
        .start(&scope.key, Listener::Outbound, peer, dst);
    let route = match decide(scope, dst) {
        Ok(r) => r,
        Err(refusal) => {
            flow.fail(refusal);
            count_failure(scope, Listener::Outbound);
            return;
        }
    };
    flow.set_route(route.label());
    match route {
        Route::Passthrough { .. } => match dial(scope, dst, None).await {
            Ok(upstream) => relay(scope, Listener::Outbound, flow, stream, upstream).await,
            Err(e) => {
                flow.fail(e);
                count_failure(scope, Listener::Outbound);
            }
        },
    }
}
