//! The security policy of the node, kept current: each new workload snapshot is compiled into
//! a [`PolicySnapshot`] and published to the data path at once (new connections use it, live
//! ones are re-decided by `proxy::LiveConns::follow`), shown on the admin port (`/policies`),
//! and its rejected resources are reported once each (Warning Events with Kubernetes, the log
//! and `/policies` always).
//!
//! This replaces the per-pod `ambit.io/mtls-mode` handling the reconciler had: the engine reads
//! the label as a namespace PeerAuthentication, so a label or policy change no longer
//! re-captures the pod, it only changes the decisions.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio::sync::watch;

use super::board::read;
use super::ReconcileConfig;
use crate::config::MtlsMode as DefaultMode;
use crate::k8s::status::{CaptureEvent, CaptureObserver, ObjectKey};
use crate::policy::{
    MtlsMode, PolicyConfig, PolicySnapshot, PolicyWarning, RejectedPolicy, WorkloadView,
};
use crate::workload::{Pod, Snapshot};

/// The engine's settings from the daemon's: root namespace, `--mtls-mode`, this node.
pub fn policy_config(config: &ReconcileConfig) -> PolicyConfig {
    PolicyConfig {
        root_namespace: config.root_namespace.clone(),
        default_mtls: match config.default_mtls {
            DefaultMode::Strict => MtlsMode::Strict,
            DefaultMode::Permissive => MtlsMode::Permissive,
        },
        node: Some(config.node.clone()),
    }
}

/// What `/policies` shows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PoliciesView {
    /// Where mesh-wide policies live.
    pub root_namespace: String,
    /// Every AuthorizationPolicy and PeerAuthentication in force, as `Kind namespace/name`.
    pub resources: Vec<String>,
    /// Resources refused, with the field, the reason and what ambit does instead.
    pub rejected: Vec<RejectedPolicy>,
    /// Resources accepted but enforced differently from how they read.
    pub warnings: Vec<PolicyWarning>,
    /// The compiled policy of every pod this node captures.
    pub pods: Vec<WorkloadView>,
}

/// The current policy and the pods it is shown for; read by the admin endpoint.
#[derive(Default)]
pub struct PolicyBoard {
    snapshot: RwLock<Option<Arc<PolicySnapshot>>>,
    pods: RwLock<Vec<Pod>>,
}

impl PolicyBoard {
    /// The view of `/policies`, worked out on request (the admin port is rarely read).
    pub fn view(&self) -> PoliciesView {
        let Some(snapshot) = read(&self.snapshot).clone() else {
            return PoliciesView::default();
        };
        PoliciesView {
            root_namespace: snapshot.config().root_namespace.clone(),
            resources: snapshot.resources(),
            rejected: snapshot.rejected().to_vec(),
            warnings: snapshot.warnings().to_vec(),
            pods: read(&self.pods)
                .iter()
                .map(|p| snapshot.describe(p))
                .collect(),
        }
    }

    /// Number of rejected resources (for `/status`).
    pub fn rejected_count(&self) -> usize {
        read(&self.snapshot)
            .as_ref()
            .map_or(0, |s| s.rejected().len())
    }

    /// Sets the pods `/policies` describes: those captured on this node.
    pub(super) fn show_pods(&self, pods: Vec<Pod>) {
        *self.pods.write().unwrap_or_else(|p| p.into_inner()) = pods;
    }

    fn show(&self, snapshot: Arc<PolicySnapshot>) {
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Some(snapshot);
    }
}

/// Compiles and publishes; remembers what it reported.
pub(super) struct PolicyPublisher {
    config: PolicyConfig,
    /// Rejections reported so far (`kind namespace/name: field: reason`). A rejection that
    /// disappears is forgotten, so the same mistake made again is reported again.
    reported: HashSet<String>,
    /// Warnings logged so far, likewise.
    warned: HashSet<String>,
}

impl PolicyPublisher {
    pub fn new(config: &ReconcileConfig) -> Self {
        PolicyPublisher {
            config: policy_config(config),
            reported: HashSet::new(),
            warned: HashSet::new(),
        }
    }

