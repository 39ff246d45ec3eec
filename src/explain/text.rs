//! The human form of an [`Explanation`], step by step, as `ambit explain` prints it.

use std::fmt::Write;

use super::Explanation;

/// Renders `e` as numbered steps.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let from = e
        .source_ip
        .map(|ip| format!("{} ({ip})", e.source))
        .unwrap_or_else(|| e.source.clone());
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{from} → {}   (node {})\n", e.destination, e.node);

    let c = &e.capture;
    let _ = writeln!(
        out,
        "1. capture, in {}'s network namespace{}",
        e.source,
        c.chain
            .as_ref()
            .map(|ch| format!(" ({ch})"))
            .unwrap_or_default()
    );
    if let Some(rule) = &c.rule {
        let _ = writeln!(out, "   rule {}: {}", rule.number, rule.text);
        match (rule.packets, rule.bytes, &rule.counters_error) {
            (Some(p), Some(b), _) => {
                let _ = writeln!(out, "   counters: {p} packets, {b} bytes so far");
            }
            (_, _, Some(err)) => {
                let _ = writeln!(out, "   counters: unavailable ({err})");
            }
            _ => {}
        }
    }
    let verdict = if c.captured {
        "captured"
    } else {
        "not captured"
    };
    let _ = writeln!(out, "   → {verdict}: {}", c.why);

    let r = &e.route;
    let _ = writeln!(out, "2. route: {}", r.kind);
    let _ = writeln!(out, "   {}", r.why);

    match &e.at_destination {
        Some(d) => {
            let mesh = if d.in_mesh {
                "in the mesh"
            } else {
                "not in the mesh"
            };
            let _ = writeln!(
                out,
                "3. at the destination {} (node {}, {mesh})",
                d.pod, d.node
            );
            let _ = writeln!(out, "   listener: {}", d.listener);
            if let Some(p) = &d.policy {
                let _ = writeln!(out, "   policy: {p}");
            }
            let _ = writeln!(
                out,
                "   → {}",
                if d.allowed {
                    "reaches the app"
                } else {
                    "does not reach the app"
                }
            );
        }
        None => {
            let _ = writeln!(
                out,
                "3. at the destination: {} is not a pod this mesh knows",
                r.target.unwrap_or(e.destination)
            );
        }
    }

    let _ = writeln!(out, "4. flows on node {} ({}):", e.node, e.flows.len());
    for f in &e.flows {
        let state = match (&f.error, f.finished) {
            (Some(err), _) => format!("failed: {err}"),
            (None, true) => "finished".into(),
            (None, false) => "live".into(),
        };
        let _ = writeln!(
            out,
            "   #{} {} {} {} → {} via {}: {} B sent, {} B received, {state}{}",
            f.id,
            f.pod,
            f.listener,
            f.src,
            f.dst,
            f.route,
            f.bytes_sent,
            f.bytes_received,
            f.policy
                .as_ref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        );
    }
    out
}
