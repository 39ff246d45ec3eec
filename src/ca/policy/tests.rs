use super::*;

fn policy() -> Policy {
    Policy {
        trust_domain: "cluster.local".into(),
        trusted_node_accounts: [Account::parse("istio-system/ambit").unwrap()].into(),
    }
}

fn caller(account: &str, node: Option<&str>) -> Caller {
    Caller {
        account: Account::parse(account).unwrap(),
        node: node.map(String::from),
        pod: None,
    }
}

const POD_ID: &str = "spiffe://cluster.local/ns/shop/sa/cart";

#[test]
fn accounts_parse_from_flags_and_usernames() {
    let a = Account::parse("istio-system/ambit").unwrap();
    assert_eq!(a.to_string(), "istio-system/ambit");
    for bad in ["ambit", "/x", "x/", "a/b/c"] {
        assert!(Account::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        Account::from_username("system:serviceaccount:istio-system:ambit"),
        Some(a)
    );
    for bad in [
        "admin",
        "system:serviceaccount:ns",
        "system:node:n1",
        "system:serviceaccount::x",
    ] {
        assert_eq!(Account::from_username(bad), None, "{bad}");
    }
}

#[test]
fn a_trusted_node_account_may_impersonate_pods_of_its_node() {
    let g = policy()
        .grant(&caller("istio-system/ambit", Some("n1")), Some(POD_ID))
        .unwrap();
    assert_eq!(
        g,
        Grant::OnNode {
            identity: POD_ID.parse().unwrap(),
            node: "n1".into()
        }
    );
    // Without impersonation it gets its own identity.
    let own = policy()
        .grant(&caller("istio-system/ambit", Some("n1")), None)
        .unwrap();
    assert_eq!(
        own.identity().to_string(),
        "spiffe://cluster.local/ns/istio-system/sa/ambit"
    );
}

#[test]
fn node_unknown_or_other_trust_domain_is_denied() {
    let err = policy()
        .grant(&caller("istio-system/ambit", None), Some(POD_ID))
        .unwrap_err();
    assert!(matches!(err, Denied::PermissionDenied(_)), "{err}");
    assert!(err.to_string().contains("not bound to a pod"), "{err}");
    let err = policy()
        .grant(
            &caller("istio-system/ambit", Some("n1")),
            Some("spiffe://other.td/ns/shop/sa/cart"),
        )
        .unwrap_err();
    assert!(matches!(err, Denied::PermissionDenied(_)), "{err}");
}

#[test]
fn other_callers_get_only_their_own_identity() {
    let sidecar = caller("shop/cart", Some("n1"));
    assert_eq!(
        policy()
            .grant(&sidecar, None)
            .unwrap()
            .identity()
            .to_string(),
        POD_ID
    );
    // Asking for itself through the metadata is the same thing.
    assert_eq!(
        policy().grant(&sidecar, Some(POD_ID)).unwrap(),
        Grant::Own(POD_ID.parse().unwrap())
    );
    let err = policy()
        .grant(&sidecar, Some("spiffe://cluster.local/ns/shop/sa/payments"))
        .unwrap_err();
    assert!(matches!(err, Denied::PermissionDenied(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("spiffe://cluster.local/ns/shop/sa/payments")
            && msg.contains("n1")
            && msg.contains("shop/cart"),
        "{msg}"
    );
}

#[test]
fn a_malformed_impersonated_identity_is_an_invalid_argument() {
    let err = policy()
        .grant(
            &caller("istio-system/ambit", Some("n1")),
            Some("not-spiffe"),
        )
        .unwrap_err();
    assert!(matches!(err, Denied::InvalidArgument(_)), "{err}");
    assert_eq!(Status::from(err).code(), Code::InvalidArgument);
}
