//! The routes of `ambit run`'s three endpoints.
//!
//! - admin (loopback): `/status`, `/pods`, `/flows`, `/policies`, `/metrics`, `/config_dump`
//!   ([`super::dump`]) and `/logging` (see [`crate::logging`]);
//! - metrics: `/metrics` (also as `/stats/prometheus`);
//! - readiness: `/healthz/ready`, 200 once the workload source was read and every local pod
//!   handled once, 503 before; the body (JSON) lists what is still pending either way.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper::StatusCode;
use serde::Serialize;
use tokio::sync::watch;

use crate::admin::{self, Reply, Request, Router};
use crate::config::RunConfig;
use crate::explain::Explainer;
use crate::flows::FlowTable;
use crate::identity::manager::CertManager;
use crate::logging::LogControl;
use crate::metrics::Metrics;
use crate::reconcile::StatusBoard;
use crate::workload::Directory;

/// What the routes read: the daemon's shared state.
pub(super) struct State {
    pub board: Arc<StatusBoard>,
    pub flows: Arc<FlowTable>,
    pub metrics: Arc<Metrics>,
    pub config: RunConfig,
    pub log: Arc<LogControl>,
    pub certs: Arc<CertManager>,
    pub directory: watch::Receiver<Arc<Directory>>,
    pub explainer: Explainer,
}

impl State {
    /// The metrics text, with the log's drop count brought up to date first.
    fn metrics_text(&self) -> String {
        self.metrics
            .log_lines_dropped
            .inner()
            .store(self.log.dropped_lines(), Ordering::Relaxed);
        self.metrics.encode()
    }
}

const ADMIN_HELP: &str =
    "ambit admin: /status /pods /flows /policies /metrics /config_dump /logging[?level=…&reset] /explain/SRC/DST\n";

/// `/explain/<source pod>/<ip:port>`; the source may be `namespace/name`, so the destination
/// is the last segment. `[`, `]` and `/` may come percent-encoded.
const EXPLAIN_PREFIX: &str = "/explain/";

