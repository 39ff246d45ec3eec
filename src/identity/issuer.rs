//! Where workload certificates come from: the [`Issuer`] trait, implemented by the in-process
//! [`Ca`] (a development shortcut: the node then holds the CA key) and by the CA service
//! client (`crate::ca::client`), which sends a CSR and keeps the key local.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;

use super::{Ca, Identity, IdentityError, WorkloadCert};

/// The future an [`Issuer`] returns.
pub type IssueFuture<'a> =
    Pin<Box<dyn Future<Output = Result<WorkloadCert, IdentityError>> + Send + 'a>>;

/// Something that produces a certificate (with a fresh local key) for an identity.
pub trait Issuer: Send + Sync {
    /// A new certificate for `id`, asking for `validity` (the issuer may shorten it).
    fn issue<'a>(&'a self, id: &'a Identity, validity: Duration) -> IssueFuture<'a>;

    /// The trust anchors peers' certificates are verified against.
    fn roots(&self) -> Arc<RootCertStore>;

    /// What this issuer is, for logs ("local CA", "CA service at …").
    fn describe(&self) -> String;
}

/// The in-process CA: signs synchronously (an ECDSA signature takes well under a
/// millisecond), with the key this process loaded.
impl Issuer for Ca {
    fn issue<'a>(&'a self, id: &'a Identity, validity: Duration) -> IssueFuture<'a> {
        Box::pin(async move { Ca::issue(self, id, validity, SystemTime::now()) })
    }

    fn roots(&self) -> Arc<RootCertStore> {
        Ca::roots(self)
    }

    fn describe(&self) -> String {
        "local CA key".into()
    }
}
