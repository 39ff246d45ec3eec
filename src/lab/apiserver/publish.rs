//! (About 510 lines: one conversion per object kind, kept together so a reader sees the whole
//! snapshot-to-API mapping in one place.)
//!
//! Making the stand-in's objects match a workload [`Snapshot`], through kube-rs.
//!
//! [`desired_objects`] turns a snapshot into the Namespaces, Pods, Services and EndpointSlices a
//! cluster with those workloads would have, and its Istio security policies
//! (`publish_policies`); [`sync`] creates what is missing, patches what
//! differs and deletes what the snapshot no longer has, with the production client.
//!
//! Labels and annotations are merged three ways, as `kubectl apply` does: keys the snapshot has
//! are set, keys the *previously published* snapshot had and this one does not are removed, and
//! keys someone else wrote (ambit's `ambient.istio.io/redirection` annotation) are left alone.
//! Every other field the lab models is the snapshot's. Objects of those kinds that the
//! snapshot does not have are deleted: the snapshot is the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;

use anyhow::Context;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
    PostParams, Preconditions,
};
use serde_json::{json, Map, Value};

use super::publish_policies::{exact_patch, is_policy, policy_objects};
use super::store::{merge_patch, strip_nulls};
use crate::k8s::policies::{KINDS as POLICY_KINDS, VERSION};
use crate::netns::NetNs;
use crate::policy::API_GROUP;
use crate::workload::{Endpoint, Pod, Service, Snapshot};

/// Image name of the lab's pods' one (nominal) container.
const LAB_IMAGE: &str = "ambit.invalid/lab-workload:latest";
/// Label linking an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// `endpointslice.kubernetes.io/managed-by` of the slices the lab writes.
const SLICE_MANAGER: &str = "ambit-lab";

/// The kinds the publisher owns, in creation order (deletion runs in reverse): policies
/// before the pods they protect, and removed after them.
const KINDS: [(&str, &str, &str, &str); 6] = [
    ("", "v1", "Namespace", "namespaces"),
    (API_GROUP, VERSION, POLICY_KINDS[0].0, POLICY_KINDS[0].1),
    (API_GROUP, VERSION, POLICY_KINDS[1].0, POLICY_KINDS[1].1),
    ("", "v1", "Service", "services"),
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    ("", "v1", "Pod", "pods"),
];

/// One object the lab wants in the API server.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredObject {
    /// Resource id: `v1/pods`, `v1/namespaces`, `v1/services`, `discovery.k8s.io/v1/endpointslices`,
    /// `security.istio.io/v1/authorizationpolicies`, `security.istio.io/v1/peerauthentications`.
    pub resource: String,
    /// Namespace (`""` for Namespaces).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID the object must have (pods: the lab's); an object with another UID is recreated.
    pub uid: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Every other field the lab sets, as a JSON merge patch (`null`: must be absent).
    pub fields: Value,
}

impl DesiredObject {
    fn key(&self) -> (String, String, String) {
        (
            self.resource.clone(),
            self.namespace.clone(),
            self.name.clone(),
        )
    }

    /// The object as created: fields without nulls, plus metadata.
    fn to_create(&self) -> Value {
        let mut obj = self.fields.clone();
        strip_nulls(&mut obj);
        // Metadata the fields carry (a pod's owner) comes first; name, labels... are added.
        let mut meta = obj
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        meta.insert("name".into(), json!(self.name));
        if !self.namespace.is_empty() {
            meta.insert("namespace".into(), json!(self.namespace));
        }
        if let Some(uid) = &self.uid {
            meta.insert("uid".into(), json!(uid));
        }
        if !self.labels.is_empty() {
            meta.insert("labels".into(), json!(self.labels));
        }
        if !self.annotations.is_empty() {
            meta.insert("annotations".into(), json!(self.annotations));
        }
        obj["metadata"] = Value::Object(meta);
        obj
    }

