//! The enrollment reconciler: makes the set of captured pods on this node equal to the set the
//! enrollment rules select, and keeps each captured pod's rules intact.
//!
//! For every local pod that should be captured it checks the input (IPs, annotations, netns),
//! opens the proxy's listeners inside the pod, then installs the redirect rules — in that order,
//! so that the rules never point at ports nobody listens on. A pod that cannot be captured is
//! reported as failed (admin `/pods`, metrics, log) with the reason, and retried with backoff;
//! nothing of it is left half-installed. A pod that leaves is released: rules first, then
//! listeners.

mod board;
mod lifecycle;
pub mod memory;
mod pod;
mod policies;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use board::{not_enrolled, now_ms};
pub use board::{CapturedPod, PodPoolView, PodStatus, StatusBoard};
use pod::{blocking, capture_fingerprint, Fingerprint, PodRules};
use policies::PolicyPublisher;
pub use policies::{policy_config, PoliciesView, PolicyBoard};

pub use crate::config::ReconcileConfig;
use crate::identity::manager::CertManager;
use crate::identity::Identity;
use crate::k8s::status::{CaptureEvent, CaptureObserver, ObjectKey};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::policy::PolicySnapshot;
use crate::proxy::{PodProxy, ProxyContext};
use crate::workload::enroll::{decide, DATAPLANE_MODE_LABEL};
use crate::workload::file::SourceState;
use crate::workload::{Directory, Pod, Snapshot};

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
    observer: Arc<dyn CaptureObserver>,
    /// Problems already reported through the observer, so each is reported once.
    reported: HashSet<(String, String)>,
    /// What was last saved to the capture memory.
    remembered: Option<BTreeMap<String, memory::Remembered>>,
    /// Compiles the security policy of each new snapshot.
    policies: PolicyPublisher,
}

impl Reconciler {
    /// A reconciler that starts pod proxies on `data_runtime` with credentials from `certs`.
    pub fn new(
        config: ReconcileConfig,
        ctx: ProxyContext,
        data_runtime: tokio::runtime::Handle,
        board: Arc<StatusBoard>,
        certs: Arc<CertManager>,
        observer: Arc<dyn CaptureObserver>,
    ) -> Self {
        let metrics = ctx.metrics.clone();
        Reconciler {
            policies: PolicyPublisher::new(&config),
            config,
            ctx,
            data_runtime,
            entries: HashMap::new(),
            board,
            metrics,
            certs,
            observer,
            reported: HashSet::new(),
            remembered: None,
        }
    }

