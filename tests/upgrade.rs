//! c, d: draining and upgrading a node daemon without refusing a connection. A successor
//! daemon starts beside the running one (SO_REUSEPORT on the pods' capture listeners and the
//! node ports, `tcp_migrate_req` for connections still queued), becomes ready by adopting every
//! pod, then the old one gets SIGTERM: its listeners close, its HBONE peers get GOAWAY and open
//! fresh connections, and its live connections run on until they end.
#![cfg(feature = "lab")]

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit::lab::traffic::{connect, exchange, pattern, Server};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The successor's own endpoints (the old daemon still holds the defaults while it drains).
const NEXT_READY_PORT: u16 = 15121;
const NEXT_ADMIN_PORT: u16 = 15100;

fn successor_args() -> Vec<String> {
    vec![
        "--rules=iptables".into(),
        "--verify-secs=1".into(),
        format!("--readiness=[::]:{NEXT_READY_PORT}"),
        format!("--admin=127.0.0.1:{NEXT_ADMIN_PORT}"),
        "--metrics=[::]:15120".into(),
        "--drain-secs=60".into(),
    ]
}

/// Outcome counts of the short-connection loop.
#[derive(Default)]
struct Loop {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

/// d + c: a new connection every 20 ms and a long-lived echo connection from n1-p1 to n2-p1
/// while first the server node's daemon (n2) and then the client node's daemon (n1) are
/// replaced: zero failed connections, the long-lived one echoes byte-exact until it ends by
/// itself, and the client side answered n2's GOAWAY with a fresh HBONE connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_without_a_refused_connection() {
    let c = Cluster::start_with(2, 1, "iptables", |_| {}, |_| vec!["--drain-secs=60".into()]);
    let any: std::net::SocketAddr = "[::]:8080".parse().unwrap();
    let _server = Server::start(&c.lab.pod_netns("n2-p1").unwrap(), any)
        .await
        .unwrap();
    let dst = c.v4("n2-p1");
    send_routed(&c, "n1-p1", dst, "hbone").await;
    let client_ns = c.lab.pod_netns("n1-p1").unwrap();

    // The long-lived connection: 1 KiB out, the same 1 KiB back, every 50 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let long = {
        let (ns, stop) = (client_ns.clone(), stop.clone());
        tokio::spawn(async move {
            let mut stream = connect(&ns, dst).await.expect("long-lived connect");
            let chunk = pattern(1024);
            let mut rounds = 0u64;
            let mut back = vec![0u8; chunk.len()];
            while !stop.load(Ordering::Acquire) {
                stream.write_all(&chunk).await.expect("long-lived write");
                tokio::time::timeout(DEADLINE, stream.read_exact(&mut back))
                    .await
                    .expect("long-lived echo in time")
                    .expect("long-lived read");
                assert_eq!(back, chunk, "long-lived echo differs in round {rounds}");
                rounds += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            stream.shutdown().await.expect("long-lived shutdown");
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.expect("long-lived end");
            assert!(rest.is_empty(), "bytes after the last echo");
            rounds
        })
    };

    // A new connection every 20 ms.
    let results = Arc::new(Loop::default());
    let shorts = {
        let (ns, stop, results) = (client_ns.clone(), stop.clone(), results.clone());
        tokio::spawn(async move {
            let payload = pattern(100);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            // Bounded: at most 10 minutes of 20 ms ticks even if the test never stops it.
            for _ in 0..30_000 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                tick.tick().await;
                match exchange(&ns, dst, &payload, DEADLINE).await {
                    Ok(ex) if ex.reply == payload => results.ok.fetch_add(1, Ordering::AcqRel),
                    Ok(_) => {
                        results.errors.lock().unwrap().push("echo differs".into());
                        results.failed.fetch_add(1, Ordering::AcqRel)
                    }
                    Err(e) => {
                        results.errors.lock().unwrap().push(e.to_string());
                        results.failed.fetch_add(1, Ordering::AcqRel)
                    }
                };
            }
        })
    };

    let binary = Path::new(env!("CARGO_BIN_EXE_ambit"));
    let dials_before = c.metric("n1", "ambit_hbone_dials_total");
    let wait_more = |n: u64| {
        let results = results.clone();
        let from = results.ok.load(Ordering::Acquire);
        wait_until(&format!("{n} more short connections"), move || {
            results.ok.load(Ordering::Acquire) >= from + n
                || results.failed.load(Ordering::Acquire) > 0
        });
    };
    tokio::task::block_in_place(|| wait_more(10));

    // The server side first: its HBONE connections get GOAWAY.
    let lab = &c.lab;
    let old_n2 = tokio::task::block_in_place(|| {
        lab.upgrade_daemon("n2", binary, &successor_args(), NEXT_READY_PORT)
    })
    .expect("n2 successor ready");
    tokio::task::block_in_place(|| wait_more(25));
    let dials_after = c.metric("n1", "ambit_hbone_dials_total");
    assert!(
        dials_after > dials_before,
        "n1 dialled a fresh HBONE connection after n2's GOAWAY ({dials_before} -> {dials_after})"
    );

    // Then the client side: the pod's 15001 listener changes hands.
    let old_n1 = tokio::task::block_in_place(|| {
        lab.upgrade_daemon("n1", binary, &successor_args(), NEXT_READY_PORT)
    })
    .expect("n1 successor ready");
    tokio::task::block_in_place(|| wait_more(25));

    // New connections are carried by the successors now.
    let flows = lab
        .node_http_get("n1", NEXT_ADMIN_PORT, "/flows")
        .expect("successor flows");
    let carried: Vec<serde_json::Value> = serde_json::from_str(&flows.body).expect("flows JSON");
    assert!(
        carried
            .iter()
            .any(|f| f["route"] == "hbone" && f["error"].is_null()),
        "the successor on n1 carries new connections: {}",
        flows.body
    );

    stop.store(true, Ordering::Release);
    shorts.await.expect("short loop");
    let rounds = long.await.expect("long-lived connection");
    let started = Instant::now();
    for (node, old) in [("n1", old_n1), ("n2", old_n2)] {
        tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(20)))
            .unwrap_or_else(|e| panic!("old {node} daemon did not drain and exit: {e}"));
    }
    let failed = results.failed.load(Ordering::Acquire);
    let ok = results.ok.load(Ordering::Acquire);
    eprintln!(
        "upgrade: {ok} short connections, {failed} failed; long-lived {rounds} rounds; old daemons exited {:?} after the last connection ended",
        started.elapsed()
    );
    assert_eq!(
        failed,
        0,
        "failed connections during the upgrade: {:?}",
        results.errors.lock().unwrap()
    );
    assert!(rounds > 0);
}
