//! Tests of the stand-in API server: the REST and watch protocol over real HTTP (raw requests
//! and kube-rs, the production client), persistence, and the lab's Kubernetes mode.
//!
//! API tests run a stand-in in this process on `127.0.0.1:0`; the lab test needs root and the
//! `ambit` binary next to the test executable (`cargo test` builds it; after `cargo test --lib`
//! alone, run `cargo build` first).
//!
//! This file holds the shared helpers (a stand-in on port 0, a kube client for it, raw calls,
//! line-by-line watch streams); the tests are in `rest` (CRUD, selectors, errors, patches,
//! events), `watch` (watches, bookmarks, history, the kube-rs watcher), `persist` (restarts)
//! and `lab` (the lab's Kubernetes mode and publishing). Each takes these helpers and imports
//! with `use super::*`.

mod lab;
mod persist;
mod rest;
mod watch;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};

use super::publish::{block_on_in_netns, client_from_kubeconfig};
use super::store::{Start, Store};
use super::*;
use crate::lab::{Lab, LabSpec};
use crate::workload::{Endpoint, Service, ServicePort};

/// A fresh directory for state files and kubeconfigs.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ambit-standin-{tag}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ u128::from(rand_u32())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_u32() -> u32 {
    let b = crate::lab::state::random_bytes(4).unwrap();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

async fn start(state: Option<PathBuf>) -> ApiServer {
    ApiServer::start("127.0.0.1:0".parse().unwrap(), state)
        .await
        .unwrap()
}

/// A kube client built the way `ambit run --kubeconfig` builds one, from a kubeconfig written
/// by [`write_kubeconfig`].
async fn kube_client(server: &ApiServer) -> kube::Client {
    let dir = temp_dir("kc");
    let path = dir.join("kubeconfig");
    write_kubeconfig(&path, &server.url()).unwrap();
    let client = client_from_kubeconfig(&path).await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
    client
}

/// Raw requests through the kube client's HTTP stack (status and JSON body, whatever the status).
async fn call(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = ::http::Request::builder().method(method).uri(path);
    if let Some(ct) = content_type.or(body.as_ref().map(|_| "application/json")) {
        req = req.header("content-type", ct);
    }
    let bytes = body
        .map(|b| serde_json::to_vec(&b).unwrap())
        .unwrap_or_default();
    let resp = client
        .send(req.body(kube::client::Body::from(bytes)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", String::from_utf8_lossy(&bytes)));
    (status, value)
}

/// An open watch stream, read line by line.
struct WatchLines {
    body: kube::client::Body,
    buf: Vec<u8>,
}

impl WatchLines {
    async fn open(client: &kube::Client, path: &str) -> Self {
        let req = ::http::Request::get(path)
            .body(kube::client::Body::from(Vec::new()))
            .unwrap();
        let resp = client.send(req).await.unwrap();
        assert_eq!(resp.status(), 200, "watch {path}");
        WatchLines {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next event; `None` at the end of the stream. Panics after `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .expect("no watch event in time");
            match frame {
                None => return None,
                Some(frame) => {
                    if let Ok(data) = frame.unwrap().into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next event that is not a BOOKMARK.
    async fn next_change(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let ev = self.next(wait).await?;
            if ev["type"] != "BOOKMARK" {
                return Some(ev);
            }
        }
    }
}

fn pod_json(name: &str, node: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "x"}],
                 "someFutureField": {"kept": true}},
        "status": {"phase": "Running", "podIP": "10.0.0.2", "podIPs": [{"ip": "10.0.0.2"}]},
    })
}

fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

const PODS: &str = "/api/v1/namespaces/lab/pods";

/// How long a test waits for something that should be quick.
const WAIT: Duration = Duration::from_secs(10);
