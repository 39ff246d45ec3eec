// ---------------------------------------------------------------------------------------------
// Data path.

use ambit::hbone::{build_request, TunnelRequest};
use ambit::identity::tls;
use ambit::lab::traffic;
use ambit::netns::NetNs;
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;

use crate::results::{RateResult, RrResult, StreamRound};
use crate::sampling::{cpu_text, CpuMeter, Summary};
use crate::servers::Sink;
use crate::{
    Plan, ATTEMPT_TIMEOUT, BENCH_SA, CLOSE_GRACE, PING, REQUEST_SIZE, STREAM_BUFFER, STUCK_SLACK,
};
/// Throughput rounds and the latency test for one mode.
use std::future::Future;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

pub(crate) async fn measure(
    mode: &str,
    plan: Plan,
    client_ns: &NetNs,
    sink: &Sink,
    (sink_addr, echo_addr): (SocketAddr, SocketAddr),
    pids: &[(String, u32)],
) -> anyhow::Result<(Vec<StreamRound>, RrResult)> {
    let mut stream = Vec::new();
    for round in 1..=plan.stream_rounds {
        let planned = plan.stream_warmup + plan.stream_window + STUCK_SLACK;
        let r = tokio::time::timeout(
            planned,
            stream_round(plan, client_ns, sink, sink_addr, pids),
        )
        .await
        .map_err(|_| anyhow!("throughput round did not finish within {planned:?}"))?
        .with_context(|| format!("{mode}: throughput round {round} to {sink_addr}"))?;
        eprintln!(
            "  stream round {round}: {:.2} Gbit/s (CPU: {})",
            r.gbit_per_s(),
            cpu_text(&r.cpu)
        );
        stream.push(r);
    }
    let planned = plan.rr_warmup + plan.rr_window + STUCK_SLACK;
    let rr = tokio::time::timeout(planned, request_response(plan, client_ns, echo_addr))
        .await
        .map_err(|_| anyhow!("latency test did not finish within {planned:?}"))?
        .with_context(|| format!("{mode}: 1 KiB request/response to {echo_addr}"))?;
    eprintln!(
        "  1 KiB request/response: p50 {:.1} µs, p99 {:.1} µs, {:.0} req/s",
        rr.p50_us,
        rr.p99_us,
        rr.per_second()
    );
    Ok((stream, rr))
}

/// One connection, write for warm-up + window, count what the sink received in the window.
async fn stream_round(
    plan: Plan,
    client_ns: &NetNs,
    sink: &Sink,
    dst: SocketAddr,
    pids: &[(String, u32)],
) -> anyhow::Result<StreamRound> {
    let stream = traffic::connect(client_ns, dst)
        .await
        .context("connecting")?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer: JoinHandle<std::io::Result<u64>> = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let buf = traffic::pattern(STREAM_BUFFER);
            let mut written = 0u64;
            while !stop.load(Ordering::Relaxed) {
                stream.write_all(&buf).await?;
                written += buf.len() as u64;
            }
            stream.shutdown().await?;
            Ok(written)
        })
    };
    tokio::time::sleep(plan.stream_warmup).await;
    if writer.is_finished() {
        let written = writer.await.context("writer task")?.context("writing")?;
        bail!("the writer stopped during warm-up after {written} bytes");
    }
    let cpu = CpuMeter::start(pids);
    let (t0, b0) = (Instant::now(), sink.received());
    tokio::time::sleep(plan.stream_window).await;
    let (t1, b1) = (Instant::now(), sink.received());
    let seconds = (t1 - t0).as_secs_f64();
    let cpu = cpu.stop(seconds);
    stop.store(true, Ordering::Relaxed);
    writer
        .await
        .context("writer task")?
        .context("writing to the sink")?;
    if b1 == b0 {
        bail!("the sink received nothing during the {seconds:.1} s window");
    }
    Ok(StreamRound {
        bytes: b1 - b0,
        seconds,
        cpu,
    })
}

