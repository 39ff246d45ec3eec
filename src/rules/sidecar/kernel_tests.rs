//! Kernel tests: each in its own throwaway network namespace (root required).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use std::collections::BTreeMap;

use super::super::iptables::tools;
use super::super::testns::TestNs;
use super::super::{ApplyOutcome, Backend, Families, Family};
use super::*;
use crate::capture::CaptureOptions;

fn save(t: &TestNs, family: Family) -> String {
    t.exec(tools(family).0, &[])
}

/// Istio lines (`ISTIO_*` chains and jumps to them) of `iptables-save` output, per table.
fn istio_lines(dump: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut table = String::new();
    for line in dump.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if line.starts_with("-A ") && line.contains("ISTIO_") {
            out.entry(table.clone()).or_default().push(line.to_string());
        }
    }
    out
}

/// What the kernel should list: the set's lines, grouped by chain in the listing's order.
fn assert_installed_exactly(t: &TestNs, set: &SidecarRuleSet) {
    let saved = istio_lines(&save(t, set.family));
    assert_eq!(saved.keys().collect::<Vec<_>>(), ["nat"], "{saved:?}");
    let mut have = saved["nat"].clone();
    let mut want = set.lines();
    // iptables-save lists chain by chain; compare per chain, order within a chain kept.
    let key = |l: &String| l.split(' ').nth(1).unwrap_or_default().to_string();
    have.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(have, want, "{:?}", set.family);
}

#[test]
fn apply_reapply_repair_remove() {
    let t = TestNs::new();
    let ns = &t.ns;
    // Someone else's rule in nat PREROUTING must survive everything below.
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
    let opts = CaptureOptions::default();
    let apply = |opts: &CaptureOptions, fam| {
        apply_sidecar(ns, Backend::Iptables, opts, fam, PROXY_UID, PROXY_GID).unwrap()
    };
    assert_eq!(apply(&opts, Families::BOTH), ApplyOutcome::Installed);
    for family in [Family::V4, Family::V6] {
        assert_installed_exactly(&t, &SidecarRuleSet::build(&opts, family, 1337, 1337));
    }
    assert!(t
        .exec("ip", &["-6", "-o", "addr", "show", "dev", "lo"])
        .contains("inet6 ::6/128"));
    assert_eq!(apply(&opts, Families::BOTH), ApplyOutcome::Unchanged);

    // Drift: a rule deleted by hand and a duplicated jump.
    t.exec("iptables", &["-t", "nat", "-D", "ISTIO_OUTPUT", "3"]);
    t.exec(
        "ip6tables",
        &["-t", "nat", "-A", "OUTPUT", "-j", "ISTIO_OUTPUT"],
    );
    assert_eq!(apply(&opts, Families::BOTH), ApplyOutcome::Repaired);
    for family in [Family::V4, Family::V6] {
        assert_installed_exactly(&t, &SidecarRuleSet::build(&opts, family, 1337, 1337));
    }
    assert_eq!(apply(&opts, Families::BOTH), ApplyOutcome::Unchanged);

    // Other annotations: rewritten in place.
    let map: BTreeMap<String, String> = [
        ("excludeInboundPorts", "22"),
        ("includeOutboundPorts", "3306"),
        ("excludeOutboundPorts", "25"),
        ("excludeOutboundIPRanges", "10.96.0.0/12,fd00:10:96::/112"),
        ("includeOutboundIPRanges", "10.0.0.0/8,2001:db8::/32"),
    ]
    .into_iter()
    .map(|(k, v)| (format!("traffic.sidecar.istio.io/{k}"), v.to_string()))
    .collect();
    let annotated = CaptureOptions::from_annotations(&map).unwrap();
    assert_eq!(apply(&annotated, Families::BOTH), ApplyOutcome::Repaired);
    for family in [Family::V4, Family::V6] {
        assert_installed_exactly(&t, &SidecarRuleSet::build(&annotated, family, 1337, 1337));
    }
    assert_eq!(apply(&annotated, Families::BOTH), ApplyOutcome::Unchanged);
    let names: Vec<_> = installed(ns).unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["iptables nat", "ip6tables nat"]);

    // v4 only: the v6 rules go.
    assert_eq!(apply(&annotated, Families::V4), ApplyOutcome::Repaired);
    assert!(!save(&t, Family::V6).contains("ISTIO"));

    remove_sidecar(ns, Backend::Iptables).unwrap();
    for family in [Family::V4, Family::V6] {
        assert!(!save(&t, family).contains("ISTIO"), "{family:?}");
    }
    assert!(installed(ns).unwrap().is_empty());
    assert!(save(&t, Family::V4).contains("-A PREROUTING -p udp -m udp --dport 9999 -j ACCEPT"));
    remove_sidecar(ns, Backend::Iptables).unwrap();

    let err = apply_sidecar(ns, Backend::Nftables, &opts, Families::V4, 1337, 1337);
    let err = err.unwrap_err().to_string();
    assert!(err.contains("nftables backend does not support"), "{err}");
    assert!(remove_sidecar(ns, Backend::Nftables).is_err());
}

