//! The access log: one line per finished connection (`target: "access"`, message
//! `connection complete`), with ztunnel's field names so that log pipelines and dashboards
//! built for ztunnel read ambit's lines as they are.
//!
//! | field | meaning |
//! |---|---|
//! | `src.addr` | the client's address |
//! | `src.workload`, `src.namespace` | the client pod (name and namespace), when it is a known pod |
//! | `src.identity` | the client's SPIFFE identity, on mutual-TLS (HBONE) connections only |
//! | `dst.addr` | where this side sent the connection: the peer's 15008 for HBONE, else the destination |
//! | `dst.hbone_addr` | for HBONE, the address asked for inside the tunnel (pod IP and app port) |
//! | `dst.service` | the Service hostname, when the client connected to a ClusterIP |
//! | `dst.workload`, `dst.namespace`, `dst.identity` | the server pod, as for `src.*` |
//! | `direction` | `outbound` (15001, the client's side) or `inbound` (15006, 15008) |
//! | `bytes_sent`, `bytes_recv` | bytes sent and received by the workload on this side (ztunnel's convention: the client's view outbound, the server's view inbound) |
//! | `duration` | e.g. `12ms` |
//! | `error` | why the connection failed (absent when it did not) |
//! | `policy` | ambit's own: the inbound policy decision and the policy that made it |
//! | `tls_group` | ambit's own: the HBONE handshake's key-exchange group (e.g. `X25519MLKEM768`) |
//!
//! A failed connection is logged at ERROR, a completed one at INFO (as ztunnel does); with
//! `/logging?level=access=debug` each connection is also logged when it opens. Pods are named
//! from the workload directory current when the line is written.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use super::{FlowRecord, Listener};
use crate::config::HBONE_PORT;
use crate::identity::Identity;
use crate::workload::{Directory, Pod};

/// Where the access log looks up pods and Services by address.
pub struct Resolver {
    /// The current workload directory.
    pub directory: watch::Receiver<Arc<Directory>>,
    /// The mesh's trust domain (to name a local pod's identity).
    pub trust_domain: String,
}

/// The fields of one access-log line, named as in the table of the module doc (`src_addr` is
/// `src.addr`, ...).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct AccessFields {
    pub src_addr: String,
    pub src_workload: Option<String>,
    pub src_namespace: Option<String>,
    pub src_identity: Option<String>,
    pub dst_addr: String,
    pub dst_hbone_addr: Option<String>,
    pub dst_service: Option<String>,
    pub dst_workload: Option<String>,
    pub dst_namespace: Option<String>,
    pub dst_identity: Option<String>,
    pub direction: &'static str,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub duration: String,
    pub error: Option<String>,
    pub policy: Option<String>,
    pub tls_group: Option<&'static str>,
}

