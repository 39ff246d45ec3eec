//! Istio's string patterns (`*`, `prefix*`, `*suffix`, exact), as used for principals,
//! namespaces and trust domains, matched without allocating: a principal is compared piece by
//! piece against the parts of an [`Identity`] instead of being formatted first.

use std::fmt;

use crate::identity::Identity;

/// Istio's string match: `*` (any non-empty value), `*suffix`, `prefix*` or an exact value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StrPat {
    /// Exactly this value.
    Exact(String),
    /// Starts with this.
    Prefix(String),
    /// Ends with this.
    Suffix(String),
    /// Any non-empty value.
    Present,
}

impl StrPat {
    /// Reads Istio's notation, as istiod's `stringToMatch` does: `*` first, then a leading `*`,
    /// then a trailing `*`; anything else (`a*b` too) is exact.
    pub fn parse(v: &str) -> StrPat {
        if v == "*" {
            StrPat::Present
        } else if let Some(s) = v.strip_prefix('*') {
            StrPat::Suffix(s.to_owned())
        } else if let Some(p) = v.strip_suffix('*') {
            StrPat::Prefix(p.to_owned())
        } else {
            StrPat::Exact(v.to_owned())
        }
    }

    /// Matches one string.
    pub fn matches(&self, s: &str) -> bool {
        match self {
            StrPat::Exact(e) => s == e,
            StrPat::Prefix(p) => s.starts_with(p.as_str()),
            StrPat::Suffix(x) => s.ends_with(x.as_str()),
            StrPat::Present => !s.is_empty(),
        }
    }

    /// Matches Istio's principal form `<td>/ns/<ns>/sa/<sa>` of `id` without building it.
    pub fn matches_principal(&self, id: &Identity) -> bool {
        let parts = [
            id.trust_domain(),
            "/ns/",
            id.namespace(),
            "/sa/",
            id.service_account(),
        ];
        match self {
            StrPat::Exact(e) => {
                parts.iter().map(|p| p.len()).sum::<usize>() == e.len()
                    && starts_with_parts(e, &parts)
            }
            StrPat::Prefix(p) => starts_with_parts(p, &parts),
            StrPat::Suffix(x) => ends_with_parts(x, &parts),
            StrPat::Present => true,
        }
    }
}

/// Whether the concatenation of `parts` starts with `prefix`.
fn starts_with_parts(mut prefix: &str, parts: &[&str]) -> bool {
    for part in parts {
        if prefix.len() <= part.len() {
            return part.starts_with(prefix);
        }
        match prefix.strip_prefix(part) {
            Some(rest) => prefix = rest,
            None => return false,
        }
    }
    prefix.is_empty()
}

/// Whether the concatenation of `parts` ends with `suffix`.
fn ends_with_parts(mut suffix: &str, parts: &[&str]) -> bool {
    for part in parts.iter().rev() {
        if suffix.len() <= part.len() {
            return part.ends_with(suffix);
        }
        match suffix.strip_suffix(part) {
            Some(rest) => suffix = rest,
            None => return false,
        }
    }
    suffix.is_empty()
}

impl fmt::Display for StrPat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StrPat::Exact(e) => f.write_str(e),
            StrPat::Prefix(p) => write!(f, "{p}*"),
            StrPat::Suffix(s) => write!(f, "*{s}"),
            StrPat::Present => f.write_str("*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(td: &str, ns: &str, sa: &str) -> Identity {
        Identity::new(td, ns, sa).unwrap()
    }

    #[test]
    fn string_patterns_follow_istio_notation() {
        assert_eq!(StrPat::parse("*"), StrPat::Present);
        assert_eq!(StrPat::parse("*.local"), StrPat::Suffix(".local".into()));
        assert_eq!(StrPat::parse("prod-*"), StrPat::Prefix("prod-".into()));
        assert_eq!(StrPat::parse("a*b"), StrPat::Exact("a*b".into()));
        assert!(StrPat::Present.matches("x") && !StrPat::Present.matches(""));
        assert!(
            StrPat::parse("prod-*").matches("prod-eu") && !StrPat::parse("prod-*").matches("dev")
        );
        assert!(StrPat::parse("*-eu").matches("prod-eu") && !StrPat::parse("*-eu").matches("eu-x"));
        for (p, s) in [("*", "*"), ("*x", "*x"), ("x*", "x*"), ("x", "x")] {
            assert_eq!(StrPat::parse(p).to_string(), s);
        }
    }

    #[test]
    fn principals_match_istios_form_without_building_it() {
        let web = id("cluster.local", "shop", "web");
        let yes = [
            "cluster.local/ns/shop/sa/web",
            "cluster.local/ns/shop/*",
            "cluster.local/*",
            "cluster.local/ns/sh*",
            "*/sa/web",
            "*web",
            "*ns/shop/sa/web",
            "*cluster.local/ns/shop/sa/web",
            "cluster.local/ns/shop/sa/web*",
            "*",
        ];
        for p in yes {
            assert!(StrPat::parse(p).matches_principal(&web), "{p} should match");
        }
        let no = [
            "cluster.local/ns/shop/sa/we",
            "cluster.local/ns/shop/sa/webx",
            "spiffe://cluster.local/ns/shop/sa/web",
            "other.local/*",
            "*/sa/db",
            "cluster.local/ns/shop/sa/web/x*",
            "x*cluster.local/ns/shop/sa/web",
            "*xcluster.local/ns/shop/sa/web",
        ];
        for p in no {
            assert!(
                !StrPat::parse(p).matches_principal(&web),
                "{p} should not match"
            );
        }
    }
}
