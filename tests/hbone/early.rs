//! The client's first bytes follow the CONNECT before its answer (`hbone::early`): through
//! the real daemons, a server that speaks first is not kept waiting for a client that says
//! nothing, and a client that sends more than the early read and closes at once has every
//! byte delivered, in order, and counted on both nodes (also with `--hbone-early-data=false`).

use super::*;

/// Port of the scripted servers below (the echo servers have 8080).
const PORT: u16 = 8083;
const BANNER: &[u8] = b"220 ready\r\n";

/// Listens on `[::]:PORT` in `ns`. Per connection: with `banner`, writes [`BANNER`] first and
/// then echoes until EOF; without, reads to EOF and answers the byte count (decimal) and the
/// bytes' position-weighted sum, so loss, duplication or reordering is caught.
fn scripted_server(ns: &NetNs, banner: bool) -> tokio::task::JoinHandle<()> {
    let listener = listen_in(ns, PORT);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if banner {
                    s.write_all(BANNER).await.expect("banner");
                    let (mut r, mut w) = s.split();
                    tokio::io::copy(&mut r, &mut w).await.expect("echo");
                } else {
                    let mut all = Vec::new();
                    s.read_to_end(&mut all).await.expect("request");
                    let answer = format!("{} {}", all.len(), weighted_sum(&all));
                    s.write_all(answer.as_bytes()).await.expect("answer");
                }
                let _ = s.shutdown().await;
            });
        }
    })
}

/// Sum of `byte × position`: differs when bytes are lost, duplicated or reordered.
fn weighted_sum(bytes: &[u8]) -> u64 {
    bytes.iter().enumerate().fold(0u64, |acc, (i, b)| {
        acc.wrapping_add((i as u64 + 1).wrapping_mul(u64::from(*b)))
    })
}

/// Starts the scripted server (see [`scripted_server`]) in `n2-p1` and connects to it from
/// `n1-p1`, through that pod's capture; returns the server, the client's stream and its address.
async fn dial_scripted(
    c: &Cluster,
    banner: bool,
) -> (tokio::task::JoinHandle<()>, TcpStream, SocketAddr) {
    let server = scripted_server(&c.lab.pod_netns("n2-p1").expect("pod netns"), banner);
    let dst = SocketAddr::new(c.v4("n2-p1").ip(), PORT);
    let ns = c.lab.pod_netns("n1-p1").expect("pod netns");
    let s = connect(&ns, dst).await.expect("connect");
    let local = s.local_addr().expect("local address");
    (server, s, local)
}

/// `read`'s result, failing the test after [`DEADLINE`] or on an error, naming `what`.
async fn in_time<T>(what: &str, read: impl std::future::Future<Output = std::io::Result<T>>) -> T {
    tokio::time::timeout(DEADLINE, read)
        .await
        .unwrap_or_else(|_| panic!("{what} in time"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The finished outbound flow on n1 of the connection from `local`.
fn outbound_flow(c: &Cluster, local: SocketAddr) -> Value {
    c.wait_flow("n1", |f| {
        is(f, "outbound") && f["src"] == local.to_string() && f["finished"] == true
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_speaks_first_is_not_kept_waiting() {
    let c = Cluster::start(2, 1, "iptables", |_| {});
    let (_server, mut s, local) = dial_scripted(&c, true).await;

    // The client says nothing until it has the banner: the tunnel must open without it.
    let mut banner = vec![0u8; BANNER.len()];
    in_time("the banner", s.read_exact(&mut banner)).await;
    assert_eq!(banner, BANNER);
    s.write_all(b"HELO ambit\r\n").await.expect("send");
    s.shutdown().await.expect("half-close");
    let mut echoed = Vec::new();
    in_time("the echo", s.read_to_end(&mut echoed)).await;
    assert_eq!(echoed, b"HELO ambit\r\n");

    let f = outbound_flow(&c, local);
    assert_eq!(f["route"], "hbone", "{f:#}");
    assert_eq!(f["error"], Value::Null, "{f:#}");
    assert_eq!(f["bytes_sent"], 12, "{f:#}");
    assert_eq!(f["bytes_received"], BANNER.len() + 12, "{f:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_sends_and_closes_at_once_is_carried_whole() {
    carried_whole(Cluster::start(2, 1, "iptables", |_| {})).await;
}

/// The same with `--hbone-early-data=false` on the client's node: the 200 first, as ztunnel.
#[tokio::test(flavor = "multi_thread")]
async fn without_early_data_a_client_is_carried_whole_too() {
    let args = |node: &str| match node {
        "n1" => vec!["--hbone-early-data=false".to_string()],
        _ => Vec::new(),
    };
    carried_whole(Cluster::start_with(2, 1, "iptables", |_| {}, args)).await;
}

async fn carried_whole(c: Cluster) {
    // Far more than the one early read (4 KiB), written before the tunnel can have opened.
    let payload = ambit::lab::traffic::pattern(100_000);
    let (_server, mut s, local) = dial_scripted(&c, false).await;
    s.write_all(&payload).await.expect("send");
    s.shutdown().await.expect("half-close");
    let mut answer = String::new();
    in_time("the answer", s.read_to_string(&mut answer)).await;
    assert_eq!(
        answer,
        format!("{} {}", payload.len(), weighted_sum(&payload)),
        "what the server received"
    );

    let f = outbound_flow(&c, local);
    assert_eq!(f["route"], "hbone", "{f:#}");
    assert_eq!(f["bytes_sent"], payload.len(), "{f:#}");
    let inbound = c.wait_flow("n2", |f| {
        is(f, "hbone") && f["src"] == local.to_string() && f["finished"] == true
    });
    assert_eq!(inbound["bytes_sent"], payload.len(), "{inbound:#}");
}
