//! `ambit explain` against the live lab: for a captured cross-node flow, an excluded port, a
//! passthrough destination, a self-call and a policy denial, the explanation is checked
//! against what the traffic then actually did — the kernel's counter of the rule it names, the
//! daemons' `/flows`, and what the client saw. `ambit config` tables are checked against the
//! same lab.
//!
//! Lab: 2 nodes × 3 pods, iptables and nftables; `n1-p2` excludes outbound port 9000, `n2-p3`
//! is out of the mesh, a DENY policy covers port 8080 of `n2-p2`.
#![cfg(feature = "lab")]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use ambit::lab::traffic::{pattern, Server};
use serde_json::{json, Value};
use support::*;

const EXCLUDED: u16 = 9000;

fn start(backend: &'static str) -> Cluster {
    Cluster::start(2, 3, backend, |s| {
        for pod in &mut s.pods {
            pod.labels.insert("app".into(), pod.name.clone());
        }
        annotate(
            s,
            "n1-p2",
            "traffic.sidecar.istio.io/excludeOutboundPorts",
            &EXCLUDED.to_string(),
        );
        label(s, "n2-p3", "istio.io/dataplane-mode", "none");
        s.istio.push(json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "deny-p2-app", "namespace": "lab"},
            "spec": {"selector": {"matchLabels": {"app": "n2-p2"}}, "action": "DENY",
                     "rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]},
        }));
    })
}

/// The daemon of `node`'s explanation, as JSON.
fn explain(c: &Cluster, node: &str, src: &str, dst: SocketAddr) -> Value {
    let dst = dst.to_string().replace('[', "%5B").replace(']', "%5D");
    let body = c
        .lab
        .admin_get(node, &format!("/explain/{src}/{dst}"))
        .expect("GET /explain");
    serde_json::from_str(&body).expect("explanation JSON")
}

