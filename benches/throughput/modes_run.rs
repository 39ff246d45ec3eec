use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ambit::lab::{Lab, LabSpec};
use ambit::netns::NetNs;
use ambit::workload::enroll::DATAPLANE_MODE_LABEL;
use anyhow::{anyhow, Context};
use tokio::runtime::Runtime;

use crate::chart::render_modes_svg;
use crate::checks::{settled, wait_state};
use crate::datapath::connection_rate;
use crate::modes::{
    check_route, paced_rr, stream_many, tput_summary, within, Mesh, ModeServers, PairResult,
    ScalePoint, PACED_RATE, PAIRS, PARALLEL_STREAMS, SIDECAR_STATUS, SIZES,
};
use crate::modes_report::{render_modes_json, render_modes_markdown};
use crate::orchestrate::raise_fd_limit;
use crate::report::{target_dir, Machine};
use crate::sampling::read_rss;
use crate::{
    Plan, CLIENT_POD, DAEMON_DEADLINE, ECHO_PORT, MESH_POD, PING_PORT, RULES, SINK_PORT,
    STUCK_SLACK,
};

/// Everything measured for one (mode, pair).
#[allow(clippy::too_many_arguments)]
fn measure_pair(
    rt: &Runtime,
    lab: &Lab,
    plan: Plan,
    mesh: Mesh,
    index: usize,
    client: &NetNs,
    servers: &ModeServers,
    ambit: &[u32],
) -> anyhow::Result<PairResult> {
    let pair = PAIRS[index];
    let ip = lab.pod(pair.server)?.ipv4;
    let (sink_addr, echo_addr, ping_addr) = (
        SocketAddr::from((ip, SINK_PORT)),
        SocketAddr::from((ip, ECHO_PORT)),
        SocketAddr::from((ip, PING_PORT)),
    );
    let sink = servers.sink(pair.server)?;
    let rounds = if plan.quick { 1 } else { 2 };
    let limit = plan.stream_warmup + plan.stream_window + STUCK_SLACK;
    let mut streams = [Vec::new(), Vec::new()];
    for (slot, n) in [1, PARALLEL_STREAMS].into_iter().enumerate() {
        for _ in 0..rounds {
            let t = within(
                rt,
                limit,
                &format!(
                    "{} {}: {n} stream(s) to {sink_addr}",
                    mesh.name(),
                    pair.name
                ),
                stream_many(plan, client, sink, sink_addr, n, ambit),
            )?;
            eprintln!(
                "  {n} stream(s): {:.2} Gbit/s, ambit {:.2} CPU s, bench {:.2} CPU s",
                t.gbit(),
                t.ambit_cpu_s,
                t.bench_cpu_s
            );
            streams[slot].push(t);
        }
    }
    let limit = plan.rr_warmup + plan.rr_window + STUCK_SLACK;
    let paced = within(
        rt,
        limit,
        "paced request/response",
        paced_rr(plan, client, echo_addr, Some(PACED_RATE)),
    )?;
    let closed = within(
        rt,
        limit,
        "closed-loop request/response",
        paced_rr(plan, client, echo_addr, None),
    )?;
    eprintln!(
        "  1 KiB RR @{PACED_RATE}/s p50/p90/p99 {} µs; closed loop {:.0} req/s, {} µs",
        paced.text(),
        closed.per_second(),
        closed.text()
    );
    settled(|| check_route(lab, mesh, pair, &[sink_addr, echo_addr]))?;
    let names: Vec<(String, u32)> = std::iter::once(("bench".to_string(), std::process::id()))
        .chain(ambit.iter().map(|p| (format!("ambit {p}"), *p)))
        .collect();
    let limit = plan.conn_warmup + plan.conn_window + STUCK_SLACK;
    let conn = within(
        rt,
        limit,
        "new connections",
        connection_rate(plan, client, ping_addr, mesh.client_ports(index), &names),
    )?;
    settled(|| check_route(lab, mesh, pair, &[ping_addr]))?;
    eprintln!(
        "  new connections: {:.0}/s{}",
        conn.per_second(),
        if mesh == Mesh::Direct {
            ""
        } else {
            " (route hbone checked on /flows)"
        }
    );
    let [stream1, stream8] = streams;
    Ok(PairResult {
        mesh,
        pair,
        stream1,
        stream8,
        paced,
        closed,
        conn,
    })
}

