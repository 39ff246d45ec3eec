//! Command line: `ambit run`, `ambit lab …`, `ambit demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::app::{self, RunConfig};
use crate::reconcile::ReconcileConfig;
use crate::rules::Backend;
use crate::workload::enroll::DaemonIdentity;

/// ambit: node-level ambient service-mesh daemon.
#[derive(Parser, Debug)]
#[command(name = "ambit", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon for one node.
    Run(Box<RunArgs>),
    /// Build, inspect and remove local lab clusters made of network namespaces.
    #[command(subcommand)]
    Lab(crate::lab::cli::LabCommand),
    /// Build a 2-node lab, run ambit on both nodes, send traffic, print the flows, clean up.
    Demo(crate::demo::DemoArgs),
    /// Run the proxy as a sidecar of one pod (inside its network namespace): Istio's sidecar
    /// rules, then the proxy as UID/GID 1337. For comparing the two topologies.
    Sidecar(SidecarArgs),
    /// Manage the mesh CA.
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(Args, Debug)]
struct SidecarArgs {
    /// The pod served, as namespace/name (looked up in the workload file).
    #[arg(long)]
    pod: String,
    /// Workload file (pods, namespaces, services).
    #[arg(long)]
    workloads: PathBuf,
    /// Mesh CA directory (Istio plug-in layout).
    #[arg(long)]
    ca_dir: PathBuf,
    /// Trust domain.
    #[arg(long, default_value = crate::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Proxy user (the rules let its traffic through).
    #[arg(long, default_value_t = 1337)]
    uid: u32,
    /// Proxy group.
    #[arg(long, default_value_t = 1337)]
    gid: u32,
    /// Rule backend (the sidecar set is rendered for iptables).
    #[arg(long, default_value = "iptables", value_parser = parse_backend)]
    rules: Backend,
    /// Admin endpoint on the pod's loopback.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, default_value = "[::]:15021")]
    readiness: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create a new root CA in Istio's plug-in layout (refuses to overwrite).
    Init {
        /// Directory to write ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem into.
        dir: PathBuf,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Name of this node; only pods scheduled here are captured.
    #[arg(long, env = "AMBIT_NODE")]
    node: String,
    /// Local workload file (JSON: namespaces, pods, services). Either this or --kube.
    #[arg(
        long,
        env = "AMBIT_WORKLOADS",
        required_unless_present = "kube",
        conflicts_with = "kube"
    )]
    workloads: Option<PathBuf>,
    /// Learn pods, namespaces, Services and EndpointSlices from the Kubernetes API.
    #[arg(long)]
    kube: bool,
    /// Kubeconfig for --kube (default: the in-cluster service account).
    #[arg(long, env = "AMBIT_KUBECONFIG", requires = "kube")]
    kubeconfig: Option<PathBuf>,
    /// The host's /proc (mounted into the DaemonSet), scanned to find pod namespaces.
    #[arg(long, default_value = "/proc")]
    host_proc: PathBuf,
    /// Directory of pinned network namespaces, scanned by pod IP when the cgroup scan fails.
    #[arg(long, default_value = "/var/run/netns")]
    netns_dir: PathBuf,
    /// Only pinned namespaces whose names start with this are scanned (when several
    /// independent clusters share one machine, as labs do).
    #[arg(long)]
    netns_prefix: Option<String>,
    /// Directory where the daemon remembers what it captured, so that after a restart it can
    /// remove the rules of pods that left meanwhile (node-local, e.g. /var/run/ambit).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Redirect-rule backend.
    #[arg(long, default_value = "iptables", value_parser = parse_backend)]
    rules: Backend,
    /// Admin endpoint (loopback only).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Prometheus metrics endpoint.
    #[arg(long, default_value = "[::]:15020")]
    metrics: SocketAddr,
    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, default_value = "[::]:15021")]
    readiness: SocketAddr,
    /// How often the workload file is checked, in milliseconds.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// How often captured pods' rules are checked for drift, in seconds.
    #[arg(long, default_value_t = 10)]
    verify_secs: u64,
    /// Worker threads carrying traffic (default: one per CPU).
    #[arg(long)]
    data_threads: Option<usize>,
    /// Namespace of the daemon's own pods (never captured).
    #[arg(long, default_value = "istio-system")]
    daemon_namespace: String,
    /// Directory with the mesh CA in Istio's plug-in layout (ca-cert.pem, ca-key.pem,
    /// root-cert.pem, cert-chain.pem); create one with `ambit ca init <dir>`.
    #[arg(long, env = "AMBIT_CA_DIR")]
    ca_dir: PathBuf,
    /// Trust domain of the mesh's SPIFFE identities.
    #[arg(long, default_value = crate::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Inbound plaintext policy for pods whose namespace has no `ambit.io/mtls-mode` label:
    /// `permissive` accepts plaintext on 15006, `strict` accepts only HBONE.
    #[arg(long, default_value = "permissive", value_parser = ["permissive", "strict"])]
    mtls_mode: String,
    /// Lifetime of workload certificates, in seconds (rotated at half-life).
    #[arg(long, default_value_t = 24 * 3600)]
    cert_validity_secs: u64,
    /// Seconds an unused pooled HBONE connection stays open.
    #[arg(long, default_value_t = 60)]
    pool_idle_secs: u64,
}

fn parse_backend(s: &str) -> Result<Backend, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Run(args) => app::run(run_config(*args)),
        Command::Lab(cmd) => crate::lab::cli::run(cmd),
        Command::Demo(args) => crate::demo::run(args),
        Command::Sidecar(a) => crate::sidecar::run(crate::sidecar::SidecarConfig {
            pod: a.pod,
            workloads: a.workloads,
            ca_dir: a.ca_dir,
            trust_domain: a.trust_domain,
            uid: a.uid,
            gid: a.gid,
            backend: a.rules,
            admin_addr: a.admin,
            readiness_addr: a.readiness,
            threads: a.threads,
            poll_interval: Duration::from_millis(200),
        }),
        Command::Ca(CaCommand::Init { dir }) => crate::identity::ca::init(&dir)
            .map(|_| println!("CA created in {}", dir.display()))
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambit: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_config(a: RunArgs) -> RunConfig {
    RunConfig {
        reconcile: ReconcileConfig {
            node: a.node,
            daemon: DaemonIdentity {
                namespace: a.daemon_namespace,
                ..DaemonIdentity::default()
            },
            backend: a.rules,
            verify_interval: Duration::from_secs(a.verify_secs.max(1)),
            trust_domain: a.trust_domain,
            strict_by_default: a.mtls_mode == "strict",
            pool_idle: Duration::from_secs(a.pool_idle_secs),
            host_proc: a.host_proc,
            netns_dir: a.netns_dir,
            state_dir: a.state_dir,
            netns_prefix: a.netns_prefix,
        },
        source: match a.workloads {
            Some(path) => crate::app::Source::File(path),
            None => crate::app::Source::Kube {
                kubeconfig: a.kubeconfig,
            },
        },
        ca_dir: a.ca_dir,
        cert_validity: Duration::from_secs(a.cert_validity_secs.max(2)),
        poll_interval: Duration::from_millis(a.poll_ms.max(10)),
        admin_addr: a.admin,
        metrics_addr: a.metrics,
        readiness_addr: a.readiness,
        data_threads: a
            .data_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
