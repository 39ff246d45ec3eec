// ---------------------------------------------------------------------------------------------
// Machine description and output.

use std::path::PathBuf;

use ambit::config::HBONE_PORT;
use ambit::identity::DEFAULT_TRUST_DOMAIN;
use serde_json::{json, Value};

use crate::results::{MemBatch, MemKind, ModeResult, RateResult, Report, Rss, StreamRound};
use crate::sampling::cpu_text;
use crate::{
    ModeSpec, Plan, BENCH_SA, CLIENT_POD, CLOSE_GRACE, EVICTION_WAIT, HANDSHAKE_PING_PORT,
    IDLE_BATCH, MESH_POD, POOL_IDLE_SECS, REQUEST_SIZE, RULES, SETTLE, SHARED_CONNS, STREAM_BUFFER,
};

/// What the numbers were measured on.
#[derive(Clone, Debug)]
pub(crate) struct Machine {
    pub(crate) cpus: usize,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
    pub(crate) revision: String,
}

impl Machine {
    pub(crate) fn describe() -> Machine {
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

pub(crate) fn target_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => manifest.join(dir),
        None => manifest.join("target"),
    }
}

pub(crate) fn median(values: &[f64]) -> f64 {
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

pub(crate) fn render_markdown(plan: &Plan, machine: &Machine, report: &Report) -> String {
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

pub(crate) fn rate_json(r: &RateResult) -> Value {
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

pub(crate) fn render_json(
    plan: &Plan,
    args: &[String],
    machine: &Machine,
    report: &Report,
) -> Value {
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
