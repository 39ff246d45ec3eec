//! Capture paths through the real daemon in a lab cluster, for both rule backends: which
//! listener accepted each connection (the daemons' `/flows`), what the server saw as the
//! client's address, and that bytes arrive intact. Mesh-to-mesh traffic is carried by HBONE
//! (15001 → 15008); plaintext from outside the mesh arrives on 15006.
//!
//! Lab: 2 nodes × 3 pods in an ambient namespace; `n2-p3` is labelled out of the mesh.
#![cfg(feature = "lab")]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ambit::lab::traffic::{connect, exchange, pattern, Server};
use support::*;
use tokio::io::AsyncReadExt;

struct World {
    c: Cluster,
    servers: Vec<(String, Server)>,
    fabric: Server,
}

impl World {
    async fn start(backend: &'static str) -> World {
        let c = Cluster::start(2, 3, backend, |s| {
            label(s, "n2-p3", "istio.io/dataplane-mode", "none")
        });
        let any: SocketAddr = "[::]:8080".parse().unwrap();
        let mut servers = Vec::new();
        for pod in c.lab.pods() {
            let ns = c.lab.pod_netns(&pod.name).unwrap();
            servers.push((pod.name.clone(), Server::start(&ns, any).await.unwrap()));
        }
        let fabric = Server::start(&c.lab.fabric_netns().unwrap(), any)
            .await
            .unwrap();
        c.wait_state("n2-p3", "not-enrolled");
        World { c, servers, fabric }
    }

    fn server(&self, pod: &str) -> &Server {
        &self.servers.iter().find(|(n, _)| n == pod).unwrap().1
    }

    /// Sends a payload from `from` to `dst`, asserts the echo is intact, returns the client's
    /// own address.
    async fn send(&self, from: &str, dst: SocketAddr) -> SocketAddr {
        let payload = pattern(100_000);
        let ns = self.c.lab.pod_netns(from).unwrap();
        let ex = exchange(&ns, dst, &payload, DEADLINE).await.unwrap();
        assert!(ex.reply == payload, "{from} -> {dst}: echo differs");
        ex.local
    }

    fn ip(&self, pod: &str, v6: bool) -> IpAddr {
        let p = self.c.lab.pod(pod).unwrap();
        if v6 {
            p.ipv6.into()
        } else {
            p.ipv4.into()
        }
    }

    /// Sends from `from` to `dst`, served by `server`, and asserts the server saw exactly one
    /// new connection, from `client_ip`, with every byte. Returns the client's own address.
    async fn send_seen(
        &self,
        from: &str,
        dst: SocketAddr,
        server: &Server,
        client_ip: IpAddr,
    ) -> SocketAddr {
        let before = server.accepted().len();
        let local = self.send(from, dst).await;
        server
            .wait_for(DEADLINE, |_| {
                let all = server.accepted();
                all.len() > before && all[before].done
            })
            .await
            .expect("server got the connection");
        let new = &server.accepted()[before..];
        assert_eq!(new.len(), 1, "one connection reached the server: {new:?}");
        assert_eq!(
            new[0].peer.ip(),
            client_ip,
            "source address seen by the server"
        );
        assert_eq!(new[0].bytes, 100_000);
        local
    }

    /// Flows on `node` whose original destination is `dst`.
    fn flows_to(&self, node: &str, dst: SocketAddr) -> Vec<serde_json::Value> {
        self.c
            .flows(node)
            .into_iter()
            .filter(|f| f["dst"] == dst.to_string())
            .collect()
    }
}

/// a + f: across nodes, captured by the client's 15001, carried through HBONE, delivered by
/// the server pod's 15008 — exactly once each (no loop, d); the server sees the client pod's IP
/// and the server side knows the client's SPIFFE identity.
async fn across_nodes(w: &World, v6: bool) {
    let dst = SocketAddr::new(w.ip("n2-p1", v6), APP_PORT);
    let local = w
        .send_seen("n1-p1", dst, w.server("n2-p1"), w.ip("n1-p1", v6))
        .await;
    let out = w.c.wait_flow("n1", |f| f["src"] == local.to_string());
    assert!(is(&out, "outbound"), "{out:#}");
    assert_eq!(out["dst"], dst.to_string());
    assert_eq!(out["pod"], "lab/n1-p1");
    assert_eq!(out["route"], "hbone");
    assert_eq!(out["peer_identity"], identity_of("n2-p1"));
    w.c.wait_flow("n2", |f| {
        f["dst"] == dst.to_string() && f["finished"] == true
    });
    let inbound = w.flows_to("n2", dst);
    assert_eq!(
        inbound.len(),
        1,
        "exactly one inbound capture: {inbound:#?}"
    );
    assert!(is(&inbound[0], "hbone"), "{:#}", inbound[0]);
    assert_eq!(inbound[0]["pod"], "lab/n2-p1");
    assert_eq!(
        inbound[0]["src"],
        local.to_string(),
        "forwarded client address"
    );
    assert_eq!(inbound[0]["peer_identity"], identity_of("n1-p1"));
    assert_eq!(
        w.flows_to("n1", dst).len(),
        1,
        "exactly one outbound capture"
    );
}