/// One connection, 1 KiB out and 1 KiB back, one at a time, timed after a warm-up.
async fn request_response(
    plan: Plan,
    client_ns: &NetNs,
    dst: SocketAddr,
) -> anyhow::Result<RrResult> {
    let mut stream = traffic::connect(client_ns, dst)
        .await
        .context("connecting")?;
    let request = traffic::pattern(REQUEST_SIZE);
    let mut reply = vec![0u8; REQUEST_SIZE];
    let mut samples: Vec<u64> = Vec::with_capacity(200_000);
    let warmup_end = Instant::now() + plan.rr_warmup;
    let mut window: Option<(Instant, Instant)> = None;
    let seconds = loop {
        let start = Instant::now();
        stream.write_all(&request).await.context("sending")?;
        stream
            .read_exact(&mut reply)
            .await
            .context("reading the echo")?;
        let end = Instant::now();
        if reply != request {
            bail!("the echo differs from the request");
        }
        match window {
            None if end >= warmup_end => window = Some((end, end + plan.rr_window)),
            None => {}
            Some((from, until)) => {
                samples.push((end - start).as_nanos() as u64);
                if end >= until {
                    break (end - from).as_secs_f64();
                }
            }
        }
    };
    stream.shutdown().await.context("closing")?;
    let s = Summary::of(samples);
    Ok(RrResult {
        count: s.count,
        seconds,
        p50_us: s.p50_us,
        p99_us: s.p99_us,
        mean_us: s.mean_us,
        max_us: s.max_us,
    })
}

// ---------------------------------------------------------------------------------------------
// Connection setup.

/// Outcome of one attempt of a rate test.
pub(crate) enum Attempt {
    /// Completed: counts.
    Done,
    /// The client port was busy; nothing was sent.
    Skipped,
}

/// Runs `once` back to back: warm-up, then a timed window; every completed attempt in the
/// window is a sample.
pub(crate) async fn rate_loop<F, Fut>(
    plan: Plan,
    pids: &[(String, u32)],
    mut once: F,
) -> anyhow::Result<RateResult>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Attempt>>,
{
    let mut samples: Vec<u64> = Vec::with_capacity(100_000);
    let warmup_end = Instant::now() + plan.conn_warmup;
    let mut window: Option<(Instant, Instant, CpuMeter)> = None;
    let mut skipped = 0u64;
    let mut attempts = 0u64;
    let seconds = loop {
        let start = Instant::now();
        attempts += 1;
        let outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, once())
            .await
            .map_err(|_| anyhow!("attempt {attempts} took longer than {ATTEMPT_TIMEOUT:?}"))?
            .with_context(|| format!("attempt {attempts}"))?;
        let end = Instant::now();
        if let Attempt::Skipped = outcome {
            skipped += 1;
            if skipped > 100_000 {
                bail!("{skipped} client ports in a row were busy");
            }
            continue;
        }
        match &window {
            None if end >= warmup_end => {
                window = Some((end, end + plan.conn_window, CpuMeter::start(pids)))
            }
            None => {}
            Some((from, until, _)) => {
                samples.push((end - start).as_nanos() as u64);
                if end >= *until {
                    break (end - *from).as_secs_f64();
                }
            }
        }
    };
    let (_, _, cpu) = window.expect("the loop ends only inside the window");
    let cpu = cpu.stop(seconds);
    let s = Summary::of(samples);
    Ok(RateResult {
        count: s.count,
        seconds,
        p50_us: s.p50_us,
        p99_us: s.p99_us,
        mean_us: s.mean_us,
        max_us: s.max_us,
        cpu,
        skipped_ports: skipped,
        forced_closes: 0,
    })
}

