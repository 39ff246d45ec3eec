//! The policy tests' lab and the assertions they are written with.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ambit::config::HBONE_PORT;
use ambit::hbone::pool::{ClientTls, Pool};
use ambit::hbone::{build_request, TunnelRequest};
use ambit::identity::{tls, Ca, Identity};
use ambit::lab::traffic::{pattern, Server};
use ambit::lab::{AMBIENT_LABEL, CA_DIR};
use ambit::netns::NetNs;
use ambit::socket::Placement;
use ambit::workload::{Namespace, Snapshot};
use serde_json::Value;

use super::{Attempt, Cluster, Seen, APP, DEADLINE, OTHER};
use crate::support::{is, try_echo, wait_until};

/// The identity of the test's own HBONE client.
pub const TESTER: (&str, &str) = ("lab", "tester");

/// A lab with echo servers on [`APP`] and [`OTHER`] in every pod.
pub struct World {
    pub c: Cluster,
    servers: Vec<(String, u16, Server)>,
    tester: Arc<Pool>,
}

/// Labels every pod `app=<name>`; with `other_ns`, moves `n2-p2` into an ambient namespace
/// `other`.
fn layout(s: &mut Snapshot, other_ns: bool) {
    for pod in &mut s.pods {
        pod.labels.insert("app".into(), pod.name.clone());
        if other_ns && pod.name == "n2-p2" {
            pod.namespace = "other".into();
        }
    }
    if other_ns {
        s.namespaces.push(Namespace {
            name: "other".into(),
            labels: [(AMBIENT_LABEL.0.into(), AMBIENT_LABEL.1.into())].into(),
        });
    }
}

impl World {
    /// A file-source lab (see the crate documentation), adjusted by `edit`.
    pub async fn file(edit: impl FnOnce(&mut Snapshot)) -> World {
        let c = Cluster::start(2, 2, "iptables", |s| {
            layout(s, true);
            edit(s)
        });
        World::with(c).await
    }

    /// A `--kube` lab: the same pods, all in namespace `lab`.
    pub async fn kube() -> World {
        World::with(Cluster::start_kube(2, 2, true, |s| layout(s, false))).await
    }

    async fn with(c: Cluster) -> World {
        let mut servers = Vec::new();
        for pod in c.lab.pods() {
            let ns = c.lab.pod_netns(&pod.name).expect("pod netns");
            for port in [APP, OTHER] {
                let any = SocketAddr::new("::".parse().expect("address"), port);
                let server = Server::start(&ns, any).await.expect("echo server");
                servers.push((pod.name.clone(), port, server));
            }
        }
        let ca = Ca::load(&c.lab.dir().join(CA_DIR)).expect("lab CA");
        let id = Identity::new("cluster.local", TESTER.0, TESTER.1).expect("identity");
        let cert = Arc::new(
            ca.issue(&id, Duration::from_secs(3600), SystemTime::now())
                .expect("tester certificate"),
        );
        let roots = ca.roots();
        let client_tls: ClientTls = Arc::new(move |expected: &Identity| {
            tls::client_config(
                &cert,
                roots.clone(),
                vec![expected.clone()],
                tls::TlsPolicy::Default,
            )
            .map_err(|e| e.to_string())
        });
        let fabric = c.lab.fabric_netns().expect("fabric netns");
        let tester = Pool::new(
            Placement::Ambient(fabric),
            client_tls,
            Duration::from_secs(60),
            Default::default(),
        );
        World { c, servers, tester }
    }

    /// Pod `pod`'s address of one family.
    pub fn ip(&self, pod: &str, v6: bool) -> IpAddr {
        let p = self.c.lab.pod(pod).expect("pod");
        if v6 {
            p.ipv6.into()
        } else {
            p.ipv4.into()
        }
    }

