//! What crosses the fabric between nodes: only TLS on 15008, never the payload.

use super::*;

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