impl AccessFields {
    /// The fields of `record`, its pods named through `resolver` (if any).
    pub fn of(record: &FlowRecord, resolver: Option<&Resolver>) -> AccessFields {
        let directory = resolver.map(|r| r.directory.borrow().clone());
        let pod_at = |addr: SocketAddr| -> Option<Arc<Pod>> {
            directory
                .as_ref()?
                .lookup(addr.ip())
                .map(|(p, _)| p.clone())
        };
        let identity_of = |pod: &Option<Arc<Pod>>| -> Option<String> {
            let (pod, r) = (pod.as_ref()?, resolver?);
            Identity::new(&r.trust_domain, &pod.namespace, &pod.service_account)
                .ok()
                .map(|i| i.to_string())
        };
        let outbound = record.listener == Listener::Outbound;
        let hbone = match record.listener {
            Listener::Outbound => record.route == "hbone",
            Listener::Hbone => true,
            Listener::Inbound => false,
        };
        // Where the server side was reached: a Service's chosen endpoint, else the original
        // destination.
        let target = record.upstream.unwrap_or(record.dst);
        let (src_pod, dst_pod) = (pod_at(record.src), pod_at(target));
        let (src_identity, dst_identity) = match (hbone, outbound) {
            (false, _) => (None, None),
            (true, true) => (identity_of(&src_pod), record.peer_identity.clone()),
            (true, false) => (record.peer_identity.clone(), identity_of(&dst_pod)),
        };
        let service = directory
            .as_ref()
            .and_then(|d| d.service(record.dst.ip()).map(|s| s.hostname()));
        // A 15008 connection refused before any CONNECT has no inner address.
        let asked_for = (target.port() != 0 && target.port() != HBONE_PORT).then_some(target);
        let (dst_addr, dst_hbone_addr) = match hbone {
            true => (
                SocketAddr::new(target.ip(), HBONE_PORT),
                asked_for.map(|t| t.to_string()),
            ),
            false => (target, None),
        };
        let (bytes_sent, bytes_recv) = match outbound {
            true => (record.bytes_sent, record.bytes_received),
            false => (record.bytes_received, record.bytes_sent),
        };
        AccessFields {
            src_addr: record.src.to_string(),
            src_workload: src_pod.as_ref().map(|p| p.name.clone()),
            src_namespace: src_pod.as_ref().map(|p| p.namespace.clone()),
            src_identity,
            dst_addr: dst_addr.to_string(),
            dst_hbone_addr,
            dst_service: service,
            dst_workload: dst_pod.as_ref().map(|p| p.name.clone()),
            dst_namespace: dst_pod.as_ref().map(|p| p.namespace.clone()),
            dst_identity,
            direction: direction(record.listener),
            bytes_sent,
            bytes_recv,
            duration: format!("{}ms", record.duration_ms),
            error: record.error.clone(),
            policy: record.policy.clone(),
            tls_group: record.tls_group,
        }
    }

    /// Writes the line: ERROR if the connection failed, INFO otherwise.
    pub fn emit(&self) {
        // A tracing event's level is fixed per call site, hence one site per level.
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    target: "access",
                    $level,
                    src.addr = %self.src_addr,
                    src.workload = self.src_workload.as_deref(),
                    src.namespace = self.src_namespace.as_deref(),
                    src.identity = self.src_identity.as_deref(),
                    dst.addr = %self.dst_addr,
                    dst.hbone_addr = self.dst_hbone_addr.as_deref(),
                    dst.service = self.dst_service.as_deref(),
                    dst.workload = self.dst_workload.as_deref(),
                    dst.namespace = self.dst_namespace.as_deref(),
                    dst.identity = self.dst_identity.as_deref(),
                    direction = self.direction,
                    bytes_sent = self.bytes_sent,
                    bytes_recv = self.bytes_recv,
                    duration = %self.duration,
                    error = self.error.as_deref(),
                    policy = self.policy.as_deref(),
                    tls_group = self.tls_group,
                    "connection complete"
                )
            };
        }
        match self.error {
            Some(_) => line!(tracing::Level::ERROR),
            None => line!(tracing::Level::INFO),
        }
    }
}

/// Whether `record`'s line would be written at the current log level: naming pods and
/// formatting fields is skipped on the data thread when the access log is off.
pub(crate) fn wanted(record: &FlowRecord) -> bool {
    match record.error {
        Some(_) => tracing::enabled!(target: "access", tracing::Level::ERROR),
        None => tracing::enabled!(target: "access", tracing::Level::INFO),
    }
}

fn direction(listener: Listener) -> &'static str {
    match listener {
        Listener::Outbound => "outbound",
        Listener::Inbound | Listener::Hbone => "inbound",
    }
}

/// The DEBUG line of a connection just accepted (off unless `access=debug` is set).
pub(crate) fn opened(pod: &str, listener: Listener, src: SocketAddr, dst: SocketAddr) {
    // `event!` rather than `debug!`: the latter cannot parse dotted field names after a target.
    tracing::event!(
        target: "access",
        tracing::Level::DEBUG,
        src.addr = %src,
        dst.addr = %dst,
        direction = direction(listener),
        listener = listener.as_str(),
        pod,
        "connection opened"
    );
}

#[cfg(test)]
mod tests;
