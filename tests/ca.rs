//! The CA service in the lab (`ambit ca serve` in the fabric namespace, real binaries): node
//! daemons get their certificates from it and never hold the CA key (a); an outage leaves
//! enrolled pods working and new pods reported failed until it returns (e); validity is capped
//! and rotation goes through it (f). The API's refusals (b)-(d) are in `ca_api.rs`.
#![cfg(feature = "lab")]

mod support;

use std::path::Path;
use std::time::SystemTime;

use ambit::lab::ca::{TokenSpec, CA_SERVICE};
use ambit::lab::traffic::{connect, Server};
use ambit::lab::{Lab, LabSpec, CA_DIR};
use support::ca::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// a: certificates come from the CA service, HBONE flows, and no daemon can reach the key.
#[tokio::test(flavor = "multi_thread")]
async fn node_daemons_get_certificates_from_the_ca_service_and_never_hold_the_key() {
    for kube in [false, true] {
        let c = if kube {
            Cluster::start_kube(2, 1, true, |_| {})
        } else {
            Cluster::start(2, 1, "iptables", |_| {})
        };
        let any = "[::]:8080".parse().expect("addr");
        let _server = Server::start(&c.lab.pod_netns("n2-p1").expect("ns"), any)
            .await
            .expect("echo");
        c.wait_state("n1-p1", "enrolled");
        c.wait_state("n2-p1", "enrolled");
        let local = send(&c, "n1-p1", c.v4("n2-p1")).await;
        let flow = c.wait_flow("n1", |f| f["src"] == local.to_string());
        assert_eq!(flow["route"], "hbone", "{flow:#}");
        let inbound = c.wait_flow("n2", |f| is(f, "hbone"));
        assert_eq!(
            inbound["peer_identity"],
            identity_of("n1-p1"),
            "{inbound:#}"
        );
        assert!(ca_count(&c.lab, "signed") >= 2, "kube={kube}");
        let log = settled_log(&c.lab, CA_SERVICE, |l| {
            ["n1-p1", "n2-p1"]
                .iter()
                .all(|pod| l.contains(&identity_of(pod)))
        });
        for (pod, node) in [("n1-p1", "n1"), ("n2-p1", "n2")] {
            assert!(
                log.lines().any(|l| l.contains("certificate signed")
                    && l.contains(&identity_of(pod))
                    && l.contains(&format!("node=\"{node}\""))
                    || l.contains("certificate signed")
                        && l.contains(&identity_of(pod))
                        && l.contains(&format!("node={node}"))),
                "no audit line for {pod} on {node} (kube={kube}):\n{log}"
            );
        }
        let ca_dir = c.lab.dir().join(CA_DIR);
        for node in ["n1", "n2"] {
            let pid = c.lab.daemon_pid(node).expect("daemon pid");
            let found = process_reaches_ca_key(pid, &ca_dir);
            assert!(found.is_empty(), "daemon on {node}: {found:?}");
        }
    }
}

/// e: with the CA service stopped, an open connection keeps flowing and new connections
/// between enrolled pods work on the certificates held; a pod enrolled meanwhile is reported
/// failed (no rules installed) and is captured once the service is back.
#[tokio::test(flavor = "multi_thread")]
async fn ca_outage_keeps_enrolled_pods_working_and_fails_new_ones_closed() {
    let c = Cluster::start(2, 2, "iptables", |s| {
        label(s, "n1-p2", "istio.io/dataplane-mode", "none");
    });
    let any = "[::]:8080".parse().expect("addr");
    let mut servers = Vec::new();
    for pod in ["n1-p1", "n1-p2", "n2-p1"] {
        let ns = c.lab.pod_netns(pod).expect("ns");
        servers.push(Server::start(&ns, any).await.expect("echo"));
    }
    c.wait_state("n1-p1", "enrolled");
    c.wait_state("n2-p1", "enrolled");
    c.wait_state("n1-p2", "not-enrolled");
    let mut open = connect(&c.lab.pod_netns("n1-p1").expect("ns"), c.v4("n2-p1"))
        .await
        .expect("connect");
    let mut buf = [0u8; 5];
    open.write_all(b"hello").await.expect("write");
    open.read_exact(&mut buf).await.expect("read");

    c.lab.stop_ca_service().expect("stop CA");
    // The open connection continues; new connections between enrolled pods work.
    open.write_all(b"still").await.expect("write after stop");
    open.read_exact(&mut buf).await.expect("read after stop");
    assert_eq!(&buf, b"still");
    send(&c, "n2-p1", c.v4("n1-p1")).await;
    send(&c, "n1-p1", c.v4("n2-p1")).await;

    // A pod joining now has no certificate: reported failed, nothing installed.
    c.lab
        .update_workloads(|s| label(s, "n1-p2", "istio.io/dataplane-mode", "ambient"))
        .expect("label");
    let failed = c.wait_state("n1-p2", "failed");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("no valid certificate") && error.contains("CA service"),
        "{failed:#}"
    );
    let ns = c.lab.pod_netns("n1-p2").expect("ns");
    assert!(
        !ambit::rules::installed(&ns, ambit::config::Backend::Iptables)
            .expect("rules")
            .any(),
        "a pod without a certificate must not be captured"
    );

    c.lab.start_ca_service(binary(), &[]).expect("restart CA");
    c.wait_state("n1-p2", "enrolled");
    let local = send(&c, "n2-p1", c.v4("n1-p2")).await;
    let flow = c.wait_flow("n2", |f| f["src"] == local.to_string());
    assert_eq!(flow["route"], "hbone", "{flow:#}");
    drop(servers);
}

