//! Certificate revocation in the lab (issue 14, test b; real binaries, the lab CA):
//! `ambit ca revoke` rewrites the CA's `ca-crl.pem`, the CA service publishes it beside the
//! root, and the daemons watch the published copy.
//!
//! - a revoked client certificate is refused by the server's daemon, a revoked server
//!   certificate by the client's daemon, a corrupt CRL keeps the last good one, and the CA
//!   service publishes only CRLs that load;
//! - a live connection is closed once its peer's certificate is revoked, on either side.
#![cfg(feature = "lab")]

mod support;

use std::net::SocketAddr;
use std::process::Command;

use ambit::lab::ca::CA_SERVICE;
use ambit::lab::traffic::{connect, pattern, Server};
use ambit::lab::{Lab, LabSpec};
use support::ca::binary;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The serial of the certificate `node`'s daemon holds for `pod`'s identity, from its log
/// ("workload certificate issued identity=… serial=…").
fn serial_of(c: &Cluster, node: &str, pod: &str) -> String {
    serial_in(&c.lab, node, pod)
}

/// [`serial_of`] from the log of any lab process (`holder`: a node or a sidecar's pod).
fn serial_in(lab: &Lab, holder: &str, pod: &str) -> String {
    let id = format!("identity={}", identity_of(pod));
    let log = settled_log(lab, holder, |l| {
        l.lines()
            .any(|l| l.contains("workload certificate") && l.contains(&id))
    });
    log.lines()
        .rev()
        .filter(|l| l.contains("workload certificate") && l.contains(&id))
        .filter_map(|l| l.split("serial=").nth(1))
        .find_map(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no certificate for {pod} in {holder}'s log:\n{log}"))
        .to_owned()
}

/// `ambit ca revoke --ca-dir <lab CA> SERIAL`, then waits until every daemon has loaded a
/// CRL `loads` times.
fn revoke(c: &Cluster, serial: &str, loads: f64) {
    run_revoke(&c.lab, serial);
    for node in ["n1", "n2"] {
        wait_until(&format!("{node} loads the CRL"), || {
            c.metric(node, "ambit_crl_events_total{outcome=\"reloaded\"}") >= loads
        });
    }
}

/// `ambit ca revoke --ca-dir <lab CA> SERIAL`.
fn run_revoke(lab: &Lab, serial: &str) {
    let out = Command::new(binary())
        .args(["ca", "revoke", "--ca-dir"])
        .arg(lab.ca_dir())
        .arg(serial)
        .output()
        .expect("run ambit ca revoke");
    assert!(
        out.status.success(),
        "ambit ca revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked"));
}

/// Whether an echo exchange from `from` to `dst` fails (the app sees its connection closed
/// without an echo).
async fn refused(c: &Cluster, from: &str, dst: SocketAddr) -> bool {
    let ns = c.lab.pod_netns(from).expect("pod netns");
    let payload = pattern(10_000);
    match ambit::lab::traffic::exchange(&ns, dst, &payload, PROMPT).await {
        Ok(ex) => ex.reply != payload,
        Err(_) => true,
    }
}

