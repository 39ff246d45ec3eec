//! The CA service's gRPC API called directly (tonic client from the fabric namespace) against
//! `ambit ca serve` in the lab: node-scoped authorization (b), credentials (c), request
//! checks (d); refusals carry the right status and nothing is signed.
#![cfg(feature = "lab")]

mod support;

use std::time::{Duration, SystemTime};

use ambit::identity::csr::new_request;
use ambit::identity::Identity;
use ambit::lab::ca::TokenSpec;
use support::ca::*;
use support::*;
use tonic::Code;

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