    /// The merge patch that brings `existing` to this, given what was published before.
    fn to_patch(&self, existing: &Value, previous: Option<&DesiredObject>) -> Value {
        let mut patch = self.fields.clone();
        if is_policy(&self.resource) {
            // A policy's spec is the snapshot's exactly: what it no longer says is removed.
            patch["spec"] = exact_patch(existing.get("spec"), &self.fields["spec"]);
        }
        let mut meta = Map::new();
        let sets = [
            ("labels", &self.labels, previous.map(|p| &p.labels)),
            (
                "annotations",
                &self.annotations,
                previous.map(|p| &p.annotations),
            ),
        ];
        for (field, now, before) in sets {
            let current = existing.get("metadata").and_then(|m| m.get(field));
            let mut m = Map::new();
            for (k, v) in now {
                m.insert(k.clone(), json!(v));
            }
            for k in before.into_iter().flat_map(|b| b.keys()) {
                let present = current.and_then(|c| c.get(k)).is_some();
                if !now.contains_key(k) && present {
                    m.insert(k.clone(), Value::Null);
                }
            }
            if !m.is_empty() {
                meta.insert(field.into(), Value::Object(m));
            }
        }
        if !meta.is_empty() {
            match patch.get_mut("metadata").and_then(Value::as_object_mut) {
                Some(fixed) => fixed.extend(meta),
                None => patch["metadata"] = Value::Object(meta),
            }
        }
        patch
    }
}

/// What a [`sync`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// `resource namespace/name` of created objects.
    pub created: Vec<String>,
    /// Patched objects.
    pub updated: Vec<String>,
    /// Deleted objects (a pod recreated under a new UID counts as deleted and created).
    pub deleted: Vec<String>,
}

/// The objects a cluster running `snapshot` has. `host_ips` gives each node's addresses
/// (for the pods' `status.hostIP(s)`).
pub fn desired_objects(
    snapshot: &Snapshot,
    host_ips: &BTreeMap<String, Vec<IpAddr>>,
) -> Vec<DesiredObject> {
    let mut out = Vec::new();
    for ns in &snapshot.namespaces {
        out.push(DesiredObject {
            resource: "v1/namespaces".into(),
            namespace: String::new(),
            name: ns.name.clone(),
            uid: None,
            labels: ns.labels.clone(),
            annotations: BTreeMap::new(),
            fields: json!({"apiVersion": "v1", "kind": "Namespace"}),
        });
    }
    for pod in &snapshot.pods {
        out.push(pod_object(
            pod,
            host_ips
                .get(&pod.node)
                .map(Vec::as_slice)
                .unwrap_or_default(),
        ));
    }
    for svc in &snapshot.services {
        out.push(service_object(svc));
        out.extend(slice_objects(svc, &snapshot.pods));
    }
    out.extend(policy_objects(snapshot));
    out
}

fn pod_object(pod: &Pod, host_ips: &[IpAddr]) -> DesiredObject {
    let ips: Vec<Value> = pod
        .ips
        .iter()
        .map(|ip| json!({"ip": ip.to_string()}))
        .collect();
    let host_list: Vec<Value> = host_ips
        .iter()
        .map(|ip| json!({"ip": ip.to_string()}))
        .collect();
    let or_null = |v: Vec<Value>| if v.is_empty() { Value::Null } else { json!(v) };
    let mut fields = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "spec": {
            "nodeName": pod.node,
            "serviceAccountName": pod.service_account,
            "hostNetwork": if pod.host_network { json!(true) } else { Value::Null },
            "containers": [{"name": "app", "image": LAB_IMAGE}],
        },
        "status": {
            "phase": "Running",
            "podIP": pod.ips.first().map(|ip| json!(ip.to_string())).unwrap_or(Value::Null),
            "podIPs": or_null(ips),
            "hostIP": host_ips.first().map(|ip| json!(ip.to_string())).unwrap_or(Value::Null),
            "hostIPs": or_null(host_list),
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    });
    if let Some(workload) = &pod.workload {
        // A pod of a workload is one its controller generated: a StatefulSet's, whose name the
        // kube source takes as the workload's (`k8s::convert`).
        fields["metadata"] = json!({
            "generateName": format!("{workload}-"),
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "name": workload,
                "uid": format!("lab-{}-{workload}", pod.namespace),
                "controller": true,
            }],
        });
    }
    DesiredObject {
        resource: "v1/pods".into(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: Some(pod.uid.clone()),
        labels: pod.labels.clone(),
        annotations: pod.annotations.clone(),
        fields,
    }
}

