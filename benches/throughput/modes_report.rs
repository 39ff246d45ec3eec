use serde_json::{json, Value};

use crate::modes::{tput_summary, Mesh, ScalePoint, Tput, ALL_PAIRS, MESHES, PACED_RATE};
use crate::modes_compare::render_compare;
use crate::modes_labs::ModesOut;
use crate::report::{rate_json, Machine};
use crate::{Plan, CLIENT_POD, RULES, SHARED_CONNS};

/// The command line that produced a report (cargo's own `--bench` left out).
pub(crate) fn command_line(args: &[String]) -> String {
    let rest: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--bench")
        .collect();
    if rest.is_empty() {
        "cargo bench --bench throughput".into()
    } else {
        format!("cargo bench --bench throughput -- {}", rest.join(" "))
    }
}

pub(crate) fn render_modes_markdown(
    plan: Plan,
    args: &[String],
    machine: &Machine,
    out: &ModesOut,
) -> String {
    let (pairs, scale) = (&out.pairs, &out.scale);
    let mut md = String::new();
    md.push_str("### direct vs ztunnel vs ambit ambient vs ambit sidecar\n\n");
    md.push_str(&format!(
        "`{}` as root; {} CPUs ({}), {}, ambit {}. Pods `n1-p1` → `n2-p1` (cross-node), → \
         `n1-p2` (same-node) and → `n2-p3` (passthrough: out of the mesh), IPv4. ztunnel: \
         Istio's ztunnel, one per pod (`PROXY_MODE=dedicated`, fake CA, \
         `ENABLE_ORIG_SRC=true`, Istio's in-pod rules; route checked on its `istio_tcp_*` \
         metrics); ambient: `ambit run --rules={RULES}` per node; sidecar: `ambit sidecar` \
         per pod (2 threads, UID 1337); all carry pod-to-pod traffic over HBONE (ambit's \
         route checked on `/flows`). Gbit/s: median of {} window(s) of {:.0} s; CPU s/GiB: \
         user+system CPU of the proxy processes (resp. of the bench process: clients, \
         servers and the kernel work charged to them) over the windows ÷ GiB received. RR: \
         1 KiB request + 1 KiB echo on one connection; @{PACED_RATE}/s is paced from a \
         schedule and timed from the scheduled send time (no coordinated omission); \
         max is closed loop. Idle: {SHARED_CONNS} idle connections cross-node, Δ RssAnon \
         of the client- and server-side proxy ÷ connections, measured before any other \
         traffic.{}\n\n",
        command_line(args),
        machine.cpus,
        machine.cpu_model,
        machine.kernel,
        machine.revision,
        if plan.quick { 1 } else { 2 },
        plan.stream_window.as_secs_f64(),
        match &out.ztunnel_skipped {
            Some(note) => format!(" **ztunnel skipped**: {note}."),
            None => String::new(),
        }
    ));
    md.push_str(&render_compare(out));
    md.push_str(
        "\n| pair | mode | 1 stream Gbit/s | 8 streams Gbit/s | RR @1000/s p50 / p90 / p99 µs \
         | RR max req/s | RR max p50 / p90 / p99 µs | new conn/s | proxy CPU s/GiB (1 / 8 \
         streams) | bench CPU s/GiB (1 stream) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for pair in ALL_PAIRS {
        let ordered = MESHES
            .iter()
            .flat_map(|m| pairs.iter().filter(move |r| r.mesh == *m));
        for r in ordered.filter(|r| r.pair.name == pair.name) {
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
    if scale.is_empty() {
        md.push_str("\nChart: `target/bench/modes.svg`.\n");
        return md;
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

pub(crate) fn render_modes_json(
    plan: Plan,
    args: &[String],
    machine: &Machine,
    out: &ModesOut,
    seconds: f64,
) -> Value {
    let (pairs, scale) = (&out.pairs, &out.scale);
    let tput = |t: &[Tput]| {
        let (g, a, b) = tput_summary(t);
        json!({
            "gbit_per_s_median": g,
            "proxy_cpu_s_per_gib": a,
            "bench_cpu_s_per_gib": b,
            "windows": t.iter().map(|w| json!({
                "streams": w.streams, "bytes": w.bytes, "seconds": w.seconds,
                "gbit_per_s": w.gbit(), "proxy_cpu_s": w.proxy_cpu_s,
                "client_proxy_cpu_s": w.client_cpu_s, "server_proxy_cpu_s": w.server_cpu_s,
                "bench_cpu_s": w.bench_cpu_s,
            })).collect::<Vec<_>>(),
        })
    };
    json!({
        "bench": "throughput/modes",
        "command": command_line(args),
        "argv": args,
        "quick": plan.quick,
        "seconds": seconds,
        "machine": {"cpus": machine.cpus, "cpu_model": machine.cpu_model, "kernel": machine.kernel},
        "ambit_revision": machine.revision,
        "ambient": format!("ambit run --rules={RULES} per node"),
        "ztunnel": "ztunnel per pod: PROXY_MODE=dedicated FAKE_CA=true ENABLE_ORIG_SRC=true PACKET_MARK=1337, Istio's in-pod rules",
        "ztunnel_skipped": out.ztunnel_skipped,
        "idle_connections": out.idle.iter().map(|i| i.json()).collect::<Vec<_>>(),
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
