//! PeerAuthentication: for one workload and one port, is plaintext accepted?
//!
//! Istio resolves the mode per workload from three levels, the most specific set one winning:
//! a workload policy (selector, same namespace), the namespace policy (no selector), the mesh
//! policy (root namespace, no selector); `UNSET` inherits, and at each level the oldest policy
//! wins a conflict (istio/istio `pilot/pkg/serviceregistry/ambient/authorization.go`:
//! `convertedSelectorPeerAuthentications`). A workload policy's `portLevelMtls` overrides the
//! result for its ports. In ambient, STRICT means "deny a connection without a peer identity",
//! which at the destination means: no plaintext on 15006. DISABLE accepts plaintext like
//! PERMISSIVE (ambit never originates plaintext between mesh pods).
//!
//! Beneath every PeerAuthentication lie ambit's own settings: the namespace label
//! `ambit.io/mtls-mode` stands for a namespace policy where the namespace has none, and the
//! daemon's `--mtls-mode` for the mesh policy where there is none.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::model::PolicyRef;
use super::resource::{read, MtlsSpec, PeerAuthSpec};
use super::scope::selector_labels;
use super::Invalid;

/// A PeerAuthentication mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Inherit from the level above.
    Unset,
    /// No mTLS required; plaintext accepted.
    Disable,
    /// mTLS and plaintext accepted.
    Permissive,
    /// Only mTLS (HBONE) accepted.
    Strict,
}

impl MtlsMode {
    /// Whether a connection without a peer identity is accepted.
    pub fn accepts_plaintext(self) -> bool {
        self != MtlsMode::Strict
    }

    fn parse(path: &str, spec: Option<&MtlsSpec>) -> Result<MtlsMode, Invalid> {
        match spec.and_then(|m| m.mode.as_deref()) {
            None | Some("UNSET") => Ok(MtlsMode::Unset),
            Some("DISABLE") => Ok(MtlsMode::Disable),
            Some("PERMISSIVE") => Ok(MtlsMode::Permissive),
            Some("STRICT") => Ok(MtlsMode::Strict),
            Some(other) => Err(Invalid::new(
                format!("{path}.mode"),
                format!("{other:?} is not one of UNSET, DISABLE, PERMISSIVE, STRICT"),
            )),
        }
    }
}

/// A valid PeerAuthentication.
#[derive(Clone, Debug)]
pub(crate) struct PeerAuth {
    pub id: Arc<PolicyRef>,
    /// Creation time (RFC 3339); empty when unknown, which sorts first, as Go's zero time.
    pub created: String,
    /// `None` for a namespace or mesh policy.
    pub labels: Option<BTreeMap<String, String>>,
    pub mode: MtlsMode,
    pub ports: BTreeMap<u16, MtlsMode>,
}

impl PeerAuth {
    /// Ordering key for "the oldest wins": creation time, then name for a stable choice.
    pub fn age_key(&self) -> (&str, &str) {
        (&self.created, &self.id.name)
    }
}

/// The parts of a PeerAuthentication `spec`.
pub(crate) struct ParsedSpec {
    pub labels: Option<BTreeMap<String, String>>,
    pub mode: MtlsMode,
    pub ports: BTreeMap<u16, MtlsMode>,
}

