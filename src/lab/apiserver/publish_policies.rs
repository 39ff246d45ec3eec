//! Publishing a workload snapshot's `istio` list (AuthorizationPolicy, PeerAuthentication) to
//! the stand-in, so a `--kube` lab enforces the same policies as a file lab.
//!
//! Each object is published as written: its `spec` is the snapshot's exactly (a changed policy
//! is patched so that fields it no longer has are removed, not merged). An entry that is not
//! one of the two kinds, or has no name or namespace, cannot be an API object and is not
//! published; a file lab would report it, the API server would never have accepted it.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::publish::DesiredObject;
use crate::k8s::policies::{KINDS, VERSION};
use crate::policy::API_GROUP;
use crate::workload::Snapshot;

/// Resource id (`security.istio.io/v1/<plural>`) of a policy kind, `None` for other kinds.
pub(super) fn resource_of(kind: &str) -> Option<String> {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, plural)| format!("{API_GROUP}/{VERSION}/{plural}"))
}

/// Whether `resource` is one of the policy kinds (whose `spec` is replaced, not merged).
pub(super) fn is_policy(resource: &str) -> bool {
    KINDS
        .iter()
        .any(|(_, plural)| resource == format!("{API_GROUP}/{VERSION}/{plural}"))
}

/// The policy objects of `snapshot` (a `kind: List` is unpacked).
pub(super) fn policy_objects(snapshot: &Snapshot) -> Vec<DesiredObject> {
    let mut out = Vec::new();
    for value in &snapshot.istio {
        match value.get("items").and_then(Value::as_array) {
            Some(items) if kind(value).ends_with("List") => {
                out.extend(items.iter().filter_map(policy_object))
            }
            _ => out.extend(policy_object(value)),
        }
    }
    out
}

fn kind(value: &Value) -> &str {
    value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn policy_object(value: &Value) -> Option<DesiredObject> {
    let resource = resource_of(kind(value))?;
    let meta = value.get("metadata");
    let text = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    let strings = |k: &str| -> BTreeMap<String, String> {
        meta.and_then(|m| m.get(k))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    };
    let (name, namespace) = (text("name")?, text("namespace")?);
    Some(DesiredObject {
        resource,
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid: None,
        labels: strings("labels"),
        annotations: strings("annotations"),
        fields: json!({
            "apiVersion": format!("{API_GROUP}/{VERSION}"),
            "kind": kind(value),
            "spec": value.get("spec").cloned().unwrap_or_else(|| json!({})),
        }),
    })
}

/// The JSON merge patch that turns `existing` into exactly `desired`: members `desired` lacks
/// are removed (`null`), objects are patched member by member, everything else replaced.
pub(super) fn exact_patch(existing: Option<&Value>, desired: &Value) -> Value {
    match (existing, desired) {
        (Some(Value::Object(old)), Value::Object(new)) => {
            let mut patch = Map::new();
            for k in old.keys().filter(|k| !new.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            for (k, v) in new {
                if old.get(k) != Some(v) {
                    patch.insert(k.clone(), exact_patch(old.get(k), v));
                }
            }
            Value::Object(patch)
        }
        _ => desired.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::merge_patch;
    use super::*;

    #[test]
    fn exact_patch_removes_what_the_new_spec_lacks() {
        let old = json!({"action": "DENY", "rules": [{"to": []}], "selector": {"matchLabels": {"a": "1", "b": "2"}}});
        let new = json!({"rules": [{}], "selector": {"matchLabels": {"a": "1"}}});
        let mut merged = old.clone();
        merge_patch(&mut merged, &exact_patch(Some(&old), &new));
        assert_eq!(merged, new);
    }

    #[test]
    fn only_named_policies_of_the_two_kinds_are_published() {
        let ap = json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                        "metadata": {"name": "a", "namespace": "lab", "labels": {"x": "y"}},
                        "spec": {"action": "DENY", "rules": [{}]}});
        let list = json!({"kind": "List", "items": [
            {"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
             "metadata": {"name": "p", "namespace": "lab"}},
            {"kind": "ConfigMap", "metadata": {"name": "c", "namespace": "lab"}},
            {"kind": "AuthorizationPolicy", "metadata": {"name": "no-namespace"}},
        ]});
        let snapshot = Snapshot {
            istio: vec![ap, list],
            ..Snapshot::default()
        };
        let objects = policy_objects(&snapshot);
        let names: Vec<(&str, &str)> = objects
            .iter()
            .map(|o| (o.resource.as_str(), o.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("security.istio.io/v1/authorizationpolicies", "a"),
                ("security.istio.io/v1/peerauthentications", "p"),
            ]
        );
        assert_eq!(objects[0].labels["x"], "y");
        assert_eq!(objects[1].fields["spec"], json!({}));
        assert_eq!(objects[1].fields["apiVersion"], "security.istio.io/v1");
        assert!(is_policy(&objects[0].resource) && !is_policy("v1/pods"));
    }
}
