//! f (issue 11): the node's metrics endpoint keeps answering while 1000 idle connections are
//! held on it from the fabric, and it does not keep those idle connections.
#![cfg(feature = "lab")]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit::config::{ENDPOINT_MAX_CONNECTIONS, STATUS_PORT};
use ambit::lab::traffic::connect;
use ambit::netns::NetNs;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle connections the test holds on the metrics port.
const IDLE: usize = 1000;

/// `GET path` from `ns` to `addr`: status and body (the endpoint closes after one reply).
async fn get(ns: &NetNs, addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = connect(ns, addr).await.expect("connect to the endpoint");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw))
        .await
        .expect("reply within the deadline")
        .expect("read reply");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP reply");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, body.to_string())
}

/// Whether the peer has closed `s` (EOF or reset), without waiting.
fn closed_by_peer(s: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    match s.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_answer_with_1000_idle_connections_held() {
    let c = Cluster::start(1, 1, "iptables", |_| {});
    let fabric = c.lab.fabric_netns().expect("fabric netns");
    let node = c.lab.node("n1").expect("node n1");
    let metrics: SocketAddr = (node.ipv4, STATUS_PORT).into();

    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let s = tokio::time::timeout(DEADLINE, connect(&fabric, metrics))
            .await
            .unwrap_or_else(|_| panic!("idle connection {i} hung"))
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        idle.push(s);
    }

    let started = Instant::now();
    let (status, body) = get(&fabric, metrics, "/metrics").await;
    let took = started.elapsed();
    println!("scrape with {IDLE} idle connections held: status {status} in {took:?}");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ambit_pods"), "no known metric in: {body}");
    // Readiness on the same node still answers too.
    c.lab
        .wait_ready("n1", DEADLINE)
        .expect("readiness during the flood");

    // The server keeps at most ENDPOINT_MAX_CONNECTIONS of them, and closes the rest once
    // their request head is overdue: the peer sees every one of them closed.
    let until = Instant::now() + DEADLINE;
    let mut first_bound = None;
    loop {
        let closed = idle.iter().filter(|s| closed_by_peer(s)).count();
        if first_bound.is_none() && closed >= IDLE - ENDPOINT_MAX_CONNECTIONS {
            first_bound = Some(started.elapsed());
        }
        if closed == IDLE {
            break;
        }
        assert!(
            Instant::now() < until,
            "only {closed} of {IDLE} idle connections closed by the endpoint"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "idle connections closed by the endpoint: all but {ENDPOINT_MAX_CONNECTIONS} after {:?}, all {IDLE} after {:?}",
        first_bound.unwrap_or_default(),
        started.elapsed()
    );
    let (status, _) = get(&fabric, metrics, "/metrics").await;
    assert_eq!(status, 200);
}