/// RSS of every ambit process after one cross-node single-stream window.
#[allow(clippy::too_many_arguments)]
fn scale_point(
    rt: &Runtime,
    lab: &Lab,
    plan: Plan,
    mesh: Mesh,
    size: usize,
    client: &NetNs,
    servers: &ModeServers,
    ambit: &[u32],
) -> anyhow::Result<ScalePoint> {
    let dst = SocketAddr::from((lab.pod(MESH_POD)?.ipv4, SINK_PORT));
    let limit = plan.stream_warmup + plan.stream_window + STUCK_SLACK;
    let tput = within(
        rt,
        limit,
        &format!("{} at {size} pods per node: stream", mesh.name()),
        stream_many(plan, client, servers.sink(MESH_POD)?, dst, 1, ambit),
    )?;
    let rss = ambit
        .iter()
        .map(|p| read_rss(*p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let point = ScalePoint {
        mesh,
        pods_per_node: size,
        enrolled: 2 * size,
        rss,
        tput,
    };
    eprintln!(
        "  {} pods per node: {} ambit processes, RSS {:.1} MiB total, {:.0} KiB per pod; \
         {:.2} Gbit/s, {:.2} ambit CPU s/GiB",
        size,
        point.rss.len(),
        point.total_kib() as f64 / 1024.0,
        point.per_pod_kib(),
        point.tput.gbit(),
        tput_summary(std::slice::from_ref(&point.tput)).1
    );
    Ok(point)
}

fn pod_name(node: usize, index: usize) -> String {
    format!("n{node}-p{index}")
}

fn mode_lab(ambient: bool) -> anyhow::Result<Lab> {
    let lab = Lab::up(&LabSpec {
        name: None,
        nodes: 2,
        pods_per_node: SIZES[SIZES.len() - 1],
        namespace_ambient: ambient,
        kube: false,
    })
    .context("building a mode lab")?;
    eprintln!(
        "lab {} up, 2 × {} pods (remove it with `ambit lab down {}` if interrupted)",
        lab.name(),
        SIZES[SIZES.len() - 1],
        lab.name()
    );
    Ok(lab)
}

/// Direct and ambient on one lab (ambient namespace), pods beyond the current size labelled
/// out of the mesh and enrolled size by size.
fn run_ambient_lab(
    rt: &Runtime,
    plan: Plan,
    pairs: &mut Vec<PairResult>,
    scale: &mut Vec<ScalePoint>,
) -> anyhow::Result<()> {
    let lab = mode_lab(true)?;
    let first = SIZES[0];
    let label_out = |size: usize| {
        lab.update_workloads(|s| {
            for pod in s.pods.iter_mut() {
                let index: usize = pod
                    .name
                    .rsplit_once("-p")
                    .and_then(|(_, i)| i.parse().ok())
                    .unwrap_or(usize::MAX);
                if index > size {
                    pod.labels
                        .insert(DATAPLANE_MODE_LABEL.to_string(), "none".to_string());
                } else {
                    pod.labels.remove(DATAPLANE_MODE_LABEL);
                }
            }
        })
        .context("labelling pods")
    };
    label_out(first)?;
    let servers = rt.block_on(ModeServers::start(&lab))?;
    let client = lab.pod_netns(CLIENT_POD)?;
    for (index, pair) in PAIRS.iter().enumerate() {
        eprintln!("direct {}:", pair.name);
        pairs.push(measure_pair(
            rt,
            &lab,
            plan,
            Mesh::Direct,
            index,
            &client,
            &servers,
            &[],
        )?);
    }
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_ambit"));
    for node in ["n1", "n2"] {
        lab.start_daemon(node, &binary, &[format!("--rules={RULES}")])
            .with_context(|| format!("starting ambit on {node}"))?;
    }
    for node in ["n1", "n2"] {
        lab.wait_ready(node, DAEMON_DEADLINE)?;
    }
    let pids: Vec<u32> = ["n1", "n2"]
        .iter()
        .map(|n| lab.daemon_pid(n).ok_or_else(|| anyhow!("no daemon on {n}")))
        .collect::<anyhow::Result<_>>()?;
    for size in SIZES {
        if size != first {
            label_out(size)?;
        }
        let deadline = Instant::now() + DAEMON_DEADLINE;
        for node in 1..=2 {
            for i in 1..=size {
                wait_state(
                    &lab,
                    &format!("n{node}"),
                    &pod_name(node, i),
                    true,
                    deadline,
                )?;
            }
        }
        if size == first {
            for (index, pair) in PAIRS.iter().enumerate() {
                eprintln!("ambient {} (ambit run per node):", pair.name);
                pairs.push(measure_pair(
                    rt,
                    &lab,
                    plan,
                    Mesh::Ambient,
                    index,
                    &client,
                    &servers,
                    &pids,
                )?);
            }
        }
        scale.push(scale_point(
            rt,
            &lab,
            plan,
            Mesh::Ambient,
            size,
            &client,
            &servers,
            &pids,
        )?);
    }
    rt.block_on(async move { drop(servers) });
    lab.down().context("removing the lab")?;
    Ok(())
}

/// Sidecar mode on a lab whose namespace is not ambient: every pod annotated, sidecars
/// started size by size.
fn run_sidecar_lab(
    rt: &Runtime,
    plan: Plan,
    pairs: &mut Vec<PairResult>,
    scale: &mut Vec<ScalePoint>,
) -> anyhow::Result<()> {
    let lab = mode_lab(false)?;
    lab.update_workloads(|s| {
        for p in &mut s.pods {
            p.annotations
                .insert(SIDECAR_STATUS.into(), r#"{"proxy":"ambit"}"#.into());
        }
    })
    .context("annotating pods")?;
    let servers = rt.block_on(ModeServers::start(&lab))?;
    let client = lab.pod_netns(CLIENT_POD)?;
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_ambit"));
    let mut pids = Vec::new();
    let mut started = 0;
    for size in SIZES {
        let t = Instant::now();
        let new: Vec<String> = (1..=2)
            .flat_map(|node| (started + 1..=size).map(move |i| pod_name(node, i)))
            .collect();
        for pod in &new {
            pids.push(
                lab.start_sidecar(pod, &binary, &[])
                    .with_context(|| format!("starting the sidecar of {pod}"))?,
            );
        }
        for pod in &new {
            lab.wait_ready(pod, DAEMON_DEADLINE)?;
        }
        eprintln!(
            "{} sidecars started and ready in {:.1} s",
            new.len(),
            t.elapsed().as_secs_f64()
        );
        started = size;
        if size == SIZES[0] {
            for (index, pair) in PAIRS.iter().enumerate() {
                eprintln!("sidecar {} (ambit sidecar per pod):", pair.name);
                pairs.push(measure_pair(
                    rt,
                    &lab,
                    plan,
                    Mesh::Sidecar,
                    index,
                    &client,
                    &servers,
                    &pids,
                )?);
            }
        }
        scale.push(scale_point(
            rt,
            &lab,
            plan,
            Mesh::Sidecar,
            size,
            &client,
            &servers,
            &pids,
        )?);
    }
    rt.block_on(async move { drop(servers) });
    lab.down().context("removing the lab")?;
    Ok(())
}

pub(crate) fn run_modes(plan: Plan, args: &[String], machine: &Machine) -> anyhow::Result<()> {
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let started = Instant::now();
    let mut pairs = Vec::new();
    let mut scale = Vec::new();
    run_ambient_lab(&rt, plan, &mut pairs, &mut scale)?;
    run_sidecar_lab(&rt, plan, &mut pairs, &mut scale)?;
    rt.shutdown_timeout(Duration::from_secs(2));
    let seconds = started.elapsed().as_secs_f64();

    let markdown = render_modes_markdown(plan, machine, &pairs, &scale);
    let json = render_modes_json(plan, args, machine, &pairs, &scale, seconds);
    let svg = render_modes_svg(machine, &pairs, &scale);
    println!("\n{markdown}");
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, body) in [
        ("modes.md", markdown),
        ("modes.json", serde_json::to_string_pretty(&json)? + "\n"),
        ("modes.svg", svg),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
