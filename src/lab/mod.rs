//! The lab: a small Kubernetes-like cluster built from network namespaces on one machine, for
//! integration tests, the demo, the benchmarks and `ambit lab up|down|list|exec`.
//!
//! A fabric namespace holds a bridge; each node is a namespace joined to the fabric by a veth;
//! each pod is a namespace joined to its node by a veth (the address plan is in `state.rs`).
//! The lab writes the workload file the daemons read and can run one daemon per node, inside
//! the node's namespace. Everything lives under `/run/ambit/lab/<name>/`.
//!
//! A [`Lab`] returned by [`Lab::up`] owns what it created and removes it when dropped, also
//! when a test panics. [`Lab::load`] reopens an existing lab without taking ownership.
//!
//! This file holds the spec, the [`Lab`] value and its lifecycle (up, load, detach); its errors
//! are in `error.rs`, and the accessors for its nodes, pods, namespaces and workload file in
//! `access.rs`.

mod access;
// Kubernetes mode: the stand-in API server and publishing to it.
pub mod apiserver;
pub mod ca;
mod cleanup;
pub mod cli;
mod daemon;
mod error;
pub mod kubelet;
mod state;
mod topology;
pub mod traffic;
pub mod ztunnel;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

pub use cleanup::down_by_name;
pub use daemon::{HttpResponse, Retiring, ADMIN_PORT, READY_PORT, STOP_GRACE};
pub use error::LabError;
pub use state::{
    LabNode, LabPod, LabState, AMBIENT_LABEL, FABRIC_IPV4, FABRIC_IPV6, POD_GATEWAY_V4,
    POD_GATEWAY_V6,
};

use daemon::Daemon;

/// Directory holding one subdirectory per lab.
pub const LAB_ROOT: &str = "/run/ambit/lab";
/// Longest lab name: keeps `<lab>-n9-p60` and friends short.
pub const MAX_NAME_LEN: usize = 20;
/// Most nodes a lab can have (one digit in names and address groups).
pub const MAX_NODES: usize = 9;
/// Subdirectory of the lab dir holding the cluster's CA (Istio plug-in layout).
pub const CA_DIR: &str = "ca";
/// Most pods per node.
pub const MAX_PODS_PER_NODE: usize = 60;

/// What [`Lab::up`] builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabSpec {
    /// Lab name; a unique short name (`ab` + 6 hex digits) is generated when `None`.
    pub name: Option<String>,
    /// Number of nodes (1..=9).
    pub nodes: usize,
    /// Pods on each node (1..=60).
    pub pods_per_node: usize,
    /// Whether the pods' namespace carries `istio.io/dataplane-mode=ambient`.
    pub namespace_ambient: bool,
    /// Kubernetes mode: the lab gets a kubeconfig for a stand-in API server
    /// ([`Lab::start_apiserver`]), its workloads are published there too, and daemons watch
    /// it (`--kube`) instead of reading the workload file.
    pub kube: bool,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            name: None,
            nodes: 2,
            pods_per_node: 2,
            namespace_ambient: true,
            kube: false,
        }
    }
}

impl LabSpec {
    /// Checks sizes and the name, with a message saying what is allowed.
    pub fn validate(&self) -> Result<(), LabError> {
        if !(1..=MAX_NODES).contains(&self.nodes) {
            return Err(LabError::Spec(format!(
                "nodes = {} (must be 1..={MAX_NODES})",
                self.nodes
            )));
        }
        if !(1..=MAX_PODS_PER_NODE).contains(&self.pods_per_node) {
            return Err(LabError::Spec(format!(
                "pods_per_node = {} (must be 1..={MAX_PODS_PER_NODE})",
                self.pods_per_node
            )));
        }
        match &self.name {
            Some(name) => validate_name(name),
            None => Ok(()),
        }
    }
}

/// Checks a lab name: 1..=20 characters, lowercase ASCII letters and digits, starting with a
/// letter. No `-`, so a lab's namespace names can never look like another lab's.
pub fn validate_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        return Ok(());
    }
    Err(LabError::Spec(format!(
        "lab name {name:?} (must be 1..={MAX_NAME_LEN} lowercase letters and digits, starting with a letter)"
    )))
}

/// Names of the labs under [`LAB_ROOT`], sorted.
pub fn list() -> Result<Vec<String>, LabError> {
    let dir = match std::fs::read_dir(LAB_ROOT) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LabError::Io {
                context: format!("cannot list {LAB_ROOT}"),
                source,
            })
        }
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| validate_name(n).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

