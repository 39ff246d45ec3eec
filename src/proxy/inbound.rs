//! 15006: plaintext connections to the pod, redirected here by the nat rules, decided by
//! policy (PeerAuthentication first: STRICT refuses plaintext; then the AuthorizationPolicies,
//! with no peer identity), and handed to the app with the client's IP kept as the source. A
//! denied connection is reset (RST) before anything is forwarded.
//!
//! The dial to the app is made from the client's address (IP_TRANSPARENT) with the in-pod mark;
//! the mangle rules turn that mark into connmark 0x111, and the app's replies are routed back
//! to this socket through the table-100 local route.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::authz::{self, Inbound};
use super::{count_failure, dial, open_flow, relay_guarded, telemetry, PodScope, Refusal};
use crate::config::PROXY_PORTS;
use crate::flows::Listener;
use crate::metrics::tcp::ResponseFlags;

/// Handles one accepted inbound plaintext connection.
pub(crate) async fn serve(scope: &PodScope, stream: TcpStream, peer: SocketAddr) {
    let Some((dst, flow)) = open_flow(scope, Listener::Inbound, &stream, peer) else {
        return;
    };
    let refusal = if PROXY_PORTS.contains(&dst.port()) {
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
    // `decide` applies PeerAuthentication first for a connection without identity
    // (`plaintext_allowed`), then the AuthorizationPolicies.
    let conn = Inbound {
        pod: scope.pod.clone(),
        src_ip: peer.ip(),
        identity: None,
        dst,
    };
    let tcp = telemetry::inbound(scope, peer.ip(), dst, None);
    let admitted = match authz::admit(scope, &flow, conn) {
        Ok(admitted) => admitted,
        Err(decision) => {
            flow.fail(Refusal::Denied(authz::denial(&decision)));
            count_failure(scope, Listener::Inbound);
            tcp.fail(ResponseFlags::Deny);
            crate::socket::close_with_reset(stream);
            return;
        }
    };
    // Ambient keeps the client's IP (a pod calling itself needs no spoofing); a sidecar uses
    // 127.0.0.6.
    let source = scope.placement.app_source(peer.ip(), dst.ip());
    flow.set_route("app");
    match dial(scope, dst, source).await {
        Ok(upstream) => {
            relay_guarded(
                scope,
                Listener::Inbound,
                flow,
                &tcp,
                stream,
                upstream,
                admitted,
            )
            .await
        }
        Err(e) => {
            flow.fail(e);
            count_failure(scope, Listener::Inbound);
            tcp.fail(ResponseFlags::Connect);
        }
    }
}
