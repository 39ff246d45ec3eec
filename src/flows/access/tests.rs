//! The access-log fields of each kind of connection, and their names in a JSON line.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use super::*;
use crate::workload::{Directory, Namespace, Pod, Service, ServicePort, Snapshot};

fn pod(name: &str, ip: &str) -> Pod {
    Pod {
        uid: name.into(),
        name: name.into(),
        namespace: "shop".into(),
        service_account: format!("sa-{name}"),
        node: "n1".into(),
        ips: vec![ip.parse().unwrap()],
        ..Pod::default()
    }
}

fn resolver() -> Resolver {
    let snapshot = Snapshot {
        namespaces: vec![Namespace {
            name: "shop".into(),
            labels: [("istio.io/dataplane-mode".into(), "ambient".into())].into(),
        }],
        pods: vec![pod("web", "10.0.0.2"), pod("cart", "10.0.0.3")],
        services: vec![Service {
            name: "cart".into(),
            namespace: "shop".into(),
            cluster_ips: vec!["10.96.0.9".parse().unwrap()],
            ports: vec![ServicePort {
                name: String::new(),
                port: 80,
            }],
            ..Service::default()
        }],
        ..Snapshot::default()
    };
    let directory = Directory::new(&snapshot, &Default::default());
    let (_tx, directory) = watch::channel(Arc::new(directory));
    Resolver {
        directory,
        trust_domain: "cluster.local".into(),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn record(listener: Listener, src: &str, dst: &str) -> FlowRecord {
    FlowRecord {
        id: 1,
        pod: "shop/web".into(),
        listener,
        src: addr(src),
        dst: addr(dst),
        route: String::new(),
        upstream: None,
        bytes_sent: 100,
        bytes_received: 7,
        started_ms: 0,
        duration_ms: 12,
        finished: true,
        error: None,
        peer_identity: None,
        policy: None,
        tls_group: Some("X25519MLKEM768"),
    }
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/sa-web";
const CART: &str = "spiffe://cluster.local/ns/shop/sa/sa-cart";

#[test]
fn outbound_hbone_through_a_service_names_both_pods_and_identities() {
    let mut r = record(Listener::Outbound, "10.0.0.2:40000", "10.96.0.9:80");
    r.route = "hbone".into();
    r.upstream = Some(addr("10.0.0.3:8080"));
    r.peer_identity = Some(CART.into());
    let f = AccessFields::of(&r, Some(&resolver()));
    assert_eq!(
        f,
        AccessFields {
            src_addr: "10.0.0.2:40000".into(),
            src_workload: Some("web".into()),
            src_namespace: Some("shop".into()),
            src_identity: Some(WEB.into()),
            dst_addr: "10.0.0.3:15008".into(),
            dst_hbone_addr: Some("10.0.0.3:8080".into()),
            dst_service: Some("cart.shop.svc.cluster.local".into()),
            dst_workload: Some("cart".into()),
            dst_namespace: Some("shop".into()),
            dst_identity: Some(CART.into()),
            direction: "outbound",
            bytes_sent: 100,
            bytes_recv: 7,
            duration: "12ms".into(),
            error: None,
            policy: None,
            tls_group: Some("X25519MLKEM768"),
        }
    );
}

#[test]
fn inbound_hbone_counts_bytes_from_the_servers_side() {
    let mut r = record(Listener::Hbone, "10.0.0.2:40000", "10.0.0.3:8080");
    r.peer_identity = Some(WEB.into());
    r.policy = Some("allowed: no policy applies".into());
    let f = AccessFields::of(&r, Some(&resolver()));
    assert_eq!(f.direction, "inbound");
    assert_eq!(
        (f.src_identity.as_deref(), f.dst_identity.as_deref()),
        (Some(WEB), Some(CART))
    );
    assert_eq!(f.dst_addr, "10.0.0.3:15008");
    assert_eq!(f.dst_hbone_addr.as_deref(), Some("10.0.0.3:8080"));
    // The server sent what the client received.
    assert_eq!((f.bytes_sent, f.bytes_recv), (7, 100));
    assert_eq!(f.policy.as_deref(), Some("allowed: no policy applies"));
}

#[test]
fn plaintext_and_unknown_peers_carry_no_identity() {
    let mut r = record(Listener::Outbound, "10.0.0.2:40000", "192.0.2.1:443");
    r.route = "passthrough".into();
    r.error = Some("connect: refused".into());
    let f = AccessFields::of(&r, Some(&resolver()));
    assert_eq!(f.dst_addr, "192.0.2.1:443");
    assert_eq!((f.dst_hbone_addr, f.dst_workload), (None, None));
    assert_eq!((f.src_identity, f.dst_identity), (None, None));
    assert_eq!(f.src_workload.as_deref(), Some("web"));
    assert_eq!(f.error.as_deref(), Some("connect: refused"));
    // Without a directory (sidecar mode) only what the flow itself knows.
    let f = AccessFields::of(&r, None);
    assert_eq!((f.src_workload, f.dst_service), (None, None));
    // A 15008 connection refused before any CONNECT names no inner address.
    let r = record(Listener::Hbone, "10.0.0.2:40000", "10.0.0.3:15008");
    assert_eq!(AccessFields::of(&r, Some(&resolver())).dst_hbone_addr, None);
}

#[test]
fn json_lines_use_ztunnels_field_names() {
    let mut r = record(Listener::Outbound, "10.0.0.2:40000", "10.0.0.3:8080");
    r.route = "hbone".into();
    r.peer_identity = Some(CART.into());
    let fields = AccessFields::of(&r, Some(&resolver()));
    let lines = crate::logging::capture_json(|| fields.emit());
    assert_eq!(lines.len(), 1);
    let v = &lines[0];
    assert_eq!(v["scope"], "access");
    assert_eq!(v["level"], "info");
    assert_eq!(v["message"], "connection complete");
    for (key, want) in [
        ("src.addr", "10.0.0.2:40000"),
        ("src.workload", "web"),
        ("src.namespace", "shop"),
        ("src.identity", WEB),
        ("dst.addr", "10.0.0.3:15008"),
        ("dst.hbone_addr", "10.0.0.3:8080"),
        ("dst.workload", "cart"),
        ("dst.namespace", "shop"),
        ("dst.identity", CART),
        ("direction", "outbound"),
        ("duration", "12ms"),
    ] {
        assert_eq!(v[key], want, "{key} in {v}");
    }
    assert_eq!(
        (v["bytes_sent"].as_u64(), v["bytes_recv"].as_u64()),
        (Some(100), Some(7))
    );
    for absent in ["dst.service", "error", "policy"] {
        assert!(v.get(absent).is_none(), "{absent} in {v}");
    }
    r.error = Some("boom".into());
    let lines = crate::logging::capture_json(|| AccessFields::of(&r, None).emit());
    assert_eq!(
        (lines[0]["level"].as_str(), lines[0]["error"].as_str()),
        (Some("error"), Some("boom"))
    );
}
