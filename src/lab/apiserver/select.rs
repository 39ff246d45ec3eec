//! Which objects a list or watch is about: namespace, name, field selector, label selector.
//!
//! Field selectors support `=`, `==` and `!=` over the fields the real API server indexes for
//! each resource (an unsupported field is a 400, as there). Label selectors support equality
//! (`=`, `==`, `!=`), existence (`k`, `!k`) and sets (`k in (a,b)`, `k notin (a,b)`).

use std::sync::Arc;

use serde_json::{json, Value};

use super::store::{meta_str, ApiError, Change, ChangeKind};
use super::RESOURCES;

/// Fields a field selector may name, per resource kind (plus `metadata.name` and
/// `metadata.namespace` everywhere). Events accept any field.
fn supported_fields(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ]),
        "Namespace" => Some(&["status.phase"]),
        "Service" => Some(&["spec.clusterIP", "spec.type"]),
        "EndpointSlice" => Some(&["addressType"]),
        _ => None,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum FieldOp {
    Eq,
    Ne,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed list/watch scope.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    namespace: Option<String>,
    name: Option<String>,
    fields: Vec<(String, FieldOp, String)>,
    labels: Vec<LabelReq>,
}

impl Filter {
    /// Parses the selectors for resource `res`, in `namespace` (all when `None`), optionally
    /// for one `name`.
    pub fn new(
        res: usize,
        namespace: Option<&str>,
        name: Option<&str>,
        field_selector: Option<&str>,
        label_selector: Option<&str>,
    ) -> Result<Self, ApiError> {
        let mut filter = Filter {
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            ..Filter::default()
        };
        if let Some(sel) = field_selector.filter(|s| !s.trim().is_empty()) {
            let kind = RESOURCES[res].kind;
            for term in sel.split(',') {
                let term = term.trim();
                let (key, op, value) = if let Some((k, v)) = term.split_once("!=") {
                    (k, FieldOp::Ne, v)
                } else if let Some((k, v)) = term.split_once("==") {
                    (k, FieldOp::Eq, v)
                } else if let Some((k, v)) = term.split_once('=') {
                    (k, FieldOp::Eq, v)
                } else {
                    return Err(ApiError::bad_request(format!(
                        "invalid selector: '{sel}'; can't understand '{term}'"
                    )));
                };
                let key = key.trim();
                let supported = matches!(key, "metadata.name" | "metadata.namespace")
                    || supported_fields(kind).is_none_or(|list| list.contains(&key));
                if !supported {
                    return Err(ApiError::bad_request(format!(
                        "field label not supported: {key}"
                    )));
                }
                filter
                    .fields
                    .push((key.to_string(), op, value.trim().to_string()));
            }
        }
        if let Some(sel) = label_selector.filter(|s| !s.trim().is_empty()) {
            filter.labels = parse_labels(sel)?;
        }
        Ok(filter)
    }

    /// Whether `obj` is in scope.
    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace {
            if meta_str(obj, "namespace").unwrap_or_default() != ns {
                return false;
            }
        }
        if let Some(name) = &self.name {
            if meta_str(obj, "name") != Some(name) {
                return false;
            }
        }
        self.fields.iter().all(|(path, op, want)| {
            let hit = field_values(obj, path).iter().any(|v| v == want);
            match op {
                FieldOp::Eq => hit,
                FieldOp::Ne => !hit,
            }
        }) && self.labels.iter().all(|req| label_matches(obj, req))
    }

    /// How a watch with this scope sees `change`, as the real server's watch cache does: a
    /// modification that brings an object into scope is ADDED, one that takes it out is
    /// DELETED (with the previous content and the new resourceVersion).
    pub fn convert(&self, change: &Change) -> Option<(&'static str, Arc<Value>)> {
        let now = self.matches(&change.object);
        match change.kind {
            ChangeKind::Added => now.then(|| ("ADDED", change.object.clone())),
            ChangeKind::Deleted => now.then(|| ("DELETED", change.object.clone())),
            ChangeKind::Modified => {
                let before = change.prev.as_ref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => Some(("MODIFIED", change.object.clone())),
                    (false, true) => Some(("ADDED", change.object.clone())),
                    (true, false) => {
                        let mut old = change.prev.as_deref().cloned().unwrap_or_default();
                        old["metadata"]["resourceVersion"] = json!(change.rv.to_string());
                        Some(("DELETED", Arc::new(old)))
                    }
                    (false, false) => None,
                }
            }
        }
    }
}

