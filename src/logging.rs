//! The daemon's log: where lines go, in which format, and the level filter that `/logging`
//! on the admin endpoint changes while the daemon runs.
//!
//! Every line, access log included, is formatted on the thread that emits it and handed to
//! one writer thread through a bounded queue (`tracing-appender`'s non-blocking writer, in
//! its lossy mode). A data-path thread therefore never waits for stderr: if the reader of
//! the daemon's stderr stalls and [`LOG_BUFFERED_LINES`] lines are queued, further lines are
//! dropped and counted ([`LogControl::dropped_lines`], exported as
//! `ambit_log_lines_dropped_total`) instead of slowing connections down.
//!
//! The level filter is an `EnvFilter` (`RUST_LOG` syntax, `info` by default) behind a reload
//! layer. `/logging?level=` takes ztunnel's forms: a bare level (`debug`) sets the default,
//! `target=level` (or `target:level`) one target's, several joined by commas. A change is
//! added to the filter in force (a later directive for the same target replaces the earlier
//! one); with `reset` it is added to the filter the daemon started with instead.

mod json;

#[cfg(test)]
pub(crate) use json::capture_json;

use std::sync::{Arc, Mutex};

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogFormat, LOG_BUFFERED_LINES};

/// The level names a filter directive may end in.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A refused level change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LevelError {
    /// A clause that is neither a level nor `target=level` / `target:level`.
    #[error("invalid level clause {clause:?} (expected one of {levels}, or target=level, or target:level, joined by commas)", levels = LEVELS.join("|"))]
    Clause {
        /// The clause as given.
        clause: String,
    },
    /// The combined filter was refused by the filter parser.
    #[error("invalid filter {filter:?}: {reason}")]
    Filter {
        /// The combined filter.
        filter: String,
        /// The parser's reason.
        reason: String,
    },
    /// The filter could not be swapped in (the subscriber is gone).
    #[error("cannot change the filter: {0}")]
    Reload(String),
}

/// What the admin endpoint needs of the log: the filter in force, changing it, and the count
/// of lines dropped because the writer fell behind.
pub struct LogControl {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    /// The filter the daemon started with (what `reset` returns to).
    initial: String,
    /// The filter in force, as we rendered it.
    current: Mutex<String>,
    dropped: Option<ErrorCounter>,
}

impl LogControl {
    /// The filter in force, e.g. `info,access=debug`.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adds `level` (ztunnel's syntax, see the module doc) to the filter in force, or with
    /// `reset` to the starting filter, and swaps the result in. Returns the new filter.
    pub fn change(&self, level: &str, reset: bool) -> Result<String, LevelError> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let base = if reset { &self.initial } else { &*current };
        let merged = match level.is_empty() && reset {
            true => self.initial.clone(),
            false => merge(base, level)?,
        };
        let filter = EnvFilter::try_new(&merged).map_err(|e| LevelError::Filter {
            filter: merged.clone(),
            reason: e.to_string(),
        })?;
        if let Some(handle) = &self.handle {
            handle
                .reload(filter)
                .map_err(|e| LevelError::Reload(e.to_string()))?;
        }
        tracing::info!(filter = %merged, "log filter changed");
        *current = merged.clone();
        Ok(merged)
    }

    /// Lines dropped so far because the writer thread fell behind.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped
            .as_ref()
            .map_or(0, |c| c.dropped_lines() as u64)
    }

    /// A control over no subscriber (unit tests of the routes): changes are validated and
    /// remembered, nothing is reloaded.
    pub fn detached(initial: &str) -> LogControl {
        LogControl {
            handle: None,
            initial: initial.to_string(),
            current: Mutex::new(initial.to_string()),
            dropped: None,
        }
    }
}

/// The installed log: the control for the admin endpoint, and the guard that flushes the
/// queued lines when dropped (hold it until the process ends).
pub struct Logging {
    /// Shared with the admin endpoint.
    pub control: Arc<LogControl>,
    _flush: WorkerGuard,
}

/// Installs the process's log: `RUST_LOG` (default `info`) behind a reload layer, lines in
/// `format`, written to stderr by a writer thread.
pub fn init(format: LogFormat) -> Logging {
    let initial = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| EnvFilter::try_new(v).is_ok())
        .unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&initial).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let (writer, flush) = queue(std::io::stderr(), LOG_BUFFERED_LINES);
    let dropped = writer.error_counter();
    // One of the two is installed; each is built apart (their subscriber types differ).
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(writer.clone())
            .with_ansi(false)
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .event_format(json::JsonLines)
    });
    if let Err(e) = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .try_init()
    {
        eprintln!("ambit: logging already set up ({e}); keeping it");
    }
    Logging {
        control: Arc::new(LogControl {
            handle: Some(handle),
            current: Mutex::new(initial.clone()),
            initial,
            dropped: Some(dropped),
        }),
        _flush: flush,
    }
}

/// The writer thread behind a queue of `lines`: a full queue drops (and counts) the new line
/// instead of making the emitting thread wait.
fn queue<W: std::io::Write + Send + 'static>(out: W, lines: usize) -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(lines)
        .thread_name("ambit-log")
        .finish(out)
}

