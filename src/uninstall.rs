//! `ambit uninstall`: leaving the mesh for good. Releases every pod this node's daemon
//! captured — redirect rules of both backends and the policy route removed inside each pod's
//! network namespace — and clears the capture memory.
//!
//! A stopped daemon deliberately leaves the rules in place, so that its pods fail closed
//! until the next daemon adopts them; once ambit is gone for good that would black-hole
//! them. The pods to release come from the capture memory of `--state-dir` (the namespaces
//! exactly as captured, checked by device and inode) and, with a workload source and
//! `--node`, from every pod that source lists on the node (its namespace found as the daemon
//! finds it, confirmed by the pod IPs). Each namespace is released once, whatever listed it.
//!
//! Running it twice is harmless: a released namespace is reported as already clean. The
//! command refuses while a daemon answers on the admin address, since that daemon would put
//! the rules back at its next pass.

mod report;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Source, UninstallConfig};
use crate::k8s::status::{ObjectKey, REDIRECTION_ANNOTATION};
use crate::netns::{NetNs, NetNsId};
use crate::reconcile::memory::{self, MemoryError, Remembered};
use crate::rules::{self, InstalledSection, RulesError};
use crate::workload::{Pod, Snapshot};

pub use report::{Outcome, PodReport, Removed, Report};

/// How long the check for a running daemon waits for its admin endpoint to accept.
const DAEMON_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the Kubernetes source may take to list this node's pods.
const KUBE_LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why uninstalling could not proceed (per-pod failures are in the [`Report`] instead).
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    /// A daemon still answers on the admin address.
    #[error("something answers on {0} (the admin endpoint of a running ambit daemon?): stop the daemon first (delete the DaemonSet), or it puts the rules back; --force to go on anyway")]
    DaemonRunning(SocketAddr),
    /// The capture memory could not be read.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The workload source could not be read.
    #[error("cannot list the pods of node {node}: {reason}")]
    Source {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// The capture memory could not be rewritten.
    #[error("cannot update the capture memory {path}: {source}")]
    SaveMemory {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A pod to release, from the memory or from the source.
struct Target {
    pod: String,
    /// The namespace, or why there is none.
    netns: Result<NetNs, Outcome>,
    /// The memory entry (by UID) it came from, kept there if releasing fails.
    remembered: Option<(String, Remembered)>,
    /// Its key in the API when its redirection annotation should go.
    annotated: Option<ObjectKey>,
}

/// Runs `ambit uninstall`: releases the pods and prints one line per pod and a summary.
pub fn run(config: UninstallConfig) -> anyhow::Result<()> {
    let report = uninstall(&config)?;
    for pod in &report.pods {
        println!("{pod}");
    }
    println!("{report}");
    anyhow::ensure!(
        report.failures() == 0,
        "{} pod(s) could not be released; run again to retry them",
        report.failures()
    );
    Ok(())
}

/// Releases every pod `config` designates and returns what was done.
pub fn uninstall(config: &UninstallConfig) -> Result<Report, UninstallError> {
    if !config.force && daemon_answers(config.admin_addr) {
        return Err(UninstallError::DaemonRunning(config.admin_addr));
    }
    let own = NetNs::current().ok().map(|ns| ns.id());
    let memory_path = config.state_dir.as_deref().map(memory::path_in);
    let remembered = match &memory_path {
        Some(path) => memory::read(path)?,
        None => BTreeMap::new(),
    };
    let mut targets: Vec<Target> = remembered.into_iter().map(from_memory).collect();
    let mut kube = None;
    if let (Some(source), Some(node)) = (&config.source, &config.node) {
        let (snapshot, session) = list_pods(source, node)?;
        kube = session;
        targets.extend(from_source(config, &snapshot, node, kube.is_some()));
    }

    let mut report = Report::default();
    let mut seen: HashSet<NetNsId> = HashSet::new();
    let mut kept: BTreeMap<String, Remembered> = BTreeMap::new();
    let mut unannotate = Vec::new();
    for target in targets {
        let (netns, outcome) = match target.netns {
            Err(outcome) => (None, outcome),
            // Never the namespace this command runs in (the host's, in the DaemonSet).
            Ok(ns) if Some(ns.id()) == own => (
                Some(ns.path().to_path_buf()),
                Outcome::NotFound("is this command's own namespace; left alone".into()),
            ),
            Ok(ns) if !seen.insert(ns.id()) => continue,
            Ok(ns) => (Some(ns.path().to_path_buf()), release(&ns)),
        };
        match &outcome {
            Outcome::Failed(_) => kept.extend(target.remembered),
            _ => unannotate.extend(target.annotated),
        }
        report.pods.push(PodReport {
            pod: target.pod,
            netns,
            outcome,
        });
    }
    if let Some(path) = &memory_path {
        let saved = match kept.is_empty() {
            true => std::fs::remove_file(path).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            }),
            false => memory::save(path, &kept),
        };
        saved.map_err(|source| UninstallError::SaveMemory {
            path: path.clone(),
            source,
        })?;
        report.memory_cleared = Some(kept.is_empty());
    }
    if let Some(kube) = kube {
        (report.annotations_removed, report.annotations_failed) =
            remove_annotations(kube, unannotate);
    }
    Ok(report)
}

/// Removes ours of both backends and the policy route from `ns`, then checks nothing is left.
pub fn release(ns: &NetNs) -> Outcome {
    match try_release(ns) {
        Ok(removed) if removed == Removed::default() => Outcome::AlreadyClean,
        Ok(removed) => Outcome::Released(removed),
        Err(e) => Outcome::Failed(e),
    }
}

