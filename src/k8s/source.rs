//! The Kubernetes workload source: kube-rs watchers (list + watch, with backoff) over Pods,
//! Namespaces, Services and EndpointSlices, and Istio's AuthorizationPolicies and
//! PeerAuthentications ([`super::policies`]), folded into the same [`SourceState`] the local
//! file source produces, so everything downstream is unchanged.
//!
//! Two Pod watches run: this node's pods (field selector `spec.nodeName`) drive capture and are
//! complete as soon as their own (small) list is in; all pods feed the directory used to route
//! to other nodes. Objects are stripped of everything ambit does not read before they are
//! stored (managed fields, container specs and statuses), so the caches stay small.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod as K8sPod, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{watch, Notify};

use super::convert;
use crate::workload::file::SourceState;
use crate::workload::Snapshot;

/// How long to let a burst of changes settle before a new snapshot is built.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// The reflected caches.
#[derive(Clone)]
struct Stores {
    local_pods: Store<K8sPod>,
    all_pods: Store<K8sPod>,
    namespaces: Store<K8sNamespace>,
    services: Store<K8sService>,
    slices: Store<EndpointSlice>,
    /// Istio AuthorizationPolicies and PeerAuthentications (see [`super::policies`]).
    policies: Vec<super::policies::PolicyWatch>,
}

/// Shared between the watch tasks and the snapshot builder.
#[derive(Default)]
pub(super) struct Signals {
    pub(super) changed: Notify,
    errors: std::sync::Mutex<HashMap<&'static str, String>>,
}

impl Signals {
    pub(super) fn report(&self, kind: &'static str, result: Result<(), String>) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match result {
            Ok(()) => errors.remove(kind).is_some(),
            Err(e) => errors.insert(kind, e).is_none(),
        };
        drop(errors);
        if changed {
            self.changed.notify_one();
        }
    }

    fn error(&self) -> Option<String> {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = errors.iter().map(|(k, e)| format!("{k}: {e}")).collect();
        all.sort();
        (!all.is_empty())
            .then(|| format!("Kubernetes watch failing (retrying): {}", all.join("; ")))
    }
}

/// Drops what ambit never reads, before the object is cached.
fn strip<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

fn strip_pod(pod: &mut K8sPod) {
    strip(pod);
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers.clear();
        spec.init_containers = None;
        spec.volumes = None;
        spec.tolerations = None;
        spec.affinity = None;
    }
    if let Some(status) = pod.status.as_mut() {
        status.conditions = None;
        status.container_statuses = None;
        status.init_container_statuses = None;
    }
}

/// Starts the watches and returns the stream of states, like
/// [`crate::workload::file::watch_file`].
pub fn watch_cluster(client: Client, node: &str) -> watch::Receiver<SourceState> {
    let signals = Arc::new(Signals::default());
    let local_cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let stores = Stores {
        local_pods: spawn_reflector(
            Api::all(client.clone()),
            local_cfg,
            strip_pod,
            "local pods",
            &signals,
        ),
        all_pods: spawn_reflector(
            Api::all(client.clone()),
            watcher::Config::default(),
            strip_pod,
            "pods",
            &signals,
        ),
        namespaces: spawn_reflector(
            Api::all(client.clone()),
            watcher::Config::default(),
            strip,
            "namespaces",
            &signals,
        ),
        services: spawn_reflector(
            Api::all(client.clone()),
            watcher::Config::default(),
            strip,
            "services",
            &signals,
        ),
        slices: spawn_reflector(
            Api::all(client.clone()),
            watcher::Config::default(),
            strip,
            "endpointslices",
            &signals,
        ),
        policies: super::policies::spawn(&client, &signals),
    };
    let (tx, rx) = watch::channel(SourceState::default());
    tokio::spawn(build_snapshots(stores, signals, tx));
    rx
}

fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    prepare: fn(&mut K),
    kind: &'static str,
    signals: &Arc<Signals>,
) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let signals = signals.clone();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(prepare)
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    signals.report(kind, Ok(()));
                    signals.changed.notify_one();
                }
                Err(e) => {
                    tracing::warn!(kind, error = %e, "Kubernetes watch error; retrying with backoff");
                    signals.report(kind, Err(e.to_string()));
                }
            }
        }
    });
    reader
}

async fn build_snapshots(stores: Stores, signals: Arc<Signals>, tx: watch::Sender<SourceState>) {
    // Nothing is published before every cache has its first complete list: a partial view
    // would release pods that are merely not listed yet.
    let ready = async {
        stores.local_pods.wait_until_ready().await?;
        stores.all_pods.wait_until_ready().await?;
        stores.namespaces.wait_until_ready().await?;
        stores.services.wait_until_ready().await?;
        stores.slices.wait_until_ready().await
    };
    if ready.await.is_err() {
        return;
    }
    // Policies too: listed, or known not to exist (CRDs not installed).
    for mut policy in stores.policies.iter().cloned() {
        policy.settled().await;
    }
    tracing::info!("Kubernetes caches synced");
    loop {
        let snapshot = Arc::new(snapshot_of(&stores));
        let error = signals.error();
        tx.send_if_modified(|state| {
            let changed = !state.synced || *state.snapshot != *snapshot || state.error != error;
            state.snapshot = snapshot;
            state.synced = true;
            state.error = error;
            changed
        });
        signals.changed.notified().await;
        tokio::time::sleep(DEBOUNCE).await;
        if tx.is_closed() {
            return;
        }
    }
}

/// Folds the caches into one snapshot. This node's pods come from the node-scoped watch,
/// which may be ahead of the cluster-wide one.
fn snapshot_of(stores: &Stores) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let mut by_uid = HashMap::new();
    for pod in stores
        .all_pods
        .state()
        .iter()
        .chain(stores.local_pods.state().iter())
    {
        match convert::pod(pod) {
            Ok(Some(p)) => {
                by_uid.insert(p.uid.clone(), p);
            }
            Ok(None) => {}
            Err(rejected) => snapshot.rejected.push(rejected),
        }
    }
    snapshot.pods = by_uid.into_values().collect();
    snapshot.pods.sort_by(|a, b| a.uid.cmp(&b.uid));
    snapshot.rejected.sort_by(|a, b| a.pod.cmp(&b.pod));
    snapshot.rejected.dedup();
    snapshot.namespaces = stores
        .namespaces
        .state()
        .iter()
        .filter_map(|n| convert::namespace(n))
        .collect();
    snapshot.namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    let slices = stores.slices.state();
    let mut by_owner: HashMap<String, Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices.iter() {
        if let Some(owner) = convert::slice_owner(slice) {
            by_owner.entry(owner).or_default().push(slice);
        }
    }
    snapshot.services = stores
        .services
        .state()
        .iter()
        .filter_map(|svc| {
            let key = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
            convert::service(svc, by_owner.get(&key).map(Vec::as_slice).unwrap_or(&[]))
        })
        .collect();
    snapshot.services.sort_by_key(|s| s.key());
    snapshot.istio = super::policies::objects(&stores.policies);
    snapshot
}
