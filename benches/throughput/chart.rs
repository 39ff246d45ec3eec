use crate::modes::{tput_summary, Mesh, PairResult, ScalePoint, MESHES, PACED_RATE, PAIRS, SIZES};
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

pub(crate) fn render_modes_svg(
    machine: &Machine,
    pairs: &[PairResult],
    scale: &[ScalePoint],
) -> String {
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
