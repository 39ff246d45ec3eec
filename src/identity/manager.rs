//! Per-identity certificates: issued on first use, replaced at half-life, limited to the
//! identities of pods enrolled on this node.
//!
//! The hot path ([`CertManager::get`], [`CertManager::server_config`]) takes one read lock and
//! clones an `Arc`. Signing happens outside the lock so that a slow RSA CA never stalls
//! connections of other identities. A rotated certificate replaces the map entry; connections
//! that already hold the old `Arc` (or a config built from it) are not affected.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::ca::fmt_time;
use super::{tls, Ca, Identity, IdentityError, WorkloadCert};

/// Default lifetime of a workload certificate.
pub use crate::config::DEFAULT_CERT_VALIDITY as DEFAULT_VALIDITY;

/// Longest the rotation task sleeps between checks; also the retry delay after a failure.
const MAX_POLL: Duration = Duration::from_secs(1);

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

#[derive(Default)]
struct State {
    certs: HashMap<Identity, Arc<Entry>>,
    /// `None` until [`CertManager::set_allowed`] is first called: every identity is allowed.
    allowed: Option<HashSet<Identity>>,
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
    ca: Ca,
    roots: Arc<RootCertStore>,
    validity: Duration,
    state: RwLock<State>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("validity", &self.validity)
            .field("certs", &self.read().certs.len())
            .finish_non_exhaustive()
    }
}

impl CertManager {
    /// A manager issuing from `ca`, trusting `ca`'s roots, with [`DEFAULT_VALIDITY`] and every
    /// identity allowed until [`set_allowed`](Self::set_allowed) is called.
    pub fn new(ca: Ca) -> Self {
        CertManager {
            roots: ca.roots(),
            ca,
            validity: DEFAULT_VALIDITY,
            state: RwLock::new(State::default()),
        }
    }

    /// Sets the lifetime of certificates issued from now on.
    pub fn with_validity(mut self, validity: Duration) -> Self {
        self.validity = validity;
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
        state.allowed = Some(ids);
    }

    /// Whether a certificate may be issued for `id` on this node.
    pub fn allowed(&self, id: &Identity) -> bool {
        self.read().allows(id)
    }

    /// Drops the certificate of `id` (e.g. its last pod left); a later `get` issues a new one.
    pub fn forget(&self, id: &Identity) {
        self.write().certs.remove(id);
    }

    /// The current certificate for `id`, issued now if there is none (or if the one held has
    /// expired because rotation is not running). Fails for identities not allowed here.
    pub fn get(&self, id: &Identity) -> Result<Arc<WorkloadCert>, IdentityError> {
        Ok(self.entry(id)?.cert.clone())
    }

    /// A server config presenting the current certificate of `id`, cached per certificate.
    pub fn server_config(&self, id: &Identity) -> Result<Arc<ServerConfig>, IdentityError> {
        let entry = self.entry(id)?;
        if let Some(config) = entry.server.get() {
            return Ok(config.clone());
        }
        let config = tls::server_config(&entry.cert, self.roots.clone())?;
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
        tls::client_config(&own, self.roots.clone(), expected_server)
    }

    fn entry(&self, id: &Identity) -> Result<Arc<Entry>, IdentityError> {
        {
            let state = self.read();
            if !state.allows(id) {
                return Err(IdentityError::NotAllowed(id.clone()));
            }
            if let Some(e) = state.certs.get(id) {
                if SystemTime::now() < e.cert.not_after {
                    return Ok(e.clone());
                }
            }
        }
        let fresh = Entry::new(self.ca.issue(id, self.validity, SystemTime::now())?);
        let mut state = self.write();
        // Re-check: the allowed set may have changed while we were signing.
        if !state.allows(id) {
            return Err(IdentityError::NotAllowed(id.clone()));
        }
        // Another caller may have issued one meanwhile; keep theirs so all callers agree.
        if let Some(e) = state.certs.get(id) {
            if SystemTime::now() < e.cert.not_after {
                return Ok(e.clone());
            }
        }
        state.certs.insert(id.clone(), fresh.clone());
        drop(state);
        tracing::debug!(identity = %id, serial = %fresh.cert.serial_hex(),
            not_after = %fmt_time(fresh.cert.not_after), "workload certificate issued");
        Ok(fresh)
    }

    /// Re-issues every certificate whose refresh time is at or before `now`. Returns how many
    /// were replaced and how many failed (a failure keeps the old certificate and is retried).
    pub fn rotate_due(&self, now: SystemTime) -> (usize, usize) {
        let due: Vec<(Identity, Vec<u8>)> = self
            .read()
            .certs
            .iter()
            .filter(|(_, e)| e.cert.refresh_at() <= now)
            .map(|(id, e)| (id.clone(), e.cert.serial.clone()))
            .collect();
        let (mut rotated, mut failed) = (0, 0);
        for (id, old_serial) in due {
            match self.ca.issue(&id, self.validity, SystemTime::now()) {
                Ok(cert) => {
                    let serial = cert.serial_hex();
                    let mut state = self.write();
                    // Only replace what we looked at: it may have been forgotten meanwhile.
                    if let Some(slot) = state.certs.get_mut(&id) {
                        if slot.cert.serial == old_serial {
                            *slot = Entry::new(cert);
                            rotated += 1;
                            tracing::info!(identity = %id, %serial, "workload certificate rotated");
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(identity = %id, error = %e, "certificate rotation failed; will retry");
                }
            }
        }
        (rotated, failed)
    }

    /// The earliest refresh time among the held certificates.
    pub fn next_refresh(&self) -> Option<SystemTime> {
        self.read()
            .certs
            .values()
            .map(|e| e.cert.refresh_at())
            .min()
    }

    /// Rotation loop: sleeps until the earliest refresh time (waking at least every second, so
    /// certificates issued meanwhile are noticed) and re-issues what is due. Runs forever; abort
    /// the task to stop it.
    pub async fn run_rotation(self: Arc<Self>) {
        loop {
            let now = SystemTime::now();
            let (_, failed) = self.rotate_due(now);
            let wait = match self.next_refresh() {
                _ if failed > 0 => MAX_POLL,
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

#[cfg(test)]
mod tests;
