use std::time::{Duration, SystemTime};

use rcgen::RevocationReason;

use super::sign::revoke;
use super::*;
use crate::identity::ca::{init, CA_CRL};
use crate::identity::testutil::{id, TempDir};
use crate::identity::Ca;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn serial_of(cert: &crate::identity::WorkloadCert) -> Serial {
    Serial::from_bytes(&cert.serial)
}

fn load(dir: &std::path::Path, ca: &Ca) -> Result<CrlSet, CrlError> {
    let data = std::fs::read(dir.join(CA_CRL)).unwrap();
    CrlSet::parse(&data, ca.root_certs(), SystemTime::now())
}

#[test]
fn serials_parse_in_every_usual_spelling() {
    let want = Serial::from_bytes(&[0x3a, 0x5f, 0x09]);
    for s in [
        "3a5f09",
        "3A:5F:09",
        "serial=3A5F09",
        "0x3a5f09",
        "003a5f09",
        "a5f09",
    ] {
        let got: Serial = s.parse().unwrap();
        if s == "a5f09" {
            assert_eq!(got.to_string(), "0a5f09");
        } else {
            assert_eq!(got, want, "{s}");
        }
    }
    assert_eq!(want.to_string(), "3a5f09");
    for bad in ["", "xyz", "12 34", &"ab".repeat(22)] {
        let e = bad.parse::<Serial>().unwrap_err().to_string();
        assert!(e.contains("invalid serial number"), "{e}");
    }
}

