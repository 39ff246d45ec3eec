//! Pod-to-pod performance across nodes, without a daemon and through ambit in both of its
//! outbound routes: plaintext passthrough and HBONE (mutual-TLS HTTP/2 CONNECT tunnels).
//!
//! Run as root: `cargo bench --bench throughput` (about 6 min on 2 CPUs), or
//! `cargo bench --bench throughput -- --quick` (shorter windows, one round, under 2 min).
//!
//! # The lab and the three modes
//!
//! One lab is built: 2 nodes × 34 pods, pods in an ambient namespace. Before the daemons start,
//! the workload file labels `istio.io/dataplane-mode=none` on `n2-p2` (the destination of the
//! passthrough mode) and on every pod of `n1` except `n1-p1` (unused; this keeps the client
//! node's daemon down to the one enrolled pod whose memory is measured). `n2-p3`..`n2-p34`
//! stay enrolled: they are the destinations of the memory test. All traffic is IPv4.
//!
//! Order: direct; start the daemons; memory; passthrough; hbone; handshakes.
//!
//! - **direct**: `n1-p1` → `n2-p1` before any daemon runs: no redirect rules, no proxy; the path
//!   is pod veth → node n1 → fabric bridge → node n2 → pod veth.
//! - **passthrough**: daemons running (`ambit run --rules=iptables --pool-idle-secs=1` on both
//!   nodes, every enrolled pod shown `enrolled` on `/pods`), `n1-p1` (enrolled) → `n2-p2`
//!   (out of the mesh). The connection is redirected to 15001 in `n1-p1`'s netns and ambit on
//!   n1 dials the destination itself from that netns: one user-space proxy, two TCP
//!   connections, nothing on n2.
//! - **hbone**: `n1-p1` → `n2-p1`, both enrolled. ambit on n1 carries the connection as one
//!   HTTP/2 CONNECT stream in a pooled mutual-TLS connection to `n2-p1`'s 15008; ambit on n2
//!   terminates it and dials the app. Two user-space proxies, TLS both ways.
//!
//! After each mode's data-path tests and again after its connection-rate test, the bench reads
//! `/flows` and fails unless the traffic took the intended route: for passthrough, outbound
//! flows on n1 with route `passthrough` to the passthrough servers and no flow at all on n2 for
//! `n2-p2`; for hbone, outbound flows on n1 with route `hbone` and `hbone` flows on n2 to the
//! same destinations. A flow on the wrong route fails the run too.
//!
//! All client and server sockets are created inside the pods' (or the fabric's) network
//! namespaces (`NetNs::run`) and driven by one tokio multi-thread runtime in this process; the
//! daemons are separate processes. Everything shares the machine's CPUs, so during each timed
//! window the CPU time (user + system, from `/proc/<pid>/stat`) of this process and of each
//! daemon is sampled, as a percentage of one CPU. Kernel work done in softirq context is charged
//! to whichever process was running, so treat the split as indicative.
//!
//! # Data path (per mode)
//!
//! **Single-stream throughput**: a sink server in the destination pod reads and discards. The
//! client opens one connection and writes 256 KiB buffers back to back. After a warm-up (1 s;
//! `--quick` 0.5 s) the sink's received-byte counter is sampled, the bench waits the window
//! (3 s; `--quick` 1 s) and samples it again: Gbit/s = 8 × bytes received in the window / window
//! (10^9 bits). Bytes still in socket buffers or a proxy do not count. 3 rounds (`--quick`: 1),
//! each on a fresh connection; the table shows the median and the range.
//!
//! **1 KiB request/response latency**: one connection to an echo server in the destination pod
//! (`ambit::lab::traffic::Server`); write 1024 bytes, read the 1024-byte echo (checked), repeat.
//! After 0.5 s of warm-up (`--quick`: 0.2 s) every round trip in a 3 s window (`--quick`: 1 s) is
//! timed: p50 and p99 (nearest rank) in microseconds; req/s = round trips / window. One request
//! is outstanding at a time, so req/s ≈ 1 / mean latency.
//!
//! # Connection setup
//!
//! **New connections per second (per mode)**: sequentially, from `n1-p1`: create a socket,
//! connect to a "ping" server in the destination pod, send 1 byte, read the 1-byte reply, read
//! end-of-stream, drop the socket. The ping server reads 1 byte, writes it back and closes at
//! once, so the *server* side closes first and the TIME_WAIT state stays at the servers. Every
//! attempt after a warm-up (0.5 s; `--quick` 0.2 s) in a window (3 s; `--quick` 1 s) is timed
//! from socket creation to end-of-stream: conn/s = completed / window, plus p50/p99. For hbone
//! this opens a new CONNECT stream on the pooled tunnel (no TLS handshake per connection). Each
//! mode binds its client sockets to its own range of source ports below the ephemeral range
//! (direct 16000-23999, passthrough 24000-28399, hbone 28400-32767) and talks to its own server
//! port: the proxy's accepted sockets in `n1-p1` end in TIME_WAIT, and a later mode reusing one
//! of those client ports with another destination (hence another TCP timestamp offset) could
//! otherwise hit a stale TIME_WAIT and stall for a SYN retransmission (1 s).
//!
//! **New HBONE handshakes per second**: from the fabric namespace (which no pod captures), a
//! client in this process presenting a certificate issued once by the lab CA
//! (`spiffe://cluster.local/ns/lab/sa/bench`, via `identity::ca::Ca::issue`) does, per iteration
//! and sequentially: TCP connect to `n2-p1:15008`, TLS 1.3 handshake with mutual authentication
//! (`identity::tls::client_config`, no session resumption, so always a full handshake and
//! `n2-p1`'s identity verified), HTTP/2 handshake, `CONNECT n2-p1:<ping port>`
//! (`hbone::build_request`), 1 byte each way through the tunnel, end of stream, then close (all
//! handles dropped, so h2 sends GOAWAY and closes; if it has not within 1 s it is aborted and
//! counted). Windows as for connections. The flows on n2 are checked to carry the bench
//! identity.
//!
//! # Memory per idle connection
//!
//! Measured right after the daemons have enrolled their pods, before any other mesh traffic
//! (memory freed by earlier traffic would be reused by the allocator and hide growth). One
//! warm-up connection through a tunnel is opened and closed and the pool left to evict it; then
//! the RSS of the client node's daemon (`VmRSS`, and `RssAnon`, from `/proc/<pid>/status`, pid
//! from `Lab::daemon_pid("n1")`; n2's is read too) is read before and 0.5 s after each batch of
//! idle connections from `n1-p1`. Every connection first exchanges 1 byte with an echo server,
//! so its tunnel is known to be up; batches stay open, each is measured on top of the previous:
//!
//! - **own pooled TLS connection each**: one connection to each of 16 enrolled pods. A pool key
//!   is (destination pod, identity), so each needs its own pooled mutual-TLS + HTTP/2
//!   connection; the n1 `hbone_dials` metric confirms 16 dials.
//! - **sharing pooled connections**: 200 connections to `n2-p1`; at 100 streams per pooled
//!   connection they share 2 pooled connections (2 dials).
//!
//! Batches: own, shared (`--quick`), then own to 16 other pods and shared again (full run).
//! KiB per connection = ΔVmRSS / connections of the batch; the difference between the two kinds
//! estimates what one pooled TLS connection costs beyond a tunnelled stream. Finally everything
//! is closed and, after the pool idle timeout (`--pool-idle-secs=1`) and the pool's eviction
//! tick, RSS is read again to show how much the daemon handed back.
//!
//! The method is noisy and biased both ways, and the output says so: RSS counts touched 4 KiB
//! pages, not bytes; glibc malloc reuses memory freed earlier (a batch looks cheaper) and grows
//! heaps or creates per-thread arenas in steps (the batch that triggers it looks dearer); kernel
//! socket buffers are not in RSS at all.
//!
//! # Output
//!
//! Markdown tables on stdout (progress goes to stderr), also written with the machine
//! description (CPUs, CPU model, kernel) and the command to `<target>/bench/throughput.md`,
//! and everything as JSON to `<target>/bench/throughput.json`, where `<target>` is
//! `$CARGO_TARGET_DIR` or `target` under the package root.
//!
//! # Modes: direct vs ambient vs sidecar
//!
//! After the part above (skipped with `--modes-only`), two more labs of 2 nodes × 32 pods
//! compare, for `n1-p1` → `n2-p1` (cross-node) and `n1-p1` → `n1-p2` (same-node): **direct**
//! (no ambit; measured first on the ambient lab), **ambient** (`ambit run --rules=iptables` on
//! each node, pods beyond the current size labelled `istio.io/dataplane-mode=none`) and
//! **sidecar** (a lab whose namespace is not ambient, every pod annotated
//! `sidecar.istio.io/status`, one `ambit sidecar` per pod). Per pair: 1 and 8 parallel
//! streams (2 windows each; `--quick` 1), 1 KiB request/response paced at 1000 req/s (latency
//! from the scheduled send time, see `paced_rr`) and closed loop, new connections/s; the
//! route (`hbone` outbound on the client side, an `hbone` flow on the server side) is checked
//! on `/flows` of the daemons or sidecars. CPU s/GiB = utime+stime(+children) of all ambit
//! processes over the window ÷ GiB the sink received. Then at 2, 8 and 32 pods per node
//! (enrolled or started size by size): one cross-node single-stream window and the VmRSS and
//! RssAnon of every ambit process. Output: `<target>/bench/modes.{md,json,svg}`.
//!
//! # Arguments and environment
//!
//! Cargo passes `--bench` to a `harness = false` bench under `cargo bench`; without it (as under
//! `cargo test --benches` / `--all-targets`) the binary prints a note and exits 0 without
//! building a lab, so test runs are not slowed by benchmarking. Running the binary by hand,
//! pass `--bench`. `--quick` shortens everything; `--help` prints usage; any other argument
//! (cargo's filters, `--nocapture`, ...) is ignored with a note on stderr.
//!
//! **Not root**: the bench prints why it needs root and exits with status 1 (an error, not a
//! silent skip: a bench run that measured nothing must not look like success).
//!
//! The lab is removed at the end, and also on error or panic. If the process is killed
//! (Ctrl-C) the lab stays: remove it with `ambit lab down <name>` (the name is printed first).

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ambit::hbone::{build_request, TunnelRequest, PORT as HBONE_PORT};
use ambit::identity::{tls, Ca, Identity, DEFAULT_TRUST_DOMAIN};
use ambit::lab::traffic::{self, Server};
use ambit::lab::{Lab, LabSpec, CA_DIR};
use ambit::netns::NetNs;
use ambit::workload::enroll::DATAPLANE_MODE_LABEL;
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// The client pod, on n1.
const CLIENT_POD: &str = "n1-p1";
/// Enrolled destination on n2 (hbone mode, direct mode, handshakes, shared idle connections).
const MESH_POD: &str = "n2-p1";
/// Destination on n2 labelled out of the mesh (passthrough mode).
const PLAIN_POD: &str = "n2-p2";
/// Idle connections to distinct pods per "own pooled TLS connection" batch of the memory test.
const IDLE_BATCH: usize = 16;
/// Enrolled pods on n2 that each get one idle connection in the memory test (`n2-p3`..): enough
/// for two batches.
const IDLE_PODS: usize = 2 * IDLE_BATCH;
/// Pods per node: the two above plus the idle-connection targets.
const PODS_PER_NODE: usize = 2 + IDLE_PODS;
/// Idle connections sharing pooled tunnels to one pod in the memory test.
const SHARED_CONNS: usize = 200;
/// Servers inside the destination pods (outside ambit's 15xxx range).
const SINK_PORT: u16 = 9000;
const ECHO_PORT: u16 = 9001;
/// Ping server for the connection-rate tests of direct (in `n2-p1`) and passthrough (`n2-p2`).
const PING_PORT: u16 = 9002;
/// Ping server for the hbone connection-rate test (in `n2-p1`).
const HBONE_PING_PORT: u16 = 9003;
/// Ping server the handshake test tunnels to (in `n2-p1`).
const HANDSHAKE_PING_PORT: u16 = 9004;
/// Write and read buffer of the throughput test.
const STREAM_BUFFER: usize = 256 * 1024;
/// Request (and response) size of the latency test.
const REQUEST_SIZE: usize = 1024;
/// Rule backend the daemons use.
const RULES: &str = "iptables";
/// `--pool-idle-secs` of the daemons: short, so the memory test can empty the pool.
const POOL_IDLE_SECS: u64 = 1;
/// Pool idle timeout + the pool's 1 s eviction tick + margin.
const EVICTION_WAIT: Duration = Duration::from_millis(2500);
/// Wait between opening idle connections and reading RSS.
const SETTLE: Duration = Duration::from_millis(500);
/// Service account of the handshake test's client certificate.
const BENCH_SA: &str = "bench";
/// How long the daemons get to become ready and to enroll their pods.
const DAEMON_DEADLINE: Duration = Duration::from_secs(30);
/// Slack beyond the planned duration before a measurement is declared stuck.
const STUCK_SLACK: Duration = Duration::from_secs(15);
/// Longest a single connection or handshake attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a handshake iteration waits for its HTTP/2 connection to close gracefully.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The byte exchanged by the connection tests.
const PING: u8 = 0x5a;

