//! AuthorizationPolicy: namespace-wide deny-all and allow-nothing, sources by namespace,
//! principal and IP block, ports, and a workload selector.

use serde_json::json;

use super::*;

const NO_ALLOW: &str = "allowed: no ALLOW policy applies";

/// deny-all (`DENY` with `rules: [{}]`) and allow-nothing (`spec: {}`) in namespace `lab`
/// refuse everything to its pods — HBONE with 401, plaintext with a reset — and nothing to the
/// pod of namespace `other`; removing them opens everything again.
#[tokio::test(flavor = "multi_thread")]
async fn deny_all_and_allow_nothing_in_a_namespace() {
    let w = World::file(|_| {}).await;
    w.set_policies(vec![ap(
        "lab",
        "deny-all",
        json!({"action": "DENY", "rules": [{}]}),
    )]);
    let by = "AuthorizationPolicy lab/deny-all";
    w.mesh_denied("n2-p1", "n1-p1", APP, by).await;
    w.plain_denied("n1-p1", APP, by).await;
    for v6 in [false, true] {
        assert_eq!(w.tester("n1-p2", OTHER, v6, w.fabric_ip(v6)).await, 401);
    }
    assert_eq!(w.app_saw("n1-p2", OTHER, w.fabric_ip(false)), 0);
    w.mesh_allowed("n1-p1", "n2-p2", APP, NO_ALLOW).await;
    let series = format!("ambit_policy_denials_total{{policy=\"{by}\"}}");
    assert!(w.c.metric("n1", &series) >= 6.0, "{series} on n1");

    w.set_policies(vec![ap("lab", "allow-nothing", json!({}))]);
    let none = "ALLOW policies apply (1) and none matched";
    w.mesh_denied("n2-p1", "n1-p2", APP, none).await;
    w.plain_denied("n1-p2", OTHER, none).await;
    w.mesh_allowed("n1-p1", "n2-p2", OTHER, NO_ALLOW).await;

    w.set_policies(vec![]);
    w.mesh_allowed("n2-p1", "n1-p1", APP, NO_ALLOW).await;
    w.plain_allowed("n1-p2", APP, NO_ALLOW).await;
}

/// ALLOW from one namespace; ALLOW one principal to one port; DENY one port from everyone.
#[tokio::test(flavor = "multi_thread")]
async fn namespaces_principals_and_ports() {
    let w = World::file(|_| {}).await;
    let from_other = json!({"rules": [{"from": [{"source": {"namespaces": ["other"]}}]}]});
    w.set_policies(vec![ap("lab", "from-other", from_other)]);
    w.mesh_allowed(
        "n2-p2",
        "n1-p1",
        APP,
        "ALLOW AuthorizationPolicy lab/from-other matched",
    )
    .await;
    let none = "ALLOW policies apply (1) and none matched";
    w.mesh_denied("n2-p1", "n1-p1", APP, none).await;
    // Plaintext has no namespace, so a namespace rule never admits it.
    w.plain_denied("n1-p1", APP, none).await;

    let one = json!({"rules": [{
        "from": [{"source": {"principals": [principal("lab", "n2-p1")]}}],
        "to": [{"operation": {"ports": [APP.to_string()]}}],
    }]});
    w.set_policies(vec![ap("lab", "n2-p1-to-app", one)]);
    let matched = "ALLOW AuthorizationPolicy lab/n2-p1-to-app matched";
    w.mesh_allowed("n2-p1", "n1-p1", APP, matched).await;
    w.mesh_denied("n2-p1", "n1-p1", OTHER, none).await;
    w.mesh_denied("n2-p2", "n1-p1", APP, none).await;
    assert_eq!(w.tester("n1-p1", APP, false, w.fabric_ip(false)).await, 401);

    let port = json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": [OTHER.to_string()]}}]}]});
    w.set_policies(vec![ap("lab", "deny-other-port", port)]);
    let by = "AuthorizationPolicy lab/deny-other-port";
    w.mesh_denied("n2-p1", "n1-p1", OTHER, by).await;
    w.mesh_denied("n2-p2", "n1-p2", OTHER, by).await;
    w.plain_denied("n1-p1", OTHER, by).await;
    w.mesh_allowed("n2-p1", "n1-p1", APP, NO_ALLOW).await;
    w.plain_allowed("n1-p1", APP, NO_ALLOW).await;
    // The pod of namespace `other` is not in the policy's scope.
    w.plain_allowed("n2-p2", OTHER, NO_ALLOW).await;
}

/// ipBlocks and notIpBlocks match the verified source address (for HBONE the outer
/// connection's peer, never the `forwarded` claim); a selector covers one pod, not its
/// neighbour.
#[tokio::test(flavor = "multi_thread")]
async fn ip_blocks_and_a_workload_selector() {
    let w = World::file(|_| {}).await;
    let n2p1 = |v6| format!("{}/{}", w.ip("n2-p1", v6), if v6 { 128 } else { 32 });
    let only = json!({"rules": [{"from": [{"source": {"ipBlocks": [n2p1(false), n2p1(true)]}}]}]});
    w.set_policies(vec![ap("lab", "only-n2-p1", only)]);
    w.mesh_allowed(
        "n2-p1",
        "n1-p1",
        APP,
        "ALLOW AuthorizationPolicy lab/only-n2-p1 matched",
    )
    .await;
    let none = "ALLOW policies apply (1) and none matched";
    w.mesh_denied("n2-p2", "n1-p1", APP, none).await;
    w.plain_denied("n1-p2", APP, none).await;
    for v6 in [false, true] {
        // Claiming n2-p1's address in `forwarded` does not help.
        assert_eq!(w.tester("n1-p1", APP, v6, w.ip("n2-p1", v6)).await, 401);
    }

    let fabric = |v6| format!("{}/{}", w.fabric_ip(v6), if v6 { 128 } else { 32 });
    let not_fabric = json!({"action": "DENY", "rules": [{"from": [{"source":
        {"notIpBlocks": [fabric(false), fabric(true)]}}]}]});
    w.set_policies(vec![ap("lab", "fabric-only", not_fabric)]);
    w.plain_allowed("n1-p1", APP, NO_ALLOW).await;
    w.mesh_denied("n2-p1", "n1-p1", APP, "AuthorizationPolicy lab/fabric-only")
        .await;
    for v6 in [false, true] {
        assert_eq!(w.tester("n1-p2", APP, v6, w.ip("n2-p1", v6)).await, 200);
    }

    let p1 =
        json!({"selector": {"matchLabels": {"app": "n1-p1"}}, "action": "DENY", "rules": [{}]});
    w.set_policies(vec![ap("lab", "deny-n1-p1", p1)]);
    let by = "AuthorizationPolicy lab/deny-n1-p1";
    w.mesh_denied("n2-p1", "n1-p1", APP, by).await;
    w.plain_denied("n1-p1", OTHER, by).await;
    w.mesh_allowed("n2-p1", "n1-p2", APP, NO_ALLOW).await;
    w.plain_allowed("n1-p2", OTHER, NO_ALLOW).await;
}
