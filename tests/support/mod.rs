//! Shared helpers of the lab integration tests: a lab with one real `ambit` daemon per node,
//! and polling helpers over the daemons' admin endpoints.
//!
//! Every test builds its own lab (unique names), so tests run in parallel; the lab is removed
//! when the `Cluster` is dropped, also when the test panics.
#![allow(dead_code)]

pub mod ca;
pub mod capture;
mod echo;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ambit::lab::{Lab, LabSpec};
use ambit::workload::Snapshot;
// Not every test crate uses them (as with the dead code above).
#[allow(unused_imports)]
pub use echo::{try_echo, Attempt, Seen};
use serde_json::Value;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// How long a refused connection may take to be closed, or an error response to arrive.
pub const PROMPT: Duration = Duration::from_secs(5);
/// Port of the echo servers the tests start in pods.
pub const APP_PORT: u16 = 8080;

/// A lab with daemons running.
pub struct Cluster {
    pub lab: Lab,
    pub backend: &'static str,
}

impl Cluster {
    /// `nodes` × `pods` lab, workload file adjusted by `edit`, one daemon per node using
    /// `backend` ("iptables" or "nftables"), all ready.
    pub fn start(
        nodes: usize,
        pods: usize,
        backend: &'static str,
        edit: impl FnOnce(&mut Snapshot),
    ) -> Cluster {
        Self::start_with(nodes, pods, backend, edit, |_| Vec::new())
    }

    /// Like [`Cluster::start`], with extra `ambit run` arguments per node (by node name).
    pub fn start_with(
        nodes: usize,
        pods: usize,
        backend: &'static str,
        edit: impl FnOnce(&mut Snapshot),
        node_args: impl Fn(&str) -> Vec<String>,
    ) -> Cluster {
        let lab = Lab::up(&LabSpec {
            nodes,
            pods_per_node: pods,
            ..LabSpec::default()
        })
        .expect("lab up");
        lab.update_workloads(edit).expect("edit workloads");
        Self::on_lab(lab, backend, node_args)
    }

    /// Starts one daemon per node of an existing `lab` (with `node_args` each) and waits
    /// until all are ready.
    pub fn on_lab(
        lab: Lab,
        backend: &'static str,
        node_args: impl Fn(&str) -> Vec<String>,
    ) -> Cluster {
        let cluster = Cluster { lab, backend };
        for node in cluster.lab.nodes() {
            let mut args = vec![format!("--rules={backend}"), "--verify-secs=1".into()];
            args.extend(node_args(&node.name));
            cluster
                .lab
                .start_daemon(&node.name, Path::new(env!("CARGO_BIN_EXE_ambit")), &args)
                .expect("start daemon");
        }
        for node in cluster.lab.nodes() {
            cluster
                .lab
                .wait_ready(&node.name, DEADLINE)
                .expect("daemon ready");
        }
        cluster
    }

    /// Like [`Cluster::start`], with the arguments of [`Cluster::start_daemon`]: every daemon
    /// keeps its capture memory in `<lab dir>/state-<node>`, as the DaemonSet does.
    pub fn start_stateful(nodes: usize, pods: usize, backend: &'static str) -> Cluster {
        let lab = Lab::up(&LabSpec {
            nodes,
            pods_per_node: pods,
            ..LabSpec::default()
        })
        .expect("lab up");
        let cluster = Cluster { lab, backend };
        cluster.start_all_daemons();
        cluster
    }

    /// The state directory [`Cluster::start_daemon`] gives the daemon of `node`.
    pub fn state_dir(&self, node: &str) -> std::path::PathBuf {
        self.lab.dir().join(format!("state-{node}"))
    }

    /// The flows recorded by the daemon on `node`.
    pub fn flows(&self, node: &str) -> Vec<Value> {
        let body = self.lab.admin_get(node, "/flows").expect("GET /flows");
        serde_json::from_str(&body).expect("flows JSON")
    }

