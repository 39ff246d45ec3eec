//! PeerAuthentication parsing and inheritance.

use serde_json::json;

use super::*;
use crate::policy::model::RefKind;

fn origin(name: &str) -> Arc<PolicyRef> {
    Arc::new(PolicyRef {
        kind: RefKind::PeerAuthentication,
        namespace: "ns".into(),
        name: name.into(),
    })
}

fn level(mode: MtlsMode, name: &str) -> Level {
    Level {
        mode,
        origin: origin(name),
    }
}

fn workload(mode: MtlsMode, ports: &[(u16, MtlsMode)]) -> PeerAuth {
    PeerAuth {
        id: origin("workload"),
        created: String::new(),
        labels: Some([("app".to_string(), "web".to_string())].into()),
        mode,
        ports: ports.iter().copied().collect(),
    }
}

#[test]
fn parses_modes_and_ports() {
    let p = parse(Some(json!({
        "selector": {"matchLabels": {"app": "web"}},
        "mtls": {"mode": "STRICT"},
        "portLevelMtls": {"8080": {"mode": "DISABLE"}, "9090": {}}
    })))
    .unwrap_or_else(|(e, _)| panic!("{e}"));
    assert_eq!(p.mode, MtlsMode::Strict);
    assert_eq!(p.ports[&8080], MtlsMode::Disable);
    assert_eq!(p.ports[&9090], MtlsMode::Unset);
    let p = parse(Some(json!({}))).unwrap_or_else(|(e, _)| panic!("{e}"));
    assert_eq!((p.mode, p.labels), (MtlsMode::Unset, None));
    let p = parse(Some(json!({"selector": {"matchLabels": {}}, "mtls": {}})))
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    assert_eq!(p.labels, None, "an empty selector is namespace-wide");
}

#[test]
fn rejects_what_istio_rejects() {
    let cases = [
        (
            json!({"mtls": {"mode": "STRICTER"}}),
            "spec.mtls.mode",
            false,
        ),
        (json!({"mtl": {}}), "spec", false),
        (
            json!({"portLevelMtls": {"80": {"mode": "DISABLE"}}}),
            "spec.portLevelMtls",
            false,
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {}}),
            "spec.portLevelMtls",
            true,
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {"0": {"mode": "STRICT"}}}),
            "spec.portLevelMtls[\"0\"]",
            true,
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {"http": {"mode": "STRICT"}}}),
            "spec.portLevelMtls[\"http\"]",
            true,
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {"80": {"mode": "x"}}}),
            "spec.portLevelMtls[\"80\"].mode",
            true,
        ),
    ];
    for (spec, field, has_labels) in cases {
        let Err((e, labels)) = parse(Some(spec.clone())) else {
            panic!("{spec} accepted");
        };
        assert_eq!(e.field, field, "{spec}: {e}");
        assert_eq!(
            labels.is_some(),
            has_labels,
            "{spec}: the labels are kept for the scope"
        );
    }
}

#[test]
fn inheritance_most_specific_set_level_wins() {
    use MtlsMode::*;
    let default = level(Permissive, "default");
    let t = resolve(&default, None, None, None, None);
    assert_eq!(
        (t.default.mode, t.default.origin.name.as_str()),
        (Permissive, "default")
    );
    let t = resolve(&default, Some(level(Strict, "mesh")), None, None, None);
    assert_eq!(t.verdict(80).mode, Strict);
    // Namespace PERMISSIVE overrides mesh STRICT; UNSET inherits.
    let t = resolve(
        &default,
        Some(level(Strict, "mesh")),
        Some(level(Permissive, "ns")),
        None,
        None,
    );
    assert_eq!(t.verdict(80).origin.name, "ns");
    let t = resolve(
        &default,
        Some(level(Strict, "mesh")),
        Some(level(Unset, "ns")),
        None,
        None,
    );
    assert_eq!(t.verdict(80).origin.name, "mesh");
    // Workload beats namespace; an UNSET workload inherits but its port levels still apply.
    let w = workload(Strict, &[]);
    let t = resolve(
        &default,
        None,
        Some(level(Permissive, "ns")),
        Some(&w),
        None,
    );
    assert_eq!(t.verdict(80).mode, Strict);
    let w = workload(Unset, &[(8080, Disable), (9090, Unset)]);
    let t = resolve(&default, Some(level(Strict, "mesh")), None, Some(&w), None);
    assert_eq!(t.verdict(80).mode, Strict);
    assert_eq!(t.verdict(8080).mode, Disable);
    assert_eq!(t.verdict(9090).mode, Strict, "an UNSET port inherits");
    assert!(t.verdict(8080).mode.accepts_plaintext());
    // A STRICT port on a PERMISSIVE workload.
    let w = workload(Permissive, &[(5432, Strict)]);
    let t = resolve(&default, None, None, Some(&w), None);
    assert!(t.verdict(80).mode.accepts_plaintext());
    assert!(!t.verdict(5432).mode.accepts_plaintext());
}

#[test]
fn a_rejected_policy_forces_strict_everywhere() {
    let w = workload(MtlsMode::Permissive, &[(80, MtlsMode::Permissive)]);
    let t = resolve(
        &level(MtlsMode::Permissive, "d"),
        None,
        None,
        Some(&w),
        Some(origin("broken")),
    );
    assert_eq!(t.verdict(80).mode, MtlsMode::Strict);
    assert_eq!(t.verdict(80).origin.name, "broken");
}
