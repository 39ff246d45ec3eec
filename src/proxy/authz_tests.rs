//! The live-connection registry and the texts of decisions.

use serde_json::{json, Value};

use super::*;
use crate::policy::PolicyConfig;
use crate::workload::Snapshot;

fn pod(name: &str, ip: &str) -> Pod {
    Pod {
        uid: format!("uid-{name}"),
        name: name.into(),
        namespace: "shop".into(),
        node: "n1".into(),
        ips: vec![ip.parse().unwrap()],
        ..Pod::default()
    }
}

fn deny_port(port: u16) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": format!("deny-{port}"), "namespace": "shop"},
        "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"ports": [port.to_string()]}}]}]},
    })
}

fn policy(pods: &[&Pod], istio: Vec<Value>) -> PolicySnapshot {
    let snapshot = Snapshot {
        pods: pods.iter().map(|p| (*p).clone()).collect(),
        istio,
        ..Snapshot::default()
    };
    PolicySnapshot::build(&snapshot, &PolicyConfig::default())
}

fn conn(pod: &Pod, port: u16) -> Inbound {
    Inbound {
        pod: Arc::new(pod.clone()),
        src_ip: "10.0.0.9".parse().unwrap(),
        identity: Some(std::sync::Arc::new(
            "spiffe://cluster.local/ns/web/sa/front".parse().unwrap(),
        )),
        dst: SocketAddr::new(pod.ips[0], port),
    }
}

#[tokio::test]
async fn a_policy_change_denies_only_the_connections_it_covers() {
    let a = pod("a", "10.0.0.1");
    let live = Arc::new(LiveConns::default());
    let on_80 = live.register(conn(&a, 80));
    let on_81 = live.register(conn(&a, 81));
    assert_eq!(live.len(), 2);

    assert_eq!(live.reevaluate(&policy(&[&a], vec![])), 0);
    assert_eq!(live.reevaluate(&policy(&[&a], vec![deny_port(80)])), 1);
    let decision = on_80.denied().await;
    assert!(!decision.allowed);
    assert_eq!(
        denial(&decision),
        "denied by AuthorizationPolicy shop/deny-80 (DENY matched)"
    );
    // Told once: a second evaluation does not count it again.
    assert_eq!(live.reevaluate(&policy(&[&a], vec![deny_port(80)])), 0);
    // The evaluation told the denied at once: one poll shows who was not told.
    let mut still_open = on_81.denied();
    let pending = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(
            std::future::Future::poll(std::pin::Pin::new(&mut still_open), cx).is_pending(),
        )
    })
    .await;
    assert!(pending, "port 81 must stay open");

    drop(on_80);
    drop(on_81);
    assert!(live.is_empty());
}

#[tokio::test]
async fn follow_reevaluates_on_every_new_snapshot() {
    let a = pod("a", "10.0.0.1");
    let live = Arc::new(LiveConns::default());
    let (tx, rx) = watch::channel(Arc::new(policy(&[&a], vec![])));
    let follower = tokio::spawn(live.clone().follow(rx));
    let reg = live.register(conn(&a, 80));
    tx.send_replace(Arc::new(policy(&[&a], vec![deny_port(80)])));
    let decision = tokio::time::timeout(std::time::Duration::from_secs(5), reg.denied())
        .await
        .expect("denied after the change");
    assert_eq!(
        decision.policy.map(|p| p.to_string()).as_deref(),
        Some("AuthorizationPolicy shop/deny-80")
    );
    drop(tx);
    follower.await.expect("follower ends with its sender");
}

#[test]
fn texts_name_the_deciding_policy() {
    let a = pod("a", "10.0.0.1");
    let allow_other = json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "only-db", "namespace": "shop"},
        "spec": {"rules": [{"from": [{"source": {"namespaces": ["db"]}}]}]},
    });
    let snap = policy(&[&a], vec![allow_other]);
    let c = conn(&a, 80);
    let d = snap.decide(&a, &c.info());
    assert_eq!(
        denial(&d),
        "denied: ALLOW policies apply (1) and none matched"
    );
    let plain = Inbound {
        identity: None,
        ..c.clone()
    };
    let strict = PolicySnapshot::build(
        &Snapshot {
            pods: vec![a.clone()],
            ..Snapshot::default()
        },
        &PolicyConfig {
            default_mtls: crate::policy::MtlsMode::Strict,
            ..PolicyConfig::default()
        },
    );
    let d = strict.decide(&a, &plain.info());
    assert_eq!(
        denial(&d),
        "denied by daemon default --mtls-mode strict (plaintext refused: mTLS STRICT)"
    );
    let none = policy(&[&a], vec![]);
    assert_eq!(
        none.decide(&a, &c.info()).summary(),
        "allowed: no ALLOW policy applies"
    );
}
