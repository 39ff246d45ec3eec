use std::time::{Duration, SystemTime};

use super::*;
use crate::identity::ca::{self, Ca, CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
use crate::identity::testutil::{exchange, id, openssl_rsa_root, Outcome, TempDir};

const HOUR: Duration = Duration::from_secs(3600);

fn issue(ca: &Ca, who: &Identity) -> WorkloadCert {
    ca.issue(who, HOUR, SystemTime::now()).unwrap()
}

/// Client `client_cert` expecting `expected`, server `server_cert`, both trusting `roots`.
async fn run(
    client_cert: &WorkloadCert,
    expected: Vec<Identity>,
    server_cert: &WorkloadCert,
    roots: Arc<RootCertStore>,
) -> Outcome {
    let c = client_config(client_cert, roots.clone(), expected, TlsPolicy::Default).unwrap();
    let s = server_config(server_cert, roots, TlsPolicy::Default).unwrap();
    exchange(c, s).await
}

fn rsa_ca(dir: &std::path::Path) -> Ca {
    openssl_rsa_root(dir, "root");
    std::fs::copy(dir.join("root-key.pem"), dir.join(CA_KEY)).unwrap();
    for f in [CA_CERT, ROOT_CERT, CERT_CHAIN] {
        std::fs::copy(dir.join("root.pem"), dir.join(f)).unwrap();
    }
    Ca::load(dir).unwrap()
}

#[tokio::test]
async fn mutual_tls_both_sides_see_the_peer_identity() {
    let ec_dir = TempDir::new("tls-ec");
    let rsa_dir = TempDir::new("tls-rsa");
    for ca in [ca::init(ec_dir.path()).unwrap(), rsa_ca(rsa_dir.path())] {
        let (alice, bob) = (id("front", "alice"), id("back", "bob"));
        let (a, b) = (issue(&ca, &alice), issue(&ca, &bob));
        // The expected list may hold several identities (service SANs + workload identity).
        let expected = vec![id("back", "someone-else"), bob.clone()];
        let out = run(&a, expected, &b, ca.roots()).await;
        assert_eq!(out.client.unwrap(), bob);
        assert_eq!(out.server.unwrap(), alice);
    }
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused_by_the_server() {
    let (d1, d2) = (TempDir::new("tls-ca1"), TempDir::new("tls-ca2"));
    let (ca1, ca2) = (ca::init(d1.path()).unwrap(), ca::init(d2.path()).unwrap());
    let bob = id("back", "bob");
    let server = issue(&ca1, &bob);
    let stranger = issue(&ca2, &id("front", "alice"));
    let out = run(&stranger, vec![bob], &server, ca1.roots()).await;
    let err = out.server.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "server: {err}");
    let err = out.client.unwrap_err();
    assert!(
        err.contains("UnknownCA"),
        "client should get the server's alert: {err}"
    );
}

#[tokio::test]
async fn expired_client_cert_is_refused_by_the_server() {
    let d = TempDir::new("tls-exp");
    let ca = ca::init(d.path()).unwrap();
    let bob = id("back", "bob");
    let server = issue(&ca, &bob);
    let two_hours_ago = SystemTime::now() - 2 * HOUR;
    let expired = ca
        .issue(&id("front", "alice"), HOUR, two_hours_ago)
        .unwrap();
    let out = run(&expired, vec![bob], &server, ca.roots()).await;
    let err = out.server.unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "server: {err}");
    let err = out.client.unwrap_err();
    assert!(err.contains("CertificateExpired"), "client: {err}");
}

#[tokio::test]
async fn client_of_another_trust_domain_is_refused_by_the_server() {
    let d = TempDir::new("tls-td");
    let ca = ca::init(d.path()).unwrap();
    let bob = id("back", "bob");
    let server = issue(&ca, &bob);
    let foreign = issue(
        &ca,
        &Identity::new("other.example", "front", "alice").unwrap(),
    );
    let out = run(&foreign, vec![bob], &server, ca.roots()).await;
    let err = out.server.unwrap_err();
    assert!(
        err.contains("not in trust domain \"cluster.local\"")
            && err.contains("spiffe://other.example/ns/front/sa/alice"),
        "server: {err}"
    );
    assert!(out.client.is_err());
}