fn service_object(svc: &Service) -> DesiredObject {
    let ips: Vec<String> = svc.cluster_ips.iter().map(IpAddr::to_string).collect();
    let families: Vec<&str> = svc
        .cluster_ips
        .iter()
        .map(|ip| if ip.is_ipv4() { "IPv4" } else { "IPv6" })
        .collect();
    let ports: Vec<Value> = svc
        .ports
        .iter()
        .map(|p| {
            let mut port = json!({"port": p.port, "protocol": "TCP"});
            if !p.name.is_empty() {
                port["name"] = json!(p.name);
            }
            // The endpoints' port of that name, when they agree on one.
            let targets: BTreeSet<u16> = svc
                .endpoints
                .iter()
                .filter_map(|e| e.ports.get(&p.name).copied())
                .collect();
            let target = match targets.len() {
                1 => json!(targets.first()),
                0 => json!(p.port),
                _ if !p.name.is_empty() => json!(p.name),
                _ => json!(p.port),
            };
            port["targetPort"] = target;
            port
        })
        .collect();
    let (cluster_ip, cluster_ips) = match ips.first() {
        Some(first) => (json!(first), json!(ips)),
        None => (json!("None"), json!(["None"])),
    };
    DesiredObject {
        resource: "v1/services".into(),
        namespace: svc.namespace.clone(),
        name: svc.name.clone(),
        uid: None,
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        fields: json!({
            "apiVersion": "v1",
            "kind": "Service",
            "spec": {
                "type": "ClusterIP",
                "clusterIP": cluster_ip,
                "clusterIPs": cluster_ips,
                "ipFamilies": if families.is_empty() { Value::Null } else { json!(families) },
                "ports": ports,
            },
        }),
    }
}

/// EndpointSlices of `svc`: one per address family and set of ports, named
/// `<svc>-v4`, `<svc>-v6` (then `-2`, `-3` … for further port sets).
fn slice_objects(svc: &Service, pods: &[Pod]) -> Vec<DesiredObject> {
    // (IPv4?, ports) -> endpoints, in the order first seen.
    type Group<'a> = ((bool, BTreeMap<String, u16>), Vec<&'a Endpoint>);
    let mut groups: Vec<Group> = Vec::new();
    for ep in &svc.endpoints {
        let key = (ep.ip.is_ipv4(), ep.ports.clone());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, eps)) => eps.push(ep),
            None => groups.push((key, vec![ep])),
        }
    }
    let mut seen: BTreeMap<bool, usize> = BTreeMap::new();
    groups
        .into_iter()
        .map(|((v4, ports), eps)| {
            let n = seen.entry(v4).or_default();
            *n += 1;
            let family = if v4 { "v4" } else { "v6" };
            let name = match *n {
                1 => format!("{}-{family}", svc.name),
                n => format!("{}-{family}-{n}", svc.name),
            };
            let endpoints: Vec<Value> = eps
                .iter()
                .map(|ep| {
                    let mut e = json!({
                        "addresses": [ep.ip.to_string()],
                        "conditions": {"ready": ep.ready, "serving": ep.ready, "terminating": false},
                    });
                    if let Some(pod) = pods.iter().find(|p| p.ips.contains(&ep.ip)) {
                        e["targetRef"] = json!({"kind": "Pod", "namespace": pod.namespace,
                                                "name": pod.name, "uid": pod.uid});
                        e["nodeName"] = json!(pod.node);
                    }
                    e
                })
                .collect();
            let ports: Vec<Value> = ports
                .iter()
                .map(|(name, port)| {
                    let mut p = json!({"port": port, "protocol": "TCP"});
                    if !name.is_empty() {
                        p["name"] = json!(name);
                    }
                    p
                })
                .collect();
            let mut labels = BTreeMap::new();
            labels.insert(SERVICE_NAME_LABEL.to_string(), svc.name.clone());
            labels.insert(
                "endpointslice.kubernetes.io/managed-by".to_string(),
                SLICE_MANAGER.to_string(),
            );
            DesiredObject {
                resource: "discovery.k8s.io/v1/endpointslices".into(),
                namespace: svc.namespace.clone(),
                name,
                uid: None,
                labels,
                annotations: BTreeMap::new(),
                fields: json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "addressType": if v4 { "IPv4" } else { "IPv6" },
                    "endpoints": endpoints,
                    "ports": ports,
                }),
            }
        })
        .collect()
}

fn api_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn resource_id(group: &str, version: &str, plural: &str) -> String {
    if group.is_empty() {
        format!("{version}/{plural}")
    } else {
        format!("{group}/{version}/{plural}")
    }
}

