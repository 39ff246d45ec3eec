//! AuthorizationPolicy `spec` → compiled L4 rules, following istiod's ambient translation
//! (istio/istio `pilot/pkg/serviceregistry/ambient/authorization.go`:
//! `convertAuthorizationPolicy`, `handleRule`) and its validation (`pkg/config/validation/
//! validation.go`: `ValidateAuthorizationPolicy`).
//!
//! Where ambit departs from istiod, it is to never be more permissive than what was written:
//! * a DENY or AUDIT element that held only L7 attributes matches every connection (istiod
//!   emits an empty match that ztunnel skips, so the DENY silently does nothing: istio#61126);
//! * `trustDomains`, `source.serviceAccount` and `source.trustDomain` are enforced from the
//!   peer identity (istiod's ambient translation drops them);
//! * anything invalid rejects the whole policy, and a rejected ALLOW or DENY denies its scope.

use serde_json::Value;

use super::model::{Action, Clause, Match, Rule};
use super::resource::{read, AuthzSpec, Condition, FromSpec, RuleSpec, ToSpec};
use super::scope::{lenient_target, target, Target};
use super::values::{self, WhenKey};
use super::Invalid;

/// A policy ambit can enforce.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub action: Action,
    pub rules: Vec<Rule>,
    pub target: Target,
    /// Accepted, but not exactly as written (L7 attributes); for the operator.
    pub warnings: Vec<String>,
}

/// A policy ambit refuses, with what it would have applied to.
#[derive(Debug)]
pub(crate) struct Rejected {
    pub invalid: Invalid,
    pub target: Target,
    /// False only for a policy known to be AUDIT (log-only: refusing it changes no access).
    pub fail_closed: bool,
}

/// Compiles the `spec` of AuthorizationPolicy `namespace/…`.
pub(crate) fn authorization(spec: Option<Value>, namespace: &str) -> Result<Compiled, Rejected> {
    let raw = spec.unwrap_or_else(|| Value::Object(Default::default()));
    let fallback = lenient_target(&raw);
    let spec: AuthzSpec = read(raw, "spec").map_err(|invalid| Rejected {
        invalid,
        target: fallback.clone(),
        fail_closed: true,
    })?;
    let target = match target(&spec) {
        Ok(t) => t,
        Err(invalid) => {
            return Err(Rejected {
                invalid,
                target: fallback,
                fail_closed: true,
            })
        }
    };
    let action = action(&spec).map_err(|invalid| Rejected {
        invalid,
        target: target.clone(),
        fail_closed: true,
    })?;
    let reject = |invalid| Rejected {
        invalid,
        target: target.clone(),
        fail_closed: action != Action::Audit,
    };
    if let Target::Refs(refs) = &target {
        let kinds: Vec<&str> = refs.iter().map(|r| r.kind.as_str()).collect();
        return Err(reject(Invalid::new(
            "spec.targetRefs".into(),
            format!(
                "targetRefs ({}) bind a policy to a waypoint or gateway, which ambit does not run; \
                 use a selector to have it enforced on the workloads",
                kinds.join(", ")
            ),
        )));
    }
    let raw_rules = spec.rules.unwrap_or_default();
    if action == Action::Deny && raw_rules.is_empty() {
        return Err(reject(Invalid::new(
            "spec.rules".into(),
            "a DENY policy without rules never triggers (Istio refuses it); \
             add an empty rule {} to deny everything"
                .into(),
        )));
    }
    let mut rules = Vec::new();
    let mut warnings = Vec::new();
    for (i, raw) in raw_rules.into_iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        let parsed: RuleSpec = read(raw, &path).map_err(reject)?;
        let (rule, l7) = rule(&parsed, &path, namespace).map_err(reject)?;
        if l7.is_empty() {
            rules.push(rule);
        } else if action == Action::Allow {
            // istiod: "L7 policies never match for ALLOW" — the rule is left out.
            warnings.push(format!(
                "{path} uses L7 attributes ({}), which ambit cannot see at L4: this ALLOW rule \
                 never matches (more restrictive than written, as in Istio ambient)",
                l7.join(", ")
            ));
        } else {
            warnings.push(format!(
                "{path} uses L7 attributes ({}), which ambit cannot see at L4: enforced without \
                 them, so it matches more connections than written",
                l7.join(", ")
            ));
            rules.push(rule);
        }
    }
    Ok(Compiled {
        action,
        rules,
        target,
        warnings,
    })
}

