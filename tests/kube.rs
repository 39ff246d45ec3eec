//! Kubernetes mode: ambit watches a stand-in API server through its production kube-rs client.
//! The stand-in (`ambit::lab::apiserver`) speaks the real list/watch wire protocol over HTTP —
//! resourceVersions, watch events, bookmarks, 410 Gone — because no real kube-apiserver can
//! run on this machine. Pods from the API carry no netns path, so every capture here also
//! exercises netns discovery on the node.
#![cfg(feature = "lab")]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit::lab::traffic::{connect, Server};
use ambit::rules::{self, Backend};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REDIRECTION: &str = "ambient.istio.io/redirection";

fn redirection(c: &Cluster, pod: &str) -> Option<String> {
    c.api_pod(pod)?["metadata"]["annotations"][REDIRECTION]
        .as_str()
        .map(str::to_string)
}

async fn servers(c: &Cluster) -> Vec<Server> {
    let any: SocketAddr = "[::]:8080".parse().unwrap();
    let mut out = Vec::new();
    for pod in c.lab.pods() {
        out.push(
            Server::start(&c.lab.pod_netns(&pod.name).unwrap(), any)
                .await
                .unwrap(),
        );
    }
    out
}

/// Whether a connection from `from` to `to` is captured at the destination (HBONE or 15006).
/// The client's daemon may still be routing by the previous view for a moment (each daemon
/// follows the API on its own), so a failed attempt is retried within the deadline.
async fn captured_at_destination(c: &Cluster, from: &str, to: &str) -> bool {
    let dst = c.v4(to);
    let node = c.lab.pod(to).unwrap().node.clone();
    let ns = c.lab.pod_netns(from).unwrap();
    let payload = ambit::lab::traffic::pattern(1000);
    let until = Instant::now() + DEADLINE;
    loop {
        if let Ok(ex) = ambit::lab::traffic::exchange(&ns, dst, &payload, DEADLINE).await {
            if ex.reply == payload {
                // The destination handled it before the echo came back, so its flow exists.
                return c
                    .flows(&node)
                    .iter()
                    .any(|f| f["dst"] == dst.to_string() && f["src"] == ex.local.to_string());
            }
        }
        assert!(Instant::now() < until, "{from} -> {to} never got through");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Enrollment follows pod and namespace labels both ways, without a restart; the daemon
/// annotates captured pods and removes the annotation on release.
#[tokio::test(flavor = "multi_thread")]
async fn enroll_and_release_by_pod_and_namespace_labels() {
    let c = Cluster::start_kube(2, 2, false, |_| {});
    let _s = servers(&c).await;
    c.wait_state("n1-p1", "not-enrolled");
    assert!(!captured_at_destination(&c, "n2-p1", "n1-p1").await);
    assert_eq!(redirection(&c, "n1-p1"), None);

    // Pod label: in.
    c.lab
        .update_workloads(|s| label(s, "n1-p1", "istio.io/dataplane-mode", "ambient"))
        .unwrap();
    c.wait_state("n1-p1", "enrolled");
    wait_until("annotation set", || {
        redirection(&c, "n1-p1").as_deref() == Some("enabled")
    });
    assert!(captured_at_destination(&c, "n2-p1", "n1-p1").await);
    assert_eq!(redirection(&c, "n1-p2"), None, "only the labelled pod");

    // Pod label removed: out, annotation removed, rules gone.
    c.lab
        .update_workloads(|s| {
            let p = s.pods.iter_mut().find(|p| p.name == "n1-p1").unwrap();
            p.labels.remove("istio.io/dataplane-mode");
        })
        .unwrap();
    c.wait_state("n1-p1", "not-enrolled");
    wait_until("annotation removed", || redirection(&c, "n1-p1").is_none());
    let ns = c.lab.pod_netns("n1-p1").unwrap();
    assert!(!rules::installed(&ns, Backend::Iptables).unwrap().any());
    assert!(!captured_at_destination(&c, "n2-p1", "n1-p1").await);

    // Namespace label: every pod in; a pod label `none` opts one out again.
    c.lab
        .update_workloads(|s| {
            s.namespaces[0]
                .labels
                .insert("istio.io/dataplane-mode".into(), "ambient".into());
        })
        .unwrap();
    for pod in ["n1-p1", "n1-p2", "n2-p1", "n2-p2"] {
        c.wait_state(pod, "enrolled");
    }
    wait_until("all annotated", || {
        ["n1-p1", "n1-p2", "n2-p1", "n2-p2"]
            .iter()
            .all(|p| redirection(&c, p).as_deref() == Some("enabled"))
    });
    assert!(captured_at_destination(&c, "n2-p1", "n1-p2").await);
    c.lab
        .update_workloads(|s| label(s, "n1-p2", "istio.io/dataplane-mode", "none"))
        .unwrap();
    c.wait_state("n1-p2", "not-enrolled");
    wait_until("opt-out annotation removed", || {
        redirection(&c, "n1-p2").is_none()
    });
    assert!(!captured_at_destination(&c, "n2-p1", "n1-p2").await);
}

/// A deleted pod is released: rules and listeners gone from its namespace.
#[tokio::test(flavor = "multi_thread")]
async fn deleted_pod_is_released() {
    let c = Cluster::start_kube(1, 2, true, |_| {});
    c.wait_state("n1-p2", "enrolled");
    let ns = c.lab.pod_netns("n1-p2").unwrap();
    assert!(rules::installed(&ns, Backend::Iptables).unwrap().any());
    c.lab
        .update_workloads(|s| s.pods.retain(|p| p.name != "n1-p2"))
        .unwrap();
    assert_eq!(c.api_pod("n1-p2"), None, "deleted in the API");
    c.wait_pod("n1-p2", "gone", |s| s.is_none());
    assert!(!rules::installed(&ns, Backend::Iptables).unwrap().any());
    let own: SocketAddr = (c.lab.pod("n1-p2").unwrap().ipv4, 15008).into();
    assert!(connect(&ns, own).await.is_err(), "15008 still open");
}

/// Watch streams dropped, history expired (410 Gone → relist) and the API server restarted:
/// the daemons resync, healthy pods keep their capture and their live connections, and
/// changes made afterwards are still followed.
#[tokio::test(flavor = "multi_thread")]
async fn daemon_resyncs_after_watch_drop_and_apiserver_restart() {
    let c = Cluster::start_kube(2, 2, true, |_| {});
    let _s = servers(&c).await;
    c.wait_state("n1-p1", "enrolled");
    c.wait_state("n2-p1", "enrolled");
    c.wait_state("n2-p2", "enrolled");

    // A live connection through the mesh, kept open across everything below.
    let ns = c.lab.pod_netns("n1-p1").unwrap();
    let mut live = connect(&ns, c.v4("n2-p1")).await.unwrap();
    let mut echo = [0u8; 5];
    live.write_all(b"hello").await.unwrap();
    live.read_exact(&mut echo).await.unwrap();
    let installs_before = c.metric("n1", "ambit_rule_applies_total{outcome=\"installed\"}");

    let (status, _) = c.api("POST", "/standin/expire-history", None);
    assert_eq!(status, 200);
    let (status, _) = c.api("POST", "/standin/drop-watches", None);
    assert_eq!(status, 200);
    c.lab
        .restart_apiserver(std::path::Path::new(env!("CARGO_BIN_EXE_ambit")))
        .unwrap();

    // Changes after the restart are still followed: n2-p2 opts out by pod label.
    c.lab
        .update_workloads(|s| label(s, "n2-p2", "istio.io/dataplane-mode", "none"))
        .unwrap();
    c.wait_state("n2-p2", "not-enrolled");
    assert_eq!(c.pod_status("n2-p1").unwrap()["state"], "enrolled");
    assert_eq!(c.pod_status("n1-p1").unwrap()["state"], "enrolled");
    // No reinstall happened for the healthy pod: its rules were never rewritten.
    assert_eq!(
        c.metric("n1", "ambit_rule_applies_total{outcome=\"installed\"}"),
        installs_before
    );
    // The live connection still carries bytes both ways.
    live.write_all(b"again").await.unwrap();
    tokio::time::timeout(DEADLINE, live.read_exact(&mut echo))
        .await
        .expect("live connection stalled")
        .expect("live connection broken");
    assert_eq!(&echo, b"again");
}

/// A Service with endpoints on two nodes (Service + EndpointSlice objects): connections to
/// the ClusterIP reach both endpoints through HBONE; with no ready endpoint, a prompt refusal.
#[tokio::test(flavor = "multi_thread")]
async fn service_endpoints_on_two_nodes() {
    let c = Cluster::start_kube(2, 2, true, |s| {
        let ip = |n: &str| s.pods.iter().find(|p| p.name == n).unwrap().ips[0];
        let endpoints = ["n1-p2", "n2-p1"]
            .iter()
            .map(|n| ambit::workload::Endpoint {
                ip: ip(n),
                ready: true,
                ports: [("http".to_string(), APP_PORT)].into(),
            })
            .collect();
        s.services.push(ambit::workload::Service {
            name: "web".into(),
            namespace: "lab".into(),
            cluster_ips: vec!["10.96.0.20".parse().unwrap()],
            ports: vec![ambit::workload::ServicePort {
                name: "http".into(),
                port: 80,
            }],
            endpoints,
        });
    });
    let servers = servers(&c).await;
    let vip: SocketAddr = "10.96.0.20:80".parse().unwrap();
    for _ in 0..4 {
        let local = send(&c, "n1-p1", vip).await;
        let f = c.wait_flow("n1", |f| f["src"] == local.to_string() && is(f, "outbound"));
        assert_eq!(f["route"], "hbone", "{f:#}");
    }
    let hit = |pod: &str| {
        let i = c.lab.pods().iter().position(|p| p.name == pod).unwrap();
        servers[i].accepted().len()
    };
    assert_eq!((hit("n1-p2"), hit("n2-p1")), (2, 2), "both endpoints used");

    c.lab
        .update_workloads(|s| {
            for e in &mut s.services[0].endpoints {
                e.ready = false;
            }
        })
        .unwrap();
    let ns = c.lab.pod_netns("n1-p1").unwrap();
    let until = Instant::now() + DEADLINE;
    loop {
        let ex = ambit::lab::traffic::exchange(&ns, vip, b"x", Duration::from_secs(5)).await;
        if ex.as_ref().map_or(true, |e| e.reply.is_empty()) {
            c.wait_flow("n1", |f| {
                f["dst"] == vip.to_string()
                    && f["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("no ready endpoint"))
            });
            break;
        }
        assert!(Instant::now() < until, "unready endpoints still used");
    }
}

/// Bad objects are reported as Events and in the log, skipped, and others are unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn bad_objects_are_reported_and_skipped() {
    let c = Cluster::start_kube(1, 3, true, |s| {
        annotate(
            s,
            "n1-p2",
            "traffic.sidecar.istio.io/excludeInboundPorts",
            "eighty",
        );
        s.pods
            .iter_mut()
            .find(|p| p.name == "n1-p3")
            .unwrap()
            .ips
            .clear();
    });
    c.wait_state("n1-p1", "enrolled");
    let e = c.wait_state("n1-p2", "failed");
    assert!(e["error"].as_str().unwrap().contains("eighty"), "{e:#}");
    c.wait_state("n1-p3", "failed");

    // An object with fields ambit has never heard of is still understood.
    let (status, _) = c.api(
        "PATCH",
        "/api/v1/namespaces/lab/pods/n1-p1",
        Some(&serde_json::json!({"spec": {"futureField": {"x": 1}}, "metadata": {"labels": {"extra": "1"}}})),
    );
    assert_eq!(status, 200);
    // A namespace label value nobody understands.
    let (status, body) = c.api(
        "POST",
        "/api/v1/namespaces",
        Some(&serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "odd", "labels": {"istio.io/dataplane-mode": "sometimes"}}})),
    );
    assert!(status == 201 || status == 200, "{status} {body}");

    let notes = || -> Vec<String> {
        let mut all = c.api_events("lab");
        all.extend(c.api_events("default"));
        all.iter()
            .map(|e| {
                format!(
                    "{} {} {}",
                    e["regarding"]["name"]
                        .as_str()
                        .or(e["involvedObject"]["name"].as_str())
                        .unwrap_or(""),
                    e["reason"].as_str().unwrap_or(""),
                    e["note"].as_str().or(e["message"].as_str()).unwrap_or("")
                )
            })
            .collect()
    };
    wait_until("events for both bad pods and the namespace", || {
        let n = notes();
        n.iter()
            .any(|e| e.starts_with("n1-p2 CaptureFailed") && e.contains("eighty"))
            && n.iter()
                .any(|e| e.starts_with("n1-p3 CaptureFailed") && e.contains("no IPs"))
            && n.iter()
                .any(|e| e.starts_with("odd ") && e.contains("sometimes"))
    });
    let log = settled_log(&c.lab, "n1", |l| {
        l.contains("eighty") && l.contains("sometimes")
    });
    assert!(log.contains("eighty") && log.contains("sometimes"), "{log}");
    assert_eq!(c.pod_status("n1-p1").unwrap()["state"], "enrolled");
    assert_eq!(
        redirection(&c, "n1-p2"),
        None,
        "a failed pod is not marked captured"
    );
}

