//! ambit's one typed configuration: every data-path constant, and the typed settings of each
//! command, built from the command line by [`flags`].
//!
//! Constants that Istio fixes (ports, marks, the probe source) are here once and every module
//! reads them from here, so the rules, the listeners and the HBONE client can never disagree
//! about a port. Settings a user may change are fields of [`RunConfig`] / [`SidecarConfig`],
//! each with its flag, its default and its validation in [`flags`].

pub mod ca;
pub mod flags;

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

// ---- Ports (Istio ambient's, `DESIGN.md` §2) --------------------------------------------------

/// Outbound capture port in each pod netns: the pod's own connections, redirected by nat rules.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext capture port: connections to the pod from outside the mesh.
pub const INBOUND_PORT: u16 = 15006;
/// Inbound HBONE port (never redirected).
pub const HBONE_PORT: u16 = 15008;
/// Ports that must never be a proxied destination: reaching them through the proxy would loop.
pub const PROXY_PORTS: [u16; 3] = [OUTBOUND_PORT, INBOUND_PORT, HBONE_PORT];
/// Admin endpoint (loopback only).
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:15000";
/// Prometheus metrics endpoint (Istio's merged-metrics port).
pub const DEFAULT_METRICS_ADDR: &str = "[::]:15020";
/// Readiness endpoint (`/healthz/ready`).
pub const DEFAULT_READINESS_ADDR: &str = "[::]:15021";
/// Istio's status port (metrics), excluded from sidecar inbound capture.
pub const STATUS_PORT: u16 = 15020;
/// Ports Istio's sidecar rules exclude from inbound capture before any user list:
/// Envoy's Prometheus port and the readiness port.
pub const SIDECAR_EXCLUDED_INBOUND_PORTS: [u16; 2] = [15090, 15021];

// ---- HTTP endpoints (admin, metrics, readiness) -----------------------------------------------
// Metrics and readiness listen on every node address, so anyone on the network can open
// connections to them. Their clients (kubelet probes, Prometheus) send one small GET at once
// and read a reply of at most a few MiB, so anything slower or larger is not a client and is
// bounded instead of being held forever.

/// A client must send its whole request head within this. Kubelet probes time out after 1 s
/// by default and Prometheus sends its request at once, so 5 s only ever cuts idle or
/// trickling connections.
pub const ENDPOINT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection to an endpoint lives, reply included: bounds a client that reads the
/// reply slowly. Above Prometheus' default scrape timeout (10 s).
pub const ENDPOINT_CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// Connections one endpoint server holds at once. At the cap a new connection is still
/// accepted and the oldest connection that has not sent a request is closed instead (the
/// oldest of all if every one has), so a flood of idle connections costs at most this many
/// descriptors and never locks out the next probe or scrape.
pub const ENDPOINT_MAX_CONNECTIONS: usize = 64;
/// Largest request head (request line and headers) in bytes; larger gets 431. Also the read
/// buffer size, hyper's smallest (8 KiB): a GET from a probe or a scraper is a few hundred.
pub const ENDPOINT_MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Most header fields in a request (Prometheus sends about 5).
pub const ENDPOINT_MAX_HEADERS: usize = 32;

// ---- Marks and routing ------------------------------------------------------------------------

/// Mark on every daemon socket in a pod netns (`SO_MARK`, Istio's 1337); the rules skip it.
pub const MARK: u32 = 0x539;
/// Mask applied to [`MARK`] and [`CONNMARK`] in rules.
pub const MARK_MASK: u32 = 0xfff;
/// Connmark of inbound connections the proxy opened to the app, so replies come back to it.
pub const CONNMARK: u32 = 0x111;
/// Routing table holding the local default route for connmarked replies.
pub const ROUTE_TABLE: u32 = 100;
/// Preference of the `fwmark 0x111/0xfff lookup 100` ip rule.
pub const RULE_PREF: u32 = 32764;
/// Source address kubelet probes are SNATed to on the node; never captured.
pub const PROBE_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 127);
/// IPv6 kubelet probe source.
pub const PROBE_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(
    0xfd16, 0x9254, 0x7127, 0x1337, 0xffff, 0xffff, 0xffff, 0xffff,
);

// ---- Sidecar mode -----------------------------------------------------------------------------

/// The proxy user of sidecar mode; its traffic leaves by owner match.
pub const PROXY_UID: u32 = 1337;
/// The proxy group of sidecar mode.
pub const PROXY_GID: u32 = 1337;
/// Source of a sidecar's connections to the app (IPv4), which the rules return on `lo`
/// (Envoy's inbound passthrough address).
pub const SIDECAR_INBOUND_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// Source of a sidecar's connections to the app (IPv6).
pub const SIDECAR_INBOUND_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

