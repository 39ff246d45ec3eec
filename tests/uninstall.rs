//! Leaving the mesh for good (issue 11): `ambit uninstall` run on each node after its daemon
//! stopped releases every captured pod — no ISTIO_ chain, no istio nft table, no table-100
//! rule or route left in any pod namespace, the capture memory cleared — so pods reach each
//! other directly again. It refuses while the daemon runs, and a second run finds everything
//! clean.
#![cfg(feature = "lab")]

mod support;

use std::process::{Command, Output};

use ambit::k8s::status::REDIRECTION_ANNOTATION;
use ambit::lab::traffic::{exchange, Server};
use ambit::netns::NetNs;
use ambit::rules::{self, Backend};
use support::*;

/// `ambit uninstall <args>` run inside node `node`'s namespace (where its daemon would run).
fn uninstall(c: &Cluster, node: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ambit"));
    cmd.arg("uninstall").args(args);
    c.lab
        .node_netns(node)
        .expect("node netns")
        .output(&mut cmd)
        .expect("run ambit uninstall")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A tool's stdout inside `ns`; a failing tool counts as printing nothing (e.g. `ip route show
/// table 100` when the table was never used).
fn tool(ns: &NetNs, program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = ns.output(&mut cmd).expect("spawn tool");
    text(&out.stdout)
}

/// Everything of the capture the tools can show in a pod's namespace, one line per finding.
fn capture_left(ns: &NetNs) -> Vec<String> {
    let mut found = Vec::new();
    for save in ["iptables-save", "ip6tables-save"] {
        found.extend(
            tool(ns, save, &[])
                .lines()
                .filter(|l| l.contains("ISTIO_"))
                .map(|l| format!("{save}: {l}")),
        );
    }
    found.extend(
        tool(ns, "nft", &["list", "tables"])
            .lines()
            .filter(|l| l.contains("istio"))
            .map(|l| format!("nft: {l}")),
    );
    for family in ["-4", "-6"] {
        found.extend(
            tool(ns, "ip", &[family, "rule", "show"])
                .lines()
                .filter(|l| l.contains("lookup 100"))
                .map(|l| format!("ip {family} rule: {l}")),
        );
        found.extend(
            tool(ns, "ip", &[family, "route", "show", "table", "100"])
                .lines()
                .map(|l| format!("ip {family} route table 100: {l}")),
        );
    }
    found
}

async fn release_every_pod(backend: &'static str) {
    let c = Cluster::start_stateful(2, 2, backend);
    let b: Backend = backend.parse().expect("backend");
    let mut servers = Vec::new();
    for pod in c.lab.pods() {
        let ns = c.lab.pod_netns(&pod.name).expect("pod netns");
        let any = "[::]:8080".parse().expect("address");
        servers.push(Server::start(&ns, any).await.expect("echo server"));
    }
    send_routed(&c, "n1-p1", c.v4("n2-p1"), "hbone").await;
    let pods: Vec<(String, String, NetNs)> = c
        .lab
        .pods()
        .iter()
        .map(|p| {
            let ns = c.lab.pod_netns(&p.name).expect("pod netns");
            (p.name.clone(), p.node.clone(), ns)
        })
        .collect();

    // While a daemon runs, it would put the rules back: refused, nothing touched.
    let state_n1 = c.state_dir("n1").display().to_string();
    let out = uninstall(&c, "n1", &["--state-dir", &state_n1]);
    assert!(!out.status.success(), "ran beside a live daemon");
    assert!(
        text(&out.stderr).contains("stop the daemon first"),
        "{}",
        text(&out.stderr)
    );
    assert!(rules::installed(&pods[0].2, b)
        .expect("installed")
        .has_rules());

    // Daemons gone: the rules stay, so the pods are cut off (fail closed).
    for node in ["n1", "n2"] {
        c.lab.stop_daemon(node).expect("stop daemon");
    }
    for (name, _, ns) in &pods {
        assert!(
            !capture_left(ns).is_empty(),
            "{name} lost its rules at stop"
        );
    }
    let payload = ambit::lab::traffic::pattern(1000);
    let cut = exchange(&pods[0].2, c.v4("n2-p1"), &payload, PROMPT).await;
    assert!(
        cut.map_or(true, |e| e.reply != payload),
        "a captured pod reached another without any daemon before uninstall"
    );

    for node in ["n1", "n2"] {
        let state = c.state_dir(node).display().to_string();
        let out = uninstall(&c, node, &["--state-dir", &state]);
        let said = text(&out.stdout);
        assert!(
            out.status.success(),
            "uninstall on {node}: {said}{}",
            text(&out.stderr)
        );
        println!("ambit uninstall on {node}:\n{said}");
        for (name, _, _) in pods.iter().filter(|(_, n, _)| n == node) {
            assert!(
                said.lines()
                    .any(|l| l.starts_with(&format!("lab/{name}: released"))),
                "{name} not reported released: {said}"
            );
        }
        assert!(
            !c.state_dir(node).join("captured.json").exists(),
            "capture memory of {node} not cleared"
        );
    }
    for (name, _, ns) in &pods {
        let left = capture_left(ns);
        assert!(left.is_empty(), "{name} still has: {left:#?}");
    }

    // Pods reach each other directly, across nodes and on one node, IPv4 and IPv6.
    send(&c, "n1-p1", c.v4("n2-p1")).await;
    send(&c, "n2-p2", c.v6("n1-p1")).await;
    send(&c, "n1-p2", c.v4("n1-p1")).await;

    // Again, listing the pods from the workload file: all already clean.
    let workloads = c.lab.workloads_path().display().to_string();
    let out = uninstall(&c, "n1", &["--workloads", &workloads, "--node", "n1"]);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    for name in ["n1-p1", "n1-p2"] {
        assert!(
            said.lines()
                .any(|l| l.starts_with(&format!("lab/{name}: already clean"))),
            "{said}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn uninstall_releases_every_pod_iptables() {
    release_every_pod("iptables").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn uninstall_releases_every_pod_nftables() {
    release_every_pod("nftables").await;
}

/// Kubernetes mode, without the capture memory: the pods of the node come from the API (their
/// namespaces found by cgroup scan, as the daemon finds them), and their redirection
/// annotation goes with their rules.
#[tokio::test(flavor = "multi_thread")]
async fn uninstall_from_the_api_releases_pods_and_removes_annotations() {
    let c = Cluster::start_kube(1, 2, true, |_| {});
    let redirection = |pod: &str| {
        c.api_pod(pod).and_then(|p| {
            p["metadata"]["annotations"][REDIRECTION_ANNOTATION]
                .as_str()
                .map(str::to_string)
        })
    };
    for pod in ["n1-p1", "n1-p2"] {
        c.wait_state(pod, "enrolled");
        wait_until(&format!("{pod} annotated"), || redirection(pod).is_some());
    }
    c.lab.stop_daemon("n1").expect("stop daemon");

    let kubeconfig = c.lab.kubeconfig_path().display().to_string();
    let prefix = format!("{}-", c.lab.name());
    let out = uninstall(
        &c,
        "n1",
        &[
            "--kube",
            "--kubeconfig",
            &kubeconfig,
            "--node",
            "n1",
            "--netns-prefix",
            &prefix,
        ],
    );
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    println!("ambit uninstall --kube:\n{said}{}", text(&out.stderr));
    assert!(said.contains("2 released"), "{said}");
    assert!(
        said.contains("2 redirection annotation(s) removed"),
        "{said}"
    );
    for pod in ["n1-p1", "n1-p2"] {
        let ns = c.lab.pod_netns(pod).expect("pod netns");
        let left = capture_left(&ns);
        assert!(left.is_empty(), "{pod} still has: {left:#?}");
        assert_eq!(redirection(pod), None, "{pod} still annotated");
    }
    let server_ns = c.lab.pod_netns("n1-p2").expect("pod netns");
    let _server = Server::start(&server_ns, "[::]:8080".parse().expect("address"))
        .await
        .expect("echo server");
    send(&c, "n1-p1", c.v4("n1-p2")).await;
}
