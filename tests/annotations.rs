//! c: capture annotations change what is captured, observed end to end, for both rule
//! backends; the rules present in the pod's netns reflect them.
//!
//! Lab: 2 nodes × 4 pods. Client pods on n1 and server pods on n2 carry one annotation each.
//! Inbound annotations govern plaintext arriving from outside the mesh, so those clients sit
//! in the fabric namespace (like a Prometheus scraper or kubelet outside the mesh).
#![cfg(feature = "lab")]

mod support;

use std::net::{IpAddr, SocketAddr};

use ambit::lab::traffic::Server;
use support::*;

const OTHER_PORT: u16 = 9000;
const METRICS_PORT: u16 = 15020;

fn setup(c: &Cluster) -> (IpAddr, IpAddr) {
    let p = c.lab.pod("n2-p2").unwrap();
    (p.ipv4.into(), p.ipv6.into())
}

/// Whether `node` captured the client-side connection from `local` on 15001.
fn outbound_captured(c: &Cluster, node: &str, local: SocketAddr) -> bool {
    c.flows_from(node, local).iter().any(|f| is(f, "outbound"))
}

/// Whether `node` captured an inbound connection to `dst` from `client`.
fn inbound_captured(c: &Cluster, node: &str, dst: SocketAddr, client: IpAddr) -> bool {
    c.flows(node).iter().any(|f| {
        is(f, "inbound")
            && f["dst"] == dst.to_string()
            && f["src"]
                .as_str()
                .and_then(|s| s.parse::<SocketAddr>().ok())
                .is_some_and(|s| s.ip() == client)
    })
}

async fn scenario(backend: &'static str) {
    let fabric_cidr = "172.31.0.0/24";
    let c = Cluster::start(2, 4, backend, |s| {
        let target = s.pods.iter().find(|p| p.name == "n2-p2").unwrap();
        let ranges = format!("{}/32, {}/128", target.ips[0], target.ips[1]);
        annotate(
            s,
            "n1-p2",
            "traffic.sidecar.istio.io/excludeOutboundPorts",
            "9000",
        );
        annotate(
            s,
            "n1-p3",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            &ranges,
        );
        annotate(
            s,
            "n1-p4",
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            fabric_cidr,
        );
        annotate(
            s,
            "n2-p1",
            "traffic.sidecar.istio.io/excludeInboundPorts",
            "15020,15090",
        );
        annotate(
            s,
            "n2-p3",
            "ambient.istio.io/bypass-inbound-capture",
            "true",
        );
        annotate(
            s,
            "n2-p4",
            "traffic.sidecar.istio.io/includeInboundPorts",
            "9000",
        );
    });
    let mut servers = Vec::new();
    for pod in c.lab.pods() {
        let ns = c.lab.pod_netns(&pod.name).unwrap();
        for port in [APP_PORT, OTHER_PORT, METRICS_PORT] {
            let any: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, port).into();
            servers.push(Server::start(&ns, any).await.unwrap());
        }
    }
    let fabric = Server::start(&c.lab.fabric_netns().unwrap(), "[::]:8080".parse().unwrap())
        .await
        .unwrap();
    let at = |pod: &str, port: u16| -> SocketAddr { (c.lab.pod(pod).unwrap().ipv4, port).into() };
    let ip = |pod: &str| -> IpAddr { c.lab.pod(pod).unwrap().ipv4.into() };
    for pod in c.lab.pods() {
        c.wait_state(&pod.name, "enrolled");
    }

    let scraper: IpAddr = c.lab.fabric_ipv4().into();
    // excludeInboundPorts: a metrics scrape of n2-p1 on 15020 bypasses its 15006; 8080 does not.
    let dst = at("n2-p1", METRICS_PORT);
    send(&c, "fabric", dst).await;
    assert!(
        !inbound_captured(&c, "n2", dst, scraper),
        "excluded inbound port was captured"
    );
    let dst = at("n2-p1", APP_PORT);
    send(&c, "fabric", dst).await;
    c.wait_flow("n2", |f| is(f, "inbound") && f["dst"] == dst.to_string());

    // excludeOutboundPorts: n1-p2 to port 9000 leaves uncaptured, to 8080 captured.
    let local = send(&c, "n1-p2", at("n2-p2", OTHER_PORT)).await;
    assert!(
        !outbound_captured(&c, "n1", local),
        "excluded outbound port was captured"
    );
    assert!(inbound_captured(
        &c,
        "n2",
        at("n2-p2", OTHER_PORT),
        ip("n1-p2")
    ));
    let local = send(&c, "n1-p2", at("n2-p2", APP_PORT)).await;
    assert!(outbound_captured(&c, "n1", local));

    // excludeOutboundIPRanges: n1-p3 to n2-p2 (v4 and v6) uncaptured, to n2-p1 captured.
    let local = send(&c, "n1-p3", at("n2-p2", APP_PORT)).await;
    assert!(
        !outbound_captured(&c, "n1", local),
        "excluded v4 range was captured"
    );
    let (_, v6) = setup(&c);
    let local = send(&c, "n1-p3", SocketAddr::new(v6, APP_PORT)).await;
    assert!(
        !outbound_captured(&c, "n1", local),
        "excluded v6 range was captured"
    );
    let local = send(&c, "n1-p3", at("n2-p1", APP_PORT)).await;
    assert!(outbound_captured(&c, "n1", local));

    // includeOutboundIPRanges: n1-p4 captures only the fabric range.
    let local = send(&c, "n1-p4", at("n2-p2", APP_PORT)).await;
    assert!(
        !outbound_captured(&c, "n1", local),
        "range outside includeOutboundIPRanges captured"
    );
    let local = send(&c, "n1-p4", (c.lab.fabric_ipv4(), APP_PORT).into()).await;
    assert!(
        outbound_captured(&c, "n1", local),
        "included range not captured"
    );
    assert_eq!(fabric.accepted().len(), 1);

    // bypass-inbound-capture: no plaintext inbound to n2-p3 is captured.
    let dst = at("n2-p3", APP_PORT);
    send(&c, "fabric", dst).await;
    assert!(
        !inbound_captured(&c, "n2", dst, scraper),
        "bypassed pod captured inbound"
    );

    // includeInboundPorts: n2-p4 captures 9000 only.
    let dst = at("n2-p4", APP_PORT);
    send(&c, "fabric", dst).await;
    assert!(
        !inbound_captured(&c, "n2", dst, scraper),
        "port outside includeInboundPorts captured"
    );
    let dst = at("n2-p4", OTHER_PORT);
    send(&c, "fabric", dst).await;
    assert!(
        inbound_captured(&c, "n2", dst, scraper),
        "included inbound port not captured"
    );

    // The rules in the pods' netns say the same.
    let backend_v: ambit::rules::Backend = backend.parse().unwrap();
    let text = |pod: &str| {
        let rules = ambit::rules::installed(&c.lab.pod_netns(pod).unwrap(), backend_v).unwrap();
        serde_json::to_string(&rules).unwrap()
    };
    assert!(text("n2-p1").contains("15090"), "{}", text("n2-p1"));
    assert!(text("n2-p2").contains("15006"), "{}", text("n2-p2"));
    assert!(
        !text("n2-p3").contains("15006"),
        "bypass pod redirects inbound: {}",
        text("n2-p3")
    );
    assert!(text("n1-p4").contains("172.31.0.0/24"), "{}", text("n1-p4"));
    drop(servers);
}

#[tokio::test(flavor = "multi_thread")]
async fn annotations_iptables() {
    scenario("iptables").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn annotations_nftables() {
    scenario("nftables").await;
}
