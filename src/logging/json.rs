//! `--log-format json`: one JSON object per line, laid out as ztunnel lays out its own, so a
//! log pipeline built for ztunnel reads ambit's lines unchanged: `level` (lower case),
//! `time` (RFC 3339, UTC), `scope` (the event's target, `access` for access logs), `message`,
//! then every field of the event under its own name — dotted names such as `src.addr` stay
//! flat keys, numbers stay numbers. Span context is not included (ambit logs none).

use std::fmt;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON line formatter.
pub(super) struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        let meta = event.metadata();
        let mut fields = Fields(vec![
            (
                "level",
                Value::from(meta.level().as_str().to_ascii_lowercase()),
            ),
            ("time", Value::from(time)),
            ("scope", Value::from(meta.target())),
        ]);
        event.record(&mut fields);
        writeln!(writer, "{}", fields.render())
    }
}

/// The fields of one line, in the order they were recorded.
struct Fields(Vec<(&'static str, Value)>);

impl Fields {
    /// The object as one line of JSON. A field recorded twice keeps its last value.
    fn render(&self) -> String {
        let mut out = String::from("{");
        for (i, (name, value)) in self.0.iter().enumerate() {
            if self.0[i + 1..].iter().any(|(n, _)| n == name) {
                continue;
            }
            if out.len() > 1 {
                out.push(',');
            }
            // Serialising a str or a Value into a String cannot fail.
            out.push_str(&serde_json::to_string(name).unwrap_or_default());
            out.push(':');
            out.push_str(&serde_json::to_string(value).unwrap_or_default());
        }
        out.push('}');
        out
    }

    fn put(&mut self, field: &Field, value: Value) {
        self.0.push((field.name(), value));
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` fields arrive here too, their Debug being the value's Display.
        self.put(field, Value::from(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
}

/// Runs `f` with a subscriber writing JSON lines (every level) and returns the lines parsed,
/// for tests of what the daemon logs.
#[cfg(test)]
pub(crate) fn capture_json(f: impl FnOnce()) -> Vec<Value> {
    use std::io;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(out.clone())
        .event_format(JsonLines)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = out.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_is_one_flat_object_with_typed_fields() {
        let lines = capture_json(|| {
            let addr: std::net::SocketAddr = "10.0.0.1:80".parse().unwrap();
            tracing::event!(target: "access", tracing::Level::INFO, src.addr = %addr, bytes_sent = 7u64,
                error = Some("a \"quoted\"\nline"), missing = None::<&str>, "connection complete");
            tracing::warn!(ok = true, "second");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        let v = &lines[0];
        assert_eq!(v["level"], "info");
        assert_eq!(v["scope"], "access");
        assert_eq!(v["message"], "connection complete");
        assert_eq!(v["src.addr"], "10.0.0.1:80");
        assert_eq!(v["bytes_sent"], 7);
        assert_eq!(v["error"], "a \"quoted\"\nline");
        assert!(
            v.get("missing").is_none(),
            "absent optional fields stay absent"
        );
        assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
        let v = &lines[1];
        assert_eq!(
            (v["level"].as_str(), v["ok"].as_bool()),
            (Some("warn"), Some(true))
        );
    }
}
