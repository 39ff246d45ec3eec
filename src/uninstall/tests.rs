//! Releasing namespaces for real (throwaway namespaces, root required) and the command's
//! guard, memory handling and report.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::capture::CaptureOptions;
use crate::rules::testns::TestNs;
use crate::rules::{ApplyOutcome, Families};

/// Both backends' rules and the policy route, as a node that switched backends could leave.
fn capture_both(t: &TestNs) {
    let opts = CaptureOptions::default();
    assert_eq!(
        rules::iptables::apply(&t.ns, &opts, Families::V4).unwrap(),
        ApplyOutcome::Installed
    );
    assert_eq!(
        rules::nftables::apply(&t.ns, &opts, Families::V4).unwrap(),
        ApplyOutcome::Installed
    );
    rules::route::apply(&t.ns, Families::V4).unwrap();
}

fn nothing_left(t: &TestNs) {
    for backend in [rules::Backend::Iptables, rules::Backend::Nftables] {
        let left = rules::installed(&t.ns, backend).unwrap();
        assert!(!left.any(), "{backend}: {left:?}");
    }
    let nat = t.exec("iptables-save", &["-t", "nat"]);
    assert!(!nat.contains("ISTIO_"), "{nat}");
    assert!(!t.exec("nft", &["list", "ruleset"]).contains("istio"));
}

fn config(state_dir: &Path, admin: SocketAddr) -> UninstallConfig {
    UninstallConfig {
        state_dir: Some(state_dir.to_path_buf()),
        source: None,
        node: None,
        host_proc: "/proc".into(),
        netns_dir: "/var/run/netns".into(),
        netns_prefix: None,
        admin_addr: admin,
        force: false,
    }
}

/// An address nothing listens on, reserved while the returned socket (bound, never
/// listening) lives, so no parallel test can start listening there.
fn closed_port() -> (socket2::Socket, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    (s, addr)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ambit-uninstall-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn release_removes_both_backends_and_routes_then_is_a_no_op() {
    let t = TestNs::new();
    capture_both(&t);
    let Outcome::Released(removed) = release(&t.ns) else {
        panic!("nothing released")
    };
    assert!(
        removed.iptables.iter().any(|s| s == "iptables nat"),
        "{removed:?}"
    );
    assert!(
        removed.iptables.iter().any(|s| s == "iptables mangle"),
        "{removed:?}"
    );
    assert_eq!(removed.nftables.len(), 2, "{removed:?}");
    assert_eq!(
        removed.routes, 2,
        "ip rule and table-100 route: {removed:?}"
    );
    nothing_left(&t);
    assert_eq!(release(&t.ns), Outcome::AlreadyClean);
}

#[test]
fn uninstall_releases_remembered_pods_clears_memory_and_is_idempotent() {
    let t = TestNs::new();
    capture_both(&t);
    let dir = temp_dir("mem");
    let path = memory::path_in(&dir);
    let captured = Remembered::new("lab/p1".into(), &t.ns);
    let mut gone = captured.clone();
    gone.pod = "lab/p2".into();
    gone.ino += 1;
    let entries = BTreeMap::from([("u1".to_string(), captured), ("u2".to_string(), gone)]);
    memory::save(&path, &entries).unwrap();

    let (_reserved, nobody) = closed_port();
    let report = uninstall(&config(&dir, nobody)).unwrap();
    let outcome = |pod: &str| {
        report
            .pods
            .iter()
            .find(|p| p.pod == pod)
            .map(|p| p.outcome.clone())
    };
    assert!(
        matches!(outcome("lab/p1"), Some(Outcome::Released(_))),
        "{report:?}"
    );
    assert_eq!(outcome("lab/p2"), Some(Outcome::Gone));
    assert_eq!(report.memory_cleared, Some(true));
    assert!(!path.exists(), "capture memory not cleared");
    nothing_left(&t);
    let text = report.to_string();
    assert!(
        text.starts_with("1 released, 0 already clean, 1 gone"),
        "{text}"
    );

    // Again: nothing remembered, nothing to do, no error.
    let again = uninstall(&config(&dir, nobody)).unwrap();
    assert!(again.pods.is_empty() && again.failures() == 0, "{again:?}");
    // With the memory back (say restored from a backup), the pod is already clean.
    memory::save(&path, &entries).unwrap();
    let restored = uninstall(&config(&dir, nobody)).unwrap();
    assert_eq!(restored.pods[0].outcome, Outcome::AlreadyClean);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refuses_while_a_daemon_answers_unless_forced() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = listener.local_addr().unwrap();
    let dir = temp_dir("guard");
    let err = uninstall(&config(&dir, admin)).unwrap_err();
    assert!(matches!(err, UninstallError::DaemonRunning(a) if a == admin));
    assert!(err.to_string().contains("stop the daemon first"), "{err}");
    let mut forced = config(&dir, admin);
    forced.force = true;
    assert!(uninstall(&forced).unwrap().pods.is_empty());
}

#[test]
fn an_unreadable_memory_is_an_error_and_left_in_place() {
    let dir = temp_dir("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let path = memory::path_in(&dir);
    std::fs::write(&path, "{not json").unwrap();
    let (_reserved, nobody) = closed_port();
    let err = uninstall(&config(&dir, nobody)).unwrap_err();
    assert!(err.to_string().contains("captured.json"), "{err}");
    assert!(path.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn report_lines_say_what_was_done_where() {
    let line = PodReport {
        pod: "shop/cart-0".into(),
        netns: Some("/var/run/netns/cni-1".into()),
        outcome: Outcome::Released(Removed {
            iptables: vec!["iptables nat".into()],
            nftables: vec![],
            routes: 2,
        }),
    };
    assert_eq!(
        line.to_string(),
        "shop/cart-0: released: removed rules from iptables nat; removed 2 policy rule(s)/route(s) (/var/run/netns/cni-1)"
    );
    let failed = PodReport {
        pod: "shop/a".into(),
        netns: None,
        outcome: Outcome::Failed("boom".into()),
    };
    assert_eq!(failed.to_string(), "shop/a: FAILED: boom");
    let report = Report {
        pods: vec![line, failed],
        memory_cleared: Some(false),
        annotations_removed: 0,
        annotations_failed: 0,
    };
    assert_eq!(report.failures(), 1);
    assert_eq!(
        report.to_string(),
        "1 released, 0 already clean, 0 gone, 0 not found, 1 failed; capture memory kept for the failed pods"
    );
}
