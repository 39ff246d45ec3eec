//! Istio's standard TCP metrics, as ztunnel exports them, so that the dashboards, alerts and
//! Kiali graphs people already point at a mesh read ambit unchanged.
//!
//! Every proxied connection is reported by the proxy that handled it: the client's node with
//! `reporter="source"` (15001) and the server's node with `reporter="destination"` (15006,
//! 15008). A connection carries one [`Connection`] from the moment its destination is known:
//! creating it counts `istio_tcp_connections_opened_total`, the copy adds to the two byte
//! counters chunk by chunk while the connection lives (through handles fetched once, so a chunk
//! costs an atomic add), and dropping it counts `istio_tcp_connections_closed_total` — plus
//! `istio_tcp_connections_failed_total` when a [`ResponseFlags`] other than `-` was set.
//!
//! The byte counters follow Istio's (Envoy's) meaning, on both reporters: *received* is what
//! the client sent (the request direction), *sent* is what the server answered.
//!
//! Where each label's value comes from, with the ztunnel and Istio sources of each fact:
//! `docs/metrics.md`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::workload::{Pod, Service};

/// The value of a label nothing is known about (ztunnel's too).
pub const UNKNOWN: &str = "unknown";

/// Which proxy reports the connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The client's proxy (outbound, 15001).
    Source,
    /// The server's proxy (inbound, 15006 and 15008).
    Destination,
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, w: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        w.write_str(match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        })
    }
}

/// Whether the connection was carried with mutual TLS.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SecurityPolicy {
    /// Plain TCP: passthrough, or plaintext arriving on 15006.
    Unknown,
    /// HBONE: both sides authenticated by their SPIFFE certificates.
    MutualTls,
}

impl EncodeLabelValue for SecurityPolicy {
    fn encode(&self, w: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        w.write_str(match self {
            SecurityPolicy::Unknown => UNKNOWN,
            SecurityPolicy::MutualTls => "mutual_tls",
        })
    }
}

/// Why a connection failed, in Envoy's and ztunnel's short codes.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
#[repr(u8)]
pub enum ResponseFlags {
    /// Nothing went wrong (`-`).
    None = 0,
    /// Denied by an AuthorizationPolicy or PeerAuthentication, at connect or later (`DENY`).
    Deny = 1,
    /// No upstream connection could be made (`CONNECT`).
    Connect = 2,
    /// The TLS handshake of an HBONE connection failed (`TLS_FAILURE`).
    TlsFailure = 3,
    /// The HTTP/2 handshake of an HBONE connection failed (`H2_HANDSHAKE_FAILURE`).
    Http2HandshakeFailure = 4,
    /// No certificate for the workload's identity (`IDENTITY_ERROR`).
    IdentityError = 5,
}

impl ResponseFlags {
    const ALL: [ResponseFlags; 6] = [
        ResponseFlags::None,
        ResponseFlags::Deny,
        ResponseFlags::Connect,
        ResponseFlags::TlsFailure,
        ResponseFlags::Http2HandshakeFailure,
        ResponseFlags::IdentityError,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlags::None => "-",
            ResponseFlags::Deny => "DENY",
            ResponseFlags::Connect => "CONNECT",
            ResponseFlags::TlsFailure => "TLS_FAILURE",
            ResponseFlags::Http2HandshakeFailure => "H2_HANDSHAKE_FAILURE",
            ResponseFlags::IdentityError => "IDENTITY_ERROR",
        }
    }
}

impl EncodeLabelValue for ResponseFlags {
    fn encode(&self, w: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        w.write_str(self.as_str())
    }
}

/// A workload as the labels name it: a pod seen through Istio's naming rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The workload the pod belongs to (a Deployment's name), else the pod's name.
    pub name: String,
    /// The pod's namespace.
    pub namespace: String,
    /// Canonical service: the first of the labels `service.istio.io/canonical-name`,
    /// `app.kubernetes.io/name`, `app`, else the workload name.
    pub canonical_service: String,
    /// Canonical revision: the first of `service.istio.io/canonical-revision`,
    /// `app.kubernetes.io/version`, `version`, else `latest`.
    pub canonical_revision: String,
    /// The cluster the pod runs in (`--cluster-id`).
    pub cluster: String,
}

/// Pod labels naming the canonical service, most specific first (Istio's order).
const NAME_LABELS: [&str; 3] = [
    "service.istio.io/canonical-name",
    "app.kubernetes.io/name",
    "app",
];
/// Pod labels naming the canonical revision, most specific first (Istio's order).
const REVISION_LABELS: [&str; 3] = [
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
];
/// Pod label overriding the workload name (Istio's).
const WORKLOAD_NAME_LABEL: &str = "service.istio.io/workload-name";
/// The canonical revision of a pod without a revision label (Istio's).
const DEFAULT_REVISION: &str = "latest";

