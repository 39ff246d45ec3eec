//! How a proxy reaches the CA, and the flags of `ambit ca serve`: plain settings, so that the
//! configuration depends on nothing else of ours. What is built from them (the CA client, the
//! service) lives in `crate::ca`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Args;

use super::{
    DEFAULT_CA_LISTEN_ADDR, DEFAULT_CA_MAX_VALIDITY, DEFAULT_CA_METRICS_ADDR,
    DEFAULT_CA_TOKEN_AUDIENCE, DEFAULT_CLUSTER_ID, DEFAULT_TRUSTED_NODE_ACCOUNT,
    DEFAULT_TRUST_DOMAIN,
};

/// Where the CA service is and how to authenticate to it.
#[derive(Clone, Debug)]
pub struct CaClientConfig {
    /// `host:port` of the service.
    pub address: String,
    /// PEM file with the root(s) the service's certificate (and issued chains) lead to.
    pub root: PathBuf,
    /// File holding the bearer token.
    pub token: PathBuf,
    /// Name to verify the service's certificate against (default: the host of `address`).
    pub server_name: Option<String>,
    /// `clusterid` header value.
    pub cluster_id: String,
    /// Send `ImpersonatedIdentity` (node proxies); a sidecar asks for its own identity.
    pub impersonate: bool,
}

/// Where a proxy gets its workload certificates.
#[derive(Clone, Debug)]
pub enum CaSource {
    /// The CA service (or istiod): CSRs over gRPC, keys stay local.
    Service(CaClientConfig),
    /// A CA directory with the private key on this machine. Development only: whoever holds
    /// it can mint any identity of the mesh.
    InsecureLocal(PathBuf),
}

/// How a proxy reaches the CA (`ambit run`, `ambit sidecar`).
#[derive(Args, Debug, Clone)]
pub struct CaClientArgs {
    /// CA service (`ambit ca serve`, or istiod) as HOST:PORT, e.g.
    /// ambit-ca.istio-system.svc:15012.
    #[arg(
        long,
        env = "AMBIT_CA_ADDRESS",
        required_unless_present = "insecure_local_ca_dir",
        conflicts_with = "insecure_local_ca_dir",
        requires_all = ["ca_root", "ca_token"]
    )]
    pub ca_address: Option<String>,
    /// PEM file with the mesh root(s): verifies the CA service and every peer.
    #[arg(long, env = "AMBIT_CA_ROOT")]
    pub ca_root: Option<PathBuf>,
    /// File with the bearer token presented to the CA (re-read per request), e.g. a projected
    /// ServiceAccount token with audience istio-ca.
    #[arg(long, env = "AMBIT_CA_TOKEN")]
    pub ca_token: Option<PathBuf>,
    /// Name the CA service's certificate must carry (default: the host of --ca-address).
    #[arg(long, env = "AMBIT_CA_SERVER_NAME")]
    pub ca_server_name: Option<String>,
    /// This cluster's name (istiod's cluster ID): sent to the CA as the `clusterid` header and
    /// named in the `source_cluster`/`destination_cluster` metric labels.
    #[arg(long, env = "AMBIT_CLUSTER_ID", default_value = DEFAULT_CLUSTER_ID)]
    pub cluster_id: String,
    /// INSECURE, development only: sign certificates in-process with the CA key in this
    /// directory (Istio plug-in layout) instead of asking a CA service.
    #[arg(long, env = "AMBIT_INSECURE_LOCAL_CA_DIR")]
    pub insecure_local_ca_dir: Option<PathBuf>,
    /// The CA's certificate revocation list (`ca-crl.pem`, PEM CRLs), watched for changes:
    /// peers presenting a revoked certificate are refused and live HBONE connections to them
    /// closed (docs/revocation.md). Absent file: nothing is revoked until it appears.
    #[arg(long, env = "AMBIT_CA_CRL")]
    pub ca_crl: Option<PathBuf>,
}

impl CaClientArgs {
    /// The source these flags name; `impersonate` for node proxies (one identity per pod).
    pub fn source(&self, impersonate: bool) -> anyhow::Result<CaSource> {
        if let Some(dir) = &self.insecure_local_ca_dir {
            return Ok(CaSource::InsecureLocal(dir.clone()));
        }
        let (Some(address), Some(root), Some(token)) =
            (&self.ca_address, &self.ca_root, &self.ca_token)
        else {
            anyhow::bail!(
                "--ca-address, --ca-root and --ca-token are required (or, for development \
                 only, --insecure-local-ca-dir)"
            );
        };
        Ok(CaSource::Service(CaClientConfig {
            address: address.clone(),
            root: root.clone(),
            token: token.clone(),
            server_name: self.ca_server_name.clone(),
            cluster_id: self.cluster_id.clone(),
            impersonate,
        }))
    }
}

