//! Unit tests: rule building and restore rendering, no kernel.

use std::collections::BTreeMap;

use super::super::Family;
use super::apply::split_counters;
use super::saved::{render_restore, Saved};
use super::*;
use crate::capture::CaptureOptions;

fn opts(pairs: &[(&str, &str)]) -> CaptureOptions {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (format!("traffic.sidecar.istio.io/{k}"), v.to_string()))
        .collect();
    CaptureOptions::from_annotations(&map).unwrap()
}

fn lines(opts: &CaptureOptions, family: Family) -> Vec<String> {
    SidecarRuleSet::build(opts, family, PROXY_UID, PROXY_GID).lines()
}

/// §1.2 in `iptables-save` form (addresses with prefix, `-m tcp`, `-s`/`-d` before `-o`).
const DEFAULT_V4: &[&str] = &[
    "-A PREROUTING -p tcp -j ISTIO_INBOUND",
    "-A OUTPUT -j ISTIO_OUTPUT",
    "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
    "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
    "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
    "-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
    "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
    "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
    "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
    "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
    "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
    "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
    "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
    "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
    "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
    "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
    "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
];

#[test]
fn default_v4_is_istio_golden() {
    let got = lines(&CaptureOptions::default(), Family::V4);
    assert_eq!(got, DEFAULT_V4);
    let set = SidecarRuleSet::build(&CaptureOptions::default(), Family::V4, 1337, 1337);
    assert_eq!(set.istio_output.len(), 9);
    let script = render_script(&set);
    let golden = format!(
        "*nat\n:ISTIO_INBOUND - [0:0]\n:ISTIO_REDIRECT - [0:0]\n:ISTIO_IN_REDIRECT - [0:0]\n\
         :ISTIO_OUTPUT - [0:0]\n{}\nCOMMIT\n",
        DEFAULT_V4.join("\n")
    );
    assert_eq!(script, golden);
}

#[test]
fn default_v6_uses_v6_loopback_and_passthrough() {
    let want: Vec<String> = DEFAULT_V4
        .iter()
        .map(|l| {
            l.replace("127.0.0.6/32", "::6/128")
                .replace("127.0.0.1/32", "::1/128")
        })
        .collect();
    assert_eq!(lines(&CaptureOptions::default(), Family::V6), want);
}

