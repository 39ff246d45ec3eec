//! Throughput and latency of a pod-to-pod TCP connection across nodes, direct and through ambit.
//!
//! Run as root: `cargo bench --bench throughput` (about a minute), or
//! `cargo bench --bench throughput -- --quick` (shorter windows, one round, ~20 s).
//!
//! # What is measured
//!
//! One lab is built (2 nodes × 1 pod: `n1-p1`, `n2-p1`, pods in an ambient namespace) and the
//! same two measurements are taken from pod `n1-p1` to pod `n2-p1` over IPv4, twice in one run:
//!
//! - **direct**: before any daemon runs, so no redirect rules and no proxy: the path is
//!   pod veth → node n1 → fabric bridge → node n2 → pod veth;
//! - **ambit**: after `ambit run --rules=iptables` is started on both nodes and `/pods` on each
//!   node shows its pod `enrolled`. The same connection now goes client → 15001 (ambit on n1,
//!   outbound passthrough) → network → 15006 (ambit on n2, inbound, client IP kept) → server,
//!   i.e. two user-space proxies and two extra TCP connections. After the measurements the
//!   bench checks on `/flows` that both daemons really carried the connections (outbound on n1,
//!   inbound on n2); otherwise it fails instead of reporting a meaningless number.
//!
//! All sockets of the client and the servers are created inside the pods' network namespaces
//! (`NetNs::run`) and driven by one tokio multi-thread runtime in this process; the daemons are
//! separate processes. Everything shares the machine's CPUs.
//!
//! **Single-stream throughput**: a sink server in `n2-p1` reads and discards. The client opens
//! one connection and writes 256 KiB buffers back to back. After a warm-up (1 s; `--quick`
//! 0.5 s) the bench samples the sink's received-byte counter, waits the measurement window (3 s;
//! `--quick` 1 s) and samples it again: Gbit/s = 8 × bytes received by the sink in the window /
//! window length (10^9 bits). Bytes still in socket buffers or in a proxy do not count. This is
//! repeated for 3 rounds (`--quick`: 1), each on a fresh connection; the table shows the median
//! and the range. During each window the CPU time (user + system, from `/proc/<pid>/stat`) of
//! this process and of each daemon is sampled, as a percentage of one CPU, to show where the
//! cycles go; kernel work done in softirq context is charged to whichever process was running,
//! so treat it as indicative.
//!
//! **1 KiB request/response latency**: the client opens one connection to an echo server in
//! `n2-p1` (`ambit::lab::traffic::Server`), then repeatedly writes 1024 bytes and reads the
//! 1024-byte echo (checking it is intact). After 0.5 s of warm-up (`--quick`: 0.2 s), every
//! round trip in a 3 s window (`--quick`: 1 s) is timed; p50 and p99 (nearest rank) are in
//! microseconds, and req/s is completed round trips / window. One request is outstanding at a
//! time, so req/s ≈ 1 / mean latency: it is a latency figure, not a capacity figure.
//!
//! # Output
//!
//! A markdown table on stdout (progress goes to stderr), also written with the machine
//! description (CPUs, CPU model, kernel) and the command to `<target>/bench/throughput.md`,
//! and everything as JSON to `<target>/bench/throughput.json`, where `<target>` is
//! `$CARGO_TARGET_DIR` or `target` under the package root.
//!
//! # Arguments and environment
//!
//! Cargo passes `--bench` to a `harness = false` bench under `cargo bench`; without it (as under
//! `cargo test --benches` / `--all-targets`) the binary prints a note and exits 0 without
//! building a lab, so test runs are not slowed by a minute of benchmarking. Running the binary
//! by hand, pass `--bench`. `--quick` shortens everything; `--help` prints usage; any other
//! argument (cargo's filters, `--nocapture`, ...) is ignored with a note on stderr.
//!
//! **Not root**: the bench prints why it needs root and exits with status 1 (an error, not a
//! silent skip: a bench run that measured nothing must not look like success).
//!
//! The lab is removed at the end, and also on error or panic. If the process is killed
//! (Ctrl-C) the lab stays: remove it with `ambit lab down <name>` (the name is printed first).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit::lab::traffic::{self, Server};
use ambit::lab::{Lab, LabSpec};
use ambit::netns::NetNs;
use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Client pod and server pod.
const CLIENT_POD: &str = "n1-p1";
const SERVER_POD: &str = "n2-p1";
/// Ports of the sink and the echo server inside the server pod (outside ambit's 15xxx range).
const SINK_PORT: u16 = 9000;
const ECHO_PORT: u16 = 9001;
/// Write and read buffer of the throughput test.
const STREAM_BUFFER: usize = 256 * 1024;
/// Request (and response) size of the latency test.
const REQUEST_SIZE: usize = 1024;
/// Rule backend the daemons use.
const RULES: &str = "iptables";
/// How long the daemons get to become ready and to enroll their pod.
const DAEMON_DEADLINE: Duration = Duration::from_secs(30);
/// Slack beyond the planned duration before a measurement is declared stuck.
const STUCK_SLACK: Duration = Duration::from_secs(15);

