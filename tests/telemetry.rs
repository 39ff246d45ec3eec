//! Istio's TCP metrics as Prometheus scrapes them from the real daemons: after known flows,
//! every label of `istio_tcp_*` on both reporters is what ztunnel would report, and the byte
//! counters equal the bytes the apps exchanged — already while the connection is open.
//!
//! The lab: pod `n1-p1` (workload `client`, `app.kubernetes.io/name=shop-client`,
//! `version=v1`) calls Service `db` (ClusterIP, endpoint `n2-p1:9090`), pod `n2-p1` being
//! `service.istio.io/canonical-name=db`, `service.istio.io/canonical-revision=v2` with no
//! workload (a bare pod). The server speaks a tiny protocol with known, unequal byte counts in
//! each direction, so a swapped `sent`/`received` is noticed.
#![cfg(feature = "lab")]

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use ambit::netns::NetNs;
use ambit::workload::{Endpoint, Service, ServicePort, Snapshot};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VIP: &str = "10.96.0.20";
const SERVICE_PORT: u16 = 5432;
const DB_PORT: u16 = 9090;
/// A port of `n2-p1` an AuthorizationPolicy denies.
const DENIED_PORT: u16 = 9191;

/// One sample of the exposition: metric name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus text exposition (the subset prometheus-client writes: no timestamps,
/// label values with `\\`, `\"` and `\n` escapes).
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let (name, mut rest) = match series.split_once('{') {
            Some((n, r)) => (n, r.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        let mut labels = BTreeMap::new();
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
            let mut val = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().expect("unterminated label value") {
                    (_, '\\') => match chars.next().expect("escape").1 {
                        'n' => val.push('\n'),
                        c => val.push(c),
                    },
                    (i, '"') => break i,
                    (_, c) => val.push(c),
                }
            };
            labels.insert(key.to_string(), val);
            rest = after[end + 1..].trim_start_matches(',');
        }
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

fn scrape(c: &Cluster, node: &str) -> Vec<Sample> {
    parse(&c.lab.admin_get(node, "/metrics").expect("GET /metrics"))
}

/// The value of the one `name` sample whose labels include all of `want`; 0 if none.
fn value(samples: &[Sample], name: &str, want: &BTreeMap<String, String>) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && want.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .collect();
    assert!(matching.len() <= 1, "{name}: several series match {want:?}");
    let found = matching.first();
    if let Some(s) = found {
        // Every label was named: none missing, none extra.
        let keys = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&s.labels), keys(want), "{name}: label names");
    }
    found.map_or(0.0, |s| s.value)
}

/// Polls `node`'s metrics until `name{want} == expected`.
fn wait_value(c: &Cluster, node: &str, name: &str, want: &BTreeMap<String, String>, expected: f64) {
    let until = Instant::now() + DEADLINE;
    loop {
        let samples = scrape(c, node);
        let got = value(&samples, name, want);
        if got == expected {
            return;
        }
        assert!(
            Instant::now() < until,
            "{node}: {name} is {got}, expected {expected}, labels {want:#?}; series: {:#?}",
            samples
                .iter()
                .filter(|s| s.name == name)
                .collect::<Vec<_>>()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The complete label set ztunnel reports for a connection; `overrides` change single labels.
fn labels(base: &[(&str, &str)], overrides: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = base
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in overrides {
        assert!(m.contains_key(*k), "no label {k}");
        m.insert(k.to_string(), v.to_string());
    }
    m
}

/// Listens on `[::]:DB_PORT` in `ns`: per connection, reads `first_in` bytes, answers
/// `first_out`, reads to EOF (expecting `rest_in` more), answers `rest_out` and closes.
async fn db_server(ns: &NetNs, script: [usize; 4]) -> tokio::task::JoinHandle<()> {
    let listener = listen_in(ns, DB_PORT);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let [first_in, first_out, rest_in, rest_out] = script;
                let mut buf = vec![0u8; first_in];
                s.read_exact(&mut buf).await.expect("first request");
                s.write_all(&vec![b'a'; first_out])
                    .await
                    .expect("first answer");
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).await.expect("rest of the request");
                assert_eq!(rest.len(), rest_in, "server: rest of the request");
                s.write_all(&vec![b'b'; rest_out])
                    .await
                    .expect("last answer");
                s.shutdown().await.expect("close");
            });
        }
    })
}

