//! `IstioCertificateService/CreateCertificate`: authenticate, authorize, check the CSR, sign.
//!
//! Every request ends in exactly one log line and one metric increment, signed or not, naming
//! the caller, its node, the identity asked for, the serial signed or the reason refused.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use prost_types::value::Kind;
use tonic::{Request, Response, Status};

use super::auth::{bearer, Authenticator};
use super::directory::Directory;
use super::policy::{Caller, Denied, Grant, Policy, IMPERSONATED_IDENTITY};
use super::proto::istio_certificate_service_server::IstioCertificateService;
use super::proto::{IstioCertificateRequest, IstioCertificateResponse};
use crate::identity::csr::CheckedCsr;
use crate::identity::Ca;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `signed`, `unauthenticated`, `permission_denied`, `invalid_argument`, `unavailable`,
    /// `internal`.
    pub outcome: &'static str,
}

/// The CA service's metrics (prefix `ambit_ca`).
pub struct CaMetrics {
    registry: Registry,
    /// Requests by outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to answer a request, in seconds (authentication and lookups included).
    pub latency: Histogram,
}

impl Default for CaMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ambit_ca");
        let m = CaMetrics {
            requests: Family::default(),
            latency: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "CreateCertificate requests by outcome",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a CreateCertificate request",
            m.latency.clone(),
        );
        CaMetrics { registry, ..m }
    }
}

impl CaMetrics {
    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        match prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            Ok(()) => out,
            Err(e) => format!("# encoding failed: {e}\n"),
        }
    }
}

/// The service: the CA it signs with and the rules it signs by.
pub struct CaService {
    /// The signing CA (the only holder of its key).
    pub ca: Arc<Ca>,
    /// How callers are authenticated.
    pub auth: Authenticator,
    /// Where pod placement is looked up.
    pub directory: Directory,
    /// Who may have what signed.
    pub policy: Policy,
    /// Longest validity granted; also the validity when none is asked for.
    pub max_validity: Duration,
    /// Counters.
    pub metrics: Arc<CaMetrics>,
}

/// What is known about a request so far, for its log line.
#[derive(Default)]
struct Audit {
    caller: Option<Caller>,
    identity: Option<String>,
    cluster: Option<String>,
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let started = Instant::now();
        let mut audit = Audit::default();
        let result = self.sign(request, &mut audit).await;
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        let caller = audit.caller.as_ref().map(|c| c.to_string());
        let node = audit.caller.as_ref().and_then(|c| c.node.clone());
        let (caller, node) = (
            caller.as_deref().unwrap_or("-"),
            node.as_deref().unwrap_or("-"),
        );
        let identity = audit.identity.as_deref().unwrap_or("-");
        let cluster = audit.cluster.as_deref().unwrap_or("-");
        match result {
            Ok((response, serial, validity)) => {
                self.count("signed");
                tracing::info!(target: "ca_audit", outcome = "signed", caller, node, identity,
                    serial, validity_secs = validity.as_secs(), cluster, "certificate signed");
                Ok(Response::new(response))
            }
            Err(denied) => {
                self.count(denied.label());
                tracing::warn!(target: "ca_audit", outcome = denied.label(), caller, node,
                    identity, cluster, reason = %denied, "certificate refused");
                Err(denied.into())
            }
        }
    }
}

impl CaService {
    fn count(&self, outcome: &'static str) {
        self.metrics
            .requests
            .get_or_create(&RequestLabels { outcome })
            .inc();
    }

    async fn sign(
        &self,
        request: Request<IstioCertificateRequest>,
        audit: &mut Audit,
    ) -> Result<(IstioCertificateResponse, String, Duration), Denied> {
        let headers = request.metadata();
        audit.cluster = headers
            .get("clusterid")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let authorization = headers.get("authorization").map(|v| v.to_str());
        let authorization = match authorization {
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => {
                return Err(Denied::Unauthenticated(
                    "authorization header is not ASCII".into(),
                ))
            }
            None => None,
        };
        let token = bearer(authorization)?;
        let caller = self.auth.authenticate(token).await?;
        audit.caller = Some(caller.clone());
        let req = request.into_inner();
        let impersonated = impersonated_identity(&req)?;
        audit.identity = impersonated.map(String::from);
        let grant = self.policy.grant(&caller, impersonated)?;
        let identity = grant.identity().clone();
        audit.identity = Some(identity.to_string());
        if let Grant::OnNode { node, .. } = &grant {
            if !self.directory.hosts(node, &identity).await? {
                return Err(Denied::PermissionDenied(format!(
                    "caller {caller} on node {node} may not impersonate {identity}: no pod \
                     running as {identity} is scheduled on node {node}"
                )));
            }
        }
        let csr =
            CheckedCsr::parse(&req.csr).map_err(|e| Denied::InvalidArgument(e.to_string()))?;
        csr.require_identity(&identity)
            .map_err(|e| Denied::InvalidArgument(e.to_string()))?;
        let validity = match u64::try_from(req.validity_duration) {
            Ok(secs) if secs > 0 => Duration::from_secs(secs).min(self.max_validity),
            _ => self.max_validity,
        };
        let leaf = self
            .ca
            .sign_csr(&csr, &identity, validity, SystemTime::now())
            .map_err(|e| Denied::Internal(e.to_string()))?;
        let serial = match x509_parser::parse_x509_certificate(&leaf.chain[0]) {
            Ok((_, x)) => x.raw_serial_as_string(),
            Err(e) => return Err(Denied::Internal(format!("re-parsing the leaf: {e}"))),
        };
        let mut chain: Vec<_> = leaf.chain.iter().map(|c| to_pem(c)).collect();
        // Istio's response ends with the root; add it unless the chain file already did.
        if let Some(root) = self.ca.root_certs().first() {
            if leaf.chain.last() != Some(root) {
                chain.push(to_pem(root));
            }
        }
        let granted = leaf
            .not_after
            .duration_since(leaf.issued_at)
            .unwrap_or_default();
        Ok((
            IstioCertificateResponse { cert_chain: chain },
            serial,
            granted,
        ))
    }
}

/// The `ImpersonatedIdentity` string of the request's metadata, if any.
fn impersonated_identity(req: &IstioCertificateRequest) -> Result<Option<&str>, Denied> {
    let Some(value) = req
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
    else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(s)) => Ok(Some(s.as_str())),
        _ => Err(Denied::InvalidArgument(format!(
            "metadata {IMPERSONATED_IDENTITY} must be a string"
        ))),
    }
}

/// One PEM certificate with `\n` line ends (as istiod sends and as files on disk have).
fn to_pem(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der), config)
}
