// =============================================================================================
// Modes: direct vs ambient (ambit per node) vs sidecar (ambit per pod), side by side.

use ambit::lab::traffic::Server;
use ambit::lab::{traffic, Lab};
use ambit::netns::NetNs;
use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use crate::report::median;
use crate::results::{RateResult, Rss};
use crate::sampling::percentile;
use crate::servers::{PingServer, Sink};
use crate::{Plan, ECHO_PORT, MESH_POD, PING_PORT, REQUEST_SIZE, SINK_PORT, STREAM_BUFFER};
/// Pods per node of the resource-scaling points; the first is also where the data path of
/// every mode is measured.
use std::future::Future;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

pub(crate) const SIZES: [usize; 3] = [2, 8, 32];
/// Same-node destination (the cross-node one is [`MESH_POD`]).
const SAME_NODE_POD: &str = "n1-p2";
/// Destination out of the mesh (index beyond `SIZES[0]`).
pub(crate) const PASSTHROUGH_POD: &str = "n2-p3";
/// Request rate of the paced latency test.
pub(crate) const PACED_RATE: u32 = 1000;
/// Connections of the parallel throughput test.
pub(crate) const PARALLEL_STREAMS: usize = 8;
/// Annotation that makes a pod a sidecar pod (`ambit sidecar` runs in it).
pub(crate) const SIDECAR_STATUS: &str = "sidecar.istio.io/status";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mesh {
    Direct,
    /// Istio's ztunnel, one per pod (the reference peer; see `ztunnel.rs`).
    Ztunnel,
    Ambient,
    Sidecar,
}

pub(crate) const MESHES: [Mesh; 4] = [Mesh::Direct, Mesh::Ztunnel, Mesh::Ambient, Mesh::Sidecar];

impl Mesh {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mesh::Direct => "direct",
            Mesh::Ztunnel => "ztunnel",
            Mesh::Ambient => "ambient",
            Mesh::Sidecar => "sidecar",
        }
    }

    pub(crate) fn color(self) -> &'static str {
        match self {
            Mesh::Direct => "#8c8c8c",
            Mesh::Ztunnel => "#2ca02c",
            Mesh::Ambient => "#1f77b4",
            Mesh::Sidecar => "#ff7f0e",
        }
    }

    /// Source ports of the connection-rate client for `pair`: the direct and ambient runs share
    /// a lab, so each (mode, pair) gets its own range (see the connection-setup docs above).
    pub(crate) fn client_ports(self, pair: Pair) -> (u16, u16) {
        const WIDTH: u16 = (32768 - 16000) / (2 * ALL_PAIRS.len() as u16);
        let slot = match self {
            Mesh::Direct | Mesh::Sidecar | Mesh::Ztunnel => pair.slot,
            Mesh::Ambient => ALL_PAIRS.len() as u16 + pair.slot,
        };
        let start = 16000 + slot * WIDTH;
        (start, start + WIDTH)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Pair {
    pub(crate) name: &'static str,
    pub(crate) server: &'static str,
    /// The destination is in the mesh (HBONE); otherwise the proxy passes TCP through.
    pub(crate) in_mesh: bool,
    /// Index of the pair's connection-rate port range.
    pub(crate) slot: u16,
}

/// The pairs every mode measures, both ends in the mesh.
pub(crate) const PAIRS: [Pair; 2] = [
    Pair {
        name: "cross-node",
        server: MESH_POD,
        in_mesh: true,
        slot: 0,
    },
    Pair {
        name: "same-node",
        server: SAME_NODE_POD,
        in_mesh: true,
        slot: 1,
    },
];

/// Cross-node to a pod out of the mesh (beyond the first size, so never enrolled while
/// pairs are measured): TCP passthrough in the client's proxy. Not measured for sidecars.
pub(crate) const PASSTHROUGH_PAIR: Pair = Pair {
    name: "passthrough",
    server: PASSTHROUGH_POD,
    in_mesh: false,
    slot: 2,
};

pub(crate) const ALL_PAIRS: [Pair; 3] = [PAIRS[0], PAIRS[1], PASSTHROUGH_PAIR];

/// The proxy processes of a mode, and which of them sit at the two ends of a pair (ambient:
/// the node daemons; sidecar and ztunnel: the pods' own proxies).
#[derive(Clone, Debug, Default)]
pub(crate) struct Procs {
    pub(crate) all: Vec<u32>,
    pub(crate) client: Vec<u32>,
    pub(crate) server: Vec<u32>,
}

/// One throughput window.
#[derive(Clone, Debug)]
pub(crate) struct Tput {
    pub(crate) streams: usize,
    pub(crate) bytes: u64,
    pub(crate) seconds: f64,
    /// CPU seconds (user + system, + reaped children) of every proxy process in the window.
    pub(crate) proxy_cpu_s: f64,
    /// The same for the client-side and the server-side proxy (the same process for the
    /// ambient same-node pair; server 0 for passthrough).
    pub(crate) client_cpu_s: f64,
    pub(crate) server_cpu_s: f64,
    /// The same for this process (clients, servers and the kernel work charged to them).
    pub(crate) bench_cpu_s: f64,
}

impl Tput {
    pub(crate) fn gbit(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }
}

/// Over several windows: median Gbit/s; CPU s per GiB over all windows together.
pub(crate) fn tput_summary(rounds: &[Tput]) -> (f64, f64, f64) {
    let g: Vec<f64> = rounds.iter().map(Tput::gbit).collect();
    let gib = rounds.iter().map(|r| r.bytes as f64).sum::<f64>() / (1u64 << 30) as f64;
    let ambit = rounds.iter().map(|r| r.proxy_cpu_s).sum::<f64>() / gib;
    let bench = rounds.iter().map(|r| r.bench_cpu_s).sum::<f64>() / gib;
    (median(&g), ambit, bench)
}

#[derive(Clone, Debug)]
pub(crate) struct Latency {
    count: usize,
    seconds: f64,
    pub(crate) p50_us: f64,
    p90_us: f64,
    pub(crate) p99_us: f64,
    max_us: f64,
}

impl Latency {
    fn of(mut ns: Vec<u64>, seconds: f64) -> Latency {
        ns.sort_unstable();
        let us = |p: f64| {
            if ns.is_empty() {
                f64::NAN
            } else {
                percentile(&ns, p) as f64 / 1000.0
            }
        };
        Latency {
            count: ns.len(),
            seconds,
            p50_us: us(50.0),
            p90_us: us(90.0),
            p99_us: us(99.0),
            max_us: us(100.0),
        }
    }

    pub(crate) fn per_second(&self) -> f64 {
        self.count as f64 / self.seconds
    }

    /// A test that was not run (`--tests`): every figure NaN.
    pub(crate) fn none() -> Latency {
        Latency::of(Vec::new(), f64::NAN)
    }

    pub(crate) fn text(&self) -> String {
        format!(
            "{:.0} / {:.0} / {:.0}",
            self.p50_us, self.p90_us, self.p99_us
        )
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "requests": self.count, "seconds": self.seconds, "per_second": self.per_second(),
            "p50_us": self.p50_us, "p90_us": self.p90_us, "p99_us": self.p99_us,
            "max_us": self.max_us,
        })
    }
}

