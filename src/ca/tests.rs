//! The CA service and its client end to end over loopback TLS, in file mode.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::auth::{NodeToken, NodeTokens};
use super::client::{CaClient, CaClientConfig};
use super::policy::Account;
use super::serve::{start, AuthMode, Running, ServeConfig};
use crate::identity::issuer::Issuer;
use crate::identity::{ca, Identity, IdentityError};
use crate::workload::{Pod, Snapshot};

struct Fixture {
    dir: PathBuf,
    running: Option<Running>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
}

fn write_json(path: &Path, value: &impl serde::Serialize) {
    std::fs::write(path, serde_json::to_vec(value).unwrap()).unwrap();
}

async fn fixture(tag: &str, max_validity: Duration) -> Fixture {
    let dir = std::env::temp_dir().join(format!("ambit-ca-svc-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    ca::init(&dir.join("ca")).unwrap();
    let token = |node: &str, sa: &str| NodeToken {
        node: node.into(),
        service_account: sa.into(),
        pod: None,
        expires_at: None,
    };
    let tokens: NodeTokens = [
        ("n1-token".to_string(), token("n1", "istio-system/ambit")),
        ("n2-token".to_string(), token("n2", "istio-system/ambit")),
        ("cart-token".to_string(), token("n1", "shop/cart")),
    ]
    .into();
    write_json(&dir.join("tokens.json"), &tokens);
    let pod = |name: &str, sa: &str, node: &str| Pod {
        uid: format!("uid-{name}"),
        name: name.into(),
        namespace: "shop".into(),
        service_account: sa.into(),
        node: node.into(),
        ..Pod::default()
    };
    let snapshot = Snapshot {
        pods: vec![pod("cart-0", "cart", "n1"), pod("pay-0", "payments", "n2")],
        ..Snapshot::default()
    };
    write_json(&dir.join("workloads.json"), &snapshot);
    for (name, t) in [
        ("n1", "n1-token"),
        ("cart", "cart-token"),
        ("bogus", "forged"),
    ] {
        std::fs::write(dir.join(format!("{name}.token")), t).unwrap();
    }
    let running = start(ServeConfig {
        ca_dir: dir.join("ca"),
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        metrics: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        trust_domain: "cluster.local".into(),
        max_validity,
        trusted_node_accounts: vec![Account::parse("istio-system/ambit").unwrap()],
        server_names: vec!["ambit-ca.test".into()],
        server_ips: vec![],
        auth: AuthMode::Files {
            node_tokens: dir.join("tokens.json"),
            workloads: dir.join("workloads.json"),
        },
        poll_interval: Duration::from_millis(50),
        threads: 1,
        publish_crl: None,
        publish_crl_configmap: None,
    })
    .await
    .unwrap();
    Fixture {
        dir,
        running: Some(running),
    }
}

impl Fixture {
    fn client(&self, token: &str, impersonate: bool) -> CaClient {
        CaClient::new(CaClientConfig {
            address: format!("localhost:{}", self.running.as_ref().unwrap().addr.port()),
            root: self.dir.join("ca").join(ca::ROOT_CERT),
            token: self.dir.join(format!("{token}.token")),
            server_name: Some("ambit-ca.test".into()),
            cluster_id: "Kubernetes".into(),
            impersonate,
        })
        .unwrap()
    }

    fn count(&self, outcome: &str) -> u64 {
        let text = self.running.as_ref().unwrap().metrics.encode();
        let needle = format!("ambit_ca_requests_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .map_or(0, |v| v.trim().parse().unwrap())
    }
}

fn code_of(e: &IdentityError) -> String {
    e.to_string()
}

#[tokio::test]
async fn node_gets_its_pods_identity_and_nothing_else() {
    let f = fixture("node", Duration::from_secs(3600)).await;
    // The file watcher publishes asynchronously; the first request may see "not read yet".
    let n1 = f.client("n1", true);
    let cart = id("shop", "cart");
    let mut cert = n1.issue(&cart, Duration::from_secs(600)).await;
    for _ in 0..50 {
        if cert.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        cert = n1.issue(&cart, Duration::from_secs(600)).await;
    }
    let cert = cert.unwrap();
    assert_eq!(cert.identity, cart);
    assert_eq!(
        cert.chain.len(),
        1,
        "the root is not kept in the chain sent to peers"
    );
    // `issued_at` is the client's clock before the request, `not_after` the CA's after it:
    // the life seen here is the TTL plus the round trip (and second rounding).
    let life = cert.not_after.duration_since(cert.issued_at).unwrap();
    assert!(
        life <= Duration::from_secs(602) && life >= Duration::from_secs(590),
        "{life:?}"
    );

    let err = n1
        .issue(&id("shop", "payments"), Duration::from_secs(600))
        .await
        .unwrap_err();
    let msg = code_of(&err);
    assert!(msg.contains("PermissionDenied"), "{msg}");
    assert!(
        msg.contains("spiffe://cluster.local/ns/shop/sa/payments") && msg.contains("n1"),
        "{msg}"
    );
    assert_eq!(f.count("signed"), 1);
    assert!(f.count("permission_denied") >= 1);
}

#[tokio::test]
async fn validity_is_capped_and_sidecars_get_only_their_own_identity() {
    let f = fixture("cap", Duration::from_secs(120)).await;
    let sidecar = f.client("cart", false);
    let cert = sidecar
        .issue(&id("shop", "cart"), Duration::from_secs(86400))
        .await
        .unwrap();
    let life = cert.not_after.duration_since(cert.issued_at).unwrap();
    assert!(
        life <= Duration::from_secs(121),
        "capped at --max-validity: {life:?}"
    );
    // A sidecar asking (without impersonation) for another identity: the CA signs only its
    // own, whose SAN then does not match the CSR.
    let err = sidecar
        .issue(&id("shop", "payments"), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(code_of(&err).contains("InvalidArgument"), "{err}");
    let impersonating = f.client("cart", true);
    let err = impersonating
        .issue(&id("shop", "payments"), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(code_of(&err).contains("PermissionDenied"), "{err}");
    let forged = f.client("bogus", true);
    let err = forged
        .issue(&id("shop", "cart"), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(code_of(&err).contains("Unauthenticated"), "{err}");
    assert_eq!(f.count("unauthenticated"), 1);
}

#[tokio::test]
async fn a_stopped_service_is_an_error_not_a_hang() {
    let mut f = fixture("stop", Duration::from_secs(3600)).await;
    let client = f.client("cart", false);
    f.running.take().unwrap().stop().await.unwrap();
    let started = std::time::Instant::now();
    let err = client
        .issue(&id("shop", "cart"), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("CA service"), "{err}");
}
