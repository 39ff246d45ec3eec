//! Helpers of the CA service tests: the lab's CA metrics, direct gRPC calls to it from the
//! fabric namespace, a lab with only the CA service running.

use std::collections::BTreeMap;
use std::path::Path;

use ambit::ca::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use ambit::ca::proto::IstioCertificateRequest;
use ambit::identity::csr::new_request;
use ambit::identity::Identity;
use ambit::lab::ca::{CA_SERVER_NAME, CA_SERVICE};
use ambit::lab::{Lab, LabSpec, READY_PORT};
use prost_types::value::Kind;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tonic::Code;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The ambit binary under test.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ambit"))
}

/// `ambit_ca_requests_total{outcome=...}` of the lab's CA service.
pub fn ca_count(lab: &Lab, outcome: &str) -> u64 {
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
pub struct Call {
    pub token: Option<String>,
    pub csr: String,
    pub impersonate: Option<String>,
    pub validity: i64,
}

impl Call {
    /// A well-formed request for `id` (fresh P-256 key) with `token`, impersonating `id`.
    pub fn for_identity(id: &str, token: Option<&str>) -> Call {
        let identity: Identity = id.parse().expect("identity");
        let (_key, csr) = new_request(&identity).expect("csr");
        Call {
            token: token.map(String::from),
            csr,
            impersonate: Some(id.into()),
            validity: 3600,
        }
    }

    pub fn send(self, lab: &Lab) -> Result<Vec<String>, tonic::Status> {
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
pub fn refused(result: Result<Vec<String>, tonic::Status>, code: Code, words: &[&str]) {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    for w in words {
        assert!(status.message().contains(w), "{w:?} not in {status:?}");
    }
}

/// A lab with the CA service running and no daemons; Kubernetes mode with the stand-in.
pub fn ca_lab(kube: bool, ca_args: &[String]) -> Lab {
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
pub fn leaf_validity(chain: &[String]) -> (i64, i64, Vec<String>) {
    let der = CertificateDer::from_pem_slice(chain[0].as_bytes()).expect("leaf PEM");
    let (_, x) = X509Certificate::from_der(&der).expect("leaf");
    let uris = ambit::identity::verify::uri_sans(&der).expect("SANs");
    (
        x.validity().not_before.timestamp(),
        x.validity().not_after.timestamp(),
        uris,
    )
}

pub fn process_reaches_ca_key(pid: u32, ca_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    // Whole arguments: `<lab>/ca-crl.pem` (the published CRL) merely starts like `<lab>/ca`.
    let names_dir = cmdline
        .split([' ', '='])
        .any(|a| Path::new(a).starts_with(ca_dir));
    if cmdline.contains("ca-key") || names_dir {
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
