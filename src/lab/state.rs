//! What a lab consists of (`lab.json`) and the workload file the daemons read.
//!
//! The address plan lives here so that the topology code, the workload file and the tests all
//! derive every name and address from one place.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::{LabError, LabSpec, LAB_ROOT};
use crate::workload::{Namespace, Pod, Snapshot};

/// The fabric bridge's IPv4 address (also a non-mesh address every pod can reach).
pub const FABRIC_IPV4: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
/// The fabric bridge's IPv6 address.
pub const FABRIC_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, 1);
/// Gateway every pod routes through (IPv4): configured on each node-side pod veth.
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Gateway every pod routes through (IPv6, link-local).
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Label that puts a namespace in the ambient mesh.
pub const AMBIENT_LABEL: (&str, &str) = ("istio.io/dataplane-mode", "ambient");

/// One node of the lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabNode {
    /// Node name as the daemon and the workload file know it (`n1`, `n2`, ...).
    pub name: String,
    /// 1-based node number; it selects the node's addresses and pod ranges.
    pub index: u8,
    /// Name of the node's network namespace (`<lab>-n<N>`).
    pub netns_name: String,
    /// `/var/run/netns/<netns_name>`.
    pub netns_path: PathBuf,
    /// Fabric IPv4 address (on the node's `eth0`).
    pub ipv4: Ipv4Addr,
    /// Fabric IPv6 address (on the node's `eth0`).
    pub ipv6: Ipv6Addr,
    /// IPv4 range the node's pods get addresses from.
    pub pod_cidr_v4: String,
    /// IPv6 range the node's pods get addresses from.
    pub pod_cidr_v6: String,
}

/// One pod of the lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPod {
    /// Pod name (`n<N>-p<M>`).
    pub name: String,
    /// Kubernetes namespace of the pod.
    pub namespace: String,
    /// Service account (`sa-<name>`).
    pub service_account: String,
    /// Name of the node the pod runs on.
    pub node: String,
    /// Name of the pod's network namespace (`<lab>-n<N>-p<M>`).
    pub netns_name: String,
    /// `/var/run/netns/<netns_name>`.
    pub netns_path: PathBuf,
    /// Name of the node-side end of the pod's veth (`vp<M>`, inside the node namespace).
    pub node_ifname: String,
    /// Pod IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Pod IPv6 address.
    pub ipv6: Ipv6Addr,
    /// Pod UID (random, UUID-shaped).
    pub uid: String,
}

/// Everything `lab.json` records: enough to find, use and remove a lab from another process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    /// Lab name; prefix of every namespace name.
    pub name: String,
    /// Lab directory (`/run/ambit/lab/<name>`).
    pub dir: PathBuf,
    /// Kubernetes namespace all pods live in.
    pub namespace: String,
    /// Whether that namespace carries the ambient label in the initial workload file.
    pub namespace_ambient: bool,
    /// Name of the fabric network namespace (`<lab>-fab`).
    pub fabric_netns: String,
    /// Fabric bridge IPv4 address.
    pub fabric_ipv4: Ipv4Addr,
    /// Fabric bridge IPv6 address.
    pub fabric_ipv6: Ipv6Addr,
    /// Nodes in order.
    pub nodes: Vec<LabNode>,
    /// Pods in order (node by node).
    pub pods: Vec<LabPod>,
    /// Node name -> pid of the daemon started there.
    #[serde(default)]
    pub daemons: BTreeMap<String, u32>,
    /// Kubernetes mode (daemons watch the stand-in API server).
    #[serde(default)]
    pub kube: bool,
    /// Pid of the stand-in API server, when one was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiserver: Option<u32>,
}

/// `n` written in decimal, read as a hex IPv6 group, so `fd00:31::11` mirrors `172.31.0.11`.
fn v6_group(n: u32) -> u16 {
    u16::from_str_radix(&n.to_string(), 16).unwrap_or(0xffff)
}

/// Path of a named network namespace as `ip netns` creates it.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/var/run/netns").join(name)
}

