//! Sidecar mode: `ambit sidecar` per pod with Istio's classic sidecar rules, one test per
//! traffic type of the classic sidecar walkthrough. Each asserts which rule matched (the
//! rule's packet counter in the pod's netns) and what the peer observed.
#![cfg(feature = "lab")]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use ambit::lab::traffic::Server;
use ambit::lab::{Lab, LabSpec};
use ambit::rules::{sidecar::RuleCounter, Family};
use support::*;

/// A lab whose pods each run `ambit sidecar` (no node daemons).
struct Sidecars {
    lab: Lab,
}

impl Sidecars {
    fn start(nodes: usize, pods: usize) -> Sidecars {
        let lab = Lab::up(&LabSpec {
            nodes,
            pods_per_node: pods,
            namespace_ambient: false,
            ..LabSpec::default()
        })
        .expect("lab up");
        lab.start_sidecars(Path::new(env!("CARGO_BIN_EXE_ambit")), &[])
            .expect("sidecars");
        Sidecars { lab }
    }

    fn counters(&self, pod: &str) -> Vec<RuleCounter> {
        let ns = self.lab.pod_netns(pod).unwrap();
        ambit::rules::sidecar::counters(&ns, Family::V4).unwrap()
    }

    fn flows(&self, pod: &str) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.lab.admin_get(pod, "/flows").unwrap()).unwrap()
    }
}

/// Packets counted by the first rule of `chain` whose text contains `needle`.
fn packets(c: &[RuleCounter], chain: &str, needle: &str) -> u64 {
    c.iter()
        .find(|r| r.chain == chain && r.rule.contains(needle))
        .unwrap_or_else(|| panic!("no {chain} rule with {needle:?} in {c:#?}"))
        .packets
}

