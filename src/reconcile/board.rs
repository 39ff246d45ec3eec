//! What the reconciler shows: each local pod's capture state, readiness, and the source's
//! error, read by the admin and readiness endpoints.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::capture::CaptureOptions;
use crate::hbone::pool::{Pool, PooledConnection};
use crate::netns::NetNs;
use crate::rules::Backend;
use crate::workload::enroll::Decision;
use crate::workload::Pod;

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
    pub(super) pods: RwLock<BTreeMap<String, PodStatus>>,
    pub(super) ready: std::sync::atomic::AtomicBool,
    pub(super) source_error: RwLock<Option<String>>,
    /// The security policy in force and the pods it is shown for (`/policies`).
    pub policies: super::PolicyBoard,
    /// Captured pods by `namespace/name`, with what `ambit explain` reads in their netns.
    pub(super) captured: RwLock<BTreeMap<String, CapturedPod>>,
    /// Each enrolled pod's identity and HBONE pool, for the config dump. Weak: the dump must
    /// not keep a released pod's pool (and its connections) alive.
    pools: RwLock<BTreeMap<String, (String, Weak<Pool>)>>,
}

/// A captured pod as installed: where its rules are and what they were built from.
#[derive(Clone, Debug)]
pub struct CapturedPod {
    /// The pod.
    pub pod: Pod,
    /// Its network namespace.
    pub netns: NetNs,
    /// The rule backend its rules were installed with.
    pub backend: Backend,
    /// The capture options its rules were built from.
    pub options: CaptureOptions,
}

/// One pod's outbound HBONE pool, as the config dump shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PodPoolView {
    /// `namespace/name` of the pod.
    pub pod: String,
    /// The identity it presents to peers.
    pub identity: String,
    /// Its pooled connections.
    pub connections: Vec<PooledConnection>,
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

    /// The captured pod `key` (`namespace/name`), if it is captured now.
    pub fn captured(&self, key: &str) -> Option<CapturedPod> {
        read(&self.captured).get(key).cloned()
    }

    /// The workload source's current error, if any.
    pub fn source_error(&self) -> Option<String> {
        read(&self.source_error).clone()
    }

    /// Every enrolled pod's HBONE pool and its connections, by pod.
    pub fn pools(&self) -> Vec<PodPoolView> {
        read(&self.pools)
            .iter()
            .filter_map(|(pod, (identity, pool))| {
                Some(PodPoolView {
                    pod: pod.clone(),
                    identity: identity.clone(),
                    connections: pool.upgrade()?.connections(),
                })
            })
            .collect()
    }

    pub(super) fn show_pool(&self, pod: &str, identity: String, pool: &Arc<Pool>) {
        write(&self.pools).insert(pod.to_string(), (identity, Arc::downgrade(pool)));
    }

    pub(super) fn hide_pool(&self, pod: &str) {
        write(&self.pools).remove(pod);
    }
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) fn not_enrolled(pod: &Pod, decision: Decision) -> PodStatus {
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