/// The client's half of the script, in two steps so the test can look between them.
struct DbClient {
    stream: TcpStream,
}

impl DbClient {
    async fn open(ns: &NetNs, dst: SocketAddr, first_in: usize, first_out: usize) -> DbClient {
        let mut stream = ambit::lab::traffic::connect(ns, dst)
            .await
            .unwrap_or_else(|e| panic!("connect {dst}: {e}"));
        stream.write_all(&vec![b'q'; first_in]).await.expect("send");
        let mut back = vec![0u8; first_out];
        tokio::time::timeout(DEADLINE, stream.read_exact(&mut back))
            .await
            .expect("first answer in time")
            .expect("first answer");
        DbClient { stream }
    }

    async fn finish(mut self, rest_in: usize, rest_out: usize) {
        self.stream
            .write_all(&vec![b'r'; rest_in])
            .await
            .expect("send the rest");
        self.stream.shutdown().await.expect("half-close");
        let mut back = Vec::new();
        tokio::time::timeout(DEADLINE, self.stream.read_to_end(&mut back))
            .await
            .expect("last answer in time")
            .expect("last answer");
        assert_eq!(back.len(), rest_out);
    }
}

/// With plain TCP copied by splice(2) (the default).
#[tokio::test(flavor = "multi_thread")]
async fn istio_tcp_metrics_label_both_reporters_and_count_bytes_live() {
    scenario(file_lab("splice")).await
}

/// With plain TCP copied through buffers.
#[tokio::test(flavor = "multi_thread")]
async fn istio_tcp_metrics_count_bytes_live_with_buffered_copy() {
    scenario(file_lab("buffered")).await
}

/// With the Kubernetes source: the client's workload comes from its pod's controller owner.
#[tokio::test(flavor = "multi_thread")]
async fn istio_tcp_metrics_with_the_kubernetes_source() {
    scenario(Cluster::start_kube(2, 1, true, world)).await
}

/// The lab's pods, Service and policy (see the top of the file).
fn world(s: &mut Snapshot) {
    let client = s.pods.iter_mut().find(|p| p.name == "n1-p1").unwrap();
    client.workload = Some("client".into());
    client
        .labels
        .insert("app.kubernetes.io/name".into(), "shop-client".into());
    client.labels.insert("version".into(), "v1".into());
    let db = s.pods.iter_mut().find(|p| p.name == "n2-p1").unwrap();
    let db_ip = db.ips[0];
    for (k, v) in [
        ("app", "not-this-one"),
        ("service.istio.io/canonical-name", "db"),
        ("service.istio.io/canonical-revision", "v2"),
    ] {
        db.labels.insert(k.into(), v.into());
    }
    s.services.push(Service {
        name: "db".into(),
        namespace: "lab".into(),
        cluster_ips: vec![VIP.parse().unwrap()],
        ports: vec![ServicePort {
            name: "pg".into(),
            port: SERVICE_PORT,
        }],
        endpoints: vec![Endpoint {
            ip: db_ip,
            ready: true,
            ports: [("pg".to_string(), DB_PORT)].into(),
        }],
    });
    s.istio.push(serde_json::json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "no-admin-port", "namespace": "lab"},
        "spec": {"action": "DENY",
                 "rules": [{"to": [{"operation": {"ports": [DENIED_PORT.to_string()]}}]}]},
    }));
}

/// With the workload file, plain TCP copied by `tcp_copy` (`splice` or `buffered`).
fn file_lab(tcp_copy: &'static str) -> Cluster {
    let args = move |_: &str| vec![format!("--tcp-copy={tcp_copy}")];
    Cluster::start_with(2, 1, "iptables", world, args)
}

