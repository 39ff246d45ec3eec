//! Kubernetes objects → the workload model. Pure functions: what the watches deliver is turned
//! into [`Snapshot`] parts here, and every field ambit does not use is dropped.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod as K8sPod, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::workload::{Endpoint, Namespace, Pod, RejectedPod, Service, ServicePort};

/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Converts a Pod. Terminated pods (`Succeeded`/`Failed`) are `Ok(None)`: they hold no
/// traffic. A pod whose IPs do not parse is rejected with the value named.
pub fn pod(p: &K8sPod) -> Result<Option<Pod>, RejectedPod> {
    let meta = &p.metadata;
    let key = format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("?"),
        meta.name.as_deref().unwrap_or("?")
    );
    let reject = |error: String| RejectedPod {
        pod: key.clone(),
        error,
    };
    let (Some(uid), Some(name), Some(namespace)) = (&meta.uid, &meta.name, &meta.namespace) else {
        return Err(reject(
            "pod object without metadata.uid, name or namespace".into(),
        ));
    };
    let status = p.status.as_ref();
    if let Some("Succeeded" | "Failed") = status.and_then(|s| s.phase.as_deref()) {
        return Ok(None);
    }
    let spec = p.spec.as_ref();
    let mut raw_ips: Vec<&str> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().map(|i| i.ip.as_str()).collect())
        .unwrap_or_default();
    if raw_ips.is_empty() {
        raw_ips.extend(status.and_then(|s| s.pod_ip.as_deref()));
    }
    let mut ips = Vec::new();
    for raw in raw_ips {
        let ip: IpAddr = raw.trim().parse().map_err(|_| {
            reject(format!(
                "status.podIPs: {raw:?} is not an IP address (expected e.g. 10.0.0.2 or fd00::2)"
            ))
        })?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(Some(Pod {
        uid: uid.clone(),
        name: name.clone(),
        namespace: namespace.clone(),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        workload: workload_of(meta),
        ips,
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
        netns: None,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
    }))
}

/// The workload a pod belongs to, by Istio's heuristic (`pkg/kube/util.go`,
/// `GetDeployMetaFromPod`): a generated pod's controller owner names it, and a ReplicaSet whose
/// name ends in the pod's `pod-template-hash` stands for its Deployment. `None` for a bare pod.
fn workload_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<String> {
    meta.generate_name.as_ref().filter(|g| !g.is_empty())?;
    let owner = meta
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))?;
    let hash = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"))
        .filter(|h| !h.is_empty());
    match hash {
        Some(h) if owner.kind == "ReplicaSet" => Some(
            owner
                .name
                .strip_suffix(h.as_str())
                .and_then(|n| n.strip_suffix('-'))
                .unwrap_or(&owner.name)
                .to_string(),
        ),
        _ => Some(owner.name.clone()),
    }
}

/// Converts a Namespace.
pub fn namespace(n: &K8sNamespace) -> Option<Namespace> {
    Some(Namespace {
        name: n.metadata.name.clone()?,
        labels: n.metadata.labels.clone().unwrap_or_default(),
    })
}

/// Converts a Service with the EndpointSlices that belong to it. Unparseable addresses are
/// skipped (a Service is never rejected as a whole for one bad endpoint).
pub fn service(s: &K8sService, slices: &[&EndpointSlice]) -> Option<Service> {
    let name = s.metadata.name.clone()?;
    let namespace = s.metadata.namespace.clone()?;
    let spec = s.spec.as_ref()?;
    let cluster_ips = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .fold(Vec::new(), |mut acc, ip| {
            if !acc.contains(&ip) {
                acc.push(ip);
            }
            acc
        });
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            Some(ServicePort {
                name: p.name.clone().unwrap_or_default(),
                port: u16::try_from(p.port).ok()?,
            })
        })
        .collect();
    let mut endpoints = Vec::new();
    for slice in slices {
        let ports: BTreeMap<String, u16> = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    u16::try_from(p.port?).ok()?,
                ))
            })
            .collect();
        for ep in &slice.endpoints {
            // `ready` unset means ready (API convention for EndpointConditions).
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            for addr in &ep.addresses {
                if let Ok(ip) = addr.parse::<IpAddr>() {
                    endpoints.push(Endpoint {
                        ip,
                        ready,
                        ports: ports.clone(),
                    });
                }
            }
        }
    }
    Some(Service {
        name,
        namespace,
        cluster_ips,
        ports,
        endpoints,
    })
}