#[derive(Clone, Debug)]
pub(crate) struct PairResult {
    pub(crate) mesh: Mesh,
    pub(crate) pair: Pair,
    pub(crate) stream1: Vec<Tput>,
    pub(crate) stream8: Vec<Tput>,
    pub(crate) paced: Latency,
    pub(crate) closed: Latency,
    pub(crate) conn: RateResult,
}

/// Resources at one size.
#[derive(Clone, Debug)]
pub(crate) struct ScalePoint {
    pub(crate) mesh: Mesh,
    pub(crate) pods_per_node: usize,
    /// Pods captured by ambit on both nodes.
    pub(crate) enrolled: usize,
    /// VmRSS and RssAnon of every ambit process (2 daemons, or one sidecar per pod), after
    /// `tput`.
    pub(crate) rss: Vec<Rss>,
    /// One single-stream cross-node window at this size.
    pub(crate) tput: Tput,
}

impl ScalePoint {
    pub(crate) fn total_kib(&self) -> u64 {
        self.rss.iter().map(|r| r.vm_kib).sum()
    }

    pub(crate) fn anon_total_kib(&self) -> u64 {
        self.rss.iter().map(|r| r.anon_kib).sum()
    }

    pub(crate) fn per_pod_kib(&self) -> f64 {
        self.total_kib() as f64 / self.enrolled as f64
    }

    pub(crate) fn anon_per_pod_kib(&self) -> f64 {
        self.anon_total_kib() as f64 / self.enrolled as f64
    }
}

/// Servers of a mode lab: sink, echo and ping in the two destination pods.
pub(crate) struct ModeServers {
    sinks: Vec<(String, Sink)>,
    _echoes: Vec<Server>,
    _pings: Vec<PingServer>,
}

impl ModeServers {
    /// Servers in the destination pods of `pairs` and in [`MESH_POD`] (the idle test's).
    pub(crate) async fn start(lab: &Lab, pairs: &[Pair]) -> anyhow::Result<ModeServers> {
        let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let (mut sinks, mut echoes, mut pings) = (Vec::new(), Vec::new(), Vec::new());
        let mut pods: Vec<&str> = vec![MESH_POD];
        pods.extend(pairs.iter().map(|p| p.server).filter(|s| *s != MESH_POD));
        for server in pods {
            let ns = lab.pod_netns(server)?;
            sinks.push((server.to_string(), Sink::start(&ns, any(SINK_PORT))?));
            pings.push(PingServer::start(&ns, any(PING_PORT))?);
            echoes.push(Server::start(&ns, any(ECHO_PORT)).await?);
        }
        Ok(ModeServers {
            sinks,
            _echoes: echoes,
            _pings: pings,
        })
    }

