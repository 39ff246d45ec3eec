//! The CA service client: an [`Issuer`] that generates each key locally (ECDSA P-256), sends
//! only a CSR, and gets back the signed chain. It speaks Istio's API the way ztunnel does, so
//! it works against `ambit ca serve` and against istiod alike:
//!
//! - `metadata.ImpersonatedIdentity` = the workload identity asked for (node proxies);
//! - headers `authorization: Bearer <token>` (the token file is re-read per request, since
//!   projected tokens rotate) and `clusterid: <cluster>`;
//! - TLS 1.3 to the service, verified against `--ca-root` and the service's DNS name.
//!
//! Requests are bounded ([`MAX_CONCURRENT_ISSUES`] in flight) and time out, so an unreachable
//! CA costs a pod its enrollment attempt, never the daemon its progress.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use prost_types::value::Kind;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::client::TlsStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};

use super::policy::IMPERSONATED_IDENTITY;
use super::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use super::proto::IstioCertificateRequest;
use crate::identity::csr::new_request;
use crate::identity::issuer::{IssueFuture, Issuer};
use crate::identity::manager::MAX_CONCURRENT_ISSUES;
use crate::identity::{tls, Identity, IdentityError, WorkloadCert};

/// Deadline to open a connection to the CA service.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline for one request, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub use crate::config::ca::CaClientConfig;

/// A CA service client.
pub struct CaClient {
    config: CaClientConfig,
    client: IstioCertificateServiceClient<Channel>,
    roots: Arc<RootCertStore>,
    root_certs: Vec<CertificateDer<'static>>,
    limit: Semaphore,
}

impl CaClient {
    /// Reads the root file and prepares a (lazily connecting) channel.
    pub fn new(config: CaClientConfig) -> Result<CaClient, IdentityError> {
        let root_certs = read_roots(&config.root)?;
        let mut roots = RootCertStore::empty();
        for c in &root_certs {
            roots
                .add(c.clone())
                .map_err(|e| file_err(&config.root, e.to_string()))?;
        }
        let roots = Arc::new(roots);
        let channel = channel(
            &config.address,
            config.server_name.as_deref(),
            roots.clone(),
        )?;
        Ok(CaClient {
            client: IstioCertificateServiceClient::new(channel),
            config,
            roots,
            root_certs,
            limit: Semaphore::new(MAX_CONCURRENT_ISSUES),
        })
    }

    async fn request(&self, id: &Identity, validity: Duration) -> Result<WorkloadCert, String> {
        let (key, csr) = new_request(id)?;
        let token = std::fs::read_to_string(&self.config.token).map_err(|e| {
            format!(
                "cannot read the CA token {}: {e}",
                self.config.token.display()
            )
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(format!(
                "CA token file {} is empty",
                self.config.token.display()
            ));
        }
        let metadata = self.config.impersonate.then(|| prost_types::Struct {
            fields: BTreeMap::from([(
                IMPERSONATED_IDENTITY.to_string(),
                prost_types::Value {
                    kind: Some(Kind::StringValue(id.to_string())),
                },
            )]),
        });
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(validity.as_secs()).unwrap_or(i64::MAX),
            metadata,
        });
        let headers = request.metadata_mut();
        headers.insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| "the CA token is not a valid header value".to_string())?,
        );
        headers.insert(
            "clusterid",
            MetadataValue::try_from(self.config.cluster_id.as_str())
                .map_err(|_| "the cluster id is not a valid header value".to_string())?,
        );
        let asked_at = SystemTime::now();
        let _permit = self.limit.acquire().await.map_err(|e| e.to_string())?;
        let response = self
            .client
            .clone()
            .create_certificate(request)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        let mut chain = Vec::new();
        for pem in &response.cert_chain {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                chain.push(cert.map_err(|e| format!("response chain is not PEM: {e}"))?);
            }
        }
        // The response ends with the root; peers have it already, so it is not sent.
        while chain.len() > 1 && chain.last().is_some_and(|c| self.root_certs.contains(c)) {
            chain.pop();
        }
        self.verify(&chain)?;
        WorkloadCert::new(id, chain, key, asked_at).map_err(|e| e.to_string())
    }

    /// Checks the chain leads to our roots now, as peers will.
    fn verify(&self, chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let leaf = chain
            .first()
            .ok_or("empty certificate chain in the response")?;
        let parsed = ParsedCertificate::try_from(leaf).map_err(|e| e.to_string())?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            &chain[1..],
            UnixTime::now(),
            tls::provider().signature_verification_algorithms.all,
        )
        .map_err(|e| {
            format!(
                "the signed chain does not verify against {}: {e}",
                self.config.root.display()
            )
        })
    }
}

/// A lazily connecting gRPC channel to the CA service at `address` (`host:port`): TLS 1.3,
/// ALPN h2, the service's certificate verified against `roots` for `server_name` (default: the
/// host of `address`), with connect and request deadlines.
pub fn channel(
    address: &str,
    server_name: Option<&str>,
    roots: Arc<RootCertStore>,
) -> Result<Channel, IdentityError> {
    let config_err = |problem: String| IdentityError::Issue {
        identity: "-".into(),
        problem,
    };
    let (host, _) = split_host_port(address)?;
    let name = server_name.unwrap_or(host).to_string();
    let server_name = ServerName::try_from(name.clone())
        .map_err(|e| config_err(format!("CA server name {name:?}: {e}")))?;
    let mut tls_config = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls_config.alpn_protocols = vec![crate::config::GRPC_ALPN.to_vec()];
    let connector = Connector {
        address: address.to_string(),
        server_name,
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls_config)),
    };
    let uri = format!("https://{address}");
    let endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| config_err(format!("CA address {uri:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// Reads the PEM root file a client trusts.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, IdentityError> {
    let mut roots = RootCertStore::empty();
    for c in read_roots(path)? {
        roots.add(c).map_err(|e| file_err(path, e.to_string()))?;
    }
    Ok(Arc::new(roots))
}

impl Issuer for CaClient {
    fn issue<'a>(&'a self, id: &'a Identity, validity: Duration) -> IssueFuture<'a> {
        Box::pin(async move {
            self.request(id, validity)
                .await
                .map_err(|problem| IdentityError::Issue {
                    identity: id.to_string(),
                    problem: format!("CA service {}: {problem}", self.config.address),
                })
        })
    }

    fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    fn describe(&self) -> String {
        format!("CA service {}", self.config.address)
    }
}

/// Opens TCP, then TLS, to the CA service for tonic's channel.
#[derive(Clone)]
struct Connector {
    address: String,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.address).await?;
            tcp.set_nodelay(true)?;
            let tls = this.tls.connect(this.server_name.clone(), tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

fn split_host_port(address: &str) -> Result<(&str, u16), IdentityError> {
    let bad = |why: &str| IdentityError::Issue {
        identity: "-".into(),
        problem: format!("CA address {address:?}: {why}; expected HOST:PORT"),
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port = port.parse().map_err(|_| bad("bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host, port))
}

fn file_err(path: &Path, problem: String) -> IdentityError {
    IdentityError::CaFile {
        path: path.to_owned(),
        problem,
    }
}

fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(
            path,
            "no CERTIFICATE block; expected the mesh root".into(),
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            split_host_port("ambit-ca.istio-system.svc:15012").unwrap(),
            ("ambit-ca.istio-system.svc", 15012)
        );
        assert_eq!(
            split_host_port("[fd00::1]:15012").unwrap(),
            ("fd00::1", 15012)
        );
        for bad in ["nohost", ":15012", "h:port"] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
    }
}
