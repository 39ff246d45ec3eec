//! The enrollment reconciler: makes the set of captured pods on this node equal to the set the
//! enrollment rules select, and keeps each captured pod's rules intact.
//!
//! For every local pod that should be captured it checks the input (IPs, annotations, netns),
//! opens the proxy's listeners inside the pod, then installs the redirect rules — in that order,
//! so that the rules never point at ports nobody listens on. A pod that cannot be captured is
//! reported as failed (admin `/pods`, metrics, log) with the reason, and retried with backoff;
//! nothing of it is left half-installed. A pod that leaves is released: rules first, then
//! listeners.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

use crate::capture::CaptureOptions;
use crate::hbone::pool::{ClientTls, Pool};
use crate::identity::manager::CertManager;
use crate::identity::Identity;
use crate::metrics::{Metrics, OutcomeLabels};
use crate::netns::NetNs;
use crate::proxy::{PodProxy, PodSecurity, ProxyContext, ServerTls};
use crate::rules::{self, ApplyOutcome, Backend, Families};
use crate::workload::enroll::{decide, DaemonIdentity, Decision};
use crate::workload::file::SourceState;
use crate::workload::{Directory, Pod, Snapshot};

/// Longest wait between retries of a failed pod.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Settings of the reconciler.
#[derive(Clone, Debug)]
pub struct ReconcileConfig {
    /// This node's name; only pods scheduled here are captured.
    pub node: String,
    /// How the daemon's own pods are recognised.
    pub daemon: DaemonIdentity,
    /// Rule backend.
    pub backend: Backend,
    /// How often the rules of captured pods are checked for drift.
    pub verify_interval: Duration,
    /// Trust domain of the mesh's identities.
    pub trust_domain: String,
    /// Whether plaintext inbound is refused unless a namespace says otherwise.
    pub strict_by_default: bool,
    /// How long an unused pooled HBONE connection stays open.
    pub pool_idle: Duration,
}

/// Namespace label choosing the inbound mTLS mode of its pods: `strict` (only HBONE) or
/// `permissive` (plaintext on 15006 also accepted).
pub const MTLS_MODE_LABEL: &str = "ambit.io/mtls-mode";

/// Capture state of one local pod, as reported on the admin endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct PodStatus {
    /// `namespace/name`.
    pub pod: String,
    /// Pod UID.
    pub uid: String,
    /// `enrolled`, `failed` or `not-enrolled`.
    pub state: &'static str,
    /// Why the pod is (not) selected by the enrollment rules.
    pub reason: String,
    /// Why capture failed.
    pub error: Option<String>,
    /// Pod IPs.
    pub ips: Vec<IpAddr>,
    /// Outcome of the last rule reconciliation (`installed`, `unchanged`, `repaired`).
    pub rules: Option<&'static str>,
    /// Last state change, milliseconds since the Unix epoch.
    pub since_ms: u64,
}

/// What the admin and readiness endpoints read.
#[derive(Default)]
pub struct StatusBoard {
    pods: RwLock<BTreeMap<String, PodStatus>>,
    ready: std::sync::atomic::AtomicBool,
    source_error: RwLock<Option<String>>,
}

impl StatusBoard {
    /// All local pods' statuses, by `namespace/name`.
    pub fn pods(&self) -> Vec<PodStatus> {
        read(&self.pods).values().cloned().collect()
    }

    /// True once the workload source was read and every local pod was handled once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The workload source's current error, if any.
    pub fn source_error(&self) -> Option<String> {
        read(&self.source_error).clone()
    }
}

fn read<T: Clone>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What is needed to (re)apply or remove one pod's rules.
#[derive(Clone)]
struct PodRules {
    netns: NetNs,
    backend: Backend,
    options: CaptureOptions,
}

impl PodRules {
    fn apply(&self) -> Result<ApplyOutcome, rules::RulesError> {
        rules::apply(&self.netns, self.backend, &self.options, Families::BOTH)
    }

    fn remove(&self) -> Result<(), rules::RulesError> {
        rules::remove(&self.netns, self.backend)
    }
}

struct Enrolled {
    pod: Pod,
    fingerprint: Fingerprint,
    rules: PodRules,
    _proxy: PodProxy,
    last_outcome: &'static str,
    next_verify: Instant,
}

struct Failed {
    pod: Pod,
    fingerprint: Fingerprint,
    error: String,
    attempts: u32,
    retry_at: Instant,
}

// One entry per local pod, held in a map: the size difference between variants is irrelevant.
#[allow(clippy::large_enum_variant)]
enum Entry {
    Enrolled(Enrolled),
    Failed(Failed),
}

