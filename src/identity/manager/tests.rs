use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::identity::ca;
use crate::identity::testutil::{accept, connect, exchange, id, TempDir};

fn manager(dir: &TempDir, validity: Duration) -> Arc<CertManager> {
    Arc::new(CertManager::new(ca::init(dir.path()).unwrap()).with_validity(validity))
}

#[test]
fn get_issues_once_and_caches() {
    let d = TempDir::new("mgr-get");
    let m = manager(&d, DEFAULT_VALIDITY);
    let who = id("a", "b");
    let first = m.get(&who).unwrap();
    assert!(Arc::ptr_eq(&first, &m.get(&who).unwrap()));
    assert_eq!(first.identity, who);
    let s1 = m.server_config(&who).unwrap();
    assert!(Arc::ptr_eq(&s1, &m.server_config(&who).unwrap()));

    m.forget(&who);
    let second = m.get(&who).unwrap();
    assert_ne!(first.serial, second.serial);
    assert!(!Arc::ptr_eq(&s1, &m.server_config(&who).unwrap()));
}

#[test]
fn only_allowed_identities_get_certificates() {
    let d = TempDir::new("mgr-allow");
    let m = manager(&d, DEFAULT_VALIDITY);
    let (here, gone, never) = (id("a", "here"), id("a", "gone"), id("a", "never"));
    assert!(m.allowed(&never), "everything is allowed until set_allowed");
    m.get(&gone).unwrap();

    m.set_allowed([here.clone()].into_iter().collect());
    assert!(m.get(&here).is_ok());
    for refused in [&gone, &never] {
        assert!(!m.allowed(refused));
        let err = m.get(refused).unwrap_err();
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
    let old = m.get(&alice).unwrap();
    m.get(&bob).unwrap();
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

#[test]
fn rotate_due_replaces_only_due_certs() {
    let d = TempDir::new("mgr-due");
    let m = manager(&d, Duration::from_secs(3600));
    let who = id("a", "b");
    let before = m.get(&who).unwrap();
    assert_eq!(m.rotate_due(SystemTime::now()), (0, 0));
    assert_eq!(m.next_refresh(), Some(before.refresh_at()));
    assert_eq!(m.rotate_due(before.refresh_at()), (1, 0));
    assert_ne!(m.get(&who).unwrap().serial, before.serial);
}
