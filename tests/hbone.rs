//! HBONE through the real daemons in a lab cluster: what crosses the network between nodes is
//! mutual TLS on 15008 only, both ends learn each other's SPIFFE identity, bad credentials on
//! either side are refused, the CONNECT status codes are those of `docs/hbone.md`, tunnels
//! share pooled connections, certificates rotate without breaking long transfers, and a
//! namespace in strict mTLS mode refuses plaintext.
//!
//! The tests' own HBONE client runs in the fabric namespace, whose traffic no pod captures.
#![cfg(feature = "lab")]

mod support;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ambit::config::HBONE_PORT;
use ambit::config::MTLS_MODE_LABEL;
use ambit::hbone::{build_request, TunnelRequest};
use ambit::identity::{ca, tls, Ca, Identity, WorkloadCert};
use ambit::lab::traffic::{connect, exchange, Server};
use ambit::lab::CA_DIR;
use ambit::netns::NetNs;
use ambit::socket::canonical;
use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::StatusCode;
use rustls::RootCertStore;
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long a refused connection may take to be closed, or an error response to arrive.
const PROMPT: Duration = Duration::from_secs(5);

/// A lab with an echo server on port 8080 in every pod.
struct World {
    c: Cluster,
    servers: Vec<(String, Server)>,
}

impl World {
    async fn start(c: Cluster) -> World {
        let any: SocketAddr = "[::]:8080".parse().expect("address");
        let mut servers = Vec::new();
        for pod in c.lab.pods() {
            let ns = c.lab.pod_netns(&pod.name).expect("pod netns");
            let server = Server::start(&ns, any).await.expect("echo server");
            servers.push((pod.name.clone(), server));
        }
        World { c, servers }
    }

    fn server(&self, pod: &str) -> &Server {
        &self
            .servers
            .iter()
            .find(|(n, _)| n == pod)
            .expect("server in pod")
            .1
    }

    fn ip(&self, pod: &str, v6: bool) -> IpAddr {
        let p = self.c.lab.pod(pod).expect("pod");
        if v6 {
            p.ipv6.into()
        } else {
            p.ipv4.into()
        }
    }

    fn pod_ns(&self, pod: &str) -> NetNs {
        self.c.lab.pod_netns(pod).expect("pod netns")
    }

    fn fabric(&self) -> NetNs {
        self.c.lab.fabric_netns().expect("fabric netns")
    }

    /// The lab's cluster CA, as the daemons use it.
    fn lab_ca(&self) -> Ca {
        Ca::load(&self.c.lab.dir().join(CA_DIR)).expect("lab CA")
    }

    /// A certificate for the test's own client, issued by the lab CA.
    fn tester_cert(&self) -> WorkloadCert {
        let id = Identity::new("cluster.local", "lab", "tester").expect("identity");
        self.lab_ca()
            .issue(&id, Duration::from_secs(3600), SystemTime::now())
            .expect("issue tester certificate")
    }

    /// Sends `payload` from pod `from` to the echo server at `dst` and asserts the echo is
    /// byte-exact; returns the client's own address.
    async fn send(&self, from: &str, dst: SocketAddr, payload: &[u8]) -> SocketAddr {
        let ex = exchange(&self.pod_ns(from), dst, payload, DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("{from} -> {dst}: {e}"));
        assert!(ex.reply == payload, "{from} -> {dst}: echo differs");
        ex.local
    }

    /// Waits until pod `pod`'s echo server has seen a finished connection from `peer_ip`.
    async fn wait_served(&self, pod: &str, peer_ip: IpAddr) {
        self.server(pod)
            .wait_for(DEADLINE, |a| a.done && a.peer.ip() == peer_ip)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "{pod}'s server never saw a finished connection from {peer_ip}: {:?}",
                    self.server(pod).accepted()
                )
            });
    }
}

// ---------------------------------------------------------------------------------------------
// The test's own HBONE client.

/// One HBONE connection opened by the test: TLS done, HTTP/2 running.
struct HboneClient {
    send: SendRequest<Bytes>,
    /// The client's TCP address (what the server sees as the peer).
    local: SocketAddr,
    /// The server's end-entity certificate.
    server_leaf: Vec<u8>,
}