/// Makes the API server's Namespaces, Pods, Services and EndpointSlices those of `new`
/// (see the module documentation); `old` is the snapshot published before, if known.
pub async fn sync(
    client: &kube::Client,
    old: Option<&Snapshot>,
    new: &Snapshot,
    host_ips: &BTreeMap<String, Vec<IpAddr>>,
) -> anyhow::Result<SyncReport> {
    let desired = desired_objects(new, host_ips);
    let previous: BTreeMap<_, _> = old
        .map(|o| desired_objects(o, host_ips))
        .unwrap_or_default()
        .into_iter()
        .map(|d| (d.key(), d))
        .collect();
    let mut report = SyncReport::default();
    let mut existing_all = Vec::new();
    for (group, version, kind, plural) in KINDS {
        let ar = api_resource(group, version, kind, plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let list = api
            .list(&Default::default())
            .await
            .with_context(|| format!("listing {plural}"))?;
        let mut existing = BTreeMap::new();
        for obj in list.items {
            let ns = obj.metadata.namespace.clone().unwrap_or_default();
            let name = obj.metadata.name.clone().unwrap_or_default();
            // List items come without kind and apiVersion (as from a real server).
            let mut value = serde_json::to_value(&obj)?;
            value["apiVersion"] = json!(ar.api_version);
            value["kind"] = json!(ar.kind);
            existing.insert((ns, name), value);
        }
        existing_all.push(((group, version, kind, plural), ar, existing));
    }
    // Create and update, kind by kind in creation order.
    for ((group, version, _, plural), ar, existing) in &existing_all {
        let id = resource_id(group, version, plural);
        for d in desired.iter().filter(|d| d.resource == id) {
            let api: Api<DynamicObject> = if d.namespace.is_empty() {
                Api::all_with(client.clone(), ar)
            } else {
                Api::namespaced_with(client.clone(), &d.namespace, ar)
            };
            let label = format!("{plural} {}/{}", d.namespace, d.name);
            let current = existing.get(&(d.namespace.clone(), d.name.clone()));
            let current_uid = current
                .and_then(|c| c.get("metadata"))
                .and_then(|m| m.get("uid"))
                .and_then(Value::as_str);
            let recreate = match (current_uid, &d.uid) {
                (Some(have), Some(want)) => have != want,
                _ => false,
            };
            if recreate {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: current_uid.map(str::to_string),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                api.delete(&d.name, &dp).await.with_context(|| {
                    format!("deleting {label} to recreate it with uid {:?}", d.uid)
                })?;
                report.deleted.push(label.clone());
            }
            match current {
                Some(cur) if !recreate => {
                    let patch = d.to_patch(cur, previous.get(&d.key()));
                    let mut merged = cur.clone();
                    merge_patch(&mut merged, &patch);
                    if merged != *cur {
                        api.patch(&d.name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .with_context(|| format!("patching {label}"))?;
                        report.updated.push(label);
                    }
                }
                _ => {
                    let obj: DynamicObject = serde_json::from_value(d.to_create())?;
                    api.create(&PostParams::default(), &obj)
                        .await
                        .with_context(|| format!("creating {label}"))?;
                    report.created.push(label);
                }
            }
        }
    }
    // Delete what is no longer wanted, in reverse order (pods before their namespace).
    let wanted: BTreeSet<_> = desired.iter().map(DesiredObject::key).collect();
    for ((group, version, _, plural), ar, existing) in existing_all.iter().rev() {
        let id = resource_id(group, version, plural);
        for (ns, name) in existing.keys() {
            if wanted.contains(&(id.clone(), ns.clone(), name.clone())) {
                continue;
            }
            let api: Api<DynamicObject> = if ns.is_empty() {
                Api::all_with(client.clone(), ar)
            } else {
                Api::namespaced_with(client.clone(), ns, ar)
            };
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => report.deleted.push(format!("{plural} {ns}/{name}")),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e).with_context(|| format!("deleting {plural} {ns}/{name}")),
            }
        }
    }
    Ok(report)
}

/// A kube client from the kubeconfig at `path`, built by the production code
/// ([`crate::k8s::client`], what `ambit run --kube --kubeconfig` uses).
pub async fn client_from_kubeconfig(path: &std::path::Path) -> anyhow::Result<kube::Client> {
    crate::k8s::client(Some(path)).await
}

/// Runs `make()`'s future to completion on a fresh thread whose network namespace is `ns`,
/// with a single-threaded tokio runtime: every socket it opens (a kube client's connections)
/// belongs to `ns`. The thread enters `ns` for the whole run and leaves it before it ends.
///
/// This is how the lab reaches the stand-in, which listens on the fabric bridge address inside
/// the fabric namespace, from a process running in the machine's own namespace.
pub fn block_on_in_netns<T, F, Fut>(ns: &NetNs, make: F) -> anyhow::Result<T>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = anyhow::Result<T>>,
{
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            ns.run(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building a runtime")?;
                runtime.block_on(make())
            })?
        });
        worker.join().map_err(|_| {
            anyhow::anyhow!("the thread working in {} panicked", ns.path().display())
        })?
    })
}