/// b + f: same node, pod → own IP, pod → loopback.
async fn same_node(w: &World, v6: bool) {
    let dst = SocketAddr::new(w.ip("n1-p2", v6), APP_PORT);
    let local = w
        .send_seen("n1-p1", dst, w.server("n1-p2"), w.ip("n1-p1", v6))
        .await;
    w.c.wait_flow("n1", |f| f["src"] == local.to_string() && is(f, "outbound"));
    let inbound =
        w.c.wait_flow("n1", |f| f["dst"] == dst.to_string() && is(f, "hbone"));
    assert_eq!(inbound["pod"], "lab/n1-p2");
    assert_eq!(inbound["peer_identity"], identity_of("n1-p1"));

    // To its own pod IP: leaves through lo, not captured.
    let own = SocketAddr::new(w.ip("n1-p3", v6), APP_PORT);
    let local = w
        .send_seen("n1-p3", own, w.server("n1-p3"), w.ip("n1-p3", v6))
        .await;
    assert!(
        w.c.flows_from("n1", local).is_empty(),
        "own-IP traffic was captured"
    );
    assert!(w.flows_to("n1", own).is_empty());
}

async fn loopback_not_captured(w: &World) {
    let dst: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let local = w.send("n2-p2", dst).await;
    assert!(
        w.c.flows_from("n2", local).is_empty(),
        "loopback traffic was captured"
    );
    let dst: SocketAddr = "[::1]:8080".parse().unwrap();
    let local = w.send("n2-p2", dst).await;
    assert!(
        w.c.flows_from("n2", local).is_empty(),
        "::1 traffic was captured"
    );
}

/// e: destinations outside the mesh are reached by passthrough from the pod's own IP.
async fn passthrough(w: &World) {
    let dst = w.c.v4("n2-p3");
    let local = w
        .send_seen("n1-p2", dst, w.server("n2-p3"), w.ip("n1-p2", false))
        .await;
    let out = w.c.wait_flow("n1", |f| f["src"] == local.to_string());
    assert_eq!(out["route"], "passthrough", "{out:#}");
    assert!(
        w.flows_to("n2", dst).is_empty(),
        "a non-enrolled pod was captured"
    );

    let fabric = SocketAddr::new(w.c.lab.fabric_ipv4().into(), APP_PORT);
    let local = w
        .send_seen("n2-p1", fabric, &w.fabric, w.ip("n2-p1", false))
        .await;
    let out = w.c.wait_flow("n2", |f| f["src"] == local.to_string());
    assert_eq!(out["route"], "passthrough");
}

/// Plaintext from outside the mesh (a pod that is not enrolled) is captured by the
/// destination's 15006 and handed to the app with the client's IP (permissive mode).
async fn plaintext_inbound(w: &World, v6: bool) {
    let dst = SocketAddr::new(w.ip("n1-p3", v6), APP_PORT);
    let local = w
        .send_seen("n2-p3", dst, w.server("n1-p3"), w.ip("n2-p3", v6))
        .await;
    let f = w.c.wait_flow("n1", |f| f["src"] == local.to_string());
    assert!(is(&f, "inbound"), "{f:#}");
    assert_eq!(f["dst"], dst.to_string());
    assert!(f["peer_identity"].is_null(), "plaintext has no identity");
    assert!(
        w.c.flows("n2")
            .iter()
            .all(|f| f["src"] != local.to_string()),
        "non-enrolled pod captured"
    );
}

/// d: connecting straight to a proxy port is refused, promptly, instead of looping.
async fn self_calls_refused(w: &World) {
    for (pod, dst) in [
        ("n1-p1", SocketAddr::new(w.ip("n1-p1", false), 15001)),
        ("n1-p1", "127.0.0.1:15006".parse().unwrap()),
    ] {
        let ns = w.c.lab.pod_netns(pod).unwrap();
        let mut s = connect(&ns, dst).await.unwrap();
        let local = s.local_addr().unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "{dst}: connection not closed: {read:?}"
        );
        let f = w.c.wait_flow("n1", |f| {
            f["src"] == ambit::socket::canonical(local).to_string()
        });
        let err = f["error"].as_str().unwrap_or_default();
        assert!(err.contains("recursive call"), "{dst}: {f:#}");
    }
}

async fn scenario(backend: &'static str) {
    let w = World::start(backend).await;
    across_nodes(&w, false).await;
    across_nodes(&w, true).await;
    same_node(&w, false).await;
    same_node(&w, true).await;
    loopback_not_captured(&w).await;
    passthrough(&w).await;
    plaintext_inbound(&w, false).await;
    plaintext_inbound(&w, true).await;
    self_calls_refused(&w).await;
}

/// j: the iptables backend.
#[tokio::test(flavor = "multi_thread")]
async fn capture_paths_iptables() {
    scenario("iptables").await;
}

/// j: the native nftables backend passes the same tests.
#[tokio::test(flavor = "multi_thread")]
async fn capture_paths_nftables() {
    scenario("nftables").await;
}
