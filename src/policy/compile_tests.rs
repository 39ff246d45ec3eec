//! AuthorizationPolicy translation: validation paths, actions, targets, L7 handling.

use serde_json::json;

use super::*;

fn ok(spec: Value) -> Compiled {
    authorization(Some(spec.clone()), "shop").unwrap_or_else(|r| panic!("{spec}: {:?}", r.invalid))
}

fn bad(spec: Value) -> Rejected {
    match authorization(Some(spec.clone()), "shop") {
        Ok(c) => panic!("{spec} was accepted: {:?}", c.rules),
        Err(r) => r,
    }
}

#[test]
fn empty_spec_is_allow_nothing_and_empty_rule_allows_all() {
    let c = ok(json!({}));
    assert_eq!(
        (c.action, c.rules.len(), &c.target),
        (Action::Allow, 0, &Target::All)
    );
    let c = authorization(None, "shop").unwrap();
    assert_eq!(c.rules.len(), 0);
    let c = ok(json!({"rules": [{}]}));
    assert_eq!(c.rules.len(), 1);
    assert!(c.rules[0].clauses.is_empty());
}

#[test]
fn deny_needs_rules() {
    // Istio's validation refuses a DENY without rules ("never triggered"); ambit rejects it too,
    // and the rejection fails closed.
    for spec in [
        json!({"action": "DENY"}),
        json!({"action": "DENY", "rules": []}),
    ] {
        let r = bad(spec);
        assert_eq!(r.invalid.field, "spec.rules");
        assert!(r.fail_closed);
    }
    let c = ok(json!({"action": "DENY", "rules": [{}]}));
    assert_eq!(c.action, Action::Deny);
}

