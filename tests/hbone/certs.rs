//! Certificates and identities: bad client certificates and a server with another identity
//! are refused; certificates rotate under a long transfer.

use super::*;

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
/// (n2's daemon runs with trust domain evil.local and, since the CA service would never sign
/// that, the lab's CA key itself, as a compromised node holding the key could): the app's
/// connection is closed at once without data, the outbound flow names the identity mismatch,
/// and the app in the destination pod never sees a connection.
#[tokio::test(flavor = "multi_thread")]
async fn server_with_another_identity_is_refused() {
    let lab = ambit::lab::Lab::up(&ambit::lab::LabSpec {
        nodes: 2,
        pods_per_node: 1,
        ..ambit::lab::LabSpec::default()
    })
    .expect("lab up");
    let ca_dir = lab.dir().join(ambit::lab::CA_DIR);
    let c = Cluster::on_lab(lab, "iptables", |node| match node {
        "n2" => vec![
            "--trust-domain=evil.local".into(),
            format!("--insecure-local-ca-dir={}", ca_dir.display()),
        ],
        _ => Vec::new(),
    });
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
