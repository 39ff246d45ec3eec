//! What the daemon knows about pods and namespaces, independent of where it learned it.
//!
//! A source (the local file today, Kubernetes later) produces [`Snapshot`]s: complete, immutable
//! views of the cluster. Everything downstream (enrollment, routing decisions) reads snapshots and
//! never a source directly.

pub mod enroll;
pub mod file;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A pod as the mesh sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pod {
    /// Kubernetes UID; the key for everything per-pod.
    pub uid: String,
    /// Pod name.
    pub name: String,
    /// Namespace the pod lives in.
    pub namespace: String,
    /// Service account; with the namespace it forms the pod's SPIFFE identity.
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// Node the pod is scheduled on.
    pub node: String,
    /// The workload the pod belongs to (a Deployment, StatefulSet, Job...), as Istio derives
    /// it from the controller owner reference; `None` for a bare pod, which is its own workload.
    /// Names the pod in metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Pod IPs (IPv4 and/or IPv6).
    #[serde(default, deserialize_with = "deserialize_ips")]
    pub ips: Vec<IpAddr>,
    /// Pod labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Pod annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Path of the pod's network namespace, when the source knows it.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Pods on the host network are never captured.
    #[serde(default)]
    pub host_network: bool,
}

/// Parses `ips` so that a bad entry is named in the error (serde's own message omits it).
fn deserialize_ips<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| {
            s.trim().parse().map_err(|_| {
                serde::de::Error::custom(format!(
                    "ips: {s:?} is not an IP address (expected e.g. 10.0.0.2 or fd00::2)"
                ))
            })
        })
        .collect()
}

fn default_service_account() -> String {
    "default".to_string()
}

impl Pod {
    /// `namespace/name`, the form used in logs and errors.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A Kubernetes namespace (only what enrollment needs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Namespace {
    /// Namespace name.
    pub name: String,
    /// Namespace labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A complete view of the cluster's pods and namespaces at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Snapshot {
    /// Namespaces with their labels.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// All pods (of every node).
    #[serde(default)]
    pub pods: Vec<Pod>,
    /// Services with their endpoints.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Istio `security.istio.io` objects (AuthorizationPolicy, PeerAuthentication) exactly as
    /// `kubectl get -o json` prints them. Kept raw: [`crate::policy::PolicySnapshot::build`]
    /// reads them, so a malformed one is rejected there on its own and never hides a pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub istio: Vec<serde_json::Value>,
    /// Pod entries the source could not understand; reported, never captured.
    #[serde(skip)]
    pub rejected: Vec<RejectedPod>,
}

/// A Service: virtual IPs and ports in front of a set of endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// ClusterIPs (IPv4 and/or IPv6); empty for headless services.
    #[serde(default)]
    pub cluster_ips: Vec<IpAddr>,
    /// Service ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Endpoints (from the Service's EndpointSlices).
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// One port of a Service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port name; matches the endpoint port of the same name (empty for a single unnamed port).
    #[serde(default)]
    pub name: String,
    /// The port clients connect to on the ClusterIP.
    pub port: u16,
}

/// One endpoint of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// Endpoint address (usually a pod IP).
    pub ip: IpAddr,
    /// Whether the endpoint is ready to receive traffic.
    #[serde(default = "default_true")]
    pub ready: bool,
    /// Target ports by service-port name.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
}

fn default_true() -> bool {
    true
}

impl Service {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The Service's DNS name, `<name>.<namespace>.svc.<domain>` (as Istio names services).
    pub fn hostname(&self) -> String {
        format!(
            "{}.{}.svc.{}",
            self.name,
            self.namespace,
            crate::config::CLUSTER_DOMAIN
        )
    }

    /// Ready endpoints for service port `port`, as socket addresses of the same IP family as
    /// `family_of` (a ClusterIP of one family is served by endpoints of that family).
    pub fn ready_targets(&self, port: u16, family_of: IpAddr) -> Vec<SocketAddr> {
        let Some(sp) = self.ports.iter().find(|p| p.port == port) else {
            return Vec::new();
        };
        self.endpoints
            .iter()
            .filter(|e| e.ready && e.ip.is_ipv4() == family_of.is_ipv4())
            .filter_map(|e| e.ports.get(&sp.name).map(|p| SocketAddr::new(e.ip, *p)))
            .collect()
    }
}