fn packets(e: &Value) -> u64 {
    e["capture"]["rule"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no counters in {e:#}"))
}

async fn servers(c: &Cluster) -> Vec<Server> {
    let mut all = Vec::new();
    for pod in c.lab.pods() {
        let ns = c.lab.pod_netns(&pod.name).unwrap();
        for port in [APP_PORT, EXCLUDED] {
            let any: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, port).into();
            all.push(Server::start(&ns, any).await.unwrap());
        }
    }
    all
}

async fn scenario(backend: &'static str) {
    let c = start(backend);
    let _servers = servers(&c).await;
    c.wait_state("n2-p3", "not-enrolled");
    for pod in ["n1-p1", "n1-p2", "n2-p1", "n2-p2"] {
        c.wait_state(pod, "enrolled");
    }
    let at = |pod: &str, port: u16| -> SocketAddr { (c.lab.pod(pod).unwrap().ipv4, port).into() };

    // Captured cross-node: the redirect rule's counter moves, the tunnel goes where it said.
    let dst = at("n2-p1", APP_PORT);
    let before = explain(&c, "n1", "n1-p1", dst);
    assert_eq!(before["capture"]["captured"], true, "{before:#}");
    assert_eq!(before["route"]["kind"], "hbone", "{before:#}");
    assert_eq!(before["route"]["peer"], at("n2-p1", 15008).to_string());
    assert_eq!(before["route"]["expected_identity"], identity_of("n2-p1"));
    assert_eq!(before["at_destination"]["listener"], "15008 (HBONE)");
    assert_eq!(before["at_destination"]["allowed"], true);
    let local = send(&c, "n1-p1", dst).await;
    let after = explain(&c, "n1", "lab/n1-p1", dst);
    assert_eq!(
        after["capture"]["rule"]["number"],
        before["capture"]["rule"]["number"]
    );
    assert!(packets(&after) > packets(&before), "{before:#}\n{after:#}");
    let flow = after["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["src"] == local.to_string())
        .unwrap_or_else(|| panic!("the flow is not listed: {after:#}"))
        .clone();
    assert_eq!(flow["listener"], "outbound");
    assert_eq!(flow["bytes_sent"], 10_000);
    let peer = c.wait_flow("n2", |f| is(f, "hbone") && f["dst"] == dst.to_string());
    assert_eq!(peer["peer_identity"], identity_of("n1-p1"));
    let v6: SocketAddr = c.v6("n2-p1");
    let e6 = explain(&c, "n1", "n1-p1", v6);
    assert_eq!(e6["route"]["kind"], "hbone", "{e6:#}");
    assert!(e6["capture"]["chain"]
        .as_str()
        .unwrap()
        .contains(match backend {
            "iptables" => "ip6tables",
            _ => "istio-output",
        }));

    // Excluded port: accepted by its own rule, reaches 15006 on the other side as plaintext.
    let dst = at("n2-p1", EXCLUDED);
    let before = explain(&c, "n1", "n1-p2", dst);
    assert_eq!(before["capture"]["captured"], false, "{before:#}");
    assert!(before["capture"]["rule"]["text"]
        .as_str()
        .unwrap()
        .contains(&EXCLUDED.to_string()));
    assert_eq!(before["route"]["kind"], "direct");
    assert_eq!(
        before["at_destination"]["listener"],
        "15006 (inbound plaintext)"
    );
    let local = send(&c, "n1-p2", dst).await;
    let after = explain(&c, "n1", "n1-p2", dst);
    assert!(packets(&after) > packets(&before), "{before:#}\n{after:#}");
    assert!(
        c.flows_from("n1", local).is_empty(),
        "an excluded port was proxied"
    );
    let client_ip: IpAddr = local.ip();
    c.wait_flow("n2", |f| {
        is(f, "inbound")
            && f["dst"] == dst.to_string()
            && f["src"]
                .as_str()
                .is_some_and(|s| s.starts_with(&client_ip.to_string()))
    });

    // Passthrough: the destination is out of the mesh.
    let dst = at("n2-p3", APP_PORT);
    let e = explain(&c, "n1", "n1-p1", dst);
    assert_eq!(e["route"]["kind"], "passthrough", "{e:#}");
    assert_eq!(e["at_destination"]["in_mesh"], false);
    let local = send(&c, "n1-p1", dst).await;
    let flow = c.wait_flow("n1", |f| f["src"] == local.to_string());
    assert_eq!(flow["route"], "passthrough");

    // Self-call: the pod's own address leaves over lo, uncaptured, to its own port.
    let dst = at("n1-p1", APP_PORT);
    let e = explain(&c, "n1", "n1-p1", dst);
    assert_eq!(e["capture"]["captured"], false, "{e:#}");
    assert!(e["at_destination"]["listener"]
        .as_str()
        .unwrap()
        .contains("pod itself"));
    let local = send(&c, "n1-p1", dst).await;
    assert!(
        c.flows_from("n1", local).is_empty(),
        "a self-call was proxied"
    );

    // Denied by policy at the destination: the client sees no echo, n2 names the policy.
    let dst = at("n2-p2", APP_PORT);
    let e = explain(&c, "n1", "n1-p1", dst);
    assert_eq!(e["route"]["kind"], "hbone", "{e:#}");
    assert_eq!(e["at_destination"]["allowed"], false, "{e:#}");
    assert!(
        e["at_destination"]["policy"]
            .as_str()
            .unwrap()
            .contains("lab/deny-p2-app"),
        "{e:#}"
    );
    let src: IpAddr = c.lab.pod("n1-p1").unwrap().ipv4.into();
    let ns = c.lab.pod_netns("n1-p1").unwrap();
    let attempt = try_echo(&ns, src, dst, &pattern(1000)).await;
    assert_ne!(attempt.seen, Seen::Echo);
    let denied = c.wait_flow("n2", |f| is(f, "hbone") && f["dst"] == dst.to_string());
    assert!(
        denied["policy"].as_str().unwrap().contains("denied"),
        "{denied:#}"
    );

    // The command itself, as an operator runs it on the node.
    let node = c.lab.node_netns("n1").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ambit"));
    cmd.args(["explain", "n1-p1", &at("n2-p1", APP_PORT).to_string()]);
    let out = node.output(&mut cmd).expect("run ambit explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for part in [
        "1. capture",
        "REDIRECT",
        "2. route: hbone",
        "15008 (HBONE)",
        "4. flows",
    ] {
        let part = if backend == "nftables" && part == "REDIRECT" {
            "redirect"
        } else {
            part
        };
        assert!(text.contains(part), "{part:?} missing:\n{text}");
    }
    config_tables(&c, &at("n2-p1", APP_PORT)).await;

    let mut bad = Command::new(env!("CARGO_BIN_EXE_ambit"));
    bad.args(["explain", "no-such-pod", "10.0.0.1:80"]);
    let out = node.output(&mut bad).expect("run ambit explain");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-pod"));
}

/// `ambit config SECTION [-o json]` run in `node`'s namespace, as an operator on the node.
fn config(c: &Cluster, node: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ambit"));
    cmd.arg("config").args(args);
    let ns = c.lab.node_netns(node).unwrap();
    let out = ns.output(&mut cmd).expect("run ambit config");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The tables show what the daemons hold: pods, certificates, a live connection and its
/// pooled HBONE connection, the DENY policy on n2-p2.
async fn config_tables(c: &Cluster, dst: &SocketAddr) {
    let workloads = config(c, "n1", &["workloads"]);
    for pod in ["n1-p1", "n1-p2", "n1-p3"] {
        let line = workloads
            .lines()
            .find(|l| l.starts_with(&format!("lab/{pod} ")))
            .unwrap_or_else(|| panic!("{pod} missing:\n{workloads}"));
        assert!(line.contains("enrolled"), "{line}");
    }
    let json: Value = serde_json::from_str(&config(c, "n1", &["workloads", "-o", "json"])).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(3), "{json:#}");

    let certs = config(c, "n1", &["certs"]);
    let line = certs
        .lines()
        .find(|l| l.starts_with(&identity_of("n1-p1")))
        .unwrap_or_else(|| panic!("no certificate line:\n{certs}"));
    assert!(line.ends_with("valid"), "{line}");

    // A connection held open is listed live, with its tunnel's pooled connection.
    let ns = c.lab.pod_netns("n1-p1").unwrap();
    let held = ambit::lab::traffic::connect(&ns, *dst)
        .await
        .expect("connect");
    let local = ambit::socket::canonical(held.local_addr().unwrap()).to_string();
    let mut table = String::new();
    wait_until("the held connection in ambit config connections", || {
        table = config(c, "n1", &["connections"]);
        table.lines().any(|l| l.contains(&local))
    });
    let peer = format!("{}:15008", dst.ip());
    assert!(
        table.lines().any(|l| l.starts_with("lab/n1-p1")
            && l.contains(&peer)
            && l.contains(&identity_of("n2-p1"))),
        "no pooled connection to {peer}:\n{table}"
    );
    drop(held);

    let policies = config(c, "n2", &["policies"]);
    assert!(
        policies.lines().any(|l| l.starts_with("lab/n2-p2")
            && l.contains("DENY")
            && l.contains("lab/deny-p2-app")),
        "{policies}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_matches_the_traffic_iptables() {
    scenario("iptables").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_matches_the_traffic_nftables() {
    scenario("nftables").await;
}