    pub(crate) fn sink(&self, pod: &str) -> anyhow::Result<&Sink> {
        self.sinks
            .iter()
            .find(|(p, _)| p == pod)
            .map(|(_, s)| s)
            .ok_or_else(|| anyhow!("no sink in {pod}"))
    }
}

/// utime + stime + cutime + cstime of `pid`, clock ticks.
fn cpu_ticks_with_children(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    (11..=14).map(|i| fields.get(i)?.parse::<u64>().ok()).sum()
}

/// CPU seconds used so far by `pids` together.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|p| cpu_ticks_with_children(*p))
        .sum::<u64>() as f64
        / hz
}

/// `n` connections writing back to back to `sink` at `dst`; bytes the sink received and CPU
/// used in the window after the warm-up.
pub(crate) async fn stream_many(
    plan: Plan,
    ns: &NetNs,
    sink: &Sink,
    dst: SocketAddr,
    n: usize,
    procs: &Procs,
) -> anyhow::Result<Tput> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(traffic::connect(ns, dst).await.context("connecting")?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<JoinHandle<std::io::Result<()>>> = conns
        .into_iter()
        .map(|mut s| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let buf = traffic::pattern(STREAM_BUFFER);
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(&buf).await?;
                }
                s.shutdown().await
            })
        })
        .collect();
    tokio::time::sleep(plan.stream_warmup).await;
    if writers.iter().any(JoinHandle::is_finished) {
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.context("writer task")?.context("writing")?;
        }
        bail!("a writer stopped during the warm-up");
    }
    let me = [std::process::id()];
    let side = |p: &Procs| [cpu_seconds(&p.client), cpu_seconds(&p.server)];
    let (s0, a0, m0, t0, b0) = (
        side(procs),
        cpu_seconds(&procs.all),
        cpu_seconds(&me),
        Instant::now(),
        sink.received(),
    );
    tokio::time::sleep(plan.stream_window).await;
    let (s1, a1, m1, t1, b1) = (
        side(procs),
        cpu_seconds(&procs.all),
        cpu_seconds(&me),
        Instant::now(),
        sink.received(),
    );
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await
            .context("writer task")?
            .context("writing to the sink")?;
    }
    if b1 == b0 {
        bail!("the sink received nothing in the window");
    }
    Ok(Tput {
        streams: n,
        bytes: b1 - b0,
        seconds: (t1 - t0).as_secs_f64(),
        proxy_cpu_s: a1 - a0,
        client_cpu_s: s1[0] - s0[0],
        server_cpu_s: s1[1] - s0[1],
        bench_cpu_s: m1 - m0,
    })
}

/// 1 KiB request/response on one connection, one request outstanding. With `rate`, request
/// `i` is scheduled at `start + i / rate`; its latency is counted from that scheduled time
/// as `c_i - s_i` with `c_i = max(s_i, c_(i-1)) + rtt_i`: a request that had to wait for a
/// slow predecessor carries that wait (no coordinated omission), while this client's own
/// timer lateness (tokio timers fire up to ~1 ms late) is not charged to the path. Without
/// `rate`: closed loop, back to back, latency = round trip.
pub(crate) async fn paced_rr(
    plan: Plan,
    ns: &NetNs,
    dst: SocketAddr,
    rate: Option<u32>,
) -> anyhow::Result<Latency> {
    let mut stream = traffic::connect(ns, dst).await.context("connecting")?;
    let request = traffic::pattern(REQUEST_SIZE);
    let mut reply = vec![0u8; REQUEST_SIZE];
    let period = rate.map(|r| Duration::from_secs_f64(1.0 / f64::from(r)));
    let start = Instant::now();
    let from = start + plan.rr_warmup;
    let end = from + plan.rr_window;
    let mut samples = Vec::with_capacity(100_000);
    let mut corrected_done = start;
    let mut i: u32 = 0;
    loop {
        let scheduled = match period {
            Some(p) => start + p * i,
            None => Instant::now(),
        };
        i += 1;
        if scheduled >= end {
            break;
        }
        if Instant::now() < scheduled {
            tokio::time::sleep_until(scheduled.into()).await;
        }
        let sent = Instant::now();
        stream.write_all(&request).await.context("sending")?;
        stream
            .read_exact(&mut reply)
            .await
            .context("reading the echo")?;
        let rtt = sent.elapsed();
        if reply != request {
            bail!("the echo differs from the request");
        }
        let latency = if period.is_some() {
            corrected_done = scheduled.max(corrected_done) + rtt;
            corrected_done - scheduled
        } else {
            rtt
        };
        if scheduled >= from {
            samples.push(latency.as_nanos() as u64);
        }
    }
    stream.shutdown().await.context("closing")?;
    Ok(Latency::of(samples, plan.rr_window.as_secs_f64()))
}

/// Runs `work` on `rt`, failing after `limit`.
pub(crate) fn within<T>(
    rt: &Runtime,
    limit: Duration,
    what: &str,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    rt.block_on(async { tokio::time::timeout(limit, work).await })
        .map_err(|_| anyhow!("{what} did not finish within {limit:?}"))?
        .with_context(|| what.to_string())
}
