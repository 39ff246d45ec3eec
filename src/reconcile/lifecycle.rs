//! One pod's way through the reconciler: enroll (netns found and confirmed, credentials,
//! listeners, then rules — rolled back as a whole on any failure), periodic verification that
//! repairs drift, and release.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pod::{self, background, blocking, capture_fingerprint, outcome_label, PodRules};
use super::{entry_pod, Enrolled, Entry, Failed, Reconciler};
use crate::capture::CaptureOptions;
use crate::config::MAX_ENROLL_BACKOFF;
use crate::k8s::status::{CaptureEvent, ObjectKey};
use crate::netns::NetNs;
use crate::proxy::PodProxy;
use crate::rules::ApplyOutcome;
use crate::workload::Pod;

impl Reconciler {
    pub(super) async fn enroll(&mut self, pod: &Pod, previous_attempts: u32) -> Entry {
        match self.try_enroll(pod).await {
            Ok(enrolled) => {
                tracing::info!(pod = %pod.key(), rules = enrolled.last_outcome, "pod captured");
                let key = pod.key();
                self.reported.retain(|(k, _)| *k != key);
                self.observer.notify(CaptureEvent::Captured(ObjectKey::pod(
                    &pod.namespace,
                    &pod.name,
                )));
                Entry::Enrolled(enrolled)
            }
            Err(error) => {
                let attempts = previous_attempts + 1;
                let backoff = Duration::from_secs(1 << attempts.min(5)).min(MAX_ENROLL_BACKOFF);
                tracing::error!(pod = %pod.key(), %error, retry_in = ?backoff, "pod capture failed");
                self.count_rules("failed");
                self.report(ObjectKey::pod(&pod.namespace, &pod.name), &error);
                Entry::Failed(Failed {
                    pod: pod.clone(),
                    fingerprint: capture_fingerprint(pod),
                    error,
                    attempts,
                    retry_at: Instant::now() + backoff,
                })
            }
        }
    }

    async fn try_enroll(&self, pod: &Pod) -> Result<Enrolled, String> {
        let key = pod.key();
        if pod.ips.is_empty() {
            return Err(format!(
                "pod {key} has no IPs (expected at least one address in `ips`)"
            ));
        }
        let options = CaptureOptions::from_annotations(&pod.annotations)
            .map_err(|e| format!("pod {key}: {e}"))?;
        let netns = self
            .find_netns(pod)
            .await
            .map_err(|e| format!("pod {key}: {e}"))?;
        let security = pod::security_for(&self.config, &self.certs, &self.metrics, pod, &netns)
            .map_err(|e| format!("pod {key}: {e}"))?;
        let pool = (security.identity.to_string(), security.pool.clone());
        let proxy = PodProxy::start(
            self.ctx.clone(),
            Arc::new(pod.clone()),
            crate::socket::Placement::Ambient(netns.clone()),
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
        let result = blocking(move || {
            crate::rules::route::enable_listener_migration(&r.netns);
            r.apply()
        })
        .await?;
        match result {
            Ok(outcome) => {
                let label = outcome_label(outcome);
                self.count_rules(label);
                self.board.show_pool(&key, pool.0, &pool.1);
                Ok(Enrolled {
                    pod: pod.clone(),
                    fingerprint: capture_fingerprint(pod),
                    rules,
                    _proxy: proxy,
                    last_outcome: label,
                    next_verify: Instant::now()
                        + first_check_after(&pod.uid, self.config.verify_interval),
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
    pub(super) async fn verify(&self, mut e: Enrolled) -> Enrolled {
        if Instant::now() < e.next_verify {
            return e;
        }
        e.next_verify = Instant::now() + self.config.verify_interval;
        let rules = e.rules.clone();
        let result = match background(move || rules.apply()).await {
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

    /// The pod's network namespace: the path the source gave, or else found on this node by
    /// cgroup scan and then among pinned namespaces; in every case confirmed to hold the
    /// pod's IPs (a wrong namespace must never be captured).
    async fn find_netns(&self, pod: &Pod) -> Result<NetNs, String> {
        let (path, uid, ips) = (pod.netns.clone(), pod.uid.clone(), pod.ips.clone());
        let finder = crate::podns::Finder {
            host_proc: self.config.host_proc.clone(),
            netns_dir: Some(self.config.netns_dir.clone()),
            netns_prefix: self.config.netns_prefix.clone(),
        };
        blocking(move || match path {
            Some(path) => {
                let netns = NetNs::open(&path).map_err(|e| e.to_string())?;
                crate::podns::confirm_ips(&netns, &ips).map_err(|e| e.to_string())?;
                Ok(netns)
            }
            None => finder.find(&uid, &ips).map_err(|e| e.to_string()),
        })
        .await?
    }

    pub(super) async fn release(&self, entry: Entry) {
        let pod = entry_pod(&entry);
        self.observer.notify(CaptureEvent::Released(ObjectKey::pod(
            &pod.namespace,
            &pod.name,
        )));
        let Entry::Enrolled(e) = entry else { return };
        let key = e.pod.key();
        self.board.hide_pool(&key);
        let Enrolled { rules, _proxy, .. } = e;
        match blocking(move || rules.remove()).await {
            Ok(Ok(())) => tracing::info!(pod = %key, "pod released"),
            Ok(Err(err)) => tracing::error!(pod = %key, error = %err, "removing rules failed"),
            Err(err) => tracing::error!(pod = %key, error = %err, "removing rules did not run"),
        }
        drop(_proxy);
    }
}

/// When a newly captured pod's rules are first re-checked: somewhere in the second half of
/// `interval`, fixed per pod. Pods captured together (a daemon start, a rollout) would
/// otherwise all be checked in the same pass, every pass.
fn first_check_after(uid: &str, interval: Duration) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    uid.hash(&mut h);
    let fraction = (h.finish() % 1024) as f64 / 1024.0;
    interval.mul_f64(0.5 + fraction / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_checks_spread_over_the_second_half_of_the_interval() {
        let interval = Duration::from_secs(10);
        let firsts: Vec<Duration> = (0..50)
            .map(|i| first_check_after(&format!("uid-{i}"), interval))
            .collect();
        assert!(firsts.iter().all(|d| *d >= interval / 2 && *d < interval));
        let earliest = firsts.iter().min().copied().unwrap_or_default();
        let latest = firsts.iter().max().copied().unwrap_or_default();
        assert!(latest - earliest > interval / 4, "{earliest:?}..{latest:?}");
        assert_eq!(firsts[3], first_check_after("uid-3", interval));
    }
}
