//! i: volume through the real daemons — 64 MiB each way byte-exact over HBONE, IPv4 and IPv6
//! (with half-close carried through the tunnel), and 200 concurrent connections through one
//! pod.
#![cfg(feature = "lab")]

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit::lab::traffic::{exchange, pattern, Server};
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_mib_each_way_byte_exact() {
    let c = Cluster::start(2, 1, "iptables", |_| {});
    let any: SocketAddr = "[::]:8080".parse().unwrap();
    let server = Server::start(&c.lab.pod_netns("n2-p1").unwrap(), any)
        .await
        .unwrap();
    let payload = pattern(64 << 20);
    let ns = c.lab.pod_netns("n1-p1").unwrap();
    for dst in [c.v4("n2-p1"), c.v6("n2-p1")] {
        // The echo can only end if the client's half-close crossed both proxies and the
        // server's came back: a lost FIN hangs here and the deadline fails the test.
        let ex = exchange(&ns, dst, &payload, Duration::from_secs(120))
            .await
            .unwrap();
        assert_eq!(ex.reply.len(), payload.len(), "{dst}: length");
        assert!(ex.reply == payload, "{dst}: bytes differ");
        let out = c.wait_flow("n1", |f| {
            f["src"] == ex.local.to_string() && f["finished"] == true
        });
        assert_eq!(out["bytes_sent"], 64u64 << 20, "{out:#}");
        assert_eq!(out["bytes_received"], 64u64 << 20, "{out:#}");
    }
    let sizes: Vec<u64> = server.accepted().iter().map(|a| a.bytes).collect();
    assert_eq!(sizes, vec![64 << 20, 64 << 20]);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_connections_through_one_pod() {
    let c = Cluster::start(2, 1, "iptables", |_| {});
    let any: SocketAddr = "[::]:8080".parse().unwrap();
    let server = Server::start(&c.lab.pod_netns("n2-p1").unwrap(), any)
        .await
        .unwrap();
    let ns = c.lab.pod_netns("n1-p1").unwrap();
    let payload = Arc::new(pattern(64 * 1024));
    let dst = c.v4("n2-p1");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (ns, payload) = (ns.clone(), payload.clone());
        tasks.spawn(async move { exchange(&ns, dst, &payload, Duration::from_secs(60)).await });
    }
    let mut locals = HashSet::new();
    while let Some(joined) = tasks.join_next().await {
        let ex = joined.unwrap().unwrap();
        assert!(ex.reply == *payload, "echo differs");
        locals.insert(ex.local.to_string());
    }
    assert_eq!(locals.len(), 200);
    let client_ip = c.lab.pod("n1-p1").unwrap().ipv4;
    let accepted = server.accepted();
    assert_eq!(accepted.len(), 200);
    assert!(accepted
        .iter()
        .all(|a| a.peer.ip() == client_ip && a.bytes == 64 * 1024));
    let captured: HashSet<String> = c
        .flows("n1")
        .iter()
        .filter(|f| is(f, "outbound"))
        .filter_map(|f| f["src"].as_str().map(str::to_string))
        .collect();
    assert!(
        locals.is_subset(&captured),
        "not every connection went through 15001"
    );
    let inbound = c.flows("n2").iter().filter(|f| is(f, "hbone")).count();
    assert_eq!(inbound, 200);
}