/// The answer to one CONNECT.
struct Tunnel {
    status: StatusCode,
    send: SendStream<Bytes>,
    recv: RecvStream,
}

/// Connects with a plain TCP socket from inside `ns` (the fabric: not captured).
async fn tcp_from(ns: &NetNs, dst: SocketAddr) -> (TcpStream, SocketAddr) {
    let tcp = connect(ns, dst)
        .await
        .unwrap_or_else(|e| panic!("TCP connect to {dst}: {e}"));
    let local = canonical(tcp.local_addr().expect("local address"));
    (tcp, local)
}

/// Mutual TLS over `tcp` presenting `own`, requiring the server to present `expected`
/// (verified against `roots`), then the HTTP/2 handshake. The connection is driven by a
/// spawned task.
async fn hbone_handshake(
    tcp: TcpStream,
    own: &WorkloadCert,
    roots: Arc<RootCertStore>,
    expected: &str,
) -> Result<HboneClient, String> {
    let local = canonical(tcp.local_addr().map_err(|e| e.to_string())?);
    let expected: Identity = expected.parse().map_err(|e| format!("{e}"))?;
    let config = tls::client_config(own, roots, vec![expected]).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(tls::dummy_server_name(), tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let server_leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or("server presented no certificate")?;
    let (send, connection) = h2::client::handshake(stream)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(HboneClient {
        send,
        local,
        server_leaf,
    })
}

impl HboneClient {
    /// Sends `CONNECT target` (with the headers the daemon sends) and waits for the response.
    async fn connect(&self, target: SocketAddr) -> Result<Tunnel, String> {
        let request = build_request(&TunnelRequest {
            target,
            client: self.local,
            baggage: vec![("k8s.namespace.name".into(), "lab".into())],
        })
        .map_err(|e| format!("building CONNECT: {e}"))?;
        let opened = async {
            let mut send = self.send.clone().ready().await?;
            let (response, stream) = send.send_request(request, false)?;
            Ok::<_, h2::Error>((response.await?, stream))
        };
        let (response, send) = tokio::time::timeout(DEADLINE, opened)
            .await
            .map_err(|_| format!("CONNECT {target}: no response within {DEADLINE:?}"))?
            .map_err(|e| format!("CONNECT {target}: {e}"))?;
        Ok(Tunnel {
            status: response.status(),
            send,
            recv: response.into_body(),
        })
    }

    /// The serial number of the server's certificate.
    fn server_serial(&self) -> Vec<u8> {
        leaf(&self.server_leaf).raw_serial().to_vec()
    }
}

/// Parses a DER certificate.
fn leaf(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der)
        .expect("server certificate parses")
        .1
}

/// Sends `data` on a stream within its flow-control window, then ends it (END_STREAM).
async fn send_all(send: &mut SendStream<Bytes>, data: &[u8]) -> Result<(), h2::Error> {
    let mut rest = Bytes::copy_from_slice(data);
    while !rest.is_empty() {
        send.reserve_capacity(rest.len());
        let granted = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(granted) => granted?,
            None => break,
        };
        let part = rest.split_to(granted.min(rest.len()));
        send.send_data(part, false)?;
    }
    send.send_data(Bytes::new(), true)
}

/// Reads a stream to its END_STREAM, giving the window back as it goes.
async fn read_all(recv: &mut RecvStream) -> Result<Vec<u8>, h2::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A full HBONE attempt from the fabric to `pod`'s 15008 with certificate `own`: handshakes,
/// then `CONNECT <pod>:8080`. Returns the client's TCP address and the outcome (the status of
/// the response, or why there was none). Fails the test if it does not end within DEADLINE.
async fn attempt(w: &World, pod: &str, own: &WorkloadCert) -> (SocketAddr, Result<u16, String>) {
    let peer = SocketAddr::new(w.ip(pod, false), HBONE_PORT);
    let (tcp, local) = tcp_from(&w.fabric(), peer).await;
    let target = w.c.v4(pod);
    let work = async {
        let client = hbone_handshake(tcp, own, w.lab_ca().roots(), &identity_of(pod)).await?;
        client.connect(target).await.map(|t| t.status.as_u16())
    };
    let outcome = tokio::time::timeout(DEADLINE, work)
        .await
        .unwrap_or_else(|_| panic!("HBONE attempt to {peer} hung"));
    (local, outcome)
}

