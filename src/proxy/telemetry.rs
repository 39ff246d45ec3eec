//! The Istio metric labels of a connection (see [`crate::metrics::tcp`]), resolved once, when
//! its destination is known, from the pod the proxy serves and the workload directory.
//!
//! - At the source (15001): the client is this pod; the server is whatever pod owns the address
//!   dialled (a Service's chosen endpoint), enrolled or not; the Service is the one whose
//!   ClusterIP the client addressed. The source principal is this pod's identity only when the
//!   connection goes out over mutual TLS.
//! - At the destination (15006, 15008): the server is this pod; the client is whatever pod owns
//!   the connection's source address; its principal is the identity its certificate proved
//!   (15008 only); the Service is guessed from the pod's Services by target port.

use std::net::{IpAddr, SocketAddr};

use super::PodScope;
use crate::hbone::pool::DialError;
use crate::identity::Identity;
use crate::metrics::tcp::{
    Connection, Reporter, ResponseFlags, SecurityPolicy, TcpLabels, Workload,
};
use crate::workload::Pod;

fn workload(scope: &PodScope, pod: &Pod) -> Workload {
    Workload::of(pod, &scope.ctx.cluster_id)
}

fn principal(scope: &PodScope, pod: &Pod) -> String {
    Identity::new(
        &scope.ctx.trust_domain,
        &pod.namespace,
        &pod.service_account,
    )
    .map(|id| id.to_string())
    .unwrap_or_default()
}

/// Opens the metrics of an outbound connection to `dst`, carried to `target`.
pub(crate) fn outbound(
    scope: &PodScope,
    dst: SocketAddr,
    target: SocketAddr,
    security: SecurityPolicy,
) -> Connection {
    let directory = scope.ctx.directory.borrow().clone();
    let mut labels =
        TcpLabels::new(Reporter::Source, security).with_source(&workload(scope, &scope.pod));
    if security == SecurityPolicy::MutualTls {
        labels = labels.with_source_principal(&scope.security.identity.to_string());
    }
    if let Some((pod, _)) = directory.lookup(target.ip()) {
        labels = labels.with_destination(&workload(scope, pod), &principal(scope, pod));
    }
    if let Some(svc) = directory.service(dst.ip()) {
        labels = labels.with_destination_service(svc);
    }
    Connection::open(&scope.ctx.metrics.tcp, labels)
}

/// Opens the metrics of an inbound connection from `client` to `dst` (an address of this pod),
/// over mutual TLS when the client's `identity` was proved.
pub(crate) fn inbound(
    scope: &PodScope,
    client: IpAddr,
    dst: SocketAddr,
    identity: Option<&Identity>,
) -> Connection {
    let directory = scope.ctx.directory.borrow().clone();
    let security = match identity {
        Some(_) => SecurityPolicy::MutualTls,
        None => SecurityPolicy::Unknown,
    };
    let mut labels = TcpLabels::new(Reporter::Destination, security).with_destination(
        &workload(scope, &scope.pod),
        &scope.security.identity.to_string(),
    );
    if let Some((pod, _)) = directory.lookup(client) {
        labels = labels.with_source(&workload(scope, pod));
    }
    if let Some(id) = identity {
        labels = labels.with_source_principal(&id.to_string());
    }
    if let Some(svc) = directory.service_behind(dst) {
        labels = labels.with_destination_service(svc);
    }
    Connection::open(&scope.ctx.metrics.tcp, labels)
}

/// The response flag of an HBONE dial that failed.
pub(crate) fn dial_failure(e: &DialError) -> ResponseFlags {
    match e {
        DialError::Tls { .. } => ResponseFlags::TlsFailure,
        DialError::Http2 { .. } => ResponseFlags::Http2HandshakeFailure,
        DialError::Credentials(_) => ResponseFlags::IdentityError,
        _ => ResponseFlags::Connect,
    }
}
