//! Post-quantum key exchange between real daemons: two ambit pods agree on X25519MLKEM768;
//! ambit and Istio's ztunnel interoperate both ways, in ztunnel's default mode and under its
//! `COMPLIANCE_POLICY=pqc` (and with ambit under `--tls-policy pqc`); and `--tls-policy pqc`
//! refuses a classical-only peer (ambit under `--tls-policy classical`), saying why in the
//! log. The group is read from what each daemon recorded of the handshake (the flow's
//! `tls_group`, and `ambit_tls_handshakes_total`).
//!
//! ztunnel tests print a note and pass when the binary is absent (`AMBIT_ZTUNNEL`, default
//! `../shared/peers/ztunnel/ztunnel`).
#![cfg(feature = "lab")]

#[path = "support/mod.rs"]
mod support;
#[path = "pq/ztunnel.rs"]
mod ztunnel;

use std::net::SocketAddr;
use std::path::Path;

use ambit::lab::traffic::Server;
use ambit::lab::{Lab, LabSpec, CA_DIR};
use serde_json::Value;
use support::*;

const PQ: &str = "X25519MLKEM768";

/// Starts an echo server on [`APP_PORT`] in each of `pods`.
async fn echo_servers(lab: &Lab, pods: &[&str]) -> Vec<Server> {
    let any: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, APP_PORT).into();
    let mut servers = Vec::new();
    for pod in pods {
        let ns = lab.pod_netns(pod).expect("pod netns");
        servers.push(Server::start(&ns, any).await.expect("echo server"));
    }
    servers
}

