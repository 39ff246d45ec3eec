//! Reading the string values of a policy: IP blocks, ports (strings in Istio), string
//! patterns, service accounts, trust domains, and the keys of `when` conditions.
//!
//! The checks are the ones istiod's validation webhook makes (istio/istio
//! `pkg/config/security/security.go`: `ValidateIPs`, `ValidatePorts`, `CheckEmptyValues`,
//! `CheckServiceAccount`, `CheckTrustDomainValues`, `ValidateAttribute`), so what Istio refuses
//! to store ambit refuses to enforce, with the same reasons and the path of the bad value.

use std::net::IpAddr;

use ipnet::IpNet;

use super::pattern::StrPat;
use super::Invalid;

/// `values` as IP blocks: an address (`10.0.0.1`, a /32 or /128) or a CIDR (`10.0.0.0/16`).
pub(crate) fn ip_blocks(path: &str, values: &[String]) -> Result<Vec<IpNet>, Invalid> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let parsed = if v.contains('/') {
                v.parse::<IpNet>().ok()
            } else {
                v.parse::<IpAddr>().ok().map(IpNet::from)
            };
            parsed.ok_or_else(|| {
                Invalid::new(
                    format!("{path}[{i}]"),
                    format!("{v:?} is not an IP address or CIDR block (expected e.g. 10.0.0.1, 10.0.0.0/16 or fd00::/64)"),
                )
            })
        })
        .collect()
}

/// `values` as ports: decimal strings from 0 to 65535.
pub(crate) fn ports(path: &str, values: &[String]) -> Result<Vec<u16>, Invalid> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.parse::<u16>().map_err(|_| {
                Invalid::new(
                    format!("{path}[{i}]"),
                    format!("{v:?} is not a port (expected a number from 0 to 65535, written as a string)"),
                )
            })
        })
        .collect()
}

/// Fails on the first empty value.
pub(crate) fn non_empty(path: &str, values: &[String]) -> Result<(), Invalid> {
    match values.iter().position(String::is_empty) {
        Some(i) => Err(Invalid::new(
            format!("{path}[{i}]"),
            "empty value not allowed".into(),
        )),
        None => Ok(()),
    }
}

/// `values` as string patterns (namespaces, principals).
pub(crate) fn patterns(path: &str, values: &[String]) -> Result<Vec<StrPat>, Invalid> {
    non_empty(path, values)?;
    Ok(values.iter().map(|v| StrPat::parse(v)).collect())
}

/// `values` as principals: patterns over `<trust-domain>/ns/<ns>/sa/<sa>`. A value written
/// with `spiffe://` would never match in Istio (which compares without the scheme), silently;
/// ambit refuses it instead, so a DENY is never quietly void.
pub(crate) fn principals(path: &str, values: &[String]) -> Result<Vec<StrPat>, Invalid> {
    if let Some(i) = values.iter().position(|v| v.starts_with("spiffe://")) {
        return Err(Invalid::new(
            format!("{path}[{i}]"),
            format!(
                "{:?}: principals are written without spiffe:// (e.g. cluster.local/ns/default/sa/web)",
                values[i]
            ),
        ));
    }
    patterns(path, values)
}

/// `values` as service accounts, `name` (of the policy's namespace) or `namespace/name`.
pub(crate) fn service_accounts(
    path: &str,
    values: &[String],
    policy_namespace: &str,
) -> Result<Vec<(String, String)>, Invalid> {
    if values.len() > 16 {
        return Err(Invalid::new(
            path.into(),
            "may not have more than 16 values".into(),
        ));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let bad = |why: &str| Invalid::new(format!("{path}[{i}]"), format!("{v:?}: {why}"));
            if v.contains('*') {
                return Err(bad("wildcard not allowed"));
            }
            if v.len() > 320 {
                return Err(bad("longer than 320 characters"));
            }
            let (ns, sa) = match v.split_once('/') {
                Some((ns, sa)) => (ns, sa),
                None => (policy_namespace, v.as_str()),
            };
            if ns.is_empty() || sa.is_empty() || sa.contains('/') {
                return Err(bad(
                    "expected format 'serviceAccount' or 'namespace/serviceAccount'",
                ));
            }
            Ok((ns.to_owned(), sa.to_owned()))
        })
        .collect()
}

/// `values` as trust-domain patterns: at most one `*`, at the start or end, and no `/`.
pub(crate) fn trust_domains(path: &str, values: &[String]) -> Result<Vec<StrPat>, Invalid> {
    non_empty(path, values)?;
    for (i, v) in values.iter().enumerate() {
        let stars = v.matches('*').count();
        let misplaced = stars == 1 && v != "*" && !v.starts_with('*') && !v.ends_with('*');
        if stars > 1 || misplaced || v.contains('/') {
            return Err(Invalid::new(
                format!("{path}[{i}]"),
                format!(
                    "{v:?}: a trust domain has no '/' and at most one '*', at its start or end"
                ),
            ));
        }
    }
    Ok(values.iter().map(|v| StrPat::parse(v)).collect())
}

/// What a `when` key refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WhenKey {
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    SourceServiceAccount,
    SourceTrustDomain,
    DestinationIp,
    DestinationPort,
    /// A valid Istio attribute that only an L7 proxy can see.
    L7,
}