/// Parses and validates a PeerAuthentication `spec` as istiod's `ValidatePeerAuthentication`
/// and the CRD schema do. On error, also returns the selector labels if they could be read,
/// for the scope that then fails closed.
pub(crate) fn parse(
    spec: Option<Value>,
) -> Result<ParsedSpec, (Invalid, Option<BTreeMap<String, String>>)> {
    let raw = spec.unwrap_or_else(|| Value::Object(Default::default()));
    let lenient = raw
        .get("selector")
        .and_then(|s| s.get("matchLabels"))
        .and_then(|m| serde_json::from_value::<BTreeMap<String, String>>(m.clone()).ok())
        .filter(|l| !l.is_empty());
    let spec: PeerAuthSpec = read(raw, "spec").map_err(|e| (e, lenient.clone()))?;
    let labels = spec
        .selector
        .as_ref()
        .map(|s| s.match_labels.clone())
        .filter(|l| !l.is_empty());
    let fail = |e| (e, labels.clone());
    if let Some(l) = &labels {
        selector_labels(l).map_err(fail)?;
    }
    let mode = MtlsMode::parse("spec.mtls", spec.mtls.as_ref()).map_err(fail)?;
    let mut ports = BTreeMap::new();
    if let Some(levels) = &spec.port_level_mtls {
        if levels.is_empty() {
            return Err(fail(Invalid::new(
                "spec.portLevelMtls".into(),
                "if set, must have at least one port".into(),
            )));
        }
        if labels.is_none() {
            return Err(fail(Invalid::new(
                "spec.portLevelMtls".into(),
                "a mesh or namespace PeerAuthentication (no selector) cannot have port-level mTLS"
                    .into(),
            )));
        }
        for (key, level) in levels {
            let path = format!("spec.portLevelMtls[{key:?}]");
            let port = key.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                fail(Invalid::new(
                    path.clone(),
                    format!("{key:?} is not a port (expected 1 to 65535)"),
                ))
            })?;
            ports.insert(port, MtlsMode::parse(&path, Some(level)).map_err(fail)?);
        }
    }
    Ok(ParsedSpec {
        labels,
        mode,
        ports,
    })
}

/// The accepted mode of one port range, and who set it.
#[derive(Clone, Debug)]
pub(crate) struct Verdict {
    /// Never [`MtlsMode::Unset`].
    pub mode: MtlsMode,
    pub origin: Arc<PolicyRef>,
}

/// One workload's resolved modes: a default and per-port exceptions.
#[derive(Clone, Debug)]
pub(crate) struct MtlsTable {
    pub default: Verdict,
    pub ports: Vec<(u16, Verdict)>,
}

impl MtlsTable {
    /// The verdict for `port`.
    pub fn verdict(&self, port: u16) -> &Verdict {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, v)| v)
            .unwrap_or(&self.default)
    }
}

/// A mode set at one level (a policy, the namespace label or the daemon default).
#[derive(Clone, Debug)]
pub(crate) struct Level {
    pub mode: MtlsMode,
    pub origin: Arc<PolicyRef>,
}

impl Level {
    pub fn of(pa: &PeerAuth) -> Level {
        Level {
            mode: pa.mode,
            origin: pa.id.clone(),
        }
    }
}

/// Resolves one workload: `default` (the daemon's), then `mesh`, `namespace` and `workload`,
/// each overriding the one before unless UNSET, then the workload's port levels. A `forced`
/// origin (a rejected PeerAuthentication covering the workload) makes everything STRICT.
pub(crate) fn resolve(
    default: &Level,
    mesh: Option<Level>,
    namespace: Option<Level>,
    workload: Option<&PeerAuth>,
    forced: Option<Arc<PolicyRef>>,
) -> MtlsTable {
    if let Some(origin) = forced {
        return MtlsTable {
            default: Verdict {
                mode: MtlsMode::Strict,
                origin,
            },
            ports: Vec::new(),
        };
    }
    let mut current = default.clone();
    for level in [mesh, namespace, workload.map(Level::of)]
        .into_iter()
        .flatten()
    {
        if level.mode != MtlsMode::Unset {
            current = level;
        }
    }
    let ports = workload
        .map(|w| {
            w.ports
                .iter()
                .filter(|(_, m)| **m != MtlsMode::Unset)
                .map(|(p, m)| {
                    let v = Verdict {
                        mode: *m,
                        origin: w.id.clone(),
                    };
                    (*p, v)
                })
                .collect()
        })
        .unwrap_or_default();
    MtlsTable {
        default: Verdict {
            mode: current.mode,
            origin: current.origin,
        },
        ports,
    }
}

#[cfg(test)]
#[path = "peer_auth_tests.rs"]
mod tests;
