//! Command-line flags of the daemon's commands and their conversion into the typed settings of
//! [`super`].
//!
//! clap checks every value where it is parsed, so an error names the flag and the expected form
//! (`invalid value 'x' for '--rules <RULES>' [possible values: iptables, nftables]`); numbers
//! that must be positive are range-checked here rather than silently clamped later.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{
    Backend, DaemonIdentity, LogFormat, MtlsMode, ReconcileConfig, RunConfig, SidecarConfig,
    Source, TcpCopy, TlsPolicy, UninstallConfig, DEFAULT_ADMIN_ADDR, DEFAULT_CERT_VALIDITY,
    DEFAULT_DRAIN_SECS, DEFAULT_METRICS_ADDR, DEFAULT_POOL_IDLE_SECS, DEFAULT_READINESS_ADDR,
    DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN, PROXY_GID, PROXY_UID,
};

/// Flags of `ambit run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Name of this node; only pods scheduled here are captured.
    #[arg(long, env = "AMBIT_NODE")]
    pub node: String,
    /// Local workload file (JSON: namespaces, pods, services). Either this or --kube.
    #[arg(
        long,
        env = "AMBIT_WORKLOADS",
        required_unless_present = "kube",
        conflicts_with = "kube"
    )]
    pub workloads: Option<PathBuf>,
    /// Learn pods, namespaces, Services and EndpointSlices from the Kubernetes API.
    #[arg(long)]
    pub kube: bool,
    /// Kubeconfig for --kube (default: the in-cluster service account).
    #[arg(long, env = "AMBIT_KUBECONFIG", requires = "kube")]
    pub kubeconfig: Option<PathBuf>,
    /// The host's /proc (mounted into the DaemonSet), scanned to find pod namespaces.
    #[arg(long, default_value = "/proc")]
    pub host_proc: PathBuf,
    /// Directory of pinned network namespaces, scanned by pod IP when the cgroup scan fails.
    #[arg(long, default_value = "/var/run/netns")]
    pub netns_dir: PathBuf,
    /// Only pinned namespaces whose names start with this are scanned (when several
    /// independent clusters share one machine, as labs do).
    #[arg(long)]
    pub netns_prefix: Option<String>,
    /// Directory where the daemon remembers what it captured, so that after a restart it can
    /// remove the rules of pods that left meanwhile (node-local, e.g. /var/run/ambit).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Redirect-rule backend.
    #[arg(long, value_enum, default_value_t = Backend::Iptables)]
    pub rules: Backend,
    /// Admin endpoint (loopback only).
    #[arg(long, default_value = DEFAULT_ADMIN_ADDR)]
    pub admin: SocketAddr,
    /// Prometheus metrics endpoint.
    #[arg(long, default_value = DEFAULT_METRICS_ADDR)]
    pub metrics: SocketAddr,
    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, default_value = DEFAULT_READINESS_ADDR)]
    pub readiness: SocketAddr,
    /// How often the workload file is checked, in milliseconds (at least 10).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..))]
    pub poll_ms: u64,
    /// How often captured pods' rules are checked for drift, in seconds (at least 1).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub verify_secs: u64,
    /// Worker threads carrying traffic (default: one per CPU).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..1025))]
    pub data_threads: Option<u64>,
    /// Namespace of the daemon's own pods (never captured).
    #[arg(long, default_value = "istio-system")]
    pub daemon_namespace: String,
    /// Where workload certificates come from (the CA service, normally).
    #[command(flatten)]
    pub ca: super::ca::CaClientArgs,
    /// Trust domain of the mesh's SPIFFE identities.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Inbound plaintext policy where no PeerAuthentication (and no `ambit.io/mtls-mode`
    /// namespace label) sets one: `permissive` accepts plaintext on 15006, `strict` only HBONE.
    #[arg(long, value_enum, default_value_t = MtlsMode::Permissive)]
    pub mtls_mode: MtlsMode,
    /// Istio's root namespace (`meshConfig.rootNamespace`): AuthorizationPolicies and
    /// PeerAuthentications there without a selector apply to the whole mesh.
    #[arg(long, default_value = DEFAULT_ROOT_NAMESPACE, value_parser = namespace_name)]
    pub root_namespace: String,
    /// Lifetime of workload certificates, in seconds (at least 2; rotated at half-life).
    #[arg(long, default_value_t = DEFAULT_CERT_VALIDITY.as_secs(),
          value_parser = clap::value_parser!(u64).range(2..))]
    pub cert_validity_secs: u64,
    /// Seconds an unused pooled HBONE connection stays open.
    #[arg(long, default_value_t = DEFAULT_POOL_IDLE_SECS)]
    pub pool_idle_secs: u64,
    /// On SIGTERM: seconds live connections may run on (listeners closed, GOAWAY sent to HBONE
    /// peers) before they are cut and the daemon exits.
    #[arg(long, default_value_t = DEFAULT_DRAIN_SECS)]
    pub drain_secs: u64,
    /// How connections are carried.
    #[command(flatten)]
    pub data_path: DataPathArgs,
    /// Log line format: `text`, or `json` (one object per line, ztunnel's field names). The
    /// level is set by RUST_LOG and changed live with `/logging` on the admin endpoint.
    #[arg(long, value_enum, env = "AMBIT_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// HBONE key exchange: `default` prefers post-quantum X25519MLKEM768 and falls back to
    /// classical groups; `pqc` requires X25519MLKEM768 (peers without it are refused, like
    /// ztunnel's COMPLIANCE_POLICY=pqc); `classical` offers only X25519, P-256, P-384.
    #[arg(long, value_enum, env = "AMBIT_TLS_POLICY", default_value_t = TlsPolicy::Default)]
    pub tls_policy: TlsPolicy,
}

