//! Moving bytes between a TCP stream and an HTTP/2 CONNECT stream, with half-close.
//!
//! TCP EOF becomes an empty DATA frame with END_STREAM; END_STREAM (or a RST_STREAM with
//! NO_ERROR/CANCEL, which peers use to end a tunnel) becomes a TCP write shutdown (FIN).
//! Received DATA is given back to the flow-control window as soon as it is written out, so a
//! slow reader throttles the sender through HTTP/2 flow control, not through memory.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

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

/// Bytes moved by [`Copy::poll_copy`]; how [`Copy::poll_until`] ended.
pub use crate::copy::{Ended, Transferred};

/// Both directions between a TCP stream and an HTTP/2 stream, polled by the connection's task
/// with [`Copy::poll_copy`].
///
/// An idle tunnel is mostly this state, so it is kept small: one struct polled for both
/// directions (about a third of two `async fn` loops joined, which reserve room for every
/// await point), no split of the TCP stream into reference-counted halves, and no read buffer
/// while the client is quiet. The tallies are passed to each poll rather than held, so the
/// task that owns the copy can also own what they count into (a flow, a metric) without
/// borrowing from itself.
pub struct Copy {
    tcp: TcpStream,
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// TCP → tunnel: the read buffer (no capacity while idle) and a chunk read but not yet
    /// handed to HTTP/2, which waits for flow-control capacity.
    read: BytesMut,
    unsent: Bytes,
    sent: u64,
    /// Tunnel → TCP: the DATA frame being written out.
    unwritten: Bytes,
    received: u64,
    state: State,
}

/// Which directions have ended.
#[derive(Clone, Copy, Default)]
struct State {
    /// TCP EOF was passed on as END_STREAM.
    up_done: bool,
    /// END_STREAM (or a graceful reset) arrived; the TCP write side is being shut down.
    down_ending: bool,
    /// The TCP write side is shut down.
    down_done: bool,
}

impl Copy {
    /// A copy of both directions between `tcp` and the HTTP/2 stream (`send`, `recv`), run by
    /// [`Copy::poll_copy`] until both ended. An error on either side ends both (dropping the
    /// h2 stream resets it).
    pub fn new(tcp: TcpStream, send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Copy {
            tcp,
            send,
            recv,
            read: BytesMut::new(),
            unsent: Bytes::new(),
            sent: 0,
            unwritten: Bytes::new(),
            received: 0,
            state: State::default(),
        }
    }

    /// Moves what can be moved now, adding the bytes written to `tcp_to_tunnel` and
    /// `tunnel_to_tcp` as they go; ready once both directions ended, or one failed.
    pub fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        tcp_to_tunnel: &dyn Tally,
        tunnel_to_tcp: &dyn Tally,
    ) -> Poll<io::Result<Transferred>> {
        if !self.state.up_done && self.poll_up(cx, tcp_to_tunnel)?.is_ready() {
            self.state.up_done = true;
        }
        if !self.state.down_done && self.poll_down(cx, tunnel_to_tcp)?.is_ready() {
            self.state.down_done = true;
        }
        if self.state.up_done && self.state.down_done {
            return Poll::Ready(Ok(Transferred {
                sent: self.sent,
                received: self.received,
            }));
        }
        Poll::Pending
    }

    /// [`Copy::poll_copy`], unless `stop` completes first: then the HTTP/2 stream is reset with
    /// CONNECT_ERROR (RFC 9113 section 8.5: the tunnel was closed abnormally, which the peer
    /// must not take for an orderly end), the TCP connection is reset, and `stop`'s value
    /// returned. The TCP connection's RST goes out when the copy is dropped, which its owner
    /// does once this is ready.
    pub fn poll_until<S: Future + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        tcp_to_tunnel: &dyn Tally,
        tunnel_to_tcp: &dyn Tally,
        stop: &mut S,
    ) -> Poll<Ended<S::Output>> {
        if let Poll::Ready(done) = self.poll_copy(cx, tcp_to_tunnel, tunnel_to_tcp) {
            return Poll::Ready(Ended::Copied(done));
        }
        let value = ready!(Pin::new(stop).poll(cx));
        self.send.send_reset(h2::Reason::CONNECT_ERROR);
        crate::socket::abort_on_close(&self.tcp);
        Poll::Ready(Ended::Stopped(value))
    }

    /// TCP → tunnel until EOF, then END_STREAM (half-close).
    fn poll_up(&mut self, cx: &mut Context<'_>, tally: &dyn Tally) -> Poll<io::Result<()>> {
        loop {
            if !self.unsent.is_empty() {
                self.send.reserve_capacity(self.unsent.len());
                let granted = match ready!(self.send.poll_capacity(cx)) {
                    Some(Ok(n)) => n,
                    Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                    None => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            "HBONE stream closed",
                        )))
                    }
                };
                // Taking the whole chunk leaves nothing pointing into its buffer, which an
                // empty remainder of a split would keep alive while the tunnel idles.
                let part = if granted >= self.unsent.len() {
                    std::mem::take(&mut self.unsent)
                } else {
                    self.unsent.split_to(granted)
                };
                let n = part.len() as u64;
                self.send.send_data(part, false).map_err(h2_io)?;
                tally.add(n);
                continue;
            }
            // No buffer until the client has sent something.
            ready!(self.tcp.poll_read_ready(cx))?;
            let want = if self.sent >= BULK_AFTER {
                BULK_READ
            } else {
                INITIAL_READ
            };
            self.read.reserve(want);
            let n = ready!(poll_read_into(&mut self.tcp, cx, &mut self.read))?;
            if n == 0 {
                self.read = BytesMut::new();
                self.send.send_data(Bytes::new(), true).map_err(h2_io)?;
                return Poll::Ready(Ok(()));
            }
            self.unsent = self.read.split().freeze();
            if n < want {
                // A short read: keep no spare capacity while waiting for more.
                self.read = BytesMut::new();
            }
            self.sent += n as u64;
        }
    }

    /// Tunnel → TCP until END_STREAM, then a TCP write shutdown (FIN). Received DATA is given
    /// back to the flow-control window only once written, so flow control follows the reader.
    fn poll_down(&mut self, cx: &mut Context<'_>, tally: &dyn Tally) -> Poll<io::Result<()>> {
        loop {
            if !self.unwritten.is_empty() {
                let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.unwritten))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                if n == self.unwritten.len() {
                    // Release the frame's buffer now, not when the next frame arrives.
                    self.unwritten = Bytes::new();
                } else {
                    self.unwritten.advance(n);
                }
                let _ = self.recv.flow_control().release_capacity(n);
                self.received += n as u64;
                tally.add(n as u64);
                continue;
            }
            if self.state.down_ending {
                ready!(Pin::new(&mut self.tcp).poll_shutdown(cx))?;
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => self.unwritten = data,
                Some(Err(e)) if !is_graceful_reset(&e) => return Poll::Ready(Err(h2_io(e))),
                Some(Err(_)) | None => self.state.down_ending = true,
            }
        }
    }
}