/// Why a certificate is revoked (RFC 5280 reason codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RevokeReason {
    /// No reason given (code 0).
    Unspecified,
    /// The certificate's private key leaked (1).
    KeyCompromise,
    /// The CA's key leaked (2).
    CaCompromise,
    /// The subject changed (3).
    AffiliationChanged,
    /// Replaced by another certificate (4).
    Superseded,
    /// The workload is gone (5).
    CessationOfOperation,
    /// Privileges withdrawn (9).
    PrivilegeWithdrawn,
}

/// `ambit ca revoke`.
#[derive(Args, Debug, Clone)]
pub struct CaRevokeArgs {
    /// CA directory in Istio's plug-in layout (needs ca-key.pem); ca-crl.pem is rewritten there.
    #[arg(long, env = "AMBIT_CA_DIR")]
    pub ca_dir: PathBuf,
    /// Serial numbers to revoke, in hex (`openssl x509 -noout -serial`, `3a:5f:…` or `0x3a5f…`).
    /// None: re-sign the current list with a fresh nextUpdate.
    pub serials: Vec<String>,
    /// Reason recorded in the CRL entries.
    #[arg(long, value_enum)]
    pub reason: Option<RevokeReason>,
    /// Days until the new CRL's nextUpdate.
    #[arg(long, default_value_t = super::DEFAULT_CRL_VALIDITY.as_secs() / 86400,
        value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub validity_days: u64,
}

/// `ambit ca serve`.
#[derive(Args, Debug, Clone)]
pub struct CaServeArgs {
    /// CA directory in Istio's plug-in layout (ca-cert.pem, ca-key.pem, root-cert.pem,
    /// cert-chain.pem), e.g. the mounted `cacerts` Secret.
    #[arg(long, env = "AMBIT_CA_DIR")]
    pub ca_dir: PathBuf,
    /// gRPC (TLS) address.
    #[arg(long, default_value = DEFAULT_CA_LISTEN_ADDR)]
    pub listen: SocketAddr,
    /// Metrics (`/metrics`) and readiness (`/healthz/ready`) address, plain HTTP.
    #[arg(long, default_value = DEFAULT_CA_METRICS_ADDR)]
    pub metrics: SocketAddr,
    /// Trust domain of the identities signed.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Longest certificate lifetime granted, in seconds (also the default).
    #[arg(long, default_value_t = DEFAULT_CA_MAX_VALIDITY.as_secs())]
    pub max_validity: u64,
    /// Authenticate with TokenReview and locate pods through the Kubernetes API.
    #[arg(long, conflicts_with_all = ["node_tokens", "workloads"])]
    pub kube: bool,
    /// Kubeconfig for --kube (default: in-cluster).
    #[arg(long, requires = "kube")]
    pub kubeconfig: Option<PathBuf>,
    /// Audience a ServiceAccount token must be valid for (--kube); repeatable.
    #[arg(long = "token-audience", default_value = DEFAULT_CA_TOKEN_AUDIENCE)]
    pub token_audiences: Vec<String>,
    /// Without --kube: JSON file mapping each bearer token to
    /// {"node", "service_account": "ns/name"} (what the lab writes per node).
    #[arg(long, required_unless_present = "kube", requires = "workloads")]
    pub node_tokens: Option<PathBuf>,
    /// Without --kube: the workload file telling which pods run on which node.
    #[arg(long, required_unless_present = "kube")]
    pub workloads: Option<PathBuf>,
    /// ServiceAccounts (ns/name, comma separated) allowed to ask for the identities of the
    /// pods on their own node.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_TRUSTED_NODE_ACCOUNT)]
    pub trusted_node_accounts: Vec<String>,
    /// DNS names in the service's TLS certificate (comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ambit-ca.istio-system.svc,ambit-ca.istio-system.svc.cluster.local,ambit-ca.istio-system,ambit-ca"
    )]
    pub server_names: Vec<String>,
    /// IP addresses in the service's TLS certificate (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub server_ips: Vec<IpAddr>,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Copy each new version of `<ca-dir>/ca-crl.pem` that loads (signed by this CA, not
    /// expired) to this file, the one the proxies' --ca-crl reads (beside the distributed root).
    #[arg(long, env = "AMBIT_CA_PUBLISH_CRL")]
    pub publish_crl: Option<PathBuf>,
    /// With --kube: also publish it as the `ca-crl.pem` key of this ConfigMap
    /// (NAMESPACE/NAME; Istio's is istio-system/istio-ca-crl, which the DaemonSet mounts).
    #[arg(long, requires = "kube")]
    pub publish_crl_configmap: Option<String>,
}
