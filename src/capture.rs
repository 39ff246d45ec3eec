//! Per-pod capture options, read from the pod's annotations.
//!
//! The annotations are the ones Istio's injector and CNI agent read (see
//! `reference/istio-rules.md` §2), so a pod annotated for Istio gets the same capture from us.
//! Parsing is pure and never panics: a bad value becomes an [`AnnotationError`] that names the
//! annotation, the value and what was expected, ready to be shown to the pod's owner.

use std::collections::BTreeMap;

use ipnet::IpNet;

/// `excludeInboundPorts`: inbound ports never redirected to the proxy.
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// `includeInboundPorts`: `*` (all), a port list, or empty (no inbound capture).
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
/// `excludeOutboundPorts`: outbound destination ports never redirected.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// `includeOutboundPorts`: outbound destination ports always redirected, whatever the IP.
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
/// `excludeOutboundIPRanges`: destination CIDRs never redirected.
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
/// `includeOutboundIPRanges`: `*` (all), a CIDR list, or empty (no capture by IP).
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
/// `bypass-inbound-capture`: ambient "ingress mode", no inbound redirect at all.
pub const BYPASS_INBOUND_CAPTURE: &str = "ambient.istio.io/bypass-inbound-capture";

/// Every annotation that shapes a pod's capture; no other annotation can change its rules.
pub const CAPTURE_ANNOTATIONS: [&str; 7] = [
    EXCLUDE_INBOUND_PORTS,
    INCLUDE_INBOUND_PORTS,
    EXCLUDE_OUTBOUND_PORTS,
    INCLUDE_OUTBOUND_PORTS,
    EXCLUDE_OUTBOUND_IP_RANGES,
    INCLUDE_OUTBOUND_IP_RANGES,
    BYPASS_INBOUND_CAPTURE,
];

/// Either everything, or only the listed items (an empty list means nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Selection<T> {
    /// `*`: every port or every address.
    #[default]
    All,
    /// Only these; empty means none at all.
    Only(Vec<T>),
}

/// How traffic of one pod is captured, as its annotations ask. `Default` is Istio's default:
/// all inbound and all outbound TCP captured, nothing excluded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CaptureOptions {
    /// Inbound destination ports left alone (in order, without duplicates).
    pub exclude_inbound_ports: Vec<u16>,
    /// Inbound destination ports redirected to the inbound listener.
    pub include_inbound_ports: Selection<u16>,
    /// Outbound destination ports left alone.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination ports always redirected, whatever the destination address.
    pub include_outbound_ports: Vec<u16>,
    /// Outbound destination ranges left alone (v4 and v6 mixed, host bits cleared).
    pub exclude_outbound_ip_ranges: Vec<IpNet>,
    /// Outbound destination ranges redirected.
    pub include_outbound_ip_ranges: Selection<IpNet>,
    /// Ingress mode: no inbound redirect and no inbound probe exception.
    pub bypass_inbound_capture: bool,
}

/// A capture annotation whose value could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}: {value:?} is not a valid {expected}: {reason}")]
pub struct AnnotationError {
    /// The annotation key.
    pub key: String,
    /// The whole value as found on the pod.
    pub value: String,
    /// What the annotation takes ("port list", "CIDR list", ...).
    pub expected: &'static str,
    /// What exactly is wrong.
    pub reason: String,
}

impl CaptureOptions {
    /// Reads the capture annotations of a pod; other annotations are ignored, and an absent
    /// annotation takes Istio's default.
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
    ) -> Result<CaptureOptions, AnnotationError> {
        let get = |key: &str| annotations.get(key).map(String::as_str);
        let mut opts = CaptureOptions::default();
        if let Some(v) = get(EXCLUDE_INBOUND_PORTS) {
            opts.exclude_inbound_ports = parse_ports(EXCLUDE_INBOUND_PORTS, v)?;
        }
        if let Some(v) = get(INCLUDE_INBOUND_PORTS) {
            opts.include_inbound_ports = parse_selection(INCLUDE_INBOUND_PORTS, v, parse_ports)?;
        }
        if let Some(v) = get(EXCLUDE_OUTBOUND_PORTS) {
            opts.exclude_outbound_ports = parse_ports(EXCLUDE_OUTBOUND_PORTS, v)?;
        }
        if let Some(v) = get(INCLUDE_OUTBOUND_PORTS) {
            opts.include_outbound_ports = parse_ports(INCLUDE_OUTBOUND_PORTS, v)?;
        }
        if let Some(v) = get(EXCLUDE_OUTBOUND_IP_RANGES) {
            opts.exclude_outbound_ip_ranges = parse_cidrs(EXCLUDE_OUTBOUND_IP_RANGES, v)?;
        }
        if let Some(v) = get(INCLUDE_OUTBOUND_IP_RANGES) {
            opts.include_outbound_ip_ranges =
                parse_selection(INCLUDE_OUTBOUND_IP_RANGES, v, parse_cidrs)?;
        }
        if let Some(v) = get(BYPASS_INBOUND_CAPTURE) {
            opts.bypass_inbound_capture = parse_bool(BYPASS_INBOUND_CAPTURE, v)?;
        }
        Ok(opts)
    }
}

