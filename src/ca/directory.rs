//! "Does a pod with this identity run on that node?" — the fact behind every impersonation.
//!
//! Asked per request, from the same sources the node daemons use: the Kubernetes API (pods of
//! the identity's namespace on the node, by field selector) or the watched workload file. The
//! service keeps nothing of its own, so a restart loses nothing.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tokio::sync::watch;

use super::policy::Denied;
use crate::identity::Identity;
use crate::workload::file::SourceState;

/// Where pod placement is looked up.
pub enum Directory {
    /// The Kubernetes API.
    Kube(kube::Client),
    /// The workload file, as published by `workload::file::watch_file`.
    File(watch::Receiver<SourceState>),
}

impl Directory {
    /// Whether a running (not finished) pod with identity `id` is scheduled on `node`.
    pub async fn hosts(&self, node: &str, id: &Identity) -> Result<bool, Denied> {
        match self {
            Directory::File(rx) => {
                let state = rx.borrow().clone();
                if !state.synced {
                    return Err(Denied::Unavailable(format!(
                        "workload file not read yet: {}",
                        state.error.as_deref().unwrap_or("no snapshot")
                    )));
                }
                Ok(state.snapshot.pods.iter().any(|p| {
                    p.node == node
                        && p.namespace == id.namespace()
                        && p.service_account == id.service_account()
                }))
            }
            Directory::Kube(client) => {
                let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
                let pods = Api::<Pod>::namespaced(client.clone(), id.namespace())
                    .list(&params)
                    .await
                    .map_err(|e| {
                        Denied::Unavailable(format!(
                            "listing pods of {} on node {node}: {e}",
                            id.namespace()
                        ))
                    })?;
                Ok(pods.items.iter().any(|p| runs_as(p, node, id)))
            }
        }
    }
}

/// Whether `pod` is scheduled on `node`, not finished, and runs as `id`'s ServiceAccount.
fn runs_as(pod: &Pod, node: &str, id: &Identity) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let account = spec.service_account_name.as_deref().unwrap_or("default");
    spec.node_name.as_deref() == Some(node)
        && pod.metadata.namespace.as_deref() == Some(id.namespace())
        && account == id.service_account()
        && !finished
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};

    use super::*;
    use crate::workload::{Pod as WorkloadPod, Snapshot};

    fn id(ns: &str, sa: &str) -> Identity {
        Identity::new("cluster.local", ns, sa).unwrap()
    }

    #[test]
    fn kube_pod_matching() {
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("shop".into());
        pod.spec = Some(PodSpec {
            node_name: Some("n1".into()),
            service_account_name: Some("cart".into()),
            ..PodSpec::default()
        });
        assert!(runs_as(&pod, "n1", &id("shop", "cart")));
        assert!(!runs_as(&pod, "n2", &id("shop", "cart")));
        assert!(!runs_as(&pod, "n1", &id("shop", "default")));
        assert!(!runs_as(&pod, "n1", &id("other", "cart")));
        pod.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..PodStatus::default()
        });
        assert!(!runs_as(&pod, "n1", &id("shop", "cart")));
        pod.status = None;
        pod.spec.as_mut().unwrap().service_account_name = None;
        assert!(runs_as(&pod, "n1", &id("shop", "default")));
    }

    #[tokio::test]
    async fn file_directory() {
        let (tx, rx) = watch::channel(SourceState::default());
        let dir = Directory::File(rx);
        assert!(matches!(
            dir.hosts("n1", &id("shop", "cart")).await,
            Err(Denied::Unavailable(_))
        ));
        let snapshot = Snapshot {
            pods: vec![WorkloadPod {
                uid: "u".into(),
                name: "cart-0".into(),
                namespace: "shop".into(),
                service_account: "cart".into(),
                node: "n1".into(),
                ..WorkloadPod::default()
            }],
            ..Snapshot::default()
        };
        tx.send_replace(SourceState {
            snapshot: Arc::new(snapshot),
            synced: true,
            error: None,
        });
        assert!(dir.hosts("n1", &id("shop", "cart")).await.unwrap());
        assert!(!dir.hosts("n2", &id("shop", "cart")).await.unwrap());
        assert!(!dir.hosts("n1", &id("shop", "other")).await.unwrap());
    }
}
