//! Kernel tests: each runs in its own throwaway network namespace (root required).

use std::collections::BTreeMap;

use super::model::RuleSet;
use super::testns::TestNs;
use super::{apply, installed, iptables, nftables, remove, route};
use super::{ApplyOutcome, Backend, Families, Family};
use crate::capture::CaptureOptions;

/// Our rules grouped by (table, chain), from iptables-save output or restore input.
fn group(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut table = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split(' ').next().unwrap().to_string();
            if chain.starts_with("ISTIO_") || rule.contains("-j ISTIO_") {
                out.entry((table.clone(), chain))
                    .or_default()
                    .push(line.into());
            }
        }
    }
    out
}

fn save(t: &TestNs, family: Family) -> String {
    match family {
        Family::V4 => t.exec("iptables-save", &[]),
        Family::V6 => t.exec("ip6tables-save", &[]),
    }
}

/// Rule handles of everything in the namespace: a rewrite gives new handles.
fn handles(t: &TestNs) -> String {
    t.exec("nft", &["-a", "list", "ruleset"])
}

fn iptables_is_nft() -> bool {
    let out = std::process::Command::new("iptables")
        .arg("-V")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("nf_tables")
}

fn annotated() -> CaptureOptions {
    let map: BTreeMap<String, String> = [
        ("excludeInboundPorts", "22,15020"),
        ("includeInboundPorts", "80,8080"),
        ("excludeOutboundPorts", "25"),
        ("includeOutboundPorts", "3306"),
        ("excludeOutboundIPRanges", "10.96.0.0/12,fd00:10:96::/112"),
        ("includeOutboundIPRanges", "10.0.0.0/8,2001:db8::/32"),
    ]
    .into_iter()
    .map(|(k, v)| (format!("traffic.sidecar.istio.io/{k}"), v.to_string()))
    .collect();
    CaptureOptions::from_annotations(&map).unwrap()
}

fn assert_saved_equals_rendered(t: &TestNs, opts: &CaptureOptions) {
    for family in [Family::V4, Family::V6] {
        let rendered = iptables::render_script(&RuleSet::build(opts, family));
        assert_eq!(group(&save(t, family)), group(&rendered), "{family:?}");
    }
}

#[test]
fn iptables_apply_reapply_repair_remove() {
    let t = TestNs::new();
    t.exec(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "udp",
            "--dport",
            "9999",
            "-j",
            "ACCEPT",
        ],
    );
    t.exec(
        "ip6tables",
        &["-A", "INPUT", "-p", "tcp", "--dport", "1", "-j", "ACCEPT"],
    );
    let opts = CaptureOptions::default();
    let ns = &t.ns;

    assert_eq!(
        apply(ns, Backend::Iptables, &opts, Families::BOTH).unwrap(),
        ApplyOutcome::Installed
    );
    assert_saved_equals_rendered(&t, &opts);
    let before = handles(&t);
    assert_eq!(
        apply(ns, Backend::Iptables, &opts, Families::BOTH).unwrap(),
        ApplyOutcome::Unchanged
    );
    if iptables_is_nft() {
        assert_eq!(handles(&t), before, "an unchanged apply must write nothing");
    }

    // Drift: a rule deleted by hand, a duplicated jump, a missing jump.
    t.exec("iptables", &["-t", "nat", "-D", "ISTIO_OUTPUT", "3"]);
    t.exec(
        "iptables",
        &["-t", "mangle", "-A", "PREROUTING", "-j", "ISTIO_PRERT"],
    );
    t.exec(
        "ip6tables",
        &["-t", "nat", "-D", "OUTPUT", "-j", "ISTIO_OUTPUT"],
    );
    assert_eq!(
        apply(ns, Backend::Iptables, &opts, Families::BOTH).unwrap(),
        ApplyOutcome::Repaired
    );
    assert_saved_equals_rendered(&t, &opts);

    let inst = installed(ns, Backend::Iptables).unwrap();
    let names: Vec<_> = inst.sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "iptables mangle",
            "iptables nat",
            "ip6tables mangle",
            "ip6tables nat"
        ]
    );
    assert_eq!(inst.routes.len(), 4, "{:?}", inst.routes);

    remove(ns, Backend::Iptables).unwrap();
    assert!(!installed(ns, Backend::Iptables).unwrap().any());
    for family in [Family::V4, Family::V6] {
        assert!(!save(&t, family).contains("ISTIO"));
    }
    assert!(save(&t, Family::V4).contains("-A PREROUTING -p udp -m udp --dport 9999 -j ACCEPT"));
    assert!(save(&t, Family::V6).contains("-A INPUT -p tcp -m tcp --dport 1 -j ACCEPT"));
    remove(ns, Backend::Iptables).unwrap();
}

