//! The lab's CA service: `ambit ca serve` in the fabric namespace (next to the stand-in API
//! server), the only lab process that reads `ca-key.pem`. Node daemons and sidecars get their
//! certificates from it over the fabric, exactly as in a cluster.
//!
//! Credentials, minted by the lab per holder (random bearer tokens, files under
//! `<lab dir>/tokens/`):
//! - file mode: the CA service is given `ca-node-tokens.json` (token → node and
//!   ServiceAccount), the lab's stand-in for projected tokens; pod placement comes from the
//!   workload file;
//! - Kubernetes mode: the same tokens are registered with the stand-in API server
//!   ([`super::apiserver::tokenreview`]), bound to a pod like projected ServiceAccount tokens:
//!   each node daemon to an `istio-system/ambit-<node>` "DaemonSet pod" the lab publishes on
//!   its node, each sidecar to its own pod; the CA service checks them with TokenReview.
//!
//! Only `root-cert.pem` is handed out (copied to `<lab dir>/root-cert.pem`, as Istio's
//! `istio-ca-root-cert` ConfigMap) and, once there is one, the CRL the CA service publishes
//! beside it (`<lab dir>/ca-crl.pem`, as `istio-ca-crl`); the CA directory is passed to the CA
//! service alone.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::apiserver::tokenreview::{LabToken, LabTokens, TOKENS_FILE};
use super::{lock, Lab, LabError, CA_DIR};
use crate::ca::auth::{NodeToken, NodeTokens};
use crate::config::{CA_PORT, DEFAULT_CA_TOKEN_AUDIENCE};
use crate::workload::{Pod, Snapshot};

/// Key of the CA service among the lab's processes (it runs in the fabric namespace).
pub const CA_SERVICE: &str = "fab";
/// The distributed trust anchor, in the lab directory.
pub const LAB_ROOT_CERT: &str = "root-cert.pem";
/// Directory of the minted token files, in the lab directory.
pub const TOKENS_DIR: &str = "tokens";
/// The CA service's node-token file (file mode), in the lab directory.
pub const NODE_TOKENS_FILE: &str = "ca-node-tokens.json";
/// DNS name the CA service's certificate carries and clients verify.
pub const CA_SERVER_NAME: &str = "ambit-ca.istio-system.svc";
/// The ConfigMap the CA service publishes the CRL to in Kubernetes mode (Istio's name).
pub const LAB_CRL_CONFIGMAP: &str = "istio-ca-crl";
/// Namespace of the lab's "DaemonSet pods" (the daemon's own namespace).
pub const DAEMON_NAMESPACE: &str = "istio-system";
/// ServiceAccount of the node daemons, trusted by the CA service as node accounts.
pub const DAEMON_SERVICE_ACCOUNT: &str = "ambit";
/// The flag that makes a daemon sign with the CA key itself (the bench's baseline).
const LOCAL_CA_FLAG: &str = "--insecure-local-ca-dir";
/// How long the CA service gets to become ready.
const CA_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Who a token is for, and what it says.
#[derive(Clone, Debug)]
pub struct TokenSpec {
    /// ServiceAccount namespace.
    pub namespace: String,
    /// ServiceAccount name.
    pub service_account: String,
    /// Node the holder runs on.
    pub node: String,
    /// The pod the token is bound to (name, UID).
    pub pod: Option<(String, String)>,
    /// Audience (Kubernetes mode).
    pub audience: String,
    /// Expiry, if any.
    pub expires_at: Option<SystemTime>,
}

impl TokenSpec {
    /// A node daemon's token: the daemon ServiceAccount, bound to its DaemonSet pod.
    pub fn daemon(node: &str, lab: &str) -> TokenSpec {
        TokenSpec {
            namespace: DAEMON_NAMESPACE.into(),
            service_account: DAEMON_SERVICE_ACCOUNT.into(),
            node: node.into(),
            pod: Some(daemon_pod(lab, node)),
            audience: DEFAULT_CA_TOKEN_AUDIENCE.into(),
            expires_at: None,
        }
    }
}

/// The (name, UID) of the lab's DaemonSet pod on `node`.
pub fn daemon_pod(lab: &str, node: &str) -> (String, String) {
    (format!("ambit-{node}"), format!("{lab}-ambit-{node}-uid"))
}