    /// Compiles `snapshot`'s policies, hands them to the data path through `tx` and to
    /// `board`, and reports new rejections to `observer`.
    pub fn publish(
        &mut self,
        snapshot: &Snapshot,
        tx: &watch::Sender<Arc<PolicySnapshot>>,
        board: &PolicyBoard,
        observer: &dyn CaptureObserver,
    ) {
        let compiled = Arc::new(PolicySnapshot::build(snapshot, &self.config));
        tx.send_replace(compiled.clone());
        board.show(compiled.clone());
        let mut now = HashSet::new();
        for r in compiled.rejected() {
            let text = rejection_text(r);
            if !self.reported.contains(&text) {
                observer.notify(CaptureEvent::PolicyRejected(object_of(r), text.clone()));
            }
            now.insert(text);
        }
        self.reported = now;
        let mut now = HashSet::new();
        for w in compiled.warnings() {
            let text = format!("{}: {}", w.policy, w.message);
            if !self.warned.contains(&text) {
                tracing::warn!(policy = %w.policy, "{}", w.message);
            }
            now.insert(text);
        }
        self.warned = now;
    }
}

/// One line naming the resource, the field, the reason and the effect.
fn rejection_text(r: &RejectedPolicy) -> String {
    format!(
        "{} {}/{} rejected: {}: {}; {}",
        r.kind, r.namespace, r.name, r.field, r.reason, r.effect
    )
}

/// The object an Event about `r` is attached to: the policy itself, or the namespace whose
/// `ambit.io/mtls-mode` label was refused.
fn object_of(r: &RejectedPolicy) -> ObjectKey {
    match r.kind.as_str() {
        "AuthorizationPolicy" => ObjectKey::policy("AuthorizationPolicy", &r.namespace, &r.name),
        "PeerAuthentication" => ObjectKey::policy("PeerAuthentication", &r.namespace, &r.name),
        "Namespace" => ObjectKey::namespace(&r.namespace),
        // A resource of another kind in the istio list: the Event goes to its namespace.
        _ => ObjectKey::namespace(&r.namespace),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<CaptureEvent>>);

    impl CaptureObserver for Recorder {
        fn notify(&self, event: CaptureEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    fn bad_policy() -> serde_json::Value {
        json!({
            "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "bad", "namespace": "shop"},
            "spec": {"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.300"]}}]}]},
        })
    }

    #[test]
    fn rejections_are_reported_once_and_again_after_a_fix() {
        let config = ReconcileConfig {
            node: "n1".into(),
            daemon: Default::default(),
            backend: crate::config::Backend::Iptables,
            verify_interval: std::time::Duration::from_secs(1),
            trust_domain: "cluster.local".into(),
            default_mtls: DefaultMode::Permissive,
            root_namespace: "istio-system".into(),
            pool_idle: std::time::Duration::from_secs(1),
            host_proc: "/proc".into(),
            netns_dir: "/var/run/netns".into(),
            netns_prefix: None,
            state_dir: None,
        };
        let mut publisher = PolicyPublisher::new(&config);
        let (tx, rx) = watch::channel(Arc::new(PolicySnapshot::empty(&publisher.config)));
        let board = PolicyBoard::default();
        let seen = Recorder::default();
        let broken = Snapshot {
            istio: vec![bad_policy()],
            ..Snapshot::default()
        };
        publisher.publish(&broken, &tx, &board, &seen);
        publisher.publish(&broken, &tx, &board, &seen);
        publisher.publish(&Snapshot::default(), &tx, &board, &seen);
        publisher.publish(&broken, &tx, &board, &seen);
        let events = seen.0.lock().unwrap().clone();
        assert_eq!(events.len(), 2, "{events:?}");
        let CaptureEvent::PolicyRejected(key, text) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(
            (key.kind, key.namespace.as_str(), key.name.as_str()),
            ("AuthorizationPolicy", "shop", "bad")
        );
        assert!(
            text.contains("ipBlocks[0]") && text.contains("denied"),
            "{text}"
        );
        assert_eq!(rx.borrow().rejected().len(), 1);
        let view = board.view();
        assert_eq!(view.resources, ["AuthorizationPolicy shop/bad"]);
        assert_eq!(board.rejected_count(), 1);
    }
}