#[test]
fn revoked_leaf_is_refused_and_others_pass() {
    let dir = TempDir::new("crl-revoke");
    let ca = init(dir.path()).unwrap();
    let now = SystemTime::now();
    let alice = ca.issue(&id("a", "alice"), DAY, now).unwrap();
    let bob = ca.issue(&id("b", "bob"), DAY, now).unwrap();

    let signed = revoke(
        dir.path(),
        &[serial_of(&alice)],
        Some(RevocationReason::KeyCompromise),
        DAY,
        now,
    )
    .unwrap();
    assert_eq!(signed.number, 1u32.into());
    assert_eq!(signed.added, vec![serial_of(&alice)]);

    let set = load(dir.path(), &ca).unwrap();
    assert_eq!((set.len(), set.revoked_count()), (1, 1));
    let e = set.check(&alice.chain).unwrap_err();
    match &e {
        CrlError::Revoked {
            subject, serial, ..
        } => {
            assert_eq!(subject, "spiffe://cluster.local/ns/a/sa/alice");
            assert_eq!(*serial, serial_of(&alice));
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("is revoked"), "{e}");
    set.check(&bob.chain).unwrap();

    // A second revocation keeps the first entry and bumps the number.
    let signed = revoke(dir.path(), &[serial_of(&bob)], None, DAY, now).unwrap();
    assert_eq!(signed.number, 2u32.into());
    assert_eq!(signed.revoked, 2);
    let set = load(dir.path(), &ca).unwrap();
    assert!(set.check(&alice.chain).is_err());
    assert!(set.check(&bob.chain).is_err());
    // Revoking again adds nothing; re-signing with no serial keeps the list.
    let signed = revoke(dir.path(), &[serial_of(&bob)], None, DAY, now).unwrap();
    assert!(signed.added.is_empty());
    let signed = revoke(dir.path(), &[], None, DAY, now).unwrap();
    assert_eq!((signed.number, signed.revoked), (4u32.into(), 2));
}

#[test]
fn a_crl_signed_by_another_ca_under_our_name_is_rejected() {
    let ours = TempDir::new("crl-ours");
    let ca = init(ours.path()).unwrap();
    let leaf = ca.issue(&id("a", "alice"), DAY, SystemTime::now()).unwrap();
    // Another CA dir whose certificate has our subject name but another key.
    let forger = TempDir::new("crl-forger");
    std::fs::create_dir_all(forger.path()).unwrap();
    for f in [
        "ca-cert.pem",
        "root-cert.pem",
        "cert-chain.pem",
        "ca-key.pem",
    ] {
        std::fs::copy(ours.path().join(f), forger.path().join(f)).unwrap();
    }
    let other = TempDir::new("crl-other");
    init(other.path()).unwrap();
    std::fs::copy(
        other.path().join("ca-key.pem"),
        forger.path().join("ca-key.pem"),
    )
    .unwrap();
    // Ca::load refuses a key that does not match, so sign the forged CRL directly.
    let key_pem = std::fs::read_to_string(forger.path().join("ca-key.pem")).unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(&ca.chain()[0], key).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let forged = rcgen::CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(1),
        crl_number: 1u64.into(),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&leaf.serial),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap();
    let e = CrlSet::parse(
        forged.pem().unwrap().as_bytes(),
        ca.root_certs(),
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(matches!(e, CrlError::BadSignature { .. }), "{e}");
}

#[test]
fn expired_malformed_and_empty_files() {
    let dir = TempDir::new("crl-bad");
    let ca = init(dir.path()).unwrap();
    let then = SystemTime::now() - 3 * DAY;
    revoke(dir.path(), &["01".parse().unwrap()], None, DAY, then).unwrap();
    let e = load(dir.path(), &ca).unwrap_err();
    assert!(matches!(e, CrlError::Expired { .. }), "{e}");
    assert!(e.to_string().contains("expired"), "{e}");

    for (data, want) in [
        (&b"garbage, not PEM"[..], "no PEM 'X509 CRL' block"),
        (
            b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
            "not a DER CertificateList",
        ),
        (b"-----BEGIN X509 CRL-----\nAA", "no PEM 'X509 CRL' block"),
    ] {
        let e = CrlSet::parse(data, ca.root_certs(), SystemTime::now()).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
    let empty = CrlSet::parse(b"\n", ca.root_certs(), SystemTime::now()).unwrap();
    assert!(empty.is_empty());
}

/// Istio's usual plug-in shape: `ca-cert.pem` is an intermediate under `root-cert.pem`.
fn intermediate_ca(dir: &std::path::Path) -> Ca {
    let root_dir = dir.join("root");
    init(&root_dir).unwrap();
    let root_pem = std::fs::read_to_string(root_dir.join("ca-cert.pem")).unwrap();
    let root_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(root_dir.join("ca-key.pem")).unwrap())
            .unwrap();
    let root = rcgen::Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ambit intermediate");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.signed_by(&key, &root).unwrap();
    let ca_dir = dir.join("ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::write(ca_dir.join("ca-cert.pem"), cert.pem()).unwrap();
    std::fs::write(ca_dir.join("ca-key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(ca_dir.join("root-cert.pem"), &root_pem).unwrap();
    std::fs::write(ca_dir.join("cert-chain.pem"), cert.pem() + &root_pem).unwrap();
    Ca::load(&ca_dir).unwrap()
}

#[test]
fn crl_of_an_intermediate_is_verified_against_the_presented_chain() {
    let dir = TempDir::new("crl-intermediate");
    let ca = intermediate_ca(dir.path());
    let ca_dir = dir.path().join("ca");
    let alice = ca.issue(&id("a", "alice"), DAY, SystemTime::now()).unwrap();
    let bob = ca.issue(&id("b", "bob"), DAY, SystemTime::now()).unwrap();
    revoke(&ca_dir, &[serial_of(&alice)], None, DAY, SystemTime::now()).unwrap();
    // Nodes trust only the root: the intermediate's CRL is checked against the chain.
    let set = load(&ca_dir, &ca).unwrap();
    assert!(matches!(
        set.check(&alice.chain),
        Err(CrlError::Revoked { .. })
    ));
    set.check(&bob.chain).unwrap();
    // Without the intermediate in the chain the CRL cannot be authenticated: it revokes
    // nothing (the handshake could not have verified such a chain anyway).
    set.check(&alice.chain[..1]).unwrap();

    // Another CA's CRL naming the same serial revokes nothing.
    let other = TempDir::new("crl-other-ca");
    init(other.path()).unwrap();
    revoke(
        other.path(),
        &[serial_of(&bob)],
        None,
        DAY,
        SystemTime::now(),
    )
    .unwrap();
    let data = std::fs::read(other.path().join(CA_CRL)).unwrap();
    let set = CrlSet::parse(&data, ca.root_certs(), SystemTime::now()).unwrap();
    assert_eq!(set.revoked_count(), 1);
    set.check(&bob.chain).unwrap();
}

/// Cost of the revocation check per handshake (ignored; `cargo test --release --lib
/// identity::crl::tests::check_cost -- --ignored --nocapture`): a CRL of 10 000 serials, chains
/// of leaf + CA certificate.
#[test]
#[ignore]
fn check_cost() {
    let dir = TempDir::new("crl-cost");
    let ca = init(dir.path()).unwrap();
    let serials: Vec<Serial> = (0..10_000u32)
        .map(|i| Serial::from_bytes(&(i + 1).to_be_bytes()))
        .collect();
    let t = std::time::Instant::now();
    revoke(dir.path(), &serials, None, DAY, SystemTime::now()).unwrap();
    let signed = t.elapsed();
    let t = std::time::Instant::now();
    let set = load(dir.path(), &ca).unwrap();
    let loaded = t.elapsed();
    let leaf = ca.issue(&id("a", "alice"), DAY, SystemTime::now()).unwrap();
    const N: u32 = 20_000;
    let t = std::time::Instant::now();
    for _ in 0..N {
        set.check(&leaf.chain).unwrap();
    }
    let per = t.elapsed() / N;
    println!(
        "10000 serials: sign {signed:?}, load {loaded:?}, check {per:?} per chain of {}",
        leaf.chain.len()
    );
}

#[test]
fn the_der_walk_reads_what_x509_parser_reads() {
    let dir = TempDir::new("crl-der");
    let ca = init(dir.path()).unwrap();
    let leaf = ca.issue(&id("a", "alice"), DAY, SystemTime::now()).unwrap();
    for cert in &leaf.chain {
        let (_, x) = X509Certificate::from_der(cert).unwrap();
        let (issuer, serial) = issuer_and_serial(cert).unwrap();
        assert_eq!(issuer, x.issuer().as_raw());
        assert_eq!(serial, x.raw_serial());
    }
    let der = leaf.chain[0].as_ref();
    for cut in [0, 1, 2, 10, der.len() / 2] {
        assert!(issuer_and_serial(&der[..cut]).is_none(), "cut at {cut}");
    }
    assert!(issuer_and_serial(b"\x30\x84\xff\xff\xff\xff").is_none());
}
