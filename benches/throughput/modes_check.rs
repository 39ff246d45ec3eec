// ---------------------------------------------------------------------------------------------
// Route checks of the modes comparison: a mode's numbers count only if its traffic went the
// way the mode says. ambit: its `/flows`; ztunnel: its `istio_tcp_*` counters.

use std::net::SocketAddr;

use ambit::lab::Lab;
use anyhow::bail;
use serde_json::Value;

use crate::checks::{flow_dst, flows};
use crate::modes::{Mesh, Pair};
use crate::ztunnel::{counters, principal, SeriesFilter, TcpCounters};
use crate::CLIENT_POD;

/// The counters of the ztunnels at both ends of a pair before its tests (ztunnel counts
/// cumulatively, so a check compares against this).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Baseline {
    client: TcpCounters,
    server: TcpCounters,
}

/// What a check expects at least, since the baseline: connections opened through the proxy,
/// and bytes carried towards the server (what the sink received in the windows).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Expect {
    pub(crate) conns: usize,
    pub(crate) bytes: u64,
}

/// The series of the ztunnels at the ends of `pair` that its traffic must show up in:
/// HBONE with the peer's identity, or plain TCP for passthrough (no ztunnel at the server).
fn filters(lab: &Lab, pair: Pair) -> anyhow::Result<(String, String)> {
    Ok((principal(lab, CLIENT_POD)?, principal(lab, pair.server)?))
}

fn ztunnel_counters(lab: &Lab, pair: Pair) -> anyhow::Result<Baseline> {
    let (client_id, server_id) = filters(lab, pair)?;
    if !pair.in_mesh {
        let plain = SeriesFilter {
            reporter: "source",
            security: "unknown",
            peer: None,
        };
        return Ok(Baseline {
            client: counters(lab, CLIENT_POD, &plain)?,
            server: TcpCounters::default(),
        });
    }
    let out = SeriesFilter {
        reporter: "source",
        security: "mutual_tls",
        peer: Some(("destination_principal", &server_id)),
    };
    let inbound = SeriesFilter {
        reporter: "destination",
        security: "mutual_tls",
        peer: Some(("source_principal", &client_id)),
    };
    Ok(Baseline {
        client: counters(lab, CLIENT_POD, &out)?,
        server: counters(lab, pair.server, &inbound)?,
    })
}

/// The baseline of `mesh` for `pair` (only ztunnel has one).
pub(crate) fn baseline(lab: &Lab, mesh: Mesh, pair: Pair) -> anyhow::Result<Baseline> {
    match mesh {
        Mesh::Ztunnel => ztunnel_counters(lab, pair),
        _ => Ok(Baseline::default()),
    }
}

/// Fails unless the proxies of `mesh` carried the connections to `dsts` of `pair` as its
/// route says: HBONE (an outbound `hbone` flow on the client side and an `hbone` flow on the
/// server side), or passthrough (an outbound `passthrough` flow and nothing on the server
/// side). ztunnel: its counters grew by at least `expect` since `base`, on both ends for HBONE.
pub(crate) fn check_route(
    lab: &Lab,
    mesh: Mesh,
    pair: Pair,
    dsts: &[SocketAddr],
    base: &Baseline,
    expect: Expect,
) -> anyhow::Result<()> {
    let server_node = lab.pod(pair.server)?.node.clone();
    let (client, server) = match mesh {
        Mesh::Direct => return Ok(()),
        Mesh::Ztunnel => return check_ztunnel(lab, pair, base, expect),
        Mesh::Ambient => ("n1".to_string(), server_node),
        Mesh::Sidecar => (CLIENT_POD.to_string(), pair.server.to_string()),
    };
    let route = if pair.in_mesh { "hbone" } else { "passthrough" };
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
        if let Some(f) = mine.iter().find(|f| f["route"] != route) {
            bail!(
                "{}: a flow to {dst} on {client} is not {route}: {f}",
                mesh.name()
            );
        }
        let hbone_in = inbound
            .iter()
            .any(|f| f["listener"] == "hbone" && flow_dst(f) == Some(*dst));
        if pair.in_mesh && !hbone_in {
            bail!("{}: no hbone flow to {dst} on {server}", mesh.name());
        }
        if !pair.in_mesh && inbound.iter().any(|f| flow_dst(f) == Some(*dst)) {
            bail!(
                "{}: {server} recorded a flow to {dst}, a pod out of the mesh",
                mesh.name()
            );
        }
    }
    Ok(())
}

fn check_ztunnel(lab: &Lab, pair: Pair, base: &Baseline, expect: Expect) -> anyhow::Result<()> {
    let now = ztunnel_counters(lab, pair)?;
    let what = if pair.in_mesh {
        "HBONE (mutual_tls, peer identity)"
    } else {
        "plain TCP"
    };
    let mut ends = vec![("client", CLIENT_POD, base.client, now.client)];
    if pair.in_mesh {
        ends.push(("server", pair.server, base.server, now.server));
    }
    for (end, pod, before, after) in ends {
        let opened = after.opened - before.opened;
        let bytes = after.received_bytes - before.received_bytes;
        if opened < expect.conns as f64 || bytes < expect.bytes as f64 {
            bail!(
                "ztunnel {}: the {end} ztunnel ({pod}) counted {opened} {what} connections and \
                 {bytes} bytes towards the server; the bench made {} connections and the sink \
                 got {} bytes",
                pair.name,
                expect.conns,
                expect.bytes
            );
        }
    }
    Ok(())
}
