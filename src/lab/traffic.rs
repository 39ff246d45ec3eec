//! Traffic for the lab: servers and clients whose sockets live inside pod (or fabric)
//! namespaces, used by the tests, the demo and the benchmarks.
//!
//! Sockets are created inside the namespace and then driven by the caller's tokio runtime, so
//! one test process can play every pod at once.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::netns::NetNs;

/// One connection a [`Server`] accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The client address the server saw.
    pub peer: SocketAddr,
    /// The local address the connection arrived on.
    pub local: SocketAddr,
    /// Bytes received from the client (final once the connection ended).
    pub bytes: u64,
    /// Whether the connection has ended.
    pub done: bool,
}

/// An echo server: writes back every byte it reads, half-closes when the client does, and
/// records each connection's peer and byte count.
pub struct Server {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Accepted>>>,
    changed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Listens on `addr` inside `ns` (use `[::]:port` for both families).
    pub async fn start(ns: &NetNs, addr: SocketAddr) -> io::Result<Server> {
        let listener = listen(ns, addr)?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        let (l, c) = (log.clone(), changed.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let local = stream.local_addr().unwrap_or(addr);
                let index = {
                    let mut log = l.lock().unwrap_or_else(|p| p.into_inner());
                    log.push(Accepted {
                        peer: crate::socket::canonical(peer),
                        local: crate::socket::canonical(local),
                        bytes: 0,
                        done: false,
                    });
                    log.len() - 1
                };
                c.notify_waiters();
                let (l, c) = (l.clone(), c.clone());
                tokio::spawn(async move {
                    let bytes = echo(stream).await.unwrap_or(0);
                    let mut log = l.lock().unwrap_or_else(|p| p.into_inner());
                    log[index].bytes = bytes;
                    log[index].done = true;
                    drop(log);
                    c.notify_waiters();
                });
            }
        });
        Ok(Server {
            addr,
            log,
            changed,
            task,
        })
    }

    /// The address the server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every connection accepted so far.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until some accepted connection satisfies `pred`; `None` if the deadline passes.
    pub async fn wait_for(
        &self,
        deadline: Duration,
        pred: impl Fn(&Accepted) -> bool,
    ) -> Option<Accepted> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.changed.notified();
            if let Some(a) = self.accepted().into_iter().find(|a| pred(a)) {
                return Some(a);
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return None;
            }
        }
    }
}

async fn echo(stream: TcpStream) -> io::Result<u64> {
    let (mut r, mut w) = stream.into_split();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            w.shutdown().await?;
            return Ok(total);
        }
        total += n as u64;
        w.write_all(&buf[..n]).await?;
    }
}

/// A listener on `addr` inside `ns` (`[::]:port` takes both families), for a server of the
/// lab's own: [`Server`], or a test's scripted one. Must be called inside a tokio runtime.
pub fn listen(ns: &NetNs, addr: SocketAddr) -> io::Result<TcpListener> {
    let std_listener = ns
        .run(|| -> io::Result<std::net::TcpListener> {
            let domain = socket2::Domain::for_address(addr);
            let s = socket2::Socket::new(domain, socket2::Type::STREAM.cloexec(), None)?;
            if addr.is_ipv6() {
                s.set_only_v6(false)?;
            }
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            s.listen(1024)?;
            s.set_nonblocking(true)?;
            Ok(s.into())
        })
        .map_err(io::Error::other)??;
    TcpListener::from_std(std_listener)
}

/// Connects from inside `ns` to `dst` with an ordinary (unmarked) socket, as an app would.
pub async fn connect(ns: &NetNs, dst: SocketAddr) -> io::Result<TcpStream> {
    let socket = ns
        .run(|| -> io::Result<TcpSocket> {
            let s = if dst.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            s.set_nodelay(true)?;
            Ok(s)
        })
        .map_err(io::Error::other)??;
    socket.connect(dst).await
}

/// Result of one [`exchange`].
#[derive(Clone, Debug)]
pub struct Exchange {
    /// The client's own address on the connection.
    pub local: SocketAddr,
    /// What came back.
    pub reply: Vec<u8>,
}

/// Connects from `ns` to an echo server at `dst`, sends `payload`, half-closes, and reads the
/// echo to the end, all within `deadline`.
pub async fn exchange(
    ns: &NetNs,
    dst: SocketAddr,
    payload: &[u8],
    deadline: Duration,
) -> io::Result<Exchange> {
    let work = async {
        let stream = connect(ns, dst).await?;
        let local = crate::socket::canonical(stream.local_addr()?);
        let (mut r, mut w) = stream.into_split();
        let send = async {
            w.write_all(payload).await?;
            w.shutdown().await
        };
        let mut reply = Vec::with_capacity(payload.len());
        let recv = r.read_to_end(&mut reply);
        tokio::try_join!(send, recv)?;
        Ok(Exchange { local, reply })
    };
    tokio::time::timeout(deadline, work).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("exchange with {dst} timed out"),
        )
    })?
}

/// A deterministic payload of `len` bytes (not periodic on small boundaries, so a shifted or
/// dropped chunk is noticed).
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