/// Durations and repetitions of one run.
#[derive(Clone, Copy, Debug)]
struct Plan {
    quick: bool,
    stream_warmup: Duration,
    stream_window: Duration,
    stream_rounds: usize,
    rr_warmup: Duration,
    rr_window: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                stream_warmup: Duration::from_millis(500),
                stream_window: Duration::from_secs(1),
                stream_rounds: 1,
                rr_warmup: Duration::from_millis(200),
                rr_window: Duration::from_secs(1),
            }
        } else {
            Plan {
                quick,
                stream_warmup: Duration::from_secs(1),
                stream_window: Duration::from_secs(3),
                stream_rounds: 3,
                rr_warmup: Duration::from_millis(500),
                rr_window: Duration::from_secs(3),
            }
        }
    }

    fn command(&self) -> String {
        if self.quick {
            "cargo bench --bench throughput -- --quick".into()
        } else {
            "cargo bench --bench throughput".into()
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut quick = false;
    let mut under_cargo_bench = false;
    for arg in &args {
        match arg.as_str() {
            "--quick" => quick = true,
            "--bench" => under_cargo_bench = true,
            "-h" | "--help" => {
                println!(
                    "usage: cargo bench --bench throughput [-- --quick]\n\n\
                     Measures pod n1-p1 -> pod n2-p1 (IPv4, across nodes) in a lab cluster,\n\
                     direct and through ambit: single-stream throughput and 1 KiB\n\
                     request/response latency. Needs root. Results: <target>/bench/throughput.{{md,json}}.\n\
                     --quick   shorter windows and one throughput round"
                );
                return;
            }
            other => eprintln!("throughput bench: ignoring argument {other:?}"),
        }
    }
    if !under_cargo_bench {
        println!(
            "throughput bench: not run (no --bench flag, so this is a test run); \
             use `cargo bench --bench throughput`"
        );
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "throughput bench: needs root (it builds network namespaces, veths and netfilter \
             rules); run `sudo -E cargo bench --bench throughput` or `sudo ./dev bench`"
        );
        std::process::exit(1);
    }
    let plan = Plan::new(quick);
    if let Err(e) = run(plan, &args) {
        eprintln!("throughput bench failed: {e:#}");
        std::process::exit(1);
    }
}

/// Results of one mode.
#[derive(Clone, Debug)]
struct ModeResult {
    mode: String,
    stream: Vec<StreamRound>,
    rr: RrResult,
}

#[derive(Clone, Debug)]
struct StreamRound {
    bytes: u64,
    seconds: f64,
    /// CPU use during the window, percent of one CPU: this process, then each daemon.
    cpu: Vec<(String, f64)>,
}

impl StreamRound {
    fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }
}

#[derive(Clone, Debug)]
struct RrResult {
    count: usize,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
    max_us: f64,
}

impl RrResult {
    fn per_second(&self) -> f64 {
        self.count as f64 / self.seconds
    }
}

