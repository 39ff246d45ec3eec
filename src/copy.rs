//! Moving bytes between the two sides of a proxied connection.
//!
//! Each direction runs its own loop; when one side stops sending (EOF), the other side's write
//! half is shut down so the half-close reaches the peer, and the opposite direction keeps
//! flowing until it ends too. No read buffer exists until data arrives, so an idle connection
//! costs little; it starts small and grows as a direction proves to be a bulk transfer.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

mod splice;

pub use crate::config::TcpCopy;
use crate::config::{
    COPY_GROW_AFTER_LARGE as GROW_AFTER_LARGE, COPY_GROW_AFTER_MEDIUM as GROW_AFTER_MEDIUM,
    COPY_INITIAL_BUFFER as INITIAL_BUFFER, COPY_LARGE_BUFFER as LARGE_BUFFER,
    COPY_MEDIUM_BUFFER as MEDIUM_BUFFER,
};
use crate::socket::close_with_reset;

/// Where a copy adds the bytes it moves, chunk by chunk, as they are written: a flow's own
/// count, a Prometheus counter, or both. Called once per chunk (up to a splice or read buffer),
/// so an implementation must be cheap: an atomic add.
pub trait Tally: Sync {
    /// Adds `n` bytes just written to the other side.
    fn add(&self, n: u64);
}

impl Tally for AtomicU64 {
    fn add(&self, n: u64) {
        self.fetch_add(n, Ordering::Relaxed);
    }
}

/// Two tallies fed together, e.g. a flow's count and the connection's metric counter.
impl<A: Tally + ?Sized, B: Tally + ?Sized> Tally for (&A, &B) {
    fn add(&self, n: u64) {
        self.0.add(n);
        self.1.add(n);
    }
}

/// Waits until `reader` has data, end of stream or an error, taking nothing: a zero-length read
/// waits for readiness on a socket. Copies call it so that an idle connection holds no buffer.
pub(crate) async fn readable<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<()> {
    let n = reader.read(&mut []).await?;
    debug_assert_eq!(n, 0, "a zero-length read returns nothing");
    Ok(())
}

/// Copies `reader` to `writer` until EOF, then shuts `writer` down (half-close). Every chunk
/// written is added to `counter` as it goes, so live connections show their progress.
pub async fn copy_one_way<R, W>(
    mut reader: R,
    mut writer: W,
    counter: &dyn Tally,
) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = 0u64;
    // No buffer until the connection has data.
    readable(&mut reader).await?;
    let mut buf = vec![0u8; INITIAL_BUFFER];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            writer.shutdown().await?;
            return Ok(total);
        }
        writer.write_all(&buf[..n]).await?;
        total += n as u64;
        counter.add(n as u64);
        // Grow only when a read filled the buffer: small request/response traffic never does.
        if n == buf.len() {
            let want = if total >= GROW_AFTER_LARGE {
                LARGE_BUFFER
            } else if total >= GROW_AFTER_MEDIUM {
                MEDIUM_BUFFER
            } else {
                buf.len()
            };
            if want > buf.len() {
                buf.resize(want, 0);
            }
        }
    }
}

/// Byte counts of a finished bidirectional copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Bytes from the downstream (client) side to the upstream (server) side.
    pub sent: u64,
    /// Bytes from upstream back to downstream.
    pub received: u64,
}

/// Copies both directions between two TCP streams until both have ended. An error on either
/// direction ends both (the sockets are dropped, which resets the other side).
pub async fn bidirectional(
    mut downstream: TcpStream,
    mut upstream: TcpStream,
    sent: &dyn Tally,
    received: &dyn Tally,
    how: TcpCopy,
) -> io::Result<Transferred> {
    both_ways(&mut downstream, &mut upstream, sent, received, how).await
}

/// Both directions, borrowing the streams so the caller keeps them (to reset them).
async fn both_ways(
    downstream: &mut TcpStream,
    upstream: &mut TcpStream,
    sent: &dyn Tally,
    received: &dyn Tally,
    how: TcpCopy,
) -> io::Result<Transferred> {
    let (sent, received) = match how {
        TcpCopy::Buffered => {
            let (down_read, down_write) = downstream.split();
            let (up_read, up_write) = upstream.split();
            tokio::try_join!(
                copy_one_way(down_read, up_write, sent),
                copy_one_way(up_read, down_write, received),
            )?
        }
        TcpCopy::Splice => {
            let (down, up) = (&*downstream, &*upstream);
            tokio::try_join!(
                splice::one_way(down, up, sent),
                splice::one_way(up, down, received),
            )?
        }
    };
    Ok(Transferred { sent, received })
}

/// How a copy that can be stopped from outside ended.
#[derive(Debug)]
pub enum Ended<T> {
    /// Both directions ended, or one failed.
    Copied(io::Result<Transferred>),
    /// The stop signal came first, with this value; the connections were reset.
    Stopped(T),
}