/// The Service an EndpointSlice belongs to, as `namespace/name`.
pub fn slice_owner(slice: &EndpointSlice) -> Option<String> {
    let ns = slice.metadata.namespace.as_deref()?;
    let svc = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(format!("{ns}/{svc}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pod_fields_are_taken_and_defaults_applied() {
        let p: K8sPod = from_json(serde_json::json!({
            "metadata": {"uid": "u1", "name": "web", "namespace": "shop",
                         "labels": {"app": "web"}, "managedFields": [{"manager": "x"}]},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"podIP": "10.0.0.2", "podIPs": [{"ip": "10.0.0.2"}, {"ip": "fd00::2"}],
                       "phase": "Running"}
        }));
        let pod = pod(&p).unwrap().unwrap();
        assert_eq!(pod.service_account, "default");
        assert_eq!(pod.node, "n1");
        assert_eq!(pod.ips.len(), 2);
        assert_eq!(pod.labels["app"], "web");
        assert!(pod.netns.is_none());
        assert_eq!(pod.workload, None, "a bare pod is its own workload");
    }

    #[test]
    fn a_deployments_pod_names_the_deployment_and_other_owners_name_themselves() {
        let owned = |kind: &str, owner: &str, hash: Option<&str>| {
            let mut labels = serde_json::Map::new();
            if let Some(h) = hash {
                labels.insert("pod-template-hash".into(), h.into());
            }
            let p: K8sPod = from_json(serde_json::json!({
                "metadata": {"uid": "u1", "name": "web-x", "namespace": "shop",
                             "generateName": "web-", "labels": labels,
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind,
                                 "name": owner, "uid": "o1", "controller": true}]},
                "status": {"podIP": "10.0.0.2"}
            }));
            pod(&p).unwrap().unwrap().workload
        };
        assert_eq!(
            owned("ReplicaSet", "web-7d9f8b6c5d", Some("7d9f8b6c5d")).as_deref(),
            Some("web")
        );
        assert_eq!(
            owned("ReplicaSet", "web-rs", None).as_deref(),
            Some("web-rs")
        );
        assert_eq!(owned("StatefulSet", "db", None).as_deref(), Some("db"));
    }

    #[test]
    fn bad_ip_is_rejected_with_its_value_and_terminated_pods_are_skipped() {
        let p: K8sPod = from_json(serde_json::json!({
            "metadata": {"uid": "u1", "name": "web", "namespace": "shop"},
            "status": {"podIPs": [{"ip": "10.0.0.300"}]}
        }));
        let err = pod(&p).unwrap_err();
        assert_eq!(err.pod, "shop/web");
        assert!(err.error.contains("10.0.0.300"), "{}", err.error);
        let done: K8sPod = from_json(serde_json::json!({
            "metadata": {"uid": "u1", "name": "job", "namespace": "shop"},
            "status": {"phase": "Succeeded"}
        }));
        assert_eq!(pod(&done).unwrap(), None);
    }

    #[test]
    fn service_joins_its_slices() {
        let svc: K8sService = from_json(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }));
        let slice: EndpointSlice = from_json(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.2"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.4"]}
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }));
        assert_eq!(slice_owner(&slice).as_deref(), Some("shop/web"));
        let s = service(&svc, &[&slice]).unwrap();
        let vip = "10.96.0.10".parse().unwrap();
        let targets = s.ready_targets(80, vip);
        assert_eq!(
            targets,
            vec![
                "10.0.0.2:8080".parse().unwrap(),
                "10.0.0.4:8080".parse().unwrap()
            ]
        );
        assert!(s.ready_targets(81, vip).is_empty());
    }
}
