//! Per-identity certificates: issued before a pod is enrolled ([`CertManager::ensure_all`]),
//! replaced at half-life, limited to the identities of pods enrolled on this node.
//!
//! The hot path ([`CertManager::get`], [`CertManager::server_config`]) takes one read lock and
//! clones an `Arc`; it never issues, so a connection never waits for (or depends on) the CA:
//! without a valid certificate it fails closed. Issuance goes through an [`Issuer`] (the CA
//! service, or a local CA key in development), outside the lock, several identities at a time.
//! A rotated certificate replaces the map entry; connections that already hold the old `Arc`
//! (or a config built from it) are not affected. A failed rotation keeps the old certificate
//! and is retried with backoff until it expires.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use futures_util::stream::{self, StreamExt};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::ca::fmt_time;
use super::issuer::Issuer;
use super::revocation::Revocation;
use super::tls::{self, TlsPolicy};
use super::{Identity, IdentityError, WorkloadCert};

/// Default lifetime of a workload certificate.
pub use crate::config::DEFAULT_CERT_VALIDITY as DEFAULT_VALIDITY;

/// Longest the rotation task sleeps between checks; also the first retry delay after a failure.
const MAX_POLL: Duration = Duration::from_secs(1);

/// Longest delay between two attempts to renew a certificate that failed to renew.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Issuance requests in flight at once (a burst of new pods, or many rotations falling due
/// together, must not open hundreds of requests to the CA).
pub const MAX_CONCURRENT_ISSUES: usize = 8;

/// A certificate plus the server config built from it (lazily, at most once).
struct Entry {
    cert: Arc<WorkloadCert>,
    server: OnceLock<Arc<ServerConfig>>,
}

impl Entry {
    fn new(cert: WorkloadCert) -> Arc<Entry> {
        Arc::new(Entry {
            cert: Arc::new(cert),
            server: OnceLock::new(),
        })
    }
}

/// The last failed attempt to issue or renew an identity's certificate.
struct Failure {
    error: String,
    attempts: u32,
    retry_at: SystemTime,
}

#[derive(Default)]
struct State {
    certs: HashMap<Identity, Arc<Entry>>,
    /// `None` until [`CertManager::set_allowed`] is first called: every identity is allowed.
    allowed: Option<HashSet<Identity>>,
    failures: HashMap<Identity, Failure>,
}

impl State {
    fn allows(&self, id: &Identity) -> bool {
        match &self.allowed {
            None => true,
            Some(allowed) => allowed.contains(id),
        }
    }
}

/// Hands out the current certificate of each local identity and keeps it fresh.
pub struct CertManager {
    issuer: Arc<dyn Issuer>,
    roots: Arc<RootCertStore>,
    validity: Duration,
    /// Key-exchange groups of every config handed out.
    tls_policy: TlsPolicy,
    state: RwLock<State>,
    revocation: Option<Arc<Revocation>>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("issuer", &self.issuer.describe())
            .field("validity", &self.validity)
            .field("tls_policy", &self.tls_policy)
            .field("certs", &self.read().certs.len())
            .finish_non_exhaustive()
    }
}

impl CertManager {
    /// A manager issuing through `issuer`, trusting its roots, with [`DEFAULT_VALIDITY`] and
    /// every identity allowed until [`set_allowed`](Self::set_allowed) is called.
    pub fn new(issuer: Arc<dyn Issuer>) -> Self {
        CertManager {
            roots: issuer.roots(),
            issuer,
            validity: DEFAULT_VALIDITY,
            tls_policy: TlsPolicy::default(),
            state: RwLock::new(State::default()),
            revocation: None,
        }
    }

    /// Makes every configuration refuse peers whose chain `revocation` revokes.
    pub fn with_revocation(mut self, revocation: Option<Arc<Revocation>>) -> Self {
        self.revocation = revocation;
        self
    }

    /// The CRL set peers are checked against, if one is configured.
    pub fn revocation(&self) -> Option<Arc<Revocation>> {
        self.revocation.clone()
    }

    /// Sets the lifetime of certificates issued from now on.
    pub fn with_validity(mut self, validity: Duration) -> Self {
        self.validity = validity;
        self
    }

    /// Sets the key-exchange policy of the TLS configs handed out from now on.
    pub fn with_tls_policy(mut self, policy: TlsPolicy) -> Self {
        self.tls_policy = policy;
        self
    }

