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
//! # Modes: direct vs ztunnel vs ambient vs sidecar
//!
//! After the part above (skipped with `--modes-only`), more labs of 2 nodes compare, for
//! `n1-p1` → `n2-p1` (cross-node), `n1-p1` → `n1-p2` (same-node) and `n1-p1` → `n2-p3`
//! (passthrough: a pod out of the mesh): **direct** (no proxy; measured first on the ambient
//! lab), **ztunnel** (Istio's ztunnel, the reference peer: one per mesh pod on a lab of its
//! own, `PROXY_MODE=dedicated`, fake CA, `ENABLE_ORIG_SRC=true`, `PACKET_MARK=1337`, its local
//! config listing the mesh pods as HBONE workloads, and Istio's in-pod rules installed with
//! ambit's `rules::apply`; see `ztunnel.rs`), **ambient** (`ambit run --rules=iptables` on
//! each node, pods beyond the current size labelled `istio.io/dataplane-mode=none`) and
//! **sidecar** (a lab whose namespace is not ambient, every pod annotated
//! `sidecar.istio.io/status`, one `ambit sidecar` per pod; no passthrough pair). Per pair: 1
//! and 8 parallel streams (2 windows each; `--quick` 1), 1 KiB request/response paced at 1000
//! req/s (latency from the scheduled send time, see `paced_rr`) and closed loop, new
//! connections/s. The route is checked before the numbers count: for ambit on `/flows` of the
//! daemons or sidecars (`hbone` outbound on the client side and an `hbone` flow on the server
//! side; `passthrough` and nothing on the server side), for ztunnel on its `/metrics`
//! (`istio_tcp_connections_opened_total` and `istio_tcp_received_bytes_total` with
//! `connection_security_policy="mutual_tls"` and the peer's principal, on both ends, grew by
//! at least the connections the bench opened and the bytes the sink received). CPU s/GiB =
//! utime+stime(+children) of the proxy processes over the window ÷ GiB the sink received, in
//! total and per side (the client pod's proxy, the server pod's). Memory per idle connection:
//! right after the proxies are ready, 200 idle connections cross-node, Δ RssAnon of the
//! client- and server-side proxy (`modes_idle.rs`). Then, for ambit, at 2, 8 and 32 pods per
//! node (enrolled or started size by size): one cross-node single-stream window and the VmRSS
//! and RssAnon of every ambit process. Output: `<target>/bench/modes.{md,json,svg}`; the
//! side-by-side table (direct, ztunnel, ambient, sidecar, ambient/ztunnel) comes first.
//!
//! The ztunnel binary is `$AMBIT_ZTUNNEL`, else `../shared/peers/ztunnel/ztunnel` beside the
//! repository; without it the ztunnel mode is skipped with a note (in the output too).
//! `--meshes=direct,ztunnel,ambient,sidecar`, `--pairs=cross-node,same-node,passthrough` and
//! `--no-scaling` (small labs, no 2/8/32 points) select parts; `$AMBIT_BIN` runs another ambit
//! binary in the ambient and sidecar modes and in the first part's daemons (A/B of two builds,
//! see `benches/ab.sh` and `benches/kx.sh`).
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

mod chart;
mod checks;
mod datapath;
mod modes;
mod modes_check;
mod modes_compare;
mod modes_idle;
mod modes_labs;
mod modes_report;
mod modes_run;
mod orchestrate;
mod report;
mod results;
mod sampling;
mod servers;
mod ztunnel;

use std::time::{Duration, Instant};

use modes::{ALL_PAIRS, MESHES};
use modes_labs::Select;
use modes_run::run_modes;
use orchestrate::run;
use report::Machine;

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
/// Idle connections sharing pooled tunnels to one pod in the memory test. Enough that the
/// allocator's fixed costs (partly used pages, a few hundred KiB that move with timing) do not
/// read as per-connection cost: at 200 they moved the figure by up to 1.7 KiB per connection
/// (benches/README.md, run W).
const SHARED_CONNS: usize = 800;
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

