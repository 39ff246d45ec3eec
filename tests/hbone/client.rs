//! The tests' own HBONE client: a TCP connection from the fabric, mutual TLS with a chosen
//! certificate, HTTP/2, and CONNECT requests as the daemon sends them.

use super::*;

/// One HBONE connection opened by the test: TLS done, HTTP/2 running.
pub(crate) struct HboneClient {
    send: SendRequest<Bytes>,
    /// The client's TCP address (what the server sees as the peer).
    pub(crate) local: SocketAddr,
    /// The server's end-entity certificate.
    pub(crate) server_leaf: Vec<u8>,
}

/// The answer to one CONNECT.
pub(crate) struct Tunnel {
    pub(crate) status: StatusCode,
    pub(crate) send: SendStream<Bytes>,
    pub(crate) recv: RecvStream,
}

/// Connects with a plain TCP socket from inside `ns` (the fabric: not captured).
pub(crate) async fn tcp_from(ns: &NetNs, dst: SocketAddr) -> (TcpStream, SocketAddr) {
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
    let config = tls::client_config(own, roots, vec![expected], tls::TlsPolicy::Default)
        .map_err(|e| e.to_string())?;
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
    pub(crate) async fn connect(&self, target: SocketAddr) -> Result<Tunnel, String> {
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
    pub(crate) fn server_serial(&self) -> Vec<u8> {
        leaf(&self.server_leaf).raw_serial().to_vec()
    }
}

/// Parses a DER certificate.
pub(crate) fn leaf(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der)
        .expect("server certificate parses")
        .1
}

/// Sends `data` on a stream within its flow-control window, then ends it (END_STREAM).
pub(crate) async fn send_all(send: &mut SendStream<Bytes>, data: &[u8]) -> Result<(), h2::Error> {
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
pub(crate) async fn read_all(recv: &mut RecvStream) -> Result<Vec<u8>, h2::Error> {
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
pub(crate) async fn attempt(
    w: &World,
    pod: &str,
    own: &WorkloadCert,
) -> (SocketAddr, Result<u16, String>) {
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
pub(crate) async fn tester_client(w: &World, pod: &str, own: &WorkloadCert) -> HboneClient {
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
pub(crate) async fn assert_closed_without_data(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(PROMPT, stream.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "{what}: connection not closed promptly without data: {read:?}"
    );
}

/// The error of a flow record, "" if none.
pub(crate) fn error_of(f: &Value) -> &str {
    f["error"].as_str().unwrap_or_default()
}
