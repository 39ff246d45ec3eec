//! The compiled form of an AuthorizationPolicy and how one connection is matched against it.
//!
//! The shape follows what istiod sends ztunnel (`istio.security.Authorization`): a policy is a
//! list of rules (any may match), a rule a list of clauses (all must match), a clause a list of
//! alternatives (any may match), and an alternative ([`Match`]) a set of attribute conditions
//! (all must hold; each holds when one of its positive values matches, if it has any, and none
//! of its negative values does). Matching reads only borrowed data and allocates nothing, so a
//! connection can be checked against many policies on the data path.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::pattern::StrPat;
use crate::identity::Identity;

/// What a matching AuthorizationPolicy does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// The connection must match one ALLOW policy, if any applies to the workload.
    Allow,
    /// A matching connection is refused, whatever the ALLOW policies say.
    Deny,
    /// A matching connection is logged; access is unchanged.
    Audit,
}

/// What kind of configuration made a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum RefKind {
    /// A `security.istio.io` AuthorizationPolicy.
    AuthorizationPolicy,
    /// A `security.istio.io` PeerAuthentication.
    PeerAuthentication,
    /// The namespace label `ambit.io/mtls-mode` (a namespace-wide PeerAuthentication shorthand).
    NamespaceLabel,
    /// The daemon's `--mtls-mode` flag (the mesh-wide default beneath every PeerAuthentication).
    MtlsDefault,
    /// An entry of the workload file's `istio` list that is neither of the kinds above.
    Other,
}

/// Names the configuration behind a decision: `AuthorizationPolicy shop/allow-web`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct PolicyRef {
    /// What kind of configuration it is.
    pub kind: RefKind,
    /// Its namespace (empty for the `--mtls-mode` default).
    pub namespace: String,
    /// Its name (the label key for [`RefKind::NamespaceLabel`], the flag for
    /// [`RefKind::MtlsDefault`]).
    pub name: String,
}

impl PolicyRef {
    /// `namespace/name`, the form Istio uses in logs and metrics.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            RefKind::AuthorizationPolicy => {
                write!(f, "AuthorizationPolicy {}/{}", self.namespace, self.name)
            }
            RefKind::PeerAuthentication => {
                write!(f, "PeerAuthentication {}/{}", self.namespace, self.name)
            }
            RefKind::NamespaceLabel => {
                write!(f, "label {} of namespace {}", self.name, self.namespace)
            }
            RefKind::MtlsDefault => write!(f, "daemon default {}", self.name),
            RefKind::Other => write!(f, "{}/{}", self.namespace, self.name),
        }
    }
}

/// An AuthorizationPolicy ready for evaluation.
#[derive(Debug)]
pub(crate) struct CompiledPolicy {
    /// Which resource it came from.
    pub id: Arc<PolicyRef>,
    /// What a match does.
    pub action: Action,
    /// `istio.io/dry-run: "true"`: evaluated and logged, never enforced.
    pub dry_run: bool,
    /// Any rule matching makes the policy match; no rules never match.
    pub rules: Vec<Rule>,
    /// Set when the resource was rejected: the policy then denies everything in its scope, and
    /// this says why.
    pub fail_closed: Option<Arc<str>>,
}

impl CompiledPolicy {
    /// A policy standing in for a rejected resource: DENY everything, with the reason.
    pub fn fail_closed(id: Arc<PolicyRef>, reason: String) -> Self {
        CompiledPolicy {
            id,
            action: Action::Deny,
            dry_run: false,
            rules: vec![Rule::default()],
            fail_closed: Some(reason.into()),
        }
    }

    /// Whether the connection described by `facts` matches.
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(facts))
    }
}

/// One rule: every clause must match. A rule without clauses (`rules: [{}]`) matches all.
#[derive(Debug, Default)]
pub(crate) struct Rule {
    /// The rule's `to`, `from` and `when` parts, each one clause.
    pub clauses: Vec<Clause>,
}

impl Rule {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        self.clauses.iter().all(|c| c.matches(facts))
    }
}

/// One clause: any alternative may match (the entries of `from`, of `to`, or one `when`).
#[derive(Debug, Default)]
pub(crate) struct Clause {
    /// The alternatives; never empty after compilation.
    pub alternatives: Vec<Match>,
}

impl Clause {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        self.alternatives.iter().any(|m| m.matches(facts))
    }
}

/// Positive and negative values of one attribute.
#[derive(Debug)]
pub(crate) struct Cond<T> {
    /// One must match, unless there are none.
    pub pos: Vec<T>,
    /// None may match.
    pub neg: Vec<T>,
}

impl<T> Default for Cond<T> {
    fn default() -> Self {
        Cond {
            pos: Vec::new(),
            neg: Vec::new(),
        }
    }
}

impl<T> Cond<T> {
    fn holds(&self, pred: impl Fn(&T) -> bool) -> bool {
        (self.pos.is_empty() || self.pos.iter().any(&pred)) && !self.neg.iter().any(&pred)
    }

    fn is_empty(&self) -> bool {
        self.pos.is_empty() && self.neg.is_empty()
    }
}