impl Workload {
    /// `pod` as Istio names it, in `cluster`.
    pub fn of(pod: &Pod, cluster: &str) -> Workload {
        let label = |keys: &[&str]| keys.iter().find_map(|k| pod.labels.get(*k).cloned());
        let name = pod
            .labels
            .get(WORKLOAD_NAME_LABEL)
            .or(pod.workload.as_ref())
            .unwrap_or(&pod.name)
            .clone();
        Workload {
            canonical_service: label(&NAME_LABELS).unwrap_or_else(|| name.clone()),
            canonical_revision: label(&REVISION_LABELS)
                .unwrap_or_else(|| DEFAULT_REVISION.to_string()),
            namespace: pod.namespace.clone(),
            cluster: cluster.to_string(),
            name,
        }
    }
}

/// The label set every TCP metric carries, in ztunnel's order (checked against a running
/// ztunnel: the same 27 names in the same order).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// `source` or `destination`.
    pub reporter: Reporter,
    /// The client's workload name.
    pub source_workload: String,
    /// The client's canonical service.
    pub source_canonical_service: String,
    /// The client's canonical revision.
    pub source_canonical_revision: String,
    /// The client's namespace.
    pub source_workload_namespace: String,
    /// The client's SPIFFE identity, when mutual TLS proved it.
    pub source_principal: String,
    /// The client's app (its canonical service, as ztunnel reports it).
    pub source_app: String,
    /// The client's version (its canonical revision).
    pub source_version: String,
    /// The client's cluster.
    pub source_cluster: String,
    /// The Service's host name, `name.namespace.svc.cluster.local`.
    pub destination_service: String,
    /// The Service's namespace.
    pub destination_service_namespace: String,
    /// The Service's name.
    pub destination_service_name: String,
    /// The server's workload name.
    pub destination_workload: String,
    /// The server's canonical service.
    pub destination_canonical_service: String,
    /// The server's canonical revision.
    pub destination_canonical_revision: String,
    /// The server's namespace.
    pub destination_workload_namespace: String,
    /// The server's SPIFFE identity.
    pub destination_principal: String,
    /// The server's app (canonical service).
    pub destination_app: String,
    /// The server's version (canonical revision).
    pub destination_version: String,
    /// The server's cluster.
    pub destination_cluster: String,
    /// Always `tcp`: ambit does not parse HTTP.
    pub request_protocol: &'static str,
    /// `-` while open and for a clean close; the failure otherwise.
    pub response_flags: ResponseFlags,
    /// `mutual_tls` for HBONE, `unknown` for plain TCP.
    pub connection_security_policy: SecurityPolicy,
    /// The client's region. ztunnel adds the four locality labels whenever it knows either
    /// end's workload (always, for the connections ambit reports); ambit does not know node
    /// topology, so they are `unknown`, as in ztunnel for workloads without locality.
    pub source_region: &'static str,
    /// The client's zone.
    pub source_zone: &'static str,
    /// The server's region.
    pub destination_region: &'static str,
    /// The server's zone.
    pub destination_zone: &'static str,
}

impl TcpLabels {
    /// Labels of a connection nothing is known about yet: every workload label `unknown`.
    pub fn new(reporter: Reporter, security: SecurityPolicy) -> TcpLabels {
        let u = || UNKNOWN.to_string();
        TcpLabels {
            reporter,
            source_workload: u(),
            source_canonical_service: u(),
            source_canonical_revision: u(),
            source_workload_namespace: u(),
            source_principal: u(),
            source_app: u(),
            source_version: u(),
            source_cluster: u(),
            destination_service: u(),
            destination_service_namespace: u(),
            destination_service_name: u(),
            destination_workload: u(),
            destination_canonical_service: u(),
            destination_canonical_revision: u(),
            destination_workload_namespace: u(),
            destination_principal: u(),
            destination_app: u(),
            destination_version: u(),
            destination_cluster: u(),
            request_protocol: "tcp",
            response_flags: ResponseFlags::None,
            connection_security_policy: security,
            source_region: UNKNOWN,
            source_zone: UNKNOWN,
            destination_region: UNKNOWN,
            destination_zone: UNKNOWN,
        }
    }

    /// The client's workload labels (not its principal: only mutual TLS proves that).
    pub fn with_source(mut self, w: &Workload) -> TcpLabels {
        self.source_workload = known(&w.name);
        self.source_canonical_service = known(&w.canonical_service);
        self.source_canonical_revision = known(&w.canonical_revision);
        self.source_workload_namespace = known(&w.namespace);
        self.source_app = known(&w.canonical_service);
        self.source_version = known(&w.canonical_revision);
        self.source_cluster = known(&w.cluster);
        self
    }

