//! Which workloads a policy applies to.
//!
//! AuthorizationPolicy scope in ambient (istio/istio `pilot/pkg/serviceregistry/ambient/
//! authorization.go` `convertAuthorizationPolicy`, `workloads.go` `buildWorkloadPolicies`): in
//! the root namespace without a selector, every workload of the mesh; in another namespace
//! without a selector, every workload of that namespace; with `selector.matchLabels`, the
//! workloads of the policy's namespace carrying those labels, or of every namespace when the
//! policy is in the root namespace.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use serde_json::Value;

use super::resource::{AuthzSpec, TargetRef};
use super::Invalid;
use crate::workload::Pod;

/// Which workloads of the policy's namespace (or of the mesh, from the root namespace) a policy
/// is about, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// No selector (or one with no labels): every workload.
    All,
    /// `selector.matchLabels`.
    Labels(BTreeMap<String, String>),
    /// `targetRef`/`targetRefs`: a Service, Gateway, ... (waypoint or gateway enforcement).
    Refs(Vec<TargetRef>),
}

/// The workloads the spec is about; at most one of selector, targetRef, targetRefs.
pub(crate) fn target(spec: &AuthzSpec) -> Result<Target, Invalid> {
    let mut refs: Vec<TargetRef> = spec.target_refs.iter().flatten().cloned().collect();
    refs.extend(spec.target_ref.iter().cloned());
    let kinds = [
        spec.selector.is_some(),
        spec.target_ref.is_some(),
        spec.target_refs.as_ref().is_some_and(|r| !r.is_empty()),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        return Err(Invalid::new(
            "spec".into(),
            "only one of selector, targetRef or targetRefs can be set".into(),
        ));
    }
    if !refs.is_empty() {
        return Ok(Target::Refs(refs));
    }
    match &spec.selector {
        Some(sel) => {
            selector_labels(&sel.match_labels)?;
            Ok(labels_target(&sel.match_labels))
        }
        None => Ok(Target::All),
    }
}

/// `matchLabels` with no labels selects every workload, as an absent selector does.
fn labels_target(labels: &BTreeMap<String, String>) -> Target {
    if labels.is_empty() {
        Target::All
    } else {
        Target::Labels(labels.clone())
    }
}

