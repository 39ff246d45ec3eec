//! The CA service in the lab (`ambit ca serve` in the fabric namespace, real binaries): node
//! daemons get their certificates from it and never hold the CA key (a); it signs for a node
//! only the identities of that node's pods (b); bad credentials (c) and bad requests (d) are
//! refused with the right gRPC status and nothing signed; an outage leaves enrolled pods
//! working and new pods reported failed until it returns (e); validity is capped and
//! rotation goes through it (f). (b)-(d) call the gRPC API directly with a tonic client.
#![cfg(feature = "lab")]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use ambit::ca::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use ambit::ca::proto::IstioCertificateRequest;
use ambit::identity::csr::new_request;
use ambit::identity::Identity;
use ambit::lab::ca::{TokenSpec, CA_SERVER_NAME, CA_SERVICE};
use ambit::lab::traffic::{connect, Server};
use ambit::lab::{Lab, LabSpec, CA_DIR, READY_PORT};
use prost_types::value::Kind;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use x509_parser::prelude::{FromDer, X509Certificate};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ambit"))
}

/// `ambit_ca_requests_total{outcome=...}` of the lab's CA service.
fn ca_count(lab: &Lab, outcome: &str) -> u64 {
    let resp = lab
        .node_http_get(CA_SERVICE, READY_PORT, "/metrics")
        .expect("CA metrics");
    let series = format!("ambit_ca_requests_total{{outcome=\"{outcome}\"}} ");
    resp.body
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().expect("counter"))
}

/// One CreateCertificate call made from the fabric namespace.
struct Call {
    token: Option<String>,
    csr: String,
    impersonate: Option<String>,
    validity: i64,
}

impl Call {
    /// A well-formed request for `id` (fresh P-256 key) with `token`, impersonating `id`.
    fn for_identity(id: &str, token: Option<&str>) -> Call {
        let identity: Identity = id.parse().expect("identity");
        let (_key, csr) = new_request(&identity).expect("csr");
        Call {
            token: token.map(String::from),
            csr,
            impersonate: Some(id.into()),
            validity: 3600,
        }
    }

    fn send(self, lab: &Lab) -> Result<Vec<String>, tonic::Status> {
        let roots = ambit::ca::client::load_roots(&lab.ca_root_path()).expect("roots");
        let addr = lab.ca_address();
        let ns = lab.fabric_netns().expect("fabric");
        ambit::lab::apiserver::block_on_in_netns(&ns, || async move {
            let channel = ambit::ca::client::channel(&addr, Some(CA_SERVER_NAME), roots)?;
            let metadata = self.impersonate.map(|id| prost_types::Struct {
                fields: BTreeMap::from([(
                    "ImpersonatedIdentity".to_string(),
                    prost_types::Value {
                        kind: Some(Kind::StringValue(id)),
                    },
                )]),
            });
            let mut req = tonic::Request::new(IstioCertificateRequest {
                csr: self.csr,
                validity_duration: self.validity,
                metadata,
            });
            if let Some(t) = self.token {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse()?);
            }
            req.metadata_mut()
                .insert("clusterid", "Kubernetes".parse()?);
            let mut client = IstioCertificateServiceClient::new(channel);
            Ok(client
                .create_certificate(req)
                .await
                .map(|r| r.into_inner().cert_chain))
        })
        .expect("gRPC call")
    }
}

/// Expects a refusal with `code` whose message contains every one of `words`.
fn refused(result: Result<Vec<String>, tonic::Status>, code: Code, words: &[&str]) {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    for w in words {
        assert!(status.message().contains(w), "{w:?} not in {status:?}");
    }
}

/// A lab with the CA service running and no daemons; Kubernetes mode with the stand-in.
fn ca_lab(kube: bool, ca_args: &[String]) -> Lab {
    let lab = Lab::up(&LabSpec {
        nodes: 2,
        pods_per_node: 2,
        kube,
        ..LabSpec::default()
    })
    .expect("lab up");
    if kube {
        lab.start_apiserver(binary()).expect("stand-in");
    }
    lab.start_ca_service(binary(), ca_args).expect("CA service");
    lab
}

/// The leaf of a response chain, parsed.
fn leaf_validity(chain: &[String]) -> (i64, i64, Vec<String>) {
    let der = CertificateDer::from_pem_slice(chain[0].as_bytes()).expect("leaf PEM");
    let (_, x) = X509Certificate::from_der(&der).expect("leaf");
    let uris = ambit::identity::verify::uri_sans(&der).expect("SANs");
    (
        x.validity().not_before.timestamp(),
        x.validity().not_after.timestamp(),
        uris,
    )
}

fn process_reaches_ca_key(pid: u32, ca_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if cmdline.contains("ca-key") || cmdline.contains(&ca_dir.display().to_string()) {
        found.push(format!("argument: {cmdline}"));
    }
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            if target.starts_with(ca_dir) || target.to_string_lossy().contains("ca-key") {
                found.push(format!("open file: {}", target.display()));
            }
        }
    }
    found
}

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
        let log = c.lab.daemon_log(CA_SERVICE);
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