// ---- HBONE and HTTP/2 -------------------------------------------------------------------------

/// ALPN protocol of HBONE connections.
pub const HBONE_ALPN: &[u8] = b"h2";
/// Per-stream flow-control window: large enough for a fast single stream across nodes
/// (ztunnel's default too).
pub const H2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection window: several streams' worth, so one slow stream cannot stall the rest.
pub const H2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest DATA frame we accept.
pub const H2_MAX_FRAME: u32 = 1024 * 1024;
/// Streams opened on one pooled connection before another connection is dialled.
pub const POOL_MAX_STREAMS_PER_CONNECTION: usize = 100;
/// Streams a server accepts concurrently on one connection.
pub const H2_SERVER_MAX_STREAMS: u32 = 200;
/// Deadline for TCP connect plus TLS and HTTP/2 handshakes to a peer.
pub const HBONE_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dial to an upstream (app or passthrough destination) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often idle pooled HBONE connections are looked for.
pub const POOL_EVICT_INTERVAL: Duration = Duration::from_secs(1);
/// Default seconds an unused pooled HBONE connection stays open.
pub const DEFAULT_POOL_IDLE_SECS: u64 = 60;

/// Deadline for the TLS and HTTP/2 handshakes of an accepted 15008 connection: a client that
/// opens TCP and says nothing is dropped after this.
pub const HBONE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// 15008 connections of one pod that may be in their handshake at once; beyond it new ones are
/// closed at accept, so a flood against one pod cannot take the node's file descriptors.
pub const MAX_PENDING_HANDSHAKES_PER_POD: usize = 256;
/// 15008 connections from one source address that may be in their handshake at once, across
/// every pod of the node, so one client cannot starve the others.
pub const MAX_PENDING_HANDSHAKES_PER_SOURCE: usize = 64;
/// Largest HTTP/2 header block accepted (a CONNECT needs a few hundred bytes).
pub const H2_MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// Streams reset by the client before we accepted them, tolerated at once (rapid-reset bound).
pub const H2_MAX_PENDING_ACCEPT_RESETS: usize = 100;
/// Streams we reset that may still be pending at once.
pub const H2_MAX_CONCURRENT_RESETS: usize = 100;
/// HTTP/2 PING interval on idle and busy HBONE connections (ztunnel's 10 s).
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(10);
/// A PING not answered within this closes the connection: a dead peer is detected within
/// [`H2_PING_INTERVAL`] + this, about 30 s (ztunnel's 20 s).
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a draining daemon lets live connections finish after SIGTERM (`--drain-secs`).
pub const DEFAULT_DRAIN_SECS: u64 = 30;

// ---- Sockets and copying ----------------------------------------------------------------------

/// Backlog of the capture listeners; connections queue here while the daemon is busy.
pub const LISTEN_BACKLOG: i32 = 1024;
/// TCP keepalive on every proxied socket: idle time before the first probe. Long enough not
/// to wake idle apps, short enough that a vanished peer is freed within minutes, not hours.
pub const TCP_KEEPALIVE_TIME: Duration = Duration::from_secs(120);
/// TCP keepalive: interval between probes.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// TCP keepalive: unanswered probes before the connection is dropped.
pub const TCP_KEEPALIVE_RETRIES: u32 = 4;
/// TCP copy: first buffer (most connections are small).
pub const COPY_INITIAL_BUFFER: usize = 4 * 1024;
/// TCP copy: buffer once a connection has moved [`COPY_GROW_AFTER_MEDIUM`] bytes.
pub const COPY_MEDIUM_BUFFER: usize = 16 * 1024;
/// TCP copy: buffer for bulk transfers, after [`COPY_GROW_AFTER_LARGE`] bytes.
pub const COPY_LARGE_BUFFER: usize = 256 * 1024;
/// Bytes after which a TCP copy grows to [`COPY_MEDIUM_BUFFER`].
pub const COPY_GROW_AFTER_MEDIUM: u64 = 64 * 1024;
/// Bytes after which a TCP copy grows to [`COPY_LARGE_BUFFER`].
pub const COPY_GROW_AFTER_LARGE: u64 = 4 * 1024 * 1024;
/// Capacity asked for each splice pipe (the kernel's default is 64 KiB); one pipe per
/// direction of a plain TCP connection, created when the direction first has data.
pub const SPLICE_PIPE_SIZE: usize = 256 * 1024;
/// HBONE copy: first read size from TCP into the tunnel.
pub const TUNNEL_INITIAL_READ: usize = 4 * 1024;
/// HBONE copy: read size for bulk transfers.
pub const TUNNEL_BULK_READ: usize = 256 * 1024;
/// Bytes after which an HBONE copy reads [`TUNNEL_BULK_READ`] at a time.
pub const TUNNEL_BULK_AFTER: u64 = 256 * 1024;

