//! Telling Kubernetes what ambit did: the `ambient.istio.io/redirection` annotation on captured
//! pods (Istio's signal that a pod is in the mesh), and Events for what went wrong (a pod that
//! cannot be captured, a security policy that is refused).
//!
//! The reconciler reports through [`CaptureObserver`] without waiting; API calls happen on a
//! task of their own, so a slow or unreachable API server never delays capture.

use k8s_openapi::api::core::v1::{ObjectReference, Pod as K8sPod};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use tokio::sync::mpsc;

/// Annotation Istio uses to mark a pod whose traffic is redirected.
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";

/// The object an event or annotation is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey {
    /// `Pod`, `Namespace`, `AuthorizationPolicy` or `PeerAuthentication`.
    pub kind: &'static str,
    /// Namespace (empty for cluster-scoped objects).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A pod's key.
    pub fn pod(namespace: &str, name: &str) -> Self {
        ObjectKey {
            kind: "Pod",
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// An Istio security policy's key; `kind` is `AuthorizationPolicy` or
    /// `PeerAuthentication`.
    pub fn policy(kind: &'static str, namespace: &str, name: &str) -> Self {
        ObjectKey {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// A namespace's key.
    pub fn namespace(name: &str) -> Self {
        ObjectKey {
            kind: "Namespace",
            namespace: String::new(),
            name: name.into(),
        }
    }
}

/// What the reconciler reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureEvent {
    /// The pod's traffic is now captured.
    Captured(ObjectKey),
    /// The pod left the mesh (or no longer exists).
    Released(ObjectKey),
    /// Something about this object keeps it from being captured as asked.
    Failed(ObjectKey, String),
    /// A security policy (or the namespace's `ambit.io/mtls-mode` label) was refused; the text
    /// names the field and what ambit does instead.
    PolicyRejected(ObjectKey, String),
}

/// Receives capture events. Must not block.
pub trait CaptureObserver: Send + Sync {
    /// Reports one event.
    fn notify(&self, event: CaptureEvent);
}

/// For the file source: events only go to the log, which the reconciler writes anyway.
pub struct LogOnly;

impl CaptureObserver for LogOnly {
    fn notify(&self, _event: CaptureEvent) {}
}

/// Writes annotations and Events through the Kubernetes API.
pub struct KubeReporter {
    tx: mpsc::UnboundedSender<CaptureEvent>,
}

impl KubeReporter {
    /// Starts the reporting task on the current runtime.
    pub fn start(client: Client, node: &str) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let reporter = Reporter {
            controller: "ambit".into(),
            instance: Some(format!("ambit-{node}")),
        };
        tokio::spawn(report(client.clone(), Recorder::new(client, reporter), rx));
        KubeReporter { tx }
    }
}

impl CaptureObserver for KubeReporter {
    fn notify(&self, event: CaptureEvent) {
        // The task only stops with the runtime.
        let _ = self.tx.send(event);
    }
}

async fn report(client: Client, recorder: Recorder, mut rx: mpsc::UnboundedReceiver<CaptureEvent>) {
    while let Some(event) = rx.recv().await {
        let result = match &event {
            CaptureEvent::Captured(key) => annotate(&client, key, Some("enabled")).await,
            CaptureEvent::Released(key) => annotate(&client, key, None).await,
            CaptureEvent::Failed(key, why) => {
                warn(&recorder, key, "CaptureFailed", "Capture", why).await
            }
            CaptureEvent::PolicyRejected(key, why) => {
                warn(&recorder, key, "PolicyRejected", "Enforce", why).await
            }
        };
        if let Err(e) = result {
            tracing::warn!(?event, error = %e, "could not report to the Kubernetes API");
        }
    }
}

/// Removes the redirection annotation of a released pod (a pod that is gone needs nothing).
pub async fn clear_redirection(client: &Client, key: &ObjectKey) -> Result<(), String> {
    annotate(client, key, None).await
}

/// Publishes a Warning Event about `key`.
async fn warn(
    recorder: &Recorder,
    key: &ObjectKey,
    reason: &str,
    action: &str,
    why: &str,
) -> Result<(), String> {
    let ev = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(truncate(why, 1000)),
        action: action.into(),
        secondary: None,
    };
    recorder
        .publish(&ev, &reference(key))
        .await
        .map_err(|e| e.to_string())
}

/// Sets (or, with `None`, removes) the redirection annotation with a JSON merge patch.
async fn annotate(client: &Client, key: &ObjectKey, value: Option<&str>) -> Result<(), String> {
    let api: Api<K8sPod> = Api::namespaced(client.clone(), &key.namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {REDIRECTION_ANNOTATION: value}}});
    match api
        .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // A released pod that is gone needs no annotation removed.
        Err(kube::Error::Api(e)) if e.code == 404 && value.is_none() => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

fn reference(key: &ObjectKey) -> ObjectReference {
    let api_version = match key.kind {
        "AuthorizationPolicy" | "PeerAuthentication" => "security.istio.io/v1",
        _ => "v1",
    };
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(key.kind.into()),
        name: Some(key.name.clone()),
        namespace: (!key.namespace.is_empty()).then(|| key.namespace.clone()),
        ..ObjectReference::default()
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
