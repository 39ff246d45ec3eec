use crate::modes::{
    tput_summary, Mesh, PairResult, ScalePoint, Tput, ALL_PAIRS, MESHES, PACED_RATE,
    PASSTHROUGH_PAIR, SIZES,
};
use crate::modes_compare::conn_cpu_us;
use crate::modes_labs::ModesOut;
use crate::report::Machine;

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

pub(crate) fn render_modes_svg(machine: &Machine, out: &ModesOut) -> String {
    let (pairs, scale) = (&out.pairs, &out.scale);
    let find =
        |mesh: Mesh, pair: &str| pairs.iter().find(|r| r.mesh == mesh && r.pair.name == pair);
    let per_mesh = |meshes: &[Mesh], pair: &str, f: &dyn Fn(&PairResult) -> f64| -> Vec<f64> {
        meshes
            .iter()
            .map(|m| find(*m, pair).map_or(f64::NAN, f))
            .collect()
    };
    let measured: Vec<&'static str> = ALL_PAIRS
        .iter()
        .map(|p| p.name)
        .filter(|name| pairs.iter().any(|r| r.pair.name == *name))
        .collect();
    let (mut groups, mut tput) = (Vec::new(), Vec::new());
    let (mut lat_groups, mut lat) = (Vec::new(), Vec::new());
    let mut conn = Vec::new();
    for pair in &measured {
        for (label, eight) in [("1 stream", false), ("8 streams", true)] {
            if eight && *pair == PASSTHROUGH_PAIR.name {
                continue;
            }
            groups.push(format!("{pair}|{label}"));
            tput.push(per_mesh(&MESHES, pair, &|r| {
                tput_summary(if eight { &r.stream8 } else { &r.stream1 }).0
            }));
        }
        for (label, p99) in [("p50", false), ("p99", true)] {
            lat_groups.push(format!("{pair}|{label}"));
            lat.push(per_mesh(&MESHES, pair, &|r| {
                if p99 {
                    r.paced.p99_us
                } else {
                    r.paced.p50_us
                }
            }));
        }
        conn.push(per_mesh(&MESHES, pair, &|r| r.conn.per_second()));
    }
    let conn_groups: Vec<String> = measured.iter().map(|p| p.to_string()).collect();
    let proxies = [Mesh::Ztunnel, Mesh::Ambient, Mesh::Sidecar];
    let side = |rounds: &[Tput], server: bool| {
        let gib = rounds.iter().map(|r| r.bytes as f64).sum::<f64>() / (1u64 << 30) as f64;
        let cpu: f64 = rounds
            .iter()
            .map(|r| {
                if server {
                    r.server_cpu_s
                } else {
                    r.client_cpu_s
                }
            })
            .sum();
        if gib > 0.0 && cpu > 0.0 {
            cpu / gib
        } else {
            f64::NAN
        }
    };
    let mut cpu_groups = Vec::new();
    let mut cpu_sides = Vec::new();
    for pair in &measured {
        for (label, server) in [("client", false), ("server", true)] {
            if server && *pair == PASSTHROUGH_PAIR.name {
                continue;
            }
            cpu_groups.push(format!("{pair}|{label}"));
            cpu_sides.push(per_mesh(&proxies, pair, &|r| side(&r.stream1, server)));
        }
    }
    let idle = vec![proxies
        .iter()
        .map(|m| {
            out.idle
                .iter()
                .find(|i| i.mesh == *m)
                .map_or(f64::NAN, |i| i.per_conn_kib())
        })
        .collect::<Vec<f64>>()];
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
    let rows = if scale.is_empty() { 3.0 } else { 4.0 };
    let (w, ph) = (1100.0, 340.0);
    let h = 40.0 + rows * ph;
    let pw = w / 2.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"24\" font-size=\"16\" font-weight=\"bold\">direct vs ztunnel vs \
         ambit ambient (per node) vs ambit sidecar (per pod) — {} CPUs, {}</text>\n",
        machine.cpus,
        xml_escape(&machine.revision)
    );
    let y = |row: f64| 40.0 + row * ph;
    type Panel<'a> = (f64, f64, String, &'a [String], &'a [Mesh], &'a [Vec<f64>]);
    let panels: Vec<Panel> = vec![
        (
            0.0,
            y(0.0),
            "Throughput, Gbit/s".into(),
            &groups,
            &MESHES,
            &tput,
        ),
        (
            pw,
            y(0.0),
            format!("1 KiB RR latency at {PACED_RATE} req/s, µs"),
            &lat_groups,
            &MESHES,
            &lat,
        ),
        (
            0.0,
            y(1.0),
            "New connections per second".into(),
            &conn_groups,
            &MESHES,
            &conn,
        ),
        (
            pw,
            y(1.0),
            "Proxy CPU s per GiB (1 stream), by side".into(),
            &cpu_groups,
            &proxies,
            &cpu_sides,
        ),
    ];
    for (x, py, title, g, series, values) in panels {
        svg.push_str(&bar_panel(x, py, pw, ph, &title, g, series, values));
    }
    let idle_groups = vec![format!("{} idle connections", crate::SHARED_CONNS)];
    svg.push_str(&bar_panel(
        0.0,
        y(2.0),
        pw,
        ph,
        "KiB per idle connection (client + server proxy)",
        &idle_groups,
        &proxies,
        &idle,
    ));
    let conn_cpu: Vec<Vec<f64>> = measured
        .iter()
        .map(|pair| per_mesh(&proxies, pair, &|r| conn_cpu_us(r).unwrap_or(f64::NAN)))
        .collect();
    svg.push_str(&bar_panel(
        pw,
        y(2.0),
        pw,
        ph,
        "Proxy CPU µs per new connection (both sides)",
        &conn_groups,
        &proxies,
        &conn_cpu,
    ));
    if !scale.is_empty() {
        let rss = per_size(&|p| p.anon_per_pod_kib() / 1024.0);
        let cpu = per_size(&|p| tput_summary(std::slice::from_ref(&p.tput)).1);
        svg.push_str(&bar_panel(
            0.0,
            y(3.0),
            pw,
            ph,
            "ambit RssAnon per enrolled pod, MiB",
            &size_groups,
            &meshed,
            &rss,
        ));
        svg.push_str(&bar_panel(
            pw,
            y(3.0),
            pw,
            ph,
            "ambit CPU s per GiB (1 stream, cross-node)",
            &size_groups,
            &meshed,
            &cpu,
        ));
    }
    svg.push_str("</svg>\n");
    svg
}
