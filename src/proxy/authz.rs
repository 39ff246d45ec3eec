//! Policy enforcement at the destination: every inbound connection (15006 plaintext, 15008
//! HBONE) is decided by the current [`PolicySnapshot`] before any byte reaches the app, and
//! stays registered while it lives, so that a policy change closes the connections it now
//! denies — as ztunnel's connection manager does (istio/ztunnel
//! `src/proxy/connection_manager.rs`: `assert_rbac` registers the connection, the policy
//! watcher re-evaluates every registered one on each policy update and closes the violators).
//!
//! A connection is registered *before* it is decided: a policy published in between is then
//! either seen by the decision or re-evaluated with the registered connection, never missed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::watch;

use super::PodScope;
use crate::flows::Flow;
use crate::identity::Identity;
use crate::metrics::{Metrics, PolicyLabels, NO_ALLOW_MATCHED};
use crate::policy::{ConnInfo, Decision, PolicySnapshot, Reason};
use crate::workload::Pod;

/// The facts of one inbound connection that policies look at.
#[derive(Clone, Debug)]
pub struct Inbound {
    /// The destination pod (whose listener accepted the connection).
    pub pod: Arc<Pod>,
    /// The client's address as the kernel reports it: the peer of the TCP connection that
    /// reached the listener (for HBONE, the outer connection — see `proxy::tunnel`).
    pub src_ip: IpAddr,
    /// The client's verified identity (HBONE); `None` for plaintext.
    pub identity: Option<Arc<Identity>>,
    /// The application address the client asked for.
    pub dst: SocketAddr,
}

impl Inbound {
    fn info(&self) -> ConnInfo<'_> {
        ConnInfo {
            src_ip: self.src_ip,
            src_identity: self.identity.as_deref(),
            dst_ip: self.dst.ip(),
            dst_port: self.dst.port(),
        }
    }
}

/// One registered connection. Its verdict slot lives here rather than in a channel of its own:
/// every live inbound connection holds one, so it is kept to one allocation (see
/// `benches/README.md`, idle memory).
struct Tracked {
    conn: Inbound,
    /// Set, once, when a policy change denies the connection; the decision is then in
    /// `verdict` until the connection takes it.
    denied: AtomicBool,
    verdict: Mutex<Option<Box<Decision>>>,
    /// The connection's task, woken when `denied` is set.
    waker: AtomicWaker,
}

/// The live inbound connections of the daemon (all pods).
#[derive(Default)]
pub struct LiveConns {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Tracked>>>,
}

/// A connection's place in [`LiveConns`]; dropping it (when the connection ends) removes it.
pub struct Registration {
    id: u64,
    table: Arc<LiveConns>,
    tracked: Arc<Tracked>,
}

impl Registration {
    /// Completes with the decision when a policy change denies this connection; never
    /// completes otherwise (nor again, once it has).
    pub fn denied(&self) -> Denied<'_> {
        Denied(&self.tracked)
    }
}

/// [`Registration::denied`]: polled with every poll of the connection's copy, so the common
/// case (not denied) takes no lock: two atomic loads and the waker's registration, which does
/// not clone a waker that is unchanged.
pub struct Denied<'a>(&'a Tracked);

impl std::future::Future for Denied<'_> {
    type Output = Decision;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Decision> {
        let tracked = self.0;
        if !tracked.denied.load(Ordering::Acquire) {
            tracked.waker.register(cx.waker());
            // Checked again: a denial set between the load and the registration woke no one.
            if !tracked.denied.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        match lock(&tracked.verdict).take() {
            Some(decision) => Poll::Ready(*decision),
            // Taken by an earlier poll: the connection has been told.
            None => Poll::Pending,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.table.live).remove(&self.id);
    }
}

