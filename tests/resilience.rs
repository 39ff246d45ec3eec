//! a, b: hostile load and dead peers. A flood of idle TCP connections to one pod's 15008 from
//! outside the mesh does not starve the node (handshakes are bounded per source and per pod,
//! the excess closed at accept), and a pooled HBONE connection to a peer that silently stops
//! answering is found dead by HTTP/2 PING and replaced.
#![cfg(feature = "lab")]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit::lab::traffic::{connect, pattern, Server};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// More idle connections than the daemon's file limit.
const FLOOD: usize = 1100;
/// The daemon's file limit in the flood test (soft and hard, so it cannot be raised).
const DAEMON_NOFILE: u64 = 1024;

/// Raises this test process's own soft file limit, so it can hold the flood.
fn raise_own_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur as usize > FLOOD + 200,
        "test needs a higher hard file limit"
    );
}

/// A wrapper that runs the real binary with its file limit pinned at [`DAEMON_NOFILE`].
fn limited_binary(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("ambit-limited.sh");
    let script = format!(
        "#!/bin/sh\nulimit -n {DAEMON_NOFILE} || exit 90\nexec '{}' \"$@\"\n",
        env!("CARGO_BIN_EXE_ambit")
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

async fn echo_once(ns: &ambit::netns::NetNs, dst: SocketAddr) -> Result<(), String> {
    let payload = pattern(2000);
    let ex = ambit::lab::traffic::exchange(ns, dst, &payload, DEADLINE)
        .await
        .map_err(|e| e.to_string())?;
    (ex.reply == payload)
        .then_some(())
        .ok_or_else(|| "echo differs".into())
}

/// a: n2 runs with 1024 file descriptors. 1100 idle TCP connections from the fabric are held
/// on n2-p1's 15008; meanwhile new mesh connections to n2-p1 and to n2-p2 succeed and a
/// long-lived connection keeps echoing; the daemon's shed counter shows the cap at work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_handshake_flood_does_not_starve_the_node() {
    raise_own_nofile();
    let c = Cluster::start(2, 2, "iptables", |_| {});
    // Restart n2 under the low limit.
    c.lab.stop_daemon("n2").unwrap();
    let wrapper = limited_binary(c.lab.dir());
    c.lab
        .start_daemon(
            "n2",
            &wrapper,
            &["--rules=iptables".into(), "--verify-secs=1".into()],
        )
        .unwrap();
    c.lab.wait_ready("n2", DEADLINE).unwrap();
    let pid = c.lab.daemon_pid("n2").unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(line.contains(&DAEMON_NOFILE.to_string()), "{line}");

    let any: SocketAddr = "[::]:8080".parse().unwrap();
    let _s1 = Server::start(&c.lab.pod_netns("n2-p1").unwrap(), any)
        .await
        .unwrap();
    let _s2 = Server::start(&c.lab.pod_netns("n2-p2").unwrap(), any)
        .await
        .unwrap();
    let client = c.lab.pod_netns("n1-p1").unwrap();
    send_routed(&c, "n1-p1", c.v4("n2-p1"), "hbone").await;
    let mut long = connect(&client, c.v4("n2-p1")).await.unwrap();

    // The flood: plain TCP to 15008, never a TLS byte.
    let fabric = c.lab.fabric_netns().unwrap();
    let target: SocketAddr = (c.lab.pod("n2-p1").unwrap().ipv4, 15008).into();
    let mut held = Vec::with_capacity(FLOOD);
    let mut refused = Vec::new();
    for _ in 0..FLOOD {
        match tokio::time::timeout(Duration::from_secs(2), connect(&fabric, target)).await {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(e)) => refused.push(e.to_string()),
            Err(_) => refused.push("timed out".into()),
        }
    }
    refused.sort();
    refused.dedup();
    eprintln!(
        "flood: {} connections opened, others: {refused:?}",
        held.len()
    );

    // While they are held: new mesh connections to both pods of n2, and the long-lived echo.
    let chunk = pattern(512);
    let mut back = vec![0u8; chunk.len()];
    for round in 0..20 {
        for pod in ["n2-p1", "n2-p2"] {
            echo_once(&client, c.v4(pod))
                .await
                .unwrap_or_else(|e| panic!("round {round}: n1-p1 -> {pod}: {e}"));
        }
        long.write_all(&chunk).await.unwrap();
        tokio::time::timeout(DEADLINE, long.read_exact(&mut back))
            .await
            .expect("long-lived echo in time")
            .expect("long-lived echo");
        assert_eq!(back, chunk, "long-lived echo differs in round {round}");
    }
    let shed = c.metric(
        "n2",
        "ambit_hbone_handshakes_shed_total{outcome=\"source_pending_handshakes\"}",
    );
    assert!(
        shed > 0.0,
        "the per-source cap closed part of the flood at accept"
    );
    drop(held);
}

/// b: the pooled HBONE connection from n1-p1 to n2-p1 is silently cut (n2-p1 drops every
/// packet of 15008). The client's keepalive finds it dead (time printed), and once n2-p1
/// answers again the next connection succeeds on the first attempt over a fresh connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_silently_dead_peer_is_detected_and_replaced() {
    let c = Cluster::start(2, 1, "iptables", |_| {});
    let any: SocketAddr = "[::]:8080".parse().unwrap();
    let _s = Server::start(&c.lab.pod_netns("n2-p1").unwrap(), any)
        .await
        .unwrap();
    let dst = c.v4("n2-p1");
    send_routed(&c, "n1-p1", dst, "hbone").await;
    let dials = c.metric("n1", "ambit_hbone_dials_total");

    let server_ns = c.lab.pod_netns("n2-p1").unwrap();
    let drop_rule = |op: &str| {
        for (chain, dir) in [("INPUT", "--dport"), ("OUTPUT", "--sport")] {
            let mut cmd = std::process::Command::new("iptables");
            cmd.args(["-w", op, chain, "-p", "tcp", dir, "15008", "-j", "DROP"]);
            let status = server_ns
                .spawn(&mut cmd)
                .and_then(|mut child| child.wait())
                .expect("iptables");
            assert!(status.success(), "iptables {op} {chain}");
        }
    };
    drop_rule("-I");
    let cut = Instant::now();
    wait_until_for(
        Duration::from_secs(60),
        "keepalive to close the dead connection",
        || c.lab.daemon_log("n1").contains("HBONE peer unresponsive"),
    );
    let detected = cut.elapsed();
    drop_rule("-D");
    let client = c.lab.pod_netns("n1-p1").unwrap();
    echo_once(&client, dst)
        .await
        .expect("first connection after the peer is back");
    eprintln!("dead peer detected after {detected:?} (bound: 10 s ping interval + 20 s timeout)");
    assert!(
        c.metric("n1", "ambit_hbone_dials_total") > dials,
        "a fresh HBONE connection was dialled"
    );
}

/// [`wait_until`] with its own deadline.
fn wait_until_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