/// The action, refusing CUSTOM (ambit has no external authorizer) and unknown values.
fn action(spec: &AuthzSpec) -> Result<Action, Invalid> {
    let action = match spec.action.as_deref() {
        None | Some("ALLOW") => Action::Allow,
        Some("DENY") => Action::Deny,
        Some("AUDIT") => Action::Audit,
        Some("CUSTOM") => {
            let provider = spec
                .provider
                .as_ref()
                .map(|p| p.name.as_str())
                .unwrap_or("");
            return Err(Invalid::new(
                "spec.action".into(),
                format!(
                    "CUSTOM (external authorization, provider {provider:?}) is not supported by ambit"
                ),
            ));
        }
        Some(other) => {
            return Err(Invalid::new(
                "spec.action".into(),
                format!("{other:?} is not one of ALLOW, DENY, AUDIT, CUSTOM"),
            ))
        }
    };
    if spec.provider.is_some() {
        return Err(Invalid::new(
            "spec.provider".into(),
            "`provider` is only allowed with the CUSTOM action".into(),
        ));
    }
    Ok(action)
}

/// One rule: its `to`, `from` and `when` as clauses, and the L7 attributes it used.
fn rule(spec: &RuleSpec, path: &str, ns: &str) -> Result<(Rule, Vec<String>), Invalid> {
    let mut l7 = Vec::new();
    let mut clauses = Vec::new();
    if let Some(to) = &spec.to {
        let alternatives = non_empty_list(to, &format!("{path}.to"))?
            .iter()
            .enumerate()
            .map(|(j, t)| to_match(t, &format!("{path}.to[{j}]"), &mut l7))
            .collect::<Result<_, _>>()?;
        clauses.push(Clause { alternatives });
    }
    if let Some(from) = &spec.from {
        let alternatives = non_empty_list(from, &format!("{path}.from"))?
            .iter()
            .enumerate()
            .map(|(j, f)| from_match(f, &format!("{path}.from[{j}]"), ns, &mut l7))
            .collect::<Result<_, _>>()?;
        clauses.push(Clause { alternatives });
    }
    for (j, cond) in spec.when.iter().flatten().enumerate() {
        let m = when_match(cond, &format!("{path}.when[{j}]"), ns, &mut l7)?;
        clauses.push(Clause {
            alternatives: vec![m],
        });
    }
    l7.sort();
    l7.dedup();
    Ok((Rule { clauses }, l7))
}

fn non_empty_list<'a, T>(list: &'a [T], path: &str) -> Result<&'a [T], Invalid> {
    if list.is_empty() {
        return Err(Invalid::new(path.into(), "must not be empty".into()));
    }
    Ok(list)
}

/// Records the names of the L7 fields that are set.
fn note_l7(l7: &mut Vec<String>, fields: &[(&str, &[String])]) {
    l7.extend(
        fields
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, _)| n.to_string()),
    );
}

fn to_match(to: &ToSpec, path: &str, l7: &mut Vec<String>) -> Result<Match, Invalid> {
    let op_path = format!("{path}.operation");
    let Some(op) = &to.operation else {
        return Err(Invalid::new(op_path, "must be set".into()));
    };
    let lists: [(&str, &[String]); 8] = [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
        ("paths", &op.paths),
        ("notPaths", &op.not_paths),
        ("ports", &op.ports),
        ("notPorts", &op.not_ports),
    ];
    if lists.iter().all(|(_, v)| v.is_empty()) {
        return Err(Invalid::new(op_path, "must not be empty".into()));
    }
    for (name, v) in &lists {
        values::non_empty(&format!("{op_path}.{name}"), v)?;
    }
    note_l7(l7, &lists[..6]);
    let mut m = Match::default();
    m.ports.pos = values::ports(&format!("{op_path}.ports"), &op.ports)?;
    m.ports.neg = values::ports(&format!("{op_path}.notPorts"), &op.not_ports)?;
    Ok(m)
}