    /// The trust anchors peers are verified against.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// Restricts issuance to `ids` (the identities of pods enrolled on this node) and drops the
    /// certificates of identities no longer in the set, which also stops rotating them.
    pub fn set_allowed(&self, ids: HashSet<Identity>) {
        let mut state = self.write();
        state.certs.retain(|id, _| ids.contains(id));
        state.failures.retain(|id, _| ids.contains(id));
        state.allowed = Some(ids);
    }

    /// Whether a certificate may be issued for `id` on this node.
    pub fn allowed(&self, id: &Identity) -> bool {
        self.read().allows(id)
    }

    /// Drops the certificate of `id` (e.g. its last pod left); a later `get` issues a new one.
    pub fn forget(&self, id: &Identity) {
        let mut state = self.write();
        state.certs.remove(id);
        state.failures.remove(id);
    }

    /// The current certificate for `id`. Never issues: fails for identities not allowed here
    /// and for those without a valid certificate (saying why, e.g. the CA's last error).
    pub fn get(&self, id: &Identity) -> Result<Arc<WorkloadCert>, IdentityError> {
        Ok(self.entry(id)?.cert.clone())
    }

    /// A server config presenting the current certificate of `id`, cached per certificate.
    pub fn server_config(&self, id: &Identity) -> Result<Arc<ServerConfig>, IdentityError> {
        let entry = self.entry(id)?;
        if let Some(config) = entry.server.get() {
            return Ok(config.clone());
        }
        let config = tls::server_config_revocable(
            &entry.cert,
            self.roots.clone(),
            self.tls_policy,
            self.revocation.as_ref(),
        )?;
        // A concurrent caller may have won the race; either config is equivalent.
        Ok(entry.server.get_or_init(|| config).clone())
    }

    /// A client config presenting the current certificate of `id` and accepting a server that
    /// presents one of `expected_server`. Built per call (see [`tls`] for why that is cheap).
    pub fn client_config(
        &self,
        id: &Identity,
        expected_server: Vec<Identity>,
    ) -> Result<Arc<ClientConfig>, IdentityError> {
        let own = self.get(id)?;
        tls::client_config_revocable(
            &own,
            self.roots.clone(),
            expected_server,
            self.tls_policy,
            self.revocation.as_ref(),
        )
    }

    fn entry(&self, id: &Identity) -> Result<Arc<Entry>, IdentityError> {
        let state = self.read();
        if !state.allows(id) {
            return Err(IdentityError::NotAllowed(id.clone()));
        }
        match state.certs.get(id) {
            Some(e) if SystemTime::now() < e.cert.not_after => Ok(e.clone()),
            held => Err(IdentityError::NoCertificate {
                identity: id.to_string(),
                reason: match (state.failures.get(id), held) {
                    (Some(f), _) => format!("last attempt to issue failed: {}", f.error),
                    (None, Some(e)) => format!("expired at {}", fmt_time(e.cert.not_after)),
                    (None, None) => "not issued yet".into(),
                },
            }),
        }
    }

    /// The current certificate for `id`, issued now (through the issuer) if there is no
    /// valid one.
    pub async fn ensure(&self, id: &Identity) -> Result<Arc<WorkloadCert>, IdentityError> {
        match self.get(id) {
            Err(IdentityError::NoCertificate { .. }) => {
                self.issue_one(id, None, SystemTime::now()).await
            }
            held => held,
        }
    }

    /// Makes sure each of `ids` has a valid certificate, issuing the missing ones, at most
    /// [`MAX_CONCURRENT_ISSUES`] at a time. Returns how many could not be issued; their error
    /// is what [`get`](Self::get) then reports.
    pub async fn ensure_all(&self, ids: impl IntoIterator<Item = Identity>) -> usize {
        let missing: HashSet<Identity> = ids
            .into_iter()
            .filter(|id| matches!(self.get(id), Err(IdentityError::NoCertificate { .. })))
            .collect();
        stream::iter(missing)
            .map(|id| async move { self.issue_one(&id, None, SystemTime::now()).await.is_err() })
            .buffer_unordered(MAX_CONCURRENT_ISSUES)
            .filter(|failed| std::future::ready(*failed))
            .count()
            .await
    }