#[test]
fn iptables_annotated_rules_match_iptables_save_exactly() {
    let t = TestNs::new();
    let opts = annotated();
    assert_eq!(
        apply(&t.ns, Backend::Iptables, &opts, Families::BOTH).unwrap(),
        ApplyOutcome::Installed
    );
    assert_saved_equals_rendered(&t, &opts);
    assert_eq!(
        apply(&t.ns, Backend::Iptables, &opts, Families::BOTH).unwrap(),
        ApplyOutcome::Unchanged
    );
    // Other options for the same pod: rewritten in place.
    let default = CaptureOptions::default();
    assert_eq!(
        apply(&t.ns, Backend::Iptables, &default, Families::BOTH).unwrap(),
        ApplyOutcome::Repaired
    );
    assert_saved_equals_rendered(&t, &default);
}

#[test]
fn iptables_families_and_leftovers() {
    let t = TestNs::new();
    // Istio's DNS chains in raw, as its agent leaves them: ours to clean up.
    t.exec("iptables", &["-t", "raw", "-N", "ISTIO_OUTPUT"]);
    t.exec(
        "iptables",
        &["-t", "raw", "-A", "OUTPUT", "-j", "ISTIO_OUTPUT"],
    );
    let opts = CaptureOptions::default();
    assert_eq!(
        apply(&t.ns, Backend::Iptables, &opts, Families::V4).unwrap(),
        ApplyOutcome::Repaired
    );
    assert!(group(&save(&t, Family::V4))
        .keys()
        .all(|(table, _)| table != "raw"));
    assert!(!save(&t, Family::V6).contains("ISTIO"));
    assert_eq!(
        apply(&t.ns, Backend::Iptables, &opts, Families::BOTH).unwrap(),
        ApplyOutcome::Repaired
    );
    assert!(save(&t, Family::V6).contains("ISTIO_PRERT"));
    assert_eq!(
        apply(&t.ns, Backend::Iptables, &opts, Families::V4).unwrap(),
        ApplyOutcome::Repaired
    );
    assert!(!save(&t, Family::V6).contains("ISTIO"));

    // Partial state: removal copes with a chain already gone and a jump already gone.
    t.exec(
        "iptables",
        &["-t", "nat", "-D", "PREROUTING", "-j", "ISTIO_PRERT"],
    );
    t.exec(
        "iptables",
        &["-t", "mangle", "-D", "OUTPUT", "-j", "ISTIO_OUTPUT"],
    );
    t.exec("iptables", &["-t", "mangle", "-F", "ISTIO_OUTPUT"]);
    t.exec("iptables", &["-t", "mangle", "-X", "ISTIO_OUTPUT"]);
    remove(&t.ns, Backend::Iptables).unwrap();
    assert!(!save(&t, Family::V4).contains("ISTIO"));
}

#[test]
fn nftables_apply_reapply_repair_remove() {
    let t = TestNs::new();
    t.exec("nft", &["add table inet other; add chain inet other c { type filter hook input priority 0; }; add rule inet other c tcp dport 1 accept"]);
    let opts = CaptureOptions::default();
    let ns = &t.ns;

    assert_eq!(
        apply(ns, Backend::Nftables, &opts, Families::BOTH).unwrap(),
        ApplyOutcome::Installed
    );
    let nat = t.exec("nft", &["list", "table", "inet", "istio-ambient-nat"]);
    for want in [
        "type nat hook prerouting priority dstnat; policy accept;",
        "jump istio-prerouting",
        "ip daddr != 127.0.0.1 tcp dport != 15008 meta mark & 0x00000fff != 0x00000539 counter packets 0 bytes 0 redirect to :15006",
        "ip6 daddr != ::1 oifname \"lo\" counter packets 0 bytes 0 accept",
    ] {
        assert!(nat.contains(want), "missing {want:?} in {nat}");
    }
    let mangle = t.exec("nft", &["list", "table", "inet", "istio-ambient-mangle"]);
    assert!(
        mangle.contains("type route hook output priority mangle; policy accept;"),
        "{mangle}"
    );
    assert!(!save(&t, Family::V4).contains("ISTIO"));

    let before = handles(&t);
    assert_eq!(
        apply(ns, Backend::Nftables, &opts, Families::BOTH).unwrap(),
        ApplyOutcome::Unchanged
    );
    assert_eq!(handles(&t), before, "an unchanged apply must write nothing");

    // Delete the first rule of istio-output by its handle.
    let chain = t.exec(
        "nft",
        &[
            "-a",
            "list",
            "chain",
            "inet",
            "istio-ambient-nat",
            "istio-output",
        ],
    );
    let handle = chain
        .lines()
        .find(|l| l.contains("accept"))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap()
        .trim()
        .to_string();
    t.exec(
        "nft",
        &[
            "delete",
            "rule",
            "inet",
            "istio-ambient-nat",
            "istio-output",
            "handle",
            &handle,
        ],
    );
    assert_eq!(
        apply(ns, Backend::Nftables, &opts, Families::BOTH).unwrap(),
        ApplyOutcome::Repaired
    );
    let strip = |s: String| s.lines().filter(|l| !l.contains("handle")).count();
    assert_eq!(strip(handles(&t)), strip(before.clone()));
    assert_eq!(
        apply(ns, Backend::Nftables, &opts, Families::BOTH).unwrap(),
        ApplyOutcome::Unchanged
    );

    let inst = installed(ns, Backend::Nftables).unwrap();
    let names: Vec<_> = inst.sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["inet istio-ambient-mangle", "inet istio-ambient-nat"]
    );

    remove(ns, Backend::Nftables).unwrap();
    assert!(!installed(ns, Backend::Nftables).unwrap().any());
    let left = t.exec("nft", &["list", "ruleset"]);
    assert!(!left.contains("istio"), "{left}");
    assert!(left.contains("tcp dport 1 accept"), "{left}");
    remove(ns, Backend::Nftables).unwrap();
}