/// Opens an HBONE connection from the fabric to `pod` with the tester certificate.
async fn tester_client(w: &World, pod: &str, own: &WorkloadCert) -> HboneClient {
    let peer = SocketAddr::new(w.ip(pod, false), HBONE_PORT);
    let (tcp, _) = tcp_from(&w.fabric(), peer).await;
    tokio::time::timeout(
        DEADLINE,
        hbone_handshake(tcp, own, w.lab_ca().roots(), &identity_of(pod)),
    )
    .await
    .unwrap_or_else(|_| panic!("handshake with {peer} hung"))
    .unwrap_or_else(|e| panic!("handshake with {peer}: {e}"))
}

/// Asserts that an app connection is closed (EOF or reset) within [`PROMPT`] without any data.
async fn assert_closed_without_data(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(PROMPT, stream.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "{what}: connection not closed promptly without data: {read:?}"
    );
}

/// The error of a flow record, "" if none.
fn error_of(f: &Value) -> &str {
    f["error"].as_str().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// A packet capture in the fabric.

/// `tcpdump` writing every TCP segment on one interface of a namespace to a file.
///
/// tcpdump takes packets from the kernel's ring in order but block by block, so stopping it
/// right after some traffic may lose the tail. [`Capture::flush`] sends a sentinel segment and
/// waits until it is in the file: everything before it is then there too.
struct Capture {
    child: Child,
    file: PathBuf,
    /// tcpdump's stderr, line by line.
    said: mpsc::Receiver<String>,
}

impl Capture {
    /// Starts tcpdump on `iface` in `ns` and waits until it is listening.
    fn start(ns: &NetNs, iface: &str, file: &Path) -> Capture {
        let mut cmd = Command::new("tcpdump");
        cmd.args(["-i", iface, "-B", "16384", "-U", "-nn", "-Z", "root", "-w"])
            .arg(file)
            .arg("tcp")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        ns.prepare_command(&mut cmd);
        let mut child = cmd.spawn().expect("spawn tcpdump");
        let stderr = child.stderr.take().expect("tcpdump stderr");
        let (tx, rx) = mpsc::channel();
        // Drains stderr for tcpdump's whole life, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut capture = Capture {
            child,
            file: file.to_owned(),
            said: rx,
        };
        let until = Instant::now() + DEADLINE;
        let mut said = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match capture.said.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => return capture,
                Ok(line) => said.push(line),
                Err(_) => {
                    let status = capture.child.try_wait();
                    panic!("tcpdump never started listening ({status:?}): {said:?}");
                }
            }
        }
    }

    /// tcpdump's one-line-per-packet rendering of the file so far (a packet being written
    /// may be cut short; the lines before it are complete).
    fn read(&self) -> String {
        let out = Command::new("tcpdump")
            .args(["-r"])
            .arg(&self.file)
            .args(["-nn"])
            .stdin(Stdio::null())
            .output()
            .expect("tcpdump -r");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Connects from `ns` to `sentinel` (any outcome: a SYN is enough) and waits until that
    /// segment is in the file.
    async fn flush(&self, ns: &NetNs, sentinel: SocketAddr) {
        let _ = tokio::time::timeout(PROMPT, connect(ns, sentinel)).await;
        let until = Instant::now() + DEADLINE;
        let seen = |text: &str| {
            text.lines()
                .filter_map(segment)
                .any(|s| s.dst == (sentinel.ip(), sentinel.port()))
        };
        while !seen(&self.read()) {
            assert!(
                Instant::now() < until,
                "the sentinel to {sentinel} never reached the capture file"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops tcpdump (SIGTERM), waits for it, checks that the kernel dropped no packet, and
    /// returns the file's bytes and tcpdump's one-line-per-packet rendering of it.
    fn stop(mut self) -> (Vec<u8>, String) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) of our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for tcpdump");
        assert!(
            status.success() || status.code().is_none(),
            "tcpdump: {status}"
        );
        // tcpdump has exited: its stderr ends, and with it the channel.
        let mut said = Vec::new();
        while let Ok(line) = self.said.recv_timeout(DEADLINE) {
            said.push(line);
        }
        assert!(
            said.iter().any(|l| l == "0 packets dropped by kernel"),
            "tcpdump lost packets: {said:?}"
        );
        let raw = std::fs::read(&self.file).expect("read capture");
        (raw, self.read())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Only matters when a test panics before stop().
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One TCP segment as `tcpdump -nn` prints it.
struct Segment {
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    /// TCP payload length.
    len: usize,
}

/// Parses a `tcpdump -nn` line of a TCP segment
/// (`<time> IP[6] <ip>.<port> > <ip>.<port>: Flags [..], ..., length <n>`).
fn segment(line: &str) -> Option<Segment> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.len() < 5 || !matches!(words[1], "IP" | "IP6") || words[3] != ">" {
        return None;
    }
    let parse = |s: &str| -> Option<(IpAddr, u16)> {
        let (ip, port) = s.trim_end_matches(':').rsplit_once('.')?;
        Some((ip.parse().ok()?, port.parse().ok()?))
    };
    let len = words
        .iter()
        .rposition(|w| *w == "length")
        .and_then(|i| words.get(i + 1))
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or(0);
    Some(Segment {
        src: parse(words[2])?,
        dst: parse(words[4])?,
        len,
    })
}

/// Occurrences of `needle` in `haystack`.
fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

// ---------------------------------------------------------------------------------------------
// Tests.

/// a: pod-to-pod traffic across nodes travels only as TLS on 15008 (IPv4 and IPv6): every TCP
/// segment between the two pods on the fabric has 15008 on one side, and a marker repeated
/// through 200 KiB of payload never appears in the capture. Both daemons record the peer's
/// verified SPIFFE identity on the flow.
#[tokio::test(flavor = "multi_thread")]
async fn cross_node_traffic_is_encrypted_on_the_wire() {
    let w = World::start(Cluster::start(2, 1, "iptables", |_| {})).await;
    let marker = b"AMBIT-HBONE-PLAINTEXT-MARKER|";
    let payload: Vec<u8> = marker.iter().copied().cycle().take(200 * 1024).collect();

    let capture = Capture::start(&w.fabric(), "n1", &w.c.lab.dir().join("hbone.pcap"));
    let mut locals = Vec::new();
    for v6 in [false, true] {
        let dst = SocketAddr::new(w.ip("n2-p1", v6), APP_PORT);
        let local = w.send("n1-p1", dst, &payload).await;
        w.wait_served("n2-p1", w.ip("n1-p1", v6)).await;
        locals.push((v6, local));
    }
    // A sentinel through the same interface: the metrics port of n1's node.
    let node = w.c.lab.node("n1").expect("node n1");
    let sentinel = SocketAddr::new(node.ipv4.into(), 15020);
    capture.flush(&w.fabric(), sentinel).await;
    let (raw, text) = capture.stop();

    assert_eq!(
        count(&raw, marker),
        0,
        "the payload marker appears in clear on the wire"
    );
    for v6 in [false, true] {
        let (a, b) = (w.ip("n1-p1", v6), w.ip("n2-p1", v6));
        let segments: Vec<_> = text
            .lines()
            .filter_map(|l| segment(l).map(|s| (l, s)))
            .filter(|(_, s)| (s.src.0 == a && s.dst.0 == b) || (s.src.0 == b && s.dst.0 == a))
            .collect();
        assert!(
            !segments.is_empty(),
            "no segment between {a} and {b} captured:\n{text}"
        );
        for (line, s) in &segments {
            assert!(
                s.src.1 == HBONE_PORT || s.dst.1 == HBONE_PORT,
                "segment between the pods not on {HBONE_PORT}: {line}"
            );
        }
        // The capture saw the whole exchange (the payload there and back, plus TLS framing),
        // so the marker check above covered every byte.
        let carried: usize = segments.iter().map(|(_, s)| s.len).sum();
        assert!(
            carried >= 2 * payload.len(),
            "only {carried} bytes between {a} and {b} captured"
        );
    }

    for (v6, local) in locals {
        let dst = SocketAddr::new(w.ip("n2-p1", v6), APP_PORT);
        let out = w.c.wait_flow("n1", |f| f["src"] == local.to_string());
        assert!(is(&out, "outbound"), "{out:#}");
        assert_eq!(out["route"], "hbone", "{out:#}");
        assert_eq!(out["peer_identity"], identity_of("n2-p1"), "{out:#}");
        assert_eq!(out["error"], Value::Null, "{out:#}");
        let inbound = w.c.wait_flow("n2", |f| {
            is(f, "hbone") && f["src"] == local.to_string() && f["finished"] == true
        });
        assert_eq!(inbound["dst"], dst.to_string(), "{inbound:#}");
        assert_eq!(inbound["pod"], "lab/n2-p1", "{inbound:#}");
        assert_eq!(
            inbound["peer_identity"],
            identity_of("n1-p1"),
            "{inbound:#}"
        );
        assert_eq!(inbound["error"], Value::Null, "{inbound:#}");
        assert_eq!(inbound["bytes_sent"], payload.len(), "{inbound:#}");
    }
}

/// b: the 15008 listener refuses client certificates from another CA, expired ones, and ones
/// of another trust domain: the attempt fails, the app never sees a connection, and the daemon
/// records a failed hbone flow naming TLS. A valid lab certificate of any identity in the
/// trust domain gets 200 and a working tunnel.
#[tokio::test(flavor = "multi_thread")]
async fn bad_client_certificates_are_refused() {
    let w = World::start(Cluster::start(2, 1, "iptables", |_| {})).await;
    let now = SystemTime::now();
    let tester = Identity::new("cluster.local", "lab", "tester").expect("identity");
    let other_dir = w.c.lab.dir().join("other-ca");
    let other_ca = ca::init(&other_dir).expect("another CA");
    let evil = Identity::new("evil.local", "lab", "tester").expect("identity");
    // (what, certificate, what the daemon's error must also name)
    let cases = [
        (
            "another CA",
            other_ca
                .issue(&tester, Duration::from_secs(3600), now)
                .expect("issue"),
            "UnknownIssuer",
        ),
        (
            "expired",
            w.lab_ca()
                .issue(
                    &tester,
                    Duration::from_secs(60),
                    now - Duration::from_secs(3600),
                )
                .expect("issue"),
            "expired",
        ),
        (
            "trust domain evil.local",
            w.lab_ca()
                .issue(&evil, Duration::from_secs(3600), now)
                .expect("issue"),
            "not in trust domain",
        ),
    ];
    for (what, cert, why) in &cases {
        let (local, outcome) = attempt(&w, "n2-p1", cert).await;
        assert!(outcome.is_err(), "{what}: got a response: {outcome:?}");
        let f = w.c.wait_flow("n2", |f| {
            is(f, "hbone") && f["src"] == local.to_string() && f["error"].is_string()
        });
        assert!(error_of(&f).contains("TLS"), "{what}: {f:#}");
        assert!(error_of(&f).contains(why), "{what}: {f:#}");
    }
    assert!(
        w.server("n2-p1").accepted().is_empty(),
        "the app saw a connection: {:?}",
        w.server("n2-p1").accepted()
    );

    // Control: a valid certificate from the lab CA.
    let client = tester_client(&w, "n2-p1", &w.tester_cert()).await;
    let mut t = client
        .connect(w.c.v4("n2-p1"))
        .await
        .expect("CONNECT n2-p1:8080");
    assert_eq!(t.status, StatusCode::OK);
    let payload = ambit::lab::traffic::pattern(100_000);
    let (sent, echo) = tokio::time::timeout(DEADLINE, async {
        tokio::join!(send_all(&mut t.send, &payload), read_all(&mut t.recv))
    })
    .await
    .expect("echo through the tunnel hung");
    sent.expect("send through the tunnel");
    assert!(echo.expect("read the echo") == payload, "echo differs");
    w.wait_served("n2-p1", w.c.lab.fabric_ipv4().into()).await;
    let f = w.c.wait_flow("n2", |f| {
        is(f, "hbone") && f["src"] == client.local.to_string() && f["route"] == "app"
    });
    assert_eq!(
        f["peer_identity"], "spiffe://cluster.local/ns/lab/sa/tester",
        "{f:#}"
    );
}

/// c: a client refuses a server that presents another identity than the destination pod's
/// (n2's daemon runs with trust domain evil.local): the app's connection is closed at once
/// without data, the outbound flow names the identity mismatch, and the app in the
/// destination pod never sees a connection.
#[tokio::test(flavor = "multi_thread")]
async fn server_with_another_identity_is_refused() {
    let c = Cluster::start_with(
        2,
        1,
        "iptables",
        |_| {},
        |node| match node {
            "n2" => vec!["--trust-domain=evil.local".into()],
            _ => Vec::new(),
        },
    );
    let w = World::start(c).await;
    let dst = w.c.v4("n2-p1");
    let mut app = connect(&w.pod_ns("n1-p1"), dst)
        .await
        .expect("connect to n2-p1 (accepted by the local proxy)");
    let local = canonical(app.local_addr().expect("local address"));
    let _ = app.write_all(b"hello?").await;
    assert_closed_without_data(&mut app, "n1-p1 -> n2-p1").await;

    let out = w.c.wait_flow("n1", |f| {
        f["src"] == local.to_string() && f["error"].is_string()
    });
    assert!(is(&out, "outbound"), "{out:#}");
    assert_eq!(out["route"], "hbone", "{out:#}");
    assert!(error_of(&out).contains("identity mismatch"), "{out:#}");
    assert!(
        out["peer_identity"].is_null(),
        "an identity that failed verification is not recorded as the peer's: {out:#}"
    );
    assert!(
        error_of(&out).contains("spiffe://evil.local/ns/lab/sa/sa-n2-p1"),
        "{out:#}"
    );
    assert!(
        w.server("n2-p1").accepted().is_empty(),
        "the app saw a connection: {:?}",
        w.server("n2-p1").accepted()
    );
}

/// d: CONNECT to an address that is not the pod's is answered 400, to a closed port of the
/// pod (or one of the proxy's ports) 503, promptly; every such response ends the stream, and
/// the connection stays usable.
#[tokio::test(flavor = "multi_thread")]
async fn connect_status_codes() {
    let w = World::start(Cluster::start(2, 1, "iptables", |_| {})).await;
    let client = tester_client(&w, "n2-p1", &w.tester_cert()).await;
    let closed_port = SocketAddr::new(w.ip("n2-p1", false), 8081);
    let proxy_port = SocketAddr::new(w.ip("n2-p1", false), 15006);
    for (target, status) in [
        (w.c.v4("n1-p1"), StatusCode::BAD_REQUEST),
        (w.c.v6("n1-p1"), StatusCode::BAD_REQUEST),
        (closed_port, StatusCode::SERVICE_UNAVAILABLE),
        (proxy_port, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let started = Instant::now();
        let mut t = client
            .connect(target)
            .await
            .unwrap_or_else(|e| panic!("CONNECT {target}: {e}"));
        let took = started.elapsed();
        assert_eq!(t.status, status, "CONNECT {target}");
        assert!(took < PROMPT, "CONNECT {target}: answered after {took:?}");
        assert!(
            t.recv.is_end_stream(),
            "CONNECT {target}: the {status} response did not end the stream"
        );
        let body = tokio::time::timeout(PROMPT, read_all(&mut t.recv))
            .await
            .unwrap_or_else(|_| panic!("CONNECT {target}: stream not ended"));
        assert!(
            body.as_ref().is_ok_and(|b| b.is_empty()),
            "CONNECT {target}: body {body:?}"
        );
        let f = w.c.wait_flow("n2", |f| {
            is(f, "hbone") && f["dst"] == target.to_string() && f["error"].is_string()
        });
        assert!(
            error_of(&f).starts_with(&status.as_u16().to_string()),
            "{f:#}"
        );
    }
    assert!(
        w.server("n1-p1").accepted().is_empty() && w.server("n2-p1").accepted().is_empty(),
        "an app saw a connection"
    );

    // Refused streams leave the connection usable.
    let mut t = client
        .connect(w.c.v4("n2-p1"))
        .await
        .expect("CONNECT n2-p1:8080 after refusals");
    assert_eq!(t.status, StatusCode::OK);
    let (sent, echo) = tokio::time::timeout(DEADLINE, async {
        tokio::join!(
            send_all(&mut t.send, b"still there?"),
            read_all(&mut t.recv)
        )
    })
    .await
    .expect("echo through the tunnel hung");
    sent.expect("send through the tunnel");
    assert_eq!(echo.expect("read the echo"), b"still there?");
}

/// e: 100 concurrent tunnels from one pod to another share pooled connections: all succeed
/// and at most 2 HBONE connections are dialled and accepted.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_tunnels_share_pooled_connections() {
    const N: usize = 100;
    let w = World::start(Cluster::start(2, 1, "iptables", |_| {})).await;
    let dials = "ambit_hbone_dials_total";
    let accepted = "ambit_hbone_accepted_total";
    let (dials_before, accepted_before) = (w.c.metric("n1", dials), w.c.metric("n2", accepted));

    let ns = w.pod_ns("n1-p1");
    let dst = w.c.v4("n2-p1");
    let all_connected = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let (ns, all_connected) = (ns.clone(), all_connected.clone());
        tasks.spawn(async move {
            let mut s = connect(&ns, dst).await.map_err(|e| format!("#{i}: {e}"))?;
            let msg = format!("connection {i:03} ").repeat(64).into_bytes();
            s.write_all(&msg).await.map_err(|e| format!("#{i}: {e}"))?;
            let mut echo = vec![0u8; msg.len()];
            s.read_exact(&mut echo)
                .await
                .map_err(|e| format!("#{i}: echo: {e}"))?;
            if echo != msg {
                return Err(format!("#{i}: echo differs"));
            }
            // Every tunnel stays open until all of them have carried data.
            all_connected.wait().await;
            s.shutdown().await.map_err(|e| format!("#{i}: {e}"))?;
            let mut rest = Vec::new();
            s.read_to_end(&mut rest)
                .await
                .map_err(|e| format!("#{i}: {e}"))?;
            if !rest.is_empty() {
                return Err(format!("#{i}: {} unexpected bytes", rest.len()));
            }
            Ok::<_, String>(())
        });
    }
    let until = tokio::time::Instant::now() + DEADLINE;
    let mut done = 0;
    while done < N {
        let next = tokio::time::timeout_at(until, tasks.join_next())
            .await
            .unwrap_or_else(|_| panic!("only {done} of {N} connections completed"))
            .expect("a task left");
        next.expect("task").unwrap_or_else(|e| panic!("{e}"));
        done += 1;
    }
    w.server("n2-p1")
        .wait_for(DEADLINE, |_| {
            let all = w.server("n2-p1").accepted();
            all.len() == N && all.iter().all(|a| a.done)
        })
        .await
        .expect("the server saw every connection end");

    let dialled = w.c.metric("n1", dials) - dials_before;
    let accepted = w.c.metric("n2", accepted) - accepted_before;
    assert!(
        (1.0..=2.0).contains(&dialled),
        "{N} tunnels used {dialled} dialled connections"
    );
    assert!(
        (1.0..=2.0).contains(&accepted),
        "{N} tunnels used {accepted} accepted connections"
    );
}

/// f: with 4-second certificates, a transfer lasting longer than a certificate's life
/// completes byte-exact, and the certificate a pod presents is replaced (new serial).
#[tokio::test(flavor = "multi_thread")]
async fn certificates_rotate_under_a_long_transfer() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 120; // one every 50 ms: about 6 s
    let c = Cluster::start_with(
        2,
        1,
        "iptables",
        |_| {},
        |_| vec!["--cert-validity-secs=4".into()],
    );
    let w = World::start(c).await;
    let tester = w.tester_cert();
    let first = tester_client(&w, "n2-p1", &tester).await;
    let not_after = leaf(&first.server_leaf).validity().not_after.timestamp();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!(
        not_after <= now + 5,
        "n2-p1's certificate is valid until {not_after}, now is {now}: validity not applied"
    );

    let payload = ambit::lab::traffic::pattern(CHUNK * CHUNKS);
    let stream = connect(&w.pod_ns("n1-p1"), w.c.v4("n2-p1"))
        .await
        .expect("connect n1-p1 -> n2-p1");
    let (mut r, mut wr) = stream.into_split();
    let started = Instant::now();
    let write = async {
        let mut pace = tokio::time::interval(Duration::from_millis(50));
        for chunk in payload.chunks(CHUNK) {
            pace.tick().await;
            wr.write_all(chunk).await?;
        }
        wr.shutdown().await
    };
    let mut reply = Vec::with_capacity(payload.len());
    let read = r.read_to_end(&mut reply);
    tokio::time::timeout(DEADLINE, async { tokio::try_join!(write, read) })
        .await
        .expect("long transfer hung")
        .expect("long transfer");
    let took = started.elapsed();
    assert!(
        took > Duration::from_secs(4),
        "transfer took {took:?}, not longer than a certificate's life"
    );
    assert_eq!(reply.len(), payload.len());
    assert!(reply == payload, "long transfer: echo differs");

    // A new handshake presents a rotated certificate.
    let until = Instant::now() + DEADLINE;
    loop {
        let later = tester_client(&w, "n2-p1", &tester).await;
        if later.server_serial() != first.server_serial() {
            break;
        }
        assert!(
            Instant::now() < until,
            "n2-p1 still presents serial {:x?}",
            first.server_serial()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // New connections between the pods, made with rotated certificates, work too.
    let local = w.send("n2-p1", w.c.v4("n1-p1"), b"after rotation").await;
    let out = w.c.wait_flow("n2", |f| f["src"] == local.to_string());
    assert_eq!(out["route"], "hbone", "{out:#}");
}

/// g: in a namespace labelled `ambit.io/mtls-mode=strict`, plaintext to a pod is refused
/// (closed without data, never reaching the app, flow error naming strict mode) while HBONE
/// from another pod still works.
#[tokio::test(flavor = "multi_thread")]
async fn strict_mode_refuses_plaintext() {
    let c = Cluster::start(2, 1, "iptables", |s| {
        let ns = s
            .namespaces
            .iter_mut()
            .find(|n| n.name == "lab")
            .expect("namespace lab");
        ns.labels.insert(MTLS_MODE_LABEL.into(), "strict".into());
    });
    let w = World::start(c).await;
    // The refusal is a reset, which may arrive before `connect` returns.
    let fabric_ip = w.c.lab.fabric_ipv4().into();
    let Attempt { local, seen } =
        try_echo(&w.fabric(), fabric_ip, w.c.v4("n1-p1"), b"plaintext").await;
    assert!(
        matches!(seen, Seen::Reset | Seen::Closed),
        "fabric -> n1-p1 in plaintext: connection not closed without data: {seen:?}"
    );
    let f = w.c.wait_flow("n1", |f| {
        f["src"] == local.to_string() && f["error"].is_string()
    });
    assert!(is(&f, "inbound"), "{f:#}");
    assert!(error_of(&f).contains("strict"), "{f:#}");
    assert!(
        w.server("n1-p1").accepted().is_empty(),
        "the app saw a connection: {:?}",
        w.server("n1-p1").accepted()
    );

    let local = w
        .send(
            "n2-p1",
            w.c.v4("n1-p1"),
            &ambit::lab::traffic::pattern(50_000),
        )
        .await;
    w.wait_served("n1-p1", w.ip("n2-p1", false)).await;
    let out = w.c.wait_flow("n2", |f| f["src"] == local.to_string());
    assert_eq!(out["route"], "hbone", "{out:#}");
    let inbound = w.c.wait_flow("n1", |f| {
        is(f, "hbone") && f["src"] == local.to_string() && f["finished"] == true
    });
    assert_eq!(inbound["error"], Value::Null, "{inbound:#}");
    assert_eq!(
        inbound["peer_identity"],
        identity_of("n2-p1"),
        "{inbound:#}"
    );
}

/// g: without the label (permissive, the default), plaintext from outside the mesh reaches
/// the pod through the inbound listener.
#[tokio::test(flavor = "multi_thread")]
async fn permissive_mode_accepts_plaintext() {
    let w = World::start(Cluster::start(2, 1, "iptables", |_| {})).await;
    let payload = ambit::lab::traffic::pattern(50_000);
    let ex = exchange(&w.fabric(), w.c.v4("n1-p1"), &payload, DEADLINE)
        .await
        .expect("plaintext exchange from the fabric");
    assert!(ex.reply == payload, "echo differs");
    w.wait_served("n1-p1", w.c.lab.fabric_ipv4().into()).await;
    let f = w.c.wait_flow("n1", |f| f["src"] == ex.local.to_string());
    assert!(is(&f, "inbound"), "{f:#}");
    assert_eq!(f["route"], "app", "{f:#}");
    assert_eq!(f["error"], Value::Null, "{f:#}");
}