/// f: the CA caps the requested validity; daemons asking for a day get the cap and renew
/// through the CA service at half of it while traffic keeps flowing.
#[tokio::test(flavor = "multi_thread")]
async fn requested_validity_is_capped_and_rotation_goes_through_the_ca() {
    let lab = Lab::up(&LabSpec {
        nodes: 2,
        pods_per_node: 1,
        ..LabSpec::default()
    })
    .expect("lab up");
    lab.start_ca_service(binary(), &["--max-validity=4".into()])
        .expect("CA service");
    let n1 = lab
        .mint_token(&TokenSpec::daemon("n1", lab.name()))
        .expect("token");
    let chain = Call {
        validity: 86_400,
        ..Call::for_identity(&identity_of("n1-p1"), Some(&n1))
    }
    .send(&lab)
    .expect("signed");
    let (not_before, not_after, _) = leaf_validity(&chain);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!(
        not_after <= now + 5,
        "not capped: notAfter {not_after}, now {now}"
    );
    assert!(not_before < now);

    let c = Cluster::on_lab(lab, "iptables", |_| Vec::new());
    let any = "[::]:8080".parse().expect("addr");
    let _server = Server::start(&c.lab.pod_netns("n2-p1").expect("ns"), any)
        .await
        .expect("echo");
    c.wait_state("n2-p1", "enrolled");
    let before = ca_count(&c.lab, "signed");
    wait_until("two renewals through the CA", || {
        ca_count(&c.lab, "signed") >= before + 4
    });
    send(&c, "n1-p1", c.v4("n2-p1")).await;
}

/// a (deploy/): the DaemonSet mounts no CA key, only the root and a projected token; the
/// `cacerts` Secret is mounted by the CA service's Deployment alone.
#[test]
fn deploy_mounts_the_ca_key_only_into_the_ca_service() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut mounts_key = Vec::new();
    for file in ["ambit.yaml", "ambit-ca.yaml"] {
        let text = std::fs::read_to_string(root.join(file)).expect("manifest");
        for doc in text.split("\n---\n") {
            let kind = doc
                .lines()
                .find_map(|l| l.strip_prefix("kind: "))
                .unwrap_or_default()
                .trim()
                .to_string();
            if doc.contains("secretName: cacerts") {
                mounts_key.push(format!("{file}: {kind}"));
            }
            if kind == "DaemonSet" {
                assert!(
                    !doc.contains("ca-key"),
                    "{file}: the DaemonSet names ca-key"
                );
                assert!(
                    doc.contains("name: istio-ca-root-cert"),
                    "{file}: no root ConfigMap"
                );
                assert!(
                    doc.contains("audience: istio-ca"),
                    "{file}: no projected token"
                );
                assert!(
                    doc.contains("--ca-address"),
                    "{file}: no CA service address"
                );
                assert!(
                    doc.contains("name: istio-ca-crl") && doc.contains("--ca-crl"),
                    "{file}: the CA's revocation list is not mounted and watched"
                );
            }
        }
    }
    assert_eq!(mounts_key, ["ambit-ca.yaml: Deployment"]);
}

/// Bench (ignored; run with `cargo test --release --test ca -- --ignored --nocapture`):
/// enrollment latency, from a pod's label to the first connection to it carried over HBONE,
/// with certificates from the CA service and, for comparison, from a local CA key.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn bench_enrollment_latency_ca_service_vs_local_key() {
    const PODS: usize = 12;
    for mode in ["ca-service", "local-key"] {
        let lab = Lab::up(&LabSpec {
            nodes: 2,
            pods_per_node: PODS,
            namespace_ambient: false,
            ..LabSpec::default()
        })
        .expect("lab up");
        lab.update_workloads(|s| label(s, "n2-p1", "istio.io/dataplane-mode", "ambient"))
            .expect("label");
        let ca_dir = lab.dir().join(CA_DIR);
        let c = Cluster::on_lab(lab, "iptables", |_| {
            let mut args = vec!["--poll-ms=10".to_string()];
            if mode == "local-key" {
                args.push(format!("--insecure-local-ca-dir={}", ca_dir.display()));
            }
            args
        });
        c.wait_state("n2-p1", "enrolled");
        let any = "[::]:8080".parse().expect("addr");
        let mut servers = Vec::new();
        for i in 1..=PODS {
            let ns = c.lab.pod_netns(&format!("n1-p{i}")).expect("ns");
            servers.push(Server::start(&ns, any).await.expect("echo"));
        }
        let client = c.lab.pod_netns("n2-p1").expect("ns");
        let mut took = Vec::new();
        for i in 1..=PODS {
            let pod = format!("n1-p{i}");
            let started = std::time::Instant::now();
            c.lab
                .update_workloads(|s| label(s, &pod, "istio.io/dataplane-mode", "ambient"))
                .expect("label");
            loop {
                let payload = b"ping".to_vec();
                if let Ok(ex) =
                    ambit::lab::traffic::exchange(&client, c.v4(&pod), &payload, DEADLINE).await
                {
                    let hbone = c
                        .flows_from("n2", ex.local)
                        .iter()
                        .any(|f| f["route"] == "hbone" && f["error"].is_null());
                    if hbone {
                        break;
                    }
                }
                assert!(
                    started.elapsed() < DEADLINE,
                    "{pod} never reached over HBONE"
                );
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            took.push(started.elapsed());
        }
        took.sort();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        println!(
            "enrollment latency ({mode}, {PODS} pods, label -> first HBONE connection): \
             p50 {:.0} ms, p99 {:.0} ms, min {:.0} ms",
            ms(took[took.len() / 2]),
            ms(took[(took.len() - 1) * 99 / 100]),
            ms(took[0]),
        );
        drop(servers);
    }
}
