//! Moving bytes between the two sides of a proxied connection.
//!
//! Each direction runs its own loop; when one side stops sending (EOF), the other side's write
//! half is shut down so the half-close reaches the peer, and the opposite direction keeps
//! flowing until it ends too. No read buffer exists until data arrives, so an idle connection
//! costs little; it starts small and grows as a direction proves to be a bulk transfer.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{
    COPY_GROW_AFTER_LARGE as GROW_AFTER_LARGE, COPY_GROW_AFTER_MEDIUM as GROW_AFTER_MEDIUM,
    COPY_INITIAL_BUFFER as INITIAL_BUFFER, COPY_LARGE_BUFFER as LARGE_BUFFER,
    COPY_MEDIUM_BUFFER as MEDIUM_BUFFER,
};

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
    counter: &AtomicU64,
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
        counter.fetch_add(n as u64, Ordering::Relaxed);
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
    downstream: tokio::net::TcpStream,
    upstream: tokio::net::TcpStream,
    sent: &AtomicU64,
    received: &AtomicU64,
) -> io::Result<Transferred> {
    let (down_read, down_write) = downstream.into_split();
    let (up_read, up_write) = upstream.into_split();
    let (s, r) = tokio::try_join!(
        copy_one_way(down_read, up_write, sent),
        copy_one_way(up_read, down_write, received),
    )?;
    Ok(Transferred {
        sent: s,
        received: r,
    })
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
}
