//! Istio AuthorizationPolicy and PeerAuthentication enforced by real daemons in a lab: every
//! case asserts what the client saw (an echo, a 401, a reset) and what the app saw (a
//! connection or none), over IPv4 and IPv6, through HBONE (pod to pod, and the test's own
//! HBONE client) and in plaintext (from the fabric, outside the mesh).
//!
//! The lab: two nodes with two pods each, labelled `app=<pod>`; `n2-p2` lives in namespace
//! `other`, the rest in `lab`; every pod runs echo servers on [`APP`] and [`OTHER`]. Policies go
//! into the workload file's `istio` list (or, in `--kube` mode, to the stand-in API server) and
//! each change is awaited on every daemon's `/policies` before it is tested.
#![cfg(feature = "lab")]

#[path = "../support/mod.rs"]
mod support;

mod authz;
mod invalid;
mod kube;
mod live;
mod mtls;
mod world;

pub use support::*;
pub use world::*;

use serde_json::{json, Value};

/// The second application port of every pod.
pub const OTHER: u16 = 9090;
/// The first (support's echo port).
pub const APP: u16 = APP_PORT;

/// An AuthorizationPolicy in `ns`.
pub fn ap(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

/// A PeerAuthentication in `ns`.
pub fn pa(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

/// The principal (Istio's form, without `spiffe://`) of lab pod `pod` in namespace `ns`.
pub fn principal(ns: &str, pod: &str) -> String {
    format!("cluster.local/ns/{ns}/sa/sa-{pod}")
}