    /// Polls `node`'s flows until one satisfies `pred`.
    pub fn wait_flow(&self, node: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(f) = self.flows(node).into_iter().find(|f| pred(f)) {
                return f;
            }
            assert!(
                Instant::now() < until,
                "no matching flow on {node}; flows: {:#?}\nlog:\n{}",
                self.flows(node),
                self.lab.daemon_log(node)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Flows on `node` whose source is exactly `src`.
    pub fn flows_from(&self, node: &str, src: SocketAddr) -> Vec<Value> {
        self.flows(node)
            .into_iter()
            .filter(|f| f["src"] == src.to_string())
            .collect()
    }

    /// The `/pods` entries of `node`.
    pub fn pods(&self, node: &str) -> Vec<Value> {
        let body = self.lab.admin_get(node, "/pods").expect("GET /pods");
        serde_json::from_str(&body).expect("pods JSON")
    }

    /// Status of pod `name` on its node, if listed.
    pub fn pod_status(&self, name: &str) -> Option<Value> {
        let pod = self.lab.pod(name).expect("pod");
        let key = format!("{}/{}", pod.namespace, pod.name);
        self.pods(&pod.node).into_iter().find(|p| p["pod"] == key)
    }

    /// Polls until `pred` holds for pod `name`'s status (None = not listed).
    pub fn wait_pod(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(Option<&Value>) -> bool,
    ) -> Option<Value> {
        let until = Instant::now() + DEADLINE;
        loop {
            let status = self.pod_status(name);
            if pred(status.as_ref()) {
                return status;
            }
            let node = &self.lab.pod(name).expect("pod").node;
            assert!(
                Instant::now() < until,
                "pod {name} never became {what}; status {status:#?}\nlog:\n{}",
                self.lab.daemon_log(node)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until pod `name` is in `state` (`enrolled`, `failed`, `not-enrolled`).
    pub fn wait_state(&self, name: &str, state: &str) -> Value {
        self.wait_pod(name, state, |s| s.is_some_and(|s| s["state"] == state))
            .expect("status")
    }

    /// The value of a metric line (exact name with labels) on `node`, 0 if absent.
    pub fn metric(&self, node: &str, series: &str) -> f64 {
        let text = self.lab.admin_get(node, "/metrics").expect("GET /metrics");
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// Pod `name`'s IPv4 application address.
    pub fn v4(&self, name: &str) -> SocketAddr {
        (self.lab.pod(name).expect("pod").ipv4, APP_PORT).into()
    }

    /// Pod `name`'s IPv6 application address.
    pub fn v6(&self, name: &str) -> SocketAddr {
        (self.lab.pod(name).expect("pod").ipv6, APP_PORT).into()
    }
}

/// The log of `name` (a node's daemon, a sidecar's pod, the CA service) once `cond` holds on
/// it, or as it is at [`DEADLINE`]: lines reach the file through the log's writer thread, a
/// moment after they are emitted, so a test polls rather than reads once. The caller asserts.
pub fn settled_log(lab: &Lab, name: &str, cond: impl Fn(&str) -> bool) -> String {
    let until = Instant::now() + DEADLINE;
    loop {
        let log = lab.daemon_log(name);
        if cond(&log) || Instant::now() >= until {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` until it holds; fails the test naming `what` after [`DEADLINE`].
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_until_within(DEADLINE, what, cond)
}

/// [`wait_until`] with its own deadline, for waits bounded by a retry backoff longer than
/// [`DEADLINE`].
pub fn wait_until_within(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + deadline;
    while !cond() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A listener on `[::]:port` (IPv4 too) inside `ns`, for a test's own scripted server; must be
/// called inside a tokio runtime.
pub fn listen_in(ns: &ambit::netns::NetNs, port: u16) -> tokio::net::TcpListener {
    ambit::lab::traffic::listen(ns, SocketAddr::from(([0u16; 8], port))).expect("listen")
}

/// Sends 10 kB from pod `from` (or `"fabric"`, outside the mesh) to the echo server at `dst`,
/// asserts the echo is intact, and returns the client's own address.
pub async fn send(c: &Cluster, from: &str, dst: SocketAddr) -> SocketAddr {
    let payload = ambit::lab::traffic::pattern(10_000);
    let ns = if from == "fabric" {
        c.lab.fabric_netns().expect("fabric netns")
    } else {
        c.lab.pod_netns(from).expect("pod netns")
    };
    let ex = ambit::lab::traffic::exchange(&ns, dst, &payload, DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("{from} -> {dst}: {e}"));
    assert!(ex.reply == payload, "{from} -> {dst}: echo differs");
    ex.local
}

/// Sends from `from` to `dst` until the client pod's daemon carries it by `route` (daemons
/// see a workload change each on their own poll, so the first attempts may still take the old
/// route, or fail); returns the client address of the connection that took it.
pub async fn send_routed(c: &Cluster, from: &str, dst: SocketAddr, route: &str) -> SocketAddr {
    let node = c.lab.pod(from).expect("pod").node.clone();
    let ns = c.lab.pod_netns(from).expect("pod netns");
    let payload = ambit::lab::traffic::pattern(10_000);
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(ex) = ambit::lab::traffic::exchange(&ns, dst, &payload, DEADLINE).await {
            let took = c
                .flows(&node)
                .into_iter()
                .find(|f| f["src"] == ex.local.to_string() && is(f, "outbound"));
            if ex.reply == payload && took.is_some_and(|f| f["route"] == route) {
                return ex.local;
            }
        }
        assert!(
            std::time::Instant::now() < until,
            "{from} -> {dst} never took route {route}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sets an annotation on pod `name` in a snapshot.
pub fn annotate(s: &mut Snapshot, name: &str, key: &str, value: &str) {
    let pod = s
        .pods
        .iter_mut()
        .find(|p| p.name == name)
        .expect("pod in snapshot");
    pod.annotations.insert(key.into(), value.into());
}

/// Sets a label on pod `name` in a snapshot.
pub fn label(s: &mut Snapshot, name: &str, key: &str, value: &str) {
    let pod = s
        .pods
        .iter_mut()
        .find(|p| p.name == name)
        .expect("pod in snapshot");
    pod.labels.insert(key.into(), value.into());
}

/// The SPIFFE identity the lab gives pod `name`.
pub fn identity_of(name: &str) -> String {
    format!("spiffe://cluster.local/ns/lab/sa/sa-{name}")
}

/// True if a flow record was accepted by `listener`.
pub fn is(f: &Value, listener: &str) -> bool {
    f["listener"] == listener
}

impl Cluster {
    /// A lab in Kubernetes mode: the stand-in API server (real list/watch wire protocol over
    /// HTTP, see `ambit::lab::apiserver`) runs in the fabric namespace, the lab publishes its
    /// workloads there, and every daemon runs with `--kube`, finding pod namespaces by cgroup
    /// scan (pods from the API carry no netns path).
    pub fn start_kube(
        nodes: usize,
        pods: usize,
        namespace_ambient: bool,
        edit: impl FnOnce(&mut Snapshot),
    ) -> Cluster {
        let lab = Lab::up(&LabSpec {
            nodes,
            pods_per_node: pods,
            namespace_ambient,
            kube: true,
            ..LabSpec::default()
        })
        .expect("lab up");
        lab.start_apiserver(Path::new(env!("CARGO_BIN_EXE_ambit")))
            .expect("stand-in API server");
        lab.update_workloads(edit).expect("publish workloads");
        let cluster = Cluster {
            lab,
            backend: "iptables",
        };
        cluster.start_all_daemons();
        cluster
    }

    /// Starts every node's daemon, then waits until all are ready.
    fn start_all_daemons(&self) {
        for node in self.lab.nodes() {
            self.start_daemon(&node.name);
        }
        for node in self.lab.nodes() {
            self.lab
                .wait_ready(&node.name, DEADLINE)
                .expect("daemon ready");
        }
    }

    /// (Re)starts the daemon of `node` with the cluster's usual arguments.
    pub fn start_daemon(&self, node: &str) {
        let args = vec![
            format!("--rules={}", self.backend),
            "--verify-secs=1".to_string(),
            format!("--netns-prefix={}-", self.lab.name()),
            format!("--state-dir={}", self.state_dir(node).display()),
        ];
        self.lab
            .start_daemon(node, Path::new(env!("CARGO_BIN_EXE_ambit")), &args)
            .expect("start daemon");
    }

    /// One HTTP/1.1 request to the stand-in API server (from the fabric namespace, where it
    /// listens): status and body.
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        use std::io::{Read, Write};
        let ns = self.lab.fabric_netns().expect("fabric netns");
        let addr: SocketAddr = (self.lab.fabric_ipv4(), 6443).into();
        let mut stream = ns
            .run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
            .expect("enter fabric")
            .expect("connect to the stand-in");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let content_type = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{payload}",
            payload.len()
        )
        .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n").expect("HTTP response");
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    /// The pod object `name` as the stand-in holds it.
    pub fn api_pod(&self, name: &str) -> Option<Value> {
        let (status, body) = self.api("GET", &format!("/api/v1/namespaces/lab/pods/{name}"), None);
        (status == 200).then_some(body)
    }

    /// Every Event (both API groups) in namespace `ns`, as notes with reasons.
    pub fn api_events(&self, ns: &str) -> Vec<Value> {
        let mut all = Vec::new();
        for path in [
            format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
            format!("/api/v1/namespaces/{ns}/events"),
        ] {
            let (status, body) = self.api("GET", &path, None);
            if status == 200 {
                all.extend(body["items"].as_array().cloned().unwrap_or_default());
            }
        }
        all
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}
