//! The decision for one connection, in ztunnel's order (istio/ztunnel `src/state.rs`
//! `assert_rbac`, after istio.io's authorization-policy reference):
//! 1. PeerAuthentication: a plaintext connection to a STRICT port is refused (in ambient, the
//!    STRICT mode is a DENY policy "no principal" attached to the workload);
//! 2. any matching DENY policy denies (a rejected policy standing in as deny-all included);
//! 3. with no ALLOW policy on the workload, the connection is allowed;
//! 4. a matching ALLOW policy allows; otherwise it is denied.
//!
//! AUDIT and dry-run policies are matched too, but only noted in [`Decision::logged`].
//! Nothing here allocates unless a decision has something to log.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use super::model::{Action, CompiledPolicy, Facts, PolicyRef};
use super::peer_auth::MtlsMode;
use super::PolicySnapshot;
use crate::identity::Identity;
use crate::workload::Pod;

/// One connection as the destination's proxy sees it.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo<'a> {
    /// The client's address (an IPv4-mapped IPv6 address is treated as IPv4).
    pub src_ip: IpAddr,
    /// The client's verified identity (HBONE on 15008); `None` for plaintext (15006).
    pub src_identity: Option<&'a Identity>,
    /// The address the client connected to (the destination pod's).
    pub dst_ip: IpAddr,
    /// The port the client connected to (the application's).
    pub dst_port: u16,
}

/// Why a connection was allowed or denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No ALLOW policy applies to the workload, and no DENY policy matched.
    NoAllowPolicy,
    /// [`Decision::policy`], an ALLOW policy, matched.
    AllowMatched,
    /// [`Decision::policy`], a DENY policy, matched.
    DenyMatched,
    /// ALLOW policies apply to the workload (this many), and none matched.
    NoAllowMatched(usize),
    /// Plaintext to a port that [`Decision::policy`] makes STRICT.
    PlaintextRefused,
    /// [`Decision::policy`] was rejected and denies its whole scope; the text says why.
    InvalidPolicy(Arc<str>),
}

/// A policy that matched without deciding anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The policy.
    pub policy: Arc<PolicyRef>,
    /// What it would have done.
    pub kind: LoggedKind,
}

/// What a logged policy is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoggedKind {
    /// An AUDIT policy matched.
    Audit,
    /// A dry-run DENY policy matched: enforced, it would deny.
    DryRunDeny,
    /// A dry-run ALLOW policy matched.
    DryRunAllow,
}

/// The outcome for one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the connection may proceed.
    pub allowed: bool,
    /// The configuration that decided, if one did (none when no policy applies, or when no
    /// ALLOW policy matched).
    pub policy: Option<Arc<PolicyRef>>,
    /// Why.
    pub reason: Reason,
    /// AUDIT and dry-run policies that matched (empty, and unallocated, usually).
    pub logged: Vec<Logged>,
}

impl Decision {
    /// The decision as the flow record and access log show it, with matching AUDIT and dry-run
    /// policies appended.
    pub fn summary(&self) -> String {
        let mut text = self.to_string();
        for l in &self.logged {
            text.push_str(&format!("; {:?} {}", l.kind, l.policy));
        }
        text
    }
}

impl fmt::Display for Decision {
    /// One line for the access log, e.g. `denied: DENY AuthorizationPolicy shop/deny-db matched`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.allowed {
            "allowed: "
        } else {
            "denied: "
        })?;
        let policy = || {
            self.policy
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default()
        };
        match &self.reason {
            Reason::NoAllowPolicy => f.write_str("no ALLOW policy applies"),
            Reason::AllowMatched => write!(f, "ALLOW {} matched", policy()),
            Reason::DenyMatched => write!(f, "DENY {} matched", policy()),
            Reason::NoAllowMatched(n) => write!(f, "none of the {n} ALLOW policies matched"),
            Reason::PlaintextRefused => write!(f, "plaintext refused, STRICT by {}", policy()),
            Reason::InvalidPolicy(why) => f.write_str(why),
        }
    }
}

/// Whether plaintext is accepted on one port of one workload, and who said so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtlsVerdict {
    /// Whether a connection without a peer identity (15006) is accepted.
    pub plaintext_allowed: bool,
    /// The effective mode (never UNSET).
    pub mode: MtlsMode,
    /// The PeerAuthentication, namespace label or daemon default that set it.
    pub origin: Arc<PolicyRef>,
}