/// The finished flow on `node` of `listener` whose client is `src`.
fn finished_flow(c: &Cluster, node: &str, listener: &str, src: SocketAddr) -> Value {
    c.wait_flow(node, |f| {
        is(f, listener) && f["src"] == src.to_string() && f["finished"] == true
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn two_ambit_pods_negotiate_x25519mlkem768() {
    let c = Cluster::start(2, 1, "iptables", |_| {});
    let _servers = echo_servers(&c.lab, &["n2-p1"]).await;
    let client = send(&c, "n1-p1", c.v4("n2-p1")).await;

    let out = finished_flow(&c, "n1", "outbound", client);
    assert_eq!(out["peer_identity"], identity_of("n2-p1"), "{out:#}");
    assert_eq!(out["tls_group"], PQ, "client side: {out:#}");
    let inb = finished_flow(&c, "n2", "hbone", client);
    assert_eq!(inb["peer_identity"], identity_of("n1-p1"), "{inb:#}");
    assert_eq!(inb["tls_group"], PQ, "server side: {inb:#}");

    let series =
        |side: &str| format!("ambit_tls_handshakes_total{{group=\"{PQ}\",side=\"{side}\"}}");
    assert!(c.metric("n1", &series("client")) >= 1.0);
    assert!(c.metric("n2", &series("server")) >= 1.0);
    let log = settled_log(&c.lab, "n1", |l| {
        l.lines().any(|l| {
            l.contains("connection complete") && l.contains(&format!("tls_group=\"{PQ}\""))
        })
    });
    assert!(
        log.lines().any(
            |l| l.contains("connection complete") && l.contains(&format!("tls_group=\"{PQ}\""))
        ),
        "no access-log line with the group:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pqc_refuses_a_classical_peer_and_says_why() {
    // n1 classical only, n2 post-quantum only: neither direction has a group in common.
    let c = Cluster::start_with(
        2,
        1,
        "iptables",
        |_| {},
        |node| {
            let policy = if node == "n1" { "classical" } else { "pqc" };
            vec![format!("--tls-policy={policy}")]
        },
    );
    let _servers = echo_servers(&c.lab, &["n1-p1", "n2-p1"]).await;
    let payload = ambit::lab::traffic::pattern(1000);
    for (from, to, client_node, server_node) in [
        ("n1-p1", "n2-p1", "n1", "n2"),
        ("n2-p1", "n1-p1", "n2", "n1"),
    ] {
        let ns = c.lab.pod_netns(from).expect("pod netns");
        let src = c.lab.pod(from).expect("pod").ipv4.into();
        let attempt = try_echo(&ns, src, c.v4(to), &payload).await;
        assert_ne!(attempt.seen, Seen::Echo, "{from} -> {to} went through");

        let out = finished_flow(&c, client_node, "outbound", attempt.local);
        let error = out["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("handshake_failure") && error.contains("key-exchange group"),
            "{from}'s daemon: {out:#}"
        );
        assert!(out["tls_group"].is_null(), "{out:#}");
        let refused = |log: &str| {
            log.lines()
                .any(|l| l.contains("TLS handshake refused: no key-exchange group in common"))
        };
        wait_until(&format!("{server_node}'s refusal log line"), || {
            refused(&c.lab.daemon_log(server_node))
        });
    }
    // Each side named what it allows.
    let n2 = settled_log(&c.lab, "n2", |l| l.contains(&format!("allows only {PQ}")));
    assert!(n2.contains(&format!("allows only {PQ}")), "{n2}");
    let n1 = settled_log(&c.lab, "n1", |l| {
        l.contains("allows only X25519, secp256r1")
    });
    assert!(
        n1.contains("allows only X25519, secp256r1, secp384r1"),
        "{n1}"
    );
}

/// ambit on n1 (pod n1-p1), ztunnel in n2-p1, sharing the fake CA, echo servers in both.
/// Fields drop in order: ztunnel stops before the lab goes.
struct ZtLab {
    zt: ztunnel::Ztunnel,
    c: Cluster,
    _servers: Vec<Server>,
}

impl ZtLab {
    /// `ambit_args` and `env` are added to ambit's and ztunnel's; `None` (after a note) when
    /// the ztunnel binary is absent.
    async fn start(ambit_args: &[&str], env: &[(&str, &str)]) -> Option<ZtLab> {
        let binary = match ztunnel::locate() {
            Ok(b) => b,
            Err(note) => {
                eprintln!("ztunnel test skipped: {note}");
                return None;
            }
        };
        let lab = Lab::up(&LabSpec {
            nodes: 2,
            pods_per_node: 1,
            ..LabSpec::default()
        })
        .expect("lab up");
        ztunnel::use_fake_ca(&lab, &binary).expect("fake CA");
        let mut args = vec![
            "--rules=iptables".to_string(),
            "--verify-secs=1".into(),
            format!(
                "--insecure-local-ca-dir={}",
                lab.dir().join(CA_DIR).display()
            ),
        ];
        args.extend(ambit_args.iter().map(|a| a.to_string()));
        lab.start_daemon("n1", Path::new(env!("CARGO_BIN_EXE_ambit")), &args)
            .expect("start daemon");
        lab.wait_ready("n1", DEADLINE).expect("daemon ready");
        let c = Cluster {
            lab,
            backend: "iptables",
        };
        let servers = echo_servers(&c.lab, &["n1-p1", "n2-p1"]).await;
        let mut zt = ztunnel::start(&c.lab, &binary, "n2-p1", &["n1-p1", "n2-p1"], env)
            .expect("start ztunnel");
        zt.wait_ready(&c.lab, std::time::Instant::now() + DEADLINE)
            .expect("ztunnel ready");
        Some(ZtLab {
            zt,
            c,
            _servers: servers,
        })
    }

    /// ambit (n1-p1) → ztunnel (n2-p1): the group ambit's client side recorded.
    async fn ambit_to_ztunnel(&self) -> String {
        let c = &self.c;
        let client = send(c, "n1-p1", c.v4("n2-p1")).await;
        let out = finished_flow(c, "n1", "outbound", client);
        assert_eq!(
            out["route"],
            "hbone",
            "{out:#}\nztunnel:\n{}",
            self.zt.log()
        );
        assert_eq!(out["peer_identity"], identity_of("n2-p1"), "{out:#}");
        out["tls_group"].as_str().expect("group").to_string()
    }

    /// ztunnel (n2-p1) → ambit (n1-p1), through; the group ambit's server side recorded.
    async fn ztunnel_to_ambit(&self) -> String {
        let c = &self.c;
        send(c, "n2-p1", c.v4("n1-p1")).await;
        let inb = self.hbone_flow_from_ztunnel();
        assert!(
            inb["error"].is_null(),
            "{inb:#}\nztunnel:\n{}",
            self.zt.log()
        );
        inb["tls_group"].as_str().expect("group").to_string()
    }

    /// The finished 15008 flow on n1 from n2-p1 (ztunnel may not send the client's port in
    /// `forwarded`, so only the address is matched).
    fn hbone_flow_from_ztunnel(&self) -> Value {
        let ip: std::net::IpAddr = self.c.lab.pod("n2-p1").expect("pod").ipv4.into();
        self.c.wait_flow("n1", |f| {
            is(f, "hbone")
                && f["finished"] == true
                && f["src"]
                    .as_str()
                    .and_then(|s| s.parse::<SocketAddr>().ok())
                    .is_some_and(|s| s.ip() == ip)
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ambit_and_a_default_ztunnel_interoperate_both_ways() {
    let Some(z) = ZtLab::start(&[], &[]).await else {
        return;
    };
    // ztunnel's default server accepts the hybrid that ambit prefers; its default client
    // sends an X25519 key share only, which ambit's server takes rather than asking for a
    // second ClientHello: the classical fallback.
    let (outbound, inbound) = (z.ambit_to_ztunnel().await, z.ztunnel_to_ambit().await);
    eprintln!("default ztunnel: ambit -> ztunnel {outbound}, ztunnel -> ambit {inbound}");
    assert_eq!((outbound.as_str(), inbound.as_str()), (PQ, "X25519"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pqc_ztunnel_negotiates_x25519mlkem768_both_ways() {
    let Some(z) = ZtLab::start(&[], &[("COMPLIANCE_POLICY", "pqc")]).await else {
        return;
    };
    let (outbound, inbound) = (z.ambit_to_ztunnel().await, z.ztunnel_to_ambit().await);
    eprintln!("pqc ztunnel: ambit -> ztunnel {outbound}, ztunnel -> ambit {inbound}");
    assert_eq!((outbound.as_str(), inbound.as_str()), (PQ, PQ));
}

#[tokio::test(flavor = "multi_thread")]
async fn ambit_pqc_and_a_default_ztunnel_still_agree_on_x25519mlkem768() {
    let Some(z) = ZtLab::start(&["--tls-policy=pqc"], &[]).await else {
        return;
    };
    // ztunnel's default client lists X25519MLKEM768 among its groups but sends an X25519 key
    // share only: ambit's pqc server asks for the hybrid (HelloRetryRequest) and gets it. So a
    // default ztunnel is no classical-only peer; that refusal is tested against ambit's own
    // `classical` policy.
    let (outbound, inbound) = (z.ambit_to_ztunnel().await, z.ztunnel_to_ambit().await);
    eprintln!(
        "ambit pqc, default ztunnel: ambit -> ztunnel {outbound}, ztunnel -> ambit {inbound}"
    );
    assert_eq!((outbound.as_str(), inbound.as_str()), (PQ, PQ));
}
