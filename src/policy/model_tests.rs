//! Matching of compiled policies, mirroring ztunnel's `rbac.rs` tests where they apply.

use super::*;

fn id(td: &str, ns: &str, sa: &str) -> Identity {
    Identity::new(td, ns, sa).unwrap()
}

fn facts<'a>(identity: Option<&'a Identity>, src: &str, dst: &str, port: u16) -> Facts<'a> {
    Facts {
        src_ip: src.parse().unwrap(),
        dst_ip: dst.parse().unwrap(),
        dst_port: port,
        identity,
    }
}

fn policy(rules: Vec<Rule>) -> CompiledPolicy {
    CompiledPolicy {
        id: Arc::new(PolicyRef {
            kind: RefKind::AuthorizationPolicy,
            namespace: "ns".into(),
            name: "p".into(),
        }),
        action: Action::Allow,
        dry_run: false,
        rules,
        fail_closed: None,
    }
}

fn one(m: Match) -> CompiledPolicy {
    policy(vec![Rule {
        clauses: vec![Clause {
            alternatives: vec![m],
        }],
    }])
}

#[test]
fn plaintext_has_no_identity() {
    // ztunnel rbac.rs: positive identity conditions never match plaintext, negative ones do.
    let web = id("td", "shop", "web");
    let tls = facts(Some(&web), "10.0.0.1", "10.0.0.2", 80);
    let plain = facts(None, "10.0.0.1", "10.0.0.2", 80);
    let cases: Vec<(Match, bool, bool)> = vec![
        (
            Match {
                principals: Cond {
                    pos: vec![StrPat::Present],
                    neg: vec![],
                },
                ..Match::default()
            },
            true,
            false,
        ),
        (
            Match {
                principals: Cond {
                    pos: vec![],
                    neg: vec![StrPat::Present],
                },
                ..Match::default()
            },
            false,
            true,
        ),
        (
            Match {
                principals: Cond {
                    pos: vec![],
                    neg: vec![StrPat::parse("td/ns/x/sa/y")],
                },
                ..Match::default()
            },
            true,
            true,
        ),
        (
            Match {
                namespaces: Cond {
                    pos: vec![StrPat::parse("shop")],
                    neg: vec![],
                },
                ..Match::default()
            },
            true,
            false,
        ),
        (
            Match {
                namespaces: Cond {
                    pos: vec![],
                    neg: vec![StrPat::parse("shop")],
                },
                ..Match::default()
            },
            false,
            true,
        ),
        (
            Match {
                namespaces: Cond {
                    pos: vec![],
                    neg: vec![StrPat::parse("other")],
                },
                ..Match::default()
            },
            true,
            true,
        ),
        (
            Match {
                trust_domains: Cond {
                    pos: vec![StrPat::parse("td")],
                    neg: vec![],
                },
                ..Match::default()
            },
            true,
            false,
        ),
        (
            Match {
                service_accounts: Cond {
                    pos: vec![("shop".into(), "web".into())],
                    neg: vec![],
                },
                ..Match::default()
            },
            true,
            false,
        ),
        (
            Match {
                service_accounts: Cond {
                    pos: vec![],
                    neg: vec![("shop".into(), "web".into())],
                },
                ..Match::default()
            },
            false,
            true,
        ),
    ];
    for (m, on_tls, on_plain) in cases {
        let shown = m.to_string();
        let p = one(m);
        assert_eq!(p.matches(&tls), on_tls, "{shown} on mTLS");
        assert_eq!(p.matches(&plain), on_plain, "{shown} on plaintext");
    }
}

#[test]
fn ips_and_ports() {
    let m = Match {
        src_ips: Cond {
            pos: vec!["10.0.0.0/24".parse().unwrap()],
            neg: vec!["10.0.0.9/32".parse().unwrap()],
        },
        dst_ips: Cond {
            pos: vec!["fd00::/64".parse().unwrap(), "10.1.0.2/32".parse().unwrap()],
            neg: vec![],
        },
        ports: Cond {
            pos: vec![80, 443],
            neg: vec![],
        },
        ..Match::default()
    };
    let p = one(m);
    assert!(p.matches(&facts(None, "10.0.0.1", "10.1.0.2", 80)));
    assert!(
        !p.matches(&facts(None, "10.0.0.9", "10.1.0.2", 80)),
        "notIpBlocks"
    );
    assert!(
        !p.matches(&facts(None, "10.0.1.1", "10.1.0.2", 80)),
        "ipBlocks"
    );
    assert!(
        !p.matches(&facts(None, "10.0.0.1", "10.1.0.3", 80)),
        "destination ip"
    );
    assert!(
        !p.matches(&facts(None, "10.0.0.1", "10.1.0.2", 8080)),
        "port"
    );
    let not_port = one(Match {
        ports: Cond {
            pos: vec![],
            neg: vec![9999],
        },
        ..Match::default()
    });
    assert!(not_port.matches(&facts(None, "10.0.0.1", "10.1.0.2", 80)));
    assert!(!not_port.matches(&facts(None, "10.0.0.1", "10.1.0.2", 9999)));
}

#[test]
fn rules_clauses_alternatives() {
    let ns = |n: &str| Match {
        namespaces: Cond {
            pos: vec![StrPat::parse(n)],
            neg: vec![],
        },
        ..Match::default()
    };
    let port = |p| Match {
        ports: Cond {
            pos: vec![p],
            neg: vec![],
        },
        ..Match::default()
    };
    let a = id("td", "a", "s");
    let b = id("td", "b", "s");
    let c = id("td", "c", "s");
    // (ns a OR ns b) AND port 80
    let p = policy(vec![Rule {
        clauses: vec![
            Clause {
                alternatives: vec![ns("a"), ns("b")],
            },
            Clause {
                alternatives: vec![port(80)],
            },
        ],
    }]);
    assert!(p.matches(&facts(Some(&a), "10.0.0.1", "10.0.0.2", 80)));
    assert!(p.matches(&facts(Some(&b), "10.0.0.1", "10.0.0.2", 80)));
    assert!(!p.matches(&facts(Some(&c), "10.0.0.1", "10.0.0.2", 80)));
    assert!(!p.matches(&facts(Some(&a), "10.0.0.1", "10.0.0.2", 81)));
    assert_eq!(
        p.rules[0].describe(),
        "(namespaces=[a] OR namespaces=[b]) AND (ports=[80])"
    );
}

#[test]
fn empty_shapes() {
    let any = facts(None, "10.0.0.1", "10.0.0.2", 1);
    // No rules: never matches (allow-nothing for ALLOW).
    assert!(!policy(vec![]).matches(&any));
    // A rule without clauses (`rules: [{}]`): matches everything.
    assert!(policy(vec![Rule::default()]).matches(&any));
    // An empty alternative (a DENY element left with L7 attributes only): matches everything.
    assert!(one(Match::default()).matches(&any));
    assert_eq!(Rule::default().describe(), "any connection");
    assert_eq!(Match::default().to_string(), "any");
}

#[test]
fn display_names_both_sides() {
    let m = Match {
        principals: Cond {
            pos: vec![StrPat::parse("td/ns/a/*")],
            neg: vec![StrPat::Present],
        },
        ports: Cond {
            pos: vec![],
            neg: vec![22],
        },
        ..Match::default()
    };
    assert_eq!(
        m.to_string(),
        "principals=[td/ns/a/*] notPrincipals=[*] notPorts=[22]"
    );
}