fn explain(explainer: &Explainer, rest: &str) -> Reply {
    let rest = admin::percent_decode(rest);
    let Some((src, dst)) = rest.rsplit_once('/') else {
        return Reply::text(
            StatusCode::BAD_REQUEST,
            "usage: /explain/<pod name, namespace/name or IP>/<ip:port>\n",
        );
    };
    // Reads the pod's rule counters with iptables/nft: a short blocking call, on the admin
    // endpoint only (local, bounded to its connection limit).
    match explainer.explain(src, dst) {
        Ok(e) => Reply::json(&e),
        Err(e) => Reply::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// The admin endpoint's router.
pub(super) fn admin(state: Arc<State>) -> Router {
    Arc::new(move |req| {
        if req.path == "/logging" {
            return logging(&state.log, req);
        }
        if req.is_post() {
            return Reply::text(StatusCode::METHOD_NOT_ALLOWED, "only /logging takes POST\n");
        }
        if let Err(reply) = req.params(&[]) {
            return reply;
        }
        let s = &state;
        if let Some(rest) = req.path.strip_prefix(EXPLAIN_PREFIX) {
            return explain(&s.explainer, rest);
        }
        match req.path {
            "/pods" => Reply::json(&s.board.pods()),
            "/flows" => Reply::json(&s.flows.snapshot()),
            "/metrics" => Reply::text(StatusCode::OK, s.metrics_text()),
            "/policies" => Reply::json(&s.board.policies.view()),
            "/config_dump" => Reply::json(&super::dump::ConfigDump::collect(s)),
            "/status" => Reply::json(&serde_json::json!({
                "node": s.config.reconcile.node,
                "backend": s.config.reconcile.backend.to_string(),
                "source": s.config.source.to_string(),
                "ready": s.board.is_ready(),
                "source_error": s.board.source_error(),
                "policies_rejected": s.board.policies.rejected_count(),
            })),
            _ => Reply::text(StatusCode::NOT_FOUND, ADMIN_HELP),
        }
    })
}

/// The metrics endpoint's router.
pub(super) fn metrics(state: Arc<State>) -> Router {
    admin::read_only(move |path| match path {
        "/metrics" | "/stats/prometheus" => Reply::text(StatusCode::OK, state.metrics_text()),
        _ => Reply::text(StatusCode::NOT_FOUND, "try /metrics\n"),
    })
}

/// The readiness endpoint's router.
pub(super) fn readiness(state: Arc<State>) -> Router {
    admin::read_only(move |path| match path {
        "/healthz/ready" => {
            let body = Readiness::of(&state);
            let mut reply = Reply::json(&body);
            if !body.ready {
                reply.status = StatusCode::SERVICE_UNAVAILABLE;
            }
            reply
        }
        _ => Reply::text(StatusCode::NOT_FOUND, "try /healthz/ready\n"),
    })
}

/// The readiness body: whether the daemon is ready, and what is still pending.
#[derive(Debug, Serialize)]
pub(super) struct Readiness {
    /// The same as the status code says.
    pub ready: bool,
    /// What is not done yet, one sentence each (empty when nothing is).
    pub pending: Vec<String>,
}

impl Readiness {
    pub(super) fn of(s: &State) -> Readiness {
        let ready = s.board.is_ready();
        let mut pending = Vec::new();
        if !ready {
            pending.push(match s.board.source_error() {
                Some(e) => format!("workload source not synced yet: {e}"),
                None => "workload source not synced yet".to_string(),
            });
        }
        for pod in s.board.pods() {
            if pod.state == "failed" {
                let why = pod.error.as_deref().unwrap_or("no reason recorded");
                pending.push(format!("pod {} not captured: {why}", pod.pod));
            }
        }
        for cert in s.certs.dump() {
            if cert.certificate.is_none() {
                pending.push(match cert.last_error {
                    Some(e) => format!("certificate for {} not issued: {e}", cert.identity),
                    None => format!("certificate for {} not issued yet", cert.identity),
                });
            }
        }
        Readiness { ready, pending }
    }
}

/// `/logging`: without `level` (and without `reset`) the filter in force; with them, the
/// filter changed (GET or POST: ztunnel takes POST only, a GET is easier from a probe).
fn logging(log: &LogControl, req: &Request<'_>) -> Reply {
    let q = match req.params(&["level", "reset"]) {
        Ok(q) => q,
        Err(reply) => return reply,
    };
    let level = q.get("level").unwrap_or("");
    if level.is_empty() && !q.has("reset") {
        return Reply::text(
            StatusCode::OK,
            format!("current log level is {}\n", log.current()),
        );
    }
    match log.change(level, q.has("reset")) {
        Ok(now) => Reply::text(StatusCode::OK, format!("current log level is {now}\n")),
        Err(e) => Reply::text(
            StatusCode::BAD_REQUEST,
            format!(
                "/logging: {e}\nusage: /logging?level=debug | ?level=access=debug,hbone=warn | ?level=access:debug | ?reset[&level=…]\n"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use hyper::Method;

    use super::*;

    fn call(log: &LogControl, method: &Method, query: &str) -> (StatusCode, String) {
        let reply = logging(
            log,
            &Request {
                method,
                path: "/logging",
                query,
            },
        );
        (reply.status, reply.body)
    }

    #[test]
    fn logging_shows_changes_and_refuses_with_the_clause_named() {
        let log = LogControl::detached("info");
        let (get, post) = (&Method::GET, &Method::POST);
        assert_eq!(
            call(&log, get, ""),
            (StatusCode::OK, "current log level is info\n".into())
        );
        assert_eq!(
            call(&log, post, "level=access%3Ddebug").1,
            "current log level is info,access=debug\n"
        );
        assert_eq!(
            call(&log, get, "level=hbone:warn").1,
            "current log level is info,access=debug,hbone=warn\n"
        );
        let (status, body) = call(&log, get, "level=access=loud");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("\"access=loud\""), "{body}");
        let (status, body) = call(&log, get, "levle=debug");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("unknown parameter \"levle\""), "{body}");
        assert_eq!(call(&log, post, "reset").1, "current log level is info\n");
    }
}
