// ---------------------------------------------------------------------------------------------
// ztunnel, Istio's node proxy, as the reference peer of the modes comparison.
//
// One ztunnel per pod netns (`PROXY_MODE=dedicated`: its data path is the same code as its
// shared in-pod mode), its local config listing the lab's mesh pods as HBONE workloads, the
// fake CA, `ENABLE_ORIG_SRC=true` and `PACKET_MARK=1337`, so it keeps the client's address
// and marks its sockets as ambit does. The capture is Istio's in-pod rule set, installed by
// ambit's own `rules::apply` (same chains, marks and ports as Istio's CNI): the REDIRECT to
// 15001 in the client pod, and the connmark + table-100 route that source-preserving inbound
// needs in the server pod. So both proxies run under the same rules in the same topology.
//
// Whether traffic really went through ztunnel's HBONE is read from its `/metrics` on 15020
// (`istio_tcp_*` with `connection_security_policy="mutual_tls"` and the peer's principal).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ambit::lab::ztunnel::Ztunnel;
use ambit::lab::Lab;
use anyhow::{anyhow, Context};

pub(crate) use ambit::lab::ztunnel::locate;

/// ztunnel's Prometheus port (`/metrics`).
const METRICS_PORT: u16 = 15020;
/// Trust domain of the fake CA's certificates and of the local config.
use ambit::config::DEFAULT_TRUST_DOMAIN as TRUST_DOMAIN;

/// SPIFFE identity of a lab pod under the fake CA.
pub(crate) fn principal(lab: &Lab, pod: &str) -> anyhow::Result<String> {
    let p = lab.pod(pod)?;
    Ok(format!(
        "spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}",
        p.namespace, p.service_account
    ))
}

/// One ztunnel per mesh pod of a lab, each stopped when dropped.
pub(crate) struct Ztunnels {
    procs: Vec<Ztunnel>,
}

impl Ztunnels {
    /// Installs Istio's in-pod rules in every pod of `mesh` and starts a ztunnel in each, in
    /// its own directory under the lab's (log `ztunnel.log` there).
    pub(crate) fn start(lab: &Lab, binary: &Path, mesh: &[&str]) -> anyhow::Result<Ztunnels> {
        let dir = lab.dir().join("ztunnel");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("config.yaml");
        std::fs::write(&config, ambit::lab::ztunnel::local_config(lab, mesh)?)
            .with_context(|| format!("writing {}", config.display()))?;
        let mut procs = Vec::new();
        for pod in mesh {
            procs.push(Ztunnel::start(
                lab,
                binary,
                &config,
                &dir.join(pod),
                pod,
                &[],
            )?);
        }
        Ok(Ztunnels { procs })
    }

    /// Waits until every ztunnel answers 200 on `/healthz/ready`; fails (quoting its log) if
    /// one exits or is not ready by the deadline.
    pub(crate) fn wait_ready(&mut self, lab: &Lab, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for zt in &mut self.procs {
            zt.wait_ready(lab, deadline)?;
        }
        Ok(())
    }

    /// Pid of the ztunnel in `pod`.
    pub(crate) fn pid(&self, pod: &str) -> Option<u32> {
        self.procs.iter().find(|z| z.pod() == pod).map(Ztunnel::pid)
    }

    /// Pids of every ztunnel.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Ztunnel::pid).collect()
    }
}

/// `istio_tcp_*` counters of one ztunnel, summed over the series that match a filter.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct TcpCounters {
    pub(crate) opened: f64,
    pub(crate) received_bytes: f64,
}

/// Which series of [`TcpCounters`] count.
pub(crate) struct SeriesFilter<'a> {
    /// `source` (client side) or `destination` (server side).
    pub(crate) reporter: &'a str,
    /// `mutual_tls` (HBONE) or `unknown` (plain TCP).
    pub(crate) security: &'a str,
    /// Label that must equal `peer.1`, e.g. (`destination_principal`, server identity).
    pub(crate) peer: Option<(&'a str, &'a str)>,
}

/// Parses `name{k="v",...} value`; `None` for comments and lines it does not understand.
fn parse_sample(line: &str) -> Option<(&str, BTreeMap<&str, &str>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, labels)) = series.split_once('{') else {
        return Some((series, BTreeMap::new(), value));
    };
    let mut map = BTreeMap::new();
    // ztunnel's label values are identities, names and `unknown`: no quotes or commas inside.
    for pair in labels
        .strip_suffix('}')?
        .split(',')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=')?;
        map.insert(k, v.strip_prefix('"')?.strip_suffix('"')?);
    }
    Some((name, map, value))
}

/// Sums the counters of `body` (a `/metrics` page) that match `filter`.
pub(crate) fn sum_counters(body: &str, filter: &SeriesFilter) -> TcpCounters {
    let mut c = TcpCounters::default();
    for (name, labels, value) in body.lines().filter_map(parse_sample) {
        let matches = labels.get("reporter") == Some(&filter.reporter)
            && labels.get("connection_security_policy") == Some(&filter.security)
            && filter.peer.is_none_or(|(k, v)| labels.get(k) == Some(&v));
        match name {
            "istio_tcp_connections_opened_total" if matches => c.opened += value,
            "istio_tcp_received_bytes_total" if matches => c.received_bytes += value,
            _ => {}
        }
    }
    c
}

/// The counters of the ztunnel in `pod` that match `filter`.
pub(crate) fn counters(lab: &Lab, pod: &str, filter: &SeriesFilter) -> anyhow::Result<TcpCounters> {
    let r = lab
        .node_http_get(pod, METRICS_PORT, "/metrics")
        .with_context(|| format!("reading ztunnel's /metrics in {pod}"))?;
    if r.status != 200 {
        return Err(anyhow!("ztunnel /metrics in {pod}: status {}", r.status));
    }
    Ok(sum_counters(&r.body, filter))
}
