//! Invalid policies fail closed for their scope and are reported on the admin port.

use serde_json::{json, Value};

use super::*;

/// The rejected entries of `node`'s `/policies`.
fn rejected(w: &World, node: &str) -> Vec<Value> {
    w.policies(node)["rejected"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A malformed ipBlock in an ALLOW policy and an unsupported CUSTOM action deny their whole
/// scope (never widen it), a PeerAuthentication with an unknown mode makes its namespace
/// STRICT; each is listed with its field, and fixing it opens the scope again.
#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_policy_fails_closed_and_is_reported() {
    let w = World::file(|_| {}).await;
    let bad_ip = json!({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.300"]}}]}]});
    w.set_policies(vec![ap("lab", "bad-ip", bad_ip)]);
    let by = "AuthorizationPolicy lab/bad-ip (rejected, fails closed)";
    w.mesh_denied("n2-p1", "n1-p1", APP, by).await;
    w.mesh_denied("n2-p2", "n1-p2", OTHER, by).await;
    w.plain_denied("n1-p1", APP, by).await;
    w.mesh_allowed("n1-p1", "n2-p2", APP, "allowed: no ALLOW policy applies")
        .await;
    for node in ["n1", "n2"] {
        let r = rejected(&w, node);
        assert_eq!(r.len(), 1, "{r:#?}");
        assert_eq!(
            (&r[0]["kind"], &r[0]["name"], &r[0]["field"]),
            (
                &json!("AuthorizationPolicy"),
                &json!("bad-ip"),
                &json!("spec.rules[0].from[0].source.ipBlocks[0]")
            ),
            "{r:#?}"
        );
        assert!(
            r[0]["effect"]
                .as_str()
                .unwrap_or_default()
                .contains("denied"),
            "{r:#?}"
        );
        let status: Value =
            serde_json::from_str(&w.c.lab.admin_get(node, "/status").expect("status"))
                .expect("json");
        assert_eq!(status["policies_rejected"], 1, "{status:#}");
    }
    let log = crate::support::settled_log(&w.c.lab, "n1", |l| l.contains("policy rejected"));
    assert!(log.contains("policy rejected"));

    w.set_policies(vec![
        ap(
            "other",
            "ext-authz",
            json!({"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]}),
        ),
        pa("lab", "typo", json!({"mtls": {"mode": "STRICTER"}})),
    ]);
    w.mesh_denied("n1-p1", "n2-p2", APP, "AuthorizationPolicy other/ext-authz")
        .await;
    w.plain_denied("n1-p2", APP, "PeerAuthentication lab/typo")
        .await;
    w.mesh_allowed("n2-p1", "n1-p2", APP, "allowed: no ALLOW policy applies")
        .await;
    let fields: Vec<Value> = rejected(&w, "n2")
        .iter()
        .map(|r| r["field"].clone())
        .collect();
    assert_eq!(fields, [json!("spec.action"), json!("spec.mtls.mode")]);

    w.set_policies(vec![
        ap("other", "ext-authz", json!({"rules": [{}]})),
        pa("lab", "typo", json!({"mtls": {"mode": "PERMISSIVE"}})),
    ]);
    // Same names: `set_policies` cannot tell the fix has arrived, its effect can.
    for node in ["n1", "n2"] {
        wait_until(&format!("{node} to accept the fixed policies"), || {
            rejected(&w, node).is_empty()
        });
    }
    w.mesh_allowed(
        "n1-p1",
        "n2-p2",
        APP,
        "ALLOW AuthorizationPolicy other/ext-authz matched",
    )
    .await;
    w.plain_allowed("n1-p2", APP, "allowed: no ALLOW policy applies")
        .await;
}
