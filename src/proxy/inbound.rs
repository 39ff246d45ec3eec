//! 15006: plaintext connections to the pod, redirected here by the nat rules, handed to the
//! app with the client's IP kept as the source.
//!
//! The dial to the app is made from the client's address (IP_TRANSPARENT) with the in-pod mark;
//! the mangle rules turn that mark into connmark 0x111, and the app's replies are routed back
//! to this socket through the table-100 local route.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::{count_failure, dial, open_flow, relay, PodScope, Refusal};
use crate::config::PROXY_PORTS;
use crate::flows::Listener;

/// Handles one accepted inbound plaintext connection.
pub(crate) async fn serve(scope: &PodScope, stream: TcpStream, peer: SocketAddr) {
    let Some((dst, flow)) = open_flow(scope, Listener::Inbound, &stream, peer) else {
        return;
    };
    let refusal = if scope.security.strict {
        Some(Refusal::Strict)
    } else if PROXY_PORTS.contains(&dst.port()) {
        Some(Refusal::SelfCall(dst))
    } else if !scope.owns(dst.ip()) {
        Some(Refusal::NotThisPod(dst))
    } else {
        None
    };
    if let Some(refusal) = refusal {
        flow.fail(refusal);
        count_failure(scope, Listener::Inbound);
        return;
    }
    // Ambient keeps the client's IP (a pod calling itself needs no spoofing); a sidecar uses
    // 127.0.0.6.
    let source = scope.placement.app_source(peer.ip(), dst.ip());
    flow.set_route("app");
    match dial(scope, dst, source).await {
        Ok(upstream) => relay(scope, Listener::Inbound, flow, stream, upstream).await,
        Err(e) => {
            flow.fail(e);
            count_failure(scope, Listener::Inbound);
        }
    }
}
