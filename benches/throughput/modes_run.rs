use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit::lab::{Lab, LabSpec};
use ambit::netns::NetNs;
use anyhow::Context;
use tokio::runtime::Runtime;

use crate::chart::render_modes_svg;
use crate::checks::settled;
use crate::datapath::connection_rate;
use crate::modes::{
    paced_rr, stream_many, tput_summary, within, Latency, Mesh, ModeServers, Pair, PairResult,
    Procs, ScalePoint, PACED_RATE, PARALLEL_STREAMS,
};
use crate::modes_check::{baseline, check_route, Expect};
use crate::modes_labs::{run_ambient_lab, run_sidecar_lab, run_ztunnel_lab, ModesOut, Select};
use crate::modes_report::{render_modes_json, render_modes_markdown};
use crate::orchestrate::raise_fd_limit;
use crate::report::{target_dir, Machine};
use crate::results::RateResult;
use crate::sampling::read_rss;
use crate::{Plan, ECHO_PORT, MESH_POD, PING_PORT, SINK_PORT, STUCK_SLACK};

/// Everything measured for one (mode, pair).
#[allow(clippy::too_many_arguments)]
pub(crate) fn measure_pair(
    rt: &Runtime,
    lab: &Lab,
    plan: Plan,
    mesh: Mesh,
    pair: Pair,
    client: &NetNs,
    servers: &ModeServers,
    procs: &Procs,
) -> anyhow::Result<PairResult> {
    let base = baseline(lab, mesh, pair)?;
    let mut expect = Expect::default();
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
    let counts = [
        (1, plan.tests.stream1),
        (PARALLEL_STREAMS, plan.tests.stream8),
    ];
    for (slot, (n, wanted)) in counts.into_iter().enumerate() {
        for _ in 0..if wanted { rounds } else { 0 } {
            let t = within(
                rt,
                limit,
                &format!(
                    "{} {}: {n} stream(s) to {sink_addr}",
                    mesh.name(),
                    pair.name
                ),
                stream_many(plan, client, sink, sink_addr, n, procs),
            )?;
            eprintln!(
                "  {n} stream(s): {:.2} Gbit/s, proxies {:.2} CPU s (client {:.2}, server \
                 {:.2}), bench {:.2} CPU s",
                t.gbit(),
                t.proxy_cpu_s,
                t.client_cpu_s,
                t.server_cpu_s,
                t.bench_cpu_s
            );
            expect.conns += n;
            expect.bytes += t.bytes;
            streams[slot].push(t);
        }
    }
    let limit = plan.rr_warmup + plan.rr_window + STUCK_SLACK;
    let mut used = Vec::new();
    if !streams.iter().all(Vec::is_empty) {
        used.push(sink_addr);
    }
    let (paced, closed) = if plan.tests.rr {
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
        expect.conns += 2;
        used.push(echo_addr);
        (paced, closed)
    } else {
        (Latency::none(), Latency::none())
    };
    settled(|| check_route(lab, mesh, pair, &used, &base, expect))?;
    let names: Vec<(String, u32)> = std::iter::once(("bench".to_string(), std::process::id()))
        .chain(
            procs
                .all
                .iter()
                .map(|p| (format!("{} {p}", mesh.name()), *p)),
        )
        .collect();
    let limit = plan.conn_warmup + plan.conn_window + STUCK_SLACK;
    if !plan.tests.conn {
        let [stream1, stream8] = streams;
        return Ok(PairResult {
            mesh,
            pair,
            stream1,
            stream8,
            paced,
            closed,
            conn: RateResult::none(),
        });
    }
    let conn = within(
        rt,
        limit,
        "new connections",
        connection_rate(plan, client, ping_addr, mesh.client_ports(pair), &names),
    )?;
    expect.conns += conn.count;
    settled(|| check_route(lab, mesh, pair, &[ping_addr], &base, expect))?;
    eprintln!(
        "  new connections: {:.0}/s, p99 {:.0} µs{}",
        conn.per_second(),
        conn.p99_us,
        match mesh {
            Mesh::Direct => "",
            Mesh::Ztunnel => " (route checked on ztunnel's /metrics)",
            _ => " (route checked on /flows)",
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
pub(crate) fn scale_point(
    rt: &Runtime,
    lab: &Lab,
    plan: Plan,
    mesh: Mesh,
    size: usize,
    client: &NetNs,
    servers: &ModeServers,
    ambit: &[u32],
) -> anyhow::Result<ScalePoint> {
    let procs = Procs {
        all: ambit.to_vec(),
        ..Procs::default()
    };
    let dst = SocketAddr::from((lab.pod(MESH_POD)?.ipv4, SINK_PORT));
    let limit = plan.stream_warmup + plan.stream_window + STUCK_SLACK;
    let tput = within(
        rt,
        limit,
        &format!("{} at {size} pods per node: stream", mesh.name()),
        stream_many(plan, client, servers.sink(MESH_POD)?, dst, 1, &procs),
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

pub(crate) fn pod_name(node: usize, index: usize) -> String {
    format!("n{node}-p{index}")
}

pub(crate) fn mode_lab(ambient: bool, pods_per_node: usize) -> anyhow::Result<Lab> {
    let lab = Lab::up(&LabSpec {
        name: None,
        nodes: 2,
        pods_per_node,
        namespace_ambient: ambient,
        kube: false,
    })
    .context("building a mode lab")?;
    eprintln!(
        "lab {} up, 2 × {pods_per_node} pods (remove it with `ambit lab down {}` if interrupted)",
        lab.name(),
        lab.name()
    );
    Ok(lab)
}

pub(crate) fn run_modes(
    plan: Plan,
    args: &[String],
    machine: &Machine,
    sel: &Select,
) -> anyhow::Result<()> {
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let started = Instant::now();
    let mut out = ModesOut::default();
    // ztunnel right before ambit, so the two are measured close together in time.
    run_ztunnel_lab(&rt, plan, sel, &mut out)?;
    run_ambient_lab(&rt, plan, sel, &mut out)?;
    run_sidecar_lab(&rt, plan, sel, &mut out)?;
    rt.shutdown_timeout(Duration::from_secs(2));
    let seconds = started.elapsed().as_secs_f64();

    let markdown = render_modes_markdown(plan, args, machine, &out);
    let json = render_modes_json(plan, args, machine, &out, seconds);
    let svg = render_modes_svg(machine, &out);
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
