//! h: bad input — an invalid annotation, a missing netns, a pod without IPs, a netns that is
//! not the pod's, a malformed pod entry, an unreadable workload file. Each is reported with the
//! pod and the value, nothing of the bad pod is captured half-way, and other pods carry on.
#![cfg(feature = "lab")]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;

use ambit::lab::traffic::{connect, exchange, pattern, Server};
use ambit::rules::{self, Backend};
use support::*;

fn error_of(c: &Cluster, pod: &str) -> String {
    let status = c.wait_state(pod, "failed");
    status["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_pods_fail_alone_and_loudly() {
    let c = Cluster::start(1, 5, "iptables", |s| {
        annotate(
            s,
            "n1-p2",
            "traffic.sidecar.istio.io/excludeInboundPorts",
            "80,abc",
        );
        let p3 = s.pods.iter_mut().find(|p| p.name == "n1-p3").unwrap();
        p3.netns = Some(PathBuf::from("/var/run/netns/ambit-test-no-such-netns"));
        let p1_netns = s
            .pods
            .iter()
            .find(|p| p.name == "n1-p1")
            .unwrap()
            .netns
            .clone();
        let p4 = s.pods.iter_mut().find(|p| p.name == "n1-p4").unwrap();
        p4.ips.clear();
        // n1-p5 points at n1-p1's namespace, where its IPs are not configured.
        let p5 = s.pods.iter_mut().find(|p| p.name == "n1-p5").unwrap();
        p5.netns = p1_netns;
    });
    let any: SocketAddr = "[::]:8080".parse().unwrap();
    let mut servers = Vec::new();
    for pod in c.lab.pods() {
        servers.push(
            Server::start(&c.lab.pod_netns(&pod.name).unwrap(), any)
                .await
                .unwrap(),
        );
    }

    let e = error_of(&c, "n1-p2");
    assert!(
        e.contains("lab/n1-p2") && e.contains("excludeInboundPorts") && e.contains("abc"),
        "{e}"
    );
    let e = error_of(&c, "n1-p3");
    assert!(
        e.contains("lab/n1-p3") && e.contains("ambit-test-no-such-netns"),
        "{e}"
    );
    let e = error_of(&c, "n1-p4");
    assert!(e.contains("lab/n1-p4") && e.contains("no IPs"), "{e}");
    let e = error_of(&c, "n1-p5");
    let p5 = c.lab.pod("n1-p5").unwrap();
    assert!(
        e.contains("lab/n1-p5") && e.contains(&p5.ipv4.to_string()) && e.contains("not configured"),
        "{e}"
    );
    c.wait_state("n1-p1", "enrolled");
    assert_eq!(c.metric("n1", "ambit_pods{outcome=\"failed\"}"), 4.0);
    assert_eq!(c.metric("n1", "ambit_pods{outcome=\"enrolled\"}"), 1.0);
    let log = settled_log(&c.lab, "n1", |l| {
        l.contains("pod capture failed") && l.contains("abc")
    });
    assert!(
        log.contains("pod capture failed") && log.contains("abc"),
        "{log}"
    );

    // Nothing half-way: the failed pods' own namespaces hold no rules and no listeners.
    for pod in ["n1-p2", "n1-p4"] {
        let ns = c.lab.pod_netns(pod).unwrap();
        let left = rules::installed(&ns, Backend::Iptables).unwrap();
        assert!(!left.any(), "{pod}: rules installed: {left:?}");
        let own: SocketAddr = (c.lab.pod(pod).unwrap().ipv4, 15001).into();
        assert!(
            connect(&ns, own).await.is_err(),
            "{pod}: a listener is open"
        );
    }
    // A mesh pod whose capture failed is not reachable through the mesh: the tunnel to it is
    // refused and the client's connection closed (fail closed, never plaintext).
    let ns = c.lab.pod_netns("n1-p1").unwrap();
    let ex = exchange(&ns, c.v4("n1-p2"), &pattern(1000), DEADLINE).await;
    assert!(ex.as_ref().map_or(true, |e| e.reply.is_empty()), "{ex:?}");
    let f = c.wait_flow("n1", |f| {
        is(f, "outbound") && f["dst"] == c.v4("n1-p2").to_string() && f["finished"] == true
    });
    assert!(
        f["error"].as_str().unwrap_or_default().contains("HBONE"),
        "{f:#}"
    );
    // The failed pod's own traffic is not captured on its side; the healthy pod still
    // captures it inbound.
    let local = send(&c, "n1-p2", c.v4("n1-p1")).await;
    assert!(
        !c.flows_from("n1", local).iter().any(|f| is(f, "outbound")),
        "failed pod's outbound traffic was captured"
    );
    c.wait_flow("n1", |f| {
        is(f, "inbound") && f["dst"] == c.v4("n1-p1").to_string()
    });

    // Fixing the annotation heals the pod (after its retry backoff).
    c.lab
        .update_workloads(|s| {
            annotate(
                s,
                "n1-p2",
                "traffic.sidecar.istio.io/excludeInboundPorts",
                "80",
            )
        })
        .unwrap();
    c.wait_state("n1-p2", "enrolled");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_workload_file_keeps_last_good_state() {
    let c = Cluster::start(1, 2, "iptables", |_| {});
    let any: SocketAddr = "[::]:8080".parse().unwrap();
    let _s = Server::start(&c.lab.pod_netns("n1-p2").unwrap(), any)
        .await
        .unwrap();
    c.wait_state("n1-p2", "enrolled");
    let good = std::fs::read_to_string(c.lab.workloads_path()).unwrap();

    // A malformed pod entry is rejected alone and reported with its value.
    let mut doc: serde_json::Value = serde_json::from_str(&good).unwrap();
    doc["pods"].as_array_mut().unwrap().push(serde_json::json!({
        "uid": "x", "name": "broken", "namespace": "lab", "node": "n1", "ips": ["10.1.2.300"]
    }));
    write_atomically(&c, &doc.to_string());
    wait_until("the broken entry reported", || {
        let pods = c.pods("n1");
        let Some(b) = pods.iter().find(|p| p["pod"] == "lab/broken") else {
            return false;
        };
        assert_eq!(b["state"], "failed");
        assert!(b["error"].as_str().unwrap().contains("10.1.2.300"), "{b:#}");
        true
    });
    c.wait_state("n1-p2", "enrolled");

    // An unreadable file: the error is reported, the last good snapshot stays in force.
    write_atomically(&c, "{ this is not json");
    wait_until("the file error reported", || match source_error(&c) {
        Some(e) => {
            assert!(e.contains("workloads.json") && e.contains("line 1"), "{e}");
            true
        }
        None => false,
    });
    c.wait_state("n1-p2", "enrolled");
    let local = send(&c, "n1-p1", c.v4("n1-p2")).await;
    c.wait_flow("n1", |f| f["src"] == local.to_string() && is(f, "outbound"));

    write_atomically(&c, &good);
    wait_until("the file error cleared", || source_error(&c).is_none());
}

/// The workload source's error as the daemon on n1 reports it.
fn source_error(c: &Cluster) -> Option<String> {
    let status: serde_json::Value =
        serde_json::from_str(&c.lab.admin_get("n1", "/status").unwrap()).unwrap();
    status["source_error"].as_str().map(str::to_string)
}

fn write_atomically(c: &Cluster, text: &str) {
    let path = c.lab.workloads_path();
    let tmp = path.with_extension("tmp-test");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}
