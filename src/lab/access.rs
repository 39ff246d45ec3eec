//! Reading a running [`Lab`]: its name and directory, nodes and pods by name, their network
//! namespaces and the fabric's addresses; and reading and writing its workload file.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use super::{known_names, lock, state, Lab, LabError, LabNode, LabPod, LabState};
use crate::netns::NetNs;
use crate::workload::Snapshot;

impl Lab {
    /// Lab name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Lab directory (`/run/ambit/lab/<name>`).
    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    /// The lab's full description, as in `lab.json` (daemon pids as of loading).
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// Kubernetes namespace of the pods.
    pub fn namespace(&self) -> &str {
        &self.state.namespace
    }

    /// Nodes in order.
    pub fn nodes(&self) -> &[LabNode] {
        &self.state.nodes
    }

    /// Node `name` (`n1`, ...).
    pub fn node(&self, name: &str) -> Result<&LabNode, LabError> {
        let nodes = &self.state.nodes;
        nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::NotFound {
                what: "node",
                name: name.to_string(),
                known: known_names(nodes.iter().map(|n| &n.name)),
            })
    }

    /// Pods in order, node by node.
    pub fn pods(&self) -> &[LabPod] {
        &self.state.pods
    }

    /// Pods on node `node`.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a LabPod> + 'a {
        self.state.pods.iter().filter(move |p| p.node == node)
    }

    /// Pod `name` (`n1-p1`, ...).
    pub fn pod(&self, name: &str) -> Result<&LabPod, LabError> {
        let pods = &self.state.pods;
        pods.iter()
            .find(|p| p.name == name)
            .ok_or_else(|| LabError::NotFound {
                what: "pod",
                name: name.to_string(),
                known: known_names(pods.iter().map(|p| &p.name)),
            })
    }

    /// Opens pod `name`'s network namespace.
    pub fn pod_netns(&self, name: &str) -> Result<NetNs, LabError> {
        Ok(NetNs::open(&self.pod(name)?.netns_path)?)
    }

    /// Opens node `node`'s network namespace.
    pub fn node_netns(&self, node: &str) -> Result<NetNs, LabError> {
        Ok(NetNs::open(&self.node(node)?.netns_path)?)
    }

    /// Opens the fabric network namespace.
    pub fn fabric_netns(&self) -> Result<NetNs, LabError> {
        Ok(NetNs::open(state::netns_path(&self.state.fabric_netns))?)
    }

    /// Network namespace name for `target`: a pod name, a node name, `fab`, or a namespace
    /// name of this lab (for `ambit lab exec`).
    pub fn netns_name_of(&self, target: &str) -> Result<&str, LabError> {
        let s = &self.state;
        if target == "fab" || target == s.fabric_netns {
            return Ok(&s.fabric_netns);
        }
        if let Some(n) = s
            .nodes
            .iter()
            .find(|n| n.name == target || n.netns_name == target)
        {
            return Ok(&n.netns_name);
        }
        if let Some(p) = s
            .pods
            .iter()
            .find(|p| p.name == target || p.netns_name == target)
        {
            return Ok(&p.netns_name);
        }
        let names = s.nodes.iter().map(|n| &n.name);
        Err(LabError::NotFound {
            what: "node or pod",
            name: target.to_string(),
            known: known_names(names.chain(s.pods.iter().map(|p| &p.name))),
        })
    }

    /// Fabric bridge IPv4 address: reachable from every pod, not part of the mesh.
    pub fn fabric_ipv4(&self) -> Ipv4Addr {
        self.state.fabric_ipv4
    }

    /// Fabric bridge IPv6 address.
    pub fn fabric_ipv6(&self) -> Ipv6Addr {
        self.state.fabric_ipv6
    }

    /// Path of the workload file the daemons read.
    pub fn workloads_path(&self) -> PathBuf {
        self.state.workloads_path()
    }

    /// Reads the current workload file.
    pub fn workloads(&self) -> Result<Snapshot, LabError> {
        state::read_snapshot(&self.workloads_path())
    }

    /// Replaces the workload file (atomically). In Kubernetes mode, also makes the stand-in
    /// API server's objects match it (when the stand-in is running).
    pub fn write_workloads(&self, snapshot: &Snapshot) -> Result<(), LabError> {
        let _guard = lock(&self.workloads_lock);
        state::write_snapshot(&self.workloads_path(), snapshot)?;
        self.publish_if_kube(snapshot)
    }

    /// Reads the workload file, lets `change` edit it, writes it back atomically and returns
    /// what was written. In Kubernetes mode, also publishes it (see [`Lab::write_workloads`]).
    pub fn update_workloads(
        &self,
        change: impl FnOnce(&mut Snapshot),
    ) -> Result<Snapshot, LabError> {
        let _guard = lock(&self.workloads_lock);
        let mut snapshot = self.workloads()?;
        change(&mut snapshot);
        state::write_snapshot(&self.workloads_path(), &snapshot)?;
        self.publish_if_kube(&snapshot)?;
        Ok(snapshot)
    }
}