fn from_match(
    from: &FromSpec,
    path: &str,
    ns: &str,
    l7: &mut Vec<String>,
) -> Result<Match, Invalid> {
    let p = format!("{path}.source");
    let Some(s) = &from.source else {
        return Err(Invalid::new(p, "must be set".into()));
    };
    let l7_lists: [(&str, &[String]); 4] = [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ];
    let identity_lists = [
        &s.principals,
        &s.not_principals,
        &s.namespaces,
        &s.not_namespaces,
    ];
    let sa_set = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
    let others = [
        &s.ip_blocks,
        &s.not_ip_blocks,
        &s.trust_domains,
        &s.not_trust_domains,
    ];
    let any_identity = identity_lists.iter().any(|v| !v.is_empty());
    if !sa_set
        && !any_identity
        && others.iter().all(|v| v.is_empty())
        && l7_lists.iter().all(|(_, v)| v.is_empty())
    {
        return Err(Invalid::new(p, "must not be empty".into()));
    }
    if sa_set && any_identity {
        return Err(Invalid::new(
            p,
            "cannot set serviceAccounts with namespaces or principals".into(),
        ));
    }
    for (name, v) in &l7_lists {
        values::non_empty(&format!("{p}.{name}"), v)?;
    }
    // Validated like the L4 ones, as Istio does, though never matched.
    values::ip_blocks(&format!("{p}.remoteIpBlocks"), &s.remote_ip_blocks)?;
    values::ip_blocks(&format!("{p}.notRemoteIpBlocks"), &s.not_remote_ip_blocks)?;
    note_l7(l7, &l7_lists);
    let f = |name: &str| format!("{p}.{name}");
    let mut m = Match::default();
    m.principals.pos = values::principals(&f("principals"), &s.principals)?;
    m.principals.neg = values::principals(&f("notPrincipals"), &s.not_principals)?;
    m.namespaces.pos = values::patterns(&f("namespaces"), &s.namespaces)?;
    m.namespaces.neg = values::patterns(&f("notNamespaces"), &s.not_namespaces)?;
    m.service_accounts.pos =
        values::service_accounts(&f("serviceAccounts"), &s.service_accounts, ns)?;
    m.service_accounts.neg =
        values::service_accounts(&f("notServiceAccounts"), &s.not_service_accounts, ns)?;
    m.trust_domains.pos = values::trust_domains(&f("trustDomains"), &s.trust_domains)?;
    m.trust_domains.neg = values::trust_domains(&f("notTrustDomains"), &s.not_trust_domains)?;
    m.src_ips.pos = values::ip_blocks(&f("ipBlocks"), &s.ip_blocks)?;
    m.src_ips.neg = values::ip_blocks(&f("notIpBlocks"), &s.not_ip_blocks)?;
    Ok(m)
}

fn when_match(
    cond: &Condition,
    path: &str,
    ns: &str,
    l7: &mut Vec<String>,
) -> Result<Match, Invalid> {
    let key = values::when_key(path, &cond.key)?;
    if cond.values.is_empty() && cond.not_values.is_empty() {
        return Err(Invalid::new(
            path.into(),
            format!(
                "at least one of values or notValues must be set for key {}",
                cond.key
            ),
        ));
    }
    let (vp, np) = (format!("{path}.values"), format!("{path}.notValues"));
    values::non_empty(&vp, &cond.values)?;
    values::non_empty(&np, &cond.not_values)?;
    let (pos, neg) = (&cond.values, &cond.not_values);
    let mut m = Match::default();
    match key {
        WhenKey::SourceIp => {
            m.src_ips.pos = values::ip_blocks(&vp, pos)?;
            m.src_ips.neg = values::ip_blocks(&np, neg)?;
        }
        WhenKey::DestinationIp => {
            m.dst_ips.pos = values::ip_blocks(&vp, pos)?;
            m.dst_ips.neg = values::ip_blocks(&np, neg)?;
        }
        WhenKey::DestinationPort => {
            m.ports.pos = values::ports(&vp, pos)?;
            m.ports.neg = values::ports(&np, neg)?;
        }
        WhenKey::SourceNamespace => {
            m.namespaces.pos = values::patterns(&vp, pos)?;
            m.namespaces.neg = values::patterns(&np, neg)?;
        }
        WhenKey::SourcePrincipal => {
            m.principals.pos = values::principals(&vp, pos)?;
            m.principals.neg = values::principals(&np, neg)?;
        }
        WhenKey::SourceServiceAccount => {
            // `name` alone means the policy's namespace (istiod's `serviceAccountRegex`).
            m.service_accounts.pos = values::service_accounts(&vp, pos, ns)?;
            m.service_accounts.neg = values::service_accounts(&np, neg, ns)?;
        }
        WhenKey::SourceTrustDomain => {
            m.trust_domains.pos = values::trust_domains(&vp, pos)?;
            m.trust_domains.neg = values::trust_domains(&np, neg)?;
        }
        WhenKey::L7 => {
            if cond.key == "remote.ip" {
                values::ip_blocks(&vp, pos)?;
                values::ip_blocks(&np, neg)?;
            }
            l7.push(cond.key.clone());
        }
    }
    Ok(m)
}

#[cfg(test)]
#[path = "compile_tests.rs"]
mod tests;