#[test]
fn nftables_expected_listing_is_what_the_kernel_lists() {
    // Options no other test uses, so the probe (not the cache) produces the listing.
    let mut opts = annotated();
    opts.exclude_inbound_ports.push(4242);
    let sets = [Family::V4, Family::V6].map(|f| RuleSet::build(&opts, f));
    let script = nftables::render_script(&sets);
    let probed = nftables::expected_listing(&script).expect("scratch netns probe");
    assert_eq!(probed.len(), 2);
    let t = TestNs::new();
    assert_eq!(
        apply(&t.ns, Backend::Nftables, &opts, Families::BOTH).unwrap(),
        ApplyOutcome::Installed
    );
    let listed = t.exec("nft", &["-s", "list", "table", "inet", "istio-ambient-nat"]);
    assert_eq!(probed.get("istio-ambient-nat").unwrap(), &listed);
}

#[test]
fn switching_backend_removes_the_other_one() {
    let t = TestNs::new();
    let opts = CaptureOptions::default();
    assert_eq!(
        apply(&t.ns, Backend::Iptables, &opts, Families::BOTH).unwrap(),
        ApplyOutcome::Installed
    );
    assert_eq!(
        apply(&t.ns, Backend::Nftables, &opts, Families::BOTH).unwrap(),
        ApplyOutcome::Repaired
    );
    assert!(!save(&t, Family::V4).contains("ISTIO"));
    assert!(!save(&t, Family::V6).contains("ISTIO"));
    assert_eq!(
        apply(&t.ns, Backend::Iptables, &opts, Families::BOTH).unwrap(),
        ApplyOutcome::Repaired
    );
    assert!(!t
        .exec("nft", &["list", "ruleset", "inet"])
        .contains("istio"));
    remove(&t.ns, Backend::Iptables).unwrap();
    assert!(!installed(&t.ns, Backend::Nftables).unwrap().any());
}

#[test]
fn routes_are_added_once_and_removed() {
    let t = TestNs::new();
    assert_eq!(
        route::apply(&t.ns, Families::BOTH).unwrap(),
        ApplyOutcome::Installed
    );
    assert!(t
        .exec("ip", &["-4", "rule", "show"])
        .contains("32764:\tfrom all fwmark 0x111/0xfff lookup 100"));
    assert!(t
        .exec("ip", &["-6", "route", "show", "table", "100"])
        .contains("local default dev lo"));
    assert_eq!(
        route::apply(&t.ns, Families::BOTH).unwrap(),
        ApplyOutcome::Unchanged
    );
    t.exec(
        "ip",
        &[
            "-4",
            "route",
            "del",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            "100",
        ],
    );
    assert_eq!(
        route::apply(&t.ns, Families::BOTH).unwrap(),
        ApplyOutcome::Repaired
    );
    assert_eq!(route::installed(&t.ns).unwrap().len(), 4);
    route::remove(&t.ns).unwrap();
    assert!(route::installed(&t.ns).unwrap().is_empty());
    assert!(!t.exec("ip", &["-4", "rule", "show"]).contains("32764"));
    route::remove(&t.ns).unwrap();

    // IPv6 off in the namespace: only the v4 rule and route.
    t.exec("sysctl", &["-qw", "net.ipv6.conf.lo.disable_ipv6=1"]);
    assert_eq!(
        route::apply(&t.ns, Families::BOTH).unwrap(),
        ApplyOutcome::Installed
    );
    let lines = route::installed(&t.ns).unwrap();
    assert!(lines.iter().all(|l| l.starts_with("-4 ")), "{lines:?}");
    route::remove(&t.ns).unwrap();
}

#[test]
fn command_errors_name_netns_command_status_and_stderr() {
    let t = TestNs::new();
    let bad = "*nat\n-A NO_SUCH_CHAIN -j ACCEPT\nCOMMIT\n";
    let err =
        super::exec::run_ok(&t.ns, "iptables-restore", &["--noflush"], Some(bad)).unwrap_err();
    let text = err.to_string();
    let path = t.ns.path().display().to_string();
    for part in [
        path.as_str(),
        "`iptables-restore --noflush`",
        "exit status: ",
        "line 2 failed",
    ] {
        assert!(text.contains(part), "{part:?} missing in {text}");
    }
}
