//! Rendering tests (no kernel): golden strings for default options, each annotation, and v4
//! against v6, for both backends.

use std::collections::BTreeMap;

use super::iptables::{render_rule, render_script as ipt_script};
use super::model::RuleSet;
use super::nftables::render_script;
use super::{Families, Family};
use crate::capture::CaptureOptions;

fn opts(pairs: &[(&str, &str)]) -> CaptureOptions {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (format!("traffic.sidecar.istio.io/{k}"), v.to_string()))
        .collect();
    CaptureOptions::from_annotations(&map).unwrap()
}

/// nat ISTIO_PRERT and ISTIO_OUTPUT rules in iptables-save form.
fn nat(opts: &CaptureOptions, family: Family) -> (Vec<String>, Vec<String>) {
    let set = RuleSet::build(opts, family);
    let lines = |chain: &str, rules: &[super::model::Rule]| {
        rules
            .iter()
            .map(|r| format!("-A {chain} {}", render_rule(r)))
            .collect()
    };
    (
        lines("ISTIO_PRERT", &set.nat_prerouting),
        lines("ISTIO_OUTPUT", &set.nat_output),
    )
}

const PROBE_IN: &str = "-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT";
const REDIRECT_IN: &str = "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006";
const OUT_HEAD: [&str; 3] = [
    "-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT",
    "-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT",
    "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT",
];
const REDIRECT_OUT: &str = "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001";