/// New connections from `client_ns` to the ping server at `dst`, source ports cycling through
/// `ports`.
pub(crate) async fn connection_rate(
    plan: Plan,
    client_ns: &NetNs,
    dst: SocketAddr,
    ports: (u16, u16),
    pids: &[(String, u32)],
) -> anyhow::Result<RateResult> {
    let mut next = ports.0;
    rate_loop(plan, pids, || {
        let port = next;
        next = if next + 1 >= ports.1 {
            ports.0
        } else {
            next + 1
        };
        one_connection(client_ns, dst, port)
    })
    .await
}

/// Socket bound to `port` in `ns`, connect to `dst`, 1 byte each way, wait for the server's
/// close, drop.
async fn one_connection(ns: &NetNs, dst: SocketAddr, port: u16) -> anyhow::Result<Attempt> {
    let bound = ns
        .run(|| -> std::io::Result<TcpSocket> {
            let s = TcpSocket::new_v4()?;
            s.set_nodelay(true)?;
            s.bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
            Ok(s)
        })
        .context("entering the client pod's network namespace")?;
    let socket = match bound {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Ok(Attempt::Skipped),
        Err(e) => return Err(e).with_context(|| format!("binding source port {port}")),
    };
    let mut stream = socket
        .connect(dst)
        .await
        .with_context(|| format!("connecting to {dst} from port {port}"))?;
    stream.write_all(&[PING]).await.context("sending")?;
    let mut b = [0u8; 1];
    stream.read_exact(&mut b).await.context("reading")?;
    if b[0] != PING {
        bail!("got {:#x} back instead of {PING:#x}", b[0]);
    }
    let n = stream.read(&mut b).await.context("waiting for the close")?;
    if n != 0 {
        bail!("the server sent more than one byte");
    }
    Ok(Attempt::Done)
}

/// One fresh HBONE connection: TCP, TLS 1.3 (mutual), HTTP/2, CONNECT `target`, 1 byte each
/// way, end of stream, close.
pub(crate) async fn one_handshake(
    fabric: &NetNs,
    peer: SocketAddr,
    target: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    namespace: &str,
    forced_closes: &AtomicU64,
) -> anyhow::Result<Attempt> {
    let tcp = traffic::connect(fabric, peer)
        .await
        .with_context(|| format!("TCP connect to {peer}"))?;
    let local = tcp.local_addr()?;
    let tls_stream = tokio_rustls::TlsConnector::from(config)
        .connect(tls::dummy_server_name(), tcp)
        .await
        .context("TLS handshake")?;
    let (send, connection) = h2::client::handshake(tls_stream)
        .await
        .context("HTTP/2 handshake")?;
    let driver = tokio::spawn(connection);
    let request = build_request(&TunnelRequest {
        target,
        client: local,
        baggage: vec![
            ("k8s.namespace.name".into(), namespace.into()),
            ("k8s.pod.name".into(), BENCH_SA.into()),
        ],
    })
    .context("building CONNECT")?;
    let mut send = send.ready().await.context("HTTP/2 connection")?;
    let (response, mut tx) = send.send_request(request, false).context("CONNECT")?;
    let response = response.await.context("CONNECT response")?;
    if response.status() != http::StatusCode::OK {
        bail!("CONNECT {target}: status {}", response.status());
    }
    tx.send_data(Bytes::from_static(&[PING]), false)
        .context("sending")?;
    let mut rx = response.into_body();
    let mut got = Vec::with_capacity(1);
    while let Some(chunk) = rx.data().await {
        let chunk = chunk.context("reading the tunnel")?;
        let _ = rx.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    if got != [PING] {
        bail!("got {got:?} back through the tunnel instead of [{PING:#x}]");
    }
    tx.send_data(Bytes::new(), true)
        .context("ending the stream")?;
    // With every handle gone, h2 sends GOAWAY and closes the connection (close_notify, FIN).
    drop((tx, rx, send));
    let abort = driver.abort_handle();
    if tokio::time::timeout(CLOSE_GRACE, driver).await.is_err() {
        abort.abort();
        forced_closes.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Attempt::Done)
}
