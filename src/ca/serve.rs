//! `ambit ca serve`: the CA service process — the only one that reads `ca-key.pem`.
//!
//! gRPC (tonic) over TLS that we terminate ourselves with tokio-rustls: the server certificate
//! is signed by the mesh CA at start and renewed daily, so clients verify the service with
//! nothing but `root-cert.pem`. Handshakes run concurrently with a deadline; finished streams
//! are handed to tonic with `serve_with_incoming`. Metrics and `/healthz/ready` are served in
//! plain HTTP on `--metrics`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use hyper::StatusCode;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::auth::{Authenticator, TokenFile};
use super::directory::Directory;
use super::policy::{Account, Policy};
use super::proto::istio_certificate_service_server::IstioCertificateServiceServer;
use super::publish::CrlTarget;
use super::service::{CaMetrics, CaService};
use crate::admin::{self, Reply, Router};
use crate::identity::{tls, Ca};

/// Lifetime of the service's own TLS certificate; it is renewed every [`SERVER_CERT_RENEW`].
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the service's TLS certificate is re-signed.
const SERVER_CERT_RENEW: Duration = Duration::from_secs(24 * 3600);
/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How callers are authenticated and pods located.
#[derive(Clone, Debug)]
pub enum AuthMode {
    /// TokenReview and pod lookups against the Kubernetes API.
    Kube {
        /// Kubeconfig (`None`: in-cluster).
        kubeconfig: Option<PathBuf>,
        /// Audiences a token must carry (any of them).
        audiences: Vec<String>,
    },
    /// The node-token file and the workload file.
    Files {
        /// Token → node and ServiceAccount (see [`super::auth`]).
        node_tokens: PathBuf,
        /// The workload file (which pods run on which node).
        workloads: PathBuf,
    },
}

/// Settings of `ambit ca serve`.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The CA directory (Istio plug-in layout, with `ca-key.pem`).
    pub ca_dir: PathBuf,
    /// gRPC (TLS) address.
    pub listen: SocketAddr,
    /// Metrics and readiness address (plain HTTP).
    pub metrics: SocketAddr,
    /// Trust domain of signed identities.
    pub trust_domain: String,
    /// Longest certificate lifetime granted.
    pub max_validity: Duration,
    /// ServiceAccounts allowed to impersonate the pods of their node.
    pub trusted_node_accounts: Vec<Account>,
    /// DNS SANs of the service's TLS certificate.
    pub server_names: Vec<String>,
    /// IP SANs of the service's TLS certificate.
    pub server_ips: Vec<IpAddr>,
    /// Authentication and pod lookups.
    pub auth: AuthMode,
    /// Workload-file poll interval (file mode).
    pub poll_interval: Duration,
    /// Worker threads.
    pub threads: usize,
    /// Where each good new version of `<ca dir>/ca-crl.pem` is copied for the proxies.
    pub publish_crl: Option<PathBuf>,
    /// The ConfigMap (namespace, name) it is also published to, with `--kube`.
    pub publish_crl_configmap: Option<(String, String)>,
}

/// Runs the CA service until SIGTERM/SIGINT.
pub fn run(config: ServeConfig) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads.max(1))
        .thread_name("ambit-ca")
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(async {
            let running = start(config).await?;
            crate::signal::shutdown_signal().await?;
            running.stop().await
        })
}

/// A started CA service.
pub struct Running {
    /// The gRPC address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The service's counters.
    pub metrics: Arc<CaMetrics>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Running {
    /// Stops accepting, lets requests in flight finish, and returns.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task
            .await
            .context("CA service task")?
            .context("serving gRPC")?;
        tracing::info!("CA service stopped");
        Ok(())
    }
}