#[test]
fn replaces_ambient_rules() {
    let t = TestNs::new();
    let opts = CaptureOptions::default();
    super::super::apply(&t.ns, Backend::Iptables, &opts, Families::BOTH).unwrap();
    assert!(save(&t, Family::V4).contains("ISTIO_PRERT"));
    assert_eq!(
        apply_sidecar(&t.ns, Backend::Iptables, &opts, Families::BOTH, 1337, 1337).unwrap(),
        ApplyOutcome::Repaired
    );
    for family in [Family::V4, Family::V6] {
        assert_installed_exactly(&t, &SidecarRuleSet::build(&opts, family, 1337, 1337));
    }
    super::super::route::remove(&t.ns).unwrap();
}

/// Packets of each ISTIO_OUTPUT / ISTIO_REDIRECT / ISTIO_IN_REDIRECT rule, in order.
fn nat_counts(t: &TestNs) -> Vec<(String, String, u64)> {
    counters(&t.ns, Family::V4)
        .unwrap()
        .into_iter()
        .filter(|c| c.table == "nat" && c.chain != "ISTIO_INBOUND" && c.chain != "PREROUTING")
        .map(|c| (c.chain, c.rule, c.packets))
        .collect()
}

/// Rules whose packet counter went up, with by how much, sorted (chain order in
/// `iptables-save` differs between the legacy and nft flavours).
fn delta(before: &[(String, String, u64)], after: &[(String, String, u64)]) -> Vec<String> {
    assert_eq!(before.len(), after.len());
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| a.2 != b.2)
        .map(|(b, a)| format!("{} {} +{}", a.0, a.1, a.2 - b.2))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn listen(t: &TestNs, addr: &str) -> TcpListener {
    let addr: SocketAddr = addr.parse().unwrap();
    t.ns.run(|| TcpListener::bind(addr)).unwrap().unwrap()
}

fn accept_one(l: &TcpListener) -> SocketAddr {
    l.set_nonblocking(false).unwrap();
    let (mut s, _) = l.accept().unwrap();
    let local = s.local_addr().unwrap();
    s.write_all(b"x").unwrap();
    local
}

#[test]
fn counters_follow_local_connections() {
    let t = TestNs::new();
    // A veth pair (no dummy driver on every test kernel) gives the pod an address and a
    // non-lo route.
    t.exec(
        "ip",
        &["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
    );
    t.exec("ip", &["addr", "add", "10.99.0.1/24", "dev", "v0"]);
    t.exec("ip", &["link", "set", "v1", "up"]);
    t.exec("ip", &["link", "set", "v0", "up"]);
    let opts = CaptureOptions::default();
    apply_sidecar(&t.ns, Backend::Iptables, &opts, Families::V4, 1337, 1337).unwrap();
    let app = listen(&t, "10.99.0.1:8080");
    let outbound = listen(&t, "0.0.0.0:15001");
    let inbound = listen(&t, "0.0.0.0:15006");

    // Root (uid 0) to the pod's own non-loopback address: leaves lo, not captured.
    let before = nat_counts(&t);
    assert!(before.iter().all(|c| c.2 == 0), "{before:?}");
    let mut c =
        t.ns.run(|| {
            TcpStream::connect_timeout(&"10.99.0.1:8080".parse().unwrap(), Duration::from_secs(2))
        })
        .unwrap()
        .unwrap();
    assert_eq!(accept_one(&app).port(), 8080);
    c.read_exact(&mut [0u8; 1]).unwrap();
    let after = nat_counts(&t);
    assert_eq!(
        delta(&before, &after),
        [
            "ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN +1",
            "OUTPUT -j ISTIO_OUTPUT +1",
        ]
    );

    // Root to another host: captured, redirected to 15001.
    let before = after;
    let mut c =
        t.ns.run(|| {
            TcpStream::connect_timeout(&"10.99.0.2:80".parse().unwrap(), Duration::from_secs(2))
        })
        .unwrap()
        .unwrap();
    assert_eq!(accept_one(&outbound).port(), 15001);
    c.read_exact(&mut [0u8; 1]).unwrap();
    let after = nat_counts(&t);
    assert_eq!(
        delta(&before, &after),
        [
            "ISTIO_OUTPUT -j ISTIO_REDIRECT +1",
            "ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001 +1",
            "OUTPUT -j ISTIO_OUTPUT +1",
        ]
    );

    // The proxy (uid 1337) to its own pod IP over lo: sent to the inbound listener.
    let before = after;
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args([
        "--reuid=1337",
        "--regid=1337",
        "--clear-groups",
        "bash",
        "-c",
    ])
    .arg("exec 3<>/dev/tcp/10.99.0.1/8080 && head -c1 <&3 >/dev/null");
    let child = t.ns.spawn(&mut cmd).unwrap();
    assert_eq!(accept_one(&inbound).port(), 15006);
    assert!(child.wait_with_output().unwrap().status.success());
    let after = nat_counts(&t);
    assert_eq!(
        delta(&before, &after),
        [
            "ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006 +1",
            "ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT +1",
            "OUTPUT -j ISTIO_OUTPUT +1",
        ]
    );
}