#[tokio::test]
async fn server_with_unexpected_identity_is_refused_by_the_client() {
    let d = TempDir::new("tls-srv");
    let ca = ca::init(d.path()).unwrap();
    let client = issue(&ca, &id("front", "alice"));
    let impostor = issue(&ca, &id("back", "mallory"));
    let out = run(&client, vec![id("back", "bob")], &impostor, ca.roots()).await;
    let err = out.client.unwrap_err();
    assert!(
        err.contains("expected one of [spiffe://cluster.local/ns/back/sa/bob]")
            && err.contains("presented [spiffe://cluster.local/ns/back/sa/mallory]"),
        "client: {err}"
    );
    let err = out.server.unwrap_err();
    assert!(
        err.contains("CertificateUnknown"),
        "server gets the client's alert: {err}"
    );
}

#[tokio::test]
async fn server_from_another_ca_is_refused_by_the_client() {
    let (d1, d2) = (TempDir::new("tls-sca1"), TempDir::new("tls-sca2"));
    let (ca1, ca2) = (ca::init(d1.path()).unwrap(), ca::init(d2.path()).unwrap());
    let bob = id("back", "bob");
    let client = issue(&ca1, &id("front", "alice"));
    let server = issue(&ca2, &bob);
    let c = client_config(&client, ca1.roots(), vec![bob], TlsPolicy::Default).unwrap();
    let s = server_config(&server, ca2.roots(), TlsPolicy::Default).unwrap();
    let out = exchange(c, s).await;
    let err = out.client.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "client: {err}");
}

#[test]
fn peer_identity_needs_a_handshake() {
    let d = TempDir::new("tls-none");
    let ca = ca::init(d.path()).unwrap();
    let cert = issue(&ca, &id("a", "b"));
    let cfg = client_config(&cert, ca.roots(), vec![], TlsPolicy::Default).unwrap();
    let conn = rustls::ClientConnection::new(cfg, dummy_server_name()).unwrap();
    assert!(matches!(
        peer_identity(&conn),
        Err(IdentityError::NoPeerCertificate)
    ));
}

/// Handshakes a client under `client` with a server under `server` (both trusting one CA) and
/// returns each side's negotiated group, or its explained failure.
async fn kx(
    client: TlsPolicy,
    server: TlsPolicy,
) -> (Result<&'static str, String>, Result<&'static str, String>) {
    let d = TempDir::new("tls-kx");
    let ca = ca::init(d.path()).unwrap();
    let bob = id("back", "bob");
    let (a, b) = (issue(&ca, &id("front", "alice")), issue(&ca, &bob));
    let c = client_config(&a, ca.roots(), vec![bob], client).unwrap();
    let s = server_config(&b, ca.roots(), server).unwrap();
    let (cio, sio) = tokio::io::duplex(64 * 1024);
    let client_side = async {
        let provider = c.crypto_provider().clone();
        match tokio_rustls::TlsConnector::from(c)
            .connect(dummy_server_name(), cio)
            .await
        {
            Ok(tls) => Ok(negotiated_group(tls.get_ref().1).unwrap()),
            Err(e) => Err(handshake_failure(&e, &provider)),
        }
    };
    let server_side = async {
        let provider = s.crypto_provider().clone();
        match tokio_rustls::TlsAcceptor::from(s).accept(sio).await {
            Ok(tls) => Ok(negotiated_group(tls.get_ref().1).unwrap()),
            Err(e) => Err(handshake_failure(&e, &provider)),
        }
    };
    tokio::join!(client_side, server_side)
}

#[tokio::test]
async fn post_quantum_key_exchange_is_preferred_with_classical_fallback() {
    use TlsPolicy::*;
    for (client, server, group) in [
        (Default, Default, "X25519MLKEM768"),
        (Default, Pqc, "X25519MLKEM768"),
        (Pqc, Default, "X25519MLKEM768"),
        (Default, Classical, "X25519"),
        (Classical, Default, "X25519"),
    ] {
        let (c, s) = kx(client, server).await;
        assert_eq!((c, s), (Ok(group), Ok(group)), "{client} -> {server}");
    }
}

#[tokio::test]
async fn pqc_refuses_a_classical_peer_naming_the_reason() {
    use TlsPolicy::*;
    // Classical client, pqc server: the server finds no common group and says so.
    let (c, s) = kx(Classical, Pqc).await;
    let s = s.unwrap_err();
    assert!(
        s.contains("no key-exchange group in common") && s.contains("only X25519MLKEM768"),
        "{s}"
    );
    let c = c.unwrap_err();
    assert!(
        c.contains("handshake_failure") && c.contains("X25519, secp256r1, secp384r1"),
        "{c}"
    );
    // Pqc client, classical server: the client is refused and names what it offered.
    let (c, s) = kx(Pqc, Classical).await;
    assert!(s.unwrap_err().contains("no key-exchange group in common"));
    let c = c.unwrap_err();
    assert!(
        c.contains("handshake_failure") && c.contains("only X25519MLKEM768"),
        "{c}"
    );
}
