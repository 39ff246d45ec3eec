use std::os::unix::fs::PermissionsExt;

use x509_parser::extensions::GeneralName;

use super::*;
use crate::identity::testutil::{id, openssl, openssl_rsa_root, TempDir};

/// Verifies `cert` as a peer would: chain to `ca`'s roots at time `now`.
fn verify(ca: &Ca, cert: &WorkloadCert, now: SystemTime) -> Result<(), rustls::Error> {
    verify_chain(ca, &cert.chain, now)
}

/// Verifies a chain (leaf first) as a peer would.
fn verify_chain(
    ca: &Ca,
    chain: &[CertificateDer<'static>],
    now: SystemTime,
) -> Result<(), rustls::Error> {
    let parsed = ParsedCertificate::try_from(&chain[0])?;
    let since = now.duration_since(UNIX_EPOCH).unwrap();
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &ca.roots(),
        &chain[1..],
        UnixTime::since_unix_epoch(since),
        tls::provider().signature_verification_algorithms.all,
    )
}

#[test]
fn init_then_load_and_issue() {
    let dir = TempDir::new("init");
    let ca_dir = dir.path().join("ca");
    init(&ca_dir).unwrap();
    let mode = fs::metadata(ca_dir.join(CA_KEY))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let ca = Ca::load(&ca_dir).unwrap();
    assert_eq!(
        ca.chain().len(),
        1,
        "ca-cert and cert-chain are the same root"
    );
    assert_eq!(ca.root_certs().len(), 1);

    let now = SystemTime::now();
    let who = id("default", "sleep");
    let cert = ca.issue(&who, Duration::from_secs(3600), now).unwrap();
    assert_eq!(cert.chain.len(), 2);
    verify(&ca, &cert, now).unwrap();

    let (_, x) = X509Certificate::from_der(cert.leaf()).unwrap();
    let sans: Vec<_> = x
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .clone();
    assert_eq!(
        sans,
        vec![GeneralName::URI(
            "spiffe://cluster.local/ns/default/sa/sleep"
        )]
    );
    let ku = x.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!x.is_ca());
    assert_eq!(x.raw_serial(), &cert.serial[..]);

    let issued = unix_secs(now);
    assert_eq!(x.validity().not_before.timestamp(), issued - 300);
    assert_eq!(x.validity().not_after.timestamp(), issued + 3600);
    assert_eq!(unix_secs(cert.refresh_at()), issued + 1800);
    assert_eq!(cert.expires_at(), cert.not_after);
    let dbg = format!("{cert:?}");
    assert!(dbg.contains("sleep") && !dbg.contains("key"), "{dbg}");
}

#[test]
fn init_refuses_to_overwrite() {
    let dir = TempDir::new("init2");
    init(dir.path()).unwrap();
    let before = fs::read(dir.path().join(CA_KEY)).unwrap();
    let err = init(dir.path()).unwrap_err().to_string();
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(fs::read(dir.path().join(CA_KEY)).unwrap(), before);
}

#[test]
fn leaf_never_outlives_the_ca_and_expired_ca_is_refused() {
    let dir = TempDir::new("expiry");
    let ca = init(dir.path()).unwrap();
    let now = SystemTime::now();
    let cert = ca
        .issue(&id("a", "b"), Duration::from_secs(20 * 365 * 86400), now)
        .unwrap();
    assert_eq!(cert.not_after, ca.not_after());

    let later = now + Duration::from_secs(11 * 365 * 86400);
    let err = Ca::load_at(dir.path(), later).unwrap_err().to_string();
    assert!(err.contains(CA_CERT) && err.contains("expired"), "{err}");
}

