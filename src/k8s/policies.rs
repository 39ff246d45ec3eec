//! Watches of Istio's security policies: `security.istio.io/v1` AuthorizationPolicy and
//! PeerAuthentication, as untyped objects (ambit has no Rust types for Istio's CRDs; the policy
//! engine reads the JSON, the same JSON the workload file holds).
//!
//! The CRDs may not be installed. A `404` on list then means "no policies": said once, not
//! reported as a failing watch, and a fresh watcher lists again after a growing pause
//! ([`CRD_RETRY_MIN`] up to [`CRD_RETRY_MAX`]) so policies are picked up once the CRDs appear. Any other failure keeps the kind pending, so the
//! daemon never starts enforcing from a view that silently lacks the policies.

use std::sync::Arc;

use futures_util::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::watch;

use super::source::Signals;
use crate::config::{CRD_RETRY_MAX, CRD_RETRY_MIN};
use crate::policy::API_GROUP;

/// The kinds watched, with their plural resource names.
pub const KINDS: [(&str, &str); 2] = [
    ("AuthorizationPolicy", "authorizationpolicies"),
    ("PeerAuthentication", "peerauthentications"),
];
/// The version watched.
pub const VERSION: &str = "v1";
/// kubectl's copy of the applied object: large, and never read.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Whether a kind's objects are known.
#[derive(Clone)]
enum Availability {
    /// Neither listed nor known to be absent yet.
    Pending,
    /// The API server does not serve the kind (CRD not installed): no policies of it.
    Absent,
    /// Listed; the store is complete and kept current by its watch.
    Listed(Store<DynamicObject>),
}

/// One watched kind.
#[derive(Clone)]
pub(super) struct PolicyWatch {
    resource: ApiResource,
    availability: watch::Receiver<Availability>,
}

impl PolicyWatch {
    /// Resolves once the kind is listed or known to be absent.
    pub async fn settled(&mut self) {
        // An Err means the watch task is gone, and then nothing will change any more.
        let _ = self
            .availability
            .wait_for(|a| !matches!(a, Availability::Pending))
            .await;
    }

    /// The cached objects as the JSON `kubectl get -o json` would print; none while the kind
    /// is not served (deleting a CRD deletes its objects).
    pub fn objects(&self) -> Vec<Value> {
        let Availability::Listed(store) = &*self.availability.borrow() else {
            return Vec::new();
        };
        store
            .state()
            .iter()
            .filter_map(|o| {
                let mut v = serde_json::to_value(o.as_ref()).ok()?;
                let map = v.as_object_mut()?;
                // Items of a list carry no type; the policy engine wants it.
                map.entry("apiVersion")
                    .or_insert_with(|| self.resource.api_version.clone().into());
                map.entry("kind")
                    .or_insert_with(|| self.resource.kind.clone().into());
                Some(v)
            })
            .collect()
    }
}

/// Every cached object of `watches`, in a stable order (kind, namespace, name), so an unchanged
/// cluster gives an equal snapshot.
pub(super) fn objects(watches: &[PolicyWatch]) -> Vec<Value> {
    let mut all: Vec<Value> = watches.iter().flat_map(PolicyWatch::objects).collect();
    let key = |v: &Value| {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
        let meta = v.get("metadata");
        (
            text(v.get("kind")),
            text(meta.and_then(|m| m.get("namespace"))),
            text(meta.and_then(|m| m.get("name"))),
        )
    };
    all.sort_by_cached_key(key);
    all
}

/// Starts one watch per kind in [`KINDS`].
pub(super) fn spawn(client: &Client, signals: &Arc<Signals>) -> Vec<PolicyWatch> {
    KINDS
        .iter()
        .map(|(kind, plural)| {
            let gvk = GroupVersionKind::gvk(API_GROUP, VERSION, kind);
            let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
            spawn_one(client.clone(), resource, kind, signals.clone())
        })
        .collect()
}

