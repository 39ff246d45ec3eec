// ---------------------------------------------------------------------------------------------
// Memory.

use std::net::SocketAddr;

use ambit::lab::{traffic, Lab};
use ambit::netns::NetNs;
use anyhow::{anyhow, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::results::Rss;
use crate::PING;

/// Opens one connection from `ns` to each of `targets` (echo servers), one after another, and
/// exchanges one byte on each so the whole path is known to be up.
pub(crate) async fn open_idle(
    ns: &NetNs,
    targets: &[SocketAddr],
) -> anyhow::Result<Vec<TcpStream>> {
    let mut conns = Vec::with_capacity(targets.len());
    for (i, dst) in targets.iter().enumerate() {
        let mut s = traffic::connect(ns, *dst)
            .await
            .with_context(|| format!("connection {} to {dst}", i + 1))?;
        s.write_all(&[PING]).await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .await
            .with_context(|| format!("echo on connection {} to {dst}", i + 1))?;
        conns.push(s);
    }
    Ok(conns)
}

/// `VmRSS` and `RssAnon` of `pid`, KiB.
pub(crate) fn read_rss(pid: u32) -> anyhow::Result<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))
    };
    Ok(Rss {
        vm_kib: field("VmRSS:")?,
        anon_kib: field("RssAnon:")?,
    })
}

/// The `hbone_dials` counter on `node`'s admin `/metrics`.
pub(crate) fn hbone_dials(lab: &Lab, node: &str) -> Option<u64> {
    let body = lab.admin_get(node, "/metrics").ok()?;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|name| name.contains("hbone_dials"))
        })
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
}

// ---------------------------------------------------------------------------------------------
// Measurement helpers.

/// CPU time of a set of processes over a window.
pub(crate) struct CpuMeter {
    pids: Vec<(String, u32)>,
    before: Vec<Option<u64>>,
}

impl CpuMeter {
    pub(crate) fn start(pids: &[(String, u32)]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            before: pids.iter().map(|(_, pid)| cpu_ticks(*pid)).collect(),
        }
    }

    /// Percent of one CPU used by each process over `seconds`.
    pub(crate) fn stop(self, seconds: f64) -> Vec<(String, f64)> {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        self.pids
            .iter()
            .zip(&self.before)
            .filter_map(|((who, pid), before)| {
                let used = cpu_ticks(*pid)?.checked_sub((*before)?)?;
                Some((who.clone(), used as f64 / hz / seconds * 100.0))
            })
            .collect()
    }
}

/// utime + stime of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub(crate) fn cpu_text(cpu: &[(String, f64)]) -> String {
    cpu.iter()
        .map(|(who, pct)| format!("{who} {pct:.0}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Percentiles of latency samples (nanoseconds), in microseconds.
pub(crate) struct Summary {
    pub(crate) count: usize,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) mean_us: f64,
    pub(crate) max_us: f64,
}

impl Summary {
    pub(crate) fn of(mut samples: Vec<u64>) -> Summary {
        samples.sort_unstable();
        let us = |ns: u64| ns as f64 / 1000.0;
        if samples.is_empty() {
            return Summary {
                count: 0,
                p50_us: f64::NAN,
                p99_us: f64::NAN,
                mean_us: f64::NAN,
                max_us: f64::NAN,
            };
        }
        let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64;
        Summary {
            count: samples.len(),
            p50_us: us(percentile(&samples, 50.0)),
            p99_us: us(percentile(&samples, 99.0)),
            mean_us: mean / 1000.0,
            max_us: us(*samples.last().unwrap_or(&0)),
        }
    }
}

/// Nearest-rank percentile of sorted, non-empty `samples`.
pub(crate) fn percentile(samples: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}
