//! mTLS modes of a namespace: strict refuses plaintext, permissive (the default) accepts it.

use super::*;

/// g: in a namespace labelled `ambit.io/mtls-mode=strict`, plaintext to a pod is refused
/// (closed without data, never reaching the app, flow error naming strict mode) while HBONE
/// from another pod still works.
#[tokio::test(flavor = "multi_thread")]
async fn strict_mode_refuses_plaintext() {
    let c = Cluster::start(2, 1, "iptables", |s| {
        let ns = s
            .namespaces
            .iter_mut()
            .find(|n| n.name == "lab")
            .expect("namespace lab");
        ns.labels.insert(MTLS_MODE_LABEL.into(), "strict".into());
    });
    let w = World::start(c).await;
    // The refusal is a reset, which may arrive before `connect` returns.
    let fabric_ip = w.c.lab.fabric_ipv4().into();
    let Attempt { local, seen } =
        try_echo(&w.fabric(), fabric_ip, w.c.v4("n1-p1"), b"plaintext").await;
    assert!(
        matches!(seen, Seen::Reset | Seen::Closed),
        "fabric -> n1-p1 in plaintext: connection not closed without data: {seen:?}"
    );
    let f = w.c.wait_flow("n1", |f| {
        f["src"] == local.to_string() && f["error"].is_string()
    });
    assert!(is(&f, "inbound"), "{f:#}");
    assert!(error_of(&f).contains("strict"), "{f:#}");
    assert!(
        w.server("n1-p1").accepted().is_empty(),
        "the app saw a connection: {:?}",
        w.server("n1-p1").accepted()
    );

    let local = w
        .send(
            "n2-p1",
            w.c.v4("n1-p1"),
            &ambit::lab::traffic::pattern(50_000),
        )
        .await;
    w.wait_served("n1-p1", w.ip("n2-p1", false)).await;
    let out = w.c.wait_flow("n2", |f| f["src"] == local.to_string());
    assert_eq!(out["route"], "hbone", "{out:#}");
    let inbound = w.c.wait_flow("n1", |f| {
        is(f, "hbone") && f["src"] == local.to_string() && f["finished"] == true
    });
    assert_eq!(inbound["error"], Value::Null, "{inbound:#}");
    assert_eq!(
        inbound["peer_identity"],
        identity_of("n2-p1"),
        "{inbound:#}"
    );
}

/// g: without the label (permissive, the default), plaintext from outside the mesh reaches
/// the pod through the inbound listener.
#[tokio::test(flavor = "multi_thread")]
async fn permissive_mode_accepts_plaintext() {
    let w = World::start(Cluster::start(2, 1, "iptables", |_| {})).await;
    let payload = ambit::lab::traffic::pattern(50_000);
    let ex = exchange(&w.fabric(), w.c.v4("n1-p1"), &payload, DEADLINE)
        .await
        .expect("plaintext exchange from the fabric");
    assert!(ex.reply == payload, "echo differs");
    w.wait_served("n1-p1", w.c.lab.fabric_ipv4().into()).await;
    let f = w.c.wait_flow("n1", |f| f["src"] == ex.local.to_string());
    assert!(is(&f, "inbound"), "{f:#}");
    assert_eq!(f["route"], "app", "{f:#}");
    assert_eq!(f["error"], Value::Null, "{f:#}");
}
