// ---------------------------------------------------------------------------------------------
// The side-by-side table: direct, ztunnel, ambit ambient, ambit sidecar, and ambient/ztunnel.

use crate::modes::{tput_summary, Mesh, Pair, PairResult, Tput, ALL_PAIRS, PACED_RATE};
use crate::modes_labs::ModesOut;

/// Columns of the table, in order; the ratio column compares the second-last with the first
/// meshed one.
const COLUMNS: [Mesh; 4] = [Mesh::Direct, Mesh::Ztunnel, Mesh::Ambient, Mesh::Sidecar];

/// CPU s per GiB of one side over all windows (`None` without bytes or without that side).
fn side_cpu(rounds: &[Tput], side: fn(&Tput) -> f64) -> Option<f64> {
    let gib = rounds.iter().map(|r| r.bytes as f64).sum::<f64>() / (1u64 << 30) as f64;
    let cpu: f64 = rounds.iter().map(side).sum();
    (gib > 0.0 && cpu > 0.0).then_some(cpu / gib)
}

/// CPU of the proxies (every process but the bench's) per completed new connection, µs.
pub(crate) fn conn_cpu_us(r: &PairResult) -> Option<f64> {
    let c = &r.conn;
    let percent: f64 = c
        .cpu
        .iter()
        .filter(|(who, _)| who != "bench")
        .map(|(_, p)| p)
        .sum();
    (c.count > 0).then(|| percent / 100.0 * c.seconds / c.count as f64 * 1e6)
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "–".into(),
    }
}

/// One row: `values` per column of [`COLUMNS`]; `up`: higher is better.
fn row(md: &mut String, label: &str, up: bool, values: [Option<f64>; 4], decimals: usize) {
    let ratio = match (values[2], values[1]) {
        // A ratio of negative figures (noise below direct) would mean nothing.
        (Some(a), Some(z)) if z > 0.0 && a >= 0.0 && a.is_finite() && z.is_finite() => {
            format!("{:.2}×", a / z)
        }
        _ => "–".into(),
    };
    let cells: Vec<String> = values.iter().map(|v| fmt(*v, decimals)).collect();
    md.push_str(&format!(
        "| {label} {} | {} | {ratio} |\n",
        if up { "↑" } else { "↓" },
        cells.join(" | ")
    ));
}

fn per_mesh(
    out: &ModesOut,
    pair: Pair,
    f: impl Fn(&PairResult) -> Option<f64>,
) -> [Option<f64>; 4] {
    COLUMNS.map(|m| {
        out.pairs
            .iter()
            .find(|r| r.mesh == m && r.pair.name == pair.name)
            .and_then(&f)
    })
}

/// The table, with a line on what the arrows and the ratio mean.
pub(crate) fn render_compare(out: &ModesOut) -> String {
    let mut md = String::from(
        "| metric | direct | ztunnel | ambit ambient | ambit sidecar | ambient / ztunnel |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for pair in ALL_PAIRS {
        if !out.pairs.iter().any(|r| r.pair.name == pair.name) {
            continue;
        }
        let label = |what: &str| format!("{} {what}", pair.name);
        let v = |f: &dyn Fn(&PairResult) -> Option<f64>| per_mesh(out, pair, f);
        let direct = out
            .pairs
            .iter()
            .find(|r| r.mesh == Mesh::Direct && r.pair.name == pair.name);
        let added = |p99: bool| {
            move |r: &PairResult| {
                let d = direct?;
                (r.mesh != Mesh::Direct).then_some(if p99 {
                    r.paced.p99_us - d.paced.p99_us
                } else {
                    r.paced.p50_us - d.paced.p50_us
                })
            }
        };
        let meshed = |r: &PairResult, x: Option<f64>| if r.mesh == Mesh::Direct { None } else { x };
        row(
            &mut md,
            &label("1 stream Gbit/s"),
            true,
            v(&|r| Some(tput_summary(&r.stream1).0)),
            2,
        );
        if pair.in_mesh {
            row(
                &mut md,
                &label("8 streams Gbit/s"),
                true,
                v(&|r| Some(tput_summary(&r.stream8).0)),
                2,
            );
        }
        row(
            &mut md,
            &label("new connections/s"),
            true,
            v(&|r| Some(r.conn.per_second())),
            0,
        );
        row(
            &mut md,
            &label("new connection p99 µs"),
            false,
            v(&|r| Some(r.conn.p99_us)),
            0,
        );
        row(
            &mut md,
            &label("proxy CPU µs per new connection (both sides)"),
            false,
            v(&|r| meshed(r, conn_cpu_us(r))),
            0,
        );
        row(
            &mut md,
            &label(&format!("RR @{PACED_RATE}/s p50 µs")),
            false,
            v(&|r| Some(r.paced.p50_us)),
            0,
        );
        row(
            &mut md,
            &label("RR p50 added over direct µs"),
            false,
            v(&added(false)),
            0,
        );
        row(
            &mut md,
            &label("RR p99 added over direct µs"),
            false,
            v(&added(true)),
            0,
        );
        row(
            &mut md,
            &label("RR closed loop req/s"),
            true,
            v(&|r| Some(r.closed.per_second())),
            0,
        );
        row(
            &mut md,
            &label("proxy CPU s/GiB, client side (1 stream)"),
            false,
            v(&|r| meshed(r, side_cpu(&r.stream1, |t| t.client_cpu_s))),
            3,
        );
        if pair.in_mesh {
            row(
                &mut md,
                &label("proxy CPU s/GiB, server side (1 stream)"),
                false,
                v(&|r| meshed(r, side_cpu(&r.stream1, |t| t.server_cpu_s))),
                3,
            );
        }
    }
    let idle = COLUMNS.map(|m| {
        out.idle
            .iter()
            .find(|i| i.mesh == m)
            .map(|i| i.per_conn_kib())
    });
    row(
        &mut md,
        "idle connection KiB (client + server proxy RssAnon)",
        false,
        idle,
        1,
    );
    md.push_str(
        "\n↑ higher is better, ↓ lower is better; ambient / ztunnel is the plain ratio of the two \
         columns. \"added over direct\" subtracts direct's figure for the same pair. Same-node \
         ambient: one daemon is both client and server side.\n",
    );
    md
}