/// Loads the CA, binds the addresses and starts serving in the background.
pub async fn start(config: ServeConfig) -> anyhow::Result<Running> {
    let ca = Arc::new(
        Ca::load(&config.ca_dir)
            .with_context(|| format!("loading the mesh CA from {}", config.ca_dir.display()))?,
    );
    let (auth, directory, kube) = match &config.auth {
        AuthMode::Kube {
            kubeconfig,
            audiences,
        } => {
            let client = crate::k8s::client(kubeconfig.as_deref()).await?;
            (
                Authenticator::Kube {
                    client: client.clone(),
                    audiences: audiences.clone(),
                },
                Directory::Kube(client.clone()),
                Some(client),
            )
        }
        AuthMode::Files {
            node_tokens,
            workloads,
        } => (
            Authenticator::File(TokenFile::open(node_tokens.clone()).map_err(anyhow::Error::msg)?),
            Directory::File(crate::workload::file::watch_file(
                workloads.clone(),
                config.poll_interval,
            )),
            None,
        ),
    };
    let mut targets: Vec<CrlTarget> = config
        .publish_crl
        .iter()
        .cloned()
        .map(CrlTarget::File)
        .collect();
    if let (Some((namespace, name)), Some(client)) = (&config.publish_crl_configmap, &kube) {
        targets.push(CrlTarget::ConfigMap {
            client: client.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
        });
    }
    if !targets.is_empty() {
        let (ca, dir) = (ca.clone(), config.ca_dir.clone());
        tokio::spawn(async move { super::publish::publish_crl(&ca, dir, targets).await });
    }
    let metrics = Arc::new(CaMetrics::default());
    let service = CaService {
        ca: ca.clone(),
        auth,
        directory,
        policy: Policy {
            trust_domain: config.trust_domain.clone(),
            trusted_node_accounts: config.trusted_node_accounts.iter().cloned().collect(),
        },
        max_validity: config.max_validity,
        metrics: metrics.clone(),
    };

    let resolver = Arc::new(ServerCert::issue(&ca, &config)?);
    tokio::spawn(resolver.clone().renew(ca.clone(), config.clone()));
    let mut tls_config = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    tls_config.alpn_protocols = vec![crate::config::GRPC_ALPN.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config));

    let m = metrics.clone();
    let router: Router = admin::read_only(move |path| match path {
        "/metrics" | "/stats/prometheus" => Reply::text(StatusCode::OK, m.encode()),
        "/healthz/ready" => Reply::text(StatusCode::OK, "ready\n"),
        _ => Reply::text(StatusCode::NOT_FOUND, "try /metrics or /healthz/ready\n"),
    });
    admin::serve(config.metrics, "metrics", router).await?;

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot bind the CA service address {}", config.listen))?;
    let (tx, rx) = mpsc::channel::<std::io::Result<TlsConn>>(64);
    let addr = listener.local_addr()?;
    tokio::spawn(accept_loop(listener, acceptor, tx));
    let incoming = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|conn| (conn, rx))
    });
    tracing::info!(listen = %addr, trust_domain = %config.trust_domain,
        max_validity_secs = config.max_validity.as_secs(), auth = ?config.auth,
        trusted_node_accounts = ?config.trusted_node_accounts.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "ambit CA service running");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        tonic::transport::Server::builder().serve_with_incoming_shutdown(
            IstioCertificateServiceServer::new(service),
            incoming,
            async {
                let _ = stopped.await;
            },
        ),
    );
    Ok(Running {
        addr,
        metrics,
        stop,
        task,
    })
}

/// Accepts TCP connections and completes each TLS handshake in its own task, so one slow
/// client never holds up the others.
async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    tx: mpsc::Sender<std::io::Result<TlsConn>>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // tonic dropped the stream: the service is stopping, release the port.
            _ = tx.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let info = tcp.connect_info();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(TlsConn { stream, info })).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// A TLS connection handed to tonic, carrying the TCP peer address for request extensions.
struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: TcpConnectInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The service's own certificate, swapped in place when renewed.
#[derive(Debug)]
struct ServerCert(RwLock<Arc<CertifiedKey>>);

impl ServerCert {
    fn issue(ca: &Ca, config: &ServeConfig) -> anyhow::Result<ServerCert> {
        Ok(ServerCert(RwLock::new(Self::sign(ca, config)?)))
    }

    fn sign(ca: &Ca, config: &ServeConfig) -> anyhow::Result<Arc<CertifiedKey>> {
        let (chain, key) = ca.issue_server_cert(
            &config.server_names,
            &config.server_ips,
            SERVER_CERT_VALIDITY,
            SystemTime::now(),
        )?;
        Ok(Arc::new(CertifiedKey::from_der(
            chain,
            key,
            &tls::provider(),
        )?))
    }

    async fn renew(self: Arc<Self>, ca: Arc<Ca>, config: ServeConfig) {
        loop {
            tokio::time::sleep(SERVER_CERT_RENEW).await;
            match Self::sign(&ca, &config) {
                Ok(fresh) => *self.0.write().unwrap_or_else(|p| p.into_inner()) = fresh,
                Err(e) => {
                    tracing::error!(error = %e, "renewing the CA service's TLS certificate failed")
                }
            }
        }
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}
