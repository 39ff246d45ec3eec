//! The Istio objects as `kubectl get -o json` prints them, and nothing more.
//!
//! The envelope (`apiVersion`, `kind`, `metadata`) is read leniently, because the API server
//! adds fields ambit has no use for (uid, managedFields, ...). Every `spec` struct denies unknown
//! fields, so a misspelt field (`notPrincipal`) is an error naming it rather than a rule that
//! silently means something else. Shapes follow the `security.istio.io` v1 CRD schema
//! (istio/istio `manifests/charts/base/files/crd-all.gen.yaml`); v1beta1 has the same spec.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::Invalid;

/// The API group of both kinds.
pub const API_GROUP: &str = "security.istio.io";
/// Versions of [`API_GROUP`] accepted in `apiVersion`.
pub const API_VERSIONS: [&str; 2] = ["v1", "v1beta1"];
/// Annotation that makes an AuthorizationPolicy log-only (istiod's `annotation.IoIstioDryRun`).
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Any Kubernetes object: what is needed to name it and find its spec.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Envelope {
    #[serde(default)]
    pub api_version: String,
    /// Read from the raw object before the envelope (to name even a malformed one).
    #[serde(default, rename = "kind")]
    pub _kind: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: Option<Value>,
    /// Printed by kubectl, written by istiod; never read.
    #[serde(default, rename = "status")]
    pub _status: Option<serde::de::IgnoredAny>,
}

/// The object metadata ambit reads here; other fields (name and namespace, read from the raw
/// object beforehand, included) are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Metadata {
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339 in UTC, so string order is time order; decides between conflicting
    /// PeerAuthentications (the oldest wins, as in istiod).
    #[serde(default)]
    pub creation_timestamp: Option<String>,
}

/// `spec.selector`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// One entry of `spec.targetRefs` (or the older `spec.targetRef`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TargetRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}

/// `spec.provider` (CUSTOM only).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Provider {
    #[serde(default)]
    pub name: String,
}

/// AuthorizationPolicy `spec`. Rules stay raw here and are read one by one, so an error can
/// name the rule's index.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct AuthzSpec {
    pub selector: Option<Selector>,
    pub target_ref: Option<TargetRef>,
    pub target_refs: Option<Vec<TargetRef>>,
    pub action: Option<String>,
    pub provider: Option<Provider>,
    pub rules: Option<Vec<Value>>,
}

/// One entry of `spec.rules`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSpec {
    pub from: Option<Vec<FromSpec>>,
    pub to: Option<Vec<ToSpec>>,
    pub when: Option<Vec<Condition>>,
}

/// One entry of `from`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FromSpec {
    pub source: Option<Source>,
}

/// One entry of `to`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToSpec {
    pub operation: Option<Operation>,
}

/// `from.source`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    #[serde(default)]
    pub trust_domains: Vec<String>,
    #[serde(default)]
    pub not_trust_domains: Vec<String>,
}

/// `to.operation`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// One entry of `when`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// PeerAuthentication `spec`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PeerAuthSpec {
    pub selector: Option<Selector>,
    pub mtls: Option<MtlsSpec>,
    /// Keys are port numbers written as strings (JSON object keys).
    pub port_level_mtls: Option<BTreeMap<String, MtlsSpec>>,
}

/// `mtls` and the values of `portLevelMtls`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MtlsSpec {
    pub mode: Option<String>,
}

/// Deserializes `value` as `T`; an error carries `path` (serde's message names the unknown
/// field or the wrong type, but not where it is).
pub(crate) fn read<T: serde::de::DeserializeOwned>(value: Value, path: &str) -> Result<T, Invalid> {
    serde_json::from_value(value).map_err(|e| Invalid::new(path.into(), e.to_string()))
}
