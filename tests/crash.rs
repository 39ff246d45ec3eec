//! e (issue 11): SIGKILL of a node daemon while a client pod keeps opening connections. While
//! it is down the pods fail closed — nothing crosses the fabric in plaintext (tcpdump on the
//! fabric) — and a daemon started again adopts the pods and serves new connections. The time
//! from the restart to the first connection served end to end is measured and printed.
#![cfg(feature = "lab")]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit::config::HBONE_PORT;
use ambit::lab::traffic::{exchange, Server};
use support::capture::{count, segment, Capture};
use support::*;

/// Marker filling each payload; it must never be seen on the fabric.
const MARKER: &[u8] = b"AMBIT-CRASH-PLAINTEXT-MARKER|";
/// Pause between two new connections of the client.
const PACE: Duration = Duration::from_millis(20);
/// Failed connections seen before the daemon is started again.
const DOWN_ATTEMPTS: usize = 10;
/// Longest one attempt may take (a refused one ends at once).
const ATTEMPT: Duration = Duration::from_secs(1);

/// One connection attempt of the client.
#[derive(Clone, Debug)]
struct Attempt {
    started: Instant,
    ended: Instant,
    /// The client address, when it connected.
    local: Option<SocketAddr>,
    /// Echoed back intact.
    ok: bool,
}

/// A client in pod `from` opening a new connection to `dst` every [`PACE`] until dropped.
struct Client {
    log: Arc<Mutex<Vec<Attempt>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    fn start(c: &Cluster, from: &str, dst: SocketAddr, payload: Vec<u8>) -> Client {
        let ns = c.lab.pod_netns(from).expect("pod netns");
        let log = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let log = log.clone();
            async move {
                loop {
                    let started = Instant::now();
                    let r = exchange(&ns, dst, &payload, ATTEMPT).await;
                    let attempt = Attempt {
                        started,
                        ended: Instant::now(),
                        local: r.as_ref().ok().map(|e| e.local),
                        ok: r.is_ok_and(|e| e.reply == payload),
                    };
                    log.lock().unwrap().push(attempt);
                    tokio::time::sleep(PACE).await;
                }
            }
        });
        Client { log, task }
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until an attempt started at or after `since` satisfies `pred`; returns it.
    async fn wait(&self, what: &str, since: Instant, pred: impl Fn(&Attempt) -> bool) -> Attempt {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(a) = self
                .attempts()
                .into_iter()
                .find(|a| a.started >= since && pred(a))
            {
                return a;
            }
            assert!(Instant::now() < until, "no attempt {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether process `pid` has exited (gone, or a zombie not reaped yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: `pid (comm) S ...`.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// SIGKILLs the daemon of `victim` while n1-p1 connects to n2-p1 every 20 ms, restarts it,
/// and checks the fabric capture and the time until service is back.
async fn sigkill_and_restart(victim: &str) {
    let c = Cluster::start_stateful(2, 1, "iptables");
    let server_ns = c.lab.pod_netns("n2-p1").expect("pod netns");
    let _server = Server::start(&server_ns, "[::]:8080".parse().expect("address"))
        .await
        .expect("echo server");
    let dst = c.v4("n2-p1");
    send_routed(&c, "n1-p1", dst, "hbone").await;

    let fabric = c.lab.fabric_netns().expect("fabric netns");
    let pcap = c.lab.dir().join("crash.pcap");
    let capture = Capture::start(&fabric, "n1", &pcap);
    let payload: Vec<u8> = MARKER.iter().copied().cycle().take(4096).collect();
    let client = Client::start(&c, "n1-p1", dst, payload.clone());
    let begin = Instant::now();
    client.wait("served before the kill", begin, |a| a.ok).await;

    let pid = c.lab.daemon_pid(victim).expect("daemon pid");
    // SAFETY: kill(2) of the daemon this test started; it is not reaped before the restart
    // below, so the pid cannot have been reused.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let killed = Instant::now();
    wait_until("the killed daemon to exit", || exited(pid));
    // Down for a while: many fresh connections meet the dead daemon, not just one.
    wait_until("connections failing while the daemon is down", || {
        let failed = client
            .attempts()
            .iter()
            .filter(|a| a.started >= killed && !a.ok)
            .count();
        failed >= DOWN_ATTEMPTS
    });

    let restarted = Instant::now();
    c.start_daemon(victim);
    let back = client
        .wait("served after the restart", restarted, |a| a.ok)
        .await;
    let served_after = back.ended - restarted;
    c.lab.wait_ready(victim, DEADLINE).expect("ready again");
    let ready_after = restarted.elapsed();
    let attempts = client.attempts();
    drop(client);
    let failed = attempts
        .iter()
        .filter(|a| a.started >= killed && a.started < back.started && !a.ok)
        .count();

    // It went through the mesh again, as HBONE, from the pod's own address.
    let local = back.local.expect("served attempt has a client address");
    let flow = c.wait_flow("n1", |f| f["src"] == local.to_string() && is(f, "outbound"));
    assert_eq!(flow["route"], "hbone", "{flow:#}");

    let sentinel = SocketAddr::new(c.lab.node("n1").expect("node").ipv4.into(), 15020);
    capture.flush(&fabric, sentinel).await;
    let (raw, text) = capture.stop();
    assert_eq!(
        count(&raw, MARKER),
        0,
        "payload seen in clear on the fabric"
    );
    let (a, b) = (c.v4("n1-p1").ip(), dst.ip());
    let segments: Vec<_> = text
        .lines()
        .filter_map(|l| segment(l).map(|s| (l, s)))
        .filter(|(_, s)| (s.src.0 == a && s.dst.0 == b) || (s.src.0 == b && s.dst.0 == a))
        .collect();
    for (line, s) in &segments {
        assert!(
            s.src.1 == HBONE_PORT || s.dst.1 == HBONE_PORT,
            "segment between the pods not on {HBONE_PORT}: {line}"
        );
    }
    let carried: usize = segments.iter().map(|(_, s)| s.len).sum();
    assert!(
        carried >= 2 * payload.len(),
        "the capture saw only {carried} bytes between the pods"
    );

    println!(
        "SIGKILL of {victim}'s daemon: {failed} connections refused while it was down \
         ({:?} from kill to restart); first connection served {served_after:?} after the \
         restart (readiness 200 seen {ready_after:?} after it)",
        restarted - killed
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_client_node_daemon_fails_closed_and_serves_after_restart() {
    sigkill_and_restart("n1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_server_node_daemon_fails_closed_and_serves_after_restart() {
    sigkill_and_restart("n2").await;
}
