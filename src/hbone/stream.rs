//! Moving bytes between a TCP stream and an HTTP/2 CONNECT stream, with half-close.
//!
//! TCP EOF becomes an empty DATA frame with END_STREAM; END_STREAM (or a RST_STREAM with
//! NO_ERROR/CANCEL, which peers use to end a tunnel) becomes a TCP write shutdown (FIN).
//! Received DATA is given back to the flow-control window as soon as it is written out, so a
//! slow reader throttles the sender through HTTP/2 flow control, not through memory.

use std::io;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{
    TUNNEL_BULK_AFTER as BULK_AFTER, TUNNEL_BULK_READ as BULK_READ,
    TUNNEL_INITIAL_READ as INITIAL_READ,
};
use crate::copy::Tally;

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    io::Error::new(io::ErrorKind::BrokenPipe, e)
}

/// Whether an h2 error on a receiving stream is just the peer ending the tunnel.
fn is_graceful_reset(e: &h2::Error) -> bool {
    matches!(
        e.reason(),
        Some(h2::Reason::NO_ERROR) | Some(h2::Reason::CANCEL)
    )
}

/// Copies `reader` into the HTTP/2 stream until EOF, then ends the stream (half-close).
pub async fn tcp_to_h2<R: AsyncRead + Unpin>(
    mut reader: R,
    send: &mut SendStream<Bytes>,
    counter: &dyn Tally,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut buf = BytesMut::new();
    loop {
        let want = if total >= BULK_AFTER {
            BULK_READ
        } else {
            INITIAL_READ
        };
        if buf.capacity() == 0 {
            // No buffer while idle.
            crate::copy::readable(&mut reader).await?;
        }
        buf.reserve(want);
        let n = reader.read_buf(&mut buf).await?;
        if n == 0 {
            send.send_data(Bytes::new(), true).map_err(h2_io)?;
            return Ok(total);
        }
        let mut chunk = buf.split().freeze();
        if n < want {
            // A short read: keep no spare capacity while waiting for more.
            buf = BytesMut::new();
        }
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
                .await
                .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "HBONE stream closed"))?
                .map_err(h2_io)?;
            let part = chunk.split_to(granted.min(chunk.len()));
            send.send_data(part, false).map_err(h2_io)?;
        }
        total += n as u64;
        counter.add(n as u64);
    }
}

/// Copies the HTTP/2 stream into `writer` until END_STREAM, then shuts `writer` down.
pub async fn h2_to_tcp<W: AsyncWrite + Unpin>(
    mut recv: RecvStream,
    mut writer: W,
    counter: &dyn Tally,
) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(frame) = recv.data().await {
        let data = match frame {
            Ok(d) => d,
            Err(e) if is_graceful_reset(&e) => break,
            Err(e) => return Err(h2_io(e)),
        };
        writer.write_all(&data).await?;
        let n = data.len();
        // Give the window back only once the bytes are out: flow control follows the reader.
        let _ = recv.flow_control().release_capacity(n);
        total += n as u64;
        counter.add(n as u64);
    }
    writer.shutdown().await?;
    Ok(total)
}

/// Bytes moved by [`bidirectional`]; how [`bidirectional_until`] ended.
pub use crate::copy::{Ended, Transferred};

/// Runs both directions between a TCP stream and an HTTP/2 stream until both ended. An error
/// on either side ends both (dropping the h2 stream resets it).
pub async fn bidirectional(
    tcp: tokio::net::TcpStream,
    mut send: SendStream<Bytes>,
    recv: RecvStream,
    tcp_to_tunnel: &dyn Tally,
    tunnel_to_tcp: &dyn Tally,
) -> io::Result<Transferred> {
    let (r, w) = tcp.into_split();
    let (sent, received) = tokio::try_join!(
        tcp_to_h2(r, &mut send, tcp_to_tunnel),
        h2_to_tcp(recv, w, tunnel_to_tcp),
    )?;
    Ok(Transferred { sent, received })
}

/// [`bidirectional`], unless `stop` completes first: then the HTTP/2 stream is reset with
/// CONNECT_ERROR (RFC 9113 section 8.5: the tunnel was closed abnormally, which the peer must
/// not take for an orderly end), the TCP connection is reset, and `stop`'s value returned.
pub async fn bidirectional_until<T>(
    tcp: tokio::net::TcpStream,
    mut send: SendStream<Bytes>,
    recv: RecvStream,
    tcp_to_tunnel: &dyn Tally,
    tunnel_to_tcp: &dyn Tally,
    stop: impl std::future::Future<Output = T>,
) -> Ended<T> {
    let (mut r, mut w) = tcp.into_split();
    let stopped = {
        // The copy borrows what must be reset afterwards, so it can be dropped first.
        let copy = async {
            tokio::try_join!(
                tcp_to_h2(&mut r, &mut send, tcp_to_tunnel),
                h2_to_tcp(recv, &mut w, tunnel_to_tcp),
            )
        };
        tokio::select! {
            done = copy => {
                return Ended::Copied(done.map(|(sent, received)| Transferred { sent, received }))
            }
            value = stop => value,
        }
    };
    send.send_reset(h2::Reason::CONNECT_ERROR);
    // Halves of one stream always reunite.
    if let Ok(s) = r.reunite(w) {
        crate::copy::reset(s);
    }
    Ended::Stopped(stopped)
}
