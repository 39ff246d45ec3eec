// ---------------------------------------------------------------------------------------------
// Checks on the daemons.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit::lab::Lab;
use anyhow::{bail, Context};
use serde_json::Value;

use crate::results::FlowCount;
use crate::ModeSpec;

/// Polls `/pods` on `node` until `pod` is `enrolled` (or, with `enrolled` false, listed in
/// any other state); fails at `deadline` with what it saw.
pub(crate) fn wait_state(
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
pub(crate) fn settled<T>(mut check: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
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
pub(crate) fn flows(lab: &Lab, node: &str) -> anyhow::Result<Vec<Value>> {
    let body = lab
        .admin_get(node, "/flows")
        .with_context(|| format!("reading /flows of ambit on {node}"))?;
    serde_json::from_str(&body).with_context(|| format!("parsing /flows of {node}"))
}

pub(crate) fn flow_dst(f: &Value) -> Option<SocketAddr> {
    f["dst"]
        .as_str()
        .and_then(|s| s.parse::<SocketAddr>().ok())
        .map(canonical)
}

/// Fails unless n1's outbound flows to every one of `dsts` took `route` (and none another),
/// and n2 agrees: hbone flows to them for `hbone`, nothing at all for the passthrough pod.
pub(crate) fn check_data_flows(
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
pub(crate) fn check_conn_flows(
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