    /// Issues a certificate for `id` and stores it, unless `id` is no longer allowed or (for a
    /// rotation, `replacing` the serial looked at) the held certificate changed meanwhile. A
    /// failure is retried by rotation no earlier than a backoff after `now`.
    async fn issue_one(
        &self,
        id: &Identity,
        replacing: Option<&[u8]>,
        now: SystemTime,
    ) -> Result<Arc<WorkloadCert>, IdentityError> {
        if !self.allowed(id) {
            return Err(IdentityError::NotAllowed(id.clone()));
        }
        let issued = self.issuer.issue(id, self.validity).await;
        let mut state = self.write();
        let fresh = match issued {
            Ok(cert) => Entry::new(cert),
            Err(e) => {
                let attempts = state.failures.get(id).map_or(0, |f| f.attempts) + 1;
                let delay = (MAX_POLL * 2u32.saturating_pow(attempts - 1)).min(MAX_RETRY);
                state.failures.insert(
                    id.clone(),
                    Failure {
                        error: e.to_string(),
                        attempts,
                        retry_at: now.max(SystemTime::now()) + delay,
                    },
                );
                drop(state);
                tracing::warn!(identity = %id, error = %e, retry_in = ?delay,
                    issuer = %self.issuer.describe(), "certificate issuance failed");
                return Err(e);
            }
        };
        // Re-check: the allowed set may have changed while we were waiting for the issuer.
        if !state.allows(id) {
            return Err(IdentityError::NotAllowed(id.clone()));
        }
        state.failures.remove(id);
        let current = state.certs.get(id).cloned();
        match (current, replacing) {
            // Another caller stored a valid one meanwhile; keep theirs so all callers agree.
            (Some(e), None) if SystemTime::now() < e.cert.not_after => return Ok(e.cert.clone()),
            // Forgotten, or replaced by someone else, while we were renewing.
            (None, Some(_)) => return Ok(fresh.cert.clone()),
            (Some(e), Some(serial)) if e.cert.serial != serial => return Ok(e.cert.clone()),
            _ => {}
        }
        state.certs.insert(id.clone(), fresh.clone());
        drop(state);
        let verb = if replacing.is_some() {
            "rotated"
        } else {
            "issued"
        };
        tracing::info!(identity = %id, serial = %fresh.cert.serial_hex(),
            not_after = %fmt_time(fresh.cert.not_after), issuer = %self.issuer.describe(),
            "workload certificate {verb}");
        Ok(fresh.cert.clone())
    }

    /// Renews every certificate whose refresh time is at or before `now` (and whose last
    /// failed renewal, if any, is due for a retry), several at a time. Returns how many were
    /// replaced and how many failed (a failure keeps the old certificate and is retried).
    pub async fn rotate_due(&self, now: SystemTime) -> (usize, usize) {
        let due: Vec<(Identity, Vec<u8>)> = {
            let state = self.read();
            state
                .certs
                .iter()
                .filter(|(id, e)| {
                    e.cert.refresh_at() <= now
                        && state.failures.get(*id).is_none_or(|f| f.retry_at <= now)
                })
                .map(|(id, e)| (id.clone(), e.cert.serial.clone()))
                .collect()
        };
        let results: Vec<bool> = stream::iter(due)
            .map(
                |(id, serial)| async move { self.issue_one(&id, Some(&serial), now).await.is_ok() },
            )
            .buffer_unordered(MAX_CONCURRENT_ISSUES)
            .collect()
            .await;
        let rotated = results.iter().filter(|ok| **ok).count();
        (rotated, results.len() - rotated)
    }

    /// The earliest time something is due: a refresh, or the retry of a failed renewal.
    pub fn next_refresh(&self) -> Option<SystemTime> {
        let state = self.read();
        state
            .certs
            .iter()
            .map(|(id, e)| match state.failures.get(id) {
                Some(f) => f.retry_at.max(e.cert.refresh_at()),
                None => e.cert.refresh_at(),
            })
            .min()
    }

    /// Rotation loop: sleeps until the next refresh or retry (waking at least every second, so
    /// certificates issued meanwhile are noticed) and renews what is due. Runs forever; abort
    /// the task to stop it.
    pub async fn run_rotation(self: Arc<Self>) {
        loop {
            self.rotate_due(SystemTime::now()).await;
            let now = SystemTime::now();
            let wait = match self.next_refresh() {
                Some(at) => at.duration_since(now).unwrap_or_default().min(MAX_POLL),
                None => MAX_POLL,
            };
            // Never spin: certificates are second-granular, so 10 ms costs nothing.
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
        }
    }

    // A poisoned lock only means another thread panicked while holding it; the map itself is
    // always left consistent (single inserts/removes), so keep serving rather than cascade.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

mod dump;
pub use dump::{CertDetails, CertView};

#[cfg(test)]
mod tests;