async fn scenario(c: Cluster) {
    c.wait_state("n1-p1", "enrolled");
    c.wait_state("n2-p1", "enrolled");
    let script = [3000, 500, 7000, 1500];
    let _server = db_server(&c.lab.pod_netns("n2-p1").unwrap(), script).await;

    let hbone = [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("source_canonical_service", "shop-client"),
        ("source_canonical_revision", "v1"),
        ("source_workload_namespace", "lab"),
        ("source_principal", &identity_of("n1-p1")),
        ("source_app", "shop-client"),
        ("source_version", "v1"),
        ("source_cluster", "Kubernetes"),
        ("destination_service", "db.lab.svc.cluster.local"),
        ("destination_service_namespace", "lab"),
        ("destination_service_name", "db"),
        ("destination_workload", "n2-p1"),
        ("destination_canonical_service", "db"),
        ("destination_canonical_revision", "v2"),
        ("destination_workload_namespace", "lab"),
        ("destination_principal", &identity_of("n2-p1")),
        ("destination_app", "db"),
        ("destination_version", "v2"),
        ("destination_cluster", "Kubernetes"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
        ("source_region", "unknown"),
        ("source_zone", "unknown"),
        ("destination_region", "unknown"),
        ("destination_zone", "unknown"),
    ];
    let at_source = labels(&hbone, &[]);
    let at_destination = labels(&hbone, &[("reporter", "destination")]);
    let ends = [("n1", &at_source), ("n2", &at_destination)];

    // HBONE, n1-p1 → Service db → n2-p1: counted while open, on both reporters.
    let [first_in, first_out, rest_in, rest_out] = script.map(|n| n as f64);
    let vip: SocketAddr = (VIP.parse::<IpAddr>().unwrap(), SERVICE_PORT).into();
    let client = DbClient::open(&c.lab.pod_netns("n1-p1").unwrap(), vip, 3000, 500).await;
    for (node, want) in ends {
        wait_value(&c, node, "istio_tcp_connections_opened_total", want, 1.0);
        wait_value(&c, node, "istio_tcp_received_bytes_total", want, first_in);
        wait_value(&c, node, "istio_tcp_sent_bytes_total", want, first_out);
        let closed = value(
            &scrape(&c, node),
            "istio_tcp_connections_closed_total",
            want,
        );
        assert_eq!(closed, 0.0, "{node}: closed while still open");
    }
    client.finish(7000, 1500).await;
    for (node, want) in ends {
        wait_value(&c, node, "istio_tcp_connections_closed_total", want, 1.0);
        wait_value(
            &c,
            node,
            "istio_tcp_received_bytes_total",
            want,
            first_in + rest_in,
        );
        wait_value(
            &c,
            node,
            "istio_tcp_sent_bytes_total",
            want,
            first_out + rest_out,
        );
        wait_value(&c, node, "istio_tcp_connections_failed_total", want, 0.0);
    }

    // Plaintext from outside the mesh (the fabric) straight to n2-p1: only the destination
    // reports it, knows nothing of the client, and guesses the Service by target port.
    let plain_from_outside = labels(
        &hbone,
        &[
            ("reporter", "destination"),
            ("source_workload", "unknown"),
            ("source_canonical_service", "unknown"),
            ("source_canonical_revision", "unknown"),
            ("source_workload_namespace", "unknown"),
            ("source_principal", "unknown"),
            ("source_app", "unknown"),
            ("source_version", "unknown"),
            ("source_cluster", "unknown"),
            ("connection_security_policy", "unknown"),
        ],
    );
    let db_addr = SocketAddr::new(c.lab.pod("n2-p1").unwrap().ipv4.into(), DB_PORT);
    let fabric = c.lab.fabric_netns().unwrap();
    let client = DbClient::open(&fabric, db_addr, 3000, 500).await;
    let want = &plain_from_outside;
    wait_value(&c, "n2", "istio_tcp_received_bytes_total", want, first_in);
    wait_value(&c, "n2", "istio_tcp_sent_bytes_total", want, first_out);
    client.finish(7000, 1500).await;
    wait_value(&c, "n2", "istio_tcp_connections_closed_total", want, 1.0);
    wait_value(&c, "n2", "istio_tcp_connections_opened_total", want, 1.0);
    wait_value(
        &c,
        "n2",
        "istio_tcp_received_bytes_total",
        want,
        first_in + rest_in,
    );
    wait_value(
        &c,
        "n2",
        "istio_tcp_sent_bytes_total",
        want,
        first_out + rest_out,
    );

    // Passthrough from n1-p1 to a server outside the mesh: only the source reports it.
    let outside = SocketAddr::new(c.lab.fabric_ipv4().into(), DB_PORT);
    let _fabric_server = db_server(&fabric, script).await;
    let client = DbClient::open(&c.lab.pod_netns("n1-p1").unwrap(), outside, 3000, 500).await;
    let passthrough = labels(
        &hbone,
        &[
            ("source_principal", "unknown"),
            ("destination_service", "unknown"),
            ("destination_service_namespace", "unknown"),
            ("destination_service_name", "unknown"),
            ("destination_workload", "unknown"),
            ("destination_canonical_service", "unknown"),
            ("destination_canonical_revision", "unknown"),
            ("destination_workload_namespace", "unknown"),
            ("destination_principal", "unknown"),
            ("destination_app", "unknown"),
            ("destination_version", "unknown"),
            ("destination_cluster", "unknown"),
            ("connection_security_policy", "unknown"),
        ],
    );
    let want = &passthrough;
    wait_value(&c, "n1", "istio_tcp_received_bytes_total", want, first_in);
    wait_value(&c, "n1", "istio_tcp_sent_bytes_total", want, first_out);
    client.finish(7000, 1500).await;
    wait_value(&c, "n1", "istio_tcp_connections_closed_total", want, 1.0);
    wait_value(
        &c,
        "n1",
        "istio_tcp_received_bytes_total",
        want,
        first_in + rest_in,
    );
    wait_value(
        &c,
        "n1",
        "istio_tcp_sent_bytes_total",
        want,
        first_out + rest_out,
    );

    // Denied by n2-p1's policy: the destination counts it failed with DENY, the source (which
    // only sees the tunnel refused) with CONNECT; no Service was addressed or matches the port.
    let denied = SocketAddr::new(c.lab.pod("n2-p1").unwrap().ipv4.into(), DENIED_PORT);
    let src = c.lab.pod("n1-p1").unwrap().ipv4.into();
    let attempt = try_echo(
        &c.lab.pod_netns("n1-p1").unwrap(),
        src,
        denied,
        b"let me in",
    )
    .await;
    assert_ne!(attempt.seen, Seen::Echo, "the denied port answered");
    let no_service = [
        ("destination_service", "unknown"),
        ("destination_service_namespace", "unknown"),
        ("destination_service_name", "unknown"),
    ];
    for (node, reporter, flag) in [("n1", "source", "CONNECT"), ("n2", "destination", "DENY")] {
        let mut opened = labels(&hbone, &no_service);
        opened.insert("reporter".into(), reporter.into());
        wait_value(&c, node, "istio_tcp_connections_opened_total", &opened, 1.0);
        let mut ended = opened.clone();
        ended.insert("response_flags".into(), flag.into());
        wait_value(&c, node, "istio_tcp_connections_closed_total", &ended, 1.0);
        wait_value(&c, node, "istio_tcp_connections_failed_total", &ended, 1.0);
    }

    // The process and build series are there too, and ambit's own metrics stay.
    for node in ["n1", "n2"] {
        let samples = scrape(&c, node);
        let has = |name: &str| samples.iter().any(|s| s.name == name);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
            "istio_build",
            "ambit_connections_opened_total",
        ] {
            assert!(has(name), "{node}: no {name}");
        }
        let build = samples.iter().find(|s| s.name == "istio_build").unwrap();
        assert_eq!(build.labels["component"], "ambit");
        assert_eq!(build.labels["tag"], env!("CARGO_PKG_VERSION"));
    }
}
