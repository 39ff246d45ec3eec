//! What an operator reads from a running daemon: JSON access logs with ztunnel's field names,
//! the log level changed live on `/logging`, the `/config_dump` document, and a readiness
//! body that names what is pending. Real daemons in a lab; every assertion is on what the
//! daemon wrote to its log or answered on its endpoints after real traffic.
#![cfg(feature = "lab")]

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ambit::lab::traffic::Server;
use ambit::lab::{Lab, LabSpec};
use ambit::workload::{Endpoint, Service, ServicePort, Snapshot};
use serde_json::Value;
use support::*;

/// Starts an echo server on port 8080 of every pod.
async fn echo_servers(c: &Cluster) -> Vec<Server> {
    let any: SocketAddr = "[::]:8080".parse().unwrap();
    let mut servers = Vec::new();
    for pod in c.lab.pods() {
        let ns = c.lab.pod_netns(&pod.name).unwrap();
        servers.push(Server::start(&ns, any).await.unwrap());
    }
    servers
}

/// The JSON lines of `node`'s daemon log. Lines of other writers (the lab's start markers,
/// child processes) do not start with `{`; every line that does must parse.
fn json_lines(c: &Cluster, node: &str) -> Vec<Value> {
    c.lab
        .daemon_log(node)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Polls `node`'s log for the access line `message` whose `src.addr` is `src`.
fn wait_access(c: &Cluster, node: &str, message: &str, src: SocketAddr) -> Value {
    let until = Instant::now() + DEADLINE;
    loop {
        let found = json_lines(c, node).into_iter().find(|v| {
            v["scope"] == "access" && v["message"] == message && v["src.addr"] == src.to_string()
        });
        if let Some(v) = found {
            return v;
        }
        assert!(
            Instant::now() < until,
            "no access line {message:?} from {src} on {node}; log:\n{}",
            c.lab.daemon_log(node)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request to the admin endpoint of `node`, any method: status and body.
fn admin(c: &Cluster, node: &str, method: &str, path: &str) -> (u16, String) {
    if method == "GET" {
        let r = c.lab.node_http_get(node, 15000, path).expect("admin GET");
        return (r.status, r.body);
    }
    let ns = c.lab.node_netns(node).expect("node netns");
    let mut s = ns
        .run(|| std::net::TcpStream::connect("127.0.0.1:15000"))
        .expect("enter node")
        .expect("connect to admin");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    (status, body.to_string())
}

/// Replaces `path`'s content atomically (the daemon never reads half a file).
fn replace(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write the workload file");
    std::fs::rename(&tmp, path).expect("replace the workload file");
}

/// ClusterIP of the Service `web` (port 80 → n2-p1:8080) of the flow tests.
const VIP: &str = "10.96.0.10";

fn add_web_service(s: &mut Snapshot) {
    let ip = s.pods.iter().find(|p| p.name == "n2-p1").unwrap().ips[0];
    s.services.push(Service {
        name: "web".into(),
        namespace: "lab".into(),
        cluster_ips: vec![VIP.parse().unwrap()],
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
        }],
        endpoints: vec![Endpoint {
            ip,
            ready: true,
            ports: [("http".to_string(), APP_PORT)].into(),
        }],
    });
}

fn json_flag() -> Vec<String> {
    vec!["--log-format=json".into()]
}

/// An HBONE flow n1-p1 → n2-p1 is logged on both nodes, one JSON object per line, with
/// ztunnel's field names and the values of this flow.
#[tokio::test(flavor = "multi_thread")]
async fn json_access_log_of_an_hbone_flow() {
    let c = Cluster::start_with(2, 1, "iptables", add_web_service, |_| json_flag());
    let _servers = echo_servers(&c).await;
    let dst = c.v4("n2-p1");
    let src = send(&c, "n1-p1", dst).await;
    let hbone = SocketAddr::new(dst.ip(), 15008).to_string();

    let out = wait_access(&c, "n1", "connection complete", src);
    let inb = wait_access(&c, "n2", "connection complete", src);
    for (v, direction) in [(&out, "outbound"), (&inb, "inbound")] {
        assert_eq!(v["level"], "info", "{v}");
        assert_eq!(v["direction"], direction, "{v}");
        assert_eq!(v["src.workload"], "n1-p1", "{v}");
        assert_eq!(v["src.namespace"], "lab", "{v}");
        assert_eq!(v["src.identity"], identity_of("n1-p1"), "{v}");
        assert_eq!(v["dst.addr"], hbone, "{v}");
        assert_eq!(v["dst.hbone_addr"], dst.to_string(), "{v}");
        assert_eq!(v["dst.workload"], "n2-p1", "{v}");
        assert_eq!(v["dst.namespace"], "lab", "{v}");
        assert_eq!(v["dst.identity"], identity_of("n2-p1"), "{v}");
        assert_eq!(v["bytes_sent"], 10_000, "{v}");
        assert_eq!(v["bytes_recv"], 10_000, "{v}");
        assert!(
            v["duration"]
                .as_str()
                .is_some_and(|d| d.ends_with("ms") && d[..d.len() - 2].parse::<u64>().is_ok()),
            "{v}"
        );
        assert!(v.get("error").is_none(), "{v}");
        assert!(v["time"].is_string(), "{v}");
    }
    // The server side says which policy decided.
    assert!(
        inb["policy"]
            .as_str()
            .is_some_and(|p| p.starts_with("allowed")),
        "{inb}"
    );
    // The daemon's other lines are JSON too.
    assert!(json_lines(&c, "n1")
        .iter()
        .any(|v| v["message"] == "ambit running"));
    // Through the Service's ClusterIP: the Service is named, the endpoint reached by HBONE.
    let vip: SocketAddr = (VIP.parse::<std::net::IpAddr>().unwrap(), 80).into();
    let src = send(&c, "n1-p1", vip).await;
    let v = wait_access(&c, "n1", "connection complete", src);
    assert_eq!(v["dst.service"], "web.lab.svc.cluster.local", "{v}");
    assert_eq!(v["dst.hbone_addr"], dst.to_string(), "{v}");
    assert_eq!(v["dst.workload"], "n2-p1", "{v}");
    // Nothing was lost, and the drop counter is exported.
    let metrics = c.lab.admin_get("n1", "/metrics").expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "ambit_log_lines_dropped_total 0"),
        "{metrics}"
    );
}