fn error(key: &str, value: &str, expected: &'static str, reason: String) -> AnnotationError {
    AnnotationError {
        key: key.to_string(),
        value: value.to_string(),
        expected,
        reason,
    }
}

/// Non-empty trimmed items of a comma list.
fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

fn parse_ports(key: &str, value: &str) -> Result<Vec<u16>, AnnotationError> {
    let mut ports = Vec::new();
    for item in items(value) {
        // Only plain decimal digits: u16's parser would also take "+80".
        let port = match item.bytes().all(|b| b.is_ascii_digit()) {
            true => item.parse::<u16>().ok().filter(|p| *p != 0),
            false => None,
        };
        let Some(port) = port else {
            return Err(error(
                key,
                value,
                "port list",
                format!("{item:?} is not a port number (1-65535)"),
            ));
        };
        push_unique(&mut ports, port);
    }
    Ok(ports)
}

fn parse_cidrs(key: &str, value: &str) -> Result<Vec<IpNet>, AnnotationError> {
    let mut nets = Vec::new();
    for item in items(value) {
        let net: IpNet = item.parse().map_err(|_| {
            let reason = if item == "*" {
                "\"*\" is not allowed here".to_string()
            } else {
                format!("{item:?} is not a CIDR such as 10.0.0.0/8 or fd00::/8")
            };
            error(key, value, "CIDR list", reason)
        })?;
        // Host bits are cleared so the rule text matches what the kernel reports back.
        push_unique(&mut nets, net.trunc());
    }
    Ok(nets)
}

/// `*` means all, anything else is a list (possibly empty, meaning none).
fn parse_selection<T>(
    key: &str,
    value: &str,
    parse: fn(&str, &str) -> Result<Vec<T>, AnnotationError>,
) -> Result<Selection<T>, AnnotationError> {
    if value.trim() == "*" {
        return Ok(Selection::All);
    }
    parse(key, value).map(Selection::Only)
}