/// Classifies a `when` key as istiod's `ValidateAttribute` does; an error for keys Istio
/// refuses (unknown, `destination.namespace`, `destination.labels[...]`, v1alpha1 names).
pub(crate) fn when_key(path: &str, key: &str) -> Result<WhenKey, Invalid> {
    let bad = |why: String| Invalid::new(format!("{path}.key"), why);
    let map_key = |prefix: &str| {
        // `prefix[name]` with a non-empty name.
        let ok = key
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.len() > 2 && rest.starts_with('[') && rest.ends_with(']'));
        if ok {
            Ok(WhenKey::L7)
        } else {
            Err(bad(format!(
                "bad key {key:?}: should have the form {prefix}[name]"
            )))
        }
    };
    Ok(match key {
        "source.ip" => WhenKey::SourceIp,
        "source.namespace" => WhenKey::SourceNamespace,
        "source.principal" => WhenKey::SourcePrincipal,
        "source.serviceAccount" => WhenKey::SourceServiceAccount,
        "source.trustDomain" => WhenKey::SourceTrustDomain,
        "destination.ip" => WhenKey::DestinationIp,
        "destination.port" => WhenKey::DestinationPort,
        "remote.ip"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => WhenKey::L7,
        "" => return Err(bad("must not be empty".into())),
        "destination.namespace" => {
            return Err(bad(format!(
                "attribute {key} is replaced by the metadata.namespace"
            )))
        }
        "destination.name" | "destination.user" => {
            return Err(bad(format!(
                "deprecated attribute {key}: only supported in v1alpha1"
            )))
        }
        k if k.starts_with("request.headers") => return map_key("request.headers"),
        k if k.starts_with("request.auth.claims") => return map_key("request.auth.claims"),
        k if k.starts_with("experimental.envoy.filters.") => {
            let rest = &k["experimental.envoy.filters.".len()..];
            let ok = rest
                .find('[')
                .is_some_and(|open| open > 0 && open + 2 < rest.len())
                && rest.ends_with(']');
            if !ok {
                return Err(bad(format!("bad key {key:?}: should have the form a[b]")));
            }
            WhenKey::L7
        }
        k if k.starts_with("destination.labels") => {
            return Err(bad(format!(
                "attribute {key} is replaced by the workload selector"
            )))
        }
        _ => return Err(bad(format!("unknown attribute: {key}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn ip_blocks_accept_addresses_and_cidrs() {
        let nets = ip_blocks(
            "p",
            &s(&["10.0.0.1", "10.1.0.0/16", "fd00::/64", "fd00::1"]),
        )
        .unwrap();
        assert_eq!(nets[0].to_string(), "10.0.0.1/32");
        assert_eq!(nets[3].to_string(), "fd00::1/128");
        for bad in ["10.0.0.300", "10.0.0.0/33", "nope", "", "fe80::1%eth0"] {
            let e = ip_blocks("spec.x", &s(&["10.0.0.1", bad])).unwrap_err();
            assert_eq!(e.field, "spec.x[1]");
            assert!(e.reason.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn ports_are_strings_in_range() {
        assert_eq!(
            ports("p", &s(&["0", "80", "65535"])).unwrap(),
            [0, 80, 65535]
        );
        for bad in ["65536", "-1", "http", "", "80.0", " 80"] {
            let e = ports("spec.p", &s(&[bad])).unwrap_err();
            assert_eq!(e.field, "spec.p[0]");
            assert!(e.reason.contains("0 to 65535"), "{e}");
        }
    }

    #[test]
    fn service_accounts_default_to_the_policy_namespace() {
        let sas = service_accounts("p", &s(&["web", "other/db"]), "shop").unwrap();
        assert_eq!(
            sas,
            [("shop".into(), "web".into()), ("other".into(), "db".into())]
        );
        for bad in ["a/b/c", "*", "/x", "x/", ""] {
            assert!(service_accounts("p", &s(&[bad]), "shop").is_err(), "{bad}");
        }
        let many: Vec<String> = (0..17).map(|i| format!("sa{i}")).collect();
        assert!(service_accounts("p", &many, "shop").is_err());
    }

    #[test]
    fn principals_refuse_the_spiffe_scheme() {
        let e = principals("p", &s(&["spiffe://cluster.local/ns/a/sa/b"])).unwrap_err();
        assert!(e.reason.contains("without spiffe://"), "{e}");
        assert!(principals("p", &s(&[""])).is_err());
        assert_eq!(principals("p", &s(&["*"])).unwrap(), [StrPat::Present]);
    }

    #[test]
    fn trust_domains_allow_one_wildcard_at_an_end() {
        assert!(trust_domains("p", &s(&["cluster.local", "*.local", "corp-*", "*"])).is_ok());
        for bad in ["a*b", "**", "a/b", ""] {
            assert!(trust_domains("p", &s(&[bad])).is_err(), "{bad}");
        }
    }

    #[test]
    fn when_keys_as_istio_validates_them() {
        assert_eq!(when_key("w", "source.ip").unwrap(), WhenKey::SourceIp);
        assert_eq!(
            when_key("w", "destination.port").unwrap(),
            WhenKey::DestinationPort
        );
        for l7 in [
            "remote.ip",
            "request.headers[x-user]",
            "request.auth.claims[iss]",
            "connection.sni",
            "experimental.envoy.filters.a.b[c]",
        ] {
            assert_eq!(when_key("w", l7).unwrap(), WhenKey::L7, "{l7}");
        }
        for bad in [
            "",
            "destination.namespace",
            "destination.labels[app]",
            "destination.user",
            "request.headers",
            "request.headers[]",
            "source.foo",
        ] {
            let e = when_key("spec.rules[0].when[1]", bad).unwrap_err();
            assert_eq!(e.field, "spec.rules[0].when[1].key", "{bad}");
        }
    }
}