/// Restarting the daemon never leaves a pod without its rules (polled throughout), and new
/// connections work again once it is ready.
#[tokio::test(flavor = "multi_thread")]
async fn daemon_restart_keeps_rules_in_place() {
    let c = Cluster::start_kube(2, 1, true, |_| {});
    let _s = servers(&c).await;
    c.wait_state("n1-p1", "enrolled");
    let ns = c.lab.pod_netns("n1-p1").unwrap();
    let expected =
        serde_json::to_string(&rules::installed(&ns, Backend::Iptables).unwrap()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (ns, stop, expected) = (ns.clone(), stop.clone(), expected.clone());
        std::thread::spawn(move || {
            let mut checks = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let now = serde_json::to_string(&rules::installed(&ns, Backend::Iptables).unwrap())
                    .unwrap();
                assert_eq!(now, expected, "rules changed during the restart");
                checks += 1;
            }
            checks
        })
    };
    c.lab.stop_daemon("n1").unwrap();
    c.start_daemon("n1");
    c.lab.wait_ready("n1", DEADLINE).unwrap();
    c.wait_state("n1-p1", "enrolled");
    stop.store(true, std::sync::atomic::Ordering::Release);
    let checks = watcher.join().expect("rules stayed in place");
    assert!(
        checks > 3,
        "the rules were polled during the restart ({checks} times)"
    );
    assert_eq!(
        c.pod_status("n1-p1").unwrap()["rules"],
        "unchanged",
        "adopted, not reinstalled"
    );
    let local = send(&c, "n2-p1", c.v4("n1-p1")).await;
    c.wait_flow("n1", |f| f["src"] == local.to_string() && is(f, "hbone"));
}