/// Reads from `tcp` into the spare capacity of `buf`. Through `AsyncRead` rather than
/// `try_read_buf`: tokio then clears the socket's readiness after a short read, so the next
/// wait for data really waits instead of reserving a buffer for a read that would block.
fn poll_read_into(
    tcp: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut spare = ReadBuf::uninit(buf.spare_capacity_mut());
    ready!(Pin::new(tcp).poll_read(cx, &mut spare))?;
    let n = spare.filled().len();
    // SAFETY: the read initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Poll::Ready(Ok(n))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Both ends of one HTTP/2 stream over an in-memory pipe: the client's (send, receive) and
    /// the server's. The connections keep being driven in the background.
    async fn stream_pair() -> (
        (SendStream<Bytes>, RecvStream),
        (SendStream<Bytes>, RecvStream),
    ) {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(far).await.expect("server handshake");
            let (request, mut respond) = conn.accept().await.expect("a stream").expect("ok");
            let send = respond
                .send_response(http::Response::new(()), false)
                .expect("200");
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            (send, request.into_body())
        });
        let (mut client, conn) = h2::client::handshake(near).await.expect("client handshake");
        tokio::spawn(conn);
        let request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("10.0.0.1:80")
            .body(())
            .expect("request");
        let (response, send) = client.send_request(request, false).expect("CONNECT");
        let server_side = server.await.expect("server task");
        let recv = response.await.expect("response").into_body();
        ((send, recv), server_side)
    }

    #[tokio::test]
    async fn an_idle_tunnel_holds_no_buffer_and_half_closes_each_way() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut app = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let ((send, recv), (mut peer_send, mut peer_recv)) = stream_pair().await;
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut copy = Copy::new(accepted, send, recv);
        let mut run = std::future::poll_fn(|cx| copy.poll_copy(cx, &up, &down));

        let exchange = async {
            app.write_all(b"ping").await.unwrap();
            let got = peer_recv.data().await.expect("data").expect("ok");
            assert_eq!(&got[..], b"ping");
            peer_send
                .send_data(Bytes::from_static(b"pong"), false)
                .unwrap();
            let mut reply = [0u8; 4];
            app.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"pong");
        };
        tokio::select! {
            () = exchange => {}
            ended = &mut run => panic!("the copy ended during the exchange: {ended:?}"),
        }
        drop(run);

        // Quiet both ways: the copy waits without a read buffer (a stale readiness after the
        // short read once made it reserve one) and without the frames it passed on.
        let waiting = std::future::poll_fn(|cx| Poll::Ready(copy.poll_copy(cx, &up, &down)))
            .await
            .is_pending();
        assert!(waiting);
        assert_eq!(copy.read.capacity(), 0);
        assert!(copy.unsent.is_empty() && copy.unwritten.is_empty());

        // The app's FIN becomes END_STREAM; END_STREAM becomes a FIN to the app.
        app.shutdown().await.unwrap();
        let closing = async {
            // END_STREAM may come on an empty DATA frame, which h2 hands over as a chunk.
            while let Some(chunk) = peer_recv.data().await {
                assert!(
                    chunk.expect("no reset").is_empty(),
                    "only END_STREAM expected"
                );
            }
            peer_send.send_data(Bytes::new(), true).unwrap();
            let mut rest = Vec::new();
            app.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        };
        let run = std::future::poll_fn(|cx| copy.poll_copy(cx, &up, &down));
        let (copied, ()) = tokio::join!(run, closing);
        let copied = copied.expect("both directions end cleanly");
        assert_eq!(
            copied,
            Transferred {
                sent: 4,
                received: 4
            }
        );
        assert_eq!(up.load(Ordering::Relaxed), 4);
        assert_eq!(down.load(Ordering::Relaxed), 4);
    }
}