fn spawn_one(
    client: Client,
    resource: ApiResource,
    kind: &'static str,
    signals: Arc<Signals>,
) -> PolicyWatch {
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let (tx, availability) = watch::channel(Availability::Pending);
    let watched = resource.clone();
    tokio::spawn(async move {
        let mut retry = CRD_RETRY_MIN;
        loop {
            if watch_until_absent(&api, &watched, kind, &tx, &signals).await {
                retry = CRD_RETRY_MIN;
            }
            // Not served: a fresh watcher (and so a fresh LIST) after a growing pause. A
            // resumed watch would stay silent when the CRD comes back with unchanged objects.
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(CRD_RETRY_MAX);
        }
    });
    PolicyWatch {
        resource,
        availability,
    }
}

/// Runs one watcher of the kind until the API server says it does not serve it; returns
/// whether the kind was listed on the way (to reset the caller's retry pause).
async fn watch_until_absent(
    api: &Api<DynamicObject>,
    resource: &ApiResource,
    kind: &'static str,
    tx: &watch::Sender<Availability>,
    signals: &Signals,
) -> bool {
    let writer = Writer::new(resource.clone());
    let store = writer.as_reader();
    let stream = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .modify(strip)
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    let mut listed = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                if matches!(event, watcher::Event::InitDone) {
                    let was = tx.send_replace(Availability::Listed(store.clone()));
                    if matches!(was, Availability::Absent) {
                        tracing::info!(
                            kind,
                            "Istio policy CRD now served; policies of this kind are enforced"
                        );
                    }
                    listed = true;
                }
                signals.report(kind, Ok(()));
                signals.changed.notify_one();
            }
            Err(e) if is_not_found(&e) => {
                let was = tx.send_replace(Availability::Absent);
                if !matches!(was, Availability::Absent) {
                    tracing::info!(
                        kind,
                        "{API_GROUP}/{VERSION} {kind} is not served (Istio CRDs not installed): \
                         no policies of this kind; retrying in the background"
                    );
                }
                signals.report(kind, Ok(()));
                signals.changed.notify_one();
                return listed;
            }
            Err(e) => {
                tracing::warn!(kind, error = %e, "Kubernetes watch error; retrying with backoff");
                signals.report(kind, Err(e.to_string()));
            }
        }
    }
    listed
}

/// A list or watch refused with 404: the API server does not know the resource.
fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 404,
        watcher::Error::WatchError(status) => status.code == 404,
        _ => false,
    }
}

/// Drops what the policy engine never reads before the object is cached.
fn strip(obj: &mut DynamicObject) {
    obj.metadata.managed_fields = None;
    if let Some(a) = obj.metadata.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
    if let Some(map) = obj.data.as_object_mut() {
        map.remove("status");
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    #[test]
    fn only_404_means_absent() {
        let api = |code| kube::Error::Api(Status::failure("x", "NotFound").with_code(code).boxed());
        assert!(is_not_found(&watcher::Error::InitialListFailed(api(404))));
        assert!(is_not_found(&watcher::Error::WatchStartFailed(api(404))));
        assert!(!is_not_found(&watcher::Error::InitialListFailed(api(403))));
        assert!(!is_not_found(&watcher::Error::InitialListFailed(api(500))));
        assert!(!is_not_found(&watcher::Error::NoResourceVersion));
    }

    #[test]
    fn strips_what_is_never_read_and_keeps_the_dry_run_annotation() {
        let mut obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "n", "managedFields": [{"manager": "kubectl"}],
                         "annotations": {LAST_APPLIED: "{}", "istio.io/dry-run": "true"}},
            "spec": {"action": "DENY"}, "status": {"conditions": []}
        }))
        .unwrap();
        strip(&mut obj);
        let v = serde_json::to_value(&obj).unwrap();
        assert!(v["metadata"].get("managedFields").is_none());
        assert_eq!(
            v["metadata"]["annotations"],
            serde_json::json!({"istio.io/dry-run": "true"})
        );
        assert!(v.get("status").is_none());
        assert_eq!(v["spec"]["action"], "DENY");
    }
}
