// ---------------------------------------------------------------------------------------------
// Servers.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ambit::lab::traffic::Server;
use ambit::lab::Lab;
use ambit::netns::NetNs;
use anyhow::{anyhow, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::{
    ECHO_PORT, HANDSHAKE_PING_PORT, HBONE_PING_PORT, MESH_POD, PING_PORT, PLAIN_POD, SINK_PORT,
    STREAM_BUFFER,
};

/// Every server of the run, in the n2 pods.
pub(crate) struct Servers {
    sinks: Vec<(String, Sink)>,
    _echoes: Vec<Server>,
    _pings: Vec<PingServer>,
}

impl Servers {
    pub(crate) async fn start(lab: &Lab, idle_pods: &[String]) -> anyhow::Result<Servers> {
        let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let mut sinks = Vec::new();
        let mut echoes = Vec::new();
        let mut pings = Vec::new();
        for pod in [MESH_POD, PLAIN_POD] {
            let ns = lab.pod_netns(pod)?;
            let sink =
                Sink::start(&ns, any(SINK_PORT)).with_context(|| format!("sink in {pod}"))?;
            sinks.push((pod.to_string(), sink));
            pings.push(
                PingServer::start(&ns, any(PING_PORT))
                    .with_context(|| format!("ping server in {pod}"))?,
            );
        }
        let mesh_ns = lab.pod_netns(MESH_POD)?;
        for port in [HBONE_PING_PORT, HANDSHAKE_PING_PORT] {
            pings.push(
                PingServer::start(&mesh_ns, any(port))
                    .with_context(|| format!("ping server on {port} in {MESH_POD}"))?,
            );
        }
        for pod in [MESH_POD, PLAIN_POD]
            .into_iter()
            .chain(idle_pods.iter().map(String::as_str))
        {
            let ns = lab.pod_netns(pod)?;
            let echo = Server::start(&ns, any(ECHO_PORT))
                .await
                .with_context(|| format!("echo server in {pod}"))?;
            echoes.push(echo);
        }
        Ok(Servers {
            sinks,
            _echoes: echoes,
            _pings: pings,
        })
    }

    pub(crate) fn sink(&self, pod: &str) -> anyhow::Result<&Sink> {
        self.sinks
            .iter()
            .find(|(p, _)| p == pod)
            .map(|(_, s)| s)
            .ok_or_else(|| anyhow!("no sink in {pod}"))
    }
}

/// A listener created inside `ns` and registered with the current runtime.
fn listen_in(ns: &NetNs, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let std_listener = ns
        .run(|| -> std::io::Result<std::net::TcpListener> {
            let domain = socket2::Domain::for_address(addr);
            let s = socket2::Socket::new(domain, socket2::Type::STREAM.cloexec(), None)?;
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            s.listen(1024)?;
            s.set_nonblocking(true)?;
            Ok(s.into())
        })
        .context("entering the pod's network namespace")?
        .with_context(|| format!("listening on {addr}"))?;
    TcpListener::from_std(std_listener).context("registering the listener")
}

/// A server that reads and discards, counting every byte received on any connection.
pub(crate) struct Sink {
    received: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    /// Listens on `addr` inside `ns`; must be called within the runtime.
    pub(crate) fn start(ns: &NetNs, addr: SocketAddr) -> anyhow::Result<Sink> {
        let listener = listen_in(ns, addr)?;
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(discard(stream, counter.clone()));
            }
        });
        Ok(Sink { received, task })
    }

    /// Bytes received so far over all connections.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

async fn discard(mut stream: TcpStream, counter: Arc<AtomicU64>) {
    let mut buf = vec![0u8; STREAM_BUFFER];
    // A reset connection just ends; the client reports its own error.
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Reads one byte, writes it back and closes: the server side closes first.
pub(crate) struct PingServer {
    task: JoinHandle<()>,
}

impl Drop for PingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PingServer {
    pub(crate) fn start(ns: &NetNs, addr: SocketAddr) -> anyhow::Result<PingServer> {
        let listener = listen_in(ns, addr)?;
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    if stream.read_exact(&mut b).await.is_ok() {
                        let _ = stream.write_all(&b).await;
                    }
                });
            }
        });
        Ok(PingServer { task })
    }
}