// ---- Control plane ----------------------------------------------------------------------------

/// Longest wait between retries of a pod that failed to enroll.
pub const MAX_ENROLL_BACKOFF: Duration = Duration::from_secs(30);
/// First pause before listing an Istio policy kind again after the API server said it does
/// not serve it (CRD not installed); doubled on each further `404`.
pub const CRD_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest such pause: how long installing Istio's CRDs can take to be noticed.
pub const CRD_RETRY_MAX: Duration = Duration::from_secs(30);
/// Default lifetime of a workload certificate (Istio's default too); rotated at half-life.
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Trust domain of SPIFFE identities unless configured otherwise (Kubernetes' and Istio's).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
// ---- CA service (`ambit ca serve`) --------------------------------------------------------------

/// Port of the CA service's gRPC API (istiod's CA port too).
pub const CA_PORT: u16 = 15012;
/// Default address of `ambit ca serve`.
pub const DEFAULT_CA_LISTEN_ADDR: &str = "[::]:15012";
/// Default metrics/readiness address of `ambit ca serve` (istiod's monitoring port).
pub const DEFAULT_CA_METRICS_ADDR: &str = "[::]:15014";
/// ALPN of the gRPC connection to the CA service.
pub const GRPC_ALPN: &[u8] = b"h2";
/// Audience a node's ServiceAccount token must carry for the CA (Istio's too).
pub const DEFAULT_CA_TOKEN_AUDIENCE: &str = "istio-ca";
/// The `clusterid` header sent to the CA (istiod's default cluster name); also the cluster
/// named in the `source_cluster`/`destination_cluster` metric labels.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
/// DNS domain of the cluster: a Service's host name is `name.namespace.svc.<domain>`, as the
/// `destination_service` metric label, the access log and the config dump name it.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// ServiceAccount of the ambit DaemonSet: trusted by the CA to ask for the identities of the
/// pods on its node.
pub const DEFAULT_TRUSTED_NODE_ACCOUNT: &str = "istio-system/ambit";
/// Default longest lifetime the CA service grants.
pub const DEFAULT_CA_MAX_VALIDITY: Duration = DEFAULT_CERT_VALIDITY;
/// How long a CRL signed by `ambit ca revoke` is valid (its nextUpdate). Long, because a
/// node refuses to load an expired CRL and the CA has no schedule re-signing it: re-sign with
/// `ambit ca revoke --ca-dir DIR` (no serial) well before it runs out.
pub const DEFAULT_CRL_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How often a proxy checks its `--ca-crl` file for a new version. The file is small and
/// only re-parsed when its bytes change, so a short period costs one read per second.
pub const CRL_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Namespace label choosing the inbound mTLS mode of its pods (ambit's own shorthand).
pub const MTLS_MODE_LABEL: &str = "ambit.io/mtls-mode";
/// Istio's default root namespace (`meshConfig.rootNamespace`): policies there without a
/// selector apply mesh-wide.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// Which tool installs the redirect rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Backend {
    /// `iptables-restore` / `ip6tables-restore` (either the legacy or the nft flavour).
    Iptables,
    /// Native `nft` tables `inet istio-ambient-nat` and `inet istio-ambient-mangle`.
    Nftables,
}

/// How bytes move between the two TCP sockets of a plain (not HBONE) connection: outbound
/// passthrough and inbound plaintext.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum TcpCopy {
    /// `splice(2)` through a pipe: the bytes never enter user space.
    #[default]
    Splice,
    /// `read`/`write` through a buffer in the process.
    Buffered,
}

/// How the daemon writes its log lines (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event: time, level, target, message, `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line: `level`, `time`, `scope` (the target), `message` and every
    /// field under its own name (ztunnel's layout, so the same log pipeline parses both).
    Json,
}

