//! HBONE through the real daemons in a lab cluster: what crosses the network between nodes is
//! mutual TLS on 15008 only, both ends learn each other's SPIFFE identity, bad credentials on
//! either side are refused, the CONNECT status codes are those of `docs/hbone.md`, tunnels
//! share pooled connections, certificates rotate without breaking long transfers, and a
//! namespace in strict mTLS mode refuses plaintext.
//!
//! The tests' own HBONE client runs in the fabric namespace, whose traffic no pod captures.
//!
//! This file holds the shared [`World`] (a lab with an echo server in every pod); `client` is
//! the tests' own HBONE client; the tcpdump capture in the fabric is `support::capture`. The tests are in
//! `wire` (encryption on the wire), `certs` (certificates and identities, rotation), `tunnels`
//! (CONNECT status codes, pooled connections), `modes` (strict and permissive mTLS) and `early`
//! (the client's first bytes sent before the CONNECT's answer).
#![cfg(feature = "lab")]

#[path = "../support/mod.rs"]
mod support;

mod certs;
mod client;
mod early;
mod modes;
mod tunnels;
mod wire;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ambit::config::HBONE_PORT;
use ambit::config::MTLS_MODE_LABEL;
use ambit::hbone::{build_request, TunnelRequest};
use ambit::identity::{ca, tls, Ca, Identity, WorkloadCert};
use ambit::lab::traffic::{connect, exchange, Server};
use ambit::lab::CA_DIR;
use ambit::netns::NetNs;
use ambit::socket::canonical;
use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::StatusCode;
use rustls::RootCertStore;
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use x509_parser::prelude::{FromDer, X509Certificate};

use client::*;
use support::capture::*;

/// A lab with an echo server on port 8080 in every pod.
struct World {
    c: Cluster,
    servers: Vec<(String, Server)>,
}

impl World {
    async fn start(c: Cluster) -> World {
        let any: SocketAddr = "[::]:8080".parse().expect("address");
        let mut servers = Vec::new();
        for pod in c.lab.pods() {
            let ns = c.lab.pod_netns(&pod.name).expect("pod netns");
            let server = Server::start(&ns, any).await.expect("echo server");
            servers.push((pod.name.clone(), server));
        }
        World { c, servers }
    }

    fn server(&self, pod: &str) -> &Server {
        &self
            .servers
            .iter()
            .find(|(n, _)| n == pod)
            .expect("server in pod")
            .1
    }

    fn ip(&self, pod: &str, v6: bool) -> IpAddr {
        let p = self.c.lab.pod(pod).expect("pod");
        if v6 {
            p.ipv6.into()
        } else {
            p.ipv4.into()
        }
    }

    fn pod_ns(&self, pod: &str) -> NetNs {
        self.c.lab.pod_netns(pod).expect("pod netns")
    }

    fn fabric(&self) -> NetNs {
        self.c.lab.fabric_netns().expect("fabric netns")
    }

    /// The lab's cluster CA, as the daemons use it.
    fn lab_ca(&self) -> Ca {
        Ca::load(&self.c.lab.dir().join(CA_DIR)).expect("lab CA")
    }

    /// A certificate for the test's own client, issued by the lab CA.
    fn tester_cert(&self) -> WorkloadCert {
        let id = Identity::new("cluster.local", "lab", "tester").expect("identity");
        self.lab_ca()
            .issue(&id, Duration::from_secs(3600), SystemTime::now())
            .expect("issue tester certificate")
    }

    /// Sends `payload` from pod `from` to the echo server at `dst` and asserts the echo is
    /// byte-exact; returns the client's own address.
    async fn send(&self, from: &str, dst: SocketAddr, payload: &[u8]) -> SocketAddr {
        let ex = exchange(&self.pod_ns(from), dst, payload, DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("{from} -> {dst}: {e}"));
        assert!(ex.reply == payload, "{from} -> {dst}: echo differs");
        ex.local
    }

    /// Waits until pod `pod`'s echo server has seen a finished connection from `peer_ip`.
    async fn wait_served(&self, pod: &str, peer_ip: IpAddr) {
        self.server(pod)
            .wait_for(DEADLINE, |a| a.done && a.peer.ip() == peer_ip)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "{pod}'s server never saw a finished connection from {peer_ip}: {:?}",
                    self.server(pod).accepted()
                )
            });
    }
}
