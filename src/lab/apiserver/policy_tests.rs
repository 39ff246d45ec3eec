//! The stand-in serves Istio's security kinds, and the Kubernetes source turns them into the
//! workload snapshot's `istio` list, which the policy engine enforces.

use std::time::Duration;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use serde_json::json;

use super::publish::client_from_kubeconfig;
use super::*;
use crate::identity::Identity;
use crate::k8s::policies::{KINDS, VERSION};
use crate::policy::{ConnInfo, PolicyConfig, PolicySnapshot, API_GROUP};
use crate::workload::file::SourceState;
use crate::workload::Pod;

/// How long the source may take to reflect a change.
const DEADLINE: Duration = Duration::from_secs(20);

async fn client(server: &ApiServer, tag: &str) -> kube::Client {
    let dir =
        std::env::temp_dir().join(format!("ambit-standin-policy-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    write_kubeconfig(&path, &server.url()).unwrap();
    let client = client_from_kubeconfig(&path).await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
    client
}

fn api(client: &kube::Client, kind_index: usize, ns: &str) -> Api<DynamicObject> {
    let (kind, plural) = KINDS[kind_index];
    let gvk = GroupVersionKind::gvk(API_GROUP, VERSION, kind);
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

fn object(kind: &str, name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": format!("{API_GROUP}/{VERSION}"),
        "kind": kind,
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }))
    .unwrap()
}

/// Waits (with [`DEADLINE`]) until the source's state satisfies `done`.
async fn until(
    rx: &mut tokio::sync::watch::Receiver<SourceState>,
    what: &str,
    done: impl Fn(&SourceState) -> bool,
) -> SourceState {
    let waited = tokio::time::timeout(DEADLINE, async {
        rx.wait_for(|s| s.synced && done(s))
            .await
            .map(|s| s.clone())
    })
    .await;
    match waited {
        Ok(state) => state.expect("source gone"),
        Err(_) => panic!(
            "timed out waiting for {what}: {:?}",
            rx.borrow().snapshot.istio
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_istio_security_kinds() {
    let server = ApiServer::start("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let c = client(&server, "serve").await;
    let aps = api(&c, 0, "shop");
    aps.create(
        &PostParams::default(),
        &object(
            "AuthorizationPolicy",
            "deny-all",
            json!({"action": "DENY", "rules": [{}]}),
        ),
    )
    .await
    .unwrap();
    let listed = aps.list(&Default::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].data["spec"]["action"], "DENY");
    let resources = c
        .list_api_group_resources("security.istio.io/v1")
        .await
        .unwrap();
    let names: Vec<&str> = resources
        .resources
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, ["authorizationpolicies", "peerauthentications"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_source_delivers_policies_to_the_engine() {
    let server = ApiServer::start("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let c = client(&server, "source").await;
    let mut rx = crate::k8s::source::watch_cluster(c.clone(), "n1");
    until(&mut rx, "first sync", |s| s.snapshot.istio.is_empty()).await;

    let aps = api(&c, 0, "shop");
    let pas = api(&c, 1, "shop");
    aps.create(
        &PostParams::default(),
        &object(
            "AuthorizationPolicy",
            "deny-22",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["22"]}}]}]}),
        ),
    )
    .await
    .unwrap();
    pas.create(
        &PostParams::default(),
        &object(
            "PeerAuthentication",
            "strict",
            json!({"mtls": {"mode": "STRICT"}}),
        ),
    )
    .await
    .unwrap();
    let state = until(&mut rx, "both policies", |s| s.snapshot.istio.len() == 2).await;

    let policies = PolicySnapshot::build(&state.snapshot, &PolicyConfig::default());
    assert!(policies.rejected().is_empty(), "{:?}", policies.rejected());
    let web = Pod {
        uid: "u1".into(),
        name: "web".into(),
        namespace: "shop".into(),
        ips: vec!["10.0.0.2".parse().unwrap()],
        ..Pod::default()
    };
    let client_id = Identity::new("cluster.local", "other", "client").unwrap();
    let allowed = |port, id: Option<&Identity>| {
        let conn = ConnInfo {
            src_ip: "10.0.0.9".parse().unwrap(),
            src_identity: id,
            dst_ip: web.ips[0],
            dst_port: port,
        };
        policies.decide(&web, &conn).allowed
    };
    assert!(!allowed(22, Some(&client_id)));
    assert!(allowed(80, Some(&client_id)));
    assert!(!allowed(80, None), "STRICT refuses plaintext");

    aps.delete("deny-22", &DeleteParams::default())
        .await
        .unwrap();
    let state = until(&mut rx, "the deletion", |s| s.snapshot.istio.len() == 1).await;
    assert_eq!(state.snapshot.istio[0]["kind"], "PeerAuthentication");
    server.shutdown().await;
}