/// `base` with the clauses of `change` added: a clause for a target already in `base`
/// replaces it in place, a new one is appended. Clauses of `change` are checked (see
/// [`LevelError::Clause`]); `target:level` becomes `target=level`.
pub fn merge(base: &str, change: &str) -> Result<String, LevelError> {
    let mut directives: Vec<(String, String)> = base
        .split(',')
        .filter(|c| !c.trim().is_empty())
        .map(|c| split_directive(c.trim()))
        .collect();
    let mut any = false;
    for clause in change.split(',').map(str::trim) {
        let (target, level) = parse_clause(clause)?;
        any = true;
        match directives.iter_mut().find(|(t, _)| *t == target) {
            Some(d) => d.1 = level,
            None => directives.push((target, level)),
        }
    }
    if !any {
        return Err(LevelError::Clause {
            clause: change.to_string(),
        });
    }
    // The default level first, then targets in the order they were set.
    directives.sort_by_key(|(t, _)| !t.is_empty());
    Ok(directives
        .iter()
        .map(|(t, l)| match t.is_empty() {
            true => l.clone(),
            false => format!("{t}={l}"),
        })
        .collect::<Vec<_>>()
        .join(","))
}

/// One directive of a filter already in force, as (target, level); the target is empty for
/// the default level. Anything before the last `=` counts as the target, so `RUST_LOG`
/// forms this module does not accept from `/logging` (span filters) are still kept.
fn split_directive(d: &str) -> (String, String) {
    match d.rsplit_once('=') {
        Some((t, l)) => (t.to_string(), l.to_string()),
        None if LEVELS.contains(&d.to_ascii_lowercase().as_str()) => (String::new(), d.into()),
        // A bare target means "everything from it" in RUST_LOG syntax.
        None => (d.to_string(), "trace".into()),
    }
}

/// A clause of a `/logging` change as (target, level).
fn parse_clause(clause: &str) -> Result<(String, String), LevelError> {
    let bad = || LevelError::Clause {
        clause: clause.to_string(),
    };
    let is_level = |l: &str| LEVELS.contains(&l);
    let is_target = |t: &str| {
        !t.is_empty()
            && !t.ends_with(':')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.'))
    };
    if is_level(clause) {
        return Ok((String::new(), clause.to_string()));
    }
    let (target, level) = clause
        .split_once('=')
        .or_else(|| clause.rsplit_once(':'))
        .ok_or_else(bad)?;
    if is_target(target) && is_level(level) {
        Ok((target.to_string(), level.to_string()))
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_merge_into_the_filter_in_force() {
        assert_eq!(merge("info", "debug").unwrap(), "debug");
        assert_eq!(merge("info", "access=debug").unwrap(), "info,access=debug");
        // ztunnel's documented `target:level` form, and a path-like target.
        assert_eq!(
            merge("info,access=debug", "hbone:warn,ambit::proxy:trace").unwrap(),
            "info,access=debug,hbone=warn,ambit::proxy=trace"
        );
        // A later directive for a target replaces the earlier one, wherever it stood.
        assert_eq!(
            merge("access=debug,warn", "access=error,info").unwrap(),
            "info,access=error"
        );
        // RUST_LOG forms kept as they were.
        assert_eq!(
            merge("info,h2[conn]=off", "debug").unwrap(),
            "debug,h2[conn]=off"
        );
    }

    #[test]
    fn bad_clauses_are_named() {
        for bad in [
            "verbose",
            "access=loud",
            "=debug",
            "access:",
            "a b=debug",
            "debug,,info",
            "",
        ] {
            match merge("info", bad) {
                Err(LevelError::Clause { clause }) => {
                    assert!(bad.contains(&clause), "{bad:?} named {clause:?}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let msg = merge("info", "access=loud").unwrap_err().to_string();
        assert!(
            msg.contains("\"access=loud\"") && msg.contains("target=level"),
            "{msg}"
        );
    }

    /// A writer stuck until released, like a stderr nobody reads.
    struct Stuck(std::sync::mpsc::Receiver<()>);

    impl std::io::Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_writer_costs_dropped_lines_not_waiting() {
        use std::io::Write;
        let (release, stuck) = std::sync::mpsc::channel();
        let (mut writer, flush) = queue(Stuck(stuck), 4);
        let counter = writer.error_counter();
        let started = std::time::Instant::now();
        for i in 0..1000 {
            writer
                .write_all(format!("line {i}\n").as_bytes())
                .expect("a lossy write never fails");
        }
        let took = started.elapsed();
        assert!(
            took < std::time::Duration::from_secs(1),
            "writes waited {took:?}"
        );
        // At most the queue and the line being written got through.
        assert!(
            counter.dropped_lines() >= 1000 - 6,
            "{}",
            counter.dropped_lines()
        );
        drop(release);
        drop(flush);
    }

    #[test]
    fn a_detached_control_validates_remembers_and_resets() {
        let c = LogControl::detached("info");
        assert_eq!(
            c.change("access=debug", false).unwrap(),
            "info,access=debug"
        );
        assert_eq!(c.current(), "info,access=debug");
        assert!(c.change("access=nope", false).is_err());
        assert_eq!(
            c.current(),
            "info,access=debug",
            "a refused change changes nothing"
        );
        assert_eq!(c.change("warn", true).unwrap(), "warn");
        assert_eq!(
            c.change("", true).unwrap(),
            "info",
            "reset alone returns to the start"
        );
        assert_eq!(c.dropped_lines(), 0);
    }
}