impl RunArgs {
    /// The typed settings of `ambit run`.
    pub fn into_config(self) -> anyhow::Result<RunConfig> {
        Ok(RunConfig {
            reconcile: ReconcileConfig {
                node: self.node,
                daemon: DaemonIdentity {
                    namespace: self.daemon_namespace,
                    ..DaemonIdentity::default()
                },
                backend: self.rules,
                verify_interval: Duration::from_secs(self.verify_secs),
                trust_domain: self.trust_domain,
                default_mtls: self.mtls_mode,
                root_namespace: self.root_namespace,
                pool_idle: Duration::from_secs(self.pool_idle_secs),
                host_proc: self.host_proc,
                netns_dir: self.netns_dir,
                state_dir: self.state_dir,
                netns_prefix: self.netns_prefix,
            },
            source: match self.workloads {
                Some(path) => Source::File(path),
                None => Source::Kube {
                    kubeconfig: self.kubeconfig,
                },
            },
            cluster_id: self.ca.cluster_id.clone(),
            ca: self.ca.source(true)?,
            ca_crl: self.ca.ca_crl.clone(),
            cert_validity: Duration::from_secs(self.cert_validity_secs),
            drain: Duration::from_secs(self.drain_secs),
            tcp_copy: self.data_path.tcp_copy,
            hbone_early_data: self.data_path.hbone_early_data,
            log_format: self.log_format,
            tls_policy: self.tls_policy,
            poll_interval: Duration::from_millis(self.poll_ms),
            admin_addr: self.admin,
            metrics_addr: self.metrics,
            readiness_addr: self.readiness,
            data_threads: self.data_threads.map_or_else(
                || std::thread::available_parallelism().map_or(2, |n| n.get()),
                |n| n as usize,
            ),
        })
    }
}

