// ---------------------------------------------------------------------------------------------
// Results.

use crate::ModeSpec;

/// Results of one mode.
#[derive(Clone, Debug)]
pub(crate) struct ModeResult {
    pub(crate) spec: ModeSpec,
    pub(crate) stream: Vec<StreamRound>,
    pub(crate) rr: RrResult,
    pub(crate) conn: RateResult,
    /// Flows the daemons recorded for the connection-rate test (`None` without daemons).
    pub(crate) conn_flows: Option<FlowCount>,
}

#[derive(Clone, Debug)]
pub(crate) struct StreamRound {
    pub(crate) bytes: u64,
    pub(crate) seconds: f64,
    /// CPU use during the window, percent of one CPU: this process, then each daemon.
    pub(crate) cpu: Vec<(String, f64)>,
}

impl StreamRound {
    pub(crate) fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }
}

#[derive(Clone, Debug)]
pub(crate) struct RrResult {
    pub(crate) count: usize,
    pub(crate) seconds: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) mean_us: f64,
    pub(crate) max_us: f64,
}

impl RrResult {
    pub(crate) fn per_second(&self) -> f64 {
        self.count as f64 / self.seconds
    }
}

/// A sequential rate test (connections or handshakes).
#[derive(Clone, Debug)]
pub(crate) struct RateResult {
    pub(crate) count: usize,
    pub(crate) seconds: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) mean_us: f64,
    pub(crate) max_us: f64,
    pub(crate) cpu: Vec<(String, f64)>,
    /// Client ports skipped because they were still in use.
    pub(crate) skipped_ports: u64,
    /// Handshakes whose HTTP/2 connection did not close within [`CLOSE_GRACE`] and were aborted.
    pub(crate) forced_closes: u64,
}

impl RateResult {
    pub(crate) fn per_second(&self) -> f64 {
        self.count as f64 / self.seconds
    }

    /// A test that was not run (`--tests`): every figure NaN.
    pub(crate) fn none() -> RateResult {
        RateResult {
            count: 0,
            seconds: f64::NAN,
            p50_us: f64::NAN,
            p99_us: f64::NAN,
            mean_us: f64::NAN,
            max_us: f64::NAN,
            cpu: Vec::new(),
            skipped_ports: 0,
            forced_closes: 0,
        }
    }
}

/// What `/flows` showed for a connection-rate test.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FlowCount {
    /// Outbound flows on n1 to the ping server (among the most recent 4096).
    pub(crate) n1: usize,
    /// Of those, how many ended in an error.
    pub(crate) n1_errors: usize,
    /// `hbone` flows on n2 to the ping server (hbone only).
    pub(crate) n2: usize,
}

/// One batch of idle connections opened on top of the previous ones.
#[derive(Clone, Debug)]
pub(crate) struct MemBatch {
    pub(crate) kind: MemKind,
    /// 1-based position in the sequence of batches.
    pub(crate) batch: usize,
    pub(crate) conns: usize,
    /// Increase of n1's `hbone_dials` counter while opening.
    pub(crate) dials: Option<u64>,
    /// n1 RSS before opening the batch and with it open.
    pub(crate) n1: [Rss; 2],
    /// The same for n2.
    pub(crate) n2: [Rss; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MemKind {
    /// One connection per destination pod: each has its own pooled TLS connection.
    OwnTunnel,
    /// Many connections to one pod, sharing pooled TLS connections.
    Shared,
}

impl MemKind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            MemKind::OwnTunnel => "own pooled TLS conn each",
            MemKind::Shared => "sharing pooled TLS conns",
        }
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            MemKind::OwnTunnel => "own_pooled_connection_each",
            MemKind::Shared => "shared_pooled_connections",
        }
    }
}

impl MemBatch {
    /// Growth of VmRSS per connection, KiB.
    pub(crate) fn kib_per_conn(&self, rss: &[Rss; 2]) -> f64 {
        (rss[1].vm_kib as f64 - rss[0].vm_kib as f64) / self.conns as f64
    }

    /// Growth of RssAnon per connection, KiB.
    pub(crate) fn anon_kib_per_conn(&self, rss: &[Rss; 2]) -> f64 {
        (rss[1].anon_kib as f64 - rss[0].anon_kib as f64) / self.conns as f64
    }
}

/// The memory test: batches, and RSS before the first and after closing everything.
#[derive(Clone, Debug)]
pub(crate) struct Memory {
    pub(crate) batches: Vec<MemBatch>,
    /// n1, n2 before the first batch (after the warm-up connection was closed and evicted).
    pub(crate) baseline: [Rss; 2],
    /// n1, n2 with every batch open.
    pub(crate) peak: [Rss; 2],
    /// n1, n2 after closing every connection and waiting for pool eviction.
    pub(crate) after_close: [Rss; 2],
}

impl Memory {
    /// Share of n1's total growth handed back after closing, percent.
    pub(crate) fn returned_percent(&self, node: usize) -> f64 {
        let grown = self.peak[node].vm_kib as f64 - self.baseline[node].vm_kib as f64;
        if grown <= 0.0 {
            return f64::NAN;
        }
        (self.peak[node].vm_kib as f64 - self.after_close[node].vm_kib as f64) / grown * 100.0
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Rss {
    pub(crate) vm_kib: u64,
    pub(crate) anon_kib: u64,
}

/// Everything one run measured.
pub(crate) struct Report {
    pub(crate) modes: Vec<ModeResult>,
    pub(crate) handshakes: RateResult,
    pub(crate) memory: Memory,
    /// n1 and n2 daemon RSS once all pods were enrolled, before any mesh traffic.
    pub(crate) daemon_rss_at_start: Vec<(String, Rss)>,
}