/// `snapshot` plus one host-network `istio-system/ambit-<node>` pod per node, as a cluster
/// running the DaemonSet has; published in Kubernetes mode so that node daemons' tokens are
/// bound to a pod the CA service can resolve to its node.
pub(crate) fn with_daemon_pods(lab: &str, nodes: &[String], snapshot: &Snapshot) -> Snapshot {
    let mut out = snapshot.clone();
    for node in nodes {
        let (name, uid) = daemon_pod(lab, node);
        out.pods.push(Pod {
            uid,
            name,
            namespace: DAEMON_NAMESPACE.into(),
            service_account: DAEMON_SERVICE_ACCOUNT.into(),
            node: node.clone(),
            host_network: true,
            ..Pod::default()
        });
    }
    out
}

impl Lab {
    /// Address of the CA service (`<fabric IPv4>:15012`), reachable from nodes and pods.
    pub fn ca_address(&self) -> String {
        format!("{}:{CA_PORT}", self.fabric_ipv4())
    }

    /// The root certificate handed to nodes and sidecars.
    pub fn ca_root_path(&self) -> PathBuf {
        self.dir().join(LAB_ROOT_CERT)
    }

    /// The token file of `holder` (a node or a pod name).
    pub fn token_path(&self, holder: &str) -> PathBuf {
        self.dir().join(TOKENS_DIR).join(format!("{holder}.token"))
    }

    /// Starts `<binary> ca serve` in the fabric namespace (file mode: with the node-token
    /// file and the workload file; Kubernetes mode: `--kube` with the lab's kubeconfig) and
    /// waits until it is ready. `extra_args` are appended (e.g. `--max-validity=60`).
    pub fn start_ca_service(&self, binary: &Path, extra_args: &[String]) -> Result<u32, LabError> {
        self.prepare_ca_files()?;
        let mut args: Vec<OsString> = vec![
            "ca".into(),
            "serve".into(),
            "--ca-dir".into(),
            self.dir().join(CA_DIR).into(),
            "--listen".into(),
            self.ca_address().into(),
            // The lab's readiness port, so `wait_ready` works for it like for a daemon.
            "--metrics".into(),
            format!("[::]:{}", super::READY_PORT).into(),
            "--server-names".into(),
            CA_SERVER_NAME.into(),
            "--server-ips".into(),
            self.fabric_ipv4().to_string().into(),
            // Beside the distributed root, as Istio publishes the plug-in CA's CRL.
            "--publish-crl".into(),
            self.ca_crl_path().into(),
        ];
        if self.state().kube {
            args.extend([
                "--kube".into(),
                "--kubeconfig".into(),
                self.kubeconfig_path().into(),
                // As in deploy/ambit-ca.yaml; the lab's daemons still read the file (no
                // kubelet projects the ConfigMap here).
                "--publish-crl-configmap".into(),
                format!("{DAEMON_NAMESPACE}/{LAB_CRL_CONFIGMAP}").into(),
            ]);
        } else {
            args.extend([
                "--node-tokens".into(),
                self.dir().join(NODE_TOKENS_FILE).into(),
                "--workloads".into(),
                self.workloads_path().into(),
            ]);
        }
        args.extend(extra_args.iter().map(Into::into));
        let pid = self.start_process(CA_SERVICE, binary, &args)?;
        self.wait_ready(CA_SERVICE, CA_READY_TIMEOUT)?;
        Ok(pid)
    }

    /// Stops the CA service (the node daemons keep their certificates).
    pub fn stop_ca_service(&self) -> Result<(), LabError> {
        self.stop_daemon(CA_SERVICE)
    }

    /// Whether the CA service is running.
    pub fn ca_service_running(&self) -> bool {
        let Ok(ns) = self.fabric_netns() else {
            return false;
        };
        lock(&self.daemons)
            .get(CA_SERVICE)
            .is_some_and(|d| d.running(Some(&ns)))
    }