fn run(plan: Plan, args: &[String]) -> anyhow::Result<()> {
    let machine = Machine::describe();
    let lab = Lab::up(&LabSpec {
        name: None,
        nodes: 2,
        pods_per_node: 1,
        namespace_ambient: true,
    })
    .context("building the lab")?;
    eprintln!(
        "lab {} up (remove it with `ambit lab down {}` if this run is interrupted)",
        lab.name(),
        lab.name()
    );
    let client_ns = lab.pod_netns(CLIENT_POD)?;
    let server_ns = lab.pod_netns(SERVER_POD)?;
    let server_ip = lab.pod(SERVER_POD)?.ipv4;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let (sink, echo) = runtime.block_on(async {
        let sink = Sink::start(&server_ns, (Ipv4Addr::UNSPECIFIED, SINK_PORT).into())
            .context("starting the sink server in n2-p1")?;
        let echo = Server::start(&server_ns, (Ipv4Addr::UNSPECIFIED, ECHO_PORT).into())
            .await
            .context("starting the echo server in n2-p1")?;
        anyhow::Ok((sink, echo))
    })?;
    let sink_addr = SocketAddr::from((server_ip, SINK_PORT));
    let echo_addr = SocketAddr::from((server_ip, ECHO_PORT));

    let mut results = Vec::new();
    eprintln!("direct (no daemon):");
    results.push(runtime.block_on(measure(
        "direct",
        plan,
        &client_ns,
        &sink,
        sink_addr,
        echo_addr,
        &[],
    ))?);

    let binary = PathBuf::from(env!("CARGO_BIN_EXE_ambit"));
    let daemon_args = [format!("--rules={RULES}")];
    for node in ["n1", "n2"] {
        lab.start_daemon(node, &binary, &daemon_args)
            .with_context(|| format!("starting ambit on {node}"))?;
    }
    let started = Instant::now();
    for (node, pod) in [("n1", CLIENT_POD), ("n2", SERVER_POD)] {
        lab.wait_ready(node, DAEMON_DEADLINE)
            .with_context(|| format!("waiting for ambit on {node} to be ready"))?;
        wait_enrolled(&lab, node, pod, started + DAEMON_DEADLINE)?;
    }
    eprintln!(
        "ambit ({RULES}) running on n1 and n2, pods enrolled after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let daemons: Vec<(String, u32)> = ["n1", "n2"]
        .iter()
        .filter_map(|n| lab.daemon_pid(n).map(|pid| (format!("ambit {n}"), pid)))
        .collect();
    let mode = format!("ambit ({RULES})");
    results.push(runtime.block_on(measure(
        &mode, plan, &client_ns, &sink, sink_addr, echo_addr, &daemons,
    ))?);
    check_flows(&lab, sink_addr, echo_addr)?;

    drop((sink, echo));
    runtime.shutdown_timeout(Duration::from_secs(2));

    let markdown = render_markdown(&plan, &machine, &results);
    let json = render_json(&plan, args, &machine, &results);
    println!("\n{markdown}");
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let md_path = dir.join("throughput.md");
    let json_path = dir.join("throughput.json");
    std::fs::write(&md_path, &markdown)
        .with_context(|| format!("writing {}", md_path.display()))?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    eprintln!("wrote {} and {}", md_path.display(), json_path.display());

    lab.down().context("removing the lab")?;
    Ok(())
}

/// Both measurements for one mode.
async fn measure(
    mode: &str,
    plan: Plan,
    client_ns: &NetNs,
    sink: &Sink,
    sink_addr: SocketAddr,
    echo_addr: SocketAddr,
    daemons: &[(String, u32)],
) -> anyhow::Result<ModeResult> {
    let mut stream = Vec::new();
    for round in 1..=plan.stream_rounds {
        let planned = plan.stream_warmup + plan.stream_window + STUCK_SLACK;
        let r = tokio::time::timeout(
            planned,
            stream_round(plan, client_ns, sink, sink_addr, daemons),
        )
        .await
        .map_err(|_| anyhow::anyhow!("throughput round did not finish within {planned:?}"))?
        .with_context(|| format!("{mode}: throughput round {round} to {sink_addr}"))?;
        let cpu: Vec<String> = r
            .cpu
            .iter()
            .map(|(who, pct)| format!("{who} {pct:.0}%"))
            .collect();
        eprintln!(
            "  stream round {round}: {:.2} Gbit/s (CPU: {})",
            r.gbit_per_s(),
            cpu.join(", ")
        );
        stream.push(r);
    }
    let planned = plan.rr_warmup + plan.rr_window + STUCK_SLACK;
    let rr = tokio::time::timeout(planned, request_response(plan, client_ns, echo_addr))
        .await
        .map_err(|_| anyhow::anyhow!("latency test did not finish within {planned:?}"))?
        .with_context(|| format!("{mode}: 1 KiB request/response to {echo_addr}"))?;
    eprintln!(
        "  1 KiB request/response: p50 {:.1} µs, p99 {:.1} µs, {:.0} req/s",
        rr.p50_us,
        rr.p99_us,
        rr.per_second()
    );
    Ok(ModeResult {
        mode: mode.to_string(),
        stream,
        rr,
    })
}

/// One connection, write for warm-up + window, count what the sink received in the window.
async fn stream_round(
    plan: Plan,
    client_ns: &NetNs,
    sink: &Sink,
    dst: SocketAddr,
    daemons: &[(String, u32)],
) -> anyhow::Result<StreamRound> {
    let stream = traffic::connect(client_ns, dst)
        .await
        .context("connecting")?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer: JoinHandle<std::io::Result<u64>> = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let buf = traffic::pattern(STREAM_BUFFER);
            let mut written = 0u64;
            while !stop.load(Ordering::Relaxed) {
                stream.write_all(&buf).await?;
                written += buf.len() as u64;
            }
            stream.shutdown().await?;
            Ok(written)
        })
    };
    tokio::time::sleep(plan.stream_warmup).await;
    if writer.is_finished() {
        let written = writer.await.context("writer task")?.context("writing")?;
        bail!("the writer stopped during warm-up after {written} bytes");
    }
    let mut pids = vec![("bench".to_string(), std::process::id())];
    pids.extend(daemons.iter().cloned());
    let cpu_before: Vec<Option<u64>> = pids.iter().map(|(_, pid)| cpu_ticks(*pid)).collect();
    let (t0, b0) = (Instant::now(), sink.received());
    tokio::time::sleep(plan.stream_window).await;
    let (t1, b1) = (Instant::now(), sink.received());
    let cpu_after: Vec<Option<u64>> = pids.iter().map(|(_, pid)| cpu_ticks(*pid)).collect();
    stop.store(true, Ordering::Relaxed);
    writer
        .await
        .context("writer task")?
        .context("writing to the sink")?;
    let seconds = (t1 - t0).as_secs_f64();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = pids
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .filter_map(|((who, _), (b, a))| {
            let used = a.as_ref()?.checked_sub(*b.as_ref()?)?;
            Some((who.clone(), used as f64 / hz / seconds * 100.0))
        })
        .collect();
    if b1 == b0 {
        bail!("the sink received nothing during the {seconds:.1} s window");
    }
    Ok(StreamRound {
        bytes: b1 - b0,
        seconds,
        cpu,
    })
}

