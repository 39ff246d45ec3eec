//! Services: a connection to a ClusterIP is carried to one of the Service's ready endpoints —
//! through HBONE when the endpoint is a mesh pod, by passthrough otherwise — spread over the
//! endpoints; with no ready endpoint it is refused at once.
#![cfg(feature = "lab")]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use ambit::lab::traffic::{exchange, pattern, Server};
use ambit::workload::{Endpoint, Service, ServicePort, Snapshot};
use support::*;

const VIP: &str = "10.96.0.10";

fn web_service(s: &Snapshot, endpoints: &[&str], ready: bool) -> Service {
    Service {
        name: "web".into(),
        namespace: "lab".into(),
        cluster_ips: vec![VIP.parse().unwrap()],
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
        }],
        endpoints: endpoints
            .iter()
            .map(|name| Endpoint {
                ip: s.pods.iter().find(|p| p.name == *name).unwrap().ips[0],
                ready,
                ports: [("http".to_string(), APP_PORT)].into(),
            })
            .collect(),
    }
}

async fn scenario(backend: &'static str) {
    let c = Cluster::start(2, 2, backend, |s| {
        label(s, "n2-p2", "istio.io/dataplane-mode", "none");
        let svc = web_service(s, &["n1-p2", "n2-p1"], true);
        s.services.push(svc);
    });
    let any: SocketAddr = "[::]:8080".parse().unwrap();
    let mut servers = Vec::new();
    for pod in ["n1-p2", "n2-p1", "n2-p2"] {
        servers.push(
            Server::start(&c.lab.pod_netns(pod).unwrap(), any)
                .await
                .unwrap(),
        );
    }
    let vip: SocketAddr = (VIP.parse::<std::net::IpAddr>().unwrap(), 80).into();
    let client_ip = c.lab.pod("n1-p1").unwrap().ipv4;

    // Spread over both endpoints, each reached through HBONE from the client pod's IP.
    for _ in 0..6 {
        let local = send(&c, "n1-p1", vip).await;
        let f = c.wait_flow("n1", |f| f["src"] == local.to_string() && is(f, "outbound"));
        assert_eq!(f["dst"], vip.to_string());
        assert_eq!(f["route"], "hbone", "{f:#}");
        let upstream = f["upstream"].as_str().unwrap_or_default().to_string();
        assert!(upstream.ends_with(":8080"), "{f:#}");
    }
    for server in &servers[..2] {
        let seen = server.accepted();
        assert_eq!(seen.len(), 3, "round robin over two endpoints: {seen:?}");
        assert!(seen.iter().all(|a| a.peer.ip() == client_ip));
    }

    // An endpoint outside the mesh is reached by passthrough.
    c.lab
        .update_workloads(|s| s.services = vec![web_service(s, &["n2-p2"], true)])
        .unwrap();
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        let local = send(&c, "n1-p1", vip).await;
        let f = c.wait_flow("n1", |f| f["src"] == local.to_string() && is(f, "outbound"));
        if f["route"] == "passthrough" {
            assert_eq!(servers[2].accepted().last().unwrap().peer.ip(), client_ip);
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "service update never applied: {f:#}"
        );
    }

    // No ready endpoint: the client's connection is closed promptly, and the flow says why.
    c.lab
        .update_workloads(|s| s.services = vec![web_service(s, &["n1-p2", "n2-p1"], false)])
        .unwrap();
    let ns = c.lab.pod_netns("n1-p1").unwrap();
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        let ex = exchange(&ns, vip, &pattern(100), Duration::from_secs(5)).await;
        let refused = ex.as_ref().map_or(true, |e| e.reply.is_empty());
        if refused {
            let local = ex.map(|e| e.local.to_string()).ok();
            let f = c.wait_flow("n1", |f| {
                f["dst"] == vip.to_string()
                    && f["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("no ready endpoint"))
                    && local.as_ref().is_none_or(|l| f["src"] == *l)
            });
            assert!(f["error"].as_str().unwrap().contains("lab/web"), "{f:#}");
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "unready endpoints still used"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_ip_reaches_ready_endpoints_iptables() {
    scenario("iptables").await;
}
