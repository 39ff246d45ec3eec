//! Prometheus metrics, served on `:15020/metrics`: ambit's own operational counters
//! (`ambit_*`), Istio's standard TCP metrics ([`tcp`], `istio_tcp_*`), the process figures
//! ([`process`], `process_*`) and the build info (`istio_build`). `docs/metrics.md` lists them.

pub mod process;
pub mod tcp;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels naming a capture listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `outbound`, `inbound` or `hbone`.
    pub listener: &'static str,
}

/// Labels of byte counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    /// `outbound`, `inbound` or `hbone`.
    pub listener: &'static str,
    /// `sent` (client → server) or `received`.
    pub direction: &'static str,
}

/// Labels of pod-state gauges and rule outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The state or outcome.
    pub outcome: &'static str,
}

/// Labels of policy denials.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// The configuration that denied, e.g. `AuthorizationPolicy shop/deny-db`, or
    /// [`NO_ALLOW_MATCHED`] when ALLOW policies apply and none matched.
    pub policy: String,
}

/// Labels of completed TLS handshakes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsHandshakeLabels {
    /// The negotiated key-exchange group's IANA name (`X25519MLKEM768`, `X25519`,
    /// `secp256r1`, ...).
    pub group: &'static str,
    /// `client` (an HBONE connection dialled) or `server` (accepted on 15008).
    pub side: &'static str,
}

/// Completed HBONE TLS handshakes by key-exchange group and side.
pub type TlsHandshakes = Family<TlsHandshakeLabels, Counter>;

/// Counts one completed handshake of `side` that used `group` (`None`: not reported by
/// rustls, counted as `unknown`).
pub fn count_tls_handshake(
    family: &TlsHandshakes,
    group: Option<&'static str>,
    side: &'static str,
) {
    family
        .get_or_create(&TlsHandshakeLabels {
            group: group.unwrap_or("unknown"),
            side,
        })
        .inc();
}

/// What an HBONE connection pool counts: connections dialled, and their handshakes by group.
#[derive(Clone, Debug, Default)]
pub struct DialCounters {
    /// [`Metrics::hbone_dials`].
    pub dials: Counter,
    /// [`Metrics::tls_handshakes`].
    pub handshakes: TlsHandshakes,
}

/// The `policy` label of a denial that no single policy made: ALLOW policies apply to the
/// workload and none of them matched.
pub const NO_ALLOW_MATCHED: &str = "(no ALLOW policy matched)";

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    /// Istio's TCP metrics, which every proxied connection reports to.
    pub tcp: Arc<tcp::TcpMetrics>,
    /// Connections accepted, per listener.
    pub connections_opened: Family<ListenerLabels, Counter>,
    /// Connections that ended in an error, per listener.
    pub connections_failed: Family<ListenerLabels, Counter>,
    /// Bytes carried, per listener and direction (added when a connection ends).
    pub bytes: Family<BytesLabels, Counter>,
    /// Local pods by capture state (`enrolled`, `failed`).
    pub pods: Family<OutcomeLabels, Gauge>,
    /// Rule reconciliations by outcome (`installed`, `unchanged`, `repaired`, `failed`).
    pub rule_applies: Family<OutcomeLabels, Counter>,
    /// HBONE connections (TLS + HTTP/2) dialled by the pools.
    pub hbone_dials: Counter,
    /// HBONE connections accepted on 15008 (handshakes completed).
    pub hbone_accepted: Counter,
    /// 15008 connections closed at accept because too many handshakes were pending, by reason.
    pub handshakes_shed: Family<OutcomeLabels, Counter>,
    /// Inbound connections denied by policy (at connect, or closed later by a policy change),
    /// per deciding policy.
    pub policy_denials: Family<PolicyLabels, Counter>,
    /// Log lines dropped because the log writer fell behind (set from
    /// [`crate::logging::LogControl::dropped_lines`] at each scrape).
    pub log_lines_dropped: Counter,
    /// Revocation: CRL `reloaded` / `reload_failed`, `handshake_refused` (revoked peer or no
    /// valid CRL), live `connection_closed` (peer revoked).
    pub crl_events: Family<OutcomeLabels, Counter>,
    /// HBONE TLS handshakes completed, by key-exchange group and side.
    pub tls_handshakes: TlsHandshakes,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let tcp = Arc::new(tcp::TcpMetrics::default());
        let istio = root.sub_registry_with_prefix("istio");
        tcp.register(istio);
        process::register_build_info(istio);
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("ambit");
        let m = Metrics {
            tcp,
            connections_opened: Family::default(),
            connections_failed: Family::default(),
            bytes: Family::default(),
            pods: Family::default(),
            rule_applies: Family::default(),
            hbone_dials: Counter::default(),
            hbone_accepted: Counter::default(),
            handshakes_shed: Family::default(),
            policy_denials: Family::default(),
            log_lines_dropped: Counter::default(),
            crl_events: Family::default(),
            tls_handshakes: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections_opened",
            "Connections accepted by a capture listener",
            m.connections_opened.clone(),
        );
        registry.register(
            "connections_failed",
            "Connections that ended in an error",
            m.connections_failed.clone(),
        );
        registry.register(
            "bytes",
            "Bytes carried, by listener and direction",
            m.bytes.clone(),
        );
        registry.register("pods", "Local pods by capture state", m.pods.clone());
        registry.register(
            "rule_applies",
            "Redirect-rule reconciliations by outcome",
            m.rule_applies.clone(),
        );
        registry.register(
            "hbone_dials",
            "HBONE connections dialled (TLS and HTTP/2 handshakes)",
            m.hbone_dials.clone(),
        );
        registry.register(
            "hbone_accepted",
            "HBONE connections accepted on 15008",
            m.hbone_accepted.clone(),
        );
        registry.register(
            "hbone_handshakes_shed",
            "15008 connections closed at accept: too many pending handshakes (per pod or source)",
            m.handshakes_shed.clone(),
        );
        registry.register(
            "policy_denials",
            "Inbound connections denied by policy, by the policy that denied",
            m.policy_denials.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log writer fell behind (the data path never waits for it)",
            m.log_lines_dropped.clone(),
        );
        registry.register(
            "crl_events",
            "Certificate revocation: CRL reloads and failures, refused handshakes, closed connections",
            m.crl_events.clone(),
        );
        registry.register(
            "tls_handshakes",
            "HBONE TLS handshakes completed, by key-exchange group and side (client, server)",
            m.tls_handshakes.clone(),
        );
        Metrics {
            registry: root,
            ..m
        }
    }
}