/// Label keys must be non-empty, and neither keys nor values may hold `*` (CRD validation).
pub(crate) fn selector_labels(labels: &BTreeMap<String, String>) -> Result<(), Invalid> {
    for (k, v) in labels {
        if k.is_empty() || k.contains('*') || v.contains('*') {
            return Err(Invalid::new(
                format!("spec.selector.matchLabels[{k:?}]"),
                "label keys must be non-empty, and wildcards are not allowed in keys or values"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// The target of a spec that failed to parse, read as far as possible: its selector labels if
/// they are a map of strings, otherwise every workload of the namespace.
pub(crate) fn lenient_target(raw: &Value) -> Target {
    let labels = raw
        .get("selector")
        .and_then(|s| s.get("matchLabels"))
        .and_then(|m| serde_json::from_value::<BTreeMap<String, String>>(m.clone()).ok());
    let refs = ["targetRefs", "targetRef"]
        .iter()
        .any(|k| raw.get(*k).is_some_and(|v| !v.is_null()));
    match labels {
        Some(l) if !refs => labels_target(&l),
        _ => Target::All,
    }
}

/// The workloads one policy covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every workload.
    Mesh,
    /// Every workload of one namespace.
    Namespace(String),
    /// Workloads carrying all these labels, in one namespace or (`None`) in every namespace.
    Labels {
        namespace: Option<String>,
        labels: BTreeMap<String, String>,
    },
    /// The endpoints (by IP) of these Services of one namespace.
    Endpoints {
        namespace: String,
        services: Vec<String>,
    },
}

/// Service endpoint IPs by `(namespace, name)`, for [`Scope::Endpoints`].
pub(crate) type EndpointIps = HashMap<(String, String), Vec<IpAddr>>;

impl Scope {
    /// The scope of a policy in `namespace` about `target`. `targetRefs` that all name Services
    /// of the policy's namespace give their endpoints; any other reference (a Gateway, a
    /// ServiceEntry, a GatewayClass, another namespace) gives the whole namespace, since ambit
    /// cannot tell which of its workloads it concerns.
    pub fn of(namespace: &str, root: &str, target: &Target) -> Scope {
        let whole = || {
            if namespace == root {
                Scope::Mesh
            } else {
                Scope::Namespace(namespace.to_owned())
            }
        };
        match target {
            Target::All => whole(),
            Target::Labels(labels) => Scope::Labels {
                namespace: (namespace != root).then(|| namespace.to_owned()),
                labels: labels.clone(),
            },
            Target::Refs(refs) => {
                let services = refs
                    .iter()
                    .all(|r| {
                        r.kind == "Service"
                            && matches!(r.group.as_str(), "" | "core")
                            && (r.namespace.is_empty() || r.namespace == namespace)
                    })
                    .then(|| refs.iter().map(|r| r.name.clone()).collect::<Vec<_>>());
                match services {
                    Some(services) => Scope::Endpoints {
                        namespace: namespace.to_owned(),
                        services,
                    },
                    None => whole(),
                }
            }
        }
    }

    /// Whether `pod` is covered.
    pub fn covers(&self, pod: &Pod, endpoints: &EndpointIps) -> bool {
        match self {
            Scope::Mesh => true,
            Scope::Namespace(ns) => pod.namespace == *ns,
            Scope::Labels { namespace, labels } => {
                namespace.as_ref().is_none_or(|ns| *ns == pod.namespace)
                    && labels.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
            }
            Scope::Endpoints {
                namespace,
                services,
            } => services.iter().any(|s| {
                endpoints
                    .get(&(namespace.clone(), s.clone()))
                    .is_some_and(|ips| ips.iter().any(|ip| pod.ips.contains(ip)))
            }),
        }
    }

    /// The namespace whose workloads alone can be covered, if only one.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Scope::Mesh
            | Scope::Labels {
                namespace: None, ..
            } => None,
            Scope::Namespace(ns)
            | Scope::Labels {
                namespace: Some(ns),
                ..
            }
            | Scope::Endpoints { namespace: ns, .. } => Some(ns),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels = |l: &BTreeMap<String, String>| {
            l.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Scope::Mesh => f.write_str("every workload of the mesh"),
            Scope::Namespace(ns) => write!(f, "every workload of namespace {ns}"),
            Scope::Labels {
                namespace: Some(ns),
                labels: l,
            } => write!(f, "workloads of namespace {ns} labelled {}", labels(l)),
            Scope::Labels {
                namespace: None,
                labels: l,
            } => write!(f, "workloads of every namespace labelled {}", labels(l)),
            Scope::Endpoints {
                namespace,
                services,
            } => write!(
                f,
                "the endpoints of Service(s) {} in namespace {namespace}",
                services.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, labels: &[(&str, &str)], ip: &str) -> Pod {
        Pod {
            namespace: ns.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ips: vec![ip.parse().unwrap()],
            ..Pod::default()
        }
    }

    fn labels(l: &[(&str, &str)]) -> BTreeMap<String, String> {
        l.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn root_namespace_is_mesh_wide() {
        let eps = EndpointIps::new();
        let s = Scope::of("istio-system", "istio-system", &Target::All);
        assert_eq!(s, Scope::Mesh);
        assert!(s.covers(&pod("any", &[], "10.0.0.1"), &eps));
        let s = Scope::of(
            "istio-system",
            "istio-system",
            &Target::Labels(labels(&[("app", "a")])),
        );
        assert!(s.covers(&pod("x", &[("app", "a")], "10.0.0.1"), &eps));
        assert!(!s.covers(&pod("x", &[("app", "b")], "10.0.0.1"), &eps));
        // A custom root namespace moves the mesh-wide scope.
        assert_eq!(
            Scope::of("istio-system", "mesh-root", &Target::All),
            Scope::Namespace("istio-system".into())
        );
    }

    #[test]
    fn namespace_and_selector() {
        let eps = EndpointIps::new();
        let s = Scope::of("shop", "istio-system", &Target::All);
        assert!(s.covers(&pod("shop", &[], "10.0.0.1"), &eps));
        assert!(!s.covers(&pod("other", &[], "10.0.0.1"), &eps));
        let s = Scope::of(
            "shop",
            "istio-system",
            &Target::Labels(labels(&[("app", "web"), ("v", "1")])),
        );
        assert!(s.covers(
            &pod(
                "shop",
                &[("app", "web"), ("v", "1"), ("x", "y")],
                "10.0.0.1"
            ),
            &eps
        ));
        assert!(!s.covers(&pod("shop", &[("app", "web")], "10.0.0.1"), &eps));
        assert!(!s.covers(
            &pod("other", &[("app", "web"), ("v", "1")], "10.0.0.1"),
            &eps
        ));
        assert_eq!(
            s.to_string(),
            "workloads of namespace shop labelled app=web,v=1"
        );
    }

    #[test]
    fn service_refs_cover_endpoints_others_the_namespace() {
        let svc = |kind: &str, name: &str| TargetRef {
            group: String::new(),
            kind: kind.into(),
            name: name.into(),
            namespace: String::new(),
        };
        let mut eps = EndpointIps::new();
        eps.insert(
            ("shop".into(), "web".into()),
            vec!["10.0.0.1".parse().unwrap()],
        );
        let s = Scope::of(
            "shop",
            "istio-system",
            &Target::Refs(vec![svc("Service", "web")]),
        );
        assert!(s.covers(&pod("shop", &[], "10.0.0.1"), &eps));
        assert!(!s.covers(&pod("shop", &[], "10.0.0.2"), &eps));
        let s = Scope::of(
            "shop",
            "istio-system",
            &Target::Refs(vec![svc("Service", "web"), svc("Gateway", "gw")]),
        );
        assert_eq!(s, Scope::Namespace("shop".into()));
    }
}