    /// The client's identity, as proved by mutual TLS (or, at the source, the identity the
    /// proxy presents for it).
    pub fn with_source_principal(mut self, principal: &str) -> TcpLabels {
        self.source_principal = known(principal);
        self
    }

    /// The server's workload labels and identity.
    pub fn with_destination(mut self, w: &Workload, principal: &str) -> TcpLabels {
        self.destination_workload = known(&w.name);
        self.destination_canonical_service = known(&w.canonical_service);
        self.destination_canonical_revision = known(&w.canonical_revision);
        self.destination_workload_namespace = known(&w.namespace);
        self.destination_principal = known(principal);
        self.destination_app = known(&w.canonical_service);
        self.destination_version = known(&w.canonical_revision);
        self.destination_cluster = known(&w.cluster);
        self
    }

    /// The Service the client addressed (or, at the destination, the one it most likely did).
    pub fn with_destination_service(mut self, svc: &Service) -> TcpLabels {
        self.destination_service = svc.hostname();
        self.destination_service_name = known(&svc.name);
        self.destination_service_namespace = known(&svc.namespace);
        self
    }
}

fn known(value: &str) -> String {
    if value.is_empty() {
        UNKNOWN.to_string()
    } else {
        value.to_string()
    }
}

/// The five TCP metric families, registered under the `istio_` prefix.
#[derive(Debug, Default)]
pub struct TcpMetrics {
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    failed: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
    /// One shared copy of each label set, held by the connections that carry it: a live (or
    /// idle) connection then costs a pointer, not two dozen strings. It holds no more label
    /// sets than the families above, which keep every one they have seen.
    interned: Mutex<HashSet<Arc<TcpLabels>>>,
}

impl TcpMetrics {
    /// The shared copy of `labels`.
    fn intern(&self, labels: TcpLabels) -> Arc<TcpLabels> {
        let mut set = self.interned.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shared) = set.get(&labels) {
            return shared.clone();
        }
        let shared = Arc::new(labels);
        set.insert(shared.clone());
        shared
    }

    /// Registers the families in `registry` (whose prefix is `istio`), with ztunnel's names.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tcp_connections_opened",
            "The total number of TCP connections opened",
            self.opened.clone(),
        );
        registry.register(
            "tcp_connections_closed",
            "The total number of TCP connections closed",
            self.closed.clone(),
        );
        registry.register(
            "tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection",
            self.received.clone(),
        );
        registry.register(
            "tcp_sent_bytes",
            "The size of total bytes sent during response in case of a TCP connection",
            self.sent.clone(),
        );
        registry.register(
            "tcp_connections_failed",
            "The total number of TCP connections that failed to establish",
            self.failed.clone(),
        );
    }
}

/// One connection's metrics, from the moment its destination is known to its end. Created by
/// [`Connection::open`]; dropping it records the close.
pub struct Connection {
    metrics: Arc<TcpMetrics>,
    labels: Arc<TcpLabels>,
    flags: AtomicU8,
    /// Client → server bytes (`istio_tcp_received_bytes_total`), fetched once.
    request_bytes: Counter,
    /// Server → client bytes (`istio_tcp_sent_bytes_total`), fetched once.
    response_bytes: Counter,
}

impl Connection {
    /// Counts the connection as opened under `labels` and fetches its byte counters.
    pub fn open(metrics: &Arc<TcpMetrics>, labels: TcpLabels) -> Connection {
        // Looking a label set up hashes two dozen strings; done here once, never per chunk.
        metrics.opened.get_or_create(&labels).inc();
        Connection {
            request_bytes: metrics.received.get_or_create(&labels).clone(),
            response_bytes: metrics.sent.get_or_create(&labels).clone(),
            metrics: metrics.clone(),
            labels: metrics.intern(labels),
            flags: AtomicU8::new(ResponseFlags::None as u8),
        }
    }

    /// The counter of client → server bytes, to add to as they are copied.
    pub fn request_bytes(&self) -> &Counter {
        &self.request_bytes
    }

    /// The counter of server → client bytes.
    pub fn response_bytes(&self) -> &Counter {
        &self.response_bytes
    }

    /// Records why the connection failed; it is counted as failed when it closes.
    pub fn fail(&self, flags: ResponseFlags) {
        self.flags.store(flags as u8, Ordering::Relaxed);
    }