impl Metrics {
    /// The counters a pool of HBONE connections updates.
    pub fn dial_counters(&self) -> DialCounters {
        DialCounters {
            dials: self.hbone_dials.clone(),
            handshakes: self.tls_handshakes.clone(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_the_exposition() {
        let m = Metrics::default();
        m.connections_opened
            .get_or_create(&ListenerLabels {
                listener: "outbound",
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains(r#"ambit_connections_opened_total{listener="outbound"} 1"#),
            "{text}"
        );
        m.policy_denials
            .get_or_create(&PolicyLabels {
                policy: "AuthorizationPolicy lab/deny".into(),
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains(r#"ambit_policy_denials_total{policy="AuthorizationPolicy lab/deny"} 1"#),
            "{text}"
        );
        count_tls_handshake(&m.tls_handshakes, Some("X25519MLKEM768"), "server");
        let text = m.encode();
        assert!(
            text.contains(r#"ambit_tls_handshakes_total{group="X25519MLKEM768",side="server"} 1"#),
            "{text}"
        );
        for family in [
            "# TYPE istio_tcp_connections_opened counter",
            "# TYPE istio_tcp_sent_bytes counter",
            "# TYPE process_cpu_seconds counter",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
            &format!(
                "istio_build{{component=\"ambit\",tag=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(text.contains(family), "{family} missing from\n{text}");
        }
    }

    /// Every series the Grafana dashboard in `deploy/grafana/` queries is one ambit exports.
    #[test]
    fn the_dashboard_queries_only_exported_series() {
        let dashboard = include_str!("../deploy/grafana/ambit-dashboard.json");
        let text = Metrics::default().encode();
        let exported: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .flat_map(|l| {
                let mut words = l.split(' ');
                let (name, kind) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                match kind {
                    "counter" => vec![format!("{name}_total")],
                    _ => vec![name.to_string()],
                }
            })
            .collect();
        let mut queried = 0;
        for (i, _) in dashboard.match_indices('{') {
            let before = &dashboard[..i];
            let name: String = before
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if name.starts_with("istio_")
                || name.starts_with("ambit_")
                || name.starts_with("process_")
            {
                queried += 1;
                assert!(
                    exported.contains(&name),
                    "the dashboard queries {name}, not exported:\n{text}"
                );
            }
        }
        assert!(queried > 20, "only {queried} queries found");
    }
}