/// b: with n1's credentials, the identity of a pod on n2 is refused naming identity and node,
/// nothing signed; a pod of n1 is signed (leaf for that identity, root last).
#[test]
fn a_node_gets_only_the_identities_of_its_own_pods() {
    for kube in [false, true] {
        let lab = ca_lab(kube, &[]);
        let n1 = lab
            .mint_token(&TokenSpec::daemon("n1", lab.name()))
            .expect("token");
        let signed = ca_count(&lab, "signed");
        refused(
            Call::for_identity(&identity_of("n2-p1"), Some(&n1)).send(&lab),
            Code::PermissionDenied,
            &[&identity_of("n2-p1"), "n1"],
        );
        assert_eq!(
            ca_count(&lab, "signed"),
            signed,
            "nothing signed (kube={kube})"
        );
        let chain = Call::for_identity(&identity_of("n1-p1"), Some(&n1))
            .send(&lab)
            .unwrap_or_else(|s| panic!("n1-p1 refused (kube={kube}): {s:?}"));
        let (_, _, uris) = leaf_validity(&chain);
        assert_eq!(uris, [identity_of("n1-p1")]);
        let root = std::fs::read_to_string(lab.ca_root_path()).expect("root");
        assert_eq!(
            chain.last().map(|s| s.trim()),
            Some(root.trim()),
            "root last"
        );
        assert_eq!(ca_count(&lab, "signed"), signed + 1);
    }
}

/// c: no token, a forged, an expired or a wrong-audience token → UNAUTHENTICATED; an
/// untrusted ServiceAccount impersonating → PERMISSION_DENIED; nothing signed.
#[test]
fn bad_credentials_are_refused() {
    let lab = ca_lab(true, &[]);
    let want = identity_of("n1-p1");
    let expired = lab
        .mint_token(&TokenSpec {
            expires_at: Some(SystemTime::now() - Duration::from_secs(60)),
            ..TokenSpec::daemon("n1", lab.name())
        })
        .expect("token");
    let wrong_audience = lab
        .mint_token(&TokenSpec {
            audience: "some-other-service".into(),
            ..TokenSpec::daemon("n1", lab.name())
        })
        .expect("token");
    let p = lab.pod("n1-p2").expect("pod").clone();
    let untrusted = lab
        .mint_token(&TokenSpec {
            namespace: p.namespace.clone(),
            service_account: p.service_account.clone(),
            pod: Some((p.name.clone(), p.uid.clone())),
            ..TokenSpec::daemon("n1", lab.name())
        })
        .expect("token");
    refused(
        Call::for_identity(&want, None).send(&lab),
        Code::Unauthenticated,
        &["authorization"],
    );
    refused(
        Call::for_identity(&want, Some("forged-token")).send(&lab),
        Code::Unauthenticated,
        &["invalid bearer token"],
    );
    refused(
        Call::for_identity(&want, Some(&expired)).send(&lab),
        Code::Unauthenticated,
        &["expired"],
    );
    refused(
        Call::for_identity(&want, Some(&wrong_audience)).send(&lab),
        Code::Unauthenticated,
        &["audience"],
    );
    refused(
        Call::for_identity(&want, Some(&untrusted)).send(&lab),
        Code::PermissionDenied,
        &[&want, "n1", "not a trusted node account"],
    );
    // The same ServiceAccount may have its own identity, as a sidecar.
    Call::for_identity(&identity_of("n1-p2"), Some(&untrusted))
        .send(&lab)
        .expect("own identity");
    assert_eq!(ca_count(&lab, "signed"), 1);
    assert_eq!(ca_count(&lab, "unauthenticated"), 4);

    // File mode: an expired node token as well.
    let lab = ca_lab(false, &[]);
    let expired = lab
        .mint_token(&TokenSpec {
            expires_at: Some(SystemTime::now() - Duration::from_secs(60)),
            ..TokenSpec::daemon("n1", lab.name())
        })
        .expect("token");
    refused(
        Call::for_identity(&want, Some(&expired)).send(&lab),
        Code::Unauthenticated,
        &["expired"],
    );
    assert_eq!(ca_count(&lab, "signed"), 0);
}

/// d: a CSR whose SAN differs from the requested identity, a garbage CSR, an RSA-1024 key →
/// INVALID_ARGUMENT with the reason.
#[test]
fn malformed_requests_are_invalid_arguments() {
    let lab = ca_lab(false, &[]);
    let n1 = lab
        .mint_token(&TokenSpec::daemon("n1", lab.name()))
        .expect("token");
    let want = identity_of("n1-p1");
    let other: Identity = identity_of("n1-p2").parse().expect("id");
    let mismatched = Call {
        csr: new_request(&other).expect("csr").1,
        ..Call::for_identity(&want, Some(&n1))
    };
    refused(
        mismatched.send(&lab),
        Code::InvalidArgument,
        &["URI SANs", &want],
    );
    let garbage = Call {
        csr:
            "-----BEGIN CERTIFICATE REQUEST-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE REQUEST-----\n"
                .into(),
        ..Call::for_identity(&want, Some(&n1))
    };
    refused(garbage.send(&lab), Code::InvalidArgument, &["PKCS#10"]);
    let dir = lab.dir().join("rsa1024");
    std::fs::create_dir_all(&dir).expect("dir");
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-new", "-newkey", "rsa:1024", "-nodes", "-keyout", "k.pem",
        ])
        .args(["-subj", "/O=test", "-addext"])
        .arg(format!("subjectAltName=URI:{want}"))
        .args(["-out", "r.pem"])
        .current_dir(&dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let weak = Call {
        csr: std::fs::read_to_string(dir.join("r.pem")).expect("csr"),
        ..Call::for_identity(&want, Some(&n1))
    };
    refused(weak.send(&lab), Code::InvalidArgument, &["RSA 1024"]);
    assert_eq!(ca_count(&lab, "signed"), 0);
    assert_eq!(ca_count(&lab, "invalid_argument"), 3);
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
            }
        }
    }
    assert_eq!(mounts_key, ["ambit-ca.yaml: Deployment"]);
}
