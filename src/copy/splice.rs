//! One direction of a plain TCP relay with `splice(2)`: socket → pipe → socket, inside the
//! kernel, so the bytes never enter user space.
//!
//! Why: passthrough (15001) and inbound plaintext (15006) only forward bytes; a buffered copy
//! moves every byte into the process and out again. The pipe is created when the direction
//! first has data, so an idle connection holds none. If the kernel refuses splice for these
//! sockets, the direction carries on with a buffered copy, after writing out whatever the pipe
//! already holds: no byte is lost to the fallback.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::Tally;
use crate::config::{COPY_LARGE_BUFFER, SPLICE_PIPE_SIZE};

/// A pipe's two ends.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // A bigger pipe moves more per call; the kernel may refuse (pipe-max-size, per-user
        // page limits), and the default 64 KiB still works.
        let size = i32::try_from(SPLICE_PIPE_SIZE).unwrap_or(i32::MAX);
        let _ = fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(size));
        Ok(Pipe { read, write })
    }
}

/// Errors meaning "splice does not work on these descriptors", not "the connection failed".
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP)
    )
}

const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

/// Copies `from` to `to` until EOF, then shuts `to`'s write side down (half-close). Every
/// chunk written is added to `counter` as it goes.
pub(crate) async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    counter: &dyn Tally,
) -> io::Result<u64> {
    let mut total = 0u64;
    // No pipe until the connection has data.
    from.readable().await?;
    let pipe = match Pipe::new() {
        Ok(pipe) => pipe,
        Err(_) => return buffered(from, to, counter, total).await,
    };
    loop {
        // The pipe is empty here, so "would block" can only mean the socket has no data.
        let filled = from
            .async_io(Interest::READABLE, || {
                Ok(splice(
                    from,
                    None,
                    &pipe.write,
                    None,
                    SPLICE_PIPE_SIZE,
                    FLAGS,
                )?)
            })
            .await;
        let mut left = match filled {
            Ok(0) => {
                socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write)?;
                return Ok(total);
            }
            Ok(n) => n,
            Err(e) if unsupported(&e) => return buffered(from, to, counter, total).await,
            Err(e) => return Err(e),
        };
        while left > 0 {
            let sent = to
                .async_io(Interest::WRITABLE, || {
                    Ok(splice(&pipe.read, None, to, None, left, FLAGS)?)
                })
                .await;
            let n = match sent {
                Ok(n) => n,
                Err(e) if unsupported(&e) => {
                    total += drain(&pipe, to, counter).await?;
                    return buffered(from, to, counter, total).await;
                }
                Err(e) => return Err(e),
            };
            left -= n;
            total += n as u64;
            counter.add(n as u64);
        }
    }
}

/// Writes what `pipe` holds to `to` through a buffer; returns the bytes written.
async fn drain(pipe: &Pipe, to: &TcpStream, counter: &dyn Tally) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_LARGE_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match nix::unistd::read(pipe.read.as_raw_fd(), &mut buf) {
            Ok(n) => n,
            Err(Errno::EAGAIN) => return Ok(total),
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(total);
        }
        write_all(to, &buf[..n]).await?;
        total += n as u64;
        counter.add(n as u64);
    }
}

/// The rest of the direction through a buffer (the fallback); `total` bytes went before.
async fn buffered(
    from: &TcpStream,
    to: &TcpStream,
    counter: &dyn Tally,
    mut total: u64,
) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_LARGE_BUFFER];
    loop {
        let n = from
            .async_io(Interest::READABLE, || from.try_read(&mut buf))
            .await?;
        if n == 0 {
            socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write)?;
            return Ok(total);
        }
        write_all(to, &buf[..n]).await?;
        total += n as u64;
        counter.add(n as u64);
    }
}

async fn write_all(to: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = to
            .async_io(Interest::WRITABLE, || to.try_write(buf))
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// Moves `data` into a fresh pipe, for tests of the fallback.
#[cfg(test)]
fn pipe_holding(data: &[u8]) -> io::Result<Pipe> {
    let pipe = Pipe::new()?;
    let n = nix::unistd::write(&pipe.write, data)?;
    assert_eq!(n, data.len(), "test data fits the pipe");
    Ok(pipe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn what_the_pipe_holds_reaches_the_peer_before_the_buffered_rest() {
        // The fallback after a refused pipe → socket splice: the pipe's bytes first, then the
        // rest of the source, then the half-close.
        let (mut client, from) = tcp_pair().await;
        let (to, mut server) = tcp_pair().await;
        let counter = AtomicU64::new(0);
        let pipe = pipe_holding(b"held in the pipe|").unwrap();
        let relay = async {
            let held = drain(&pipe, &to, &counter).await?;
            buffered(&from, &to, &counter, held).await
        };
        let feed = async {
            client.write_all(b"then the socket").await.unwrap();
            client.shutdown().await.unwrap();
        };
        let (total, ()) = tokio::join!(relay, feed);
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"held in the pipe|then the socket");
        assert_eq!(total.unwrap(), got.len() as u64);
        assert_eq!(counter.load(Ordering::Relaxed), got.len() as u64);
    }
}