/// The value(s) at dotted `path` as strings, the way field selectors compare them: a missing
/// field is `""`, booleans and numbers in their JSON spelling, and a list (`status.podIPs`)
/// matches on any element (or its `ip`).
fn field_values(obj: &Value, path: &str) -> Vec<String> {
    let mut cur = obj;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return vec![String::new()],
        }
    }
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Object(m) => m
            .get("ip")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        other => other.to_string(),
    };
    match cur {
        Value::Array(items) => items.iter().map(scalar).collect(),
        v => vec![scalar(v)],
    }
}

fn label_matches(obj: &Value, req: &LabelReq) -> bool {
    let labels = obj.get("metadata").and_then(|m| m.get("labels"));
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    match req {
        LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
        LabelReq::Ne(k, v) => get(k) != Some(v.as_str()),
        LabelReq::Exists(k) => get(k).is_some(),
        LabelReq::NotExists(k) => get(k).is_none(),
        LabelReq::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
        LabelReq::NotIn(k, vs) => get(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
    }
}

/// Parses a label selector.
fn parse_labels(sel: &str) -> Result<Vec<LabelReq>, ApiError> {
    let bad = |term: &str| {
        ApiError::bad_request(format!(
            "unable to parse requirement: label selector {sel:?}: cannot understand {term:?}"
        ))
    };
    // Split on commas outside parentheses.
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in sel.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&sel[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&sel[start..]);
    let valid_key = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    };
    let mut reqs = Vec::new();
    for raw in terms {
        let term = raw.trim();
        if let Some(open) = term.find('(') {
            let close = term
                .rfind(')')
                .filter(|c| *c > open)
                .ok_or_else(|| bad(term))?;
            let head = term[..open].trim();
            let (key, op) = head
                .rsplit_once(char::is_whitespace)
                .ok_or_else(|| bad(term))?;
            let key = key.trim();
            let values: Vec<String> = term[open + 1..close]
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            if !valid_key(key) {
                return Err(bad(term));
            }
            reqs.push(match op {
                "in" => LabelReq::In(key.to_string(), values),
                "notin" => LabelReq::NotIn(key.to_string(), values),
                _ => return Err(bad(term)),
            });
        } else if let Some(key) = term.strip_prefix('!') {
            let key = key.trim();
            if !valid_key(key) {
                return Err(bad(term));
            }
            reqs.push(LabelReq::NotExists(key.to_string()));
        } else if let Some((k, v)) = term.split_once("!=") {
            reqs.push(LabelReq::Ne(k.trim().to_string(), v.trim().to_string()));
        } else if let Some((k, v)) = term.split_once("==") {
            reqs.push(LabelReq::Eq(k.trim().to_string(), v.trim().to_string()));
        } else if let Some((k, v)) = term.split_once('=') {
            reqs.push(LabelReq::Eq(k.trim().to_string(), v.trim().to_string()));
        } else if valid_key(term) {
            reqs.push(LabelReq::Exists(term.to_string()));
        } else {
            return Err(bad(term));
        }
        if let Some(LabelReq::Eq(k, _) | LabelReq::Ne(k, _)) = reqs.last() {
            if !valid_key(k) {
                return Err(bad(term));
            }
        }
    }
    Ok(reqs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_res() -> usize {
        super::super::find_resource("", "v1", "pods").unwrap()
    }

    #[test]
    fn selectors_parse_and_match() {
        let pod = json!({"metadata": {"name": "a", "namespace": "lab",
                         "labels": {"app": "web", "tier": "front"}},
                         "spec": {"nodeName": "n1", "hostNetwork": false},
                         "status": {"podIPs": [{"ip": "10.0.0.2"}, {"ip": "fd00::2"}]}});
        let f = |fs: Option<&str>, ls: Option<&str>| {
            Filter::new(pod_res(), None, None, fs, ls)
                .unwrap()
                .matches(&pod)
        };
        assert!(f(Some("spec.nodeName=n1"), None));
        assert!(f(Some("spec.nodeName==n1,metadata.name=a"), None));
        assert!(!f(Some("spec.nodeName!=n1"), None));
        assert!(f(Some("spec.hostNetwork=false"), None));
        assert!(f(Some("status.podIPs=fd00::2"), None));
        assert!(f(Some("status.nominatedNodeName="), None));
        assert!(f(None, Some("app=web,tier in (front, back)")));
        assert!(f(None, Some("app,!missing,tier notin (back)")));
        assert!(!f(None, Some("app!=web")));
        assert!(!f(None, Some("tier notin (front)")));
        let err = Filter::new(pod_res(), None, None, Some("spec.node=n1"), None).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("spec.node"), "{}", err.message);
        assert!(Filter::new(pod_res(), None, None, None, Some("a in b")).is_err());
    }
}
