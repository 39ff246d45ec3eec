//! Bad input: each rejected resource is listed with its field, and never widens access.

use super::*;

/// The single rejection of `w`.
fn only_rejection(w: &(Snapshot, PolicySnapshot)) -> &RejectedPolicy {
    assert_eq!(w.1.rejected().len(), 1, "{:?}", w.1.rejected());
    &w.1.rejected()[0]
}

#[test]
fn invalid_allow_or_deny_fails_closed_for_its_selector() {
    let web = json!({"app": "web"});
    let cases = [
        (
            json!({"selector": {"matchLabels": web}, "action": "PERMIT", "rules": [{}]}),
            "spec.action",
        ),
        (
            json!({"selector": {"matchLabels": web}, "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/40"]}}]}]}),
            "spec.rules[0].from[0].source.ipBlocks[0]",
        ),
        (
            json!({"selector": {"matchLabels": web}, "rules": [{"to": [{"operation": {"ports": ["65536"]}}]}]}),
            "spec.rules[0].to[0].operation.ports[0]",
        ),
        (
            json!({"selector": {"matchLabels": web}, "action": "DENY", "rules": [{"to": [{"operation": {"notPort": ["1"]}}]}]}),
            "spec.rules[0]",
        ),
        (
            json!({"selector": {"matchLabels": web}, "rules": [{}], "extra": true}),
            "spec",
        ),
    ];
    for (spec, field) in cases {
        let w = world(vec![ap("foo", "broken", spec.clone())]);
        let r = only_rejection(&w);
        assert_eq!(
            (r.kind.as_str(), r.namespace.as_str(), r.name.as_str()),
            ("AuthorizationPolicy", "foo", "broken")
        );
        assert_eq!(r.field, field, "{spec}");
        assert_eq!(
            r.effect,
            "every connection denied to workloads of namespace foo labelled app=web"
        );
        let d = decide(&w, Some(("foo", "db")), "10.0.1.2", "foo/web", 80);
        assert!(!d.allowed, "{spec}");
        assert!(
            matches!(&d.reason, Reason::InvalidPolicy(why) if why.contains(field) && why.contains("denies its scope")),
            "{d}"
        );
        assert_eq!(d.policy.unwrap().name, "broken");
        assert!(
            allowed(&w, "bar", "client", "foo/db", 80),
            "the neighbour is not covered"
        );
    }
}

#[test]
fn custom_is_rejected_loudly_and_fails_closed() {
    let w = world(vec![ap(
        "foo",
        "ext-authz",
        json!({"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]}),
    )]);
    let r = only_rejection(&w);
    assert_eq!(r.field, "spec.action");
    assert!(r.reason.contains("not supported"), "{r:?}");
    assert!(!allowed(&w, "bar", "client", "foo/web", 80));
    assert!(!allowed(&w, "bar", "client", "foo/db", 80));
    assert!(allowed(&w, "foo", "web", "bar/client", 80));
}

#[test]
fn an_invalid_audit_policy_is_only_reported() {
    let w = world(vec![ap(
        "foo",
        "audit",
        json!({"action": "AUDIT", "rules": [{"to": [{"operation": {"ports": ["x"]}}]}]}),
    )]);
    assert_eq!(
        only_rejection(&w).effect,
        "ignored (an AUDIT policy only logs)"
    );
    assert!(allowed(&w, "bar", "client", "foo/web", 80));
}

#[test]
fn an_invalid_dry_run_policy_is_only_reported() {
    let mut dry = ap(
        "foo",
        "dry",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["x"]}}]}]}),
    );
    dry["metadata"]["annotations"] = json!({"istio.io/dry-run": "true"});
    let w = world(vec![dry]);
    assert_eq!(
        only_rejection(&w).effect,
        "ignored (a dry-run policy is not enforced)"
    );
    assert!(allowed(&w, "bar", "client", "foo/web", 80));
}

#[test]
fn deny_without_rules_is_rejected_and_fails_closed() {
    // Istio's webhook refuses it; ztunnel would ignore it. ambit denies its scope.
    let w = world(vec![ap("foo", "deny-nothing", json!({"action": "DENY"}))]);
    assert_eq!(only_rejection(&w).field, "spec.rules");
    assert!(!allowed(&w, "bar", "client", "foo/web", 80));
}

