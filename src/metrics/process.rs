//! The daemon's own process, read from `/proc` at each scrape, with the names every Prometheus
//! client library uses (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...), so
//! that the standard process panels and alerts work; and the build-info gauge Istio components
//! export (`istio_build{component,tag}`).

use std::fs;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

/// The `component` label of the build-info gauge.
pub const COMPONENT: &str = "ambit";

/// Labels of `istio_build`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    component: &'static str,
    tag: &'static str,
}

/// Registers `build` (in a registry prefixed `istio`): 1, labelled with this binary's version.
pub fn register_build_info(istio: &mut Registry) {
    let build: Family<BuildLabels, Gauge> = Family::default();
    build
        .get_or_create(&BuildLabels {
            component: COMPONENT,
            tag: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    istio.register("build", "Istio component build info", build);
}

/// What `/proc/self` says about the process at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// User + system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on file descriptors.
    pub max_fds: u64,
}

/// Why `/proc` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// A file of `/proc` could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// A file of `/proc` did not have the expected shape.
    #[error("{path}: {what}")]
    Parse {
        /// The file.
        path: &'static str,
        /// What was expected.
        what: &'static str,
    },
}

const STAT: &str = "/proc/self/stat";
const SYSTEM_STAT: &str = "/proc/stat";
const FDS: &str = "/proc/self/fd";

fn read(path: &'static str) -> Result<String, ProcError> {
    fs::read_to_string(path).map_err(|source| ProcError::Read { path, source })
}

/// Fields of `/proc/self/stat` after the command name (which may contain spaces and
/// parentheses, hence the split at the last `)`), numbered as in proc(5) from field 3.
fn stat_fields(stat: &str) -> Result<Vec<&str>, ProcError> {
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or(ProcError::Parse {
            path: STAT,
            what: "no `)` after the command name",
        })?;
    Ok(rest.split_whitespace().collect())
}

/// Field `n` (proc(5) numbering, n >= 3) of the stat fields as a number.
fn field(fields: &[&str], n: usize, what: &'static str) -> Result<u64, ProcError> {
    fields
        .get(n - 3)
        .and_then(|f| f.parse().ok())
        .ok_or(ProcError::Parse { path: STAT, what })
}

/// Reads the process's figures now.
pub fn sample() -> Result<Sample, ProcError> {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let stat = read(STAT)?;
    let f = stat_fields(&stat)?;
    let utime = field(&f, 14, "utime (field 14) is not a number")?;
    let stime = field(&f, 15, "stime (field 15) is not a number")?;
    let start_ticks = field(&f, 22, "starttime (field 22) is not a number")?;
    let vsize = field(&f, 23, "vsize (field 23) is not a number")?;
    let rss_pages = field(&f, 24, "rss (field 24) is not a number")?;
    let boot = read(SYSTEM_STAT)?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or(ProcError::Parse {
            path: SYSTEM_STAT,
            what: "no `btime` line",
        })?;
    let open_fds = fs::read_dir(FDS)
        .map_err(|source| ProcError::Read { path: FDS, source })?
        .count() as u64;
    let max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(0);
    Ok(Sample {
        cpu_seconds: (utime + stime) as f64 / ticks,
        resident_bytes: rss_pages * page,
        virtual_bytes: vsize,
        start_time_seconds: boot as f64 + start_ticks as f64 / ticks,
        // The directory listing itself held one descriptor.
        open_fds: open_fds.saturating_sub(1),
        max_fds,
    })
}

/// Encodes a fresh [`Sample`] at each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = match sample() {
            Ok(s) => s,
            Err(e) => {
                // A scrape without process figures beats a failed scrape.
                tracing::warn!(error = %e, "process metrics unavailable");
                return Ok(());
            }
        };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, f64); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_bytes as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                s.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                s.max_fds as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_describes_this_process() {
        let s = sample().expect("/proc readable");
        assert!(
            s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes,
            "{s:?}"
        );
        assert!(s.open_fds >= 3 && s.open_fds <= s.max_fds, "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // Started in the past, and not before the machine booted days ago at most.
        assert!(s.start_time_seconds <= now + 1.0, "{s:?}");
        assert!(s.start_time_seconds > now - 365.0 * 86400.0, "{s:?}");
    }

    #[test]
    fn a_command_name_with_parentheses_is_skipped() {
        let f = stat_fields("42 (a) b) S 1 2").unwrap();
        assert_eq!(f, vec!["S", "1", "2"]);
        assert_eq!(field(&f, 4, "ppid").unwrap(), 1);
    }
}