fn wait_log(c: &Cluster, node: &str, words: &[&str]) {
    wait_until(&format!("{node} logs {words:?}"), || {
        c.lab
            .daemon_log(node)
            .lines()
            .any(|l| words.iter().all(|w| l.contains(w)))
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_client_and_server_certificates_are_refused_and_a_corrupt_crl_keeps_the_last_good_one(
) {
    let c = Cluster::start(2, 2, "iptables", |_| {});
    let any = "[::]:8080".parse().expect("addr");
    let mut servers = Vec::new();
    for pod in ["n1-p1", "n1-p2", "n2-p1"] {
        let ns = c.lab.pod_netns(pod).expect("ns");
        servers.push(Server::start(&ns, any).await.expect("echo"));
        c.wait_state(pod, "enrolled");
    }
    c.wait_state("n2-p2", "enrolled");
    let serial = serial_of(&c, "n1", "n1-p1");
    revoke(&c, &serial, 1.0);

    // n1-p1 as a client: n2's 15008 refuses its certificate.
    assert!(refused(&c, "n1-p1", c.v4("n2-p1")).await);
    wait_log(
        &c,
        "n2",
        &["handshake refused", "client certificate revoked", &serial],
    );
    // n1-p1 as a server: n2's pool refuses its certificate; the flow says why.
    assert!(refused(&c, "n2-p1", c.v4("n1-p1")).await);
    wait_log(
        &c,
        "n2",
        &["handshake refused", "server certificate revoked", &serial],
    );
    let flow = c.wait_flow("n2", |f| {
        is(f, "outbound") && f["error"].as_str().is_some_and(|e| e.contains("revoked"))
    });
    assert_eq!(flow["dst"], c.v4("n1-p1").to_string(), "{flow:#}");
    assert!(
        c.metric(
            "n2",
            "ambit_crl_events_total{outcome=\"handshake_refused\"}"
        ) >= 2.0
    );
    // Others still talk, both ways.
    send(&c, "n1-p2", c.v4("n2-p1")).await;
    send(&c, "n2-p2", c.v4("n1-p2")).await;

    // A corrupt CRL is reported and the last good one stays in force.
    std::fs::write(c.lab.ca_crl_path(), "-----BEGIN X509 CRL-----\ngarbage\n").expect("write");
    for node in ["n1", "n2"] {
        wait_until(&format!("{node} reports the bad CRL"), || {
            c.metric(node, "ambit_crl_events_total{outcome=\"reload_failed\"}") >= 1.0
        });
        wait_log(
            &c,
            node,
            &["rejected new version", "keeping the last good CRL"],
        );
    }
    assert!(refused(&c, "n1-p1", c.v4("n2-p1")).await);
    assert!(refused(&c, "n2-p1", c.v4("n1-p1")).await);
    send(&c, "n1-p2", c.v4("n2-p1")).await;

    // A bad CRL in the CA directory is not published at all.
    std::fs::write(c.lab.ca_dir().join("ca-crl.pem"), "not a CRL").expect("write");
    wait_until("the CA service refuses to publish it", || {
        c.lab
            .daemon_log(CA_SERVICE)
            .contains("not publishing the CRL")
    });
    assert!(std::fs::read(c.lab.ca_crl_path())
        .expect("published")
        .starts_with(b"-----BEGIN X509 CRL-----\ngarbage"));
    drop(servers);
}

/// Reads until the peer closes; true if it did within [`PROMPT`].
async fn closed_soon(stream: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let until = tokio::time::Instant::now() + PROMPT;
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn live_connections_close_when_the_peer_certificate_is_revoked() {
    let c = Cluster::start(2, 1, "iptables", |_| {});
    let any = "[::]:8080".parse().expect("addr");
    let mut servers = Vec::new();
    for pod in ["n1-p1", "n2-p1"] {
        let ns = c.lab.pod_netns(pod).expect("ns");
        servers.push(Server::start(&ns, any).await.expect("echo"));
        c.wait_state(pod, "enrolled");
    }
    // Two live connections: n2-p1 is the server of one and the client of the other.
    let mut to_n2 = connect(&c.lab.pod_netns("n1-p1").expect("ns"), c.v4("n2-p1"))
        .await
        .expect("connect");
    let mut from_n2 = connect(&c.lab.pod_netns("n2-p1").expect("ns"), c.v4("n1-p1"))
        .await
        .expect("connect");
    let mut buf = [0u8; 5];
    for s in [&mut to_n2, &mut from_n2] {
        s.write_all(b"hello").await.expect("write");
        s.read_exact(&mut buf)
            .await
            .expect("echo before revocation");
    }

    let serial = serial_of(&c, "n2", "n2-p1");
    revoke(&c, &serial, 1.0);
    // n1's pool closes the connection whose server is n2-p1, n1's 15008 the one whose client
    // is n2-p1; both apps see their connection end.
    assert!(closed_soon(&mut to_n2).await, "n1-p1 -> n2-p1 still open");
    assert!(closed_soon(&mut from_n2).await, "n2-p1 -> n1-p1 still open");
    wait_log(
        &c,
        "n1",
        &[
            "closing HBONE connection",
            "server certificate revoked",
            &serial,
        ],
    );
    wait_log(
        &c,
        "n1",
        &[
            "closing HBONE connection",
            "client certificate revoked",
            &serial,
        ],
    );
    assert!(
        c.metric(
            "n1",
            "ambit_crl_events_total{outcome=\"connection_closed\"}"
        ) >= 2.0
    );
    // New connections with the revoked certificate are refused too.
    assert!(refused(&c, "n1-p1", c.v4("n2-p1")).await);
    drop(servers);
}

/// Sidecars (`ambit sidecar`, as UID 1337) watch the published CRL too: a sidecar refuses a
/// revoked server certificate.
#[tokio::test(flavor = "multi_thread")]
async fn sidecars_refuse_a_revoked_peer() {
    let lab = Lab::up(&LabSpec {
        nodes: 2,
        pods_per_node: 1,
        namespace_ambient: false,
        ..LabSpec::default()
    })
    .expect("lab up");
    lab.start_sidecars(binary(), &[]).expect("sidecars");
    let any = "[::]:8080".parse().expect("addr");
    let n1 = lab.pod_netns("n1-p1").expect("ns");
    let _app2 = Server::start(&lab.pod_netns("n2-p1").expect("ns"), any)
        .await
        .expect("echo");
    let dst: SocketAddr = (lab.pod("n2-p1").expect("pod").ipv4, APP_PORT).into();
    let payload = pattern(10_000);
    let ex = ambit::lab::traffic::exchange(&n1, dst, &payload, DEADLINE)
        .await
        .expect("exchange before revocation");
    assert!(ex.reply == payload);

    run_revoke(&lab, &serial_in(&lab, "n2-p1", "n2-p1"));
    // n1-p1's sidecar loads the CRL, closes its pooled connection to n2-p1 and refuses a new
    // one.
    wait_until("n1-p1's sidecar loads the CRL", || {
        lab.admin_get("n1-p1", "/metrics")
            .is_ok_and(|m| m.contains("ambit_crl_events_total{outcome=\"reloaded\"} 1"))
    });
    let after = ambit::lab::traffic::exchange(&n1, dst, &payload, PROMPT).await;
    assert!(after.map_or(true, |ex| ex.reply != payload));
    let log = settled_log(&lab, "n1-p1", |l| {
        l.contains("handshake refused: server certificate revoked")
    });
    assert!(
        log.contains("handshake refused: server certificate revoked"),
        "{log}"
    );
}

/// Kubernetes mode: the CA service also publishes the CRL as Istio's `istio-ca-crl` ConfigMap
/// (key `ca-crl.pem`), the one the DaemonSet mounts; the daemons enforce it.
#[tokio::test(flavor = "multi_thread")]
async fn kube_mode_publishes_the_crl_as_a_configmap() {
    let c = Cluster::start_kube(2, 1, true, |_| {});
    let any = "[::]:8080".parse().expect("addr");
    let _server = Server::start(&c.lab.pod_netns("n2-p1").expect("ns"), any)
        .await
        .expect("echo");
    c.wait_state("n1-p1", "enrolled");
    c.wait_state("n2-p1", "enrolled");
    let serial = serial_of(&c, "n1", "n1-p1");
    revoke(&c, &serial, 1.0);
    // Each attempt must be refused; under load one may fail before its handshake reaches n2,
    // so attempts repeat until n2 has logged a refusal of this certificate.
    let logged = |c: &Cluster| {
        c.lab
            .daemon_log("n2")
            .lines()
            .any(|l| l.contains("client certificate revoked") && l.contains(serial.as_str()))
    };
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        assert!(refused(&c, "n1-p1", c.v4("n2-p1")).await);
        if logged(&c) {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "n2 never logged refusing {serial}:\n{}",
            c.lab.daemon_log("n2")
        );
    }

    let published = std::fs::read_to_string(c.lab.ca_crl_path()).expect("published file");
    let path = "/api/v1/namespaces/istio-system/configmaps/istio-ca-crl";
    wait_until("the istio-ca-crl ConfigMap holds the CRL", || {
        let (status, cm) = c.api("GET", path, None);
        status == 200 && cm["data"]["ca-crl.pem"] == published.as_str()
    });
}
