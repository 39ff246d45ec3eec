use tokio::io::{AsyncReadExt, AsyncWriteExt};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;
use crate::identity::ca::{self, Ca};
use crate::identity::issuer::IssueFuture;
use crate::identity::testutil::{accept, connect, exchange, id, TempDir};

fn manager(dir: &TempDir, validity: Duration) -> Arc<CertManager> {
    Arc::new(CertManager::new(Arc::new(ca::init(dir.path()).unwrap())).with_validity(validity))
}

#[tokio::test]
async fn ensure_issues_once_and_get_never_issues() {
    let d = TempDir::new("mgr-get");
    let m = manager(&d, DEFAULT_VALIDITY);
    let who = id("a", "b");
    let err = m.get(&who).unwrap_err();
    assert!(err.to_string().contains("not issued yet"), "{err}");
    let first = m.ensure(&who).await.unwrap();
    assert!(Arc::ptr_eq(&first, &m.ensure(&who).await.unwrap()));
    assert!(Arc::ptr_eq(&first, &m.get(&who).unwrap()));
    assert_eq!(first.identity, who);
    let s1 = m.server_config(&who).unwrap();
    assert!(Arc::ptr_eq(&s1, &m.server_config(&who).unwrap()));

    m.forget(&who);
    assert!(m.get(&who).is_err());
    let second = m.ensure(&who).await.unwrap();
    assert_ne!(first.serial, second.serial);
    assert!(!Arc::ptr_eq(&s1, &m.server_config(&who).unwrap()));
}

#[tokio::test]
async fn only_allowed_identities_get_certificates() {
    let d = TempDir::new("mgr-allow");
    let m = manager(&d, DEFAULT_VALIDITY);
    let (here, gone, never) = (id("a", "here"), id("a", "gone"), id("a", "never"));
    assert!(m.allowed(&never), "everything is allowed until set_allowed");
    m.ensure(&gone).await.unwrap();

    m.set_allowed([here.clone()].into_iter().collect());
    // Identities not allowed here are not even asked for.
    assert_eq!(m.ensure_all([here.clone(), never.clone()]).await, 0);
    assert!(m.get(&here).is_ok());
    for refused in [&gone, &never] {
        assert!(!m.allowed(refused));
        let err = m.ensure(refused).await.unwrap_err();
        assert!(matches!(err, IdentityError::NotAllowed(_)));
        assert!(err.to_string().contains(&refused.to_string()), "{err}");
        assert!(m.server_config(refused).is_err());
    }
    assert_eq!(
        m.read().certs.len(),
        1,
        "the departed identity's cert was dropped"
    );
}