/// A running lab. See the module documentation.
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    daemons: Mutex<BTreeMap<String, Daemon>>,
    /// Serialises read-modify-write of the workload file within this process.
    workloads_lock: Mutex<()>,
    /// The stand-in API server process (Kubernetes mode).
    apiserver: Mutex<Option<apiserver::ApiServerProcess>>,
    /// Kubelet-like placeholder processes in pod cgroups (Kubernetes mode).
    kubelet: Mutex<Option<kubelet::KubeletPods>>,
    /// Whether dropping this value removes the lab.
    owned: bool,
}

/// Locks `m`, ignoring poisoning: a panicking test must not keep cleanup from running.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lab {
    /// Builds the lab described by `spec` and writes its `lab.json` and workload file. If any
    /// step fails, everything created so far is removed before the error is returned.
    pub fn up(spec: &LabSpec) -> Result<Lab, LabError> {
        spec.validate()?;
        std::fs::create_dir_all(LAB_ROOT).map_err(|source| LabError::Io {
            context: format!("cannot create {LAB_ROOT}"),
            source,
        })?;
        let state = cleanup::claim(spec)?;
        // From here on, Drop removes whatever exists of the lab.
        let lab = Lab {
            state,
            daemons: Mutex::new(BTreeMap::new()),
            workloads_lock: Mutex::new(()),
            apiserver: Mutex::new(None),
            kubelet: Mutex::new(None),
            owned: true,
        };
        lab.save(&lock(&lab.daemons))?;
        topology::build(&lab.state)?;
        // One CA per lab cluster, shared by every node's daemon.
        crate::identity::ca::init(&lab.state.dir.join(CA_DIR))
            .map_err(|e| LabError::Ca(e.to_string()))?;
        state::write_snapshot(&lab.state.workloads_path(), &lab.state.initial_snapshot())?;
        if spec.kube {
            lab.write_kubeconfig()?;
            // Pods from the API carry no netns path: make each pod look like kubelet's (a
            // process in a cgroup named after the pod UID) so daemons find it by cgroup scan.
            // Without cgroup access the daemons still find pods among the pinned namespaces.
            match kubelet::start_pod_processes(&lab) {
                Ok(pods) => *lock(&lab.kubelet) = Some(pods),
                Err(e) => {
                    tracing::warn!(error = %e, "no kubelet-like pod processes; netns discovery falls back to pinned namespaces")
                }
            }
        }
        Ok(lab)
    }

    /// Reopens lab `name` from its `lab.json`. The returned value does not own the lab:
    /// dropping it leaves the lab running; use [`Lab::down`] to remove it.
    pub fn load(name: &str) -> Result<Lab, LabError> {
        validate_name(name)?;
        let dir = Path::new(LAB_ROOT).join(name);
        if !dir.join("lab.json").exists() {
            return Err(LabError::NotFound {
                what: "lab",
                name: name.to_string(),
                known: known_names(list().unwrap_or_default().iter()),
            });
        }
        let state = LabState::read(&dir)?;
        let daemons = state
            .daemons
            .iter()
            .map(|(node, pid)| {
                (
                    node.clone(),
                    Daemon {
                        pid: *pid,
                        child: None,
                    },
                )
            })
            .collect();
        let apiserver = state.apiserver.map(apiserver::ApiServerProcess::recorded);
        Ok(Lab {
            state,
            daemons: Mutex::new(daemons),
            workloads_lock: Mutex::new(()),
            apiserver: Mutex::new(apiserver),
            kubelet: Mutex::new(None),
            owned: false,
        })
    }

    /// Gives up ownership: the lab (and its daemons) keep running after this value is
    /// dropped, e.g. for `ambit lab up`. Returns the lab name.
    pub fn detach(mut self) -> String {
        self.owned = false;
        if let Some(process) = lock(&self.apiserver).as_mut() {
            process.detach();
        }
        if let Some(pods) = lock(&self.kubelet).take() {
            pods.detach();
        }
        self.state.name.clone()
    }

    /// Writes `lab.json` with the current daemon pids.
    fn save(&self, daemons: &BTreeMap<String, Daemon>) -> Result<(), LabError> {
        let mut state = self.state.clone();
        state.daemons = daemons.iter().map(|(n, d)| (n.clone(), d.pid)).collect();
        state.apiserver = self.apiserver_pid();
        state.save()
    }
}

/// `" (known: a, b)"` for not-found messages.
fn known_names<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(" (known: {})", names.join(", "))
    }
}

/// `len` bytes from the kernel's CSPRNG as hex digits (tokens, container ids).
pub(crate) fn random_hex(len: usize) -> Result<String, LabError> {
    use std::io::Read;
    let mut bytes = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| LabError::Io {
            context: "cannot read /dev/urandom".into(),
            source,
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
