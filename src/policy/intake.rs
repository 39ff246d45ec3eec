//! Reading the `istio` resources of a workload snapshot into a [`PolicySnapshot`]: each is
//! named, checked and filed as an AuthorizationPolicy, a PeerAuthentication or a rejection.
//!
//! A rejected AuthorizationPolicy is replaced by a deny-all policy over the scope it would have
//! had (not for AUDIT, which changes no access); a rejected PeerAuthentication makes its scope
//! STRICT. The `ambit.io/mtls-mode` namespace label is read here too, as a namespace-wide
//! PeerAuthentication shorthand.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::compile;
use super::model::{CompiledPolicy, PolicyRef, RefKind};
use super::peer_auth::{self, Level, MtlsMode, PeerAuth};
use super::resource::{Envelope, API_GROUP, API_VERSIONS, DRY_RUN_ANNOTATION};
use super::scope::{Scope, Target};
use super::snapshot::Scoped;
use super::{PolicySnapshot, PolicyWarning, RejectedPolicy};
// The label stays the reconciler's constant.
use crate::config::MTLS_MODE_LABEL;
use crate::workload::Snapshot;

impl PolicySnapshot {
    /// Reads one resource and files it as a policy, a PeerAuthentication or a rejection.
    pub(super) fn add_resource(&mut self, value: &Value) {
        let text = |k: &str| {
            value
                .get("metadata")
                .and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let raw_kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        let kind = match raw_kind {
            "AuthorizationPolicy" => RefKind::AuthorizationPolicy,
            "PeerAuthentication" => RefKind::PeerAuthentication,
            _ => RefKind::Other,
        };
        let id = Arc::new(PolicyRef {
            kind,
            namespace: text("namespace"),
            name: text("name"),
        });
        if kind == RefKind::Other {
            let shown = if raw_kind.is_empty() {
                "(none)"
            } else {
                raw_kind
            };
            self.reject(
                &id,
                "kind",
                format!("kind {shown:?} is not AuthorizationPolicy or PeerAuthentication"),
                "ignored".into(),
            );
            return;
        }
        let envelope = match Envelope::deserialize(value) {
            Ok(e) => e,
            Err(e) => return self.fail_closed(&id, "object", e.to_string(), Target::All),
        };
        let group_ok = envelope
            .api_version
            .split_once('/')
            .is_some_and(|(g, v)| g == API_GROUP && API_VERSIONS.contains(&v));
        if !group_ok {
            let why = format!(
                "apiVersion {:?} is not {API_GROUP}/v1 or {API_GROUP}/v1beta1",
                envelope.api_version
            );
            return self.fail_closed(&id, "apiVersion", why, Target::All);
        }
        if id.name.is_empty() {
            return self.fail_closed(&id, "metadata.name", "missing".into(), Target::All);
        }
        if id.namespace.is_empty() {
            let why = "missing: the policy's scope is unknown, so ambit denies it mesh-wide";
            return self.fail_closed(&id, "metadata.namespace", why.into(), Target::All);
        }
        match kind {
            RefKind::AuthorizationPolicy => self.add_authz(id, envelope),
            _ => self.add_peer_auth(id, envelope),
        }
    }

    fn add_authz(&mut self, id: Arc<PolicyRef>, envelope: Envelope) {
        let dry_run = match envelope.metadata.annotations.get(DRY_RUN_ANNOTATION) {
            None => false,
            Some(v) => parse_go_bool(v).unwrap_or_else(|| {
                self.warn(&id, format!("annotation {DRY_RUN_ANNOTATION}={v:?} is not a boolean: the policy is enforced"));
                false
            }),
        };
        match compile::authorization(envelope.spec, &id.namespace) {
            Ok(c) => {
                for w in c.warnings {
                    self.warn(&id, w);
                }
                let scope = Scope::of(&id.namespace, &self.config.root_namespace, &c.target);
                let policy = CompiledPolicy {
                    id,
                    action: c.action,
                    dry_run,
                    rules: c.rules,
                    fail_closed: None,
                };
                self.add_scoped(policy, scope);
            }
            // A log-only policy changes no access, so refusing it opens nothing.
            Err(r) if !r.fail_closed || dry_run => {
                let effect = if dry_run {
                    "ignored (a dry-run policy is not enforced)"
                } else {
                    "ignored (an AUDIT policy only logs)"
                };
                self.reject(&id, &r.invalid.field, r.invalid.reason, effect.into());
            }
            Err(r) => self.fail_closed(&id, &r.invalid.field, r.invalid.reason, r.target),
        }
    }

    fn add_peer_auth(&mut self, id: Arc<PolicyRef>, envelope: Envelope) {
        match peer_auth::parse(envelope.spec) {
            Ok(p) => self.peer_auths.push(PeerAuth {
                id,
                created: envelope.metadata.creation_timestamp.unwrap_or_default(),
                labels: p.labels,
                mode: p.mode,
                ports: p.ports,
            }),
            Err((invalid, labels)) => {
                let target = labels.map(Target::Labels).unwrap_or(Target::All);
                self.fail_closed(&id, &invalid.field, invalid.reason, target);
            }
        }
    }

    /// Rejects `id`; for an AuthorizationPolicy its scope is then denied, for a
    /// PeerAuthentication its scope becomes STRICT.
    fn fail_closed(&mut self, id: &Arc<PolicyRef>, field: &str, reason: String, target: Target) {
        let scope = if id.namespace.is_empty() {
            Scope::Mesh
        } else {
            Scope::of(&id.namespace, &self.config.root_namespace, &target)
        };
        if id.kind == RefKind::PeerAuthentication {
            let effect = format!("plaintext refused (STRICT) for {scope}");
            self.reject(id, field, reason, effect);
            self.forced_strict.push((scope, id.clone()));
            return;
        }
        let effect = format!("every connection denied to {scope}");
        let why = format!("{id} is invalid ({field}): {reason}; ambit denies its scope");
        self.reject(id, field, reason, effect);
        self.add_scoped(CompiledPolicy::fail_closed(id.clone(), why), scope);
    }

    fn reject(&mut self, id: &PolicyRef, field: &str, reason: String, effect: String) {
        tracing::warn!(policy = %id, field, %reason, %effect, "policy rejected");
        self.rejected.push(RejectedPolicy {
            kind: kind_word(id.kind).into(),
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            field: field.into(),
            reason,
            effect,
        });
    }

    fn warn(&mut self, id: &PolicyRef, message: String) {
        self.warnings.push(PolicyWarning {
            policy: id.to_string(),
            message,
        });
    }

    fn add_scoped(&mut self, policy: CompiledPolicy, scope: Scope) {
        let index = self.authz.len();
        match scope.namespace() {
            Some(ns) => self
                .authz_by_ns
                .entry(ns.to_owned())
                .or_default()
                .push(index),
            None => self.authz_mesh.push(index),
        }
        self.authz.push(Scoped {
            policy: Arc::new(policy),
            scope,
        });
    }

    /// Reads the `ambit.io/mtls-mode` label of every namespace.
    pub(super) fn namespace_labels(&mut self, snapshot: &Snapshot) {
        for ns in &snapshot.namespaces {
            let Some(value) = ns.labels.get(MTLS_MODE_LABEL) else {
                continue;
            };
            let origin = Arc::new(PolicyRef {
                kind: RefKind::NamespaceLabel,
                namespace: ns.name.clone(),
                name: format!("{MTLS_MODE_LABEL}={value}"),
            });
            let mode = match value.as_str() {
                "strict" => MtlsMode::Strict,
                "permissive" => MtlsMode::Permissive,
                _ => {
                    let reason = format!("{value:?} is not strict or permissive");
                    let effect = format!(
                        "plaintext refused (STRICT) for every workload of namespace {}",
                        ns.name
                    );
                    self.reject(
                        &origin,
                        &format!("metadata.labels[{MTLS_MODE_LABEL}]"),
                        reason,
                        effect,
                    );
                    MtlsMode::Strict
                }
            };
            self.ns_labels
                .insert(ns.name.clone(), Level { mode, origin });
        }
    }
}

/// Adds `value` to `out`, or its items for a `kubectl get -o json` list (`kind: List`).
pub(super) fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    let is_list = value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"));
    match value.get("items").and_then(Value::as_array) {
        Some(items) if is_list => items.iter().for_each(|i| flatten(i, out)),
        _ => out.push(value),
    }
}

/// Go's `strconv.ParseBool`, which istiod uses for the dry-run annotation.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn kind_word(kind: RefKind) -> &'static str {
    match kind {
        RefKind::AuthorizationPolicy => "AuthorizationPolicy",
        RefKind::PeerAuthentication => "PeerAuthentication",
        RefKind::NamespaceLabel => "Namespace",
        RefKind::MtlsDefault => "Flag",
        RefKind::Other => "Unknown",
    }
}