/// With a 4 s validity the certificate is replaced after ~2 s; new connections use the new one,
/// a session established before keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_at_half_life_keeps_existing_sessions() {
    let d = TempDir::new("mgr-rot");
    let m = manager(&d, Duration::from_secs(4));
    let (alice, bob) = (id("front", "alice"), id("back", "bob"));
    let old = m.ensure(&alice).await.unwrap();
    m.ensure(&bob).await.unwrap();
    assert!(old.refresh_at() <= old.issued_at + Duration::from_secs(2));

    // A long-lived session made with the first certificates.
    let (c, s) = tokio::io::duplex(16 * 1024);
    let cfg_c = m.client_config(&alice, vec![bob.clone()]).unwrap();
    let cfg_s = m.server_config(&bob).unwrap();
    let (client, server) = tokio::join!(connect(cfg_c, c), accept(cfg_s, s));
    let (mut client, mut server) = (client.unwrap(), server.unwrap());

    let rotation = tokio::spawn(m.clone().run_rotation());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let new = loop {
        let cur = m.get(&alice).unwrap();
        if cur.serial != old.serial {
            break cur;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rotation within 6 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(new.not_before > old.not_before);
    assert!(SystemTime::now() < old.not_after + Duration::from_secs(1));

    // New connections pick up the new certificates.
    let out = exchange(
        m.client_config(&alice, vec![bob.clone()]).unwrap(),
        m.server_config(&bob).unwrap(),
    )
    .await;
    assert_eq!(out.client.unwrap(), bob);
    assert_eq!(out.server.unwrap(), alice);

    // The old session is untouched, even once its certificates have expired.
    tokio::time::sleep(
        old.not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    )
    .await;
    client.write_all(b"still here").await.unwrap();
    client.flush().await.unwrap();
    let mut buf = [0u8; 10];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
    let peer = crate::identity::tls::peer_identity(server.get_ref().1).unwrap();
    assert_eq!(peer, alice);
    rotation.abort();
}

#[tokio::test]
async fn rotate_due_replaces_only_due_certs() {
    let d = TempDir::new("mgr-due");
    let m = manager(&d, Duration::from_secs(3600));
    let who = id("a", "b");
    let before = m.ensure(&who).await.unwrap();
    assert_eq!(m.rotate_due(SystemTime::now()).await, (0, 0));
    assert_eq!(m.next_refresh(), Some(before.refresh_at()));
    assert_eq!(m.rotate_due(before.refresh_at()).await, (1, 0));
    assert_ne!(m.get(&who).unwrap().serial, before.serial);
}

/// An issuer that can be switched off, and counts how many requests it has in flight.
struct Flaky {
    ca: Ca,
    up: AtomicBool,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Issuer for Flaky {
    fn issue<'a>(&'a self, id: &'a Identity, validity: Duration) -> IssueFuture<'a> {
        Box::pin(async move {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if !self.up.load(Ordering::SeqCst) {
                return Err(IdentityError::Issue {
                    identity: id.to_string(),
                    problem: "CA service unreachable".into(),
                });
            }
            self.ca.issue(id, validity, SystemTime::now())
        })
    }
    fn roots(&self) -> Arc<RootCertStore> {
        self.ca.roots()
    }
    fn describe(&self) -> String {
        "flaky test CA".into()
    }
}

fn flaky(dir: &TempDir, validity: Duration) -> (Arc<Flaky>, Arc<CertManager>) {
    let f = Arc::new(Flaky {
        ca: ca::init(dir.path()).unwrap(),
        up: AtomicBool::new(true),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
    });
    let m = Arc::new(CertManager::new(f.clone()).with_validity(validity));
    (f, m)
}

#[tokio::test]
async fn issuance_is_bounded_and_failures_are_reported_by_get() {
    let d = TempDir::new("mgr-flaky");
    let (issuer, m) = flaky(&d, DEFAULT_VALIDITY);
    let ids: Vec<Identity> = (0..20).map(|i| id("many", &format!("sa{i}"))).collect();
    assert_eq!(m.ensure_all(ids.clone()).await, 0);
    assert!(ids.iter().all(|i| m.get(i).is_ok()));
    let peak = issuer.max_in_flight.load(Ordering::SeqCst);
    assert!(
        (2..=MAX_CONCURRENT_ISSUES).contains(&peak),
        "{peak} requests in flight"
    );

    issuer.up.store(false, Ordering::SeqCst);
    let late = id("many", "late");
    assert_eq!(m.ensure_all([late.clone()]).await, 1);
    let err = m.get(&late).unwrap_err().to_string();
    assert!(err.contains("CA service unreachable"), "{err}");
    assert!(m.client_config(&late, vec![ids[0].clone()]).is_err());
    issuer.up.store(true, Ordering::SeqCst);
    assert_eq!(m.ensure_all([late.clone()]).await, 0);
    assert!(m.get(&late).is_ok());
}

/// A renewal that fails keeps the old certificate in use, backs off, and succeeds once the
/// issuer is back.
#[tokio::test]
async fn failed_rotation_keeps_the_old_certificate_and_retries() {
    let d = TempDir::new("mgr-retry");
    let (issuer, m) = flaky(&d, Duration::from_secs(3600));
    let who = id("a", "b");
    let old = m.ensure(&who).await.unwrap();
    issuer.up.store(false, Ordering::SeqCst);
    let due = old.refresh_at();
    assert_eq!(m.rotate_due(due).await, (0, 1));
    assert_eq!(
        m.get(&who).unwrap().serial,
        old.serial,
        "old one still served"
    );
    // Backed off: not retried at once, but by the time next_refresh says.
    assert_eq!(m.rotate_due(due).await, (0, 0));
    let retry = m.next_refresh().unwrap();
    assert!(retry > due, "retry is scheduled after the failure");
    issuer.up.store(true, Ordering::SeqCst);
    assert_eq!(m.rotate_due(retry).await, (1, 0));
    assert_ne!(m.get(&who).unwrap().serial, old.serial);
}

#[tokio::test]
async fn dump_shows_validity_and_chain_never_the_key() {
    let d = TempDir::new("mgr-dump");
    let m = manager(&d, Duration::from_secs(3600));
    let (held, pending) = (id("a", "held"), id("a", "pending"));
    m.set_allowed([held.clone(), pending.clone()].into());
    m.ensure(&held).await.unwrap();
    let dump = m.dump();
    let names: Vec<&str> = dump.iter().map(|c| c.identity.as_str()).collect();
    assert_eq!(names, [held.to_string(), pending.to_string()]);
    let cert = dump[0].certificate.as_ref().expect("held certificate");
    assert!((3500..=3600).contains(&cert.expires_in_secs), "{cert:?}");
    assert_eq!(cert.serial, m.get(&held).unwrap().serial_hex());
    assert!(cert.chain[0].starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(dump[1].certificate.is_none(), "not issued yet");
    let text = serde_json::to_string(&dump).unwrap();
    assert!(!text.contains("PRIVATE KEY"), "{text}");
}
