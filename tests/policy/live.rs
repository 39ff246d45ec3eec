//! A policy change closes the live connections it denies, and only those.

use std::net::{IpAddr, SocketAddr};

use ambit::netns::NetNs;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// An established connection through the daemons, with one echo already exchanged.
struct Held {
    what: String,
    local: SocketAddr,
    stream: TcpStream,
}

async fn hold(ns: &NetNs, src: IpAddr, dst: SocketAddr, what: &str) -> Held {
    let socket = ns
        .run(|| {
            let s = if dst.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            s.bind(SocketAddr::new(src, 0))?;
            Ok::<_, std::io::Error>(s)
        })
        .expect("enter namespace")
        .expect("socket");
    let stream = tokio::time::timeout(DEADLINE, socket.connect(dst))
        .await
        .expect("connect hung")
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let local = ambit::socket::canonical(stream.local_addr().expect("local address"));
    let mut held = Held {
        what: what.into(),
        local,
        stream: {
            stream.set_nodelay(true).expect("nodelay");
            stream
        },
    };
    held.echo().await;
    held
}

impl Held {
    /// One more round trip works.
    async fn echo(&mut self) {
        let round = async {
            self.stream.write_all(b"ping").await?;
            let mut buf = [0u8; 4];
            self.stream.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        let got = tokio::time::timeout(DEADLINE, round).await;
        assert!(
            matches!(got, Ok(Ok(b)) if &b == b"ping"),
            "{}: {got:?}",
            self.what
        );
    }

    /// The connection is closed by the other side: reset when `reset`, otherwise closed or
    /// reset (an HBONE client's own proxy decides how to end it).
    async fn cut(&mut self, reset: bool) {
        let mut buf = [0u8; 16];
        let got = tokio::time::timeout(DEADLINE, self.stream.read(&mut buf)).await;
        let ok = match &got {
            Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(Ok(0)) => !reset,
            _ => false,
        };
        assert!(ok, "{}: not cut: {got:?}", self.what);
    }
}

/// A DENY policy added while connections are live closes those to the pod it covers (HBONE
/// and plaintext, both families; client and app both see the end) and leaves the neighbour's
/// open; removed again, new connections are allowed.
#[tokio::test(flavor = "multi_thread")]
async fn a_policy_change_closes_the_live_connections_it_denies() {
    let w = World::file(|_| {}).await;
    w.set_policies(vec![]);
    let client = w.c.lab.pod_netns("n2-p1").expect("netns");
    let fabric = w.c.lab.fabric_netns().expect("netns");
    let mut doomed = Vec::new();
    let mut kept = Vec::new();
    for v6 in [false, true] {
        let to = |pod| SocketAddr::new(w.ip(pod, v6), APP);
        let src = w.ip("n2-p1", v6);
        doomed.push((
            false,
            hold(&client, src, to("n1-p1"), &format!("hbone v6={v6}")).await,
        ));
        let plain = hold(
            &fabric,
            w.fabric_ip(v6),
            to("n1-p1"),
            &format!("plain v6={v6}"),
        )
        .await;
        doomed.push((true, plain));
        kept.push(hold(&client, src, to("n1-p2"), &format!("neighbour v6={v6}")).await);
    }

    let deny =
        json!({"selector": {"matchLabels": {"app": "n1-p1"}}, "action": "DENY", "rules": [{}]});
    w.set_policies(vec![ap("lab", "deny-n1-p1", deny)]);
    let why = "closed by a policy change: denied by AuthorizationPolicy lab/deny-n1-p1";
    for (reset, held) in &mut doomed {
        held.cut(*reset).await;
        let src = held.local.to_string();
        let f =
            w.c.wait_flow("n1", |f| f["src"] == src && f["finished"] == true);
        let error = f["error"].as_str().unwrap_or_default();
        assert!(error.starts_with(why), "{}: {f:#}", held.what);
    }
    // The app's side of every cut connection ended too.
    for ip in [
        w.ip("n2-p1", false),
        w.ip("n2-p1", true),
        w.fabric_ip(false),
        w.fabric_ip(true),
    ] {
        wait_until(&format!("n1-p1's app to see {ip}'s connection end"), || {
            w.app_saw("n1-p1", APP, ip) == 1 && w.app_done("n1-p1", APP, ip) == 1
        });
    }
    for held in &mut kept {
        held.echo().await;
    }
    let series = "ambit_policy_denials_total{policy=\"AuthorizationPolicy lab/deny-n1-p1\"}";
    assert!(w.c.metric("n1", series) >= 4.0, "{series}");
    w.mesh_denied("n2-p1", "n1-p1", APP, "AuthorizationPolicy lab/deny-n1-p1")
        .await;

    w.set_policies(vec![]);
    w.mesh_allowed("n2-p1", "n1-p1", APP, "allowed: no ALLOW policy applies")
        .await;
    w.plain_allowed("n1-p1", APP, "allowed: no ALLOW policy applies")
        .await;
    for held in &mut kept {
        held.echo().await;
    }
}