/// A poisoned lock only means another thread panicked mid-update; the map is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LiveConns {
    /// Registers a connection until the returned registration is dropped.
    pub fn register(self: &Arc<Self>, conn: Inbound) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tracked = Arc::new(Tracked {
            conn,
            denied: AtomicBool::new(false),
            verdict: Mutex::new(None),
            waker: AtomicWaker::new(),
        });
        lock(&self.live).insert(id, tracked.clone());
        Registration {
            id,
            table: self.clone(),
            tracked,
        }
    }

    /// Number of registered connections.
    pub fn len(&self) -> usize {
        lock(&self.live).len()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides every live connection again with `policy` and tells those it denies; returns
    /// how many were denied. The decisions run outside the lock, so new connections are not
    /// held up.
    pub fn reevaluate(&self, policy: &PolicySnapshot) -> usize {
        let all: Vec<Arc<Tracked>> = lock(&self.live).values().cloned().collect();
        let mut denied = 0;
        for t in all {
            let decision = policy.decide(&t.conn.pod, &t.conn.info());
            if decision.allowed {
                continue;
            }
            // Only this list holds it now: the connection ended meanwhile, nobody to tell.
            if Arc::strong_count(&t) == 1 {
                continue;
            }
            let mut verdict = lock(&t.verdict);
            // Told once: a connection already denied keeps its first decision.
            if t.denied.load(Ordering::Acquire) {
                continue;
            }
            *verdict = Some(Box::new(decision));
            t.denied.store(true, Ordering::Release);
            drop(verdict);
            t.waker.wake();
            denied += 1;
        }
        denied
    }

    /// Follows `policy` until its sender is gone: each new snapshot re-evaluates the live
    /// connections.
    pub async fn follow(self: Arc<Self>, mut policy: watch::Receiver<Arc<PolicySnapshot>>) {
        while policy.changed().await.is_ok() {
            let snapshot = policy.borrow_and_update().clone();
            let closed = self.reevaluate(&snapshot);
            if closed > 0 {
                tracing::info!(closed, "policy changed: closing live connections it denies");
            }
        }
    }
}

/// Registers `conn` and decides it with the current policy, recording the decision on `flow`.
/// Denied: counted per policy, and the decision returned (the caller refuses the connection).
pub(crate) fn admit(
    scope: &PodScope,
    flow: &Flow,
    conn: Inbound,
) -> Result<Registration, Decision> {
    let registration = scope.ctx.live.register(conn);
    // Clone the Arc so the channel's lock is not held while deciding.
    let policy = scope.ctx.policy.borrow().clone();
    let t = &registration.tracked;
    let decision = policy.decide(&t.conn.pod, &t.conn.info());
    flow.set_policy(&decision);
    if decision.allowed {
        Ok(registration)
    } else {
        count_denial(&scope.ctx.metrics, &decision);
        Err(decision)
    }
}

/// Records on `flow` that a policy change closed it.
pub(crate) fn closed_by_policy(scope: &PodScope, flow: &Flow, decision: &Decision) {
    flow.set_policy(decision);
    flow.fail(format!("closed by a policy change: {}", denial(decision)));
    count_denial(&scope.ctx.metrics, decision);
}

fn count_denial(metrics: &Metrics, decision: &Decision) {
    let policy = match &decision.policy {
        Some(p) => p.to_string(),
        None => NO_ALLOW_MATCHED.to_string(),
    };
    metrics
        .policy_denials
        .get_or_create(&PolicyLabels { policy })
        .inc();
}

/// Why a connection was denied, naming the policy: `denied by AuthorizationPolicy shop/x
/// (DENY matched)`.
pub(crate) fn denial(decision: &Decision) -> String {
    match (&decision.reason, &decision.policy) {
        (Reason::InvalidPolicy(why), Some(p)) => {
            format!("denied by {p} (rejected, fails closed): {why}")
        }
        (Reason::PlaintextRefused, Some(p)) => {
            format!("denied by {p} (plaintext refused: mTLS STRICT)")
        }
        (Reason::DenyMatched, Some(p)) => format!("denied by {p} (DENY matched)"),
        (Reason::NoAllowMatched(n), _) => {
            format!("denied: ALLOW policies apply ({n}) and none matched")
        }
        _ => decision.to_string(),
    }
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