/// `/logging` shows the filter, changes it live (an `access=debug` line appears for a
/// connection after the change, not before), takes POST with `reset`, and refuses a bad
/// filter or parameter with a 400 naming it.
#[tokio::test(flavor = "multi_thread")]
async fn logging_changes_the_level_live() {
    let c = Cluster::start_with(1, 2, "iptables", |_| {}, |_| json_flag());
    let _servers = echo_servers(&c).await;
    let dst = c.v4("n1-p2");
    let opened = |src: SocketAddr| {
        json_lines(&c, "n1")
            .into_iter()
            .any(|v| v["message"] == "connection opened" && v["src.addr"] == src.to_string())
    };

    assert_eq!(
        admin(&c, "n1", "GET", "/logging"),
        (200, "current log level is info\n".into())
    );
    let before = send(&c, "n1-p1", dst).await;
    wait_access(&c, "n1", "connection complete", before);
    assert!(!opened(before), "a debug line while the level was info");

    let (status, body) = admin(&c, "n1", "GET", "/logging?level=access%3Ddebug");
    assert_eq!(
        (status, body.as_str()),
        (200, "current log level is info,access=debug\n")
    );
    let after = send(&c, "n1-p1", dst).await;
    let line = wait_access(&c, "n1", "connection opened", after);
    assert_eq!(line["level"], "debug", "{line}");

    for (query, named) in [
        ("level=access=loud", "\"access=loud\""),
        ("level=verbose", "\"verbose\""),
        ("levle=debug", "unknown parameter \"levle\""),
    ] {
        let (status, body) = admin(&c, "n1", "GET", &format!("/logging?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(named), "{query}: {body}");
    }
    // A refused change left the filter as it was; POST with reset returns to the start.
    assert_eq!(
        admin(&c, "n1", "GET", "/logging").1,
        "current log level is info,access=debug\n"
    );
    assert_eq!(
        admin(&c, "n1", "POST", "/logging?reset"),
        (200, "current log level is info\n".into())
    );
    let reset = send(&c, "n1-p1", dst).await;
    wait_access(&c, "n1", "connection complete", reset);
    assert!(!opened(reset), "a debug line after the reset");
    // Other routes take neither POST nor parameters.
    assert_eq!(admin(&c, "n1", "POST", "/pods").0, 405);
    assert_eq!(admin(&c, "n1", "GET", "/pods?all=1").0, 400);
}

/// `/config_dump` after an HBONE flow: the pods, the certificate with its expiry and chain,
/// the pooled connection to the peer, and no private key.
#[tokio::test(flavor = "multi_thread")]
async fn config_dump_after_an_hbone_flow() {
    let c = Cluster::start(2, 1, "iptables", add_web_service);
    let _servers = echo_servers(&c).await;
    let dst = c.v4("n2-p1");
    send(&c, "n1-p1", dst).await;

    let (status, body) = admin(&c, "n1", "GET", "/config_dump");
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("PRIVATE KEY"), "{body}");
    let dump: Value = serde_json::from_str(&body).expect("config dump JSON");
    assert_eq!(dump["node"], "n1");
    assert_eq!(dump["ready"]["ready"], true, "{dump:#}");

    let pod = dump["workloads"]
        .as_array()
        .and_then(|w| w.iter().find(|p| p["pod"] == "lab/n1-p1"))
        .unwrap_or_else(|| panic!("n1-p1 not in {dump:#}"));
    assert_eq!(pod["state"], "enrolled", "{pod:#}");
    assert_eq!(pod["in_mesh"], true, "{pod:#}");
    assert_eq!(pod["service_account"], "sa-n1-p1", "{pod:#}");

    let svc = dump["services"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|s| s["hostname"] == "web.lab.svc.cluster.local")
        })
        .unwrap_or_else(|| panic!("no service web in {dump:#}"));
    assert_eq!(svc["clusterIps"][0], VIP, "{svc:#}");

    let me = identity_of("n1-p1");
    let cert = dump["certificates"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["identity"] == me))
        .and_then(|c| c.get("certificate"))
        .unwrap_or_else(|| panic!("no certificate for {me} in {dump:#}"));
    let expires = cert["expires_in_secs"].as_i64().unwrap_or(0);
    assert!(expires > 3600 && expires <= 24 * 3600, "{cert:#}");
    assert!(
        cert["serial"].as_str().is_some_and(|s| !s.is_empty()),
        "{cert:#}"
    );
    assert!(
        cert["chain"][0]
            .as_str()
            .is_some_and(|p| p.starts_with("-----BEGIN CERTIFICATE-----")),
        "{cert:#}"
    );

    let peer = SocketAddr::new(dst.ip(), 15008).to_string();
    let pooled = |dump: &Value| -> Value {
        let pool = dump["connections"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["pod"] == "lab/n1-p1"))
            .unwrap_or_else(|| panic!("no pool of n1-p1 in {dump:#}"));
        assert_eq!(pool["identity"], me);
        pool["connections"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["peer"] == peer))
            .unwrap_or_else(|| panic!("no pooled connection to {peer} in {pool:#}"))
            .clone()
    };
    let conn = pooled(&dump);
    assert_eq!(conn["identity"], identity_of("n2-p1"), "{conn:#}");
    assert!(conn["age_secs"].as_u64().is_some(), "{conn:#}");
    // The client saw the tunnel's end; the proxy gives the stream's place back right after.
    wait_until(
        "the ended flow's stream to leave the pooled connection's count",
        || {
            let (_, body) = admin(&c, "n1", "GET", "/config_dump");
            pooled(&serde_json::from_str(&body).expect("config dump JSON"))["streams"] == 0
        },
    );
}