    /// Follows `source` forever: every new snapshot, and a periodic tick for retries and drift
    /// checks, triggers a pass. Each new snapshot's directory and security policy are
    /// published first, so pods captured by the pass start with both.
    pub async fn run(
        mut self,
        mut source: watch::Receiver<SourceState>,
        directory: watch::Sender<Arc<Directory>>,
        policy: watch::Sender<Arc<PolicySnapshot>>,
    ) {
        let memory_path = self.config.state_dir.as_ref().map(|d| memory::path_in(d));
        let mut previous = memory_path.as_deref().map(memory::load);
        let mut last: Option<Arc<Snapshot>> = None;
        loop {
            let state = source.borrow_and_update().clone();
            *self
                .board
                .source_error
                .write()
                .unwrap_or_else(|p| p.into_inner()) = state.error.clone();
            if state.synced {
                if !last
                    .as_ref()
                    .is_some_and(|l| Arc::ptr_eq(l, &state.snapshot))
                {
                    directory.send_replace(Arc::new(Directory::new(
                        &state.snapshot,
                        &self.config.daemon,
                    )));
                    let board = &self.board.policies;
                    self.policies
                        .publish(&state.snapshot, &policy, board, &*self.observer);
                    last = Some(state.snapshot.clone());
                }
                self.pass(&state.snapshot).await;
                self.board.policies.show_pods(self.enrolled_pods());
                // After the first pass, anything captured by a previous run that is not
                // captured now belongs to a pod that left: take its rules back.
                if let Some(prev) = previous.take() {
                    self.forget_departed(prev).await;
                }
                if let Some(path) = &memory_path {
                    self.remember(path);
                }
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
            .filter_map(|p| pod::identity_of(&self.config, p).ok())
            .collect();
        self.certs.set_allowed(identities);
        // Release first: a pod that left, or whose capture-relevant spec changed.
        let stale: Vec<String> = self
            .entries
            .iter()
            .filter(|(uid, e)| match wanted.get(uid.as_str()) {
                None => true,
                Some(pod) => entry_fingerprint(e) != &capture_fingerprint(pod),
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            if let Some(entry) = self.entries.remove(&uid) {
                self.release(entry).await;
            }
        }
        // Certificates for the pods about to be (re)tried are asked for together, before
        // enrolling: enrollment then only checks that one is held, and fails without it.
        let due: Vec<Identity> = wanted
            .iter()
            .filter(|(uid, _)| match self.entries.get(**uid) {
                None => true,
                Some(Entry::Failed(f)) => Instant::now() >= f.retry_at,
                Some(Entry::Enrolled(_)) => false,
            })
            .filter_map(|(_, p)| pod::identity_of(&self.config, p).ok())
            .collect();
        if !due.is_empty() {
            self.certs.ensure_all(due).await;
        }
        for (uid, pod) in wanted {
            let entry = match self.entries.remove(uid) {
                Some(Entry::Enrolled(e)) => Entry::Enrolled(self.verify(e).await),
                Some(Entry::Failed(f)) if Instant::now() < f.retry_at => Entry::Failed(f),
                Some(Entry::Failed(f)) => self.enroll(pod, f.attempts).await,
                None => self.enroll(pod, 0).await,
            };
            statuses.insert(pod.key(), self.status_of(&entry, snapshot));
            self.entries.insert(uid.to_string(), entry);
        }
        self.report_bad_input(snapshot);
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
        drop(board);
        let captured = self
            .entries
            .values()
            .filter_map(|e| match e {
                Entry::Enrolled(e) => Some(CapturedPod {
                    pod: e.pod.clone(),
                    netns: e.rules.netns.clone(),
                    backend: e.rules.backend,
                    options: e.rules.options.clone(),
                }),
                Entry::Failed(_) => None,
            })
            .map(|c| (c.pod.key(), c))
            .collect();
        *self
            .board
            .captured
            .write()
            .unwrap_or_else(|p| p.into_inner()) = captured;
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

    /// Removes the rules a previous run installed for pods that are no longer captured.
    async fn forget_departed(&self, previous: BTreeMap<String, memory::Remembered>) {
        for (uid, was) in previous {
            if matches!(self.entries.get(&uid), Some(Entry::Enrolled(_))) {
                continue;
            }
            let Some(netns) = was.reopen() else { continue };
            let backend = self.config.backend;
            match blocking(move || crate::rules::remove(&netns, backend)).await {
                Ok(Ok(())) => {
                    tracing::info!(pod = %was.pod, "removed rules left by a previous run")
                }
                Ok(Err(e)) => {
                    tracing::warn!(pod = %was.pod, error = %e, "could not remove rules left by a previous run")
                }
                Err(e) => tracing::warn!(pod = %was.pod, error = %e, "rule removal did not run"),
            }
        }
    }

    /// Saves what is captured now, when it changed.
    fn remember(&mut self, path: &std::path::Path) {
        let now: BTreeMap<String, memory::Remembered> = self
            .entries
            .iter()
            .filter_map(|(uid, e)| match e {
                Entry::Enrolled(e) => Some((
                    uid.clone(),
                    memory::Remembered::new(e.pod.key(), &e.rules.netns),
                )),
                Entry::Failed(_) => None,
            })
            .collect();
        if self.remembered.as_ref() != Some(&now) {
            if let Err(e) = memory::save(path, &now) {
                tracing::warn!(path = %path.display(), error = %e, "could not save capture memory");
            }
            self.remembered = Some(now);
        }
    }

    /// Reports a problem through the observer, once per object and message.
    fn report(&mut self, object: ObjectKey, error: &str) {
        let id = match object.namespace.as_str() {
            "" => object.name.clone(),
            ns => format!("{ns}/{}", object.name),
        };
        if self.reported.insert((id, error.to_string())) {
            self.observer
                .notify(CaptureEvent::Failed(object, error.to_string()));
        }
    }

    /// Reports objects the source rejected and labels with values nobody understands.
    fn report_bad_input(&mut self, snapshot: &Snapshot) {
        for rejected in &snapshot.rejected {
            let (ns, name) = rejected.pod.split_once('/').unwrap_or(("", &rejected.pod));
            self.report(ObjectKey::pod(ns, name), &rejected.error);
        }
        for ns in &snapshot.namespaces {
            if let Some(v) = ns.labels.get(DATAPLANE_MODE_LABEL) {
                if v != "ambient" && v != "none" {
                    let msg = format!(
                        "namespace {} label {DATAPLANE_MODE_LABEL}={v:?} is not understood (expected ambient or none); its pods are not enrolled by it",
                        ns.name
                    );
                    tracing::warn!("{msg}");
                    self.report(ObjectKey::namespace(&ns.name), &msg);
                }
            }
        }
    }

    /// The pods captured now, sorted by key.
    fn enrolled_pods(&self) -> Vec<Pod> {
        let mut pods: Vec<Pod> = self
            .entries
            .values()
            .filter_map(|e| match e {
                Entry::Enrolled(e) => Some(e.pod.clone()),
                Entry::Failed(_) => None,
            })
            .collect();
        pods.sort_by_key(Pod::key);
        pods
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

fn entry_fingerprint(e: &Entry) -> &Fingerprint {
    match e {
        Entry::Enrolled(e) => &e.fingerprint,
        Entry::Failed(f) => &f.fingerprint,
    }
}