/// One way of reaching the destination.
#[derive(Clone, Copy, Debug)]
struct ModeSpec {
    name: &'static str,
    /// Route the n1 daemon must record on `/flows`; `None`: no daemon runs.
    route: Option<&'static str>,
    /// Destination pod.
    server_pod: &'static str,
    /// Ping server port for the connection-rate test.
    ping_port: u16,
    /// Source ports the connection-rate client binds, `[start, end)`.
    client_ports: (u16, u16),
}

const DIRECT: ModeSpec = ModeSpec {
    name: "direct",
    route: None,
    server_pod: MESH_POD,
    ping_port: PING_PORT,
    client_ports: (16000, 24000),
};
const PASSTHROUGH: ModeSpec = ModeSpec {
    name: "passthrough",
    route: Some("passthrough"),
    server_pod: PLAIN_POD,
    ping_port: PING_PORT,
    client_ports: (24000, 28400),
};
const HBONE: ModeSpec = ModeSpec {
    name: "hbone",
    route: Some("hbone"),
    server_pod: MESH_POD,
    ping_port: HBONE_PING_PORT,
    client_ports: (28400, 32768),
};

/// Durations and repetitions of one run.
#[derive(Clone, Copy, Debug)]
struct Plan {
    quick: bool,
    stream_warmup: Duration,
    stream_window: Duration,
    stream_rounds: usize,
    rr_warmup: Duration,
    rr_window: Duration,
    conn_warmup: Duration,
    conn_window: Duration,
    mem_rounds: usize,
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
                conn_warmup: Duration::from_millis(200),
                conn_window: Duration::from_secs(1),
                mem_rounds: 1,
            }
        } else {
            Plan {
                quick,
                stream_warmup: Duration::from_secs(1),
                stream_window: Duration::from_secs(3),
                stream_rounds: 3,
                rr_warmup: Duration::from_millis(500),
                rr_window: Duration::from_secs(3),
                conn_warmup: Duration::from_millis(500),
                conn_window: Duration::from_secs(3),
                mem_rounds: 2,
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
    let mut modes_only = false;
    let mut under_cargo_bench = false;
    for arg in &args {
        match arg.as_str() {
            "--quick" => quick = true,
            "--modes-only" => modes_only = true,
            "--bench" => under_cargo_bench = true,
            "-h" | "--help" => {
                println!(
                    "usage: cargo bench --bench throughput [-- --quick]\n\n\
                     Measures pod n1-p1 -> pods on n2 (IPv4, across nodes) in a lab cluster:\n\
                     direct, through ambit as plaintext passthrough, and through ambit as HBONE.\n\
                     Single-stream throughput, 1 KiB request/response latency, new connections/s,\n\
                     new HBONE handshakes/s, daemon memory per idle connection. Needs root.\n\
                     Then direct vs ambient vs sidecar, cross-node and same-node, and ambit\n\
                     RSS/CPU at 2, 8 and 32 pods per node.\n\
                     Results: <target>/bench/throughput.{{md,json}}, modes.{{md,json,svg}}.\n\
                     --quick        shorter windows and one round of each\n\
                     --modes-only   only the direct/ambient/sidecar comparison"
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
    let started = Instant::now();
    if !modes_only {
        if let Err(e) = run(plan, &args) {
            eprintln!("throughput bench failed: {e:#}");
            std::process::exit(1);
        }
    }
    if let Err(e) = run_modes(plan, &args, &Machine::describe()) {
        eprintln!("throughput bench (modes) failed: {e:#}");
        std::process::exit(1);
    }
    eprintln!(
        "throughput bench done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// Results.

/// Results of one mode.
#[derive(Clone, Debug)]
struct ModeResult {
    spec: ModeSpec,
    stream: Vec<StreamRound>,
    rr: RrResult,
    conn: RateResult,
    /// Flows the daemons recorded for the connection-rate test (`None` without daemons).
    conn_flows: Option<FlowCount>,
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

/// A sequential rate test (connections or handshakes).
#[derive(Clone, Debug)]
struct RateResult {
    count: usize,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
    max_us: f64,
    cpu: Vec<(String, f64)>,
    /// Client ports skipped because they were still in use.
    skipped_ports: u64,
    /// Handshakes whose HTTP/2 connection did not close within [`CLOSE_GRACE`] and were aborted.
    forced_closes: u64,
}

impl RateResult {
    fn per_second(&self) -> f64 {
        self.count as f64 / self.seconds
    }
}

/// What `/flows` showed for a connection-rate test.
#[derive(Clone, Copy, Debug, Default)]
struct FlowCount {
    /// Outbound flows on n1 to the ping server (among the most recent 4096).
    n1: usize,
    /// Of those, how many ended in an error.
    n1_errors: usize,
    /// `hbone` flows on n2 to the ping server (hbone only).
    n2: usize,
}

/// One batch of idle connections opened on top of the previous ones.
#[derive(Clone, Debug)]
struct MemBatch {
    kind: MemKind,
    /// 1-based position in the sequence of batches.
    batch: usize,
    conns: usize,
    /// Increase of n1's `hbone_dials` counter while opening.
    dials: Option<u64>,
    /// n1 RSS before opening the batch and with it open.
    n1: [Rss; 2],
    /// The same for n2.
    n2: [Rss; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemKind {
    /// One connection per destination pod: each has its own pooled TLS connection.
    OwnTunnel,
    /// Many connections to one pod, sharing pooled TLS connections.
    Shared,
}

impl MemKind {
    fn label(self) -> &'static str {
        match self {
            MemKind::OwnTunnel => "own pooled TLS conn each",
            MemKind::Shared => "sharing pooled TLS conns",
        }
    }

    fn key(self) -> &'static str {
        match self {
            MemKind::OwnTunnel => "own_pooled_connection_each",
            MemKind::Shared => "shared_pooled_connections",
        }
    }
}

impl MemBatch {
    /// Growth of VmRSS per connection, KiB.
    fn kib_per_conn(&self, rss: &[Rss; 2]) -> f64 {
        (rss[1].vm_kib as f64 - rss[0].vm_kib as f64) / self.conns as f64
    }

    /// Growth of RssAnon per connection, KiB.
    fn anon_kib_per_conn(&self, rss: &[Rss; 2]) -> f64 {
        (rss[1].anon_kib as f64 - rss[0].anon_kib as f64) / self.conns as f64
    }
}

/// The memory test: batches, and RSS before the first and after closing everything.
#[derive(Clone, Debug)]
struct Memory {
    batches: Vec<MemBatch>,
    /// n1, n2 before the first batch (after the warm-up connection was closed and evicted).
    baseline: [Rss; 2],
    /// n1, n2 with every batch open.
    peak: [Rss; 2],
    /// n1, n2 after closing every connection and waiting for pool eviction.
    after_close: [Rss; 2],
}

impl Memory {
    /// Share of n1's total growth handed back after closing, percent.
    fn returned_percent(&self, node: usize) -> f64 {
        let grown = self.peak[node].vm_kib as f64 - self.baseline[node].vm_kib as f64;
        if grown <= 0.0 {
            return f64::NAN;
        }
        (self.peak[node].vm_kib as f64 - self.after_close[node].vm_kib as f64) / grown * 100.0
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Rss {
    vm_kib: u64,
    anon_kib: u64,
}

/// Everything one run measured.
struct Report {
    modes: Vec<ModeResult>,
    handshakes: RateResult,
    memory: Memory,
    /// n1 and n2 daemon RSS once all pods were enrolled, before any mesh traffic.
    daemon_rss_at_start: Vec<(String, Rss)>,
}

// ---------------------------------------------------------------------------------------------
// The run.

fn run(plan: Plan, args: &[String]) -> anyhow::Result<()> {
    raise_fd_limit();
    let machine = Machine::describe();
    let lab = Lab::up(&LabSpec {
        name: None,
        nodes: 2,
        pods_per_node: PODS_PER_NODE,
        namespace_ambient: true,
        kube: false,
    })
    .context("building the lab")?;
    eprintln!(
        "lab {} up (remove it with `ambit lab down {}` if this run is interrupted)",
        lab.name(),
        lab.name()
    );
    // Out of the mesh: n2-p2 (the passthrough destination) and n1's unused pods.
    let opted_out: Vec<String> = lab
        .pods_on("n1")
        .filter(|p| p.name != CLIENT_POD)
        .map(|p| p.name.clone())
        .chain([PLAIN_POD.to_string()])
        .collect();
    lab.update_workloads(|s| {
        for pod in s.pods.iter_mut().filter(|p| opted_out.contains(&p.name)) {
            pod.labels
                .insert(DATAPLANE_MODE_LABEL.to_string(), "none".to_string());
        }
    })
    .context("labelling pods out of the mesh")?;
    let idle_pods: Vec<String> = lab
        .pods_on("n2")
        .filter(|p| p.name != MESH_POD && p.name != PLAIN_POD)
        .map(|p| p.name.clone())
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let servers = runtime.block_on(Servers::start(&lab, &idle_pods))?;
    let mut bench = Bench {
        plan,
        lab: &lab,
        runtime: &runtime,
        client_ns: lab.pod_netns(CLIENT_POD)?,
        servers,
        pids: vec![("bench".to_string(), std::process::id())],
    };

    let mut modes = Vec::new();
    eprintln!("direct (no daemon):");
    modes.push(bench.mode(DIRECT)?);

    let binary = PathBuf::from(env!("CARGO_BIN_EXE_ambit"));
    let daemon_args = [
        format!("--rules={RULES}"),
        format!("--pool-idle-secs={POOL_IDLE_SECS}"),
    ];
    for node in ["n1", "n2"] {
        lab.start_daemon(node, &binary, &daemon_args)
            .with_context(|| format!("starting ambit on {node}"))?;
    }
    let started = Instant::now();
    let enrolled: Vec<(&str, &str)> = [("n1", CLIENT_POD), ("n2", MESH_POD)]
        .into_iter()
        .chain(idle_pods.iter().map(|p| ("n2", p.as_str())))
        .collect();
    lab.wait_ready("n1", DAEMON_DEADLINE)
        .context("waiting for ambit on n1 to be ready")?;
    lab.wait_ready("n2", DAEMON_DEADLINE)
        .context("waiting for ambit on n2 to be ready")?;
    for (node, pod) in &enrolled {
        wait_state(&lab, node, pod, true, started + DAEMON_DEADLINE)?;
    }
    wait_state(&lab, "n2", PLAIN_POD, false, started + DAEMON_DEADLINE)?;
    eprintln!(
        "ambit ({RULES}) running on n1 and n2; {} pods enrolled, {PLAIN_POD} out of the mesh, \
         after {:.1} s",
        enrolled.len(),
        started.elapsed().as_secs_f64()
    );
    let daemons: Vec<(String, u32)> = ["n1", "n2"]
        .iter()
        .map(|n| {
            lab.daemon_pid(n)
                .map(|pid| (format!("ambit {n}"), pid))
                .ok_or_else(|| anyhow!("no daemon pid for {n}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let daemon_rss_at_start = daemons
        .iter()
        .map(|(who, pid)| Ok((who.clone(), read_rss(*pid)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    bench.pids.extend(daemons.iter().cloned());

    // First, while the daemons have carried no traffic: freed memory they would reuse hides
    // growth.
    eprintln!("memory per idle connection (daemon RSS):");
    let memory = bench.memory(&idle_pods)?;
    eprintln!("passthrough ({CLIENT_POD} -> {PLAIN_POD}, out of the mesh):");
    modes.push(bench.mode(PASSTHROUGH)?);
    eprintln!("hbone ({CLIENT_POD} -> {MESH_POD}, both enrolled):");
    modes.push(bench.mode(HBONE)?);
    eprintln!("HBONE handshakes (fabric -> {MESH_POD}:{HBONE_PORT}):");
    let handshakes = bench.handshakes()?;

    drop(bench);
    runtime.shutdown_timeout(Duration::from_secs(2));

    let report = Report {
        modes,
        handshakes,
        memory,
        daemon_rss_at_start,
    };
    let markdown = render_markdown(&plan, &machine, &report);
    let json = render_json(&plan, args, &machine, &report);
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

/// Raises the soft open-files limit to the hard one: the memory test holds a few hundred
/// sockets on each side in this process (the daemons inherit the limit).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// What the measurements share.
struct Bench<'a> {
    plan: Plan,
    lab: &'a Lab,
    runtime: &'a Runtime,
    client_ns: NetNs,
    servers: Servers,
    /// Processes whose CPU time is sampled: this one, then the daemons once they run.
    pids: Vec<(String, u32)>,
}

impl Bench<'_> {
    /// Runs `work` on the runtime, giving up after `limit`.
    fn block_on_timeout<F: Future>(
        &self,
        limit: Duration,
        work: F,
    ) -> Result<F::Output, tokio::time::error::Elapsed> {
        self.runtime
            .block_on(async { tokio::time::timeout(limit, work).await })
    }

    fn addr(&self, pod: &str, port: u16) -> anyhow::Result<SocketAddr> {
        Ok(SocketAddr::from((self.lab.pod(pod)?.ipv4, port)))
    }

    /// Data path, route check, connection rate, route check.
    fn mode(&self, spec: ModeSpec) -> anyhow::Result<ModeResult> {
        let plan = self.plan;
        let sink_addr = self.addr(spec.server_pod, SINK_PORT)?;
        let echo_addr = self.addr(spec.server_pod, ECHO_PORT)?;
        let ping_addr = self.addr(spec.server_pod, spec.ping_port)?;
        let sink = self.servers.sink(spec.server_pod)?;
        let (stream, rr) = self.runtime.block_on(measure(
            spec.name,
            plan,
            &self.client_ns,
            sink,
            (sink_addr, echo_addr),
            &self.pids,
        ))?;
        if let Some(route) = spec.route {
            settled(|| check_data_flows(self.lab, spec, route, &[sink_addr, echo_addr]))?;
            eprintln!("  /flows: carried on route {route:?}");
        }
        let planned = plan.conn_warmup + plan.conn_window + STUCK_SLACK;
        let conn = self
            .block_on_timeout(
                planned,
                connection_rate(
                    plan,
                    &self.client_ns,
                    ping_addr,
                    spec.client_ports,
                    &self.pids,
                ),
            )
            .map_err(|_| anyhow!("connection-rate test did not finish within {planned:?}"))?
            .with_context(|| format!("{}: new connections to {ping_addr}", spec.name))?;
        eprintln!(
            "  new connections: {:.0}/s, p50 {:.1} µs, p99 {:.1} µs (CPU: {})",
            conn.per_second(),
            conn.p50_us,
            conn.p99_us,
            cpu_text(&conn.cpu)
        );
        let conn_flows = match spec.route {
            Some(route) => Some(settled(|| {
                check_conn_flows(self.lab, spec, route, ping_addr)
            })?),
            None => None,
        };
        Ok(ModeResult {
            spec,
            stream,
            rr,
            conn,
            conn_flows,
        })
    }

    /// Fresh HBONE handshakes from the fabric to `n2-p1:15008`, one after another.
    fn handshakes(&self) -> anyhow::Result<RateResult> {
        let plan = self.plan;
        let ca = Ca::load(&self.lab.dir().join(CA_DIR)).context("loading the lab CA")?;
        let me = Identity::new(DEFAULT_TRUST_DOMAIN, self.lab.namespace(), BENCH_SA)?;
        let cert = ca
            .issue(&me, Duration::from_secs(3600), SystemTime::now())
            .context("issuing the bench client certificate")?;
        let server = self.lab.pod(MESH_POD)?;
        let expected = Identity::new(
            DEFAULT_TRUST_DOMAIN,
            &server.namespace,
            &server.service_account,
        )?;
        let config = tls::client_config(&cert, ca.roots(), vec![expected])?;
        let fabric = self.lab.fabric_netns()?;
        let peer = SocketAddr::from((server.ipv4, HBONE_PORT));
        let target = SocketAddr::from((server.ipv4, HANDSHAKE_PING_PORT));
        let namespace = self.lab.namespace().to_string();
        let forced = AtomicU64::new(0);
        let planned = plan.conn_warmup + plan.conn_window + STUCK_SLACK;
        let work = rate_loop(plan, &self.pids, || {
            one_handshake(&fabric, peer, target, config.clone(), &namespace, &forced)
        });
        let mut result = self
            .block_on_timeout(planned, work)
            .map_err(|_| anyhow!("handshake test did not finish within {planned:?}"))?
            .with_context(|| format!("HBONE handshakes to {peer}, CONNECT {target}"))?;
        result.forced_closes = forced.load(Ordering::Relaxed);
        eprintln!(
            "  handshakes: {:.0}/s, p50 {:.0} µs, p99 {:.0} µs (CPU: {}){}",
            result.per_second(),
            result.p50_us,
            result.p99_us,
            cpu_text(&result.cpu),
            if result.forced_closes > 0 {
                format!(
                    ", {} connections aborted after {CLOSE_GRACE:?}",
                    result.forced_closes
                )
            } else {
                String::new()
            }
        );
        let carried = flows(self.lab, "n2")?
            .iter()
            .filter(|f| f["listener"] == "hbone" && flow_dst(f) == Some(target))
            .filter(|f| f["peer_identity"] == me.to_string().as_str())
            .count();
        if carried == 0 {
            bail!("ambit on n2 recorded no hbone flow to {target} from {me}");
        }
        eprintln!("  /flows on n2: {carried} hbone flows to {target} with peer identity {me}");
        Ok(result)
    }

    /// Daemon RSS before and after opening batches of idle connections, each batch on top of
    /// the previous ones (see the module documentation).
    fn memory(&self, idle_pods: &[String]) -> anyhow::Result<Memory> {
        let pid = |node: &str| {
            self.lab
                .daemon_pid(node)
                .ok_or_else(|| anyhow!("no daemon on {node}"))
        };
        let (n1, n2) = (pid("n1")?, pid("n2")?);
        let rss = || -> anyhow::Result<[Rss; 2]> { Ok([read_rss(n1)?, read_rss(n2)?]) };
        let mesh_echo = self.addr(MESH_POD, ECHO_PORT)?;
        let mut batches: Vec<(MemKind, Vec<SocketAddr>)> = Vec::new();
        for round in 0..self.plan.mem_rounds {
            let own = idle_pods
                .iter()
                .skip(round * IDLE_BATCH)
                .take(IDLE_BATCH)
                .map(|p| self.addr(p, ECHO_PORT))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if own.len() < IDLE_BATCH {
                bail!("not enough idle pods for {} batches", self.plan.mem_rounds);
            }
            batches.push((MemKind::OwnTunnel, own));
            batches.push((MemKind::Shared, vec![mesh_echo; SHARED_CONNS]));
        }

        // Warm-up: one tunnelled connection through every code path, closed, pool evicted.
        let warm = self
            .block_on_timeout(STUCK_SLACK, open_idle(&self.client_ns, &[mesh_echo]))
            .map_err(|_| anyhow!("warm-up connection hung"))?
            .context("warm-up connection")?;
        self.runtime.block_on(async move { drop(warm) });
        std::thread::sleep(EVICTION_WAIT);

        let baseline = rss()?;
        let mut before = baseline;
        let mut open: Vec<TcpStream> = Vec::new();
        let mut done = Vec::new();
        for (i, (kind, targets)) in batches.iter().enumerate() {
            let dials_before = hbone_dials(self.lab, "n1");
            let conns = self
                .block_on_timeout(STUCK_SLACK, open_idle(&self.client_ns, targets))
                .map_err(|_| anyhow!("opening {} idle connections hung", targets.len()))?
                .with_context(|| format!("opening idle connections ({})", kind.label()))?;
            open.extend(conns);
            std::thread::sleep(SETTLE);
            let loaded = rss()?;
            let dials = hbone_dials(self.lab, "n1")
                .zip(dials_before)
                .map(|(a, b)| a.saturating_sub(b));
            let b = MemBatch {
                kind: *kind,
                batch: i + 1,
                conns: targets.len(),
                dials,
                n1: [before[0], loaded[0]],
                n2: [before[1], loaded[1]],
            };
            eprintln!(
                "  batch {}: {} idle connections ({}), {} pooled TLS connections dialled: \
                 n1 {:+} KiB ({:.1} KiB/conn), n2 {:+} KiB ({:.1} KiB/conn)",
                b.batch,
                b.conns,
                kind.label(),
                dials.map_or("?".to_string(), |d| d.to_string()),
                b.n1[1].vm_kib as i64 - b.n1[0].vm_kib as i64,
                b.kib_per_conn(&b.n1),
                b.n2[1].vm_kib as i64 - b.n2[0].vm_kib as i64,
                b.kib_per_conn(&b.n2),
            );
            done.push(b);
            before = loaded;
        }
        let peak = before;
        self.runtime.block_on(async move { drop(open) });
        std::thread::sleep(EVICTION_WAIT);
        let after_close = rss()?;
        let memory = Memory {
            batches: done,
            baseline,
            peak,
            after_close,
        };
        eprintln!(
            "  after closing all and pool eviction: n1 handed back {:.0}% of its growth, n2 {:.0}%",
            memory.returned_percent(0),
            memory.returned_percent(1)
        );
        Ok(memory)
    }
}

// ---------------------------------------------------------------------------------------------
// Servers.

/// Every server of the run, in the n2 pods.
struct Servers {
    sinks: Vec<(String, Sink)>,
    _echoes: Vec<Server>,
    _pings: Vec<PingServer>,
}

impl Servers {
    async fn start(lab: &Lab, idle_pods: &[String]) -> anyhow::Result<Servers> {
        let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let mut sinks = Vec::new();
        let mut echoes = Vec::new();
        let mut pings = Vec::new();
        for pod in [MESH_POD, PLAIN_POD] {
            let ns = lab.pod_netns(pod)?;
            let sink =
                Sink::start(&ns, any(SINK_PORT)).with_context(|| format!("sink in {pod}"))?;
            sinks.push((pod.to_string(), sink));
            pings.push(
                PingServer::start(&ns, any(PING_PORT))
                    .with_context(|| format!("ping server in {pod}"))?,
            );
        }
        let mesh_ns = lab.pod_netns(MESH_POD)?;
        for port in [HBONE_PING_PORT, HANDSHAKE_PING_PORT] {
            pings.push(
                PingServer::start(&mesh_ns, any(port))
                    .with_context(|| format!("ping server on {port} in {MESH_POD}"))?,
            );
        }
        for pod in [MESH_POD, PLAIN_POD]
            .into_iter()
            .chain(idle_pods.iter().map(String::as_str))
        {
            let ns = lab.pod_netns(pod)?;
            let echo = Server::start(&ns, any(ECHO_PORT))
                .await
                .with_context(|| format!("echo server in {pod}"))?;
            echoes.push(echo);
        }
        Ok(Servers {
            sinks,
            _echoes: echoes,
            _pings: pings,
        })
    }

    fn sink(&self, pod: &str) -> anyhow::Result<&Sink> {
        self.sinks
            .iter()
            .find(|(p, _)| p == pod)
            .map(|(_, s)| s)
            .ok_or_else(|| anyhow!("no sink in {pod}"))
    }
}

/// A listener created inside `ns` and registered with the current runtime.
fn listen_in(ns: &NetNs, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let std_listener = ns
        .run(|| -> std::io::Result<std::net::TcpListener> {
            let domain = socket2::Domain::for_address(addr);
            let s = socket2::Socket::new(domain, socket2::Type::STREAM.cloexec(), None)?;
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            s.listen(1024)?;
            s.set_nonblocking(true)?;
            Ok(s.into())
        })
        .context("entering the pod's network namespace")?
        .with_context(|| format!("listening on {addr}"))?;
    TcpListener::from_std(std_listener).context("registering the listener")
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
        let listener = listen_in(ns, addr)?;
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

/// Reads one byte, writes it back and closes: the server side closes first.
struct PingServer {
    task: JoinHandle<()>,
}

impl Drop for PingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PingServer {
    fn start(ns: &NetNs, addr: SocketAddr) -> anyhow::Result<PingServer> {
        let listener = listen_in(ns, addr)?;
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    if stream.read_exact(&mut b).await.is_ok() {
                        let _ = stream.write_all(&b).await;
                    }
                });
            }
        });
        Ok(PingServer { task })
    }
}

// ---------------------------------------------------------------------------------------------
// Data path.

/// Throughput rounds and the latency test for one mode.
async fn measure(
    mode: &str,
    plan: Plan,
    client_ns: &NetNs,
    sink: &Sink,
    (sink_addr, echo_addr): (SocketAddr, SocketAddr),
    pids: &[(String, u32)],
) -> anyhow::Result<(Vec<StreamRound>, RrResult)> {
    let mut stream = Vec::new();
    for round in 1..=plan.stream_rounds {
        let planned = plan.stream_warmup + plan.stream_window + STUCK_SLACK;
        let r = tokio::time::timeout(
            planned,
            stream_round(plan, client_ns, sink, sink_addr, pids),
        )
        .await
        .map_err(|_| anyhow!("throughput round did not finish within {planned:?}"))?
        .with_context(|| format!("{mode}: throughput round {round} to {sink_addr}"))?;
        eprintln!(
            "  stream round {round}: {:.2} Gbit/s (CPU: {})",
            r.gbit_per_s(),
            cpu_text(&r.cpu)
        );
        stream.push(r);
    }
    let planned = plan.rr_warmup + plan.rr_window + STUCK_SLACK;
    let rr = tokio::time::timeout(planned, request_response(plan, client_ns, echo_addr))
        .await
        .map_err(|_| anyhow!("latency test did not finish within {planned:?}"))?
        .with_context(|| format!("{mode}: 1 KiB request/response to {echo_addr}"))?;
    eprintln!(
        "  1 KiB request/response: p50 {:.1} µs, p99 {:.1} µs, {:.0} req/s",
        rr.p50_us,
        rr.p99_us,
        rr.per_second()
    );
    Ok((stream, rr))
}

/// One connection, write for warm-up + window, count what the sink received in the window.
async fn stream_round(
    plan: Plan,
    client_ns: &NetNs,
    sink: &Sink,
    dst: SocketAddr,
    pids: &[(String, u32)],
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
    let cpu = CpuMeter::start(pids);
    let (t0, b0) = (Instant::now(), sink.received());
    tokio::time::sleep(plan.stream_window).await;
    let (t1, b1) = (Instant::now(), sink.received());
    let seconds = (t1 - t0).as_secs_f64();
    let cpu = cpu.stop(seconds);
    stop.store(true, Ordering::Relaxed);
    writer
        .await
        .context("writer task")?
        .context("writing to the sink")?;
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
    let s = Summary::of(samples);
    Ok(RrResult {
        count: s.count,
        seconds,
        p50_us: s.p50_us,
        p99_us: s.p99_us,
        mean_us: s.mean_us,
        max_us: s.max_us,
    })
}

// ---------------------------------------------------------------------------------------------
// Connection setup.

/// Outcome of one attempt of a rate test.
enum Attempt {
    /// Completed: counts.
    Done,
    /// The client port was busy; nothing was sent.
    Skipped,
}

/// Runs `once` back to back: warm-up, then a timed window; every completed attempt in the
/// window is a sample.
async fn rate_loop<F, Fut>(
    plan: Plan,
    pids: &[(String, u32)],
    mut once: F,
) -> anyhow::Result<RateResult>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Attempt>>,
{
    let mut samples: Vec<u64> = Vec::with_capacity(100_000);
    let warmup_end = Instant::now() + plan.conn_warmup;
    let mut window: Option<(Instant, Instant, CpuMeter)> = None;
    let mut skipped = 0u64;
    let mut attempts = 0u64;
    let seconds = loop {
        let start = Instant::now();
        attempts += 1;
        let outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, once())
            .await
            .map_err(|_| anyhow!("attempt {attempts} took longer than {ATTEMPT_TIMEOUT:?}"))?
            .with_context(|| format!("attempt {attempts}"))?;
        let end = Instant::now();
        if let Attempt::Skipped = outcome {
            skipped += 1;
            if skipped > 100_000 {
                bail!("{skipped} client ports in a row were busy");
            }
            continue;
        }
        match &window {
            None if end >= warmup_end => {
                window = Some((end, end + plan.conn_window, CpuMeter::start(pids)))
            }
            None => {}
            Some((from, until, _)) => {
                samples.push((end - start).as_nanos() as u64);
                if end >= *until {
                    break (end - *from).as_secs_f64();
                }
            }
        }
    };
    let (_, _, cpu) = window.expect("the loop ends only inside the window");
    let cpu = cpu.stop(seconds);
    let s = Summary::of(samples);
    Ok(RateResult {
        count: s.count,
        seconds,
        p50_us: s.p50_us,
        p99_us: s.p99_us,
        mean_us: s.mean_us,
        max_us: s.max_us,
        cpu,
        skipped_ports: skipped,
        forced_closes: 0,
    })
}

/// New connections from `client_ns` to the ping server at `dst`, source ports cycling through
/// `ports`.
async fn connection_rate(
    plan: Plan,
    client_ns: &NetNs,
    dst: SocketAddr,
    ports: (u16, u16),
    pids: &[(String, u32)],
) -> anyhow::Result<RateResult> {
    let mut next = ports.0;
    rate_loop(plan, pids, || {
        let port = next;
        next = if next + 1 >= ports.1 {
            ports.0
        } else {
            next + 1
        };
        one_connection(client_ns, dst, port)
    })
    .await
}

/// Socket bound to `port` in `ns`, connect to `dst`, 1 byte each way, wait for the server's
/// close, drop.
async fn one_connection(ns: &NetNs, dst: SocketAddr, port: u16) -> anyhow::Result<Attempt> {
    let bound = ns
        .run(|| -> std::io::Result<TcpSocket> {
            let s = TcpSocket::new_v4()?;
            s.set_nodelay(true)?;
            s.bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
            Ok(s)
        })
        .context("entering the client pod's network namespace")?;
    let socket = match bound {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Ok(Attempt::Skipped),
        Err(e) => return Err(e).with_context(|| format!("binding source port {port}")),
    };
    let mut stream = socket
        .connect(dst)
        .await
        .with_context(|| format!("connecting to {dst} from port {port}"))?;
    stream.write_all(&[PING]).await.context("sending")?;
    let mut b = [0u8; 1];
    stream.read_exact(&mut b).await.context("reading")?;
    if b[0] != PING {
        bail!("got {:#x} back instead of {PING:#x}", b[0]);
    }
    let n = stream.read(&mut b).await.context("waiting for the close")?;
    if n != 0 {
        bail!("the server sent more than one byte");
    }
    Ok(Attempt::Done)
}

/// One fresh HBONE connection: TCP, TLS 1.3 (mutual), HTTP/2, CONNECT `target`, 1 byte each
/// way, end of stream, close.
async fn one_handshake(
    fabric: &NetNs,
    peer: SocketAddr,
    target: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    namespace: &str,
    forced_closes: &AtomicU64,
) -> anyhow::Result<Attempt> {
    let tcp = traffic::connect(fabric, peer)
        .await
        .with_context(|| format!("TCP connect to {peer}"))?;
    let local = tcp.local_addr()?;
    let tls_stream = tokio_rustls::TlsConnector::from(config)
        .connect(tls::dummy_server_name(), tcp)
        .await
        .context("TLS handshake")?;
    let (send, connection) = h2::client::handshake(tls_stream)
        .await
        .context("HTTP/2 handshake")?;
    let driver = tokio::spawn(connection);
    let request = build_request(&TunnelRequest {
        target,
        client: local,
        baggage: vec![
            ("k8s.namespace.name".into(), namespace.into()),
            ("k8s.pod.name".into(), BENCH_SA.into()),
        ],
    })
    .context("building CONNECT")?;
    let mut send = send.ready().await.context("HTTP/2 connection")?;
    let (response, mut tx) = send.send_request(request, false).context("CONNECT")?;
    let response = response.await.context("CONNECT response")?;
    if response.status() != http::StatusCode::OK {
        bail!("CONNECT {target}: status {}", response.status());
    }
    tx.send_data(Bytes::from_static(&[PING]), false)
        .context("sending")?;
    let mut rx = response.into_body();
    let mut got = Vec::with_capacity(1);
    while let Some(chunk) = rx.data().await {
        let chunk = chunk.context("reading the tunnel")?;
        let _ = rx.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    if got != [PING] {
        bail!("got {got:?} back through the tunnel instead of [{PING:#x}]");
    }
    tx.send_data(Bytes::new(), true)
        .context("ending the stream")?;
    // With every handle gone, h2 sends GOAWAY and closes the connection (close_notify, FIN).
    drop((tx, rx, send));
    let abort = driver.abort_handle();
    if tokio::time::timeout(CLOSE_GRACE, driver).await.is_err() {
        abort.abort();
        forced_closes.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Attempt::Done)
}

// ---------------------------------------------------------------------------------------------
// Memory.

/// Opens one connection from `ns` to each of `targets` (echo servers), one after another, and
/// exchanges one byte on each so the whole path is known to be up.
async fn open_idle(ns: &NetNs, targets: &[SocketAddr]) -> anyhow::Result<Vec<TcpStream>> {
    let mut conns = Vec::with_capacity(targets.len());
    for (i, dst) in targets.iter().enumerate() {
        let mut s = traffic::connect(ns, *dst)
            .await
            .with_context(|| format!("connection {} to {dst}", i + 1))?;
        s.write_all(&[PING]).await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .await
            .with_context(|| format!("echo on connection {} to {dst}", i + 1))?;
        conns.push(s);
    }
    Ok(conns)
}

/// `VmRSS` and `RssAnon` of `pid`, KiB.
fn read_rss(pid: u32) -> anyhow::Result<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))
    };
    Ok(Rss {
        vm_kib: field("VmRSS:")?,
        anon_kib: field("RssAnon:")?,
    })
}

/// The `hbone_dials` counter on `node`'s admin `/metrics`.
fn hbone_dials(lab: &Lab, node: &str) -> Option<u64> {
    let body = lab.admin_get(node, "/metrics").ok()?;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|name| name.contains("hbone_dials"))
        })
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
}

// ---------------------------------------------------------------------------------------------
// Checks on the daemons.

/// Polls `/pods` on `node` until `pod` is `enrolled` (or, with `enrolled` false, listed in
/// any other state); fails at `deadline` with what it saw.
fn wait_state(
    lab: &Lab,
    node: &str,
    pod: &str,
    enrolled: bool,
    deadline: Instant,
) -> anyhow::Result<()> {
    let uid = lab.pod(pod)?.uid.clone();
    let mut last;
    loop {
        match lab.admin_get(node, "/pods") {
            Ok(body) => {
                let pods: Vec<Value> = serde_json::from_str(&body)
                    .with_context(|| format!("parsing /pods of {node}: {body}"))?;
                match pods.iter().find(|p| p["uid"] == uid.as_str()) {
                    Some(p) if (p["state"] == "enrolled") == enrolled => return Ok(()),
                    Some(p) => last = p.to_string(),
                    None => last = format!("{pod} not listed: {body}"),
                }
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            let want = if enrolled {
                "enrolled"
            } else {
                "listed as not enrolled"
            };
            bail!(
                "pod {pod} not {want} by ambit on {node} in time; last /pods: {last}\n\
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

/// Retries `check` for up to a second: a flow that just ended can be missing from `/flows`
/// for a moment (the daemon moves it from the live to the recent list under two locks).
fn settled<T>(mut check: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// `/flows` of the daemon on `node`.
fn flows(lab: &Lab, node: &str) -> anyhow::Result<Vec<Value>> {
    let body = lab
        .admin_get(node, "/flows")
        .with_context(|| format!("reading /flows of ambit on {node}"))?;
    serde_json::from_str(&body).with_context(|| format!("parsing /flows of {node}"))
}

fn flow_dst(f: &Value) -> Option<SocketAddr> {
    f["dst"]
        .as_str()
        .and_then(|s| s.parse::<SocketAddr>().ok())
        .map(canonical)
}

/// Fails unless n1's outbound flows to every one of `dsts` took `route` (and none another),
/// and n2 agrees: hbone flows to them for `hbone`, nothing at all for the passthrough pod.
fn check_data_flows(
    lab: &Lab,
    spec: ModeSpec,
    route: &str,
    dsts: &[SocketAddr],
) -> anyhow::Result<()> {
    let n1 = flows(lab, "n1")?;
    let n2 = flows(lab, "n2")?;
    for dst in dsts {
        let outbound: Vec<&Value> = n1
            .iter()
            .filter(|f| f["listener"] == "outbound" && flow_dst(f) == Some(*dst))
            .collect();
        if outbound.is_empty() {
            let same_ip: Vec<&Value> = n1
                .iter()
                .filter(|f| flow_dst(f).is_some_and(|a| a.ip() == dst.ip()))
                .collect();
            bail!(
                "{}: ambit on n1 recorded no outbound flow to {dst}: the numbers would not be \
                 through the proxy ({} flows on n1; those to {}: {same_ip:?})",
                spec.name,
                n1.len(),
                dst.ip()
            );
        }
        if let Some(f) = outbound.iter().find(|f| f["route"] != route) {
            bail!(
                "{}: a flow to {dst} took route {} instead of {route:?}: {f}",
                spec.name,
                f["route"]
            );
        }
        let on_n2 = n2.iter().filter(|f| flow_dst(f) == Some(*dst)).count();
        let hbone_on_n2 = n2
            .iter()
            .filter(|f| f["listener"] == "hbone" && flow_dst(f) == Some(*dst))
            .count();
        match route {
            "hbone" if hbone_on_n2 == 0 => {
                bail!("hbone: ambit on n2 recorded no hbone flow to {dst}")
            }
            "passthrough" if on_n2 > 0 => bail!(
                "passthrough: ambit on n2 recorded {on_n2} flows to {dst}, a pod out of the mesh"
            ),
            _ => {}
        }
    }
    Ok(())
}

/// Counts the flows of a connection-rate test and fails if none took `route` or any took
/// another.
fn check_conn_flows(
    lab: &Lab,
    spec: ModeSpec,
    route: &str,
    dst: SocketAddr,
) -> anyhow::Result<FlowCount> {
    let n1 = flows(lab, "n1")?;
    let outbound: Vec<&Value> = n1
        .iter()
        .filter(|f| f["listener"] == "outbound" && flow_dst(f) == Some(dst))
        .collect();
    if outbound.is_empty() {
        bail!(
            "{}: ambit on n1 recorded no outbound flow to {dst}",
            spec.name
        );
    }
    if let Some(f) = outbound.iter().find(|f| f["route"] != route) {
        bail!(
            "{}: a flow to {dst} took route {} instead of {route:?}: {f}",
            spec.name,
            f["route"]
        );
    }
    let n1_errors = outbound.iter().filter(|f| !f["error"].is_null()).count();
    let n2 = flows(lab, "n2")?
        .iter()
        .filter(|f| f["listener"] == "hbone" && flow_dst(f) == Some(dst))
        .count();
    if route == "hbone" && n2 == 0 {
        bail!("hbone: ambit on n2 recorded no hbone flow to {dst}");
    }
    eprintln!(
        "  /flows: {} recent outbound flows on n1 on route {route:?} ({n1_errors} with an \
         error){}",
        outbound.len(),
        if route == "hbone" {
            format!(", {n2} hbone flows on n2")
        } else {
            String::new()
        }
    );
    Ok(FlowCount {
        n1: outbound.len(),
        n1_errors,
        n2,
    })
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

// ---------------------------------------------------------------------------------------------
// Measurement helpers.

/// CPU time of a set of processes over a window.
struct CpuMeter {
    pids: Vec<(String, u32)>,
    before: Vec<Option<u64>>,
}

impl CpuMeter {
    fn start(pids: &[(String, u32)]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            before: pids.iter().map(|(_, pid)| cpu_ticks(*pid)).collect(),
        }
    }

    /// Percent of one CPU used by each process over `seconds`.
    fn stop(self, seconds: f64) -> Vec<(String, f64)> {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        self.pids
            .iter()
            .zip(&self.before)
            .filter_map(|((who, pid), before)| {
                let used = cpu_ticks(*pid)?.checked_sub((*before)?)?;
                Some((who.clone(), used as f64 / hz / seconds * 100.0))
            })
            .collect()
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

fn cpu_text(cpu: &[(String, f64)]) -> String {
    cpu.iter()
        .map(|(who, pct)| format!("{who} {pct:.0}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Percentiles of latency samples (nanoseconds), in microseconds.
struct Summary {
    count: usize,
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
    max_us: f64,
}

impl Summary {
    fn of(mut samples: Vec<u64>) -> Summary {
        samples.sort_unstable();
        let us = |ns: u64| ns as f64 / 1000.0;
        if samples.is_empty() {
            return Summary {
                count: 0,
                p50_us: f64::NAN,
                p99_us: f64::NAN,
                mean_us: f64::NAN,
                max_us: f64::NAN,
            };
        }
        let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64;
        Summary {
            count: samples.len(),
            p50_us: us(percentile(&samples, 50.0)),
            p99_us: us(percentile(&samples, 99.0)),
            mean_us: mean / 1000.0,
            max_us: us(*samples.last().unwrap_or(&0)),
        }
    }
}

/// Nearest-rank percentile of sorted, non-empty `samples`.
fn percentile(samples: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

// ---------------------------------------------------------------------------------------------
// Machine description and output.

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

fn min_max(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn stream_summary(r: &ModeResult) -> (f64, f64, f64) {
    let g: Vec<f64> = r.stream.iter().map(StreamRound::gbit_per_s).collect();
    let (min, max) = min_max(&g);
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

fn mode_path(spec: &ModeSpec) -> String {
    match spec.route {
        None => format!("{CLIENT_POD} → {}, no daemon", spec.server_pod),
        Some(route) => format!("{CLIENT_POD} → {}, route `{route}`", spec.server_pod),
    }
}

/// (median, min, max).
type Spread = (f64, f64, f64);

/// Per-connection VmRSS growth of the rounds of `kind`, for n1 and n2.
fn mem_summary(batches: &[MemBatch], kind: MemKind) -> Option<(Spread, Spread)> {
    let of = |pick: fn(&MemBatch) -> &[Rss; 2]| {
        let v: Vec<f64> = batches
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.kib_per_conn(pick(r)))
            .collect();
        let (min, max) = min_max(&v);
        (!v.is_empty()).then(|| (median(&v), min, max))
    };
    Some((of(|r| &r.n1)?, of(|r| &r.n2)?))
}

fn range_text((med, min, max): Spread, decimals: usize) -> String {
    if (max - min).abs() < f64::EPSILON {
        format!("{med:.decimals$}")
    } else {
        format!("{med:.decimals$} ({min:.decimals$}–{max:.decimals$})")
    }
}

fn render_markdown(plan: &Plan, machine: &Machine, report: &Report) -> String {
    let mut md = String::new();
    md.push_str("## ambit throughput bench: pod n1-p1 → pods on n2 (across nodes, IPv4)\n\n");
    md.push_str(&format!(
        "- machine: {} CPUs, {}, {}\n- ambit: {}\n- command: `{}` (as root)\n",
        machine.cpus,
        machine.cpu_model,
        machine.kernel,
        machine.revision,
        plan.command()
    ));
    md.push_str(&format!(
        "- daemons: `ambit run --rules={RULES} --pool-idle-secs={POOL_IDLE_SECS}` on n1 and n2; \
         routes checked on `/flows` for every mode\n\
         - stream: one connection, {:.1} s warm-up, {:.1} s window, {} round(s); median \
         (min–max) of bytes received by the sink\n\
         - latency: one connection, 1 KiB request + 1 KiB echo, one at a time, {:.1} s warm-up, \
         {:.1} s window\n\n",
        plan.stream_warmup.as_secs_f64(),
        plan.stream_window.as_secs_f64(),
        plan.stream_rounds,
        plan.rr_warmup.as_secs_f64(),
        plan.rr_window.as_secs_f64()
    ));

    md.push_str("### Data path\n\n");
    md.push_str(
        "| mode | path | stream Gbit/s | 1 KiB RTT p50 µs | p99 µs | req/s | CPU during stream (% of one CPU) |\n\
         |---|---|---:|---:|---:|---:|---|\n",
    );
    for r in &report.modes {
        let (med, min, max) = stream_summary(r);
        let range = if r.stream.len() > 1 {
            format!(" ({min:.2}–{max:.2})")
        } else {
            String::new()
        };
        md.push_str(&format!(
            "| {} | {} | {med:.2}{range} | {:.1} | {:.1} | {:.0} | {} |\n",
            r.spec.name,
            mode_path(&r.spec),
            r.rr.p50_us,
            r.rr.p99_us,
            r.rr.per_second(),
            cpu_summary(r)
        ));
    }
    if let Some(direct) = report.modes.iter().find(|r| r.spec.route.is_none()) {
        let (d, _, _) = stream_summary(direct);
        for r in report.modes.iter().filter(|r| r.spec.route.is_some()) {
            let (a, _, _) = stream_summary(r);
            md.push_str(&format!(
                "| {} / direct | | {:.2}× | {:.2}× | {:.2}× | {:.2}× | |\n",
                r.spec.name,
                a / d,
                r.rr.p50_us / direct.rr.p50_us,
                r.rr.p99_us / direct.rr.p99_us,
                r.rr.per_second() / direct.rr.per_second()
            ));
        }
    }

    md.push_str(&format!(
        "\n### Connection setup (sequential, {:.1} s warm-up, {:.1} s window)\n\n",
        plan.conn_warmup.as_secs_f64(),
        plan.conn_window.as_secs_f64()
    ));
    md.push_str(
        "| test | per second | p50 µs | p99 µs | CPU during window (% of one CPU) |\n\
         |---|---:|---:|---:|---|\n",
    );
    for r in &report.modes {
        let what = match r.spec.route {
            None => "new TCP connection, direct",
            Some("hbone") => "new TCP connection, hbone (new CONNECT stream on a pooled tunnel)",
            Some(_) => "new TCP connection, passthrough",
        };
        md.push_str(&format!(
            "| {what} | {:.0} | {:.1} | {:.1} | {} |\n",
            r.conn.per_second(),
            r.conn.p50_us,
            r.conn.p99_us,
            cpu_text(&r.conn.cpu)
        ));
    }
    let h = &report.handshakes;
    md.push_str(&format!(
        "| new HBONE handshake from the fabric (TCP + mutual TLS 1.3 + HTTP/2 + CONNECT) | {:.0} | \
         {:.1} | {:.1} | {} |\n",
        h.per_second(),
        h.p50_us,
        h.p99_us,
        cpu_text(&h.cpu)
    ));
    md.push_str(
        "\nEach connection: socket, connect, 1 byte each way, the server closes, the client \
         sees end-of-stream and closes. Each handshake: the same through a fresh HBONE \
         connection to n2-p1:15008 with a lab-CA client certificate, closed after the exchange.\n",
    );
    if h.forced_closes > 0 {
        md.push_str(&format!(
            "{} handshake connections did not close within {CLOSE_GRACE:?} and were aborted.\n",
            h.forced_closes
        ));
    }

    let m = &report.memory;
    md.push_str("\n### Daemon memory per idle connection (RSS growth, KiB)\n\n");
    for (who, rss) in &report.daemon_rss_at_start {
        md.push_str(&format!(
            "- {who} RSS once enrolled, before mesh traffic: {:.1} MiB ({:.1} MiB anonymous)\n",
            rss.vm_kib as f64 / 1024.0,
            rss.anon_kib as f64 / 1024.0
        ));
    }
    md.push_str(&format!(
        "- measured right after enrollment, before the passthrough and hbone tests; batches are \
         opened one after another and kept open; n1 VmRSS {} → {} KiB with all {} connections \
         open, {} KiB after closing them and pool eviction ({} of the growth handed back; n2: {})\n\n",
        m.baseline[0].vm_kib,
        m.peak[0].vm_kib,
        m.batches.iter().map(|b| b.conns).sum::<usize>(),
        m.after_close[0].vm_kib,
        percent_text(m.returned_percent(0)),
        percent_text(m.returned_percent(1)),
    ));
    md.push_str(
        "| batch | idle connections from n1-p1 | app conns | TLS conns dialled by n1 | n1 ΔVmRSS KiB | n1 KiB/conn | n1 RssAnon KiB/conn | n2 ΔVmRSS KiB | n2 KiB/conn |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for b in &m.batches {
        let target = match b.kind {
            MemKind::OwnTunnel => format!("to {} pods, {}", b.conns, b.kind.label()),
            MemKind::Shared => format!("to {MESH_POD}, {}", b.kind.label()),
        };
        md.push_str(&format!(
            "| {} | {target} | {} | {} | {:+} | {:.1} | {:.1} | {:+} | {:.1} |\n",
            b.batch,
            b.conns,
            b.dials.map_or("?".to_string(), |d| d.to_string()),
            b.n1[1].vm_kib as i64 - b.n1[0].vm_kib as i64,
            b.kib_per_conn(&b.n1),
            b.anon_kib_per_conn(&b.n1),
            b.n2[1].vm_kib as i64 - b.n2[0].vm_kib as i64,
            b.kib_per_conn(&b.n2),
        ));
    }
    if let (Some((own1, own2)), Some((sh1, sh2))) = (
        mem_summary(&m.batches, MemKind::OwnTunnel),
        mem_summary(&m.batches, MemKind::Shared),
    ) {
        md.push_str(&format!(
            "\nSummary (VmRSS, median (min–max) over batches): an idle app connection with its \
             own pooled TLS connection costs n1 {} KiB (n2 {} KiB); one sharing pooled \
             connections costs n1 {} KiB (n2 {} KiB); so one pooled TLS + HTTP/2 connection ≈ \
             n1 {:.1} KiB (n2 {:.1} KiB) beyond a tunnelled stream.\n",
            range_text(own1, 1),
            range_text(own2, 1),
            range_text(sh1, 1),
            range_text(sh2, 1),
            own1.0 - sh1.0,
            own2.0 - sh2.0,
        ));
    }
    md.push_str(&format!(
        "\nMethod and noise: VmRSS (and RssAnon) from /proc/<pid>/status before and {:.1} s after \
         opening each batch; every connection first exchanges 1 byte, so its tunnel is up; one \
         warm-up connection was opened and closed before the baseline. RSS counts touched \
         4 KiB pages, not allocated bytes: glibc malloc serves new allocations from memory freed \
         earlier (under-counts) and grows heaps or creates per-thread arenas in steps \
         (over-counts the batch that triggers it), so batches of the same kind can differ by \
         several KiB per connection, and little is handed back on close. Kernel socket buffers \
         are not in RSS. Read these as an order of magnitude.\n",
        SETTLE.as_secs_f64()
    ));
    md
}

fn percent_text(p: f64) -> String {
    if p.is_nan() {
        "-".to_string()
    } else {
        format!("{p:.0}%")
    }
}

fn rate_json(r: &RateResult) -> Value {
    json!({
        "completed": r.count,
        "seconds": r.seconds,
        "per_second": r.per_second(),
        "p50_us": r.p50_us,
        "p99_us": r.p99_us,
        "mean_us": r.mean_us,
        "max_us": r.max_us,
        "cpu_percent": cpu_json(&r.cpu),
        "skipped_busy_ports": r.skipped_ports,
        "forced_closes": r.forced_closes,
    })
}

fn cpu_json(cpu: &[(String, f64)]) -> Value {
    Value::Object(cpu.iter().map(|(who, p)| (who.clone(), json!(p))).collect())
}

fn rss_json(rss: &Rss) -> Value {
    json!({ "vm_rss_kib": rss.vm_kib, "rss_anon_kib": rss.anon_kib })
}

fn render_json(plan: &Plan, args: &[String], machine: &Machine, report: &Report) -> Value {
    let modes: Vec<Value> = report
        .modes
        .iter()
        .map(|r| {
            let (med, min, max) = stream_summary(r);
            json!({
                "mode": r.spec.name,
                "route": r.spec.route,
                "client_pod": CLIENT_POD,
                "server_pod": r.spec.server_pod,
                "stream": {
                    "gbit_per_s_median": med,
                    "gbit_per_s_min": min,
                    "gbit_per_s_max": max,
                    "rounds": r.stream.iter().map(|s| json!({
                        "bytes_received": s.bytes,
                        "seconds": s.seconds,
                        "gbit_per_s": s.gbit_per_s(),
                        "cpu_percent": cpu_json(&s.cpu),
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
                "new_connections": {
                    "server_port": r.spec.ping_port,
                    "client_ports": [r.spec.client_ports.0, r.spec.client_ports.1 - 1],
                    "result": rate_json(&r.conn),
                    "flows": r.conn_flows.map(|f| json!({
                        "n1_outbound_recent": f.n1,
                        "n1_outbound_with_error": f.n1_errors,
                        "n2_hbone_recent": f.n2,
                    })),
                },
            })
        })
        .collect();
    let m = &report.memory;
    let batches: Vec<Value> = m
        .batches
        .iter()
        .map(|b| {
            json!({
                "batch": b.batch,
                "scenario": b.kind.key(),
                "app_connections": b.conns,
                "pooled_tls_connections_dialled_n1": b.dials,
                "n1": {
                    "before": rss_json(&b.n1[0]),
                    "open": rss_json(&b.n1[1]),
                    "vm_rss_kib_per_connection": b.kib_per_conn(&b.n1),
                    "rss_anon_kib_per_connection": b.anon_kib_per_conn(&b.n1),
                },
                "n2": {
                    "before": rss_json(&b.n2[0]),
                    "open": rss_json(&b.n2[1]),
                    "vm_rss_kib_per_connection": b.kib_per_conn(&b.n2),
                    "rss_anon_kib_per_connection": b.anon_kib_per_conn(&b.n2),
                },
            })
        })
        .collect();
    let summary = |kind| {
        mem_summary(&m.batches, kind).map(|(n1, n2)| {
            json!({
                "n1_vm_rss_kib_per_connection": {"median": n1.0, "min": n1.1, "max": n1.2},
                "n2_vm_rss_kib_per_connection": {"median": n2.0, "min": n2.1, "max": n2.2},
            })
        })
    };
    json!({
        "bench": "throughput",
        "path": format!("pod {CLIENT_POD} -> pods on n2, across nodes, IPv4"),
        "command": plan.command(),
        "argv": args,
        "quick": plan.quick,
        "rules": RULES,
        "pool_idle_secs": POOL_IDLE_SECS,
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
            "conn_warmup_s": plan.conn_warmup.as_secs_f64(),
            "conn_window_s": plan.conn_window.as_secs_f64(),
            "memory_batches_per_kind": plan.mem_rounds,
            "memory_settle_s": SETTLE.as_secs_f64(),
            "memory_eviction_wait_s": EVICTION_WAIT.as_secs_f64(),
        },
        "modes": modes,
        "hbone_handshakes": {
            "from": "fabric namespace (not captured)",
            "to": format!("{MESH_POD}:{HBONE_PORT}, CONNECT {MESH_POD}:{HANDSHAKE_PING_PORT}"),
            "client_identity": format!("spiffe://{DEFAULT_TRUST_DOMAIN}/ns/<lab namespace>/sa/{BENCH_SA}"),
            "result": rate_json(&report.handshakes),
        },
        "memory": {
            "daemon_rss_at_start": report.daemon_rss_at_start.iter()
                .map(|(who, rss)| (who.clone(), rss_json(rss)))
                .collect::<serde_json::Map<_, _>>(),
            "when": "after enrollment, before the passthrough and hbone tests; batches kept open",
            "own_batch_connections": IDLE_BATCH,
            "shared_batch_connections": SHARED_CONNS,
            "baseline": {"n1": rss_json(&m.baseline[0]), "n2": rss_json(&m.baseline[1])},
            "all_open": {"n1": rss_json(&m.peak[0]), "n2": rss_json(&m.peak[1])},
            "after_close_and_eviction": {
                "n1": rss_json(&m.after_close[0]),
                "n2": rss_json(&m.after_close[1]),
            },
            "returned_percent": {"n1": m.returned_percent(0), "n2": m.returned_percent(1)},
            "batches": batches,
            "summary": {
                "own_pooled_connection_each": summary(MemKind::OwnTunnel),
                "shared_pooled_connections": summary(MemKind::Shared),
            },
            "noise": "RSS counts touched pages; glibc malloc reuses freed memory and grows \
                      heaps/arenas in steps, so batches differ; kernel socket buffers are not in RSS",
        },
    })
}

// =============================================================================================
// Modes: direct vs ambient (ambit per node) vs sidecar (ambit per pod), side by side.

/// Pods per node of the resource-scaling points; the first is also where the data path of
/// every mode is measured.
const SIZES: [usize; 3] = [2, 8, 32];
/// Same-node destination (the cross-node one is [`MESH_POD`]).
const SAME_NODE_POD: &str = "n1-p2";
/// Request rate of the paced latency test.
const PACED_RATE: u32 = 1000;
/// Connections of the parallel throughput test.
const PARALLEL_STREAMS: usize = 8;
/// Annotation that makes a pod a sidecar pod (`ambit sidecar` runs in it).
const SIDECAR_STATUS: &str = "sidecar.istio.io/status";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mesh {
    Direct,
    Ambient,
    Sidecar,
}

const MESHES: [Mesh; 3] = [Mesh::Direct, Mesh::Ambient, Mesh::Sidecar];

impl Mesh {
    fn name(self) -> &'static str {
        match self {
            Mesh::Direct => "direct",
            Mesh::Ambient => "ambient",
            Mesh::Sidecar => "sidecar",
        }
    }

    fn color(self) -> &'static str {
        match self {
            Mesh::Direct => "#8c8c8c",
            Mesh::Ambient => "#1f77b4",
            Mesh::Sidecar => "#ff7f0e",
        }
    }

    /// Source ports of the connection-rate client for `pair`: the direct and ambient runs share
    /// a lab, so each (mode, pair) gets its own range (see the connection-setup docs above).
    fn client_ports(self, pair: usize) -> (u16, u16) {
        let slot = match self {
            Mesh::Direct | Mesh::Sidecar => pair,
            Mesh::Ambient => 2 + pair,
        } as u16;
        let start = 16000 + slot * 4192;
        (start, start + 4192)
    }
}

#[derive(Clone, Copy, Debug)]
struct Pair {
    name: &'static str,
    server: &'static str,
}

const PAIRS: [Pair; 2] = [
    Pair {
        name: "cross-node",
        server: MESH_POD,
    },
    Pair {
        name: "same-node",
        server: SAME_NODE_POD,
    },
];

/// One throughput window.
#[derive(Clone, Debug)]
struct Tput {
    streams: usize,
    bytes: u64,
    seconds: f64,
    /// CPU seconds (user + system, + reaped children) of every ambit process in the window.
    ambit_cpu_s: f64,
    /// The same for this process (clients, servers and the kernel work charged to them).
    bench_cpu_s: f64,
}

impl Tput {
    fn gbit(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }
}

/// Over several windows: median Gbit/s; CPU s per GiB over all windows together.
fn tput_summary(rounds: &[Tput]) -> (f64, f64, f64) {
    let g: Vec<f64> = rounds.iter().map(Tput::gbit).collect();
    let gib = rounds.iter().map(|r| r.bytes as f64).sum::<f64>() / (1u64 << 30) as f64;
    let ambit = rounds.iter().map(|r| r.ambit_cpu_s).sum::<f64>() / gib;
    let bench = rounds.iter().map(|r| r.bench_cpu_s).sum::<f64>() / gib;
    (median(&g), ambit, bench)
}

#[derive(Clone, Debug)]
struct Latency {
    count: usize,
    seconds: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
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

    fn per_second(&self) -> f64 {
        self.count as f64 / self.seconds
    }

    fn text(&self) -> String {
        format!(
            "{:.0} / {:.0} / {:.0}",
            self.p50_us, self.p90_us, self.p99_us
        )
    }

    fn json(&self) -> Value {
        json!({
            "requests": self.count, "seconds": self.seconds, "per_second": self.per_second(),
            "p50_us": self.p50_us, "p90_us": self.p90_us, "p99_us": self.p99_us,
            "max_us": self.max_us,
        })
    }
}

#[derive(Clone, Debug)]
struct PairResult {
    mesh: Mesh,
    pair: Pair,
    stream1: Vec<Tput>,
    stream8: Vec<Tput>,
    paced: Latency,
    closed: Latency,
    conn: RateResult,
}

/// Resources at one size.
#[derive(Clone, Debug)]
struct ScalePoint {
    mesh: Mesh,
    pods_per_node: usize,
    /// Pods captured by ambit on both nodes.
    enrolled: usize,
    /// VmRSS and RssAnon of every ambit process (2 daemons, or one sidecar per pod), after
    /// `tput`.
    rss: Vec<Rss>,
    /// One single-stream cross-node window at this size.
    tput: Tput,
}

impl ScalePoint {
    fn total_kib(&self) -> u64 {
        self.rss.iter().map(|r| r.vm_kib).sum()
    }

    fn anon_total_kib(&self) -> u64 {
        self.rss.iter().map(|r| r.anon_kib).sum()
    }

    fn per_pod_kib(&self) -> f64 {
        self.total_kib() as f64 / self.enrolled as f64
    }

    fn anon_per_pod_kib(&self) -> f64 {
        self.anon_total_kib() as f64 / self.enrolled as f64
    }
}

/// Servers of a mode lab: sink, echo and ping in the two destination pods.
struct ModeServers {
    sinks: Vec<(String, Sink)>,
    _echoes: Vec<Server>,
    _pings: Vec<PingServer>,
}

impl ModeServers {
    async fn start(lab: &Lab) -> anyhow::Result<ModeServers> {
        let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let (mut sinks, mut echoes, mut pings) = (Vec::new(), Vec::new(), Vec::new());
        for pair in PAIRS {
            let ns = lab.pod_netns(pair.server)?;
            sinks.push((pair.server.to_string(), Sink::start(&ns, any(SINK_PORT))?));
            pings.push(PingServer::start(&ns, any(PING_PORT))?);
            echoes.push(Server::start(&ns, any(ECHO_PORT)).await?);
        }
        Ok(ModeServers {
            sinks,
            _echoes: echoes,
            _pings: pings,
        })
    }

    fn sink(&self, pod: &str) -> anyhow::Result<&Sink> {
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
async fn stream_many(
    plan: Plan,
    ns: &NetNs,
    sink: &Sink,
    dst: SocketAddr,
    n: usize,
    ambit: &[u32],
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
    let (a0, m0, t0, b0) = (
        cpu_seconds(ambit),
        cpu_seconds(&me),
        Instant::now(),
        sink.received(),
    );
    tokio::time::sleep(plan.stream_window).await;
    let (a1, m1, t1, b1) = (
        cpu_seconds(ambit),
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
        ambit_cpu_s: a1 - a0,
        bench_cpu_s: m1 - m0,
    })
}

/// 1 KiB request/response on one connection, one request outstanding. With `rate`, request
/// `i` is scheduled at `start + i / rate`; its latency is counted from that scheduled time
/// as `c_i - s_i` with `c_i = max(s_i, c_(i-1)) + rtt_i`: a request that had to wait for a
/// slow predecessor carries that wait (no coordinated omission), while this client's own
/// timer lateness (tokio timers fire up to ~1 ms late) is not charged to the path. Without
/// `rate`: closed loop, back to back, latency = round trip.
async fn paced_rr(
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
fn within<T>(
    rt: &Runtime,
    limit: Duration,
    what: &str,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    rt.block_on(async { tokio::time::timeout(limit, work).await })
        .map_err(|_| anyhow!("{what} did not finish within {limit:?}"))?
        .with_context(|| what.to_string())
}

/// Fails unless ambit carried the connections to `dsts` of `pair` over HBONE: an outbound
/// flow with route `hbone` on the client side and an `hbone` flow on the server side
/// (ambient: the nodes' daemons; sidecar: the pods' sidecars).
fn check_route(lab: &Lab, mesh: Mesh, pair: Pair, dsts: &[SocketAddr]) -> anyhow::Result<()> {
    let server_node = lab.pod(pair.server)?.node.clone();
    let (client, server) = match mesh {
        Mesh::Direct => return Ok(()),
        Mesh::Ambient => ("n1".to_string(), server_node),
        Mesh::Sidecar => (CLIENT_POD.to_string(), pair.server.to_string()),
    };
    let out = flows(lab, &client)?;
    let inbound = flows(lab, &server)?;
    for dst in dsts {
        let mine: Vec<&Value> = out
            .iter()
            .filter(|f| f["listener"] == "outbound" && flow_dst(f) == Some(*dst))
            .collect();
        if mine.is_empty() {
            bail!("{}: no outbound flow to {dst} on {client}", mesh.name());
        }
        if let Some(f) = mine.iter().find(|f| f["route"] != "hbone") {
            bail!(
                "{}: a flow to {dst} on {client} is not hbone: {f}",
                mesh.name()
            );
        }
        if !inbound
            .iter()
            .any(|f| f["listener"] == "hbone" && flow_dst(f) == Some(*dst))
        {
            bail!("{}: no hbone flow to {dst} on {server}", mesh.name());
        }
    }
    Ok(())
}

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

fn run_modes(plan: Plan, args: &[String], machine: &Machine) -> anyhow::Result<()> {
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

fn render_modes_markdown(
    plan: Plan,
    machine: &Machine,
    pairs: &[PairResult],
    scale: &[ScalePoint],
) -> String {
    let mut md = String::new();
    md.push_str("### direct vs ambient vs sidecar\n\n");
    md.push_str(&format!(
        "`{}` as root; {} CPUs ({}), {}, ambit {}. Pods `n1-p1` → `n2-p1` (cross-node) and \
         → `n1-p2` (same-node), IPv4. ambient: `ambit run --rules={RULES}` per node; sidecar: \
         `ambit sidecar` per pod (2 threads, UID 1337); both carry pod-to-pod traffic over \
         HBONE (route checked on `/flows`). Gbit/s: median of {} window(s) of {:.0} s; CPU \
         s/GiB: user+system CPU of all ambit processes (resp. of the bench process: clients, \
         servers and the kernel work charged to them) over the windows ÷ GiB received. RR: \
         1 KiB request + 1 KiB echo on one connection; @{PACED_RATE}/s is paced from a \
         schedule and timed from the scheduled send time (no coordinated omission); \
         max is closed loop.\n\n",
        plan.command(),
        machine.cpus,
        machine.cpu_model,
        machine.kernel,
        machine.revision,
        if plan.quick { 1 } else { 2 },
        plan.stream_window.as_secs_f64(),
    ));
    md.push_str(
        "| pair | mode | 1 stream Gbit/s | 8 streams Gbit/s | RR @1000/s p50 / p90 / p99 µs \
         | RR max req/s | RR max p50 / p90 / p99 µs | new conn/s | ambit CPU s/GiB (1 / 8 \
         streams) | bench CPU s/GiB (1 stream) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for pair in PAIRS {
        for r in pairs.iter().filter(|r| r.pair.name == pair.name) {
            let (g1, a1, b1) = tput_summary(&r.stream1);
            let (g8, a8, _) = tput_summary(&r.stream8);
            let ambit = if r.mesh == Mesh::Direct {
                "–".to_string()
            } else {
                format!("{a1:.2} / {a8:.2}")
            };
            md.push_str(&format!(
                "| {} | {} | {g1:.2} | {g8:.2} | {} | {:.0} | {} | {:.0} | {ambit} | {b1:.2} |\n",
                pair.name,
                r.mesh.name(),
                r.paced.text(),
                r.closed.per_second(),
                r.closed.text(),
                r.conn.per_second(),
            ));
        }
    }
    md.push_str(
        "\n| mode | pods per node | ambit processes | ambit VmRSS total MiB | VmRSS per enrolled \
         pod KiB | RssAnon per enrolled pod KiB | Δ RssAnon per added pod KiB | 1 stream \
         cross-node Gbit/s | ambit CPU s/GiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for mesh in [Mesh::Ambient, Mesh::Sidecar] {
        let mut prev: Option<&ScalePoint> = None;
        for p in scale.iter().filter(|p| p.mesh == mesh) {
            let delta = prev.map_or("–".to_string(), |q| {
                format!(
                    "{:.0}",
                    (p.anon_total_kib() as f64 - q.anon_total_kib() as f64)
                        / (p.enrolled - q.enrolled) as f64
                )
            });
            md.push_str(&format!(
                "| {} | {} | {} | {:.1} | {:.0} | {:.0} | {delta} | {:.2} | {:.2} |\n",
                mesh.name(),
                p.pods_per_node,
                p.rss.len(),
                p.total_kib() as f64 / 1024.0,
                p.per_pod_kib(),
                p.anon_per_pod_kib(),
                p.tput.gbit(),
                tput_summary(std::slice::from_ref(&p.tput)).1,
            ));
            prev = Some(p);
        }
    }
    md.push_str(
        "\nRSS from /proc/<pid>/status of every ambit process (ambient: the 2 node daemons; \
         sidecar: one per pod) after a single-stream window at that size; per enrolled pod = \
         the sum over processes ÷ pods captured on both nodes (so for ambient it is total \
         daemon RSS ÷ pods, not growth). VmRSS counts the shared binary and libraries once per \
         process; RssAnon (private heap and stacks) does not, so it is the fairer per-pod \
         cost. Δ per added pod = growth of the summed RssAnon from the previous size ÷ pods \
         added. Chart: `target/bench/modes.svg`.\n",
    );
    md
}

fn render_modes_json(
    plan: Plan,
    args: &[String],
    machine: &Machine,
    pairs: &[PairResult],
    scale: &[ScalePoint],
    seconds: f64,
) -> Value {
    let tput = |t: &[Tput]| {
        let (g, a, b) = tput_summary(t);
        json!({
            "gbit_per_s_median": g,
            "ambit_cpu_s_per_gib": a,
            "bench_cpu_s_per_gib": b,
            "windows": t.iter().map(|w| json!({
                "streams": w.streams, "bytes": w.bytes, "seconds": w.seconds,
                "gbit_per_s": w.gbit(), "ambit_cpu_s": w.ambit_cpu_s, "bench_cpu_s": w.bench_cpu_s,
            })).collect::<Vec<_>>(),
        })
    };
    json!({
        "bench": "throughput/modes",
        "command": plan.command(),
        "argv": args,
        "quick": plan.quick,
        "seconds": seconds,
        "machine": {"cpus": machine.cpus, "cpu_model": machine.cpu_model, "kernel": machine.kernel},
        "ambit_revision": machine.revision,
        "ambient": format!("ambit run --rules={RULES} per node"),
        "sidecar": "ambit sidecar per pod (defaults: 2 threads, UID 1337, iptables)",
        "paced_rate_per_s": PACED_RATE,
        "paced_latency": "from the scheduled send time: c_i = max(s_i, c_(i-1)) + rtt_i; latency c_i - s_i",
        "pairs": pairs.iter().map(|r| json!({
            "mode": r.mesh.name(),
            "pair": r.pair.name,
            "client": CLIENT_POD,
            "server": r.pair.server,
            "stream_1": tput(&r.stream1),
            "streams_8": tput(&r.stream8),
            "rr_1k_paced": r.paced.json(),
            "rr_1k_closed_loop": r.closed.json(),
            "new_connections": rate_json(&r.conn),
        })).collect::<Vec<_>>(),
        "scaling": scale.iter().map(|p| json!({
            "mode": p.mesh.name(),
            "pods_per_node": p.pods_per_node,
            "enrolled_pods": p.enrolled,
            "ambit_processes": p.rss.len(),
            "vm_rss_kib": p.rss.iter().map(|r| r.vm_kib).collect::<Vec<_>>(),
            "rss_anon_kib": p.rss.iter().map(|r| r.anon_kib).collect::<Vec<_>>(),
            "rss_anon_total_kib": p.anon_total_kib(),
            "rss_anon_per_enrolled_pod_kib": p.anon_per_pod_kib(),
            "vm_rss_total_kib": p.total_kib(),
            "vm_rss_per_enrolled_pod_kib": p.per_pod_kib(),
            "stream_1_cross_node": tput(std::slice::from_ref(&p.tput)),
        })).collect::<Vec<_>>(),
    })
}

/// A "nice" axis step for values up to `max`.
fn nice_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One grouped-bar panel at (`x`, `y`), `w` × `h`: `values[group][series]` (NaN: no bar).
#[allow(clippy::too_many_arguments)]
fn bar_panel(
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    title: &str,
    groups: &[String],
    series: &[Mesh],
    values: &[Vec<f64>],
) -> String {
    let mut s = String::new();
    let (left, top, bottom) = (x + 50.0, y + 56.0, y + h - 44.0);
    let right = x + w - 10.0;
    let max = values
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-9);
    let step = nice_step(max * 1.1);
    let top_value = (max * 1.1 / step).ceil() * step;
    let yv = |v: f64| bottom - v / top_value * (bottom - top);
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
        x + 10.0,
        y + 18.0,
        xml_escape(title)
    ));
    let mut tick = 0.0;
    while tick <= top_value + step / 2.0 {
        let ty = yv(tick);
        s.push_str(&format!(
            "<line x1=\"{left:.1}\" y1=\"{ty:.1}\" x2=\"{right:.1}\" y2=\"{ty:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>\n",
            left - 4.0,
            ty + 3.0,
            if step < 1.0 { format!("{tick:.1}") } else { format!("{tick:.0}") }
        ));
        tick += step;
    }
    s.push_str(&format!(
        "<line x1=\"{left:.1}\" y1=\"{bottom:.1}\" x2=\"{right:.1}\" y2=\"{bottom:.1}\" stroke=\"#333\"/>\n"
    ));
    let gw = (right - left) / groups.len().max(1) as f64;
    let bw = gw * 0.8 / series.len().max(1) as f64;
    for (gi, group) in groups.iter().enumerate() {
        let gx = left + gi as f64 * gw + gw * 0.1;
        for (si, mesh) in series.iter().enumerate() {
            let v = values
                .get(gi)
                .and_then(|g| g.get(si))
                .copied()
                .unwrap_or(f64::NAN);
            if !v.is_finite() {
                continue;
            }
            let bx = gx + si as f64 * bw;
            let by = yv(v);
            s.push_str(&format!(
                "<rect x=\"{bx:.1}\" y=\"{by:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\">{}</text>\n",
                bw - 2.0,
                (bottom - by).max(0.0),
                mesh.color(),
                bx + bw / 2.0 - 1.0,
                by - 3.0,
                if v >= 100.0 { format!("{v:.0}") } else if v >= 10.0 { format!("{v:.1}") } else { format!("{v:.2}") }
            ));
        }
        // `|` separates the lines of a group label.
        for (li, line) in group.split('|').enumerate() {
            s.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\n",
                gx + gw * 0.4,
                bottom + 15.0 + 13.0 * li as f64,
                xml_escape(line)
            ));
        }
    }
    for (si, mesh) in series.iter().enumerate() {
        let lx = right - 80.0 * (series.len() - si) as f64;
        s.push_str(&format!(
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text>\n",
            y + 28.0,
            mesh.color(),
            lx + 14.0,
            y + 37.0,
            mesh.name()
        ));
    }
    s
}

fn render_modes_svg(machine: &Machine, pairs: &[PairResult], scale: &[ScalePoint]) -> String {
    let (w, h) = (1000.0, 720.0);
    let (pw, ph) = (w / 2.0, (h - 40.0) / 2.0);
    let find =
        |mesh: Mesh, pair: &str| pairs.iter().find(|r| r.mesh == mesh && r.pair.name == pair);
    let mut groups = Vec::new();
    let mut tput = Vec::new();
    let mut lat = Vec::new();
    let mut lat_groups = Vec::new();
    for pair in PAIRS {
        for (label, eight) in [("1 stream", false), ("8 streams", true)] {
            groups.push(format!("{}|{label}", pair.name));
            tput.push(
                MESHES
                    .iter()
                    .map(|m| {
                        find(*m, pair.name).map_or(f64::NAN, |r| {
                            tput_summary(if eight { &r.stream8 } else { &r.stream1 }).0
                        })
                    })
                    .collect::<Vec<_>>(),
            );
        }
        for (label, p99) in [("p50", false), ("p99", true)] {
            lat_groups.push(format!("{}|{label}", pair.name));
            lat.push(
                MESHES
                    .iter()
                    .map(|m| {
                        find(*m, pair.name).map_or(f64::NAN, |r| {
                            if p99 {
                                r.paced.p99_us
                            } else {
                                r.paced.p50_us
                            }
                        })
                    })
                    .collect::<Vec<_>>(),
            );
        }
    }
    let meshed = [Mesh::Ambient, Mesh::Sidecar];
    let size_groups: Vec<String> = SIZES.iter().map(|s| format!("{s} pods/node")).collect();
    let per_size = |f: &dyn Fn(&ScalePoint) -> f64| -> Vec<Vec<f64>> {
        SIZES
            .iter()
            .map(|size| {
                meshed
                    .iter()
                    .map(|m| {
                        scale
                            .iter()
                            .find(|p| p.mesh == *m && p.pods_per_node == *size)
                            .map_or(f64::NAN, f)
                    })
                    .collect()
            })
            .collect()
    };
    let rss = per_size(&|p| p.anon_per_pod_kib() / 1024.0);
    let cpu = per_size(&|p| tput_summary(std::slice::from_ref(&p.tput)).1);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"24\" font-size=\"16\" font-weight=\"bold\">ambit: direct vs ambient \
         (per node) vs sidecar (per pod) — {} CPUs, {}</text>\n",
        machine.cpus,
        xml_escape(&machine.revision)
    );
    let y0 = 40.0;
    svg.push_str(&bar_panel(
        0.0,
        y0,
        pw,
        ph,
        "Throughput, Gbit/s",
        &groups,
        &MESHES,
        &tput,
    ));
    svg.push_str(&bar_panel(
        pw,
        y0,
        pw,
        ph,
        &format!("1 KiB RR latency at {PACED_RATE} req/s, µs"),
        &lat_groups,
        &MESHES,
        &lat,
    ));
    svg.push_str(&bar_panel(
        0.0,
        y0 + ph,
        pw,
        ph,
        "ambit RssAnon per enrolled pod, MiB",
        &size_groups,
        &meshed,
        &rss,
    ));
    svg.push_str(&bar_panel(
        pw,
        y0 + ph,
        pw,
        ph,
        "ambit CPU s per GiB (1 stream, cross-node)",
        &size_groups,
        &meshed,
        &cpu,
    ));
    svg.push_str("</svg>\n");
    svg
}