/// Data-path flags shared by `ambit run` and `ambit sidecar`.
#[derive(Args, Debug)]
pub struct DataPathArgs {
    /// How plain TCP (passthrough, inbound plaintext) is copied: `splice` moves bytes inside the
    /// kernel, `buffered` through the process.
    #[arg(long, value_enum, env = "AMBIT_TCP_COPY", default_value_t = TcpCopy::Splice)]
    pub tcp_copy: TcpCopy,
    /// Send the client's first bytes on a new HBONE stream before the peer's 200 (one crossing
    /// less per connection; the peer delivers them only after its policy and dial). `false`
    /// waits for the 200 first, as ztunnel does.
    #[arg(long, env = "AMBIT_HBONE_EARLY_DATA", default_value_t = true, action = clap::ArgAction::Set)]
    pub hbone_early_data: bool,
}

/// Flags of `ambit sidecar`.
#[derive(Args, Debug)]
pub struct SidecarArgs {
    /// The pod served, as namespace/name (looked up in the workload file).
    #[arg(long)]
    pub pod: String,
    /// Workload file (pods, namespaces, services).
    #[arg(long)]
    pub workloads: PathBuf,
    /// Where the sidecar's certificate comes from (its own identity, its own token).
    #[command(flatten)]
    pub ca: super::ca::CaClientArgs,
    /// Trust domain.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Proxy user (the rules let its traffic through).
    #[arg(long, default_value_t = PROXY_UID)]
    pub uid: u32,
    /// Proxy group.
    #[arg(long, default_value_t = PROXY_GID)]
    pub gid: u32,
    /// Rule backend (the sidecar set is rendered for iptables).
    #[arg(long, value_enum, default_value_t = Backend::Iptables)]
    pub rules: Backend,
    /// Admin endpoint on the pod's loopback.
    #[arg(long, default_value = DEFAULT_ADMIN_ADDR)]
    pub admin: SocketAddr,
    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, default_value = DEFAULT_READINESS_ADDR)]
    pub readiness: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..1025))]
    pub threads: u64,
    /// How connections are carried.
    #[command(flatten)]
    pub data_path: DataPathArgs,
    /// Log line format, as for `ambit run`.
    #[arg(long, value_enum, env = "AMBIT_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// HBONE key exchange: `default` prefers post-quantum X25519MLKEM768 and falls back to
    /// classical groups; `pqc` requires X25519MLKEM768 (peers without it are refused, like
    /// ztunnel's COMPLIANCE_POLICY=pqc); `classical` offers only X25519, P-256, P-384.
    #[arg(long, value_enum, env = "AMBIT_TLS_POLICY", default_value_t = TlsPolicy::Default)]
    pub tls_policy: TlsPolicy,
}

impl SidecarArgs {
    /// The typed settings of `ambit sidecar`.
    pub fn into_config(self) -> anyhow::Result<SidecarConfig> {
        Ok(SidecarConfig {
            pod: self.pod,
            workloads: self.workloads,
            cluster_id: self.ca.cluster_id.clone(),
            ca: self.ca.source(false)?,
            ca_crl: self.ca.ca_crl.clone(),
            trust_domain: self.trust_domain,
            uid: self.uid,
            gid: self.gid,
            backend: self.rules,
            admin_addr: self.admin,
            readiness_addr: self.readiness,
            threads: self.threads as usize,
            poll_interval: Duration::from_millis(200),
            tcp_copy: self.data_path.tcp_copy,
            hbone_early_data: self.data_path.hbone_early_data,
            tls_policy: self.tls_policy,
        })
    }
}

/// Flags of `ambit uninstall`.
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("pods").required(true).multiple(true)
    .args(["state_dir", "workloads", "kube"]))]