async fn exchange_from(ns: &ambit::netns::NetNs, dst: SocketAddr) -> SocketAddr {
    let payload = ambit::lab::traffic::pattern(10_000);
    let ex = ambit::lab::traffic::exchange(ns, dst, &payload, DEADLINE)
        .await
        .unwrap();
    assert!(ex.reply == payload, "echo differs");
    ex.local
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecar_traffic_types() {
    let s = Sidecars::start(2, 1);
    let any: SocketAddr = "[::]:8080".parse().unwrap();
    let n1 = s.lab.pod_netns("n1-p1").unwrap();
    let n2 = s.lab.pod_netns("n2-p1").unwrap();
    let app1 = Server::start(&n1, any).await.unwrap();
    let metrics1 = Server::start(&n1, "[::]:15090".parse().unwrap())
        .await
        .unwrap();
    let second1 = Server::start(&n1, "[::]:9000".parse().unwrap())
        .await
        .unwrap();
    let _app2 = Server::start(&n2, any).await.unwrap();
    let fabric = Server::start(&s.lab.fabric_netns().unwrap(), any)
        .await
        .unwrap();
    let ip1: IpAddr = s.lab.pod("n1-p1").unwrap().ipv4.into();
    let ip2: IpAddr = s.lab.pod("n2-p1").unwrap().ipv4.into();
    let loopback6: IpAddr = "127.0.0.6".parse().unwrap();

    // 1. Remote pod -> local pod: n2-p1's app is redirected to its sidecar (ISTIO_REDIRECT),
    //    which tunnels to n1-p1's sidecar on 15008 (not redirected); that sidecar reaches the
    //    app from 127.0.0.6, which ISTIO_OUTPUT returns on lo.
    let (before1, before2) = (s.counters("n1-p1"), s.counters("n2-p1"));
    let local = exchange_from(&n2, (ip1, 8080).into()).await;
    let (after1, after2) = (s.counters("n1-p1"), s.counters("n2-p1"));
    assert!(
        packets(&after2, "ISTIO_OUTPUT", "-j ISTIO_REDIRECT")
            > packets(&before2, "ISTIO_OUTPUT", "-j ISTIO_REDIRECT")
    );
    assert!(
        packets(&after1, "ISTIO_OUTPUT", "-s 127.0.0.6/32")
            > packets(&before1, "ISTIO_OUTPUT", "-s 127.0.0.6/32")
    );
    assert!(
        packets(&after1, "ISTIO_INBOUND", "--dport 15008")
            > packets(&before1, "ISTIO_INBOUND", "--dport 15008")
    );
    assert_eq!(
        app1.accepted().last().unwrap().peer.ip(),
        loopback6,
        "app sees 127.0.0.6"
    );
    let hbone = s
        .flows("n1-p1")
        .into_iter()
        .find(|f| f["listener"] == "hbone" && f["src"] == local.to_string())
        .expect("hbone flow");
    assert_eq!(
        hbone["peer_identity"],
        "spiffe://cluster.local/ns/lab/sa/sa-n2-p1"
    );

    // 2. Local pod -> remote pod: captured by 15001 (outbound flow, route hbone); the remote
    //    app sees 127.0.0.6 as well (its own sidecar delivered it).
    let local = exchange_from(&n1, (ip2, 8080).into()).await;
    let out = s
        .flows("n1-p1")
        .into_iter()
        .find(|f| f["src"] == local.to_string())
        .expect("outbound flow");
    assert_eq!(
        (out["listener"].as_str(), out["route"].as_str()),
        (Some("outbound"), Some("hbone"))
    );

    // 3. A metrics scrape of the pod (15090) from outside bypasses the proxy.
    let before = s.counters("n1-p1");
    let fabric_ns = s.lab.fabric_netns().unwrap();
    exchange_from(&fabric_ns, (ip1, 15090).into()).await;
    let after = s.counters("n1-p1");
    assert!(
        packets(&after, "ISTIO_INBOUND", "--dport 15090")
            > packets(&before, "ISTIO_INBOUND", "--dport 15090")
    );
    assert_eq!(
        metrics1.accepted().last().unwrap().peer.ip(),
        s.lab.fabric_ipv4(),
        "scrape not proxied"
    );
    // Plaintext to the app port from outside goes through ISTIO_IN_REDIRECT to 15006.
    let before = s.counters("n1-p1");
    exchange_from(&fabric_ns, (ip1, 8080).into()).await;
    let after = s.counters("n1-p1");
    assert!(
        packets(&after, "ISTIO_IN_REDIRECT", "--to-ports 15006")
            > packets(&before, "ISTIO_IN_REDIRECT", "--to-ports 15006")
    );
    assert_eq!(app1.accepted().last().unwrap().peer.ip(), loopback6);

    // 4. Local pod -> local pod (a second server in the same pod, via the pod IP): leaves on
    //    lo as the app, returned by `-o lo -m owner ! --uid-owner 1337`, not proxied.
    let before = s.counters("n1-p1");
    exchange_from(&n1, (ip1, 9000).into()).await;
    let after = s.counters("n1-p1");
    assert!(
        packets(&after, "ISTIO_OUTPUT", "-o lo -m owner ! --uid-owner 1337")
            > packets(&before, "ISTIO_OUTPUT", "-o lo -m owner ! --uid-owner 1337")
    );
    assert_eq!(
        second1.accepted().last().unwrap().peer.ip(),
        ip1,
        "direct, own IP"
    );

    // 5. The proxy's own loopback traffic: its connection to the app from 127.0.0.6 (case 1)
    //    counted on the first ISTIO_OUTPUT rule; and it is never redirected to itself — the
    //    sidecar's accepted connections all came from apps, none from its own listeners.
    assert!(
        s.flows("n1-p1").iter().all(|f| f["error"].is_null()),
        "{:#?}",
        s.flows("n1-p1")
    );

    // 6. Proxy -> an address outside the mesh: the app's connection is captured (15001), the
    //    sidecar dials the fabric as UID 1337, which `-m owner --uid-owner 1337 -j RETURN` lets
    //    out; the server sees the pod's own IP.
    let before = s.counters("n1-p1");
    let local = exchange_from(&n1, (s.lab.fabric_ipv4(), 8080).into()).await;
    let after = s.counters("n1-p1");
    assert!(
        packets(
            &after,
            "ISTIO_OUTPUT",
            "-m owner --uid-owner 1337 -j RETURN"
        ) > packets(
            &before,
            "ISTIO_OUTPUT",
            "-m owner --uid-owner 1337 -j RETURN"
        )
    );
    assert_eq!(fabric.accepted().last().unwrap().peer.ip(), ip1);
    let out = s
        .flows("n1-p1")
        .into_iter()
        .find(|f| f["src"] == local.to_string())
        .expect("outbound flow");
    assert_eq!(out["route"], "passthrough");
}