#[test]
fn actions() {
    assert_eq!(
        ok(json!({"action": "AUDIT", "rules": [{}]})).action,
        Action::Audit
    );
    let r = bad(json!({"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]}));
    assert_eq!(r.invalid.field, "spec.action");
    assert!(
        r.invalid.reason.contains("CUSTOM") && r.invalid.reason.contains("opa"),
        "{:?}",
        r.invalid
    );
    assert!(r.fail_closed);
    let r = bad(json!({"action": "DENNY", "rules": [{}]}));
    assert!(r.invalid.reason.contains("\"DENNY\""), "{:?}", r.invalid);
    assert!(r.fail_closed);
    let r = bad(json!({"action": "ALLOW", "provider": {"name": "x"}}));
    assert_eq!(r.invalid.field, "spec.provider");
    // An invalid AUDIT policy changes no access, so it does not fail closed.
    let r = bad(json!({"action": "AUDIT", "rules": [{"to": []}]}));
    assert!(!r.fail_closed);
}

#[test]
fn unknown_fields_are_named() {
    let r = bad(json!({"actoin": "DENY"}));
    assert_eq!(r.invalid.field, "spec");
    assert!(r.invalid.reason.contains("actoin"), "{:?}", r.invalid);
    let r = bad(json!({"rules": [{"from": [{"source": {"principal": ["x"]}}]}]}));
    assert_eq!(r.invalid.field, "spec.rules[0]");
    assert!(r.invalid.reason.contains("principal"), "{:?}", r.invalid);
    let r = bad(json!({"rules": [{}, {"to": [{"operation": {"port": ["80"]}}]}]}));
    assert_eq!(r.invalid.field, "spec.rules[1]");
    let r = bad(json!({"rules": [{"to": [{"operation": {"ports": [80]}}]}]}));
    assert!(
        r.invalid.reason.contains("string"),
        "ports are strings: {:?}",
        r.invalid
    );
}

#[test]
fn malformed_values_name_their_path() {
    let cases = [
        (
            json!({"rules": [{"to": [{"operation": {"ports": ["80", "70000"]}}]}]}),
            "spec.rules[0].to[0].operation.ports[1]",
        ),
        (
            json!({"rules": [{"to": [{"operation": {"notPorts": ["x"]}}]}]}),
            "spec.rules[0].to[0].operation.notPorts[0]",
        ),
        (
            json!({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]}),
            "spec.rules[0].from[0].source.ipBlocks[0]",
        ),
        (
            json!({"rules": [{"from": [{"source": {"notIpBlocks": ["1.2.3"]}}]}]}),
            "spec.rules[0].from[0].source.notIpBlocks[0]",
        ),
        (
            json!({"rules": [{"from": [{"source": {"remoteIpBlocks": ["nope"]}}]}]}),
            "spec.rules[0].from[0].source.remoteIpBlocks[0]",
        ),
        (
            json!({"rules": [{"from": [{"source": {"principals": [""]}}]}]}),
            "spec.rules[0].from[0].source.principals[0]",
        ),
        (
            json!({"rules": [{"when": [{"key": "destination.port", "values": ["99999"]}]}]}),
            "spec.rules[0].when[0].values[0]",
        ),
        (
            json!({"rules": [{"when": [{"key": "source.ip", "notValues": ["x"]}]}]}),
            "spec.rules[0].when[0].notValues[0]",
        ),
        (
            json!({"rules": [{"when": [{"key": "destination.labels[app]", "values": ["x"]}]}]}),
            "spec.rules[0].when[0].key",
        ),
        (
            json!({"rules": [{"when": [{"key": "source.ip"}]}]}),
            "spec.rules[0].when[0]",
        ),
        (json!({"rules": [{"from": []}]}), "spec.rules[0].from"),
        (
            json!({"rules": [{"from": [{}]}]}),
            "spec.rules[0].from[0].source",
        ),
        (
            json!({"rules": [{"from": [{"source": {}}]}]}),
            "spec.rules[0].from[0].source",
        ),
        (
            json!({"rules": [{"to": [{"operation": {}}]}]}),
            "spec.rules[0].to[0].operation",
        ),
        (
            json!({"rules": [{"from": [{"source": {"serviceAccounts": ["a"], "namespaces": ["b"]}}]}]}),
            "spec.rules[0].from[0].source",
        ),
        (
            json!({"selector": {"matchLabels": {"app": "web*"}}}),
            "spec.selector.matchLabels[\"app\"]",
        ),
    ];
    for (spec, field) in cases {
        let r = bad(spec.clone());
        assert_eq!(r.invalid.field, field, "{spec}: {:?}", r.invalid);
        assert!(r.fail_closed);
    }
}

#[test]
fn targets() {
    let c = ok(json!({"selector": {"matchLabels": {"app": "web"}}}));
    assert_eq!(
        c.target,
        Target::Labels([("app".to_string(), "web".to_string())].into())
    );
    assert_eq!(ok(json!({"selector": {}})).target, Target::All);
    assert_eq!(
        ok(json!({"selector": {"matchLabels": {}}})).target,
        Target::All
    );
    let r = bad(
        json!({"targetRefs": [{"kind": "Service", "group": "", "name": "web"}], "rules": [{}]}),
    );
    assert_eq!(r.invalid.field, "spec.targetRefs");
    assert!(r.invalid.reason.contains("waypoint"), "{:?}", r.invalid);
    assert!(matches!(&r.target, Target::Refs(refs) if refs[0].name == "web"));
    let r = bad(json!({"targetRef": {"kind": "Gateway", "name": "gw"}}));
    assert!(matches!(&r.target, Target::Refs(refs) if refs[0].kind == "Gateway"));
    let r = bad(
        json!({"selector": {"matchLabels": {"a": "b"}}, "targetRefs": [{"kind": "Service", "name": "x"}]}),
    );
    assert_eq!(r.invalid.field, "spec");
}

#[test]
fn a_spec_that_does_not_parse_keeps_its_selector_for_the_fail_closed_scope() {
    let r = bad(json!({"selector": {"matchLabels": {"app": "web"}}, "rulez": []}));
    assert_eq!(
        r.target,
        Target::Labels([("app".to_string(), "web".to_string())].into())
    );
    let r = bad(json!({"selector": {"matchLabels": ["app"]}}));
    assert_eq!(
        r.target,
        Target::All,
        "unreadable selector: the whole namespace"
    );
}

#[test]
fn l7_attributes_in_allow_drop_the_rule() {
    // istiod handleRule: "L7 policies never match for ALLOW".
    let c = ok(json!({"rules": [
        {"to": [{"operation": {"methods": ["GET"], "ports": ["80"]}}]},
        {"from": [{"source": {"namespaces": ["a"]}}]},
        {"when": [{"key": "request.headers[x-user]", "values": ["bob"]}]},
        {"from": [{"source": {"requestPrincipals": ["*"]}}]},
        {"from": [{"source": {"remoteIpBlocks": ["10.0.0.0/8"]}}]}
    ]}));
    assert_eq!(c.rules.len(), 1, "only the L4 rule stays");
    assert_eq!(c.warnings.len(), 4);
    assert!(
        c.warnings[0].contains("spec.rules[0]") && c.warnings[0].contains("methods"),
        "{:?}",
        c.warnings
    );
    assert!(c.warnings.iter().all(|w| w.contains("never matches")));
}

#[test]
fn l7_attributes_in_deny_are_ignored_making_it_broader() {
    let c = ok(json!({"action": "DENY", "rules": [
        {"to": [{"operation": {"methods": ["POST"], "ports": ["8080"]}}]},
        {"from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"]}}], "to": [{"operation": {"paths": ["/admin"]}}]},
        {"when": [{"key": "remote.ip", "values": ["10.0.0.1"]}]}
    ]}));
    assert_eq!(c.rules.len(), 3);
    assert_eq!(c.rules[0].describe(), "(ports=[8080])");
    // istiod would emit an empty match for `to` here, which ztunnel skips, making the rule a
    // no-op (istio#61126); ambit denies the principal outright instead.
    assert_eq!(
        c.rules[1].describe(),
        "(any) AND (principals=[cluster.local/ns/a/sa/b])"
    );
    assert_eq!(c.rules[2].describe(), "(any)");
    assert!(
        c.warnings
            .iter()
            .all(|w| w.contains("more connections than written")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn l4_when_keys() {
    let c = ok(json!({"rules": [{"when": [
        {"key": "source.ip", "values": ["10.0.0.0/8"], "notValues": ["10.0.0.1"]},
        {"key": "source.namespace", "values": ["prod-*"]},
        {"key": "source.principal", "notValues": ["*/sa/bad"]},
        {"key": "destination.ip", "values": ["fd00::1"]},
        {"key": "destination.port", "values": ["80"]},
        {"key": "source.serviceAccount", "values": ["web", "other/db"]},
        {"key": "source.trustDomain", "values": ["cluster.local"]}
    ]}]}));
    assert!(c.warnings.is_empty());
    assert_eq!(
        c.rules[0].describe(),
        "(sourceIps=[10.0.0.0/8] notSourceIps=[10.0.0.1/32]) AND (namespaces=[prod-*]) AND \
         (notPrincipals=[*/sa/bad]) AND (destinationIps=[fd00::1/128]) AND (ports=[80]) AND \
         (serviceAccounts=[shop/web, other/db]) AND (trustDomains=[cluster.local])"
    );
}

#[test]
fn source_fields() {
    let c = ok(json!({"rules": [{"from": [
        {"source": {"principals": ["cluster.local/ns/a/sa/b"], "notNamespaces": ["x"], "ipBlocks": ["10.0.0.1"], "notIpBlocks": ["10.0.0.2/31"]}},
        {"source": {"serviceAccounts": ["web"], "notTrustDomains": ["evil.org"]}}
    ]}]}));
    assert_eq!(
        c.rules[0].describe(),
        "(principals=[cluster.local/ns/a/sa/b] notNamespaces=[x] sourceIps=[10.0.0.1/32] \
         notSourceIps=[10.0.0.2/31] OR notTrustDomains=[evil.org] serviceAccounts=[shop/web])"
    );
}
