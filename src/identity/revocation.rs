//! Revocation on a proxy: the CRL set read from `--ca-crl`, kept current, and enforced.
//!
//! - **Loading.** [`Revocation::start`] reads the file once and then every
//!   [`CRL_POLL_INTERVAL`]; it is parsed again only when its bytes change. A version that
//!   parses, verifies and is not expired replaces the set and wakes live connections.
//! - **Bad versions.** A malformed, forged or expired version is reported (an error log line
//!   and `ambit_crl_events_total{outcome="reload_failed"}`) and the last good set stays in
//!   force. A file that disappears also keeps the last good set. If no version was ever good —
//!   the file exists but has never loaded — every peer is refused ([`CrlError::NoValidCrl`]):
//!   a CRL was published, and trusting peers it may revoke would be failing open. A file that
//!   does not exist (yet) revokes nothing, as with ztunnel: a CA without revocations publishes
//!   none.
//! - **Handshakes.** [`guard_server`] and [`guard_client`] wrap the SPIFFE verifiers: once the
//!   chain has verified, every certificate in it is checked against the set; a revoked one
//!   fails the handshake with a log line naming its identity and serial.
//! - **Live connections.** An HBONE connection keeps its peer's chain and awaits
//!   [`Revocation::revoked`], which re-checks it whenever the set changes; the connection's
//!   task then closes it.
//!
//! The set is read under a `RwLock` held for one lookup; a reload reads and parses the file
//! before taking it, so handshakes never wait on I/O or parsing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DistinguishedName, Error as TlsError, OtherError};
use tokio::sync::watch;

use super::crl::{CrlError, CrlSet};
use super::verify::delegate_signature_checks;
use crate::config::CRL_POLL_INTERVAL;
use crate::metrics::OutcomeLabels;

/// What has been loaded from the file so far.
enum Loaded {
    /// The file does not exist and nothing was ever loaded: nothing is revoked.
    Absent,
    /// The last good version.
    Good(Arc<CrlSet>),
    /// The file exists but no version of it ever loaded; the last error.
    NeverGood(String),
}

struct State {
    loaded: Loaded,
    /// Bytes of the last version read (`None`: file missing), so unchanged files are skipped.
    seen: Option<Vec<u8>>,
}

/// The CRL set of one proxy, shared by its verifiers and its HBONE connections.
pub struct Revocation {
    path: PathBuf,
    anchors: Vec<CertificateDer<'static>>,
    state: RwLock<State>,
    /// Bumped whenever a new good set is loaded.
    generation: watch::Sender<u64>,
    events: Family<OutcomeLabels, Counter>,
}