/// One connection, 1 KiB out and 1 KiB back, one at a time, timed after a warm-up.
async fn request_response(
    plan: Plan,
    client_ns: &NetNs,
    dst: SocketAddr,
) -> anyhow::Result<RrResult> {
    let mut stream = traffic::connect(client_ns, dst)
        .await
        .context("connecting")?;
    let request = traffic::pattern(REQUEST_SIZE);
    let mut reply = vec![0u8; REQUEST_SIZE];
    let mut samples: Vec<u64> = Vec::with_capacity(200_000);
    let warmup_end = Instant::now() + plan.rr_warmup;
    let mut window: Option<(Instant, Instant)> = None;
    let seconds = loop {
        let start = Instant::now();
        stream.write_all(&request).await.context("sending")?;
        stream
            .read_exact(&mut reply)
            .await
            .context("reading the echo")?;
        let end = Instant::now();
        if reply != request {
            bail!("the echo differs from the request");
        }
        match window {
            None if end >= warmup_end => window = Some((end, end + plan.rr_window)),
            None => {}
            Some((from, until)) => {
                samples.push((end - start).as_nanos() as u64);
                if end >= until {
                    break (end - from).as_secs_f64();
                }
            }
        }
    };
    stream.shutdown().await.context("closing")?;
    samples.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64;
    Ok(RrResult {
        count: samples.len(),
        seconds,
        p50_us: us(percentile(&samples, 50.0)),
        p99_us: us(percentile(&samples, 99.0)),
        mean_us: mean / 1000.0,
        max_us: us(*samples.last().unwrap_or(&0)),
    })
}

/// Nearest-rank percentile of sorted, non-empty `samples`.
fn percentile(samples: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// A server that reads and discards, counting every byte received on any connection.
struct Sink {
    received: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    /// Listens on `addr` inside `ns`; must be called within the runtime.
    fn start(ns: &NetNs, addr: SocketAddr) -> anyhow::Result<Sink> {
        let std_listener = ns
            .run(|| -> std::io::Result<std::net::TcpListener> {
                let domain = socket2::Domain::for_address(addr);
                let s = socket2::Socket::new(domain, socket2::Type::STREAM.cloexec(), None)?;
                s.set_reuse_address(true)?;
                s.bind(&addr.into())?;
                s.listen(128)?;
                s.set_nonblocking(true)?;
                Ok(s.into())
            })
            .context("entering the pod's network namespace")?
            .with_context(|| format!("listening on {addr}"))?;
        let listener = TcpListener::from_std(std_listener).context("registering the listener")?;
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(discard(stream, counter.clone()));
            }
        });
        Ok(Sink { received, task })
    }

    /// Bytes received so far over all connections.
    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