impl LabState {
    /// Lays out names and addresses for `spec` (already validated) under lab `name`.
    pub(crate) fn plan(name: &str, spec: &LabSpec) -> io::Result<Self> {
        let namespace = "lab".to_string();
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        for n in 1..=spec.nodes as u8 {
            let node_name = format!("n{n}");
            let netns_name = format!("{name}-n{n}");
            nodes.push(LabNode {
                ipv4: Ipv4Addr::new(172, 31, 0, 10 + n),
                ipv6: Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, v6_group(10 + n as u32)),
                pod_cidr_v4: format!("10.240.{n}.0/24"),
                pod_cidr_v6: format!("fd00:240:{n}::/64"),
                netns_path: netns_path(&netns_name),
                netns_name,
                name: node_name.clone(),
                index: n,
            });
            for m in 1..=spec.pods_per_node as u8 {
                let pod_name = format!("n{n}-p{m}");
                let netns_name = format!("{name}-n{n}-p{m}");
                pods.push(LabPod {
                    service_account: format!("sa-{pod_name}"),
                    namespace: namespace.clone(),
                    node: node_name.clone(),
                    netns_path: netns_path(&netns_name),
                    netns_name,
                    node_ifname: format!("vp{m}"),
                    ipv4: Ipv4Addr::new(10, 240, n, m + 1),
                    ipv6: Ipv6Addr::new(
                        0xfd00,
                        0x240,
                        v6_group(n as u32),
                        0,
                        0,
                        0,
                        0,
                        v6_group(m as u32 + 1),
                    ),
                    uid: random_uuid()?,
                    name: pod_name,
                });
            }
        }
        Ok(LabState {
            name: name.to_string(),
            dir: Path::new(LAB_ROOT).join(name),
            namespace,
            namespace_ambient: spec.namespace_ambient,
            fabric_netns: format!("{name}-fab"),
            fabric_ipv4: FABRIC_IPV4,
            fabric_ipv6: FABRIC_IPV6,
            nodes,
            pods,
            daemons: BTreeMap::new(),
            kube: spec.kube,
            apiserver: None,
        })
    }

    /// Every network namespace of the lab: fabric, nodes, pods.
    pub fn netns_names(&self) -> Vec<String> {
        let mut names = vec![self.fabric_netns.clone()];
        names.extend(self.nodes.iter().map(|n| n.netns_name.clone()));
        names.extend(self.pods.iter().map(|p| p.netns_name.clone()));
        names
    }

    /// The workload file as the lab first writes it.
    pub fn initial_snapshot(&self) -> Snapshot {
        let mut labels = BTreeMap::new();
        if self.namespace_ambient {
            labels.insert(AMBIENT_LABEL.0.to_string(), AMBIENT_LABEL.1.to_string());
        }
        Snapshot {
            namespaces: vec![Namespace {
                name: self.namespace.clone(),
                labels,
            }],
            pods: self.pods.iter().map(LabPod::to_pod).collect(),
            ..Snapshot::default()
        }
    }

    /// Path of `lab.json`.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("lab.json")
    }

    /// Path of the workload file.
    pub fn workloads_path(&self) -> PathBuf {
        self.dir.join("workloads.json")
    }

    /// Writes `lab.json` atomically.
    pub(crate) fn save(&self) -> Result<(), LabError> {
        let path = self.state_path();
        let json = serde_json::to_vec_pretty(self).map_err(|source| LabError::Json {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &json)
    }

    /// Reads `lab.json` from `dir`.
    pub(crate) fn read(dir: &Path) -> Result<Self, LabError> {
        let path = dir.join("lab.json");
        let bytes = std::fs::read(&path).map_err(|source| LabError::Io {
            context: format!("cannot read {}", path.display()),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| LabError::Json { path, source })
    }
}

impl LabPod {
    /// The pod's entry in the workload file.
    pub fn to_pod(&self) -> Pod {
        Pod {
            uid: self.uid.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            node: self.node.clone(),
            workload: None,
            ips: vec![IpAddr::V4(self.ipv4), IpAddr::V6(self.ipv6)],
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            netns: Some(self.netns_path.clone()),
            host_network: false,
        }
    }
}

/// Reads a workload file.
pub(crate) fn read_snapshot(path: &Path) -> Result<Snapshot, LabError> {
    let bytes = std::fs::read(path).map_err(|source| LabError::Io {
        context: format!("cannot read {}", path.display()),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| LabError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a workload file atomically.
pub(crate) fn write_snapshot(path: &Path, snapshot: &Snapshot) -> Result<(), LabError> {
    let json = serde_json::to_vec_pretty(snapshot).map_err(|source| LabError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &json)
}

/// Writes `bytes` to a temporary file next to `path` and renames it over `path`, so a reader
/// polling the file (the daemon) never sees a half-written document.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LabError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io_err = |context: String| move |source| LabError::Io { context, source };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(
        ".{}.tmp.{}.{}",
        file_name.unwrap_or_default(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)
            .map_err(io_err(format!("cannot create {}", tmp.display())))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(io_err(format!("cannot write {}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(io_err(format!(
            "cannot rename {} to {}",
            tmp.display(),
            path.display()
        )))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `len` random bytes from the kernel.
pub(crate) fn random_bytes(len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf)?;
    Ok(buf)
}

/// A random version-4 UUID in its usual text form.
fn random_uuid() -> io::Result<String> {
    let mut b = random_bytes(16)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}
