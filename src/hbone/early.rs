//! Optimistic data: the client's first bytes go out on a CONNECT stream before its answer.
//!
//! A client that speaks first (an HTTP request, a TLS ClientHello, the bench's ping) would
//! otherwise wait for the peer's 200 before its first byte left the node: one extra crossing
//! between the nodes per new connection. HTTP/2 lets DATA follow the request's HEADERS at
//! once (the stream is open), and the peer holds it in the stream's flow-control window until
//! it has decided and dialled; nothing reaches the destination unless the peer answers 200, so
//! the peer's policy still decides before any byte is delivered. Only one read is sent early:
//! enough for the request-shaped protocols this is for, and nothing is kept for a client
//! that waits for the server to speak.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

use crate::config::TUNNEL_INITIAL_READ;

/// Why no answer came back from [`answer_sending_first_bytes`].
#[derive(Debug, thiserror::Error)]
pub enum EarlyError {
    /// Reading the client's first bytes failed (it reset the connection, typically).
    #[error("reading the client: {0}")]
    Client(#[source] io::Error),
    /// The CONNECT stream failed at the HTTP/2 level before an answer.
    #[error("{error}")]
    Stream {
        /// What h2 reported.
        #[source]
        error: h2::Error,
        /// Whether opening the stream again elsewhere cannot deliver anything twice: nothing
        /// was sent on it, or the peer said it did not process it (see [`unprocessed`]).
        retry_safe: bool,
    },
}

/// Waits for the answer to the CONNECT on `send`, sending the client's first bytes meanwhile.
///
/// `first` carries what was read across attempts: on a retry (`Some`) the same bytes are sent
/// again and nothing more is read. A client that sends nothing, or closes, before the answer
/// is left to the copy: its end of stream is read again there.
pub async fn answer_sending_first_bytes(
    client: &mut TcpStream,
    send: &mut SendStream<Bytes>,
    mut response: ResponseFuture,
    first: &mut Option<Bytes>,
) -> Result<http::Response<RecvStream>, EarlyError> {
    if let Some(chunk) = first.as_ref() {
        send.send_data(chunk.clone(), false)
            .map_err(|e| stream_failed(e, true))?;
    } else {
        let read = std::future::poll_fn(|cx| read_first_bytes(client, cx));
        tokio::select! {
            biased;
            answer = &mut response => return answer.map_err(|e| stream_failed(e, true)),
            read = read => {
                let chunk = read.map_err(EarlyError::Client)?;
                if !chunk.is_empty() {
                    // Kept before sending, so a retry sends these bytes rather than losing them.
                    let chunk = first.insert(chunk).clone();
                    // h2 queues DATA beyond the peer's window and asks for the capacity itself.
                    send.send_data(chunk, false)
                        .map_err(|e| stream_failed(e, true))?;
                }
            }
        }
    }
    let nothing_sent = first.is_none();
    response.await.map_err(|e| stream_failed(e, nothing_sent))
}

/// One read from `client`, kept at its size. The buffer is on the stack of this poll, not in
/// any future's state (the boxed opening would grow by 4 KiB), and h2 gets the bytes rather
/// than a mostly empty 4 KiB buffer that its connection task would free, often on another
/// thread. Through `AsyncRead`, so a short read clears the socket's readiness and the copy
/// then really waits (see `stream::Copy`).
fn read_first_bytes(client: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
    let mut space = [MaybeUninit::<u8>::uninit(); TUNNEL_INITIAL_READ];
    let mut buf = ReadBuf::uninit(&mut space);
    ready!(Pin::new(client).poll_read(cx, &mut buf))?;
    Poll::Ready(Ok(Bytes::copy_from_slice(buf.filled())))
}

fn stream_failed(error: h2::Error, nothing_sent: bool) -> EarlyError {
    EarlyError::Stream {
        retry_safe: nothing_sent || unprocessed(&error),
        error,
    }
}

/// Whether the peer said it did not process the stream: REFUSED_STREAM (RFC 9113 section
/// 8.7), or a GOAWAY whose last stream ID is below this stream's (section 6.8; h2 fails only
/// those streams with the GOAWAY, the others carry on). A draining peer answers this way to a
/// CONNECT that raced its GOAWAY.
fn unprocessed(error: &h2::Error) -> bool {
    error.reason() == Some(h2::Reason::REFUSED_STREAM) || (error.is_go_away() && error.is_remote())
}

#[cfg(test)]
mod tests {
    use h2::server::SendResponse;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    /// An HTTP/2 connection over an in-memory pipe: the client's request sender, and the
    /// server's accepted CONNECT streams as they arrive. Both sides keep being driven.
    async fn h2_pair() -> (
        h2::client::SendRequest<Bytes>,
        mpsc::Receiver<(http::Request<RecvStream>, SendResponse<Bytes>)>,
    ) {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(far).await.expect("server handshake");
            while let Some(Ok(stream)) = conn.accept().await {
                let _ = tx.send(stream).await;
            }
        });
        let (client, conn) = h2::client::handshake(near).await.expect("client handshake");
        tokio::spawn(conn);
        (client, rx)
    }

    /// `f`, or a failure after 10 s: a step that never happens fails the test, not hangs it.
    async fn within<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(std::time::Duration::from_secs(10), f)
            .await
            .expect("the exchange finished in time")
    }

    /// The app's end and the proxy's accepted end of a loopback TCP connection.
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (app, accepted)
    }

    fn connect_request() -> http::Request<()> {
        http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("10.0.0.1:80")
            .body(())
            .expect("request")
    }

    /// A server's accepted CONNECT streams, as they arrive.
    type Streams = mpsc::Receiver<(http::Request<RecvStream>, SendResponse<Bytes>)>;

    /// One CONNECT from `client` over a fresh HTTP/2 pair, `first` holding what an earlier
    /// attempt read, while `peer` plays the server, within the deadline. Returns the answer,
    /// what `first` holds afterwards and what `peer` returned.
    async fn open<T, F: std::future::Future<Output = T>>(
        client: &mut TcpStream,
        mut first: Option<Bytes>,
        peer: impl FnOnce(Streams) -> F,
    ) -> (
        Result<http::Response<RecvStream>, EarlyError>,
        Option<Bytes>,
        T,
    ) {
        let (send, streams) = h2_pair().await;
        let mut send = send.ready().await.unwrap();
        let (response, mut stream) = send.send_request(connect_request(), false).unwrap();
        let (answer, from_peer) = within(async {
            tokio::join!(
                answer_sending_first_bytes(client, &mut stream, response, &mut first),
                peer(streams),
            )
        })
        .await;
        (answer, first, from_peer)
    }

    /// The server: reads one DATA frame of the next stream before answering 200; returns it.
    async fn answer_after_first_data(mut streams: Streams) -> Bytes {
        let (request, mut respond) = streams.recv().await.expect("a CONNECT");
        let data = request
            .into_body()
            .data()
            .await
            .expect("data before the answer")
            .expect("ok");
        let _open = respond
            .send_response(http::Response::new(()), false)
            .expect("answer");
        data
    }

    /// The server: answers the next stream 200 at once; returns the open response stream.
    async fn answer_at_once(mut streams: Streams) -> SendStream<Bytes> {
        let (_request, mut respond) = streams.recv().await.expect("a CONNECT");
        respond
            .send_response(http::Response::new(()), false)
            .expect("answer")
    }

    #[tokio::test]
    async fn the_first_bytes_reach_the_peer_before_its_answer() {
        let (mut app, mut client) = tcp_pair().await;
        app.write_all(b"hello").await.unwrap();
        let (answer, first, seen) = open(&mut client, None, answer_after_first_data).await;
        // The peer saw the bytes while it had not answered yet: it read them to answer.
        assert_eq!(&seen[..], b"hello");
        assert_eq!(answer.expect("answered").status(), 200);
        assert_eq!(first.as_deref(), Some(&b"hello"[..]));
    }

    #[tokio::test]
    async fn a_quiet_client_gets_its_answer_and_keeps_its_later_bytes() {
        let (mut app, mut client) = tcp_pair().await;
        let (answer, first, _open) = open(&mut client, None, answer_at_once).await;
        assert_eq!(answer.expect("answered").status(), 200);
        assert!(first.is_none());
        // Nothing was taken from the socket: what the app writes now is still there to copy.
        app.write_all(b"later").await.unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"later");
    }

    #[tokio::test]
    async fn a_client_that_closes_at_once_leaves_its_end_of_stream_for_the_copy() {
        let (mut app, mut client) = tcp_pair().await;
        app.shutdown().await.unwrap();
        let (answer, first, _open) = open(&mut client, None, answer_at_once).await;
        assert_eq!(answer.expect("answered").status(), 200);
        assert!(first.is_none(), "an end of stream is no bytes to send");
        // The copy still sees the end of stream, so it can pass it on as END_STREAM.
        let mut rest = Vec::new();
        within(client.read_to_end(&mut rest)).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_retry_sends_the_same_bytes_and_reads_nothing_more() {
        let (mut app, mut client) = tcp_pair().await;
        app.write_all(b"second").await.unwrap();
        let again = Some(Bytes::from_static(b"first"));
        let (answer, _, seen) = open(&mut client, again, answer_after_first_data).await;
        assert_eq!(answer.expect("answered").status(), 200);
        assert_eq!(&seen[..], b"first");
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"second");
    }

    /// A reset after bytes went out is not safe to retry, unless the peer says it refused
    /// the stream unprocessed.
    #[tokio::test]
    async fn a_reset_after_sending_is_retried_only_when_refused() {
        for (reason, safe) in [
            (h2::Reason::CANCEL, false),
            (h2::Reason::REFUSED_STREAM, true),
        ] {
            let (mut app, mut client) = tcp_pair().await;
            app.write_all(b"hi").await.unwrap();
            let reset_after_data = |mut streams: Streams| async move {
                let (request, mut respond) = streams.recv().await.expect("a CONNECT");
                let data = request.into_body().data().await.expect("data").expect("ok");
                respond.send_reset(reason);
                data
            };
            let (answer, _, seen) = open(&mut client, None, reset_after_data).await;
            assert_eq!(&seen[..], b"hi");
            match answer {
                Err(EarlyError::Stream { retry_safe, .. }) => {
                    assert_eq!(retry_safe, safe, "after {reason:?}")
                }
                other => panic!("expected a stream error after {reason:?}, got {other:?}"),
            }
        }
    }
}
