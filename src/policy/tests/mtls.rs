//! PeerAuthentication end to end, and the `ambit.io/mtls-mode` label and `--mtls-mode`
//! beneath it.

use super::*;

fn verdict(w: &(Snapshot, PolicySnapshot), to: &str, port: u16) -> (bool, String) {
    let v = w.1.plaintext_allowed(find(&w.0, to), port);
    (v.plaintext_allowed, v.origin.to_string())
}

#[test]
fn mesh_strict_namespace_permissive_port_exception() {
    // istio.io mtls-migration and the PeerAuthentication reference: mesh-wide STRICT, one
    // namespace PERMISSIVE, and a workload that is STRICT except on one port.
    let w = world(vec![
        pa(
            "istio-system",
            "default",
            json!({"mtls": {"mode": "STRICT"}}),
        ),
        pa("bar", "permissive", json!({"mtls": {"mode": "PERMISSIVE"}})),
        pa(
            "foo",
            "web-8080",
            json!({
                "selector": {"matchLabels": {"app": "web"}},
                "mtls": {"mode": "STRICT"},
                "portLevelMtls": {"8080": {"mode": "DISABLE"}}
            }),
        ),
    ]);
    assert_eq!(
        verdict(&w, "foo/db", 80),
        (false, "PeerAuthentication istio-system/default".into())
    );
    assert_eq!(
        verdict(&w, "bar/client", 80),
        (true, "PeerAuthentication bar/permissive".into())
    );
    assert_eq!(
        verdict(&w, "foo/web", 8080),
        (true, "PeerAuthentication foo/web-8080".into())
    );
    assert_eq!(
        verdict(&w, "foo/web", 80),
        (false, "PeerAuthentication foo/web-8080".into())
    );
    // decide() applies it to plaintext only.
    let d = decide(&w, None, "192.0.2.1", "foo/web", 80);
    assert_eq!(d.reason, Reason::PlaintextRefused);
    assert_eq!(
        d.to_string(),
        "denied: plaintext refused, STRICT by PeerAuthentication foo/web-8080"
    );
    assert!(plain(&w, "192.0.2.1", "foo/web", 8080));
    assert!(allowed(&w, "bar", "client", "foo/web", 80));
}

#[test]
fn unset_port_levels_on_a_strict_namespace() {
    let w = world(vec![
        pa("foo", "ns", json!({"mtls": {"mode": "STRICT"}})),
        pa(
            "foo",
            "db",
            json!({"selector": {"matchLabels": {"app": "db"}}, "portLevelMtls": {"9000": {"mode": "PERMISSIVE"}}}),
        ),
    ]);
    assert!(
        !verdict(&w, "foo/db", 5432).0,
        "UNSET workload mode inherits STRICT"
    );
    assert!(verdict(&w, "foo/db", 9000).0);
    assert!(!verdict(&w, "foo/web", 9000).0);
}

#[test]
fn the_oldest_policy_of_a_level_wins() {
    let mut newer = pa("foo", "a-newer", json!({"mtls": {"mode": "PERMISSIVE"}}));
    newer["metadata"]["creationTimestamp"] = json!("2025-06-01T00:00:00Z");
    let older = pa("foo", "z-older", json!({"mtls": {"mode": "STRICT"}}));
    let w = world(vec![newer, older]);
    assert_eq!(
        verdict(&w, "foo/web", 80),
        (false, "PeerAuthentication foo/z-older".into())
    );
}

#[test]
fn root_namespace_selector_policies_stay_in_the_root_namespace() {
    // A workload policy is about its own namespace, even in the root namespace.
    let w = world(vec![pa(
        "istio-system",
        "sel",
        json!({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"}}),
    )]);
    assert!(verdict(&w, "foo/web", 80).0);
}

#[test]
fn namespace_label_is_a_namespace_policy_shorthand() {
    let strict = BTreeMap::from([("ambit.io/mtls-mode".to_string(), "strict".to_string())]);
    let w = world_with(vec![], &PolicyConfig::default(), strict.clone());
    assert_eq!(
        verdict(&w, "foo/web", 80),
        (
            false,
            "label ambit.io/mtls-mode=strict of namespace foo".into()
        )
    );
    assert!(verdict(&w, "bar/client", 80).0);
    // A namespace PeerAuthentication wins over the label.
    let w = world_with(
        vec![pa("foo", "perm", json!({"mtls": {"mode": "PERMISSIVE"}}))],
        &PolicyConfig::default(),
        strict.clone(),
    );
    assert!(verdict(&w, "foo/web", 80).0);
    // The label overrides a mesh policy, as a namespace policy would.
    let w = world_with(
        vec![pa(
            "istio-system",
            "default",
            json!({"mtls": {"mode": "PERMISSIVE"}}),
        )],
        &PolicyConfig::default(),
        strict,
    );
    assert!(!verdict(&w, "foo/web", 80).0);
    // A bad value is rejected and treated as strict.
    let bad = BTreeMap::from([("ambit.io/mtls-mode".to_string(), "strictest".to_string())]);
    let w = world_with(vec![], &PolicyConfig::default(), bad);
    assert!(!verdict(&w, "foo/web", 80).0);
    assert_eq!(w.1.rejected()[0].kind, "Namespace");
    assert_eq!(
        w.1.rejected()[0].field,
        "metadata.labels[ambit.io/mtls-mode]"
    );
}

#[test]
fn daemon_default_lies_beneath_everything() {
    let config = PolicyConfig {
        default_mtls: MtlsMode::Strict,
        ..PolicyConfig::default()
    };
    let w = world_with(
        vec![pa("bar", "perm", json!({"mtls": {"mode": "PERMISSIVE"}}))],
        &config,
        BTreeMap::new(),
    );
    assert_eq!(
        verdict(&w, "foo/web", 80),
        (false, "daemon default --mtls-mode strict".into())
    );
    assert!(verdict(&w, "bar/client", 80).0);
    let w = world(vec![]);
    assert_eq!(
        verdict(&w, "foo/web", 80),
        (true, "daemon default --mtls-mode permissive".into())
    );
}

#[test]
fn strict_and_authorization_policies_combine() {
    let w = world(vec![
        pa(
            "istio-system",
            "default",
            json!({"mtls": {"mode": "STRICT"}}),
        ),
        ap("foo", "allow-all", json!({"rules": [{}]})),
    ]);
    assert!(
        !plain(&w, "192.0.2.1", "foo/web", 80),
        "STRICT refuses plaintext despite allow-all"
    );
    assert!(allowed(&w, "bar", "client", "foo/web", 80));
    let view = w.1.describe(find(&w.0, "foo/web"));
    assert_eq!(view.mtls[0].mode, MtlsMode::Strict);
    assert_eq!(
        view.mtls[0].origin,
        "PeerAuthentication istio-system/default"
    );
}
