use std::collections::BTreeMap;

use super::*;
use crate::workload::{Namespace, Snapshot};

fn pod(name: &str, ip: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        uid: format!("uid-{name}"),
        name: name.into(),
        namespace: "shop".into(),
        service_account: name.into(),
        node: "n2".into(),
        ips: vec![ip.parse().unwrap()],
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn directory() -> Directory {
    let mesh = [("istio.io/dataplane-mode", "ambient")];
    let snapshot = Snapshot {
        namespaces: vec![Namespace {
            name: "shop".into(),
            labels: BTreeMap::new(),
        }],
        pods: vec![
            pod("web", "10.1.0.5", &mesh),
            pod("db", "10.2.0.9", &mesh),
            pod("legacy", "10.2.0.10", &[]),
        ],
        ..Default::default()
    };
    Directory::new(&snapshot, &Default::default())
}

const OWN: [IpAddr; 1] = [IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, 5))];

#[test]
fn a_mesh_destination_is_reached_over_hbone_with_its_identity() {
    let step = route_step(
        &directory(),
        "cluster.local",
        &OWN,
        "10.2.0.9:5432".parse().unwrap(),
    );
    assert_eq!(step.kind, RouteKind::Hbone);
    assert_eq!(step.peer, Some("10.2.0.9:15008".parse().unwrap()));
    assert_eq!(
        step.expected_identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/db")
    );
}

#[test]
fn a_destination_out_of_the_mesh_is_passed_through() {
    let step = route_step(
        &directory(),
        "cluster.local",
        &OWN,
        "10.2.0.10:80".parse().unwrap(),
    );
    assert_eq!(step.kind, RouteKind::Passthrough);
    assert_eq!(step.target, Some("10.2.0.10:80".parse().unwrap()));
}

#[test]
fn the_pods_own_proxy_port_is_refused_as_a_self_call() {
    let step = route_step(
        &directory(),
        "cluster.local",
        &OWN,
        "10.1.0.5:15008".parse().unwrap(),
    );
    assert_eq!(step.kind, RouteKind::Refused);
    assert!(step.why.contains("own port"), "{}", step.why);
}

#[test]
fn plaintext_to_an_excluded_inbound_port_skips_15006() {
    let mut p = pod("db", "10.2.0.9", &[]);
    let src: IpAddr = "10.1.0.5".parse().unwrap();
    assert_eq!(
        inbound_rule(&p, src, "10.2.0.9:5432".parse().unwrap()),
        Some(Action::Redirect(15006))
    );
    p.annotations.insert(
        "traffic.sidecar.istio.io/excludeInboundPorts".into(),
        "5432".into(),
    );
    assert_eq!(
        inbound_rule(&p, src, "10.2.0.9:5432".parse().unwrap()),
        Some(Action::Accept)
    );
}

#[test]
fn the_text_names_each_step() {
    let e = Explanation {
        node: "n1".into(),
        source: "shop/web".into(),
        source_ip: Some(OWN[0]),
        destination: "10.2.0.9:5432".parse().unwrap(),
        capture: Capture {
            captured: true,
            why: "redirected to 15001 (outbound listener)".into(),
            chain: Some("iptables nat ISTIO_OUTPUT".into()),
            rule: Some(RuleHit {
                number: 4,
                text: "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -j REDIRECT --to-ports 15001"
                    .into(),
                packets: Some(3),
                bytes: Some(180),
                counters_error: None,
            }),
        },
        route: route_step(
            &directory(),
            "cluster.local",
            &OWN,
            "10.2.0.9:5432".parse().unwrap(),
        ),
        at_destination: None,
        flows: vec![],
    };
    let text = text::render(&e);
    for part in [
        "rule 4:",
        "3 packets, 180 bytes",
        "route: hbone",
        "10.2.0.9:15008",
    ] {
        assert!(text.contains(part), "{part:?} missing in\n{text}");
    }
}