/// Log lines held for the writer thread before new ones are dropped (and counted): the
/// data path never waits for stderr. At about 400 bytes a line, at most ~50 MiB.
pub const LOG_BUFFERED_LINES: usize = 128 * 1024;
/// Which key-exchange groups HBONE's mutual TLS offers (client) and accepts (server); the
/// groups themselves are `identity::tls::kx_groups`'.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum TlsPolicy {
    /// Post-quantum hybrid X25519MLKEM768 preferred, classical groups (X25519, P-256, P-384)
    /// as fallback: quantum-safe with peers that offer it (ambit, ztunnel as a server,
    /// Linkerd) and still interoperable with peers that do not.
    #[default]
    Default,
    /// X25519MLKEM768 only, like ztunnel's `COMPLIANCE_POLICY=pqc`: a peer without it is
    /// refused, so no session key ever rests on classical key exchange alone.
    Pqc,
    /// Classical groups only: for comparison (the key-exchange bench) and for a peer whose
    /// network mishandles the larger post-quantum handshake.
    Classical,
}

impl TlsPolicy {
    /// The flag value (`default`, `pqc`, `classical`).
    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicy::Default => "default",
            TlsPolicy::Pqc => "pqc",
            TlsPolicy::Classical => "classical",
        }
    }
}

impl fmt::Display for TlsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend name that is neither `iptables` nor `nftables`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown rule backend {0:?} (expected \"iptables\" or \"nftables\")")]
pub struct UnknownBackend(pub String);

impl FromStr for Backend {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "iptables" => Ok(Backend::Iptables),
            "nftables" => Ok(Backend::Nftables),
            other => Err(UnknownBackend(other.to_string())),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Iptables => "iptables",
            Backend::Nftables => "nftables",
        })
    }
}

/// Inbound plaintext policy of a pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum MtlsMode {
    /// Plaintext on 15006 is accepted besides HBONE.
    #[default]
    Permissive,
    /// Only HBONE is accepted; plaintext is refused.
    Strict,
}

impl MtlsMode {
    /// Parses a label value (`strict` / `permissive`), `None` for anything else.
    pub fn from_label(value: &str) -> Option<MtlsMode> {
        match value {
            "strict" => Some(MtlsMode::Strict),
            "permissive" => Some(MtlsMode::Permissive),
            _ => None,
        }
    }
}

/// How the daemon's own pods are recognised (never captured).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonIdentity {
    /// Namespace the daemon runs in.
    pub namespace: String,
    /// Value of the `app` label on the daemon's pods.
    pub app: String,
}

impl Default for DaemonIdentity {
    fn default() -> Self {
        DaemonIdentity {
            namespace: "istio-system".into(),
            app: "ambit".into(),
        }
    }
}

/// Settings of the reconciler.
#[derive(Clone, Debug)]
pub struct ReconcileConfig {
    /// This node's name; only pods scheduled here are captured.
    pub node: String,
    /// How the daemon's own pods are recognised.
    pub daemon: DaemonIdentity,
    /// Rule backend.
    pub backend: Backend,
    /// How often the rules of captured pods are checked for drift.
    pub verify_interval: Duration,
    /// Trust domain of the mesh's identities.
    pub trust_domain: String,
    /// Inbound plaintext policy unless a PeerAuthentication or namespace label says otherwise.
    pub default_mtls: MtlsMode,
    /// Istio's root namespace: where mesh-wide policies live.
    pub root_namespace: String,
    /// How long an unused pooled HBONE connection stays open.
    pub pool_idle: Duration,
    /// Where the host's /proc is (for finding pod namespaces by cgroup).
    pub host_proc: PathBuf,
    /// Where named network namespaces are pinned (fallback discovery by pod IP).
    pub netns_dir: PathBuf,
    /// Only pinned namespaces whose names start with this are considered by the fallback.
    pub netns_prefix: Option<String>,
    /// Where the daemon remembers what it captured, across restarts (`None`: nowhere).
    pub state_dir: Option<PathBuf>,
}

/// Everything `ambit run` needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Reconciler settings (node, backend, ...).
    pub reconcile: ReconcileConfig,
    /// Where pods, namespaces and services come from.
    pub source: Source,
    /// How often the workload file is checked for changes.
    pub poll_interval: Duration,
    /// Admin endpoint; must be a loopback address.
    pub admin_addr: SocketAddr,
    /// Metrics endpoint.
    pub metrics_addr: SocketAddr,
    /// Readiness endpoint.
    pub readiness_addr: SocketAddr,
    /// Worker threads of the data runtime.
    pub data_threads: usize,
    /// Where workload certificates come from.
    pub ca: ca::CaSource,
    /// The CA's revocation list, watched (`--ca-crl`).
    pub ca_crl: Option<PathBuf>,
    /// Lifetime of issued workload certificates.
    pub cert_validity: Duration,
    /// Longest live connections may run on after SIGTERM before they are cut.
    pub drain: Duration,
    /// How plain TCP connections are copied.
    pub tcp_copy: TcpCopy,
    /// Whether a new HBONE stream carries the client's first bytes before the peer's 200.
    pub hbone_early_data: bool,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// The cluster this node belongs to (`--cluster-id`), named in metrics.
    pub cluster_id: String,
    /// Key-exchange groups of HBONE TLS.
    pub tls_policy: TlsPolicy,
}