impl PolicySnapshot {
    /// Decides whether `conn` may reach `dst` (the destination pod). See the module docs for
    /// the order. A pod the snapshot did not precompute (another node's, or newer than the
    /// snapshot) is resolved on the spot, which allocates.
    pub fn decide(&self, dst: &Pod, conn: &ConnInfo<'_>) -> Decision {
        let w = self.workload(dst);
        let facts = Facts {
            src_ip: conn.src_ip.to_canonical(),
            dst_ip: conn.dst_ip.to_canonical(),
            dst_port: conn.dst_port,
            identity: conn.src_identity,
        };
        let logged = log_matches(&w.logged, &facts);
        let decided = |allowed, policy: &Arc<PolicyRef>, reason| Decision {
            allowed,
            policy: Some(policy.clone()),
            reason,
            logged: logged.clone(),
        };
        if conn.src_identity.is_none() {
            let v = w.mtls.verdict(conn.dst_port);
            if !v.mode.accepts_plaintext() {
                return decided(false, &v.origin, Reason::PlaintextRefused);
            }
        }
        // Only the policies that can match this port and client are walked, in list order
        // (see `index`).
        let ns = conn.src_identity.map(|i| i.namespace());
        let mut deny = w
            .deny_index
            .candidates(conn.dst_port, ns)
            .map(|i| &w.deny[i]);
        if let Some(p) = deny.find(|p| p.matches(&facts)) {
            let reason = match &p.fail_closed {
                Some(why) => Reason::InvalidPolicy(why.clone()),
                None => Reason::DenyMatched,
            };
            return decided(false, &p.id, reason);
        }
        if w.allow.is_empty() {
            return Decision {
                allowed: true,
                policy: None,
                reason: Reason::NoAllowPolicy,
                logged,
            };
        }
        let mut allow = w
            .allow_index
            .candidates(conn.dst_port, ns)
            .map(|i| &w.allow[i]);
        if let Some(p) = allow.find(|p| p.matches(&facts)) {
            return decided(true, &p.id, Reason::AllowMatched);
        }
        Decision {
            allowed: false,
            policy: None,
            reason: Reason::NoAllowMatched(w.allow.len()),
            logged,
        }
    }

    /// Whether plaintext may reach `port` of `dst`, by PeerAuthentication (with the
    /// `ambit.io/mtls-mode` label and the daemon default beneath it).
    pub fn plaintext_allowed(&self, dst: &Pod, port: u16) -> MtlsVerdict {
        let w = self.workload(dst);
        let v = w.mtls.verdict(port);
        MtlsVerdict {
            plaintext_allowed: v.mode.accepts_plaintext(),
            mode: v.mode,
            origin: v.origin.clone(),
        }
    }

    /// Everything that applies to `dst`, for the admin endpoint.
    pub fn describe(&self, dst: &Pod) -> WorkloadView {
        let w = self.workload(dst);
        let view = |list: &[Arc<CompiledPolicy>]| list.iter().map(|p| PolicyView::of(p)).collect();
        let mtls = |port: Option<u16>, v: &super::peer_auth::Verdict| MtlsView {
            port,
            mode: v.mode,
            origin: v.origin.to_string(),
        };
        let mut ports = vec![mtls(None, &w.mtls.default)];
        ports.extend(w.mtls.ports.iter().map(|(p, v)| mtls(Some(*p), v)));
        WorkloadView {
            pod: dst.key(),
            deny: view(&w.deny),
            allow: view(&w.allow),
            logged: view(&w.logged),
            mtls: ports,
        }
    }
}

fn log_matches(list: &[Arc<CompiledPolicy>], facts: &Facts<'_>) -> Vec<Logged> {
    list.iter()
        .filter(|p| p.matches(facts))
        .map(|p| Logged {
            policy: p.id.clone(),
            kind: match (p.dry_run, p.action) {
                (true, Action::Deny) => LoggedKind::DryRunDeny,
                (true, Action::Allow) => LoggedKind::DryRunAllow,
                _ => LoggedKind::Audit,
            },
        })
        .collect()
}

/// The compiled policies and mTLS modes of one workload, as the admin port shows them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkloadView {
    /// `namespace/name` of the pod.
    pub pod: String,
    /// DENY policies (rejected ones standing in as deny-all first).
    pub deny: Vec<PolicyView>,
    /// ALLOW policies.
    pub allow: Vec<PolicyView>,
    /// AUDIT and dry-run policies.
    pub logged: Vec<PolicyView>,
    /// The default mode first (`port: null`), then per-port exceptions.
    pub mtls: Vec<MtlsView>,
}

/// One compiled policy, readable.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PolicyView {
    /// `AuthorizationPolicy namespace/name`.
    pub policy: String,
    /// ALLOW, DENY or AUDIT.
    pub action: Action,
    /// Logged only.
    pub dry_run: bool,
    /// One line per rule: clauses joined by AND, alternatives by OR.
    pub rules: Vec<String>,
    /// Why it is rejected and denies everything, if it is.
    pub rejected: Option<String>,
}

impl PolicyView {
    fn of(p: &CompiledPolicy) -> Self {
        PolicyView {
            policy: p.id.to_string(),
            action: p.action,
            dry_run: p.dry_run,
            rules: p.rules.iter().map(|r| r.describe()).collect(),
            rejected: p.fail_closed.as_ref().map(|w| w.to_string()),
        }
    }
}

/// The mode of one port (or of all others).
#[derive(Clone, Debug, serde::Serialize)]
pub struct MtlsView {
    /// The port, or `None` for every port without an exception.
    pub port: Option<u16>,
    /// Effective mode.
    pub mode: MtlsMode,
    /// Who set it.
    pub origin: String,
}