#[test]
fn exclusions_and_inclusions_in_run_go_order() {
    let o = opts(&[
        ("excludeInboundPorts", "22,15020,15090"),
        ("excludeOutboundPorts", "25,53"),
        ("includeOutboundPorts", "3306"),
        ("excludeOutboundIPRanges", "10.96.0.0/12,fd00:10:96::/112"),
        ("includeOutboundIPRanges", "10.0.0.0/8,2001:db8::/32"),
    ]);
    let v4 = lines(&o, Family::V4);
    let inbound: Vec<_> = v4
        .iter()
        .filter(|l| l.starts_with("-A ISTIO_INBOUND"))
        .collect();
    assert_eq!(
        inbound,
        [
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
            "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        ]
    );
    let out: Vec<_> = v4
        .iter()
        .filter(|l| l.starts_with("-A ISTIO_OUTPUT"))
        .collect();
    assert_eq!(
        out[..5],
        [
            "-A ISTIO_OUTPUT -p tcp -m tcp --dport 25 -j RETURN",
            "-A ISTIO_OUTPUT -p udp -m udp --dport 25 -j RETURN",
            "-A ISTIO_OUTPUT -p tcp -m tcp --dport 53 -j RETURN",
            "-A ISTIO_OUTPUT -p udp -m udp --dport 53 -j RETURN",
            "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
        ]
    );
    assert_eq!(
        out[11..],
        [
            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-A ISTIO_OUTPUT -d 10.96.0.0/12 -j RETURN",
            "-A ISTIO_OUTPUT -p tcp -m tcp --dport 3306 -j ISTIO_REDIRECT",
            "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
        ]
    );
    let v6 = lines(&o, Family::V6);
    assert!(v6.contains(&"-A ISTIO_OUTPUT -d fd00:10:96::/112 -j RETURN".to_string()));
    assert!(v6.contains(&"-A ISTIO_OUTPUT -d 2001:db8::/32 -j ISTIO_REDIRECT".to_string()));
    assert!(!v6.iter().any(|l| l.contains("10.")), "{v6:?}");
}

#[test]
fn inbound_port_list_empty_inbound_and_loopback_include() {
    let list = lines(&opts(&[("includeInboundPorts", "80,8080")]), Family::V4);
    let inbound: Vec<_> = list
        .iter()
        .filter(|l| l.contains("ISTIO_INBOUND"))
        .collect();
    assert_eq!(
        inbound,
        [
            "-A PREROUTING -p tcp -j ISTIO_INBOUND",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 80 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT",
        ]
    );
    let off = lines(&opts(&[("includeInboundPorts", "")]), Family::V4);
    assert!(!off.iter().any(|l| l.starts_with("-A PREROUTING")));
    assert!(off.contains(&"-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN".into()));
    assert_eq!(
        off.iter()
            .filter(|l| l.starts_with("-A ISTIO_INBOUND"))
            .count(),
        1
    );

    // A loopback include (either family) drops both `-o lo ! --owner` RETURNs.
    let lo = opts(&[("includeOutboundIPRanges", "127.0.0.0/8,10.0.0.0/8")]);
    // 127.0.0.6, 2 × (IN_REDIRECT, owner RETURN), localhost, then the v4 includes.
    for (family, count) in [(Family::V4, 6 + 2), (Family::V6, 6)] {
        let l = lines(&lo, family);
        assert!(!l.iter().any(|l| l.contains("-o lo -m owner !")), "{l:?}");
        let out = l.iter().filter(|l| l.starts_with("-A ISTIO_OUTPUT"));
        assert_eq!(out.count(), count, "{l:?}");
    }
    // No outbound capture at all: no redirect rule in ISTIO_OUTPUT.
    let none = lines(&opts(&[("includeOutboundIPRanges", "")]), Family::V4);
    assert!(!none.iter().any(|l| l.ends_with("-j ISTIO_REDIRECT")));
}

#[test]
fn other_proxy_ids() {
    let set = SidecarRuleSet::build(&CaptureOptions::default(), Family::V4, 2000, 3000);
    let l = set.lines();
    assert!(l.contains(&"-A ISTIO_OUTPUT -m owner --uid-owner 2000 -j RETURN".into()));
    assert!(l.contains(&"-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 3000 -j RETURN".into()));
}

#[test]
fn repair_replaces_ambient_chains_and_stray_jumps() {
    let dump = "*mangle\n:PREROUTING ACCEPT [0:0]\n:ISTIO_PRERT - [0:0]\n\
        -A PREROUTING -j ISTIO_PRERT\n-A ISTIO_PRERT -j ACCEPT\nCOMMIT\n\
        *nat\n:PREROUTING ACCEPT [0:0]\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n\
        -A PREROUTING -j ISTIO_PRERT\n-A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OUTPUT\n\
        -A ISTIO_OUTPUT -j ACCEPT\nCOMMIT\n*filter\n:ISTIO_X - [0:0]\nCOMMIT\n";
    let saved = Saved::parse(dump);
    assert_eq!(saved.tables.keys().collect::<Vec<_>>(), ["mangle", "nat"]);
    let set = SidecarRuleSet::build(&CaptureOptions::default(), Family::V4, 1337, 1337);
    assert!(saved.difference(&set).is_some());
    let text = render_restore(&set, &saved);
    assert!(
        text.starts_with(
            "*nat\n:ISTIO_INBOUND - [0:0]\n:ISTIO_REDIRECT - [0:0]\n:ISTIO_IN_REDIRECT - [0:0]\n\
         :ISTIO_OUTPUT - [0:0]\n:ISTIO_PRERT - [0:0]\n-D OUTPUT -j ISTIO_OUTPUT\n\
         -D PREROUTING -j ISTIO_PRERT\n-A PREROUTING -p tcp -j ISTIO_INBOUND\n"
        ),
        "{text}"
    );
    assert!(text.contains("-X ISTIO_PRERT\nCOMMIT\n*mangle\n"), "{text}");
    assert!(text.ends_with("-D PREROUTING -j ISTIO_PRERT\n-X ISTIO_PRERT\nCOMMIT\n"));
    // Its own rendering reads back as equal.
    assert_eq!(Saved::parse(&render_script(&set)).difference(&set), None);
}

#[test]
fn counter_prefix_parses() {
    assert_eq!(
        split_counters("[12:720] -A OUTPUT -j ISTIO_OUTPUT"),
        (Some((12, 720)), "-A OUTPUT -j ISTIO_OUTPUT")
    );
    assert_eq!(split_counters("-A X"), (None, "-A X"));
}
