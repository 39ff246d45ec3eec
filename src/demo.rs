//! `ambit demo`: the daemon's main job on its embedded default, end to end.
//!
//! Builds a 2-node lab with 2 pods per node, runs ambit on both nodes, starts an echo server in
//! every pod and on the fabric, sends a few connections (across nodes, within a node, IPv4 and
//! IPv6, to a non-mesh address), prints every flow the daemons recorded, and removes the lab.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::lab::traffic::{exchange, pattern, Server};
use crate::lab::{Lab, LabSpec};

/// Options of `ambit demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Rule backend the daemons use.
    #[arg(long, default_value = "iptables")]
    rules: String,
    /// Keep the lab running afterwards (remove it with `ambit lab down <name>`).
    #[arg(long)]
    keep: bool,
}

const APP_PORT: u16 = 8080;
const DEADLINE: Duration = Duration::from_secs(10);

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let lab = Lab::up(&LabSpec {
        nodes: 2,
        pods_per_node: 2,
        ..LabSpec::default()
    })?;
    println!(
        "lab {} up: 2 nodes, 4 pods, all in an ambient namespace",
        lab.name()
    );
    let binary = std::env::current_exe().context("locating the ambit binary")?;
    crate::lab::cli::start_all(&lab, &binary, &[format!("--rules={}", args.rules)])?;
    println!(
        "ambit running on n1 and n2 (rules: {}); mesh traffic crosses nodes in mTLS HBONE tunnels\n",
        args.rules
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(traffic(&lab))?;
    for node in lab.nodes() {
        print_flows(&lab, &node.name)?;
    }
    if args.keep {
        let name = lab.detach();
        println!("\nlab kept: ambit lab down {name}");
    } else {
        lab.down()?;
        println!("\nlab removed");
    }
    Ok(())
}

async fn traffic(lab: &Lab) -> anyhow::Result<()> {
    let any: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, APP_PORT).into();
    let mut servers = Vec::new();
    for pod in lab.pods() {
        servers.push(Server::start(&lab.pod_netns(&pod.name)?, any).await?);
    }
    servers.push(Server::start(&lab.fabric_netns()?, any).await?);

    let p = |name: &str| lab.pod(name);
    let cases: Vec<(&str, &str, SocketAddr)> = vec![
        (
            "n1-p1",
            "n2-p1 over IPv4 (across nodes)",
            (p("n2-p1")?.ipv4, APP_PORT).into(),
        ),
        (
            "n1-p2",
            "n2-p2 over IPv6 (across nodes)",
            (p("n2-p2")?.ipv6, APP_PORT).into(),
        ),
        (
            "n1-p1",
            "n1-p2 (same node)",
            (p("n1-p2")?.ipv4, APP_PORT).into(),
        ),
        (
            "n2-p2",
            "the fabric (outside the mesh)",
            (lab.fabric_ipv4(), APP_PORT).into(),
        ),
    ];
    for (from, label, dst) in cases {
        let payload = pattern(64 * 1024);
        let ns = lab.pod_netns(from)?;
        let ex = exchange(&ns, dst, &payload, DEADLINE)
            .await
            .with_context(|| format!("{from} -> {dst}"))?;
        let ok = if ex.reply == payload {
            "echo intact"
        } else {
            "ECHO CORRUPTED"
        };
        println!(
            "{from} -> {label}: {dst} from {} — {} bytes, {ok}",
            ex.local,
            ex.reply.len()
        );
    }
    Ok(())
}

fn print_flows(lab: &Lab, node: &str) -> anyhow::Result<()> {
    let body = lab.admin_get(node, "/flows")?;
    let flows: Vec<serde_json::Value> = serde_json::from_str(&body)?;
    println!("\nflows recorded by ambit on {node}:");
    println!(
        "  {:9} {:10} {:28} {:28} {:12} {:>8} {:>8}  peer identity",
        "listener", "pod", "source", "destination", "route", "sent", "received"
    );
    for f in flows {
        let s = |k: &str| f[k].as_str().unwrap_or("").to_string();
        let n = |k: &str| f[k].as_u64().unwrap_or(0);
        let route = match f["error"].as_str() {
            Some(e) => format!("{} (error: {e})", s("route")),
            None => s("route"),
        };
        println!(
            "  {:9} {:10} {:28} {:28} {:12} {:>8} {:>8}  {}",
            s("listener"),
            s("pod"),
            s("src"),
            s("dst"),
            route,
            n("bytes_sent"),
            n("bytes_received"),
            s("peer_identity"),
        );
    }
    Ok(())
}
