//! One connection attempt to an echo server, reported as what the client saw (an echo, a
//! reset, a close) instead of failing the test, so tests can assert on refusals.

use std::net::{IpAddr, SocketAddr};

use ambit::netns::NetNs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::DEADLINE;

/// What a client saw of one connection attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Its payload came back whole.
    Echo,
    /// The connection was reset (RST), possibly while it was being set up.
    Reset,
    /// The connection ended without any data coming back.
    Closed,
    /// Anything else (a partial echo, a timeout, another error).
    Other(String),
}

/// One connection attempt: the client's address and what it saw.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The client's own address (known even if the connection was refused while connecting).
    pub local: SocketAddr,
    /// What it saw.
    pub seen: Seen,
}

/// Connects from `ns`, bound to `src`, to the echo server at `dst`, sends `payload`,
/// half-closes and reads to the end, within [`DEADLINE`]. A refusal is an outcome, not a
/// failure: a reset can arrive before `connect` even returns, which is why the socket is bound
/// first (so its address is known either way).
pub async fn try_echo(ns: &NetNs, src: IpAddr, dst: SocketAddr, payload: &[u8]) -> Attempt {
    let socket = ns
        .run(|| -> std::io::Result<tokio::net::TcpSocket> {
            let s = if dst.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            s.set_nodelay(true)?;
            s.bind(SocketAddr::new(src, 0))?;
            Ok(s)
        })
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("socket bound to {src}: {e}"));
    let local = ambit::socket::canonical(socket.local_addr().expect("local address"));
    let work = async {
        let stream = match socket.connect(dst).await {
            Ok(s) => s,
            Err(e) => return seen_error(e),
        };
        let (mut r, mut w) = stream.into_split();
        let write = async {
            w.write_all(payload).await?;
            w.shutdown().await
        };
        let mut reply = Vec::new();
        let (wrote, read) = tokio::join!(write, r.read_to_end(&mut reply));
        match (wrote, read) {
            (_, Err(e)) => seen_error(e),
            (Err(e), Ok(_)) if reply.is_empty() => seen_error(e),
            _ if reply == payload => Seen::Echo,
            _ if reply.is_empty() => Seen::Closed,
            _ => Seen::Other(format!(
                "{} of {} bytes came back",
                reply.len(),
                payload.len()
            )),
        }
    };
    let seen = tokio::time::timeout(DEADLINE, work)
        .await
        .unwrap_or_else(|_| Seen::Other(format!("{local} -> {dst} timed out")));
    Attempt { local, seen }
}

fn seen_error(e: std::io::Error) -> Seen {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => Seen::Reset,
        _ => Seen::Other(e.to_string()),
    }
}
