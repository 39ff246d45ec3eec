//! PeerAuthentication: a mesh-wide STRICT policy with a namespace PERMISSIVE exception and a
//! workload `portLevelMtls` exception.

use serde_json::json;

use super::*;

const NO_ALLOW: &str = "allowed: no ALLOW policy applies";

/// Mesh-wide STRICT refuses plaintext everywhere (reset, the app sees nothing) but HBONE;
/// namespace `other` is PERMISSIVE; n1-p1 accepts plaintext on port 9090 only.
#[tokio::test(flavor = "multi_thread")]
async fn mesh_strict_with_namespace_and_port_exceptions() {
    let w = World::file(|_| {}).await;
    w.set_policies(vec![
        pa("istio-system", "mesh", json!({"mtls": {"mode": "STRICT"}})),
        pa("other", "relaxed", json!({"mtls": {"mode": "PERMISSIVE"}})),
        pa(
            "lab",
            "n1-p1-ports",
            json!({
                "selector": {"matchLabels": {"app": "n1-p1"}},
                "portLevelMtls": {OTHER.to_string(): {"mode": "PERMISSIVE"}},
            }),
        ),
    ]);
    let mesh = "PeerAuthentication istio-system/mesh";
    w.plain_denied("n1-p1", APP, mesh).await;
    w.plain_denied("n1-p2", OTHER, mesh).await;
    w.plain_allowed("n1-p1", OTHER, NO_ALLOW).await;
    w.plain_allowed("n2-p2", APP, NO_ALLOW).await;
    w.mesh_allowed("n2-p1", "n1-p1", APP, NO_ALLOW).await;
    w.mesh_allowed("n2-p1", "n1-p2", OTHER, NO_ALLOW).await;
    for v6 in [false, true] {
        assert_eq!(w.tester("n1-p2", APP, v6, w.fabric_ip(v6)).await, 200);
    }

    // The admin port shows each pod's resolved modes and who set them.
    let view = w.policies("n1");
    let p1 = view["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["pod"] == "lab/n1-p1")
        .unwrap_or_else(|| panic!("n1-p1 on /policies: {view:#}"));
    assert_eq!(
        p1["mtls"],
        json!([
            {"port": null, "mode": "STRICT", "origin": mesh},
            {"port": OTHER, "mode": "PERMISSIVE", "origin": "PeerAuthentication lab/n1-p1-ports"},
        ]),
        "{view:#}"
    );

    // Without the policies, the daemon default (--mtls-mode permissive) applies again.
    w.set_policies(vec![]);
    w.plain_allowed("n1-p1", APP, NO_ALLOW).await;
}
