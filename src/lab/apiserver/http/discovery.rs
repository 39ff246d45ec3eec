//! Discovery documents of the stand-in (`/`, `/version`, `/api`, `/apis`, `/api/v1`,
//! `/apis/{group}[/{version}]`), built from the resource table so that they list exactly what
//! is served.

use serde_json::{json, Value};

use super::super::{RESOURCES, VERSION};

pub(super) fn root_paths() -> Value {
    let mut paths = vec!["/api".to_string(), "/api/v1".into(), "/apis".into()];
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        for p in [
            format!("/apis/{}", r.group),
            format!("/apis/{}", r.api_version()),
        ] {
            if !paths.contains(&p) {
                paths.push(p);
            }
        }
    }
    paths.extend([
        "/healthz".into(),
        "/livez".into(),
        "/readyz".into(),
        "/version".into(),
    ]);
    json!({ "paths": paths })
}

pub(super) fn version() -> Value {
    let (major, minor) = VERSION;
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{major}.{minor}.0-ambit-standin"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "none (ambit stand-in API server)",
        "compiler": "rustc",
        "platform": format!("linux/{}", std::env::consts::ARCH),
    })
}

pub(super) fn api_versions(host: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
    })
}

/// Groups other than core, in table order.
fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    groups
}

pub(super) fn api_group(group: &str) -> Option<Value> {
    let versions: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && !group.is_empty())
        .map(|r| json!({"groupVersion": r.api_version(), "version": r.version}))
        .fold(Vec::new(), |mut acc, v| {
            if !acc.contains(&v) {
                acc.push(v);
            }
            acc
        });
    let preferred = versions.first()?.clone();
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": versions,
        "preferredVersion": preferred,
    }))
}

pub(super) fn api_group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .filter_map(api_group)
        .map(|mut g| {
            if let Some(m) = g.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            g
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub(super) fn resource_list(group: &str, version: &str) -> Value {
    const VERBS: [&str; 8] = [
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ];
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "shortNames": r.short_names,
        }));
        if matches!(r.kind, "Pod" | "Namespace" | "Service") {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}