#[test]
fn target_refs_fail_closed_for_what_they_target() {
    let mut snap = world(vec![]).0;
    snap.services.push(crate::workload::Service {
        name: "web".into(),
        namespace: "foo".into(),
        endpoints: vec![crate::workload::Endpoint {
            ip: "10.0.1.1".parse().unwrap(),
            ready: true,
            ports: BTreeMap::new(),
        }],
        ..Default::default()
    });
    snap.istio = vec![ap(
        "foo",
        "via-waypoint",
        json!({"targetRefs": [{"kind": "Service", "group": "", "name": "web"}], "rules": [{"from": [{"source": {"namespaces": ["bar"]}}]}]}),
    )];
    let w = (
        snap.clone(),
        PolicySnapshot::build(&snap, &PolicyConfig::default()),
    );
    let r = only_rejection(&w);
    assert_eq!(r.field, "spec.targetRefs");
    assert!(r.effect.contains("endpoints of Service(s) web"), "{r:?}");
    assert!(!allowed(&w, "bar", "client", "foo/web", 80));
    assert!(
        allowed(&w, "bar", "client", "foo/db", 80),
        "not an endpoint of web"
    );
    // A Gateway (or anything ambit cannot map to workloads): the whole namespace.
    snap.istio = vec![ap(
        "foo",
        "gw",
        json!({"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}]}),
    )];
    let w = (
        snap.clone(),
        PolicySnapshot::build(&snap, &PolicyConfig::default()),
    );
    assert!(!allowed(&w, "bar", "client", "foo/db", 80));
}

#[test]
fn envelope_problems() {
    // No namespace: the scope is unknown, so it is denied everywhere.
    let mut no_ns = ap("foo", "lost", json!({"rules": [{}]}));
    no_ns["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let w = world(vec![no_ns]);
    assert_eq!(only_rejection(&w).field, "metadata.namespace");
    assert!(!allowed(&w, "foo", "web", "bar/client", 80));
    // Wrong group: the namespace is denied.
    let mut wrong = ap("foo", "wrong", json!({}));
    wrong["apiVersion"] = json!("security.istio.io/v2");
    let w = world(vec![wrong]);
    assert_eq!(only_rejection(&w).field, "apiVersion");
    assert!(!allowed(&w, "bar", "client", "foo/web", 80));
    assert!(allowed(&w, "foo", "web", "bar/client", 80));
    // A top-level field that is not Kubernetes'.
    let mut extra = ap("foo", "extra", json!({}));
    extra["specs"] = json!({});
    let w = world(vec![extra]);
    let r = only_rejection(&w);
    assert_eq!(r.field, "object");
    assert!(r.reason.contains("specs"), "{r:?}");
    // Kubernetes' own fields are fine.
    let mut full = ap("foo", "full", json!({"rules": [{}]}));
    full["metadata"]["uid"] = json!("1234");
    full["metadata"]["managedFields"] = json!([{"manager": "kubectl"}]);
    full["status"] = json!({"conditions": []});
    assert!(world(vec![full]).1.rejected().is_empty());
}

#[test]
fn other_kinds_are_ignored_and_listed() {
    let ra = json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication", "metadata": {"name": "jwt", "namespace": "foo"}, "spec": {}});
    let w = world(vec![ra, json!(42)]);
    assert_eq!(w.1.rejected().len(), 2);
    assert!(w.1.rejected().iter().all(|r| r.effect == "ignored"));
    assert!(allowed(&w, "bar", "client", "foo/web", 80));
}

#[test]
fn a_bad_peer_authentication_makes_its_scope_strict() {
    let w = world(vec![pa(
        "foo",
        "typo",
        json!({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICKT"}}),
    )]);
    let r = only_rejection(&w);
    assert_eq!(r.field, "spec.mtls.mode");
    assert_eq!(
        r.effect,
        "plaintext refused (STRICT) for workloads of namespace foo labelled app=web"
    );
    let d = decide(&w, None, "192.0.2.1", "foo/web", 80);
    assert_eq!(
        (d.allowed, d.reason.clone()),
        (false, Reason::PlaintextRefused)
    );
    assert_eq!(d.policy.unwrap().name, "typo");
    assert!(plain(&w, "192.0.2.1", "foo/db", 80));
    assert!(
        allowed(&w, "bar", "client", "foo/web", 80),
        "mTLS is unaffected"
    );
}

#[test]
fn a_malformed_entry_rejects_only_itself() {
    let w = world(vec![
        ap(
            "foo",
            "broken",
            json!({"selector": {"matchLabels": {"app": "db"}}, "rules": "all"}),
        ),
        ap(
            "foo",
            "fine",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["22"]}}]}]}),
        ),
    ]);
    assert_eq!(only_rejection(&w).name, "broken");
    assert!(!allowed(&w, "bar", "client", "foo/web", 22));
    assert!(allowed(&w, "bar", "client", "foo/web", 80));
}