fn out_with(extra: &[&str]) -> Vec<String> {
    OUT_HEAD
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn default_v4_restore_is_istio_default_without_dns() {
    let text = ipt_script(&RuleSet::build(&CaptureOptions::default(), Family::V4));
    let golden = format!(
        "*mangle\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n\
         -A OUTPUT -j ISTIO_OUTPUT\n-A PREROUTING -j ISTIO_PRERT\n\
         -A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff\n\
         -A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff\n\
         COMMIT\n\
         *nat\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n\
         -A OUTPUT -j ISTIO_OUTPUT\n-A PREROUTING -j ISTIO_PRERT\n\
         {PROBE_IN}\n{REDIRECT_IN}\n{}\n{}\n{}\n{REDIRECT_OUT}\nCOMMIT\n",
        OUT_HEAD[0], OUT_HEAD[1], OUT_HEAD[2]
    );
    assert_eq!(text, golden);
}

#[test]
fn default_v6_uses_v6_probe_and_loopback() {
    let (pre, out) = nat(&CaptureOptions::default(), Family::V6);
    assert_eq!(pre, [
        "-A ISTIO_PRERT -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -m tcp -j ACCEPT",
        "-A ISTIO_PRERT ! -d ::1/128 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006",
    ]);
    assert_eq!(out, [
        "-A ISTIO_OUTPUT -d fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -m tcp -j ACCEPT",
        "-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT",
        "-A ISTIO_OUTPUT ! -d ::1/128 -o lo -j ACCEPT",
        "-A ISTIO_OUTPUT ! -d ::1/128 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
    ]);
}

#[test]
fn excluded_inbound_ports_come_before_the_redirect() {
    let (pre, _) = nat(&opts(&[("excludeInboundPorts", "15020,22")]), Family::V4);
    assert_eq!(
        pre,
        [
            PROBE_IN,
            "-A ISTIO_PRERT -p tcp -m tcp --dport 15020 -j ACCEPT",
            "-A ISTIO_PRERT -p tcp -m tcp --dport 22 -j ACCEPT",
            REDIRECT_IN,
        ]
    );
}

#[test]
fn included_inbound_ports_redirect_only_those_and_never_15008() {
    let (pre, _) = nat(
        &opts(&[("includeInboundPorts", "80,15008,8080")]),
        Family::V4,
    );
    let redirect = |p: u16| {
        format!("-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp --dport {p} -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006")
    };
    assert_eq!(pre, [PROBE_IN.to_string(), redirect(80), redirect(8080)]);
    let (pre, _) = nat(&opts(&[("includeInboundPorts", "")]), Family::V4);
    assert_eq!(pre, [PROBE_IN]);
}

#[test]
fn bypass_inbound_capture_empties_prerouting_but_keeps_the_rest() {
    let map = BTreeMap::from([(
        "ambient.istio.io/bypass-inbound-capture".to_string(),
        "true".to_string(),
    )]);
    let o = CaptureOptions::from_annotations(&map).unwrap();
    let (pre, out) = nat(&o, Family::V4);
    assert!(pre.is_empty());
    assert_eq!(out, out_with(&[REDIRECT_OUT]));
    let set = RuleSet::build(&o, Family::V4);
    assert_eq!(set.mangle_prerouting.len(), 1);
    assert_eq!(set.mangle_output.len(), 1);
}

#[test]
fn outbound_port_and_range_annotations_in_order() {
    let o = opts(&[
        ("excludeOutboundPorts", "25"),
        ("includeOutboundPorts", "3306"),
        ("excludeOutboundIPRanges", "10.0.0.0/8,fd00::/8"),
        ("includeOutboundIPRanges", "192.168.0.0/16,2001:db8::/32"),
    ]);
    let (_, out) = nat(&o, Family::V4);
    assert_eq!(out, out_with(&[
        "-A ISTIO_OUTPUT -p tcp -m tcp --dport 25 -j ACCEPT",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m tcp --dport 3306 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
        "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ACCEPT",
        "-A ISTIO_OUTPUT -d 192.168.0.0/16 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
    ]));
    let (_, out) = nat(&o, Family::V6);
    assert_eq!(out[3..], [
        "-A ISTIO_OUTPUT -p tcp -m tcp --dport 25 -j ACCEPT",
        "-A ISTIO_OUTPUT ! -d ::1/128 -p tcp -m tcp --dport 3306 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
        "-A ISTIO_OUTPUT -d fd00::/8 -j ACCEPT",
        "-A ISTIO_OUTPUT -d 2001:db8::/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
    ]);
}

#[test]
fn empty_include_ranges_capture_nothing_by_ip() {
    let (_, out) = nat(&opts(&[("includeOutboundIPRanges", "")]), Family::V4);
    assert_eq!(out, out_with(&[]));
    // v4-only include ranges leave the v6 set without an outbound redirect.
    let (_, out) = nat(
        &opts(&[("includeOutboundIPRanges", "10.0.0.0/8")]),
        Family::V6,
    );
    assert_eq!(out.len(), 3);
}

#[test]
fn nft_script_default_dual_stack() {
    let sets = [Family::V4, Family::V6].map(|f| RuleSet::build(&CaptureOptions::default(), f));
    let script = render_script(&sets);
    let nat = "\tchain istio-prerouting {\n\
        \t\tip saddr 169.254.7.127/32 meta l4proto tcp counter accept\n\
        \t\tip daddr != 127.0.0.1/32 tcp dport != 15008 meta mark & 0xfff != 0x539 counter redirect to :15006\n\
        \t\tip6 saddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 meta l4proto tcp counter accept\n\
        \t\tip6 daddr != ::1/128 tcp dport != 15008 meta mark & 0xfff != 0x539 counter redirect to :15006\n\
        \t}\n\
        \tchain istio-output {\n\
        \t\tip daddr 169.254.7.127/32 meta l4proto tcp counter accept\n\
        \t\tmeta nfproto ipv4 meta l4proto tcp meta mark & 0xfff == 0x111 counter accept\n\
        \t\tip daddr != 127.0.0.1/32 oifname \"lo\" counter accept\n\
        \t\tip daddr != 127.0.0.1/32 meta l4proto tcp meta mark & 0xfff != 0x539 counter redirect to :15001\n\
        \t\tip6 daddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 meta l4proto tcp counter accept\n\
        \t\tmeta nfproto ipv6 meta l4proto tcp meta mark & 0xfff == 0x111 counter accept\n\
        \t\tip6 daddr != ::1/128 oifname \"lo\" counter accept\n\
        \t\tip6 daddr != ::1/128 meta l4proto tcp meta mark & 0xfff != 0x539 counter redirect to :15001\n\
        \t}\n";
    assert!(script.contains(nat), "{script}");
    let head = "add table inet istio-ambient-nat\ndelete table inet istio-ambient-nat\n\
        add table inet istio-ambient-mangle\ndelete table inet istio-ambient-mangle\n\
        add table inet istio-ambient-raw\ndelete table inet istio-ambient-raw\n\
        table inet istio-ambient-nat {\n\tcomment \"ambit ";
    assert!(script.starts_with(head), "{script}");
    for line in [
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump istio-prerouting\n",
        "\t\ttype nat hook output priority -100; policy accept;\n\t\tjump istio-output\n",
        "\t\ttype filter hook prerouting priority mangle; policy accept;\n",
        "\t\ttype route hook output priority mangle; policy accept;\n",
        "\t\tmeta nfproto ipv4 meta mark & 0xfff == 0x539 counter ct mark set ct mark & 0xfffff000 | 0x111\n",
        "\t\tmeta nfproto ipv6 ct mark & 0xfff == 0x111 counter meta mark set ct mark\n",
    ] {
        assert!(script.contains(line), "missing {line:?} in {script}");
    }
}

#[test]
fn nft_script_v4_only_annotations_and_hash_changes() {
    let o = opts(&[
        ("excludeInboundPorts", "22"),
        ("includeOutboundIPRanges", "10.0.0.0/8"),
    ]);
    let script = render_script(&[RuleSet::build(&o, Family::V4)]);
    assert!(!script.contains("ip6 "), "{script}");
    assert!(script.contains("\t\tmeta nfproto ipv4 tcp dport 22 counter accept\n"));
    assert!(script.contains("\t\tip daddr 10.0.0.0/8 meta l4proto tcp meta mark & 0xfff != 0x539 counter redirect to :15001\n"));
    let default = render_script(&[RuleSet::build(&CaptureOptions::default(), Family::V4)]);
    let comment = |s: &str| {
        s.lines()
            .find(|l| l.contains("comment"))
            .unwrap()
            .to_string()
    };
    assert_ne!(comment(&script), comment(&default));
    assert_eq!(Families::V4.iter().count(), 1);
}
