//! CONNECT on 15008: the status codes of `docs/hbone.md`, and concurrent tunnels sharing
//! pooled connections.

use super::*;

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