/// The workload source.
#[derive(Clone, Debug)]
pub enum Source {
    /// A local JSON file, watched for changes (the lab's and the demo's default).
    File(PathBuf),
    /// The Kubernetes API, through a kubeconfig or the in-cluster service account.
    Kube {
        /// Kubeconfig path; `None` for in-cluster configuration.
        kubeconfig: Option<PathBuf>,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Kube {
                kubeconfig: Some(p),
            } => write!(f, "kubernetes ({})", p.display()),
            Source::Kube { kubeconfig: None } => write!(f, "kubernetes (in-cluster)"),
        }
    }
}

/// Settings of `ambit sidecar`.
#[derive(Clone, Debug)]
pub struct SidecarConfig {
    /// The pod this sidecar serves, as `namespace/name`.
    pub pod: String,
    /// Workload file (for the directory of destinations).
    pub workloads: PathBuf,
    /// Where the certificate comes from (the sidecar asks for its own identity).
    pub ca: ca::CaSource,
    /// The CA's revocation list, watched (`--ca-crl`).
    pub ca_crl: Option<PathBuf>,
    /// Trust domain.
    pub trust_domain: String,
    /// The proxy user the process runs as once set up.
    pub uid: u32,
    /// The proxy group.
    pub gid: u32,
    /// Rule backend.
    pub backend: Backend,
    /// Admin endpoint (loopback of the pod).
    pub admin_addr: SocketAddr,
    /// Readiness endpoint (`/healthz/ready`; excluded from capture by the rules).
    pub readiness_addr: SocketAddr,
    /// Worker threads (a sidecar is small: Envoy's default concurrency is 2).
    pub threads: usize,
    /// Workload-file poll interval.
    pub poll_interval: Duration,
    /// How plain TCP connections are copied.
    pub tcp_copy: TcpCopy,
    /// Whether a new HBONE stream carries the client's first bytes before the peer's 200.
    pub hbone_early_data: bool,
    /// The cluster the pod belongs to (`--cluster-id`), named in metrics.
    pub cluster_id: String,
    /// Key-exchange groups of HBONE TLS.
    pub tls_policy: TlsPolicy,
}

/// Settings of `ambit uninstall`: which pods to release and how to find their namespaces.
#[derive(Clone, Debug)]
pub struct UninstallConfig {
    /// The daemon's state directory: every pod remembered there is released.
    pub state_dir: Option<PathBuf>,
    /// Besides the remembered pods, every pod of `node` that this source lists.
    pub source: Option<Source>,
    /// This node's name (needed with a source).
    pub node: Option<String>,
    /// Where the host's /proc is (finding pod namespaces by cgroup).
    pub host_proc: PathBuf,
    /// Where named network namespaces are pinned.
    pub netns_dir: PathBuf,
    /// Only pinned namespaces whose names start with this are considered.
    pub netns_prefix: Option<String>,
    /// The admin endpoint of a daemon on this node: if something answers there, a daemon
    /// still runs and would put the rules back, so uninstall refuses unless `force`.
    pub admin_addr: SocketAddr,
    /// Go on although a daemon seems to run.
    pub force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names() {
        assert_eq!("iptables".parse::<Backend>(), Ok(Backend::Iptables));
        assert_eq!("nftables".parse::<Backend>(), Ok(Backend::Nftables));
        let err = "nft".parse::<Backend>().unwrap_err();
        assert!(err
            .to_string()
            .contains("expected \"iptables\" or \"nftables\""));
        assert_eq!(Backend::Nftables.to_string(), "nftables");
    }

    #[test]
    fn mtls_labels() {
        assert_eq!(MtlsMode::from_label("strict"), Some(MtlsMode::Strict));
        assert_eq!(
            MtlsMode::from_label("permissive"),
            Some(MtlsMode::Permissive)
        );
        assert_eq!(MtlsMode::from_label("STRICT"), None);
    }
}