/// Owns the captured pods of this node.
pub struct Reconciler {
    config: ReconcileConfig,
    ctx: ProxyContext,
    data_runtime: tokio::runtime::Handle,
    entries: HashMap<String, Entry>,
    board: Arc<StatusBoard>,
    metrics: Arc<Metrics>,
    certs: Arc<CertManager>,
}

impl Reconciler {
    /// A reconciler that starts pod proxies on `data_runtime` with credentials from `certs`.
    pub fn new(
        config: ReconcileConfig,
        ctx: ProxyContext,
        data_runtime: tokio::runtime::Handle,
        board: Arc<StatusBoard>,
        certs: Arc<CertManager>,
    ) -> Self {
        let metrics = ctx.metrics.clone();
        Reconciler {
            config,
            ctx,
            data_runtime,
            entries: HashMap::new(),
            board,
            metrics,
            certs,
        }
    }

    /// Follows `source` forever: every new snapshot, and a periodic tick for retries and drift
    /// checks, triggers a pass.
    pub async fn run(
        mut self,
        mut source: watch::Receiver<SourceState>,
        directory: watch::Sender<Arc<Directory>>,
    ) {
        loop {
            let state = source.borrow_and_update().clone();
            *self
                .board
                .source_error
                .write()
                .unwrap_or_else(|p| p.into_inner()) = state.error.clone();
            if state.synced {
                directory.send_replace(Arc::new(Directory::new(
                    &state.snapshot,
                    &self.config.daemon,
                )));
                self.pass(&state.snapshot).await;
                self.board
                    .ready
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            tokio::select! {
                changed = source.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// One reconciliation pass over `snapshot`.
    async fn pass(&mut self, snapshot: &Snapshot) {
        let mut statuses = BTreeMap::new();
        let mut wanted: HashMap<&str, &Pod> = HashMap::new();
        for pod in snapshot.pods.iter().filter(|p| p.node == self.config.node) {
            let decision = decide(pod, snapshot, &self.config.daemon);
            if decision.is_enrolled() {
                wanted.insert(pod.uid.as_str(), pod);
            } else {
                statuses.insert(pod.key(), not_enrolled(pod, decision));
            }
        }
        // Certificates are issued only for identities of pods this node captures.
        let identities = wanted
            .values()
            .filter_map(|p| self.identity_of(p).ok())
            .collect();
        self.certs.set_allowed(identities);
        // Release first: a pod that left, or whose capture-relevant spec changed.
        let stale: Vec<String> = self
            .entries
            .iter()
            .filter(|(uid, e)| match wanted.get(uid.as_str()) {
                None => true,
                Some(pod) => entry_fingerprint(e) != &capture_fingerprint(pod, snapshot),
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            if let Some(entry) = self.entries.remove(&uid) {
                self.release(entry).await;
            }
        }
        for (uid, pod) in wanted {
            let entry = match self.entries.remove(uid) {
                Some(Entry::Enrolled(e)) => Entry::Enrolled(self.verify(e).await),
                Some(Entry::Failed(f)) if Instant::now() < f.retry_at => Entry::Failed(f),
                Some(Entry::Failed(f)) => self.enroll(pod, snapshot, f.attempts).await,
                None => self.enroll(pod, snapshot, 0).await,
            };
            statuses.insert(pod.key(), self.status_of(&entry, snapshot));
            self.entries.insert(uid.to_string(), entry);
        }
        for rejected in snapshot.rejected.iter() {
            statuses.insert(
                rejected.pod.clone(),
                PodStatus {
                    pod: rejected.pod.clone(),
                    uid: String::new(),
                    state: "failed",
                    reason: "entry rejected by the workload source".into(),
                    error: Some(rejected.error.clone()),
                    ips: vec![],
                    rules: None,
                    since_ms: now_ms(),
                },
            );
        }
        self.publish(statuses);
    }

    fn publish(&self, mut statuses: BTreeMap<String, PodStatus>) {
        let mut board = self.board.pods.write().unwrap_or_else(|p| p.into_inner());
        // Keep the time of the last state change, not of the last pass.
        for (key, status) in statuses.iter_mut() {
            if let Some(old) = board.get(key) {
                if old.state == status.state && old.error == status.error {
                    status.since_ms = old.since_ms;
                }
            }
        }
        let count = |s| statuses.values().filter(|p| p.state == s).count() as i64;
        for state in ["enrolled", "failed"] {
            self.metrics
                .pods
                .get_or_create(&OutcomeLabels { outcome: state })
                .set(count(state));
        }
        *board = statuses;
    }

    fn status_of(&self, entry: &Entry, snapshot: &Snapshot) -> PodStatus {
        let pod = entry_pod(entry);
        let reason = format!("{:?}", decide(pod, snapshot, &self.config.daemon));
        let (state, error, rules) = match entry {
            Entry::Enrolled(e) => ("enrolled", None, Some(e.last_outcome)),
            Entry::Failed(f) => ("failed", Some(f.error.clone()), None),
        };
        PodStatus {
            pod: pod.key(),
            uid: pod.uid.clone(),
            state,
            reason,
            error,
            ips: pod.ips.clone(),
            rules,
            since_ms: now_ms(),
        }
    }

    async fn enroll(&mut self, pod: &Pod, snapshot: &Snapshot, previous_attempts: u32) -> Entry {
        match self.try_enroll(pod, snapshot).await {
            Ok(enrolled) => {
                tracing::info!(pod = %pod.key(), rules = enrolled.last_outcome, "pod captured");
                Entry::Enrolled(enrolled)
            }
            Err(error) => {
                let attempts = previous_attempts + 1;
                let backoff = Duration::from_secs(1 << attempts.min(5)).min(MAX_BACKOFF);
                tracing::error!(pod = %pod.key(), %error, retry_in = ?backoff, "pod capture failed");
                self.count_rules("failed");
                Entry::Failed(Failed {
                    pod: pod.clone(),
                    fingerprint: capture_fingerprint(pod, snapshot),
                    error,
                    attempts,
                    retry_at: Instant::now() + backoff,
                })
            }
        }
    }

    fn identity_of(&self, pod: &Pod) -> Result<Identity, String> {
        Identity::new(
            &self.config.trust_domain,
            &pod.namespace,
            &pod.service_account,
        )
        .map_err(|e| e.to_string())
    }

    /// The pod's identity, HBONE pool, server credentials and inbound mode. The certificate
    /// is issued here, so a pod whose identity cannot be served fails enrollment.
    fn security_for(
        &self,
        pod: &Pod,
        snapshot: &Snapshot,
        netns: &NetNs,
    ) -> Result<PodSecurity, String> {
        let identity = self.identity_of(pod)?;
        self.certs.get(&identity).map_err(|e| e.to_string())?;
        let (certs, id) = (self.certs.clone(), identity.clone());
        let client_tls: ClientTls = Arc::new(move |expected| {
            certs
                .client_config(&id, vec![expected.clone()])
                .map_err(|e| e.to_string())
        });
        let (certs, id) = (self.certs.clone(), identity.clone());
        let server_tls: ServerTls =
            Arc::new(move || certs.server_config(&id).map_err(|e| e.to_string()));
        let strict = match snapshot
            .namespace_labels(&pod.namespace)
            .and_then(|l| l.get(MTLS_MODE_LABEL))
            .map(String::as_str)
        {
            Some("strict") => true,
            Some("permissive") => false,
            Some(other) => {
                return Err(format!(
                    "namespace {} label {MTLS_MODE_LABEL}={other:?} is not valid (expected strict or permissive)",
                    pod.namespace
                ))
            }
            None => self.config.strict_by_default,
        };
        Ok(PodSecurity {
            identity,
            pool: Pool::new(
                netns.clone(),
                client_tls,
                self.config.pool_idle,
                self.metrics.hbone_dials.clone(),
            ),
            server_tls,
            strict,
        })
    }

    async fn try_enroll(&self, pod: &Pod, snapshot: &Snapshot) -> Result<Enrolled, String> {
        let key = pod.key();
        if pod.ips.is_empty() {
            return Err(format!(
                "pod {key} has no IPs (expected at least one address in `ips`)"
            ));
        }
        let options = CaptureOptions::from_annotations(&pod.annotations)
            .map_err(|e| format!("pod {key}: {e}"))?;
        let path = pod
            .netns
            .as_ref()
            .ok_or_else(|| format!("pod {key} has no network namespace path (expected `netns`)"))?;
        let netns = NetNs::open(path).map_err(|e| format!("pod {key}: {e}"))?;
        confirm_ips(&netns, &pod.ips).map_err(|e| format!("pod {key}: {e}"))?;
        let security = self
            .security_for(pod, snapshot, &netns)
            .map_err(|e| format!("pod {key}: {e}"))?;
        let proxy = PodProxy::start(
            self.ctx.clone(),
            Arc::new(pod.clone()),
            netns.clone(),
            security,
            &self.data_runtime,
        )
        .map_err(|e| format!("pod {key}: {e}"))?;
        let rules = PodRules {
            netns,
            backend: self.config.backend,
            options,
        };
        let r = rules.clone();
        let result = blocking(move || r.apply()).await?;
        match result {
            Ok(outcome) => {
                let label = outcome_label(outcome);
                self.count_rules(label);
                Ok(Enrolled {
                    pod: pod.clone(),
                    fingerprint: capture_fingerprint(pod, snapshot),
                    rules,
                    _proxy: proxy,
                    last_outcome: label,
                    next_verify: Instant::now() + self.config.verify_interval,
                })
            }
            Err(e) => {
                // Nothing half-installed: take back whatever part of the rules went in.
                let _ = blocking(move || rules.remove()).await;
                drop(proxy);
                Err(format!("pod {key}: {e}"))
            }
        }
    }

    /// Re-checks a captured pod's rules when due; drift is repaired by the apply.
    async fn verify(&self, mut e: Enrolled) -> Enrolled {
        if Instant::now() < e.next_verify {
            return e;
        }
        e.next_verify = Instant::now() + self.config.verify_interval;
        let rules = e.rules.clone();
        let result = match blocking(move || rules.apply()).await {
            Ok(x) => x,
            Err(join) => {
                tracing::error!(pod = %e.pod.key(), error = %join, "rule check did not run");
                return e;
            }
        };
        match result {
            Ok(outcome) => {
                let label = outcome_label(outcome);
                if outcome == ApplyOutcome::Repaired {
                    tracing::warn!(pod = %e.pod.key(), "redirect rules had drifted; repaired");
                }
                self.count_rules(label);
                e.last_outcome = label;
            }
            Err(err) => {
                tracing::error!(pod = %e.pod.key(), error = %err, "rule check failed");
                self.count_rules("failed");
            }
        }
        e
    }

    async fn release(&self, entry: Entry) {
        let Entry::Enrolled(e) = entry else { return };
        let key = e.pod.key();
        let Enrolled { rules, _proxy, .. } = e;
        match blocking(move || rules.remove()).await {
            Ok(Ok(())) => tracing::info!(pod = %key, "pod released"),
            Ok(Err(err)) => tracing::error!(pod = %key, error = %err, "removing rules failed"),
            Err(err) => tracing::error!(pod = %key, error = %err, "removing rules did not run"),
        }
        drop(_proxy);
    }

    fn count_rules(&self, outcome: &'static str) {
        self.metrics
            .rule_applies
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

fn entry_pod(e: &Entry) -> &Pod {
    match e {
        Entry::Enrolled(e) => &e.pod,
        Entry::Failed(f) => &f.pod,
    }
}

/// Everything that shapes a pod's capture; when it changes, the capture is re-done.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    pod: Pod,
    mtls_mode: Option<String>,
}

fn capture_fingerprint(pod: &Pod, snapshot: &Snapshot) -> Fingerprint {
    // Labels only matter through enrollment, which is decided separately.
    let pod = Pod {
        labels: Default::default(),
        ..pod.clone()
    };
    let mtls_mode = snapshot
        .namespace_labels(&pod.namespace)
        .and_then(|l| l.get(MTLS_MODE_LABEL))
        .cloned();
    Fingerprint { pod, mtls_mode }
}

fn entry_fingerprint(e: &Entry) -> &Fingerprint {
    match e {
        Entry::Enrolled(e) => &e.fingerprint,
        Entry::Failed(f) => &f.fingerprint,
    }
}

fn not_enrolled(pod: &Pod, decision: Decision) -> PodStatus {
    PodStatus {
        pod: pod.key(),
        uid: pod.uid.clone(),
        state: "not-enrolled",
        reason: format!("{decision:?}"),
        error: None,
        ips: pod.ips.clone(),
        rules: None,
        since_ms: now_ms(),
    }
}

fn outcome_label(o: ApplyOutcome) -> &'static str {
    match o {
        ApplyOutcome::Installed => "installed",
        ApplyOutcome::Unchanged => "unchanged",
        ApplyOutcome::Repaired => "repaired",
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("background task failed: {e}"))
}

/// Checks that the pod's IPs are configured inside `netns`: binding to an address the
/// namespace does not own fails with EADDRNOTAVAIL. This catches a netns path that points at
/// the wrong namespace.
fn confirm_ips(netns: &NetNs, ips: &[IpAddr]) -> Result<(), String> {
    netns
        .run(|| {
            for ip in ips {
                let domain = socket2::Domain::for_address(SocketAddr::new(*ip, 0));
                let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)
                    .map_err(|e| format!("cannot check pod IP {ip}: {e}"))?;
                if let Err(e) = s.bind(&SocketAddr::new(*ip, 0).into()) {
                    return Err(format!(
                        "pod IP {ip} is not configured in network namespace {}: {e}",
                        netns.path().display()
                    ));
                }
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?
}