/// One alternative: all of its conditions must hold.
///
/// An empty `Match` matches everything. Only a DENY or AUDIT rule whose element held nothing
/// but L7 attributes compiles to one (see `compile`); ztunnel would skip it instead, which
/// turns such a DENY into a no-op (istio#61126).
#[derive(Debug, Default)]
pub(crate) struct Match {
    /// Source principal, `<trust-domain>/ns/<ns>/sa/<sa>`.
    pub principals: Cond<StrPat>,
    /// Source namespace (from the identity).
    pub namespaces: Cond<StrPat>,
    /// Source trust domain (from the identity).
    pub trust_domains: Cond<StrPat>,
    /// Source service account as namespace and name.
    pub service_accounts: Cond<(String, String)>,
    /// Source IP.
    pub src_ips: Cond<IpNet>,
    /// Destination IP.
    pub dst_ips: Cond<IpNet>,
    /// Destination port.
    pub ports: Cond<u16>,
}

impl Match {
    /// Whether every condition is empty (matches everything).
    pub fn is_empty(&self) -> bool {
        self.principals.is_empty()
            && self.namespaces.is_empty()
            && self.trust_domains.is_empty()
            && self.service_accounts.is_empty()
            && self.src_ips.is_empty()
            && self.dst_ips.is_empty()
            && self.ports.is_empty()
    }

    fn matches(&self, f: &Facts<'_>) -> bool {
        // Without an identity (plaintext) a positive identity condition never holds and a
        // negative one always does: `id` is None, so no value matches (as in ztunnel's rbac.rs).
        let id = f.identity;
        self.ports.holds(|p| *p == f.dst_port)
            && self.src_ips.holds(|n| n.contains(&f.src_ip))
            && self.dst_ips.holds(|n| n.contains(&f.dst_ip))
            && self
                .principals
                .holds(|p| id.is_some_and(|i| p.matches_principal(i)))
            && self
                .namespaces
                .holds(|p| id.is_some_and(|i| p.matches(i.namespace())))
            && self
                .trust_domains
                .holds(|p| id.is_some_and(|i| p.matches(i.trust_domain())))
            && self.service_accounts.holds(|(ns, sa)| {
                id.is_some_and(|i| i.namespace() == ns && i.service_account() == sa)
            })
    }
}

/// What a policy is matched against: one connection, as the destination sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Facts<'a> {
    /// Client address (IPv4-mapped IPv6 already unmapped).
    pub src_ip: IpAddr,
    /// Destination address (unmapped likewise).
    pub dst_ip: IpAddr,
    /// Destination port (the application's port).
    pub dst_port: u16,
    /// The client's verified identity; `None` for plaintext.
    pub identity: Option<&'a Identity>,
}

/// Writes `name=[a, b]` and `notName=[c]` for the non-empty sides of `cond`.
fn write_cond<T>(
    f: &mut fmt::Formatter<'_>,
    first: &mut bool,
    name: &str,
    cond: &Cond<T>,
    show: impl Fn(&T) -> String,
) -> fmt::Result {
    for (negated, values) in [(false, &cond.pos), (true, &cond.neg)] {
        if values.is_empty() {
            continue;
        }
        let sep = if *first { "" } else { " " };
        *first = false;
        let shown: Vec<String> = values.iter().map(&show).collect();
        if negated {
            let mut chars = name.chars();
            let cap: String = chars
                .next()
                .map(|c| c.to_ascii_uppercase())
                .into_iter()
                .chain(chars)
                .collect();
            write!(f, "{sep}not{cap}=[{}]", shown.join(", "))?;
        } else {
            write!(f, "{sep}{name}=[{}]", shown.join(", "))?;
        }
    }
    Ok(())
}

impl fmt::Display for Match {
    /// The admin view of one alternative, e.g. `principals=[cluster.local/ns/a/sa/b] ports=[80]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("any");
        }
        let mut first = true;
        let s = |v: &StrPat| v.to_string();
        write_cond(f, &mut first, "principals", &self.principals, s)?;
        write_cond(f, &mut first, "namespaces", &self.namespaces, s)?;
        write_cond(f, &mut first, "trustDomains", &self.trust_domains, s)?;
        write_cond(
            f,
            &mut first,
            "serviceAccounts",
            &self.service_accounts,
            |(n, a)| format!("{n}/{a}"),
        )?;
        write_cond(f, &mut first, "sourceIps", &self.src_ips, |n| n.to_string())?;
        write_cond(f, &mut first, "destinationIps", &self.dst_ips, |n| {
            n.to_string()
        })?;
        write_cond(f, &mut first, "ports", &self.ports, |p| p.to_string())
    }
}

impl Rule {
    /// The admin view: clauses joined by `AND`, alternatives by `OR`.
    pub fn describe(&self) -> String {
        if self.clauses.is_empty() {
            return "any connection".into();
        }
        let clauses: Vec<String> = self
            .clauses
            .iter()
            .map(|c| {
                let alts: Vec<String> = c.alternatives.iter().map(|m| m.to_string()).collect();
                format!("({})", alts.join(" OR "))
            })
            .collect();
        clauses.join(" AND ")
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