impl std::fmt::Debug for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocation")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Revocation {
    /// Loads `path` (CRLs verified against the certificates in `root_file`) and polls it from a
    /// task on the current runtime. `events` counts reloads, failures, refusals and closures.
    pub fn start(
        path: PathBuf,
        root_file: &Path,
        events: Family<OutcomeLabels, Counter>,
    ) -> Result<Arc<Revocation>, CrlError> {
        let anchors = CertificateDer::pem_file_iter(root_file)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| CrlError::Read {
                path: root_file.display().to_string(),
                reason: format!("{e} (the mesh roots, which CRLs are verified against)"),
            })?;
        let rev = Arc::new(Revocation::new(path, anchors, events));
        rev.reload(SystemTime::now());
        let poller = rev.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CRL_POLL_INTERVAL);
            loop {
                tick.tick().await;
                poller.reload(SystemTime::now());
            }
        });
        Ok(rev)
    }

    /// A set reading `path`, trusting CRLs signed by `anchors`; nothing is loaded yet.
    pub fn new(
        path: PathBuf,
        anchors: Vec<CertificateDer<'static>>,
        events: Family<OutcomeLabels, Counter>,
    ) -> Revocation {
        Revocation {
            path,
            anchors,
            state: RwLock::new(State {
                loaded: Loaded::Absent,
                seen: None,
            }),
            generation: watch::channel(0).0,
            events,
        }
    }

    /// Reads the file and, if its bytes changed, parses it (see the module docs for what
    /// happens to a bad version). Returns whether a new good set was installed.
    pub fn reload(&self, now: SystemTime) -> bool {
        let path = self.path.display();
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                self.failed(format!("cannot read {path}: {e}"));
                return false;
            }
        };
        if self.read().seen == bytes {
            return false;
        }
        // Parsed before the lock is taken: handshakes keep checking against the current set
        // meanwhile.
        let parsed = bytes.as_ref().map(|b| CrlSet::parse(b, &self.anchors, now));
        let mut state = self.write();
        state.seen = bytes;
        let Some(parsed) = parsed else {
            match state.loaded {
                Loaded::Good(_) => tracing::error!(%path,
                    "CRL file disappeared; keeping the last good CRL"),
                _ => {
                    // Nothing published (any more): nothing to enforce, as at a first start.
                    state.loaded = Loaded::Absent;
                    tracing::warn!(%path,
                        "no CRL file; no certificate is revoked until it appears");
                }
            }
            return false;
        };
        match parsed {
            Ok(set) => {
                tracing::info!(%path, crls = set.len(), revoked = set.revoked_count(),
                    "CRL loaded");
                state.loaded = Loaded::Good(Arc::new(set));
                drop(state);
                self.count("reloaded");
                self.generation.send_modify(|g| *g += 1);
                true
            }
            Err(e) => {
                let kept = match &state.loaded {
                    Loaded::Good(_) => "keeping the last good CRL",
                    _ => "no good CRL was ever loaded: refusing every peer until one is",
                };
                if !matches!(state.loaded, Loaded::Good(_)) {
                    state.loaded = Loaded::NeverGood(e.to_string());
                }
                drop(state);
                self.failed(format!("rejected new version of {path}: {e}; {kept}"));
                false
            }
        }
    }

    /// Whether a handshake presenting `chain` (leaf first) may proceed.
    pub fn check(&self, chain: &[CertificateDer<'_>]) -> Result<(), CrlError> {
        match &self.read().loaded {
            Loaded::Absent => Ok(()),
            Loaded::Good(set) => set.check(chain),
            Loaded::NeverGood(reason) => Err(CrlError::NoValidCrl {
                path: self.path.display().to_string(),
                reason: reason.clone(),
            }),
        }
    }

    /// Resolves once a newly loaded set revokes a certificate of `chain` (checked at once, then
    /// after every reload); logs nothing, the connection's owner does. Only a revocation
    /// closes a live connection: a bad file never does.
    pub async fn revoked(&self, chain: Vec<CertificateDer<'static>>) -> CrlError {
        let mut changes = self.generation.subscribe();
        loop {
            let set = match &self.read().loaded {
                Loaded::Good(set) => Some(set.clone()),
                _ => None,
            };
            if let Some(Err(e @ CrlError::Revoked { .. })) = set.map(|s| s.check(&chain)) {
                self.count("connection_closed");
                return e;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    fn failed(&self, message: String) {
        tracing::error!("{message}");
        self.count("reload_failed");
    }

    fn count(&self, outcome: &'static str) {
        self.events.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a chain a handshake just verified; logs and counts a refusal.
    fn admit(
        &self,
        peer: &'static str,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), TlsError> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        self.check(&chain).map_err(|e| {
            match &e {
                CrlError::Revoked {
                    subject, serial, ..
                } => tracing::warn!(peer, identity = %subject, %serial,
                    "handshake refused: {peer} certificate revoked ({e})"),
                _ => tracing::warn!(peer, "handshake refused: {e}"),
            }
            self.count("handshake_refused");
            TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        })
    }
}

/// Wraps a server-certificate verifier (client side) so that it also refuses revoked chains;
/// `inner` is returned unchanged when no CRL is configured.
pub fn guard_server(
    inner: Arc<dyn ServerCertVerifier>,
    revocation: Option<&Arc<Revocation>>,
) -> Arc<dyn ServerCertVerifier> {
    match revocation {
        None => inner,
        Some(r) => Arc::new(Guarded {
            inner,
            revocation: r.clone(),
        }),
    }
}

/// The server side's counterpart of [`guard_server`], for client certificates.
pub fn guard_client(
    inner: Arc<dyn ClientCertVerifier>,
    revocation: Option<&Arc<Revocation>>,
) -> Arc<dyn ClientCertVerifier> {
    match revocation {
        None => inner,
        Some(r) => Arc::new(Guarded {
            inner,
            revocation: r.clone(),
        }),
    }
}

/// A verifier that runs `inner`, then the revocation check.
#[derive(Debug)]
struct Guarded<V: ?Sized> {
    inner: Arc<V>,
    revocation: Arc<Revocation>,
}

impl ServerCertVerifier for Guarded<dyn ServerCertVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.revocation.admit("server", end_entity, intermediates)?;
        Ok(ok)
    }

    delegate_signature_checks!();
}

impl ClientCertVerifier for Guarded<dyn ClientCertVerifier> {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.revocation.admit("client", end_entity, intermediates)?;
        Ok(ok)
    }

    delegate_signature_checks!();
}

/// The set of `ambit run` / `ambit sidecar`: started when `--ca-crl` is given, verifying CRLs
/// against the mesh roots in `root_file`, counting into `metrics`.
pub fn start_for(
    crl: Option<&PathBuf>,
    root_file: &Path,
    metrics: &crate::metrics::Metrics,
) -> Result<Option<Arc<Revocation>>, CrlError> {
    crl.map(|path| Revocation::start(path.clone(), root_file, metrics.crl_events.clone()))
        .transpose()
}

/// The chain the peer presented in a completed handshake (leaf first), owned, for
/// [`Revocation::revoked`].
pub fn peer_chain(conn: &rustls::CommonState) -> Vec<CertificateDer<'static>> {
    conn.peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default()
}

/// [`Revocation::revoked`] for an optional set: never resolves without one.
pub async fn revoked_or_never(
    revocation: Option<Arc<Revocation>>,
    chain: Vec<CertificateDer<'static>>,
) -> CrlError {
    match revocation {
        Some(r) => r.revoked(chain).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
