//! Which workloads a policy covers, the resource envelope, and the cost of many policies.

use super::*;

#[test]
fn root_namespace_policies_are_mesh_wide() {
    let deny = json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["23"]}}]}]});
    let w = world(vec![ap("istio-system", "no-telnet", deny.clone())]);
    assert!(!allowed(&w, "foo", "web", "bar/client", 23));
    assert!(!allowed(&w, "bar", "client", "foo/db", 23));
    // With a selector, it selects across namespaces.
    let sel = json!({"selector": {"matchLabels": {"app": "db"}}, "action": "DENY", "rules": [{}]});
    let w = world(vec![ap("istio-system", "no-db", sel)]);
    assert!(!allowed(&w, "bar", "client", "foo/db", 5432));
    assert!(allowed(&w, "bar", "client", "foo/web", 80));
    // The root namespace is configurable.
    let config = PolicyConfig {
        root_namespace: "mesh-root".into(),
        ..PolicyConfig::default()
    };
    let w = world_with(
        vec![
            ap("istio-system", "no-telnet", deny.clone()),
            ap("mesh-root", "r", deny),
        ],
        &config,
        BTreeMap::new(),
    );
    let d = decide(&w, Some(("foo", "web")), "10.0.1.1", "bar/client", 23);
    assert_eq!(
        d.policy.unwrap().key(),
        "mesh-root/r",
        "istio-system is an ordinary namespace now"
    );
}

#[test]
fn selector_covers_one_pod_not_its_neighbour() {
    let w = world(vec![ap(
        "foo",
        "web-only",
        json!({"selector": {"matchLabels": {"app": "web"}}, "rules": [{"from": [{"source": {"namespaces": ["foo"]}}]}]}),
    )]);
    assert!(!allowed(&w, "bar", "client", "foo/web", 80));
    assert!(allowed(&w, "bar", "client", "foo/db", 80));
    let view = w.1.describe(find(&w.0, "foo/web"));
    assert_eq!(view.allow.len(), 1);
    assert_eq!(view.allow[0].rules, ["(namespaces=[foo])"]);
    assert!(w.1.describe(find(&w.0, "foo/db")).allow.is_empty());
}

#[test]
fn accepts_v1beta1_and_kubectl_lists() {
    let mut beta = ap(
        "foo",
        "beta",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["1"]}}]}]}),
    );
    beta["apiVersion"] = json!("security.istio.io/v1beta1");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        ap("foo", "listed", json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["2"]}}]}]}))
    ]});
    let w = world(vec![beta, list]);
    assert!(w.1.rejected().is_empty(), "{:?}", w.1.rejected());
    assert!(!allowed(&w, "bar", "client", "foo/web", 1));
    assert!(!allowed(&w, "bar", "client", "foo/web", 2));
    assert!(allowed(&w, "bar", "client", "foo/web", 3));
}

#[test]
fn pods_outside_the_index_are_resolved_on_demand() {
    let config = PolicyConfig {
        node: Some("elsewhere".into()),
        ..PolicyConfig::default()
    };
    let w = world_with(
        vec![ap(
            "foo",
            "deny-all",
            json!({"action": "DENY", "rules": [{}]}),
        )],
        &config,
        BTreeMap::new(),
    );
    assert!(!allowed(&w, "bar", "client", "foo/web", 80));
    let newcomer = pod("foo", "new", "10.0.1.9", &[]);
    let d = w.1.decide(
        &newcomer,
        &ConnInfo {
            src_ip: "10.0.2.1".parse().unwrap(),
            src_identity: None,
            dst_ip: newcomer.ips[0],
            dst_port: 80,
        },
    );
    assert!(!d.allowed);
}

#[test]
fn a_thousand_policies_compile_and_stay_cheap() {
    let mut resources: Vec<Value> = (0..1000)
        .map(|i| ap("foo", &format!("deny-{i}"), json!({"action": "DENY", "rules": [{"from": [{"source": {"principals": [format!("cluster.local/ns/x{i}/sa/y")]}}], "to": [{"operation": {"ports": [format!("{}", 10000 + i)]}}]}]})))
        .collect();
    resources.push(ap(
        "foo",
        "allow-bar",
        json!({"rules": [{"from": [{"source": {"namespaces": ["bar"]}}]}]}),
    ));
    let w = world(resources);
    assert!(w.1.rejected().is_empty());
    assert_eq!(w.1.authorization_policy_count(), 1001);
    let dst = find(&w.0, "foo/web");
    let client = id("bar", "client");
    let conn = ConnInfo {
        src_ip: "10.0.2.1".parse().unwrap(),
        src_identity: Some(&client),
        dst_ip: dst.ips[0],
        dst_port: 80,
    };
    let start = std::time::Instant::now();
    for _ in 0..1000 {
        assert!(w.1.decide(dst, &conn).allowed);
    }
    // 1000 decisions over 1001 policies each; generous even for an unoptimised build.
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}