    /// The labels the connection was opened with.
    pub fn labels(&self) -> &TcpLabels {
        &self.labels
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let stored = self.flags.load(Ordering::Relaxed);
        let flags = ResponseFlags::ALL
            .into_iter()
            .find(|f| *f as u8 == stored)
            .unwrap_or(ResponseFlags::None);
        if flags == self.labels.response_flags {
            // The common case (opened and closed with `-`): no copy of the labels.
            self.metrics.closed.get_or_create(&self.labels).inc();
        } else {
            let mut labels = (*self.labels).clone();
            labels.response_flags = flags;
            self.metrics.closed.get_or_create(&labels).inc();
        }
        if flags != ResponseFlags::None {
            let mut labels = (*self.labels).clone();
            labels.response_flags = flags;
            self.metrics.failed.get_or_create(&labels).inc();
        }
    }
}

/// Byte counters are what the copy loops add to, chunk by chunk.
impl crate::copy::Tally for Counter {
    fn add(&self, n: u64) {
        self.inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::Tally;
    use std::collections::BTreeMap;

    fn pod(labels: &[(&str, &str)], workload: Option<&str>) -> Pod {
        Pod {
            name: "web-7d9f8-abcde".into(),
            namespace: "shop".into(),
            workload: workload.map(String::from),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ..Pod::default()
        }
    }

    #[test]
    fn names_follow_istios_label_precedence() {
        let bare = Workload::of(&pod(&[], None), "Kubernetes");
        assert_eq!(bare.name, "web-7d9f8-abcde");
        assert_eq!(bare.canonical_service, "web-7d9f8-abcde");
        assert_eq!(bare.canonical_revision, "latest");
        let w = Workload::of(
            &pod(
                &[
                    ("app", "a"),
                    ("app.kubernetes.io/name", "b"),
                    ("version", "v1"),
                ],
                Some("web"),
            ),
            "east",
        );
        assert_eq!(
            (w.name.as_str(), w.canonical_service.as_str()),
            ("web", "b")
        );
        assert_eq!(
            (w.canonical_revision.as_str(), w.cluster.as_str()),
            ("v1", "east")
        );
        let w = Workload::of(
            &pod(
                &[
                    ("app", "a"),
                    ("service.istio.io/canonical-name", "c"),
                    ("service.istio.io/canonical-revision", "r"),
                    ("service.istio.io/workload-name", "wl"),
                ],
                Some("web"),
            ),
            "east",
        );
        assert_eq!(
            (w.name, w.canonical_service, w.canonical_revision),
            ("wl".into(), "c".into(), "r".into())
        );
    }

    #[test]
    fn a_connection_counts_open_bytes_as_they_move_and_close_with_its_flag() {
        let m = Arc::new(TcpMetrics::default());
        let mut registry = Registry::with_prefix("istio");
        m.register(&mut registry);
        let scrape = || {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
            out
        };
        let labels = TcpLabels::new(Reporter::Source, SecurityPolicy::MutualTls)
            .with_source(&Workload::of(&pod(&[("app", "web")], None), "Kubernetes"));
        let conn = Connection::open(&m, labels);
        conn.request_bytes().add(5);
        conn.response_bytes().add(7);
        let live = scrape();
        assert!(live.contains("istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"web-7d9f8-abcde\",source_canonical_service=\"web\""), "{live}");
        assert!(
            live.contains(
                "connection_security_policy=\"mutual_tls\",source_region=\"unknown\",\
                 source_zone=\"unknown\",destination_region=\"unknown\",\
                 destination_zone=\"unknown\"} 1"
            ),
            "{live}"
        );
        let line = |text: &str, name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
        };
        assert_eq!(
            line(&live, "istio_tcp_received_bytes_total").as_deref(),
            Some("5")
        );
        assert_eq!(
            line(&live, "istio_tcp_sent_bytes_total").as_deref(),
            Some("7")
        );
        assert_eq!(line(&live, "istio_tcp_connections_closed_total"), None);
        conn.fail(ResponseFlags::Deny);
        drop(conn);
        let done = scrape();
        let closed = done
            .lines()
            .find(|l| l.starts_with("istio_tcp_connections_closed_total"))
            .unwrap();
        assert!(
            closed.contains("response_flags=\"DENY\"") && closed.ends_with(" 1"),
            "{done}"
        );
        let failed = done
            .lines()
            .find(|l| l.starts_with("istio_tcp_connections_failed_total"))
            .unwrap();
        assert!(failed.contains("source_principal=\"unknown\""), "{failed}");
        // A clean close counts as closed only.
        drop(Connection::open(
            &m,
            TcpLabels::new(Reporter::Destination, SecurityPolicy::Unknown),
        ));
        let failures = scrape()
            .lines()
            .filter(|l| l.starts_with("istio_tcp_connections_failed_total"))
            .count();
        assert_eq!(failures, 1);
    }
}
