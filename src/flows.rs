//! The record of connections the daemon carried: live ones with their running byte counts, and
//! the most recent finished ones. Served on the admin endpoint, printed by the demo, and what
//! the tests read to know which listener captured a connection. When a flow ends its
//! access-log line is written ([`access`]).

pub mod access;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::policy::Decision;

/// How many finished flows are kept for inspection.
const RECENT_CAPACITY: usize = 4096;

/// Which capture listener accepted a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Listener {
    /// 15001: the pod's own outgoing connections.
    Outbound,
    /// 15006: plaintext connections to the pod.
    Inbound,
    /// 15008: HBONE tunnels to the pod.
    Hbone,
}

impl Listener {
    /// Lower-case name, as in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Outbound => "outbound",
            Listener::Inbound => "inbound",
            Listener::Hbone => "hbone",
        }
    }
}

/// A flow as shown to people and tests.
#[derive(Clone, Debug, Serialize)]
pub struct FlowRecord {
    /// Unique id within this daemon's life.
    pub id: u64,
    /// `namespace/name` of the pod whose listener accepted the connection.
    pub pod: String,
    /// The listener.
    pub listener: Listener,
    /// Client address as the listener saw it.
    pub src: SocketAddr,
    /// Original destination the client asked for.
    pub dst: SocketAddr,
    /// How the connection was carried on (e.g. "passthrough", "app").
    pub route: String,
    /// Where it was carried to, when that differs from `dst` (a Service's chosen endpoint).
    pub upstream: Option<SocketAddr>,
    /// Bytes client → server so far.
    pub bytes_sent: u64,
    /// Bytes server → client so far.
    pub bytes_received: u64,
    /// Start, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// Duration so far (live) or in total (finished).
    pub duration_ms: u64,
    /// Whether the flow has finished.
    pub finished: bool,
    /// Why the flow failed, if it did.
    pub error: Option<String>,
    /// The verified SPIFFE identity of the mesh peer (the client on 15008, the server for an
    /// outbound tunnel).
    pub peer_identity: Option<String>,
    /// The key-exchange group of the HBONE connection's TLS handshake (`X25519MLKEM768`,
    /// `X25519`, ...); the client side reports its pooled connection's.
    pub tls_group: Option<&'static str>,
    /// The inbound policy decision (15006, 15008), naming the policy that allowed or denied,
    /// e.g. `allowed: ALLOW AuthorizationPolicy shop/allow-web matched`.
    pub policy: Option<String>,
}

/// A live flow. Dropping it (or calling [`Flow::finish`]) moves it to the recent list.
pub struct Flow {
    table: Arc<FlowTable>,
    shared: Arc<LiveFlow>,
}

/// A live flow's state. Held for every open connection, so nothing here is allocated per flow
/// that can be shared (the pod's name, the peer's identity) or rendered later (the route,
/// the policy decision): an idle connection's cost is mostly its flow and its task.
struct LiveFlow {
    id: u64,
    pod: Arc<str>,
    listener: Listener,
    src: SocketAddr,
    dst: SocketAddr,
    started: Instant,
    started_ms: u64,
    sent: AtomicU64,
    received: AtomicU64,
    /// Learnt as the connection proceeds, each field written once or twice: one lock for all.
    details: Mutex<Details>,
}

/// The parts of a [`LiveFlow`] its handler fills in.
#[derive(Default)]
struct Details {
    route: &'static str,
    upstream: Option<SocketAddr>,
    error: Option<Box<str>>,
    peer_identity: Option<Arc<str>>,
    tls_group: Option<&'static str>,
    policy: Option<Decision>,
}

impl LiveFlow {
    fn record(&self, finished: bool) -> FlowRecord {
        let details = lock(&self.details);
        FlowRecord {
            id: self.id,
            pod: self.pod.to_string(),
            listener: self.listener,
            src: self.src,
            dst: self.dst,
            route: details.route.to_string(),
            upstream: details.upstream,
            bytes_sent: self.sent.load(Ordering::Relaxed),
            bytes_received: self.received.load(Ordering::Relaxed),
            started_ms: self.started_ms,
            duration_ms: self.started.elapsed().as_millis() as u64,
            finished,
            error: details.error.as_deref().map(str::to_string),
            peer_identity: details.peer_identity.as_deref().map(str::to_string),
            tls_group: details.tls_group,
            policy: details.policy.as_ref().map(Decision::summary),
        }
    }
}

