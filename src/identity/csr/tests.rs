use super::*;
use crate::identity::testutil::{id, openssl, TempDir};

fn request_with(key_alg: &'static rcgen::SignatureAlgorithm, uris: &[&str]) -> String {
    let key = KeyPair::generate_for(key_alg).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI(Ia5String::try_from(*u).unwrap()))
        .collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// An RSA request made by the openssl CLI, as an RSA-keyed client would send it.
fn openssl_rsa_request(bits: u32, uri: &str) -> String {
    let d = TempDir::new("csr-rsa");
    openssl(
        d.path(),
        &[
            "req",
            "-new",
            "-newkey",
            &format!("rsa:{bits}"),
            "-nodes",
            "-keyout",
            "key.pem",
            "-subj",
            "/O=test",
            "-addext",
            &format!("subjectAltName=URI:{uri}"),
            "-out",
            "req.pem",
        ],
    );
    std::fs::read_to_string(d.path().join("req.pem")).unwrap()
}

#[test]
fn own_request_round_trips() {
    let who = id("ns1", "sa1");
    let (_key, pem) = new_request(&who).unwrap();
    let csr = CheckedCsr::parse(&pem).unwrap();
    assert_eq!(csr.uris(), [who.to_string()]);
    assert_eq!(csr.key_type(), "ECDSA P-256");
    csr.require_identity(&who).unwrap();
    let other = id("ns1", "sa2");
    let err = csr.require_identity(&other).unwrap_err();
    assert!(err.to_string().contains(&other.to_string()), "{err}");
    assert!(err.to_string().contains(&who.to_string()), "{err}");
}

#[test]
fn p384_and_rsa_2048_are_accepted() {
    let who = id("a", "b");
    let p384 = request_with(&rcgen::PKCS_ECDSA_P384_SHA384, &[&who.to_string()]);
    assert_eq!(CheckedCsr::parse(&p384).unwrap().key_type(), "ECDSA P-384");
    let rsa = CheckedCsr::parse(&openssl_rsa_request(2048, &who.to_string())).unwrap();
    assert_eq!(rsa.key_type(), "RSA 2048");
    rsa.require_identity(&who).unwrap();
}

#[test]
fn weak_and_unknown_keys_are_refused() {
    let err = CheckedCsr::parse(&openssl_rsa_request(1024, "spiffe://td/ns/a/sa/b")).unwrap_err();
    assert!(matches!(err, CsrError::KeyNotAllowed(_)), "{err}");
    assert!(err.to_string().contains("RSA 1024"), "{err}");
    let ed = request_with(&rcgen::PKCS_ED25519, &["spiffe://td/ns/a/sa/b"]);
    assert!(matches!(
        CheckedCsr::parse(&ed).unwrap_err(),
        CsrError::KeyNotAllowed(_)
    ));
}

#[test]
fn garbage_and_tampered_requests_are_refused() {
    assert!(matches!(
        CheckedCsr::parse("hello").unwrap_err(),
        CsrError::NotPem(_)
    ));
    let not_der = "-----BEGIN CERTIFICATE REQUEST-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE REQUEST-----\n";
    assert!(matches!(
        CheckedCsr::parse(not_der).unwrap_err(),
        CsrError::Malformed(_)
    ));
    // Flip one bit of the signed SAN: the self-signature no longer verifies.
    let who = id("a", "b");
    let (_k, pem) = new_request(&who).unwrap();
    let mut der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    let at = der
        .windows(6)
        .position(|w| w == b"spiffe")
        .expect("SAN in the DER");
    der[at] ^= 0x01;
    let d = TempDir::new("csr-tamper");
    std::fs::write(d.path().join("t.der"), &der).unwrap();
    openssl(
        d.path(),
        &["req", "-inform", "DER", "-in", "t.der", "-out", "t.pem"],
    );
    let tampered = std::fs::read_to_string(d.path().join("t.pem")).unwrap();
    let err = CheckedCsr::parse(&tampered).unwrap_err();
    assert!(matches!(err, CsrError::BadSignature(_)), "{err}");
}

#[test]
fn a_request_must_name_exactly_one_identity() {
    let who = id("a", "b");
    let two = request_with(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &[&who.to_string(), "spiffe://td/ns/x/sa/y"],
    );
    assert!(CheckedCsr::parse(&two)
        .unwrap()
        .require_identity(&who)
        .is_err());
    let none = request_with(&rcgen::PKCS_ECDSA_P256_SHA256, &[]);
    assert!(CheckedCsr::parse(&none)
        .unwrap()
        .require_identity(&who)
        .is_err());
}