/// [`bidirectional`], unless `stop` completes first: then both connections are reset (see
/// [`close_with_reset`]) and its value returned. Used to cut live connections a new policy denies.
pub async fn bidirectional_until<T>(
    mut downstream: TcpStream,
    mut upstream: TcpStream,
    sent: &dyn Tally,
    received: &dyn Tally,
    how: TcpCopy,
    stop: impl std::future::Future<Output = T>,
) -> Ended<T> {
    let stopped = {
        let copy = both_ways(&mut downstream, &mut upstream, sent, received, how);
        tokio::select! {
            done = copy => return Ended::Copied(done),
            value = stop => value,
        }
    };
    close_with_reset(downstream);
    close_with_reset(upstream);
    Ended::Stopped(stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_everything_and_propagates_eof() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut client, proxy_in) = tokio::io::duplex(64 * 1024);
        let (proxy_out, mut server) = tokio::io::duplex(64 * 1024);
        let counter = AtomicU64::new(0);
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&data).await.unwrap();
            client.shutdown().await.unwrap();
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            got
        });
        let n = copy_one_way(proxy_in, proxy_out, &counter).await.unwrap();
        writer.await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(n as usize, expected.len());
        assert_eq!(counter.load(Ordering::Relaxed), n);
        assert!(got == expected, "bytes differ");
    }

    /// A pair of connected TCP streams on loopback.
    async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    const MODES: [TcpCopy; 2] = [TcpCopy::Splice, TcpCopy::Buffered];

    #[tokio::test]
    async fn a_stopped_copy_resets_both_sides() {
        for how in MODES {
            a_stopped_copy_resets_both_sides_with(how).await;
        }
    }

    async fn a_stopped_copy_resets_both_sides_with(how: TcpCopy) {
        let (mut client, proxy_down) = tcp_pair().await;
        let (proxy_up, mut server) = tcp_pair().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<&str>();
        let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
        let relay = tokio::spawn(async move {
            let stop = async { rx.await.unwrap_or("dropped") };
            match bidirectional_until(proxy_down, proxy_up, &sent, &received, how, stop).await {
                Ended::Stopped(why) => why,
                Ended::Copied(r) => panic!("copy ended first: {r:?}"),
            }
        });
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        tx.send("denied").unwrap();
        assert_eq!(relay.await.unwrap(), "denied");
        for side in [&mut client, &mut server] {
            let got = side.read(&mut buf).await;
            assert!(
                matches!(&got, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
                "{got:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_unstopped_copy_ends_normally() {
        for how in MODES {
            an_unstopped_copy_ends_normally_with(how).await;
        }
    }

    async fn an_unstopped_copy_ends_normally_with(how: TcpCopy) {
        let (mut client, proxy_down) = tcp_pair().await;
        let (proxy_up, mut server) = tcp_pair().await;
        let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
        let relay = tokio::spawn(async move {
            let stop = std::future::pending::<()>();
            match bidirectional_until(proxy_down, proxy_up, &sent, &received, how, stop).await {
                Ended::Copied(r) => r.unwrap(),
                Ended::Stopped(()) => panic!("stopped"),
            }
        });
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(
            (got.as_slice(), back.as_slice()),
            (&b"hello"[..], &b"bye"[..])
        );
        let t = relay.await.unwrap();
        assert_eq!((t.sent, t.received), (5, 3));
    }

    /// Megabytes each way, one side half-closing first while the other keeps sending: every
    /// byte arrives in order, in both modes, and the counters agree.
    #[tokio::test]
    async fn bulk_both_ways_with_half_close() {
        for how in MODES {
            let (mut client, proxy_down) = tcp_pair().await;
            let (proxy_up, mut server) = tcp_pair().await;
            let up: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
            let down: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
            let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
            let relay = bidirectional(proxy_down, proxy_up, &sent, &received, how);
            let (up_expected, down_expected) = (up.clone(), down.clone());
            let client_side = async move {
                let (mut r, mut w) = client.split();
                let write = async {
                    w.write_all(&up).await.unwrap();
                    w.shutdown().await.unwrap();
                };
                let mut got = Vec::new();
                let read = r.read_to_end(&mut got);
                let ((), n) = tokio::join!(write, read);
                n.unwrap();
                got
            };
            let server_side = async move {
                let mut got = Vec::new();
                // Read everything (the client's half-close arrives), then answer.
                server.read_to_end(&mut got).await.unwrap();
                server.write_all(&down).await.unwrap();
                server.shutdown().await.unwrap();
                got
            };
            let (t, at_client, at_server) = tokio::join!(relay, client_side, server_side);
            let t = t.unwrap();
            assert!(at_server == up_expected, "{how:?}: upstream bytes differ");
            assert!(
                at_client == down_expected,
                "{how:?}: downstream bytes differ"
            );
            assert_eq!((t.sent, t.received), (5_000_000, 3_000_000), "{how:?}");
            assert_eq!(sent.load(Ordering::Relaxed), t.sent);
            assert_eq!(received.load(Ordering::Relaxed), t.received);
        }
    }
}
