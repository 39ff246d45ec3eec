//! SPIFFE identities as Istio uses them: `spiffe://<trust-domain>/ns/<namespace>/sa/<sa>`.

use std::fmt;
use std::str::FromStr;

use super::IdentityError;

pub use crate::config::DEFAULT_TRUST_DOMAIN;

const SCHEME: &str = "spiffe://";

/// A workload identity: trust domain, Kubernetes namespace and service account.
///
/// Compared, hashed and ordered by its three parts, so two spellings of the same identity are
/// equal only if the parts are byte-for-byte equal (SPIFFE IDs are case-sensitive in the path).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl Identity {
    /// Builds an identity from its parts, checking each: non-empty, printable ASCII (a URI SAN
    /// is an IA5String), and free of `/`, `?` and `#`. Without that check a namespace such as
    /// `a/sa/b` from a pod record would produce a name that parses back as a different identity.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, IdentityError> {
        let id = Identity {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        let problem = [&id.trust_domain, &id.namespace, &id.service_account]
            .into_iter()
            .find_map(|p| part_problem(p));
        match problem {
            None => Ok(id),
            Some(reason) => Err(IdentityError::InvalidIdentity {
                input: id.to_string(),
                reason,
            }),
        }
    }

    /// The trust domain (e.g. `cluster.local`).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    /// Parses exactly `spiffe://<td>/ns/<ns>/sa/<sa>`: five path segments with the literals
    /// `ns` and `sa` in place and parts as accepted by [`Identity::new`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| IdentityError::InvalidIdentity {
            input: s.to_owned(),
            reason,
        };
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("does not start with spiffe://"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [td, ns_lit, ns, sa_lit, sa] = parts.as_slice() else {
            return Err(bad("wrong number of path segments"));
        };
        if *ns_lit != "ns" || *sa_lit != "sa" {
            return Err(bad("path must be /ns/<namespace>/sa/<service-account>"));
        }
        if let Some(reason) = [td, ns, sa].into_iter().find_map(|p| part_problem(p)) {
            return Err(bad(reason));
        }
        Ok(Identity {
            trust_domain: (*td).to_owned(),
            namespace: (*ns).to_owned(),
            service_account: (*sa).to_owned(),
        })
    }
}

/// Why `part` cannot be a trust domain, namespace or service account, if it cannot.
fn part_problem(part: &str) -> Option<&'static str> {
    if part.is_empty() {
        Some("empty trust domain, namespace or service account")
    } else if !part.bytes().all(|b| b.is_ascii_graphic()) {
        Some("contains whitespace, control or non-ASCII characters")
    } else if part.contains(['/', '?', '#']) {
        Some("a part contains '/', '?' or '#'")
    } else {
        None
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        let s = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
        let id: Identity = s.parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-productpage");
        assert_eq!(id.to_string(), s);
        assert_eq!(
            id,
            Identity::new(DEFAULT_TRUST_DOMAIN, "default", "bookinfo-productpage").unwrap()
        );
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            "",
            "cluster.local/ns/a/sa/b",
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/namespace/a/sa/b",
            "spiffe://cluster.local/ns/a/serviceaccount/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/a/sa/",
            "spiffe://cluster.local/ns/a b/sa/c",
            "spiffe://cluster.local/ns/a/sa/b?x=1",
            "spiffe://cluster.local/ns/ä/sa/b",
        ] {
            let err = bad.parse::<Identity>().unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains("spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"));
        }
    }

    #[test]
    fn new_checks_parts() {
        for (td, ns, sa) in [
            ("", "a", "b"),
            ("td", "a/sa/b", "c"),
            ("td", "a", "b c"),
            ("td", "a", ""),
        ] {
            let err = Identity::new(td, ns, sa).unwrap_err().to_string();
            assert!(err.contains("invalid SPIFFE identity"), "{err}");
        }
    }

    #[test]
    fn serde_round_trip() {
        let id = Identity::new("example.org", "ns1", "sa1").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://example.org/ns/ns1/sa/sa1\"");
        assert_eq!(serde_json::from_str::<Identity>(&json).unwrap(), id);
        assert!(serde_json::from_str::<Identity>("\"nope\"").is_err());
    }
}