pub struct UninstallArgs {
    /// The daemon's state directory (`ambit run --state-dir`, /var/run/ambit in the
    /// DaemonSet): every pod remembered there is released, then the memory is cleared.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Also release every pod of --node listed in this workload file.
    #[arg(long, conflicts_with = "kube", requires = "node")]
    pub workloads: Option<PathBuf>,
    /// Also release every pod of --node that the Kubernetes API lists, and remove their
    /// `ambient.istio.io/redirection` annotation.
    #[arg(long, requires = "node")]
    pub kube: bool,
    /// Kubeconfig for --kube (default: the in-cluster service account).
    #[arg(long, env = "AMBIT_KUBECONFIG", requires = "kube")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (with --workloads or --kube).
    #[arg(long, env = "AMBIT_NODE")]
    pub node: Option<String>,
    /// The host's /proc, scanned to find pod namespaces.
    #[arg(long, default_value = "/proc")]
    pub host_proc: PathBuf,
    /// Directory of pinned network namespaces, scanned by pod IP.
    #[arg(long, default_value = "/var/run/netns")]
    pub netns_dir: PathBuf,
    /// Only pinned namespaces whose names start with this are scanned.
    #[arg(long)]
    pub netns_prefix: Option<String>,
    /// Admin endpoint of this node's daemon; if it answers, the daemon still runs and the
    /// command refuses (the daemon would put the rules back).
    #[arg(long, default_value = DEFAULT_ADMIN_ADDR)]
    pub admin: SocketAddr,
    /// Release the pods even though a daemon answers on --admin.
    #[arg(long)]
    pub force: bool,
}

impl UninstallArgs {
    /// The typed settings of `ambit uninstall`.
    pub fn into_config(self) -> UninstallConfig {
        let source = match (self.workloads, self.kube) {
            (Some(path), _) => Some(Source::File(path)),
            (None, true) => Some(Source::Kube {
                kubeconfig: self.kubeconfig,
            }),
            (None, false) => None,
        };
        UninstallConfig {
            state_dir: self.state_dir,
            source,
            node: self.node,
            host_proc: self.host_proc,
            netns_dir: self.netns_dir,
            netns_prefix: self.netns_prefix,
            admin_addr: self.admin,
            force: self.force,
        }
    }
}

