//! The engine end to end: resources as `kubectl get -o json` prints them, a workload snapshot,
//! and the decision for connections. Many cases are Istio's documented examples (istio.io
//! reference `authorization-policy`, tasks `authz-deny`, `authz-tcp`, `authz-ip`,
//! `authentication/mtls-migration`).

mod authz;
mod invalid;
mod mtls;
mod scope;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{json, Value};

use super::*;
use crate::identity::Identity;
use crate::workload::{Namespace, Pod, Snapshot};

/// The snapshot is shared between the control and data runtimes.
#[test]
fn snapshot_and_decision_cross_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<PolicySnapshot>();
    shared::<Decision>();
}

/// An AuthorizationPolicy object.
fn ap(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

/// A PeerAuthentication object.
fn pa(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": spec,
    })
}

/// A pod `ns/name` with `ip`, service account `name`, and `labels`.
fn pod(ns: &str, name: &str, ip: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        uid: format!("{ns}/{name}"),
        name: name.into(),
        namespace: ns.into(),
        service_account: name.into(),
        node: "n1".into(),
        ips: vec![ip.parse().unwrap()],
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Pod::default()
    }
}

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
}

/// The standard world: pods `foo/web` (app=web, 10.0.1.1), `foo/db` (app=db, 10.0.1.2),
/// `bar/client` (10.0.2.1), plus `resources`.
fn world(resources: Vec<Value>) -> (Snapshot, PolicySnapshot) {
    world_with(resources, &PolicyConfig::default(), BTreeMap::new())
}

fn world_with(
    resources: Vec<Value>,
    config: &PolicyConfig,
    foo_labels: BTreeMap<String, String>,
) -> (Snapshot, PolicySnapshot) {
    let snapshot = Snapshot {
        namespaces: vec![
            Namespace {
                name: "foo".into(),
                labels: foo_labels,
            },
            Namespace {
                name: "bar".into(),
                labels: BTreeMap::new(),
            },
        ],
        pods: vec![
            pod("foo", "web", "10.0.1.1", &[("app", "web")]),
            pod("foo", "db", "10.0.1.2", &[("app", "db")]),
            pod("bar", "client", "10.0.2.1", &[("app", "client")]),
        ],
        istio: resources,
        ..Snapshot::default()
    };
    let policies = PolicySnapshot::build(&snapshot, config);
    (snapshot, policies)
}

fn find<'a>(s: &'a Snapshot, key: &str) -> &'a Pod {
    s.pods.iter().find(|p| p.key() == key).unwrap()
}

/// Decides a connection from `from` (an identity `ns/sa`, or `None` for plaintext) at
/// `src_ip` to pod `to` (`ns/name`) on `port`.
fn decide(
    w: &(Snapshot, PolicySnapshot),
    from: Option<(&str, &str)>,
    src_ip: &str,
    to: &str,
    port: u16,
) -> Decision {
    let dst = find(&w.0, to);
    let identity = from.map(|(ns, sa)| id(ns, sa));
    w.1.decide(
        dst,
        &ConnInfo {
            src_ip: src_ip.parse::<IpAddr>().unwrap(),
            src_identity: identity.as_ref(),
            dst_ip: dst.ips[0],
            dst_port: port,
        },
    )
}

/// Shorthand: is an mTLS connection from `ns/sa` (at 10.0.2.1) to `to:port` allowed?
fn allowed(w: &(Snapshot, PolicySnapshot), ns: &str, sa: &str, to: &str, port: u16) -> bool {
    decide(w, Some((ns, sa)), "10.0.2.1", to, port).allowed
}

/// Shorthand: is plaintext from `src_ip` to `to:port` allowed?
fn plain(w: &(Snapshot, PolicySnapshot), src_ip: &str, to: &str, port: u16) -> bool {
    decide(w, None, src_ip, to, port).allowed
}

/// `resources` lists what is in force, rejected stand-ins included, and nothing ignored.
#[test]
fn resources_lists_what_is_in_force() {
    let (_, p) = world(vec![
        ap("foo", "b-allow", json!({"rules": [{}]})),
        ap("foo", "a-bad", json!({"action": "ALOW"})),
        pa("foo", "strict", json!({"mtls": {"mode": "STRICT"}})),
        pa("bar", "bad-pa", json!({"mtls": {"mode": "STRICTER"}})),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "foo"}}),
    ]);
    assert_eq!(
        p.resources(),
        [
            "AuthorizationPolicy foo/a-bad",
            "AuthorizationPolicy foo/b-allow",
            "PeerAuthentication bar/bad-pa",
            "PeerAuthentication foo/strict",
        ]
    );
    assert_eq!(p.rejected().len(), 3, "{:?}", p.rejected());
}