/// A poisoned lock only means another thread panicked mid-update of a record; the data is
/// still usable for reporting.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Flow {
    /// Counter for client → server bytes.
    pub fn sent(&self) -> &AtomicU64 {
        &self.shared.sent
    }

    /// Counter for server → client bytes.
    pub fn received(&self) -> &AtomicU64 {
        &self.shared.received
    }

    /// Records how the connection is being carried.
    pub fn set_route(&self, route: &'static str) {
        lock(&self.shared.details).route = route;
    }

    /// Records the verified identity of the mesh peer (shared by the flows of one peer).
    pub fn set_peer_identity(&self, identity: impl Into<Arc<str>>) {
        lock(&self.shared.details).peer_identity = Some(identity.into());
    }

    /// Records the key-exchange group of the TLS handshake that carries the flow.
    pub fn set_tls_group(&self, group: Option<&'static str>) {
        lock(&self.shared.details).tls_group = group;
    }

    /// Records the policy decision that let the connection in (or kept it out).
    pub fn set_policy(&self, decision: &Decision) {
        lock(&self.shared.details).policy = Some(decision.clone());
    }

    /// Records where the connection was carried to, if not to its original destination.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        if upstream != self.shared.dst {
            lock(&self.shared.details).upstream = Some(upstream);
        }
    }

    /// Records why the flow failed.
    pub fn fail(&self, error: impl std::fmt::Display) {
        lock(&self.shared.details).error = Some(error.to_string().into());
    }

    /// Ends the flow now (it is also ended when dropped).
    pub fn finish(self) {}
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.table.retire(&self.shared);
    }
}

/// All flows of the daemon.
#[derive(Default)]
pub struct FlowTable {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<LiveFlow>>>,
    recent: Mutex<VecDeque<FlowRecord>>,
    /// Names the pods of access-log lines; unset, lines carry addresses only.
    resolver: OnceLock<access::Resolver>,
}

impl FlowTable {
    /// Lets access-log lines name pods, Services and identities (set once, at start).
    pub fn set_resolver(&self, resolver: access::Resolver) {
        let _ = self.resolver.set(resolver);
    }

    /// Flows still open.
    pub fn live_count(&self) -> usize {
        lock(&self.live).len()
    }

    /// Registers a new live flow.
    pub fn start(
        self: &Arc<Self>,
        pod: &Arc<str>,
        listener: Listener,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Flow {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let shared = Arc::new(LiveFlow {
            id,
            pod: pod.clone(),
            listener,
            src,
            dst,
            started: Instant::now(),
            started_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            details: Mutex::default(),
        });
        lock(&self.live).insert(id, shared.clone());
        access::opened(pod, listener, src, dst);
        Flow {
            table: self.clone(),
            shared,
        }
    }

    fn retire(&self, flow: &LiveFlow) {
        let record = flow.record(true);
        if access::wanted(&record) {
            access::AccessFields::of(&record, self.resolver.get()).emit();
        }
        // Into the recent list before leaving the live one, so a reader never misses it.
        let mut recent = lock(&self.recent);
        if recent.len() == RECENT_CAPACITY {
            recent.pop_front();
        }
        recent.push_back(record);
        drop(recent);
        lock(&self.live).remove(&flow.id);
    }

    /// Live flows first (oldest first), then finished ones (oldest first).
    pub fn snapshot(&self) -> Vec<FlowRecord> {
        let mut out: Vec<FlowRecord> = lock(&self.live).values().map(|f| f.record(false)).collect();
        let recent: Vec<FlowRecord> = lock(&self.recent).iter().cloned().collect();
        // A flow retired between the two reads is in both; its finished record wins.
        let retired: std::collections::HashSet<u64> = recent.iter().map(|f| f.id).collect();
        out.retain(|f| !retired.contains(&f.id));
        out.sort_by_key(|f| f.id);
        out.extend(recent);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_move_from_live_to_recent_with_their_counts() {
        let table = Arc::new(FlowTable::default());
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let flow = table.start(&"ns/p".into(), Listener::Outbound, a, b);
        flow.sent().fetch_add(5, Ordering::Relaxed);
        flow.set_route("passthrough");
        let live = table.snapshot();
        assert_eq!(live.len(), 1);
        assert!(!live[0].finished);
        flow.fail("boom");
        flow.finish();
        let done = table.snapshot();
        assert_eq!(done.len(), 1);
        assert!(done[0].finished);
        assert_eq!(done[0].bytes_sent, 5);
        assert_eq!(done[0].route, "passthrough");
        assert_eq!(done[0].error.as_deref(), Some("boom"));
    }
}