/// A Kubernetes namespace name (RFC 1123 label: at most 63 lower-case letters, digits and
/// `-`, starting and ending with a letter or digit).
fn namespace_name(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{value:?} is not a namespace name (expected at most 63 lower-case letters, digits \
             and '-', starting and ending with a letter or digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<RunConfig, String> {
        let base = [
            "ambit",
            "--node",
            "n1",
            "--workloads",
            "w.json",
            "--ca-address",
            "ambit-ca.istio-system.svc:15012",
            "--ca-root",
            "root-cert.pem",
            "--ca-token",
            "token",
        ];
        Cmd::try_parse_from(base.iter().chain(args))
            .map_err(|e| e.to_string())
            .and_then(|c| c.run.into_config().map_err(|e| e.to_string()))
    }

    #[test]
    fn defaults_are_typed() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.reconcile.backend, Backend::Iptables);
        assert_eq!(c.reconcile.default_mtls, MtlsMode::Permissive);
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:15000");
        assert_eq!(c.metrics_addr.port(), 15020);
        assert_eq!(c.readiness_addr.port(), 15021);
        assert_eq!(c.cert_validity, DEFAULT_CERT_VALIDITY);
        assert_eq!(c.reconcile.root_namespace, "istio-system");
        assert!(matches!(c.ca, crate::ca::args::CaSource::Service(_)));
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.tls_policy, TlsPolicy::Default);
        assert!(c.hbone_early_data);
    }

    #[test]
    fn early_data_takes_true_or_false() {
        assert!(
            !parse(&["--hbone-early-data", "false"])
                .unwrap()
                .hbone_early_data
        );
        assert!(
            parse(&["--hbone-early-data=true"])
                .unwrap()
                .hbone_early_data
        );
        let err = parse(&["--hbone-early-data", "off"]).unwrap_err();
        assert!(
            err.contains("--hbone-early-data") && err.contains("true, false"),
            "{err}"
        );
    }

    #[test]
    fn log_format_is_text_or_json() {
        assert_eq!(
            parse(&["--log-format", "json"]).unwrap().log_format,
            LogFormat::Json
        );
        let err = parse(&["--log-format", "yaml"]).unwrap_err();
        assert!(
            err.contains("--log-format") && err.contains("text, json"),
            "{err}"
        );
    }

    #[test]
    fn ca_flags_need_each_other_or_the_insecure_local_key() {
        let without = |drop: &str| {
            let mut base = vec!["ambit", "--node", "n1", "--workloads", "w.json"];
            for (flag, value) in [
                ("--ca-address", "ca:15012"),
                ("--ca-root", "root.pem"),
                ("--ca-token", "token"),
            ] {
                if flag != drop {
                    base.extend([flag, value]);
                }
            }
            Cmd::try_parse_from(base)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        for flag in ["--ca-root", "--ca-token"] {
            let e = without(flag).unwrap_err();
            assert!(e.contains(flag), "{e}");
        }
        let e = without("--ca-address").unwrap_err();
        assert!(e.contains("--ca-address"), "{e}");
        let local = Cmd::try_parse_from([
            "ambit",
            "--node",
            "n1",
            "--workloads",
            "w.json",
            "--insecure-local-ca-dir",
            "ca",
        ])
        .unwrap();
        assert!(matches!(
            local.run.into_config().unwrap().ca,
            crate::ca::args::CaSource::InsecureLocal(_)
        ));
    }

    #[test]
    fn root_namespace_must_be_a_namespace_name() {
        let c = parse(&["--root-namespace", "mesh-root"]).unwrap();
        assert_eq!(c.reconcile.root_namespace, "mesh-root");
        for bad in ["", "Istio", "-x", "a_b"] {
            let e = parse(&[&format!("--root-namespace={bad}")]).unwrap_err();
            assert!(e.contains("--root-namespace"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn enums_parse_and_list_accepted_values() {
        let c = parse(&["--mtls-mode", "strict", "--rules", "nftables"]).unwrap();
        assert_eq!(c.reconcile.default_mtls, MtlsMode::Strict);
        assert_eq!(c.reconcile.backend, Backend::Nftables);
        let e = parse(&["--mtls-mode", "STRICTER"]).unwrap_err();
        assert!(
            e.contains("--mtls-mode") && e.contains("permissive, strict"),
            "{e}"
        );
        let e = parse(&["--rules", "nft"]).unwrap_err();
        assert!(
            e.contains("--rules") && e.contains("iptables, nftables"),
            "{e}"
        );
        assert_eq!(
            parse(&["--tls-policy", "pqc"]).unwrap().tls_policy,
            TlsPolicy::Pqc
        );
        let e = parse(&["--tls-policy", "pq"]).unwrap_err();
        assert!(
            e.contains("--tls-policy") && e.contains("default, pqc, classical"),
            "{e}"
        );
    }

    #[test]
    fn bad_numbers_and_addresses_name_the_flag() {
        let e = parse(&["--verify-secs", "0"]).unwrap_err();
        assert!(e.contains("--verify-secs"), "{e}");
        let e = parse(&["--admin", "localhost"]).unwrap_err();
        assert!(e.contains("--admin"), "{e}");
        let e = parse(&["--poll-ms", "5"]).unwrap_err();
        assert!(e.contains("--poll-ms"), "{e}");
    }

    #[derive(Parser)]
    struct Uninstall {
        #[command(flatten)]
        args: UninstallArgs,
    }

    fn uninstall(args: &[&str]) -> Result<UninstallConfig, String> {
        Uninstall::try_parse_from(std::iter::once(&"ambit").chain(args))
            .map(|c| c.args.into_config())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn uninstall_needs_pods_to_release_and_a_node_with_a_source() {
        let c = uninstall(&["--state-dir", "/var/run/ambit"]).unwrap();
        assert!(c.source.is_none() && !c.force);
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:15000");
        let e = uninstall(&[]).unwrap_err();
        assert!(e.contains("--state-dir"), "{e}");
        let e = uninstall(&["--kube"]).unwrap_err();
        assert!(e.contains("--node"), "{e}");
        let c = uninstall(&["--workloads", "w.json", "--node", "n1"]).unwrap();
        assert!(matches!(c.source, Some(Source::File(_))));
        let e = uninstall(&["--workloads", "w.json", "--kube", "--node", "n1"]).unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
    }
}
