use std::time::{Duration, SystemTime};

use super::*;
use crate::config::TlsPolicy;
use crate::identity::ca::{init, CA_CRL};
use crate::identity::crl::sign::revoke;
use crate::identity::crl::Serial;
use crate::identity::testutil::{exchange, id, TempDir};
use crate::identity::{tls, Ca, WorkloadCert};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn setup(tag: &str) -> (TempDir, Ca, Revocation, Family<OutcomeLabels, Counter>) {
    let dir = TempDir::new(tag);
    let ca = init(dir.path()).unwrap();
    let events = Family::default();
    let rev = Revocation::new(
        dir.path().join(CA_CRL),
        ca.root_certs().to_vec(),
        events.clone(),
    );
    (dir, ca, rev, events)
}

fn count(events: &Family<OutcomeLabels, Counter>, outcome: &'static str) -> u64 {
    events.get_or_create(&OutcomeLabels { outcome }).get()
}

fn serial(c: &WorkloadCert) -> Serial {
    Serial::from_bytes(&c.serial)
}

#[test]
fn missing_good_corrupt_and_never_good() {
    let (dir, ca, rev, events) = setup("rev-states");
    let now = SystemTime::now();
    let alice = ca.issue(&id("a", "alice"), DAY, now).unwrap();
    let bob = ca.issue(&id("b", "bob"), DAY, now).unwrap();

    // No file: nothing revoked.
    assert!(!rev.reload(now));
    rev.check(&alice.chain).unwrap();

    revoke(dir.path(), &[serial(&alice)], None, DAY, now).unwrap();
    assert!(rev.reload(now));
    assert!(matches!(
        rev.check(&alice.chain),
        Err(CrlError::Revoked { .. })
    ));
    rev.check(&bob.chain).unwrap();
    // Unchanged bytes are not parsed again.
    assert!(!rev.reload(now));
    assert_eq!(count(&events, "reloaded"), 1);

    // A corrupt version keeps the last good set and is counted.
    let path = dir.path().join(CA_CRL);
    std::fs::write(
        &path,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    assert!(!rev.reload(now));
    assert_eq!(count(&events, "reload_failed"), 1);
    assert!(matches!(
        rev.check(&alice.chain),
        Err(CrlError::Revoked { .. })
    ));
    rev.check(&bob.chain).unwrap();
    // So does a vanished file.
    std::fs::remove_file(&path).unwrap();
    assert!(!rev.reload(now));
    assert!(rev.check(&alice.chain).is_err());

    // A proxy that never read a good version refuses everyone.
    let fresh = Revocation::new(path.clone(), ca.root_certs().to_vec(), Family::default());
    std::fs::write(&path, "garbage").unwrap();
    fresh.reload(now);
    let e = fresh.check(&bob.chain).unwrap_err();
    assert!(matches!(e, CrlError::NoValidCrl { .. }), "{e}");
    // ... until one arrives (`ambit ca revoke` refuses to extend a corrupt file).
    assert!(revoke(dir.path(), &[], None, DAY, now).is_err());
    std::fs::remove_file(&path).unwrap();
    revoke(dir.path(), &[], None, DAY, now).unwrap();
    assert!(fresh.reload(now));
    fresh.check(&bob.chain).unwrap();
}

#[tokio::test]
async fn live_connections_learn_of_a_revocation() {
    let (dir, ca, rev, events) = setup("rev-live");
    let rev = Arc::new(rev);
    let now = SystemTime::now();
    let alice = ca.issue(&id("a", "alice"), DAY, now).unwrap();
    let bob = ca.issue(&id("b", "bob"), DAY, now).unwrap();
    let watch_alice = tokio::spawn(rev.clone().revoked_owned(alice.chain.clone()));
    let watch_bob = tokio::spawn(rev.clone().revoked_owned(bob.chain.clone()));
    tokio::task::yield_now().await;

    revoke(dir.path(), &[serial(&alice)], None, DAY, now).unwrap();
    assert!(rev.reload(now));
    let e = tokio::time::timeout(Duration::from_secs(5), watch_alice)
        .await
        .expect("alice's connection is told")
        .unwrap();
    assert!(
        e.to_string()
            .contains("spiffe://cluster.local/ns/a/sa/alice"),
        "{e}"
    );
    assert_eq!(count(&events, "connection_closed"), 1);
    // A corrupt file closes nothing.
    std::fs::write(dir.path().join(CA_CRL), "garbage").unwrap();
    rev.reload(now);
    tokio::task::yield_now().await;
    assert!(!watch_bob.is_finished());
    watch_bob.abort();
}

#[tokio::test]
async fn handshakes_with_a_revoked_peer_fail_on_both_sides() {
    let (dir, ca, rev, events) = setup("rev-tls");
    let rev = Arc::new(rev);
    let now = SystemTime::now();
    let alice = ca.issue(&id("a", "alice"), DAY, now).unwrap();
    let bob = ca.issue(&id("b", "bob"), DAY, now).unwrap();
    let carol = ca.issue(&id("c", "carol"), DAY, now).unwrap();
    revoke(dir.path(), &[serial(&alice)], None, DAY, now).unwrap();
    assert!(rev.reload(now));
    let client = |own: &WorkloadCert, server: &Identity| {
        tls::client_config_revocable(
            own,
            ca.roots(),
            vec![server.clone()],
            TlsPolicy::Default,
            Some(&rev),
        )
        .unwrap()
    };
    let server = |own: &WorkloadCert| {
        tls::server_config_revocable(own, ca.roots(), TlsPolicy::Default, Some(&rev)).unwrap()
    };

    // Revoked client (alice) → server (bob) refuses.
    let out = exchange(client(&alice, &bob.identity), server(&bob)).await;
    let e = out.server.unwrap_err();
    assert!(
        e.contains("revoked") && e.contains(&serial(&alice).to_string()),
        "{e}"
    );
    // Revoked server (alice) ← client (bob) refuses.
    let out = exchange(client(&bob, &alice.identity), server(&alice)).await;
    let e = out.client.unwrap_err();
    assert!(e.contains("revoked"), "{e}");
    // Unrevoked peers are fine.
    let out = exchange(client(&bob, &carol.identity), server(&carol)).await;
    assert_eq!(out.server.unwrap(), bob.identity);
    assert_eq!(count(&events, "handshake_refused"), 2);
}

use crate::identity::Identity;

impl Revocation {
    /// `revoked` as a `'static` future for spawning in tests.
    async fn revoked_owned(self: Arc<Self>, chain: Vec<CertificateDer<'static>>) -> CrlError {
        self.revoked(chain).await
    }
}

#[test]
fn removing_a_file_that_never_loaded_stops_refusing() {
    let (dir, ca, rev, _) = setup("rev-removed");
    let bob = ca.issue(&id("b", "bob"), DAY, SystemTime::now()).unwrap();
    let path = dir.path().join(CA_CRL);
    std::fs::write(&path, "garbage").unwrap();
    rev.reload(SystemTime::now());
    assert!(rev.check(&bob.chain).is_err());
    std::fs::remove_file(&path).unwrap();
    rev.reload(SystemTime::now());
    rev.check(&bob.chain).unwrap();
}