/// A daemon whose workload file does not parse is not ready, and its readiness body names the
/// source and the error; once the file is good, it is ready.
#[test]
fn readiness_names_what_is_pending() {
    let lab = Lab::up(&LabSpec {
        nodes: 1,
        pods_per_node: 1,
        ..LabSpec::default()
    })
    .expect("lab up");
    let good = std::fs::read(lab.workloads_path()).expect("workload file");
    replace(&lab.workloads_path(), b"{ not json");
    lab.start_daemon(
        "n1",
        Path::new(env!("CARGO_BIN_EXE_ambit")),
        &["--rules=iptables".into()],
    )
    .expect("start daemon");
    let c = Cluster {
        lab,
        backend: "iptables",
    };
    let ready = || c.lab.node_http_get("n1", 15021, "/healthz/ready").ok();
    let mut last = None;
    wait_until("a readiness body naming the broken workload file", || {
        last = ready();
        last.as_ref()
            .is_some_and(|r| r.status == 503 && r.body.contains("workload source not synced yet:"))
    });
    let body: Value = serde_json::from_str(&last.unwrap().body).expect("readiness JSON");
    assert_eq!(body["ready"], false);
    let pending = body["pending"][0].as_str().unwrap_or_default();
    assert!(pending.contains("workload"), "{body}");

    replace(&c.lab.workloads_path(), &good);
    wait_until("ready once the file parses", || {
        ready().is_some_and(|r| r.status == 200)
    });
    let body: Value = serde_json::from_str(&ready().unwrap().body).expect("readiness JSON");
    assert_eq!(body, serde_json::json!({"ready": true, "pending": []}));
}