    /// The CA flags for a daemon or sidecar started with `extra_args`: a fresh token for
    /// `spec` and the service's address, root and name — unless the caller chose the local
    /// CA key. Starts the CA service first if it is not running.
    pub(crate) fn ca_client_args(
        &self,
        holder: &str,
        spec: &TokenSpec,
        binary: &Path,
        extra_args: &[String],
    ) -> Result<Vec<OsString>, LabError> {
        if extra_args.iter().any(|a| a.starts_with(LOCAL_CA_FLAG)) {
            return Ok(Vec::new());
        }
        if !self.ca_service_running() {
            self.start_ca_service(binary, &[])?;
        }
        let token = self.mint_token(spec)?;
        let path = self.token_path(holder);
        write_file(&path, token.as_bytes())?;
        Ok(vec![
            "--ca-address".into(),
            self.ca_address().into(),
            "--ca-root".into(),
            self.ca_root_path().into(),
            "--ca-token".into(),
            path.into(),
            "--ca-server-name".into(),
            CA_SERVER_NAME.into(),
            // The CA's revocation list as the CA service publishes it (the lab's stand-in for
            // the mounted `istio-ca-crl` ConfigMap); absent until the first revocation.
            "--ca-crl".into(),
            self.ca_crl_path().into(),
        ])
    }

    /// The published `ca-crl.pem` (beside the root copy), which every lab daemon and sidecar
    /// watches; the CA service copies `<CA dir>/ca-crl.pem` there when it changes.
    pub fn ca_crl_path(&self) -> PathBuf {
        self.dir().join(crate::identity::ca::CA_CRL)
    }

    /// The CA directory (with the key): where `ambit ca revoke --ca-dir` runs.
    pub fn ca_dir(&self) -> PathBuf {
        self.dir().join(CA_DIR)
    }

    /// Mints a token for `spec`, known to the CA service (file mode) and to the stand-in API
    /// server's TokenReview (Kubernetes mode). Returns the token.
    pub fn mint_token(&self, spec: &TokenSpec) -> Result<String, LabError> {
        self.prepare_ca_files()?;
        let token = random_token()?;
        let expires_at = spec
            .expires_at
            .map(|t| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
        let _guard = lock(&self.workloads_lock);
        let node_tokens = self.dir().join(NODE_TOKENS_FILE);
        let mut file: NodeTokens = read_json(&node_tokens)?;
        file.insert(
            token.clone(),
            NodeToken {
                node: spec.node.clone(),
                service_account: format!("{}/{}", spec.namespace, spec.service_account),
                pod: spec
                    .pod
                    .as_ref()
                    .map(|(n, _)| format!("{}/{n}", spec.namespace)),
                expires_at,
            },
        );
        write_json(&node_tokens, &file)?;
        let reviewed = self.dir().join(TOKENS_FILE);
        let mut registry: LabTokens = read_json(&reviewed)?;
        registry.insert(
            token.clone(),
            LabToken {
                namespace: spec.namespace.clone(),
                service_account: spec.service_account.clone(),
                audiences: vec![spec.audience.clone()],
                pod_name: spec.pod.as_ref().map(|(n, _)| n.clone()),
                pod_uid: spec.pod.as_ref().map(|(_, u)| u.clone()),
                node_name: Some(spec.node.clone()),
                expires_at,
            },
        );
        write_json(&reviewed, &registry)?;
        Ok(token)
    }

    /// The root copy, the token directory and an empty node-token file, once.
    fn prepare_ca_files(&self) -> Result<(), LabError> {
        let root = self.ca_root_path();
        if !root.exists() {
            let src = self.dir().join(CA_DIR).join(crate::identity::ca::ROOT_CERT);
            let pem = std::fs::read(&src).map_err(|source| LabError::Io {
                context: format!("cannot read {}", src.display()),
                source,
            })?;
            write_file(&root, &pem)?;
        }
        let tokens = self.dir().join(TOKENS_DIR);
        std::fs::create_dir_all(&tokens).map_err(|source| LabError::Io {
            context: format!("cannot create {}", tokens.display()),
            source,
        })?;
        let node_tokens = self.dir().join(NODE_TOKENS_FILE);
        if !node_tokens.exists() {
            write_json(&node_tokens, &NodeTokens::new())?;
        }
        Ok(())
    }
}

/// 32 hex digits from the kernel's CSPRNG.
fn random_token() -> Result<String, LabError> {
    super::random_hex(16)
}

fn read_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> Result<T, LabError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|source| LabError::Json {
            path: path.to_owned(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(LabError::Io {
            context: format!("cannot read {}", path.display()),
            source,
        }),
    }
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), LabError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| LabError::Json {
        path: path.to_owned(),
        source,
    })?;
    write_file(path, &bytes)
}

/// Writes atomically (temp file + rename), readable by the sidecars' proxy user too.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), LabError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    let io = |source| LabError::Io {
        context: format!("cannot write {}", path.display()),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