/// The tests of the modes comparison; `--tests=stream1,stream8,rr,conn` picks some (for
/// profiling one kind of load at a time).
#[derive(Clone, Copy, Debug)]
struct Tests {
    stream1: bool,
    stream8: bool,
    rr: bool,
    conn: bool,
}

impl Tests {
    const ALL: Tests = Tests {
        stream1: true,
        stream8: true,
        rr: true,
        conn: true,
    };

    fn parse(list: &str) -> Option<Tests> {
        let mut t = Tests {
            stream1: false,
            stream8: false,
            rr: false,
            conn: false,
        };
        for name in list.split(',') {
            match name {
                "stream1" => t.stream1 = true,
                "stream8" => t.stream8 = true,
                "rr" => t.rr = true,
                "conn" => t.conn = true,
                _ => return None,
            }
        }
        Some(t)
    }
}

/// Durations and repetitions of one run.
#[derive(Clone, Copy, Debug)]
struct Plan {
    quick: bool,
    /// Which tests of the modes comparison run (`--tests`).
    tests: Tests,
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
                tests: Tests::ALL,
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
                tests: Tests::ALL,
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
    let mut tests = Tests::ALL;
    let mut sel = Select {
        meshes: MESHES.to_vec(),
        pairs: ALL_PAIRS.to_vec(),
        scaling: true,
    };
    for arg in &args {
        if let Some(list) = arg.strip_prefix("--meshes=") {
            let names: Vec<&str> = list.split(',').collect();
            sel.meshes = MESHES
                .into_iter()
                .filter(|m| names.contains(&m.name()))
                .collect();
            if sel.meshes.len() != names.len() {
                let known: Vec<&str> = MESHES.iter().map(|m| m.name()).collect();
                eprintln!("throughput bench: --meshes takes a list of {known:?}, got {list:?}");
                std::process::exit(2);
            }
            continue;
        }
        if let Some(list) = arg.strip_prefix("--tests=") {
            tests = Tests::parse(list).unwrap_or_else(|| {
                eprintln!(
                    "throughput bench: --tests takes a list of stream1, stream8, rr, conn; \
                     got {list:?}"
                );
                std::process::exit(2)
            });
            continue;
        }
        if let Some(list) = arg.strip_prefix("--pairs=") {
            let names: Vec<&str> = list.split(',').collect();
            sel.pairs = ALL_PAIRS
                .into_iter()
                .filter(|p| names.contains(&p.name))
                .collect();
            if sel.pairs.len() != names.len() {
                let known: Vec<&str> = ALL_PAIRS.iter().map(|p| p.name).collect();
                eprintln!("throughput bench: --pairs takes a list of {known:?}, got {list:?}");
                std::process::exit(2);
            }
            continue;
        }
        match arg.as_str() {
            "--quick" => quick = true,
            "--modes-only" => modes_only = true,
            "--no-scaling" => sel.scaling = false,
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
                     --modes-only   only the direct/ztunnel/ambient/sidecar comparison\n\
                     --meshes=LIST  modes to compare (direct,ztunnel,ambient,sidecar)\n\
                     --pairs=LIST   pairs (cross-node,same-node,passthrough)\n\
                     --no-scaling   skip the 2/8/32 pods per node points (small labs)\n\
                     --tests=LIST   modes tests to run (stream1,stream8,rr,conn)\n\
                     env AMBIT_ZTUNNEL: ztunnel binary (default ../shared/peers/ztunnel/ztunnel\n\
                     beside the repository; the mode is skipped without it); AMBIT_BIN: the\n\
                     ambit binary the modes run (default: the one cargo built)"
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
    let plan = Plan {
        tests,
        ..Plan::new(quick)
    };
    let started = Instant::now();
    if !modes_only {
        if let Err(e) = run(plan, &args) {
            eprintln!("throughput bench failed: {e:#}");
            std::process::exit(1);
        }
    }
    if let Err(e) = run_modes(plan, &args, &Machine::describe(), &sel) {
        eprintln!("throughput bench (modes) failed: {e:#}");
        std::process::exit(1);
    }
    eprintln!(
        "throughput bench done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
