//! The same enforcement with policies from the (stand-in) Kubernetes API server, and a
//! rejected policy reported as a Warning Event on the policy object.

use serde_json::{json, Value};

use super::*;
use crate::support::wait_until_within;

/// Policies published to the API server are enforced (HBONE 401, plaintext reset), removed
/// they stop; an invalid one fails closed and gets a `PolicyRejected` Warning Event naming
/// the field.
#[tokio::test(flavor = "multi_thread")]
async fn policies_from_the_api_server_are_enforced_and_rejections_become_events() {
    let w = World::kube().await;
    let deny = json!({"selector": {"matchLabels": {"app": "n1-p1"}}, "action": "DENY",
                      "rules": [{"to": [{"operation": {"ports": [APP.to_string()]}}]}]});
    w.set_policies(vec![ap("lab", "deny-n1-p1-app", deny)]);
    let (status, object) = w.c.api(
        "GET",
        "/apis/security.istio.io/v1/namespaces/lab/authorizationpolicies/deny-n1-p1-app",
        None,
    );
    assert_eq!(status, 200, "{object:#}");
    let by = "AuthorizationPolicy lab/deny-n1-p1-app";
    w.mesh_denied("n2-p1", "n1-p1", APP, by).await;
    w.plain_denied("n1-p1", APP, by).await;
    let allowed = "allowed: no ALLOW policy applies";
    w.mesh_allowed("n2-p1", "n1-p1", OTHER, allowed).await;
    w.mesh_allowed("n2-p2", "n1-p2", APP, allowed).await;

    let bad = json!({"rules": [{"to": [{"operation": {"ports": ["80800"]}}]}]});
    w.set_policies(vec![ap("lab", "bad-port", bad)]);
    let by = "AuthorizationPolicy lab/bad-port (rejected, fails closed)";
    w.mesh_denied("n2-p2", "n1-p2", APP, by).await;
    w.plain_denied("n2-p1", OTHER, by).await;
    let event = |e: &Value| {
        let about = if e["regarding"].is_object() {
            &e["regarding"]
        } else {
            &e["involvedObject"]
        };
        e["reason"] == "PolicyRejected"
            && about["kind"] == "AuthorizationPolicy"
            && about["name"] == "bad-port"
    };
    wait_until("a PolicyRejected Warning Event on lab/bad-port", || {
        w.c.api_events("lab").iter().any(event)
    });
    let events = w.c.api_events("lab");
    let found = events.iter().find(|e| event(e)).expect("event");
    let note = found["note"]
        .as_str()
        .or(found["message"].as_str())
        .unwrap_or_default();
    assert!(
        note.contains("spec.rules[0].to[0].operation.ports[0]"),
        "{found:#}"
    );
    assert_eq!(found["type"], "Warning", "{found:#}");

    w.set_policies(vec![]);
    w.mesh_allowed("n2-p1", "n1-p1", APP, allowed).await;
    w.plain_allowed("n1-p2", APP, allowed).await;
}

/// The Istio CRDs going away and coming back: while `security.istio.io` is not served (the
/// stand-in answers `404`, as a real API server does for a CRD that is not installed), the
/// daemons hold no policies and traffic flows; once it is served again they list the policies
/// (after the watch's backoff) and enforce them, with no daemon restart.
#[tokio::test(flavor = "multi_thread")]
async fn policies_are_picked_up_when_the_crds_appear() {
    let w = World::kube().await;
    let deny = json!({"selector": {"matchLabels": {"app": "n1-p1"}}, "action": "DENY",
                      "rules": [{"to": [{"operation": {"ports": [APP.to_string()]}}]}]});
    w.set_policies(vec![ap("lab", "deny-n1-p1-app", deny)]);
    let by = "AuthorizationPolicy lab/deny-n1-p1-app";
    w.mesh_denied("n2-p1", "n1-p1", APP, by).await;

    let group = "security.istio.io";
    let (status, reply) = w.c.api(
        "POST",
        &format!("/standin/withdraw-group?group={group}"),
        None,
    );
    assert_eq!(status, 200, "{reply:#}");
    let listed = |node: &str| -> usize {
        let view = w.policies(node);
        view["resources"].as_array().map_or(0, Vec::len)
    };
    for node in w.c.lab.nodes() {
        wait_until(
            &format!("{} to drop the unserved policies", node.name),
            || listed(&node.name) == 0,
        );
    }
    let allowed = "allowed: no ALLOW policy applies";
    w.mesh_allowed("n2-p1", "n1-p1", APP, allowed).await;
    w.plain_allowed("n1-p1", APP, allowed).await;

    let (status, reply) = w.c.api(
        "POST",
        &format!("/standin/restore-group?group={group}"),
        None,
    );
    assert_eq!(status, 200, "{reply:#}");
    // The daemon lists an absent kind again after a pause that grows to `CRD_RETRY_MAX`.
    let backoff = ambit::config::CRD_RETRY_MAX * 2 + DEADLINE;
    for node in w.c.lab.nodes() {
        let what = format!("{} to list the served policy again", node.name);
        wait_until_within(backoff, &what, || listed(&node.name) == 1);
    }
    w.mesh_denied("n2-p1", "n1-p1", APP, by).await;
    w.plain_denied("n1-p1", APP, by).await;
}