async fn discard(mut stream: TcpStream, counter: Arc<AtomicU64>) {
    let mut buf = vec![0u8; STREAM_BUFFER];
    // A reset connection just ends; the client reports its own error.
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// utime + stime of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Polls `/pods` on `node` until `pod` is `enrolled`, or fails at `deadline` with what it saw.
fn wait_enrolled(lab: &Lab, node: &str, pod: &str, deadline: Instant) -> anyhow::Result<()> {
    let uid = lab.pod(pod)?.uid.clone();
    let mut last;
    loop {
        match lab.admin_get(node, "/pods") {
            Ok(body) => {
                let pods: Vec<serde_json::Value> = serde_json::from_str(&body)
                    .with_context(|| format!("parsing /pods of {node}: {body}"))?;
                match pods.iter().find(|p| p["uid"] == uid.as_str()) {
                    Some(p) if p["state"] == "enrolled" => return Ok(()),
                    Some(p) => last = p.to_string(),
                    None => last = format!("{pod} not listed: {body}"),
                }
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            bail!(
                "pod {pod} not enrolled by ambit on {node} in time; last /pods: {last}\n\
                 --- daemon log ---\n{}",
                tail(&lab.daemon_log(node), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Fails unless ambit on n1 (outbound) and on n2 (inbound) recorded flows to both servers.
fn check_flows(lab: &Lab, sink: SocketAddr, echo: SocketAddr) -> anyhow::Result<()> {
    for (node, listener) in [("n1", "outbound"), ("n2", "inbound")] {
        let body = lab
            .admin_get(node, "/flows")
            .with_context(|| format!("reading /flows of ambit on {node}"))?;
        let flows: Vec<serde_json::Value> =
            serde_json::from_str(&body).with_context(|| format!("parsing /flows of {node}"))?;
        for dst in [sink, echo] {
            let carried = flows.iter().any(|f| {
                f["listener"] == listener
                    && f["dst"]
                        .as_str()
                        .and_then(|s| s.parse::<SocketAddr>().ok())
                        .is_some_and(|a| canonical(a) == dst)
            });
            if !carried {
                bail!(
                    "ambit on {node} recorded no {listener} flow to {dst}: the 'ambit' numbers \
                     would not be through the proxy (flows: {body})"
                );
            }
        }
    }
    Ok(())
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// What the numbers were measured on.
#[derive(Clone, Debug)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    kernel: String,
    revision: String,
}

impl Machine {
    fn describe() -> Machine {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = command_output("uname", &["-srm"]).unwrap_or_else(|| "unknown".into());
        let manifest = env!("CARGO_MANIFEST_DIR");
        let revision = command_output("git", &["-C", manifest, "describe", "--always", "--dirty"])
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpus,
            cpu_model,
            kernel,
            revision,
        }
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn target_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => manifest.join(dir),
        None => manifest.join("target"),
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn stream_summary(r: &ModeResult) -> (f64, f64, f64) {
    let g: Vec<f64> = r.stream.iter().map(StreamRound::gbit_per_s).collect();
    let min = g.iter().copied().fold(f64::INFINITY, f64::min);
    let max = g.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(&g), min, max)
}

/// Median CPU percentage per process over the rounds, as `who N%` joined.
fn cpu_summary(r: &ModeResult) -> String {
    let Some(first) = r.stream.first() else {
        return "-".into();
    };
    first
        .cpu
        .iter()
        .map(|(who, _)| {
            let values: Vec<f64> = r
                .stream
                .iter()
                .filter_map(|s| s.cpu.iter().find(|(w, _)| w == who).map(|(_, p)| *p))
                .collect();
            format!("{who} {:.0}%", median(&values))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn render_markdown(plan: &Plan, machine: &Machine, results: &[ModeResult]) -> String {
    let rounds = plan.stream_rounds;
    let mut md = String::new();
    md.push_str("## ambit throughput bench: pod n1-p1 → pod n2-p1 (across nodes, IPv4)\n\n");
    md.push_str(&format!(
        "- machine: {} CPUs, {}, {}\n- ambit: {}\n- command: `{}` (as root)\n",
        machine.cpus,
        machine.cpu_model,
        machine.kernel,
        machine.revision,
        plan.command()
    ));
    md.push_str(&format!(
        "- stream: one connection, {:.1} s warm-up, {:.1} s window, {rounds} round(s); \
         median (min–max) of bytes received by the sink\n",
        plan.stream_warmup.as_secs_f64(),
        plan.stream_window.as_secs_f64()
    ));
    md.push_str(&format!(
        "- latency: one connection, 1 KiB request + 1 KiB echo, one at a time, {:.1} s warm-up, \
         {:.1} s window\n\n",
        plan.rr_warmup.as_secs_f64(),
        plan.rr_window.as_secs_f64()
    ));
    md.push_str(
        "| mode | stream Gbit/s | 1 KiB RTT p50 µs | p99 µs | req/s | CPU during stream (% of one CPU) |\n\
         |---|---:|---:|---:|---:|---|\n",
    );
    for r in results {
        let (med, min, max) = stream_summary(r);
        let range = if r.stream.len() > 1 {
            format!(" ({min:.2}–{max:.2})")
        } else {
            String::new()
        };
        md.push_str(&format!(
            "| {} | {med:.2}{range} | {:.1} | {:.1} | {:.0} | {} |\n",
            r.mode,
            r.rr.p50_us,
            r.rr.p99_us,
            r.rr.per_second(),
            cpu_summary(r)
        ));
    }
    if let [direct, ambit] = results {
        let (d, _, _) = stream_summary(direct);
        let (a, _, _) = stream_summary(ambit);
        md.push_str(&format!(
            "| ambit / direct | {:.2}× | {:.2}× | {:.2}× | {:.2}× | |\n",
            a / d,
            ambit.rr.p50_us / direct.rr.p50_us,
            ambit.rr.p99_us / direct.rr.p99_us,
            ambit.rr.per_second() / direct.rr.per_second()
        ));
    }
    md
}

fn render_json(
    plan: &Plan,
    args: &[String],
    machine: &Machine,
    results: &[ModeResult],
) -> serde_json::Value {
    let modes: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let (med, min, max) = stream_summary(r);
            serde_json::json!({
                "mode": r.mode,
                "stream": {
                    "gbit_per_s_median": med,
                    "gbit_per_s_min": min,
                    "gbit_per_s_max": max,
                    "rounds": r.stream.iter().map(|s| serde_json::json!({
                        "bytes_received": s.bytes,
                        "seconds": s.seconds,
                        "gbit_per_s": s.gbit_per_s(),
                        "cpu_percent": s.cpu.iter()
                            .map(|(who, p)| (who.clone(), serde_json::json!(p)))
                            .collect::<serde_json::Map<_, _>>(),
                    })).collect::<Vec<_>>(),
                },
                "request_response_1k": {
                    "round_trips": r.rr.count,
                    "seconds": r.rr.seconds,
                    "per_second": r.rr.per_second(),
                    "p50_us": r.rr.p50_us,
                    "p99_us": r.rr.p99_us,
                    "mean_us": r.rr.mean_us,
                    "max_us": r.rr.max_us,
                },
            })
        })
        .collect();
    serde_json::json!({
        "bench": "throughput",
        "path": format!("pod {CLIENT_POD} -> pod {SERVER_POD}, across nodes, IPv4"),
        "command": plan.command(),
        "argv": args,
        "quick": plan.quick,
        "rules": RULES,
        "machine": {
            "cpus": machine.cpus,
            "cpu_model": machine.cpu_model,
            "kernel": machine.kernel,
        },
        "ambit_revision": machine.revision,
        "plan": {
            "stream_warmup_s": plan.stream_warmup.as_secs_f64(),
            "stream_window_s": plan.stream_window.as_secs_f64(),
            "stream_rounds": plan.stream_rounds,
            "stream_buffer_bytes": STREAM_BUFFER,
            "rr_warmup_s": plan.rr_warmup.as_secs_f64(),
            "rr_window_s": plan.rr_window.as_secs_f64(),
            "request_bytes": REQUEST_SIZE,
        },
        "modes": modes,
    })
}
