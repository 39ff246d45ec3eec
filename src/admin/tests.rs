//! The endpoint servers' bounds, observed by real clients over loopback: idle connections
//! closed, one request per connection, the oldest idle connection making room at the cap,
//! oversized or unexpected requests refused.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{read_only, serve_listener, EndpointLimits, Reply};

/// Longest any awaited outcome may take.
const DEADLINE: Duration = Duration::from_secs(10);
/// Size of the large reply of `/big`: more than loopback socket buffers hold, so a client
/// that does not read keeps its connection busy.
const BIG: usize = 32 * 1024 * 1024;

fn limits() -> EndpointLimits {
    EndpointLimits {
        header_read_timeout: Duration::from_millis(300),
        connection_lifetime: Duration::from_secs(30),
        max_connections: 4,
        max_request_head: 8 * 1024,
        max_headers: 16,
    }
}

async fn start(limits: EndpointLimits) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = read_only(|path| match path {
        "/big" => Reply::text(StatusCode::OK, "x".repeat(BIG)),
        "/metrics" => Reply::text(StatusCode::OK, "ambit_up 1\n"),
        _ => Reply::text(StatusCode::NOT_FOUND, "no\n"),
    });
    tokio::spawn(serve_listener(listener, "test", router, limits));
    addr
}

/// Reads until EOF or error; the bytes read and whether it ended within [`DEADLINE`].
async fn read_to_end(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let r = tokio::time::timeout(DEADLINE, async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (out, r.is_ok())
}

/// Whether the server has closed `s` (EOF or reset), waiting at most `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (raw, ended) = read_to_end(&mut s).await;
    assert!(ended, "the server kept the connection open after replying");
    String::from_utf8_lossy(&raw).into_owned()
}

fn status(reply: &str) -> &str {
    reply.split(' ').nth(1).unwrap_or_default()
}

#[tokio::test]
async fn idle_connection_is_closed_after_the_header_timeout() {
    let addr = start(limits()).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut idle, DEADLINE).await,
        "idle connection never closed"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    // A client trickling its head is cut too.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    assert!(
        closed_within(&mut slow, DEADLINE).await,
        "trickling client never cut"
    );
}

#[tokio::test]
async fn one_request_per_connection() {
    let addr = start(limits()).await;
    let reply = get(addr, "/metrics").await;
    assert_eq!(status(&reply), "200", "{reply}");
    assert!(reply.to_ascii_lowercase().contains("connection: close"));
    assert!(reply.ends_with("ambit_up 1\n"), "{reply}");
}

#[tokio::test]
async fn at_the_cap_the_oldest_idle_connection_makes_room() {
    let addr = start(limits()).await;
    // One busy connection (its large reply unread), then three idle ones: the cap (4).
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1];
    tokio::time::timeout(DEADLINE, busy.read_exact(&mut first))
        .await
        .expect("reply started")
        .unwrap();
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // A new client is served at once; the oldest idle one gave way, not the busy one.
    let reply = get(addr, "/metrics").await;
    assert_eq!(status(&reply), "200", "{reply}");
    assert!(
        closed_within(&mut idle[0], Duration::from_millis(100)).await,
        "oldest idle connection not closed"
    );
    for other in &mut idle[1..] {
        assert!(!closed_within(other, Duration::from_millis(50)).await);
    }
    let (rest, ended) = read_to_end(&mut busy).await;
    assert!(ended);
    let body_at = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        rest.len() - body_at,
        BIG,
        "busy connection's reply cut short"
    );
}

#[tokio::test]
async fn a_flood_of_idle_connections_never_locks_out_a_client() {
    let addr = start(limits()).await;
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(TcpStream::connect(addr).await.unwrap());
    }
    let reply = get(addr, "/metrics").await;
    assert_eq!(status(&reply), "200", "{reply}");
}

#[tokio::test]
async fn oversized_unexpected_and_bodied_requests_are_refused() {
    let addr = start(limits()).await;
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(huge.as_bytes()).await;
    let (raw, ended) = read_to_end(&mut s).await;
    assert!(ended);
    assert_eq!(status(&String::from_utf8_lossy(&raw)), "431");

    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s
        .write_all(format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes())
        .await;
    let (raw, _) = read_to_end(&mut s).await;
    let reply = String::from_utf8_lossy(&raw);
    assert!(
        !reply.starts_with("HTTP/1.1 200"),
        "too many headers served: {reply}"
    );

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let (raw, _) = read_to_end(&mut s).await;
    assert_eq!(status(&String::from_utf8_lossy(&raw)), "405");

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let (raw, _) = read_to_end(&mut s).await;
    assert_eq!(status(&String::from_utf8_lossy(&raw)), "413");

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PUT /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let (raw, _) = read_to_end(&mut s).await;
    assert_eq!(status(&String::from_utf8_lossy(&raw)), "405");

    // A read-only route takes no parameter: the one sent is named in the 400.
    let reply = get(addr, "/metrics?verbose=1").await;
    assert_eq!(status(&reply), "400", "{reply}");
    assert!(reply.contains("unknown parameter \"verbose\""), "{reply}");
}
