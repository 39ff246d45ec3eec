//! The parts of capturing one pod that do not depend on the reconciler's loop: its rules, its
//! credentials, what makes two versions of it "the same capture", and the check that a netns
//! really is the pod's. (Its inbound mTLS mode is the policy engine's, decided per connection.)

use std::sync::{Arc, OnceLock};

use super::ReconcileConfig;
use crate::capture::CaptureOptions;
use crate::identity::manager::CertManager;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::netns::NetNs;
use crate::proxy::PodSecurity;
use crate::rules::{self, ApplyOutcome, Backend, Families};
use crate::workload::Pod;

/// What is needed to (re)apply or remove one pod's rules.
#[derive(Clone)]
pub(super) struct PodRules {
    pub netns: NetNs,
    pub backend: Backend,
    pub options: CaptureOptions,
}

impl PodRules {
    pub fn apply(&self) -> Result<ApplyOutcome, rules::RulesError> {
        rules::apply(&self.netns, self.backend, &self.options, Families::BOTH)
    }

    pub fn remove(&self) -> Result<(), rules::RulesError> {
        rules::remove(&self.netns, self.backend)
    }
}

pub(super) fn identity_of(config: &ReconcileConfig, pod: &Pod) -> Result<Identity, String> {
    Identity::new(&config.trust_domain, &pod.namespace, &pod.service_account)
        .map_err(|e| e.to_string())
}

/// The pod's identity, HBONE pool and server credentials. The certificate is issued here, so
/// a pod whose identity cannot be served fails enrollment.
pub(super) fn security_for(
    config: &ReconcileConfig,
    certs: &Arc<CertManager>,
    metrics: &Metrics,
    pod: &Pod,
    netns: &NetNs,
) -> Result<PodSecurity, String> {
    let identity = identity_of(config, pod)?;
    certs.get(&identity).map_err(|e| e.to_string())?;
    Ok(PodSecurity::new(
        identity,
        certs,
        crate::socket::Placement::Ambient(netns.clone()),
        config.pool_idle,
        metrics.dial_counters(),
    ))
}

/// Everything that shapes a pod's capture; when it changes, the capture is re-done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Fingerprint {
    pod: Pod,
}

pub(super) fn capture_fingerprint(pod: &Pod) -> Fingerprint {
    // Labels (and annotations such as sidecar.istio.io/status) matter only through
    // enrollment, which is decided separately; of the annotations only the capture ones shape
    // the rules — the one the daemon writes itself must not look like a change.
    let mut pod = Pod {
        labels: Default::default(),
        ..pod.clone()
    };
    pod.annotations
        .retain(|k, _| crate::capture::CAPTURE_ANNOTATIONS.contains(&k.as_str()));
    Fingerprint { pod }
}

pub(super) fn outcome_label(o: ApplyOutcome) -> &'static str {
    match o {
        ApplyOutcome::Installed => "installed",
        ApplyOutcome::Unchanged => "unchanged",
        ApplyOutcome::Repaired => "repaired",
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("background task failed: {e}"))
}

/// Runs `f` on the housekeeping thread, which stays at `SCHED_IDLE` priority, and so do the
/// commands it starts. For work that may wait: the periodic rule check starts about eight
/// short-lived tools per pod, and at normal priority those took the cores from the data path
/// on a busy node (stalls of several ms every check, `benches/README.md`). At `SCHED_IDLE` any
/// woken data thread preempts them. One long-lived thread, because a thread cannot leave
/// `SCHED_IDLE` without `CAP_SYS_NICE`; jobs run one at a time, in order.
pub(super) async fn background<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    housekeeper()?
        .send(job)
        .map_err(|_| "the housekeeping thread has stopped".to_string())?;
    rx.await
        .map_err(|_| "a housekeeping job panicked".to_string())
}

type Job = Box<dyn FnOnce() + Send>;

/// The housekeeping thread's queue; the thread starts on first use.
fn housekeeper() -> Result<&'static std::sync::mpsc::Sender<Job>, String> {
    static QUEUE: OnceLock<Result<std::sync::mpsc::Sender<Job>, String>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("ambit-housekeep".into())
                .spawn(move || {
                    if let Err(e) = lower_to_idle_priority() {
                        // Only latency is at stake; the work itself must still run.
                        tracing::warn!(error = %e, "housekeeping runs at normal priority: cannot set SCHED_IDLE");
                    }
                    for job in rx {
                        // A panicking job loses its own result, not the thread.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })
                .map(|_| tx)
                .map_err(|e| format!("cannot start the housekeeping thread: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Puts the calling thread (and the processes it will spawn) in the `SCHED_IDLE` class.
fn lower_to_idle_priority() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; `param` is a valid sched_param for SCHED_IDLE.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_work_runs_at_idle_priority_and_survives_a_panic() {
        let policy = background(|| unsafe { libc::sched_getscheduler(0) })
            .await
            .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        // The caller's own thread keeps its class.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
        // Commands started from it inherit the class: the child reports its own policy
        // (field 41 of /proc/self/stat; SCHED_IDLE is 5).
        let stat = background(|| {
            std::process::Command::new("cat")
                .arg("/proc/self/stat")
                .output()
        })
        .await
        .unwrap()
        .expect("cat runs");
        let text = String::from_utf8_lossy(&stat.stdout).into_owned();
        let after_comm = &text[text.rfind(')').expect("comm in parentheses") + 2..];
        // Fields from 3 on follow the comm: field 41 is the 39th of them.
        let policy: i32 = after_comm
            .split(' ')
            .nth(38)
            .expect("field 41")
            .parse()
            .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE, "{text}");
        let failed = background(|| -> u8 { panic!("a failing job") }).await;
        assert!(failed.unwrap_err().contains("panicked"));
        assert_eq!(background(|| 7).await, Ok(7));
    }

    #[test]
    fn only_capture_annotations_change_the_fingerprint() {
        let pod = Pod {
            uid: "u".into(),
            name: "p".into(),
            namespace: "ns".into(),
            ..Pod::default()
        };
        let base = capture_fingerprint(&pod);
        let mut other = pod.clone();
        other.annotations.insert(
            crate::k8s::status::REDIRECTION_ANNOTATION.into(),
            "enabled".into(),
        );
        other.labels.insert("app".into(), "x".into());
        assert_eq!(capture_fingerprint(&other), base);
        other
            .annotations
            .insert(crate::capture::EXCLUDE_INBOUND_PORTS.into(), "9090".into());
        assert_ne!(capture_fingerprint(&other), base);
    }
}
