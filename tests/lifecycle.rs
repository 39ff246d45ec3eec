//! g: pods leaving and joining the mesh through the workload file, re-applies that change
//! nothing, drift repaired — observed in the pod's netns (rules, listeners) and in traffic.
#![cfg(feature = "lab")]

mod support;

use std::net::SocketAddr;
use std::process::Command;

use ambit::lab::traffic::{connect, Server};
use ambit::rules::{self, Backend};
use support::*;

/// Connections to `dst` delivered by `node`'s daemon (through HBONE or plaintext capture).
fn inbound_count(c: &Cluster, node: &str, dst: SocketAddr) -> usize {
    c.flows(node)
        .iter()
        .filter(|f| (is(f, "inbound") || is(f, "hbone")) && f["dst"] == dst.to_string())
        .count()
}

/// Runs a command inside pod `pod`'s netns and returns its stdout.
fn in_pod(c: &Cluster, pod: &str, cmd: &[&str]) -> String {
    let mut command = Command::new(cmd[0]);
    command.args(&cmd[1..]);
    let out = c.lab.pod_netns(pod).unwrap().output(&mut command).unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn remove_and_readd(backend: &'static str) {
    let c = Cluster::start(2, 1, backend, |_| {});
    let ns = c.lab.pod_netns("n2-p1").unwrap();
    let _server = Server::start(&ns, "[::]:8080".parse().unwrap())
        .await
        .unwrap();
    let dst = c.v4("n2-p1");
    let b: Backend = backend.parse().unwrap();
    send(&c, "n1-p1", dst).await;
    assert_eq!(inbound_count(&c, "n2", dst), 1);
    assert!(rules::installed(&ns, b).unwrap().any());

    let original = c.lab.workloads().unwrap();
    c.lab
        .update_workloads(|s| s.pods.retain(|p| p.name != "n2-p1"))
        .unwrap();
    c.wait_pod("n2-p1", "gone", |s| s.is_none());
    let left = rules::installed(&ns, b).unwrap();
    assert!(!left.any(), "rules left behind: {left:?}");
    // Listeners closed: the pod's own 15006 refuses.
    let own: SocketAddr = (c.lab.pod("n2-p1").unwrap().ipv4, 15006).into();
    let err = connect(&ns, own).await.expect_err("15006 still listening");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // Traffic flows uncaptured at the destination; the source passes it through as non-mesh.
    send_routed(&c, "n1-p1", dst, "passthrough").await;
    assert_eq!(
        tunnels_to(&c, dst),
        1,
        "released pod still reached through HBONE"
    );
    assert!(
        !c.flows("n2")
            .iter()
            .any(|f| is(f, "inbound") && f["dst"] == dst.to_string()),
        "released pod still captured"
    );

    c.lab.write_workloads(&original).unwrap();
    c.wait_state("n2-p1", "enrolled");
    send_routed(&c, "n1-p1", dst, "hbone").await;
    c.wait_flow("n2", |f| {
        is(f, "hbone") && f["dst"] == dst.to_string() && f["finished"] == true
    });
    assert_eq!(
        tunnels_to(&c, dst),
        2,
        "re-added pod not reached through HBONE"
    );
}

/// Tunnels delivered to `dst` by the n2 daemon.
fn tunnels_to(c: &Cluster, dst: SocketAddr) -> usize {
    c.flows("n2")
        .iter()
        .filter(|f| is(f, "hbone") && f["dst"] == dst.to_string() && f["error"].is_null())
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_removed_and_readded_iptables() {
    remove_and_readd("iptables").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_removed_and_readded_nftables() {
    remove_and_readd("nftables").await;
}

/// Waits until the daemon on `node` has counted `n` more reconciliations with `outcome`.
fn wait_applies(c: &Cluster, node: &str, outcome: &str, n: f64) {
    let series = format!("ambit_rule_applies_total{{outcome=\"{outcome}\"}}");
    let start = c.metric(node, &series);
    wait_until(&format!("{n} more {outcome} re-applies on {node}"), || {
        c.metric(node, &series) >= start + n
    });
}

/// What a rewrite would change: iptables rule counters (a restore resets them) or nft rule
/// handles (a new transaction allocates new ones).
fn rule_fingerprint(c: &Cluster, pod: &str) -> String {
    match c.backend {
        "iptables" => in_pod(c, pod, &["iptables-save", "-c", "-t", "nat"])
            .lines()
            .filter(|l| l.contains("ISTIO_"))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => in_pod(
            c,
            pod,
            &["nft", "-a", "list", "table", "inet", "istio-ambient-nat"],
        ),
    }
}

/// A rule listing with nft's packet/byte counters removed (a repair resets them).
fn without_counters(listing: &str) -> String {
    let mut out = Vec::new();
    let mut words = listing.split(' ').peekable();
    while let Some(w) = words.next() {
        if w == "packets" || w == "bytes" {
            words.next();
            continue;
        }
        out.push(w);
    }
    out.join(" ")
}

async fn reapply_and_repair(backend: &'static str) {
    let c = Cluster::start(1, 2, backend, |_| {});
    let ns = c.lab.pod_netns("n1-p2").unwrap();
    let any: SocketAddr = "[::]:8080".parse().unwrap();
    let _server = Server::start(&ns, any).await.unwrap();
    let _server1 = Server::start(&c.lab.pod_netns("n1-p1").unwrap(), any)
        .await
        .unwrap();
    send(&c, "n1-p1", c.v4("n1-p2")).await;
    let before = rule_fingerprint(&c, "n1-p2");
    if backend == "iptables" {
        assert!(
            before
                .lines()
                .any(|l| l.contains("-A ISTIO_") && !l.starts_with("[0:0]")),
            "traffic should have moved some rule counters: {before}"
        );
    }
    // Periodic verification (every second) finds nothing to do and writes nothing.
    wait_applies(&c, "n1", "unchanged", 4.0);
    assert_eq!(
        rule_fingerprint(&c, "n1-p2"),
        before,
        "an unchanged re-apply rewrote rules"
    );
    assert_eq!(c.pod_status("n1-p2").unwrap()["rules"], "unchanged");

    // Drift: someone flushes our outbound chain; the next verification restores it.
    let b: Backend = backend.parse().unwrap();
    let listing =
        || without_counters(&serde_json::to_string(&rules::installed(&ns, b).unwrap()).unwrap());
    let whole = listing();
    match backend {
        "iptables" => in_pod(
            &c,
            "n1-p2",
            &["iptables", "-t", "nat", "-F", "ISTIO_OUTPUT"],
        ),
        _ => in_pod(
            &c,
            "n1-p2",
            &[
                "nft",
                "flush",
                "chain",
                "inet",
                "istio-ambient-nat",
                "istio-output",
            ],
        ),
    };
    assert_ne!(listing(), whole);
    wait_applies(&c, "n1", "repaired", 1.0);
    assert_eq!(listing(), whole);
    let local = send(&c, "n1-p2", c.v4("n1-p1")).await;
    c.wait_flow("n1", |f| f["src"] == local.to_string() && is(f, "outbound"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_reapply_and_drift_repair_iptables() {
    reapply_and_repair("iptables").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_reapply_and_drift_repair_nftables() {
    reapply_and_repair("nftables").await;
}