#[test]
fn load_errors_name_the_file_and_the_problem() {
    let dir = TempDir::new("errors");
    let p = dir.path();
    init(p).unwrap();
    let other = TempDir::new("errors-other");
    init(other.path()).unwrap();

    let check = |expect_file: &str, expect: &str| {
        let err = Ca::load(p).unwrap_err().to_string();
        assert!(err.contains(expect_file) && err.contains(expect), "{err}");
    };

    fs::rename(p.join(ROOT_CERT), p.join("saved")).unwrap();
    check(ROOT_CERT, "missing");
    fs::write(p.join(ROOT_CERT), "hello, not a certificate\n").unwrap();
    check(ROOT_CERT, "no PEM 'CERTIFICATE' block");
    fs::write(p.join(ROOT_CERT), "-----BEGIN CERTIFICATE-----\n!!!\n").unwrap();
    check(ROOT_CERT, "not valid PEM");
    fs::rename(p.join("saved"), p.join(ROOT_CERT)).unwrap();

    // Key of another CA.
    let own_key = fs::read(p.join(CA_KEY)).unwrap();
    fs::write(p.join(CA_KEY), fs::read(other.path().join(CA_KEY)).unwrap()).unwrap();
    check(CA_KEY, "does not match");
    fs::write(
        p.join(CA_KEY),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    check(CA_KEY, "no private key found");
    fs::write(p.join(CA_KEY), own_key).unwrap();

    // Roots of another CA: the chain does not lead to a trust anchor.
    let own_root = fs::read(p.join(ROOT_CERT)).unwrap();
    fs::write(
        p.join(ROOT_CERT),
        fs::read(other.path().join(ROOT_CERT)).unwrap(),
    )
    .unwrap();
    check(ROOT_CERT, "do not lead to a trust anchor");
    fs::write(p.join(ROOT_CERT), own_root).unwrap();

    // A workload (non-CA) certificate as ca-cert.pem.
    let ca = Ca::load(p).unwrap();
    let leaf = ca
        .issue(&id("a", "b"), Duration::from_secs(60), SystemTime::now())
        .unwrap();
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64(leaf.leaf())
    );
    fs::write(p.join(CA_CERT), pem).unwrap();
    check(CA_CERT, "is not a CA certificate");
}

/// Minimal standard base64 so the test needs no extra crate.
fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An RSA root in the plug-in layout, with the key as PKCS#8 or (converted by openssl) PKCS#1.
fn rsa_ca_dir(dir: &Path, pkcs1: bool) {
    openssl_rsa_root(dir, "root");
    if pkcs1 {
        openssl(
            dir,
            &["rsa", "-in", "root-key.pem", "-traditional", "-out", CA_KEY],
        );
        assert!(fs::read_to_string(dir.join(CA_KEY))
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    } else {
        fs::copy(dir.join("root-key.pem"), dir.join(CA_KEY)).unwrap();
    }
    for f in [CA_CERT, ROOT_CERT, CERT_CHAIN] {
        fs::copy(dir.join("root.pem"), dir.join(f)).unwrap();
    }
}

#[test]
fn rsa_ca_pkcs8_and_pkcs1() {
    for pkcs1 in [false, true] {
        let dir = TempDir::new("rsa");
        rsa_ca_dir(dir.path(), pkcs1);
        let ca = Ca::load(dir.path()).unwrap();
        let now = SystemTime::now();
        let cert = ca
            .issue(&id("ns", "rsa"), Duration::from_secs(600), now)
            .unwrap();
        verify(&ca, &cert, now).unwrap();
    }
}

/// Istio's usual production shape: RSA root, intermediate signing CA (here ECDSA with a SEC1
/// key), `cert-chain.pem` = intermediate + root.
#[test]
fn intermediate_ca_with_sec1_key() {
    let dir = TempDir::new("inter");
    let p = dir.path();
    openssl_rsa_root(p, "root");
    openssl(
        p,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            CA_KEY,
        ],
    );
    assert!(fs::read_to_string(p.join(CA_KEY))
        .unwrap()
        .contains("BEGIN EC PRIVATE KEY"));
    openssl(
        p,
        &[
            "req",
            "-new",
            "-key",
            CA_KEY,
            "-subj",
            "/O=ambit test/CN=intermediate",
            "-out",
            "int.csr",
        ],
    );
    fs::write(
        p.join("ext.cnf"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    openssl(
        p,
        &[
            "x509",
            "-req",
            "-in",
            "int.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root-key.pem",
            "-set_serial",
            "2",
            "-days",
            "30",
            "-extfile",
            "ext.cnf",
            "-out",
            CA_CERT,
        ],
    );
    fs::copy(p.join("root.pem"), p.join(ROOT_CERT)).unwrap();
    let chain = fs::read_to_string(p.join(CA_CERT)).unwrap()
        + &fs::read_to_string(p.join("root.pem")).unwrap();
    fs::write(p.join(CERT_CHAIN), chain).unwrap();

    let ca = Ca::load(p).unwrap();
    assert_eq!(ca.chain().len(), 2, "ca-cert not duplicated");
    let now = SystemTime::now();
    let cert = ca
        .issue(&id("ns", "inter"), Duration::from_secs(600), now)
        .unwrap();
    assert_eq!(cert.chain.len(), 3);
    verify(&ca, &cert, now).unwrap();

    // Without the intermediate in the chain a peer cannot build the path.
    let err = verify_chain(&ca, &[cert.leaf().clone()], now);
    assert!(err.is_err());
}
