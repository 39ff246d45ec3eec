//! Istio's security policy, enforced at L4: `security.istio.io` AuthorizationPolicy and
//! PeerAuthentication, with the meaning Istio ambient gives them in ztunnel.
//!
//! Why: teams moving from Istio keep their policies; ambit must enforce what they wrote, not
//! let every identity reach every port. This module is the pure engine (no I/O): the sources
//! (workload file, Kubernetes) hand it raw objects through [`Snapshot::istio`]; the data path
//! asks it one question per connection.
//!
//! In order:
//! 1. `resource` reads the objects exactly as `kubectl get -o json` prints them; unknown
//!    fields are errors that name the field. `intake` names each object and files it.
//! 2. `compile` turns an AuthorizationPolicy into L4 rules as istiod's ambient translation does
//!    (`model` holds the compiled form and the matching, `pattern` Istio's string patterns);
//!    `peer_auth` does the same for PeerAuthentication; `values` checks IPs, ports, principals
//!    and `when` keys; `scope` works out which workloads a policy covers.
//! 3. [`PolicySnapshot::build`] does all of that for every object of a workload snapshot and
//!    precomputes every pod's policy lists and per-port mTLS modes.
//! 4. [`PolicySnapshot::decide`] (in `eval`) answers for one connection: PeerAuthentication
//!    first (plaintext refused under STRICT), then DENY policies, then ALLOW policies (if any
//!    applies, one must match); AUDIT and dry-run policies are only noted.
//!
//! Invalid input never widens access: a rejected ALLOW or DENY policy denies every connection
//! to the workloads it would have covered, a rejected PeerAuthentication makes them STRICT.
//! `docs/policy.md` lists every rule with its source in istio/istio or istio/ztunnel.
//!
//! [`Snapshot::istio`]: crate::workload::Snapshot::istio

mod compile;
mod eval;
mod index;
mod intake;
mod model;
mod pattern;
mod peer_auth;
mod resource;
mod scope;
mod snapshot;
mod values;

#[cfg(test)]
mod tests;

pub use eval::{
    ConnInfo, Decision, Logged, LoggedKind, MtlsVerdict, MtlsView, PolicyView, Reason, WorkloadView,
};
pub use model::{Action, PolicyRef, RefKind};
pub use peer_auth::MtlsMode;
pub use resource::{API_GROUP, API_VERSIONS, DRY_RUN_ANNOTATION};
pub use snapshot::PolicySnapshot;

/// Istio's default root namespace: policies there without a selector apply mesh-wide.
pub use crate::config::DEFAULT_ROOT_NAMESPACE;

/// How policies are read and resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Istio's `meshConfig.rootNamespace`: where mesh-wide policies live.
    pub root_namespace: String,
    /// The mode beneath every PeerAuthentication (the daemon's `--mtls-mode`): STRICT or
    /// PERMISSIVE. Istio's own default is PERMISSIVE.
    pub default_mtls: MtlsMode,
    /// Precompute only this node's pods (others are resolved on demand); `None`: all pods.
    pub node: Option<String>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            root_namespace: DEFAULT_ROOT_NAMESPACE.into(),
            default_mtls: MtlsMode::Permissive,
            node: None,
        }
    }
}

/// A policy resource ambit refused, and what it does instead.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RejectedPolicy {
    /// `AuthorizationPolicy`, `PeerAuthentication`, `Namespace` (for the `ambit.io/mtls-mode`
    /// label) or `Unknown`.
    pub kind: String,
    /// Namespace of the resource (empty if it had none).
    pub namespace: String,
    /// Name of the resource (the label for a namespace label).
    pub name: String,
    /// Path of the offending field, e.g. `spec.rules[0].to[0].operation.ports[1]`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
    /// What ambit does instead, e.g. `every connection denied to every workload of namespace shop`.
    pub effect: String,
}

/// A policy accepted, but enforced differently from how it reads (L7 attributes, a bad
/// dry-run annotation).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PolicyWarning {
    /// `AuthorizationPolicy namespace/name`.
    pub policy: String,
    /// What differs, and in which direction.
    pub message: String,
}

/// A field of a policy that cannot be accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// Path of the field, e.g. `spec.rules[2].from[0].source.ipBlocks[1]`.
    pub field: String,
    /// What is wrong and what was expected.
    pub reason: String,
}

impl Invalid {
    pub(crate) fn new(field: String, reason: String) -> Self {
        Invalid { field, reason }
    }
}

impl PolicySnapshot {
    /// Resources ambit refused, in the order they were read.
    pub fn rejected(&self) -> &[RejectedPolicy] {
        &self.rejected
    }

    /// Resources accepted with a caveat.
    pub fn warnings(&self) -> &[PolicyWarning] {
        &self.warnings
    }

    /// The settings it was built with.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }
}