    /// The fabric's (the plaintext client's) address of one family.
    pub fn fabric_ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.c.lab.fabric_ipv6().into()
        } else {
            self.c.lab.fabric_ipv4().into()
        }
    }

    fn fabric(&self) -> NetNs {
        self.c.lab.fabric_netns().expect("fabric netns")
    }

    fn node(&self, pod: &str) -> String {
        self.c.lab.pod(pod).expect("pod").node.clone()
    }

    /// Connections `pod`'s server on `port` accepted from `ip`.
    pub fn app_saw(&self, pod: &str, port: u16, ip: IpAddr) -> usize {
        self.app_conns(pod, port, ip, false)
    }

    /// Connections `pod`'s server on `port` accepted from `ip` that have ended.
    pub fn app_done(&self, pod: &str, port: u16, ip: IpAddr) -> usize {
        self.app_conns(pod, port, ip, true)
    }

    fn app_conns(&self, pod: &str, port: u16, ip: IpAddr, ended: bool) -> usize {
        let (_, _, server) = self
            .servers
            .iter()
            .find(|(p, n, _)| p == pod && *n == port)
            .expect("server");
        let ip = ambit::socket::canonical(SocketAddr::new(ip, 0)).ip();
        let accepted = server.accepted();
        let from = accepted.iter().filter(|a| a.peer.ip() == ip);
        from.filter(|a| a.done || !ended).count()
    }

    /// Puts `policies` in force and waits until every daemon lists exactly them on `/policies`
    /// (in force or rejected). A change that keeps every name must be awaited by its effect.
    pub fn set_policies(&self, policies: Vec<Value>) {
        let name = |v: &Value| {
            let text = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default();
            let (kind, ns, name) = (
                text("/kind"),
                text("/metadata/namespace"),
                text("/metadata/name"),
            );
            format!("{kind} {ns}/{name}")
        };
        let wanted: BTreeSet<String> = policies.iter().map(name).collect();
        self.c
            .lab
            .update_workloads(|s| s.istio = policies)
            .expect("write policies");
        for node in self.c.lab.nodes() {
            wait_until(&format!("{} to enforce {wanted:?}", node.name), || {
                let view = self.policies(&node.name);
                let mut seen: BTreeSet<String> = view["resources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_str().map(String::from))
                    .collect();
                for r in view["rejected"].as_array().into_iter().flatten() {
                    seen.insert(format!(
                        "{} {}/{}",
                        r["kind"].as_str().unwrap_or_default(),
                        r["namespace"].as_str().unwrap_or_default(),
                        r["name"].as_str().unwrap_or_default()
                    ));
                }
                seen == wanted
            });
        }
    }

    /// `node`'s `/policies`.
    pub fn policies(&self, node: &str) -> Value {
        let body = self
            .c
            .lab
            .admin_get(node, "/policies")
            .expect("GET /policies");
        serde_json::from_str(&body).expect("policies JSON")
    }

    /// From pod `from` to `to:port` through the daemons (HBONE).
    pub async fn mesh(&self, from: &str, to: &str, port: u16, v6: bool) -> Attempt {
        let ns = self.c.lab.pod_netns(from).expect("pod netns");
        let dst = SocketAddr::new(self.ip(to, v6), port);
        try_echo(&ns, self.ip(from, v6), dst, &pattern(10_000)).await
    }

    /// From the fabric (outside the mesh) to `to:port` in plaintext.
    pub async fn plain(&self, to: &str, port: u16, v6: bool) -> Attempt {
        let dst = SocketAddr::new(self.ip(to, v6), port);
        try_echo(&self.fabric(), self.fabric_ip(v6), dst, &pattern(10_000)).await
    }

    /// The test's own HBONE client (identity [`TESTER`], from the fabric) asks `to` for
    /// `to:port`, claiming to come from `forwarded`; returns the status.
    pub async fn tester(&self, to: &str, port: u16, v6: bool, forwarded: IpAddr) -> u16 {
        let ip = self.ip(to, v6);
        let expected = Identity::new("cluster.local", "lab", format!("sa-{to}")).expect("id");
        let lease = self
            .tester
            .checkout(SocketAddr::new(ip, HBONE_PORT), &expected)
            .await
            .unwrap_or_else(|e| panic!("tester -> {to}: {e}"));
        let request = build_request(&TunnelRequest {
            target: SocketAddr::new(ip, port),
            client: SocketAddr::new(forwarded, 40000),
            baggage: Vec::new(),
        })
        .expect("CONNECT request");
        let exchange = async {
            let mut send = lease.send.clone().ready().await?;
            let (response, _stream) = send.send_request(request, false)?;
            Ok::<_, h2::Error>(response.await?.status().as_u16())
        };
        tokio::time::timeout(DEADLINE, exchange)
            .await
            .unwrap_or_else(|_| panic!("tester -> {to}: no answer"))
            .unwrap_or_else(|e| panic!("tester -> {to}: {e}"))
    }

    /// `from` reaches `to:port` through HBONE over both families, the app sees each
    /// connection, and the destination's flow says `policy` (part of the decision).
    pub async fn mesh_allowed(&self, from: &str, to: &str, port: u16, policy: &str) {
        for v6 in [false, true] {
            let before = self.app_saw(to, port, self.ip(from, v6));
            let a = self.mesh(from, to, port, v6).await;
            assert_eq!(
                a.seen,
                Seen::Echo,
                "{from} -> {to}:{port} (v6 {v6}); flows: {:#?} {:#?}",
                self.c.flows_from(&self.node(from), a.local),
                self.c.flows_from(&self.node(to), a.local)
            );
            let f = self.c.wait_flow(&self.node(to), |f| {
                is(f, "hbone") && f["src"] == a.local.to_string() && f["finished"] == true
            });
            assert_eq!(f["error"], Value::Null, "{f:#}");
            assert!(decision(&f).contains(policy), "want {policy:?}: {f:#}");
            assert!(
                self.app_saw(to, port, self.ip(from, v6)) > before,
                "app of {to}"
            );
        }
    }

    /// `from` is refused by `to:port` over both families: its connection ends without data,
    /// its own daemon got 401, the destination's flow names `policy`, the app saw nothing.
    pub async fn mesh_denied(&self, from: &str, to: &str, port: u16, policy: &str) {
        for v6 in [false, true] {
            let before = self.app_saw(to, port, self.ip(from, v6));
            let a = self.mesh(from, to, port, v6).await;
            assert!(
                matches!(a.seen, Seen::Closed | Seen::Reset),
                "{from} -> {to}:{port} (v6 {v6}): {:?}",
                a.seen
            );
            let src = a.local.to_string();
            let f = self.c.wait_flow(&self.node(to), |f| {
                is(f, "hbone") && f["src"] == src && f["error"].is_string()
            });
            let error = f["error"].as_str().unwrap_or_default();
            assert!(
                error.starts_with("401 denied") && error.contains(policy),
                "want {policy:?}: {f:#}"
            );
            let out = self.c.wait_flow(&self.node(from), |f| {
                is(f, "outbound") && f["src"] == src && f["error"].is_string()
            });
            assert!(
                out["error"].as_str().unwrap_or_default().contains("401"),
                "{out:#}"
            );
            assert_eq!(
                self.app_saw(to, port, self.ip(from, v6)),
                before,
                "app of {to}"
            );
        }
    }

    /// Plaintext from the fabric reaches `to:port` over both families; flows say `policy`.
    pub async fn plain_allowed(&self, to: &str, port: u16, policy: &str) {
        for v6 in [false, true] {
            let before = self.app_saw(to, port, self.fabric_ip(v6));
            let a = self.plain(to, port, v6).await;
            assert_eq!(
                a.seen,
                Seen::Echo,
                "fabric -> {to}:{port} (v6 {v6}); flows: {:#?}",
                self.c.flows_from(&self.node(to), a.local)
            );
            let f = self.c.wait_flow(&self.node(to), |f| {
                is(f, "inbound") && f["src"] == a.local.to_string() && f["finished"] == true
            });
            assert_eq!(f["error"], Value::Null, "{f:#}");
            assert!(decision(&f).contains(policy), "want {policy:?}: {f:#}");
            assert!(
                self.app_saw(to, port, self.fabric_ip(v6)) > before,
                "app of {to}"
            );
        }
    }

    /// Plaintext from the fabric to `to:port` is reset over both families, the flow names
    /// `policy`, and the app saw nothing.
    pub async fn plain_denied(&self, to: &str, port: u16, policy: &str) {
        for v6 in [false, true] {
            let before = self.app_saw(to, port, self.fabric_ip(v6));
            let a = self.plain(to, port, v6).await;
            assert_eq!(a.seen, Seen::Reset, "fabric -> {to}:{port} (v6 {v6})");
            let f = self.c.wait_flow(&self.node(to), |f| {
                is(f, "inbound") && f["src"] == a.local.to_string() && f["error"].is_string()
            });
            let error = f["error"].as_str().unwrap_or_default();
            assert!(
                error.starts_with("refused: denied") && error.contains(policy),
                "want {policy:?}: {f:#}"
            );
            assert_eq!(
                self.app_saw(to, port, self.fabric_ip(v6)),
                before,
                "app of {to}"
            );
        }
    }
}

/// The policy decision recorded on a flow.
pub fn decision(f: &Value) -> &str {
    f["policy"].as_str().unwrap_or_default()
}