/// Same spellings as Go's `strconv.ParseBool`, which Istio uses for these annotations.
fn parse_bool(key: &str, value: &str) -> Result<bool, AnnotationError> {
    match value.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(error(
            key,
            value,
            "boolean",
            format!("{other:?} is not one of true, false, 1, 0, t, f"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<CaptureOptions, AnnotationError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CaptureOptions::from_annotations(&map)
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn no_annotations_is_istio_default() {
        let opts = parse(&[]).unwrap();
        assert_eq!(opts, CaptureOptions::default());
        assert_eq!(opts.include_inbound_ports, Selection::All);
        assert_eq!(opts.include_outbound_ip_ranges, Selection::All);
        assert!(!opts.bypass_inbound_capture);
    }

    #[test]
    fn unrelated_annotations_are_ignored() {
        let opts = parse(&[("foo/bar", "x"), ("sidecar.istio.io/inject", "junk")]).unwrap();
        assert_eq!(opts, CaptureOptions::default());
    }

    #[test]
    fn port_lists_are_trimmed_deduplicated_and_skip_empty_items() {
        let opts = parse(&[
            (EXCLUDE_INBOUND_PORTS, " 15020, 22 ,,22, 65535 "),
            (EXCLUDE_OUTBOUND_PORTS, "25"),
            (INCLUDE_OUTBOUND_PORTS, "3306,1"),
        ])
        .unwrap();
        assert_eq!(opts.exclude_inbound_ports, vec![15020, 22, 65535]);
        assert_eq!(opts.exclude_outbound_ports, vec![25]);
        assert_eq!(opts.include_outbound_ports, vec![3306, 1]);
    }

    #[test]
    fn empty_port_list_means_nothing_excluded() {
        let opts = parse(&[(EXCLUDE_INBOUND_PORTS, ""), (EXCLUDE_OUTBOUND_PORTS, " , ")]).unwrap();
        assert!(opts.exclude_inbound_ports.is_empty());
        assert!(opts.exclude_outbound_ports.is_empty());
    }

    #[test]
    fn include_inbound_ports_star_list_or_empty() {
        let all = parse(&[(INCLUDE_INBOUND_PORTS, " * ")]).unwrap();
        assert_eq!(all.include_inbound_ports, Selection::All);
        let some = parse(&[(INCLUDE_INBOUND_PORTS, "80,8080")]).unwrap();
        assert_eq!(some.include_inbound_ports, Selection::Only(vec![80, 8080]));
        let none = parse(&[(INCLUDE_INBOUND_PORTS, "")]).unwrap();
        assert_eq!(none.include_inbound_ports, Selection::Only(vec![]));
    }

    #[test]
    fn bad_ports_are_rejected_with_key_value_and_reason() {
        let err = parse(&[(EXCLUDE_INBOUND_PORTS, "80,abc")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "annotation traffic.sidecar.istio.io/excludeInboundPorts: \"80,abc\" is not a valid \
             port list: \"abc\" is not a port number (1-65535)"
        );
        for bad in [
            "0",
            "65536",
            "-1",
            "+80",
            "80-90",
            "1e3",
            "99999999999999999999",
        ] {
            let err = parse(&[(INCLUDE_OUTBOUND_PORTS, bad)]).unwrap_err();
            assert_eq!(err.key, INCLUDE_OUTBOUND_PORTS);
            assert_eq!(err.value, bad);
            assert!(err.reason.contains(&format!("{bad:?}")), "{err}");
        }
        // `*` is only meaningful for includeInboundPorts.
        assert!(parse(&[(EXCLUDE_OUTBOUND_PORTS, "*")]).is_err());
        assert!(parse(&[(INCLUDE_INBOUND_PORTS, "80,*")]).is_err());
    }

    #[test]
    fn cidr_lists_mix_families_and_clear_host_bits() {
        let opts = parse(&[
            (
                EXCLUDE_OUTBOUND_IP_RANGES,
                "10.1.2.3/8, fd00::1/8,,10.0.0.0/8",
            ),
            (INCLUDE_OUTBOUND_IP_RANGES, "192.168.0.0/16,2001:db8::/32"),
        ])
        .unwrap();
        assert_eq!(
            opts.exclude_outbound_ip_ranges,
            vec![net("10.0.0.0/8"), net("fd00::/8")]
        );
        assert_eq!(
            opts.include_outbound_ip_ranges,
            Selection::Only(vec![net("192.168.0.0/16"), net("2001:db8::/32")])
        );
    }

    #[test]
    fn include_outbound_ranges_star_or_empty() {
        let all = parse(&[(INCLUDE_OUTBOUND_IP_RANGES, "*")]).unwrap();
        assert_eq!(all.include_outbound_ip_ranges, Selection::All);
        let none = parse(&[(INCLUDE_OUTBOUND_IP_RANGES, "")]).unwrap();
        assert_eq!(none.include_outbound_ip_ranges, Selection::Only(vec![]));
    }

    #[test]
    fn bad_cidrs_are_rejected() {
        let err = parse(&[(EXCLUDE_OUTBOUND_IP_RANGES, "*")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "annotation traffic.sidecar.istio.io/excludeOutboundIPRanges: \"*\" is not a valid \
             CIDR list: \"*\" is not allowed here"
        );
        for bad in [
            "10.0.0.0/33",
            "10.0.0.1",
            "abc",
            "10.0.0.0/8,::/129",
            "*,10.0.0.0/8",
        ] {
            let err = parse(&[(INCLUDE_OUTBOUND_IP_RANGES, bad)]).unwrap_err();
            assert_eq!(err.key, INCLUDE_OUTBOUND_IP_RANGES);
            assert_eq!(err.expected, "CIDR list");
        }
    }

    #[test]
    fn bypass_inbound_capture_parses_like_go() {
        for t in ["true", "1", "t", "T", "TRUE", "True", " true "] {
            assert!(
                parse(&[(BYPASS_INBOUND_CAPTURE, t)])
                    .unwrap()
                    .bypass_inbound_capture
            );
        }
        for f in ["false", "0", "f", "F", "FALSE", "False"] {
            assert!(
                !parse(&[(BYPASS_INBOUND_CAPTURE, f)])
                    .unwrap()
                    .bypass_inbound_capture
            );
        }
        let err = parse(&[(BYPASS_INBOUND_CAPTURE, "yes")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "annotation ambient.istio.io/bypass-inbound-capture: \"yes\" is not a valid \
             boolean: \"yes\" is not one of true, false, 1, 0, t, f"
        );
        assert!(parse(&[(BYPASS_INBOUND_CAPTURE, "")]).is_err());
    }

    #[test]
    fn odd_input_never_panics() {
        let long = "9".repeat(10_000);
        for v in [
            "\u{0}",
            "é,ü",
            ",,,",
            "/",
            "::/",
            "1.2.3.4/-1",
            long.as_str(),
        ] {
            for key in [
                EXCLUDE_INBOUND_PORTS,
                INCLUDE_INBOUND_PORTS,
                EXCLUDE_OUTBOUND_IP_RANGES,
                INCLUDE_OUTBOUND_IP_RANGES,
                BYPASS_INBOUND_CAPTURE,
            ] {
                let _ = parse(&[(key, v)]);
            }
        }
    }
}