fn try_release(ns: &NetNs) -> Result<Removed, String> {
    let text = |e: RulesError| e.to_string();
    let ipt = present(rules::iptables::installed(ns)).map_err(text)?;
    let nft = present(rules::nftables::installed(ns)).map_err(text)?;
    let routes = rules::route::installed(ns).map_err(text)?;
    if ipt.as_ref().is_some_and(|s| !s.is_empty()) {
        rules::iptables::remove(ns).map_err(text)?;
    }
    if nft.as_ref().is_some_and(|s| !s.is_empty()) {
        rules::nftables::remove(ns).map_err(text)?;
    }
    if !routes.is_empty() {
        rules::route::remove(ns).map_err(text)?;
    }
    let mut left: Vec<String> = rules::route::installed(ns).map_err(text)?;
    for sections in [
        present(rules::iptables::installed(ns)).map_err(text)?,
        present(rules::nftables::installed(ns)).map_err(text)?,
    ] {
        left.extend(sections.into_iter().flatten().map(|s| s.name));
    }
    if !left.is_empty() {
        return Err(format!("still there after removal: {}", left.join(", ")));
    }
    let names = |s: Option<Vec<InstalledSection>>| s.into_iter().flatten().map(|s| s.name);
    Ok(Removed {
        iptables: names(ipt).collect(),
        nftables: names(nft).collect(),
        routes: routes.len(),
    })
}

/// A backend's sections, `None` when its tool is not installed (nothing of it can be there).
fn present(
    listed: Result<Vec<InstalledSection>, RulesError>,
) -> Result<Option<Vec<InstalledSection>>, RulesError> {
    match listed {
        Ok(sections) => Ok(Some(sections)),
        Err(RulesError::Spawn { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn from_memory((uid, was): (String, Remembered)) -> Target {
    Target {
        pod: was.pod.clone(),
        netns: was.reopen().ok_or(Outcome::Gone),
        remembered: Some((uid, was)),
        annotated: None,
    }
}

/// The source's pods of `node` that can have been captured (not on the host network), with
/// their namespaces found as the daemon finds them.
fn from_source(
    config: &UninstallConfig,
    snapshot: &Snapshot,
    node: &str,
    kube: bool,
) -> Vec<Target> {
    let finder = crate::podns::Finder {
        host_proc: config.host_proc.clone(),
        netns_dir: Some(config.netns_dir.clone()),
        netns_prefix: config.netns_prefix.clone(),
    };
    snapshot
        .pods
        .iter()
        .filter(|p| p.node == node && !p.host_network)
        .map(|pod| Target {
            pod: pod.key(),
            netns: find_netns(&finder, pod).map_err(Outcome::NotFound),
            remembered: None,
            annotated: (kube && pod.annotations.contains_key(REDIRECTION_ANNOTATION))
                .then(|| ObjectKey::pod(&pod.namespace, &pod.name)),
        })
        .collect()
}

fn find_netns(finder: &crate::podns::Finder, pod: &Pod) -> Result<NetNs, String> {
    if pod.ips.is_empty() {
        return Err("the pod has no IPs (never captured)".into());
    }
    match &pod.netns {
        Some(path) => {
            let ns = NetNs::open(path).map_err(|e| e.to_string())?;
            crate::podns::confirm_ips(&ns, &pod.ips).map_err(|e| e.to_string())?;
            Ok(ns)
        }
        None => finder.find(&pod.uid, &pod.ips).map_err(|e| e.to_string()),
    }
}

/// A Kubernetes client and the runtime its connection tasks live on (a client is only usable
/// on the runtime that made it).
struct Kube {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
}

/// The source's snapshot, and with Kubernetes the client (for the annotations).
fn list_pods(source: &Source, node: &str) -> Result<(Snapshot, Option<Kube>), UninstallError> {
    let failed = |reason: String| UninstallError::Source {
        node: node.to_string(),
        reason,
    };
    match source {
        Source::File(path) => crate::workload::file::load(path)
            .map(|s| (s, None))
            .map_err(|e| failed(e.to_string())),
        Source::Kube { kubeconfig } => {
            let rt = runtime().map_err(|e| failed(format!("starting a runtime: {e}")))?;
            let (snapshot, client) = rt
                .block_on(async {
                    let client = crate::k8s::client(kubeconfig.as_deref()).await?;
                    let mut rx = crate::k8s::source::watch_cluster(client.clone(), node);
                    let synced = rx.wait_for(|s| s.synced);
                    let state = tokio::time::timeout(KUBE_LIST_TIMEOUT, synced)
                        .await
                        .map_err(|_| anyhow::anyhow!("not listed within {KUBE_LIST_TIMEOUT:?}"))?
                        .map_err(|_| anyhow::anyhow!("the watch ended before listing"))?
                        .clone();
                    anyhow::Ok(((*state.snapshot).clone(), client))
                })
                .map_err(|e| failed(format!("{e:#}")))?;
            Ok((snapshot, Some(Kube { rt, client })))
        }
    }
}

/// Removes the redirection annotation of `pods`: (removed, failed).
fn remove_annotations(kube: Kube, pods: Vec<ObjectKey>) -> (usize, usize) {
    let Kube { rt, client } = kube;
    rt.block_on(async {
        let (mut removed, mut failed) = (0, 0);
        for key in pods {
            match crate::k8s::status::clear_redirection(&client, &key).await {
                Ok(()) => removed += 1,
                Err(e) => {
                    failed += 1;
                    tracing::warn!(pod = %format!("{}/{}", key.namespace, key.name), error = %e, "could not remove the redirection annotation")
                }
            }
        }
        (removed, failed)
    })
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Whether something accepts connections on the admin address.
fn daemon_answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, DAEMON_PROBE_TIMEOUT).is_ok()
}
