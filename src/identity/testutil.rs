//! Test helpers: temporary CA directories, openssl fixtures and in-memory TLS exchanges.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use super::tls::{dummy_server_name, peer_identity};
use super::Identity;

/// A directory removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("ambit-id-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the openssl CLI in `dir`, failing the test with its stderr.
pub(crate) fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates a self-signed RSA-2048 root in `dir` as `<name>.pem` / `<name>-key.pem` (PKCS#8).
pub(crate) fn openssl_rsa_root(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            "/O=ambit test/CN=RSA root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

pub(crate) fn id(ns: &str, sa: &str) -> Identity {
    Identity::new(super::DEFAULT_TRUST_DOMAIN, ns, sa).unwrap()
}

/// What each side saw of a mutual-TLS exchange ("ping" from the client, "pong" back).
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The server identity as seen by the client, or the client's error.
    pub(crate) client: Result<Identity, String>,
    /// The client identity as seen by the server, or the server's error.
    pub(crate) server: Result<Identity, String>,
}

/// Performs a handshake over an in-memory pipe and one request/response each way.
pub(crate) async fn exchange(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Outcome {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let client_side = async move {
        let mut tls = connect(client, c).await?;
        let seen = peer_identity(tls.get_ref().1).map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"pong");
        Ok(seen)
    };
    let server_side = async move {
        let mut tls = accept(server, s).await?;
        let seen = peer_identity(tls.get_ref().1).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok(seen)
    };
    let both = async { tokio::join!(client_side, server_side) };
    let (client, server) = tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("TLS exchange timed out");
    Outcome { client, server }
}

/// Client handshake, also checking the negotiated protocol parameters.
pub(crate) async fn connect(
    config: Arc<ClientConfig>,
    io: DuplexStream,
) -> Result<client::TlsStream<DuplexStream>, String> {
    let tls = TlsConnector::from(config)
        .connect(dummy_server_name(), io)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tls.get_ref().1;
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    Ok(tls)
}

/// Server handshake.
pub(crate) async fn accept(
    config: Arc<ServerConfig>,
    io: DuplexStream,
) -> Result<server::TlsStream<DuplexStream>, String> {
    TlsAcceptor::from(config)
        .accept(io)
        .await
        .map_err(|e| e.to_string())
}
