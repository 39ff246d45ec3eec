//! Who may have which identity signed: the CA service's authorization rules, as pure logic.
//!
//! - A caller authenticated as a *trusted node account* (the ambit DaemonSet's
//!   ServiceAccount, like istiod's `CA_TRUSTED_NODE_ACCOUNTS`) may ask, through the
//!   `ImpersonatedIdentity` metadata, for the identity of a pod scheduled on the caller's own
//!   node. A compromised node can therefore obtain only identities it already hosts.
//! - Any other caller (a sidecar) gets only its own ServiceAccount's identity.
//!
//! Whether a pod with the identity runs on the node is looked up afterwards (see
//! [`super::directory`]); this module only says what has to be true.

use std::collections::HashSet;
use std::fmt;

use tonic::{Code, Status};

use crate::identity::Identity;

/// The `metadata` key naming the identity a node proxy asks for on behalf of a pod.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// A Kubernetes ServiceAccount, `namespace/name`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Account {
    /// Namespace.
    pub namespace: String,
    /// ServiceAccount name.
    pub name: String,
}

impl Account {
    /// Parses `namespace/name`.
    pub fn parse(s: &str) -> Result<Account, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Account {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(format!(
                "service account {s:?}: expected <namespace>/<name>"
            )),
        }
    }

    /// Parses a TokenReview username, `system:serviceaccount:<namespace>:<name>`.
    pub fn from_username(user: &str) -> Option<Account> {
        let rest = user.strip_prefix("system:serviceaccount:")?;
        let (ns, name) = rest.split_once(':')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then(|| Account {
            namespace: ns.into(),
            name: name.into(),
        })
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The ServiceAccount the credential belongs to.
    pub account: Account,
    /// The node the caller runs on, when the credential tells (a pod-bound token, a lab node
    /// token).
    pub node: Option<String>,
    /// The caller's pod, `namespace/name`, when known (for logs).
    pub pod: Option<String>,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.account)?;
        if let Some(pod) = &self.pod {
            write!(f, " (pod {pod})")?;
        }
        Ok(())
    }
}

/// Why a request was refused; maps onto a gRPC status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No credential, or one that does not authenticate.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but not allowed this identity.
    #[error("{0}")]
    PermissionDenied(String),
    /// The request itself is wrong (CSR, identity syntax).
    #[error("{0}")]
    InvalidArgument(String),
    /// A dependency (the Kubernetes API, the workload file) could not answer.
    #[error("{0}")]
    Unavailable(String),
    /// Signing failed.
    #[error("{0}")]
    Internal(String),
}

impl Denied {
    /// The outcome label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Denied::Unauthenticated(_) => "unauthenticated",
            Denied::PermissionDenied(_) => "permission_denied",
            Denied::InvalidArgument(_) => "invalid_argument",
            Denied::Unavailable(_) => "unavailable",
            Denied::Internal(_) => "internal",
        }
    }
}

impl From<Denied> for Status {
    fn from(d: Denied) -> Status {
        let code = match d {
            Denied::Unauthenticated(_) => Code::Unauthenticated,
            Denied::PermissionDenied(_) => Code::PermissionDenied,
            Denied::InvalidArgument(_) => Code::InvalidArgument,
            Denied::Unavailable(_) => Code::Unavailable,
            Denied::Internal(_) => Code::Internal,
        };
        Status::new(code, d.to_string())
    }
}

/// What must hold before an identity is signed for a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// The caller's own identity: nothing more to check.
    Own(Identity),
    /// A pod with this identity must be scheduled on `node`.
    OnNode {
        /// The identity asked for.
        identity: Identity,
        /// The caller's node.
        node: String,
    },
}

impl Grant {
    /// The identity to sign.
    pub fn identity(&self) -> &Identity {
        match self {
            Grant::Own(id) | Grant::OnNode { identity: id, .. } => id,
        }
    }
}

/// The service's authorization settings.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Trust domain of every identity signed.
    pub trust_domain: String,
    /// ServiceAccounts allowed to impersonate the pods of their node.
    pub trusted_node_accounts: HashSet<Account>,
}

impl Policy {
    /// Decides what `caller` may have signed when asking for `impersonated` (the
    /// `ImpersonatedIdentity` metadata, if any).
    pub fn grant(&self, caller: &Caller, impersonated: Option<&str>) -> Result<Grant, Denied> {
        let own = Identity::new(
            &self.trust_domain,
            &caller.account.namespace,
            &caller.account.name,
        )
        .map_err(|e| Denied::PermissionDenied(format!("caller {caller}: {e}")))?;
        let Some(wanted) = impersonated else {
            return Ok(Grant::Own(own));
        };
        let wanted: Identity = wanted.parse().map_err(|e| {
            Denied::InvalidArgument(format!("{IMPERSONATED_IDENTITY} {wanted:?}: {e}"))
        })?;
        if wanted == own {
            return Ok(Grant::Own(own));
        }
        let node = caller.node.as_deref().unwrap_or("<unknown>");
        if !self.trusted_node_accounts.contains(&caller.account) {
            return Err(Denied::PermissionDenied(format!(
                "caller {caller} on node {node} may not impersonate {wanted}: \
                 {} is not a trusted node account",
                caller.account
            )));
        }
        if wanted.trust_domain() != self.trust_domain {
            return Err(Denied::PermissionDenied(format!(
                "caller {caller} on node {node} may not impersonate {wanted}: \
                 not in trust domain {}",
                self.trust_domain
            )));
        }
        match &caller.node {
            Some(node) => Ok(Grant::OnNode {
                identity: wanted,
                node: node.clone(),
            }),
            None => Err(Denied::PermissionDenied(format!(
                "caller {caller} may not impersonate {wanted}: its credential is not bound \
                 to a pod, so its node is unknown"
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
