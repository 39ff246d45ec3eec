// ---------------------------------------------------------------------------------------------
// Memory per idle connection, per mode: RssAnon of the client-side and the server-side proxy
// before and after opening `SHARED_CONNS` idle connections `n1-p1` → `n2-p1` (each first
// exchanges 1 byte with the echo server, so its whole path is up). Measured right after the
// proxies are ready, before the data-path tests, so memory freed by earlier traffic does not
// hide the growth; one warm-up connection first opens the pooled tunnel. ztunnel allocates
// with jemalloc, ambit with glibc malloc; RSS counts touched pages, so it is what a node pays,
// noisy by a few pages either way. Kernel socket buffers are not in RSS.

use std::net::SocketAddr;

use ambit::lab::Lab;
use ambit::netns::NetNs;
use anyhow::Context;
use serde_json::{json, Value};
use tokio::runtime::Runtime;

use crate::modes::{within, Mesh, Procs};
use crate::sampling::{open_idle, read_rss};
use crate::{ECHO_PORT, MESH_POD, SETTLE, SHARED_CONNS, STUCK_SLACK};

/// Growth of the proxies' RssAnon over one batch of idle connections.
#[derive(Clone, Debug)]
pub(crate) struct IdleMemory {
    pub(crate) mesh: Mesh,
    pub(crate) conns: usize,
    /// Δ RssAnon of the client-side proxies, KiB.
    pub(crate) client_kib: i64,
    /// Δ RssAnon of the server-side proxies, KiB.
    pub(crate) server_kib: i64,
}

impl IdleMemory {
    /// KiB per idle connection, both ends together.
    pub(crate) fn per_conn_kib(&self) -> f64 {
        (self.client_kib + self.server_kib) as f64 / self.conns as f64
    }

    pub(crate) fn text(&self) -> String {
        format!(
            "{:.1} ({:.1} + {:.1})",
            self.per_conn_kib(),
            self.client_kib as f64 / self.conns as f64,
            self.server_kib as f64 / self.conns as f64
        )
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "mode": self.mesh.name(), "connections": self.conns,
            "client_rss_anon_delta_kib": self.client_kib,
            "server_rss_anon_delta_kib": self.server_kib,
            "kib_per_connection": self.per_conn_kib(),
        })
    }
}

fn anon_kib(pids: &[u32]) -> anyhow::Result<i64> {
    let mut sum = 0;
    for pid in pids {
        sum += read_rss(*pid)?.anon_kib as i64;
    }
    Ok(sum)
}

/// Opens the batch through the proxies `procs` of `mesh` and measures their growth.
pub(crate) fn idle_memory(
    rt: &Runtime,
    lab: &Lab,
    mesh: Mesh,
    client: &NetNs,
    procs: &Procs,
) -> anyhow::Result<IdleMemory> {
    let echo = SocketAddr::from((lab.pod(MESH_POD)?.ipv4, ECHO_PORT));
    let limit = STUCK_SLACK * 2;
    let warm = within(rt, limit, "idle warm-up", open_idle(client, &[echo]))?;
    rt.block_on(async move { drop(warm) });
    std::thread::sleep(SETTLE);
    let before = (anon_kib(&procs.client)?, anon_kib(&procs.server)?);
    let conns = within(
        rt,
        limit,
        "idle connections",
        open_idle(client, &vec![echo; SHARED_CONNS]),
    )
    .context("opening idle connections")?;
    std::thread::sleep(SETTLE);
    let after = (anon_kib(&procs.client)?, anon_kib(&procs.server)?);
    rt.block_on(async move { drop(conns) });
    let m = IdleMemory {
        mesh,
        conns: SHARED_CONNS,
        client_kib: after.0 - before.0,
        server_kib: after.1 - before.1,
    };
    eprintln!(
        "  {} idle connections: {} KiB each (client + server proxy)",
        m.conns,
        m.text()
    );
    Ok(m)
}