/// A pod entry the source rejected, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RejectedPod {
    /// `namespace/name` as far as it could be read.
    pub pod: String,
    /// What was wrong with the entry.
    pub error: String,
}

/// Best-effort `namespace/name` of an entry that failed to parse, for error messages.
pub(crate) fn describe_raw_pod(value: &serde_json::Value, index: usize) -> String {
    let field = |k: &str| value.get(k).and_then(|v| v.as_str());
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        _ => format!("pods[{index}]"),
    }
}

impl Snapshot {
    /// Labels of namespace `name` (empty when the namespace is unknown).
    pub fn namespace_labels(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces
            .iter()
            .find(|ns| ns.name == name)
            .map(|ns| &ns.labels)
    }
}

/// A snapshot indexed for the data path: which pod owns an IP and whether it is in the mesh,
/// and which Service owns a virtual IP.
#[derive(Debug, Default)]
pub struct Directory {
    by_ip: HashMap<IpAddr, (Arc<Pod>, bool)>,
    by_vip: HashMap<IpAddr, Arc<Service>>,
    by_endpoint: HashMap<IpAddr, Vec<Arc<Service>>>,
}

impl Directory {
    /// Indexes `snapshot`, deciding enrollment for every pod of every node.
    pub fn new(snapshot: &Snapshot, daemon: &enroll::DaemonIdentity) -> Self {
        let mut by_ip = HashMap::new();
        for pod in &snapshot.pods {
            let in_mesh = enroll::decide(pod, snapshot, daemon).speaks_hbone();
            let pod = Arc::new(pod.clone());
            for ip in &pod.ips {
                by_ip.insert(*ip, (pod.clone(), in_mesh));
            }
        }
        let mut by_vip = HashMap::new();
        let mut by_endpoint: HashMap<IpAddr, Vec<Arc<Service>>> = HashMap::new();
        for svc in &snapshot.services {
            let svc = Arc::new(svc.clone());
            for ip in &svc.cluster_ips {
                by_vip.insert(*ip, svc.clone());
            }
            for e in &svc.endpoints {
                let of_ip = by_endpoint.entry(e.ip).or_default();
                if !of_ip.iter().any(|s| Arc::ptr_eq(s, &svc)) {
                    of_ip.push(svc.clone());
                }
            }
        }
        Directory {
            by_ip,
            by_vip,
            by_endpoint,
        }
    }

    /// The Service whose ClusterIP is `ip`.
    pub fn service(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.by_vip.get(&ip)
    }

    /// The ready endpoint of `svc` for `vip:port` chosen by `turn`, a counter the caller
    /// advances per connection (round robin), or `None` when none is ready.
    pub fn pick_endpoint(&self, svc: &Service, vip: SocketAddr, turn: usize) -> Option<SocketAddr> {
        let targets = svc.ready_targets(vip.port(), vip.ip());
        (!targets.is_empty()).then(|| targets[turn % targets.len()])
    }

    /// Every Service with a ClusterIP, by namespace and name.
    pub fn services(&self) -> Vec<Arc<Service>> {
        let mut all: Vec<Arc<Service>> = self.by_vip.values().cloned().collect();
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        all.dedup_by(|a, b| Arc::ptr_eq(a, b));
        all
    }

    /// The first Service (in snapshot order) that has `endpoint` among its endpoints with
    /// `endpoint`'s port as a target port: the Service a connection arriving there most likely
    /// came through (a server cannot know which one the client addressed).
    pub fn service_behind(&self, endpoint: SocketAddr) -> Option<&Arc<Service>> {
        self.by_endpoint.get(&endpoint.ip())?.iter().find(|svc| {
            svc.endpoints
                .iter()
                .any(|e| e.ip == endpoint.ip() && e.ports.values().any(|p| *p == endpoint.port()))
        })
    }

    /// The pod that owns `ip`, and whether it is enrolled in the mesh.
    pub fn lookup(&self, ip: IpAddr) -> Option<(&Arc<Pod>, bool)> {
        self.by_ip.get(&ip).map(|(pod, in_mesh)| (pod, *in_mesh))
    }
}
