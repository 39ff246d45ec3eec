//! Tests of the stand-in API server: the REST and watch protocol over real HTTP (raw requests
//! and kube-rs, the production client), persistence, and the lab's Kubernetes mode.
//!
//! API tests run a stand-in in this process on `127.0.0.1:0`; the lab test needs root and the
//! `ambit` binary next to the test executable (`cargo test` builds it; after `cargo test --lib`
//! alone, run `cargo build` first).

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_list_selectors_and_errors() {
    let server = start(None).await;
    let c = kube_client(&server).await;
    let web = json!({"app": "web"});
    let (code, a) = call(&c, "POST", PODS, None, Some(pod_json("a", "n1", web))).await;
    assert_eq!(code, 201, "{a}");
    assert_eq!(a["kind"], "Pod");
    assert_eq!(a["metadata"]["namespace"], "lab");
    assert_eq!(a["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert!(a["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(
        a["spec"]["someFutureField"]["kept"], true,
        "unknown fields are kept"
    );
    // A client-provided uid is kept (unlike on a real API server).
    let uid = "11111111-2222-4333-8444-555555555555";
    let mut b = pod_json("b", "n2", json!({"app": "db"}));
    b["metadata"]["uid"] = json!(uid);
    let (code, b) = call(&c, "POST", PODS, None, Some(b)).await;
    assert_eq!(code, 201);
    assert_eq!(b["metadata"]["uid"], uid);
    assert!(rv_of(&b) > rv_of(&a));
    let other = "/api/v1/namespaces/other/pods";
    let (code, _) = call(
        &c,
        "POST",
        other,
        None,
        Some(pod_json("c", "n1", json!({}))),
    )
    .await;
    assert_eq!(code, 201);

    // GET; LIST with field and label selectors, across and within namespaces.
    let (code, got) = call(&c, "GET", &format!("{PODS}/a"), None, None).await;
    assert_eq!((code, &got), (200, &a));
    let (code, list) = call(
        &c,
        "GET",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1",
        None,
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(names(&list), ["a", "c"]);
    assert_eq!(
        list["metadata"]["resourceVersion"],
        server.resource_version().to_string()
    );
    assert!(
        list["items"][0].get("kind").is_none(),
        "list items carry no kind"
    );
    let (_, list) = call(
        &c,
        "GET",
        &format!("{PODS}?fieldSelector=spec.nodeName=n1"),
        None,
        None,
    )
    .await;
    assert_eq!(names(&list), ["a"]);
    let (_, list) = call(
        &c,
        "GET",
        "/api/v1/pods?fieldSelector=metadata.name%3Db",
        None,
        None,
    )
    .await;
    assert_eq!(names(&list), ["b"]);
    let (_, list) = call(
        &c,
        "GET",
        "/api/v1/pods?labelSelector=app%3Dweb",
        None,
        None,
    )
    .await;
    assert_eq!(names(&list), ["a"]);
    let (_, list) = call(
        &c,
        "GET",
        "/api/v1/pods?labelSelector=app&limit=1",
        None,
        None,
    )
    .await;
    assert_eq!(names(&list), ["a", "b"], "limit is ignored, no continue");
    assert!(list["metadata"].get("continue").is_none());
    let (code, st) = call(
        &c,
        "GET",
        "/api/v1/pods?fieldSelector=spec.node%3Dn1",
        None,
        None,
    )
    .await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (400, Some("BadRequest")),
        "{st}"
    );

    // PUT replaces (keeping uid and creationTimestamp); a stale resourceVersion is a conflict.
    let mut a2 = a.clone();
    a2["spec"]["nodeName"] = json!("n3");
    let (code, put) = call(&c, "PUT", &format!("{PODS}/a"), None, Some(a2.clone())).await;
    assert_eq!(code, 200, "{put}");
    assert_eq!(put["spec"]["nodeName"], "n3");
    assert_eq!(put["metadata"]["uid"], a["metadata"]["uid"]);
    assert!(rv_of(&put) > rv_of(&a));
    let (code, st) = call(&c, "PUT", &format!("{PODS}/a"), None, Some(a2.clone())).await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (409, Some("Conflict")),
        "{st}"
    );
    // An unchanged PUT is not a change: same resourceVersion.
    let (code, same) = call(&c, "PUT", &format!("{PODS}/a"), None, Some(put.clone())).await;
    assert_eq!((code, rv_of(&same)), (200, rv_of(&put)));

    // Errors are Status objects with the right code and reason.
    let (code, st) = call(&c, "GET", &format!("{PODS}/nope"), None, None).await;
    assert_eq!(code, 404);
    assert_eq!(st["kind"], "Status");
    assert_eq!(st["status"], "Failure");
    assert_eq!(st["reason"], "NotFound");
    assert_eq!(st["code"], 404);
    assert_eq!(st["details"]["name"], "nope");
    assert_eq!(st["message"], "pods \"nope\" not found");
    let (code, st) = call(
        &c,
        "PUT",
        &format!("{PODS}/nope"),
        None,
        Some(pod_json("nope", "n1", json!({}))),
    )
    .await;
    assert_eq!((code, st["reason"].as_str()), (404, Some("NotFound")));
    let (code, st) = call(&c, "POST", PODS, None, Some(pod_json("a", "n1", json!({})))).await;
    assert_eq!((code, st["reason"].as_str()), (409, Some("AlreadyExists")));
    let (code, _) = call(&c, "POST", &format!("{PODS}/a"), None, Some(json!({}))).await;
    assert_eq!(code, 405);
    let (code, _) = call(
        &c,
        "POST",
        "/api/v1/pods",
        None,
        Some(pod_json("x", "n1", json!({}))),
    )
    .await;
    assert_eq!(code, 405, "create needs a namespace");
    let (code, st) = call(&c, "POST", PODS, Some("application/yaml"), Some(json!({}))).await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}});
    let (code, _) = call(&c, "POST", PODS, None, Some(svc)).await;
    assert_eq!(code, 400, "kind must match the resource");
    let (code, _) = call(&c, "GET", "/api/v1/widgets", None, None).await;
    assert_eq!(code, 404);
    let (code, _) = call(
        &c,
        "PATCH",
        &format!("{PODS}/a"),
        Some("text/plain"),
        Some(json!({})),
    )
    .await;
    assert_eq!(code, 415);

    // DELETE returns the object; preconditions are honoured.
    let dp = json!({"preconditions": {"uid": "wrong"}});
    let (code, _) = call(&c, "DELETE", &format!("{PODS}/b"), None, Some(dp)).await;
    assert_eq!(code, 409);
    let (code, gone) = call(&c, "DELETE", &format!("{PODS}/b"), None, None).await;
    assert_eq!((code, gone["metadata"]["name"].as_str()), (200, Some("b")));
    assert_eq!(rv_of(&gone), server.resource_version());
    let (code, _) = call(&c, "GET", &format!("{PODS}/b"), None, None).await;
    assert_eq!(code, 404);

    // Namespaces are cluster-scoped and get the real server's automatic label.
    let ns = json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": "lab", "namespace": "ignored"}});
    let (code, ns) = call(&c, "POST", "/api/v1/namespaces", None, Some(ns)).await;
    assert_eq!(code, 201, "{ns}");
    assert!(ns["metadata"].get("namespace").is_none());
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "lab"
    );
    let (code, _) = call(&c, "GET", "/api/v1/namespaces/lab", None, None).await;
    assert_eq!(code, 200);

    // The typed client agrees, and discovery documents parse.
    let pods: Api<Pod> = Api::namespaced(c.clone(), "lab");
    let a_typed = pods.get("a").await.unwrap();
    assert_eq!(a_typed.spec.unwrap().node_name.as_deref(), Some("n3"));
    let version = c.apiserver_version().await.unwrap();
    assert_eq!((version.major.as_str(), version.minor.as_str()), VERSION);
    let groups = c.list_api_groups().await.unwrap();
    let group_names: Vec<&str> = groups.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(
        group_names,
        ["discovery.k8s.io", "events.k8s.io", "security.istio.io"]
    );
    let core = c.list_core_api_resources("v1").await.unwrap();
    assert!(core
        .resources
        .iter()
        .any(|r| r.name == "pods" && r.namespaced));
    let disc = c
        .list_api_group_resources("discovery.k8s.io/v1")
        .await
        .unwrap();
    assert_eq!(disc.resources[0].kind, "EndpointSlice");
    let versions = c.list_core_api_versions().await.unwrap();
    assert_eq!(versions.versions, ["v1"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_resource_version_sees_exactly_the_later_events_in_order() {
    let server = start(None).await;
    let c = kube_client(&server).await;
    for name in ["a", "b"] {
        call(
            &c,
            "POST",
            PODS,
            None,
            Some(pod_json(name, "n1", json!({}))),
        )
        .await;
    }
    let from = server.resource_version();
    let patch = json!({"metadata": {"labels": {"x": "1"}}});
    let ct = Some("application/merge-patch+json");
    call(&c, "PATCH", &format!("{PODS}/a"), ct, Some(patch)).await;
    call(&c, "DELETE", &format!("{PODS}/b"), None, None).await;
    call(&c, "POST", PODS, None, Some(pod_json("c", "n2", json!({})))).await;
    // A change elsewhere is not seen.
    call(
        &c,
        "POST",
        "/api/v1/namespaces/other/pods",
        None,
        Some(pod_json("d", "n1", json!({}))),
    )
    .await;

    let path = format!("{PODS}?watch=true&resourceVersion={from}&timeoutSeconds=2");
    let mut w = WatchLines::open(&c, &path).await;
    let mut seen = Vec::new();
    while let Some(ev) = w.next(WAIT).await {
        let obj = &ev["object"];
        assert_eq!(obj["kind"], "Pod", "watch objects carry their kind: {ev}");
        seen.push((
            ev["type"].as_str().unwrap().to_string(),
            obj["metadata"]["name"].as_str().unwrap().to_string(),
            rv_of(obj),
        ));
    }
    let kinds: Vec<(&str, &str)> = seen
        .iter()
        .map(|(t, n, _)| (t.as_str(), n.as_str()))
        .collect();
    assert_eq!(kinds, [("MODIFIED", "a"), ("DELETED", "b"), ("ADDED", "c")]);
    let rvs: Vec<u64> = seen.iter().map(|s| s.2).collect();
    assert_eq!(
        rvs,
        [from + 1, from + 2, from + 3],
        "one version per change, in order"
    );

    // Without a resourceVersion: the current objects as ADDED, then live changes; a change that
    // takes an object out of a filtered watch's scope arrives as DELETED.
    let path = format!("{PODS}?watch=1&fieldSelector=spec.nodeName%3Dn1");
    let mut w = WatchLines::open(&c, &path).await;
    let ev = w.next_change(WAIT).await.unwrap();
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("a"))
    );
    let mv = json!({"spec": {"nodeName": "n2"}});
    let (_, moved) = call(&c, "PATCH", &format!("{PODS}/a"), ct, Some(mv)).await;
    let ev = w.next_change(WAIT).await.unwrap();
    assert_eq!(ev["type"], "DELETED");
    assert_eq!(ev["object"]["spec"]["nodeName"], "n1", "previous content");
    assert_eq!(rv_of(&ev["object"]), rv_of(&moved), "new resourceVersion");
    let back = json!({"spec": {"nodeName": "n1"}});
    call(&c, "PATCH", &format!("{PODS}/a"), ct, Some(back)).await;
    let ev = w.next_change(WAIT).await.unwrap();
    assert_eq!(ev["type"], "ADDED");

    // Watching one object by its path.
    let mut one = WatchLines::open(
        &c,
        &format!("{PODS}/c?watch=true&resourceVersion={from}&timeoutSeconds=1"),
    )
    .await;
    let ev = one.next(WAIT).await.unwrap();
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("c"))
    );
    assert!(one.next(WAIT).await.is_none());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_arrive_and_streaming_lists_end_with_an_annotated_one() {
    let server = start(None).await;
    let c = kube_client(&server).await;
    call(&c, "POST", PODS, None, Some(pod_json("a", "n1", json!({})))).await;
    let rv = server.resource_version();
    let path = format!("{PODS}?watch=true&resourceVersion={rv}&allowWatchBookmarks=true");
    let mut w = WatchLines::open(&c, &path).await;
    let ev = w.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        ev,
        json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                              "metadata": {"resourceVersion": rv.to_string()}}})
    );
    // A change to another resource moves the bookmark on (nothing in scope was skipped).
    let ns = json!({"metadata": {"name": "x"}});
    call(&c, "POST", "/api/v1/namespaces", None, Some(ns)).await;
    let ev = w.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(ev["type"], "BOOKMARK");
    assert_eq!(rv_of(&ev["object"]), rv + 1);

    let path = format!(
        "{PODS}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&resourceVersion="
    );
    let mut w = WatchLines::open(&c, &path).await;
    assert_eq!(w.next(WAIT).await.unwrap()["type"], "ADDED");
    let end = w.next(WAIT).await.unwrap();
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_history_gives_410_and_drop_watches_ends_streams() {
    let server = start(None).await;
    let c = kube_client(&server).await;
    call(&c, "POST", PODS, None, Some(pod_json("a", "n1", json!({})))).await;
    let old = server.resource_version();
    // Two open watches end at once when the watches are dropped.
    let mut w1 = WatchLines::open(&c, &format!("{PODS}?watch=true&resourceVersion={old}")).await;
    let mut w2 = WatchLines::open(&c, "/api/v1/pods?watch=true&allowWatchBookmarks=true").await;
    assert_eq!(w2.next(WAIT).await.unwrap()["type"], "ADDED");
    let (code, _) = call(&c, "POST", "/standin/drop-watches", None, None).await;
    assert_eq!(code, 200);
    assert!(w1.next_change(WAIT).await.is_none());
    assert!(w2.next_change(WAIT).await.is_none());

    let (code, body) = call(&c, "POST", "/standin/expire-history", None, None).await;
    assert_eq!(code, 200);
    let now = server.resource_version();
    assert_eq!(body["resourceVersion"], now.to_string());
    let mut w = WatchLines::open(&c, &format!("{PODS}?watch=true&resourceVersion={old}")).await;
    let ev = w.next(WAIT).await.unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["kind"], "Status");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    assert!(
        w.next(WAIT).await.is_none(),
        "the stream ends after the error"
    );
    // From the current version it works.
    let mut w = WatchLines::open(
        &c,
        &format!("{PODS}?watch=true&resourceVersion={now}&timeoutSeconds=1"),
    )
    .await;
    assert!(w.next(WAIT).await.is_none());
    // A list at an exact older version is gone too.
    let (code, st) = call(
        &c,
        "GET",
        &format!("{PODS}?resourceVersion={old}&resourceVersionMatch=Exact"),
        None,
        None,
    )
    .await;
    assert_eq!((code, st["reason"].as_str()), (410, Some("Expired")));
    server.shutdown().await;
}

#[test]
fn history_is_bounded_and_no_op_updates_are_not_changes() {
    let mut store = Store::open(None).unwrap();
    let pods = find_resource("", "v1", "pods").unwrap();
    store
        .create(pods, "lab", pod_json("a", "n1", json!({})))
        .unwrap();
    let first = store.resource_version();
    for i in 0..HISTORY_LIMIT {
        let patch =
            super::store::Patch::Merge(json!({"metadata": {"labels": {"i": i.to_string()}}}));
        store.patch(pods, "lab", "a", &patch, false).unwrap();
    }
    assert_eq!(store.history_len(), HISTORY_LIMIT);
    let filter = select::Filter::default();
    let err = store
        .watch(pods, Start::After(first - 1), &filter)
        .err()
        .unwrap();
    assert_eq!(err.code, 410);
    let ok = store
        .watch(pods, Start::After(first), &filter)
        .ok()
        .unwrap();
    assert_eq!(ok.backlog.len(), HISTORY_LIMIT);
    let before = store.resource_version();
    let same = super::store::Patch::Merge(
        json!({"metadata": {"labels": {"i": (HISTORY_LIMIT - 1).to_string()}}}),
    );
    store.patch(pods, "lab", "a", &same, false).unwrap();
    assert_eq!(store.resource_version(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart() {
    let dir = temp_dir("persist");
    let state = dir.join("state.json");
    let server = start(Some(state.clone())).await;
    let c = kube_client(&server).await;
    call(
        &c,
        "POST",
        PODS,
        None,
        Some(pod_json("a", "n1", json!({"k": "v"}))),
    )
    .await;
    let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e1"},
                    "reason": "Test", "action": "Testing", "reportingController": "t",
                    "reportingInstance": "t", "eventTime": "2026-01-01T00:00:00.000000Z"});
    call(
        &c,
        "POST",
        "/apis/events.k8s.io/v1/namespaces/lab/events",
        None,
        Some(ev),
    )
    .await;
    let (_, a) = call(&c, "GET", &format!("{PODS}/a"), None, None).await;
    let rv = server.resource_version();
    server.shutdown().await;

    let server = start(Some(state.clone())).await;
    assert_eq!(server.resource_version(), rv);
    let c = kube_client(&server).await;
    let (code, again) = call(&c, "GET", &format!("{PODS}/a"), None, None).await;
    assert_eq!((code, &again), (200, &a));
    let (_, events) = call(&c, "GET", "/apis/events.k8s.io/v1/events", None, None).await;
    assert_eq!(names(&events), ["e1"]);
    // The counter continues; watches resume from the current version.
    let (_, b) = call(&c, "POST", PODS, None, Some(pod_json("b", "n1", json!({})))).await;
    assert_eq!(rv_of(&b), rv + 1);
    let mut w = WatchLines::open(
        &c,
        &format!("{PODS}?watch=true&resourceVersion={rv}&timeoutSeconds=1"),
    )
    .await;
    assert_eq!(
        w.next(WAIT).await.unwrap()["object"]["metadata"]["name"],
        "b"
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The next item of a watcher stream.
async fn next_item<S: futures_util::Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    use futures_util::StreamExt;
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no watcher event in time")
}

/// A watcher event in short: `Init`, `InitApply a`, `InitDone`, `Apply a`, `Delete a`, errors.
fn describe(ev: &Result<watcher::Event<Pod>, watcher::Error>) -> String {
    match ev {
        Ok(watcher::Event::Init) => "Init".into(),
        Ok(watcher::Event::InitApply(p)) => format!("InitApply {}", p.name_any()),
        Ok(watcher::Event::InitDone) => "InitDone".into(),
        Ok(watcher::Event::Apply(p)) => format!("Apply {}", p.name_any()),
        Ok(watcher::Event::Delete(p)) => format!("Delete {}", p.name_any()),
        Err(watcher::Error::WatchError(status)) => {
            format!("WatchError {} {}", status.code, status.reason)
        }
        Err(e) => format!("Error {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_client_and_watcher_end_to_end_with_relist_after_410() {
    let server = start(None).await;
    let client = kube_client(&server).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "lab");
    let new_pod = |name: &str, node: &str| -> Pod {
        serde_json::from_value(pod_json(name, node, json!({"app": "web"}))).unwrap()
    };
    pods.create(&PostParams::default(), &new_pod("a", "n1"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &new_pod("z", "n2"))
        .await
        .unwrap();
    let listed = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 2);

    let cfg = watcher::Config::default().fields("spec.nodeName=n1");
    let mut stream = Box::pin(watcher(Api::<Pod>::all(client.clone()), cfg));
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(describe(&next_item(&mut stream).await.unwrap()));
    }
    assert_eq!(got, ["Init", "InitApply a", "InitDone"]);

    pods.create(&PostParams::default(), &new_pod("b", "n1"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &new_pod("y", "n2"))
        .await
        .unwrap();
    let ann = json!({"metadata": {"annotations": {"ambient.istio.io/redirection": "enabled"}}});
    let patched = pods
        .patch("a", &PatchParams::default(), &Patch::Merge(&ann))
        .await
        .unwrap();
    assert_eq!(
        patched.annotations()["ambient.istio.io/redirection"],
        "enabled"
    );
    pods.delete("b", &DeleteParams::default()).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(describe(&next_item(&mut stream).await.unwrap()));
    }
    assert_eq!(got, ["Apply b", "Apply a", "Delete b"]);

    pods.create(&PostParams::default(), &new_pod("c", "n1"))
        .await
        .unwrap();
    assert_eq!(describe(&next_item(&mut stream).await.unwrap()), "Apply c");

    // History gone, then the watch dropped: the watcher resumes from its resourceVersion, gets
    // 410 and lists again.
    server.expire_history();
    server.drop_watches();
    let mut got = Vec::new();
    loop {
        let ev = describe(&next_item(&mut stream).await.unwrap());
        let done = ev == "InitDone";
        got.push(ev);
        if done {
            break;
        }
    }
    assert_eq!(
        got,
        [
            "WatchError 410 Expired",
            "Init",
            "InitApply a",
            "InitApply c",
            "InitDone"
        ]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_and_json_patches_of_annotations() {
    let server = start(None).await;
    let client = kube_client(&server).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "lab");
    let pod: Pod = serde_json::from_value(pod_json("a", "n1", json!({}))).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let pp = PatchParams::default();
    let set = json!({"metadata": {"annotations": {"one": "1", "two": "2"}}});
    let p = pods.patch("a", &pp, &Patch::Merge(&set)).await.unwrap();
    assert_eq!(p.annotations().len(), 2);
    let remove = json!({"metadata": {"annotations": {"one": null}}});
    let p = pods.patch("a", &pp, &Patch::Merge(&remove)).await.unwrap();
    assert_eq!(
        p.annotations(),
        &BTreeMap::from([("two".to_string(), "2".to_string())])
    );
    let strategic = json!({"metadata": {"annotations": {"three": "3"}}});
    let p = pods
        .patch("a", &pp, &Patch::Strategic(&strategic))
        .await
        .unwrap();
    assert_eq!(p.annotations().len(), 2);
    let ops = json!([
        {"op": "test", "path": "/metadata/annotations/two", "value": "2"},
        {"op": "remove", "path": "/metadata/annotations/two"},
        {"op": "add", "path": "/metadata/labels", "value": {"l": "1"}},
    ]);
    let ct = Some("application/json-patch+json");
    let (code, p) = call(&client, "PATCH", &format!("{PODS}/a"), ct, Some(ops)).await;
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["metadata"]["annotations"], json!({"three": "3"}));
    assert_eq!(p["metadata"]["labels"], json!({"l": "1"}));
    // Removing the last annotation leaves no `annotations` field, as on a real server.
    let last = json!({"metadata": {"annotations": {"three": null}}});
    let p = pods.patch("a", &pp, &Patch::Merge(&last)).await.unwrap();
    assert_eq!(p.metadata.annotations, None);
    let failing = json!([{"op": "test", "path": "/metadata/name", "value": "b"}]);
    let (code, _) = call(&client, "PATCH", &format!("{PODS}/a"), ct, Some(failing)).await;
    assert_eq!(code, 422);
    // A patch with a stale resourceVersion is a conflict.
    let stale = json!({"metadata": {"resourceVersion": "1", "annotations": {"x": "y"}}});
    let err = pods
        .patch("a", &pp, &Patch::Merge(&stale))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err}"
    );
    // Server-side apply (as a merge) creates a missing object.
    let applied = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "new"},
                         "spec": {"containers": [{"name": "app", "image": "x"}]}});
    let p = pods
        .patch("new", &PatchParams::apply("test"), &Patch::Apply(&applied))
        .await
        .unwrap();
    assert_eq!(p.metadata.namespace.as_deref(), Some("lab"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_kube_recorder_are_stored_and_listable() {
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let server = start(None).await;
    let client = kube_client(&server).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "lab");
    let pod: Pod = serde_json::from_value(pod_json("a", "n1", json!({}))).unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let reporter = Reporter {
        controller: "ambit".into(),
        instance: Some("ambit-n1".into()),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let event = Event {
        type_: EventType::Normal,
        reason: "Captured".into(),
        note: Some("redirection installed".into()),
        action: "Capture".into(),
        secondary: None,
    };
    let reference = pod.object_ref(&());
    recorder.publish(&event, &reference).await.unwrap();
    // The same event again becomes a series, sent as a merge patch.
    recorder.publish(&event, &reference).await.unwrap();
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), "lab");
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let ev = &list.items[0];
    assert_eq!(ev.reason.as_deref(), Some("Captured"));
    assert_eq!(ev.regarding.as_ref().unwrap().name.as_deref(), Some("a"));
    assert_eq!(ev.reporting_controller.as_deref(), Some("ambit"));
    assert_eq!(ev.series.as_ref().map(|s| s.count), Some(2));
    server.shutdown().await;
}

/// The `ambit` binary of this build (next to the test executable's `deps` directory).
fn ambit_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("ambit");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build` (or the whole `cargo test`) first",
        bin.display()
    );
    bin
}

#[test]
fn lab_kube_mode_publishes_workloads_that_nodes_read_with_kube() {
    let lab = Lab::up(&LabSpec {
        nodes: 2,
        pods_per_node: 2,
        kube: true,
        ..LabSpec::default()
    })
    .unwrap();
    let kubeconfig = lab.kubeconfig_path();
    assert!(std::fs::read_to_string(&kubeconfig)
        .unwrap()
        .contains("server: http://172.31.0.1:6443"));
    let binary = ambit_binary();
    let pid = lab.start_apiserver(&binary).unwrap();
    assert_eq!(Lab::load(lab.name()).unwrap().state().apiserver, Some(pid));

    // From node n1's namespace, the production client lists n1's pods as the lab made them.
    let node = lab.node_netns("n1").unwrap();
    let list_n1 = || {
        block_on_in_netns(&node, || async {
            let client = client_from_kubeconfig(&kubeconfig).await?;
            let pods: Api<Pod> = Api::all(client);
            let lp = ListParams::default().fields("spec.nodeName=n1");
            anyhow::Ok(pods.list(&lp).await?.items)
        })
        .unwrap()
    };
    let pods = list_n1();
    let got: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    assert_eq!(got, ["n1-p1", "n1-p2"]);
    for pod in &pods {
        let want = lab.pod(&pod.name_any()).unwrap();
        assert_eq!(pod.metadata.uid.as_deref(), Some(want.uid.as_str()));
        assert_eq!(pod.namespace().as_deref(), Some(lab.namespace()));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some(want.service_account.as_str())
        );
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let ips: Vec<IpAddr> = status
            .pod_ips
            .iter()
            .flatten()
            .map(|i| i.ip.parse().unwrap())
            .collect();
        assert_eq!(ips, [IpAddr::V4(want.ipv4), IpAddr::V6(want.ipv6)]);
    }

    // The namespace carries the ambient label; a daemon's annotation on a pod survives the
    // lab's next publish; removing a pod deletes it; a Service gets its EndpointSlice.
    let fabric = lab.fabric_netns().unwrap();
    block_on_in_netns(&fabric, || async {
        let client = client_from_kubeconfig(&kubeconfig).await?;
        let ns: Namespace = Api::all(client.clone()).get("lab").await?;
        assert_eq!(ns.labels()["istio.io/dataplane-mode"], "ambient");
        let ann = json!({"metadata": {"annotations": {"ambient.istio.io/redirection": "enabled"}}});
        Api::<Pod>::namespaced(client, "lab")
            .patch("n1-p2", &PatchParams::default(), &Patch::Merge(&ann))
            .await?;
        anyhow::Ok(())
    })
    .unwrap();
    let p2 = lab.pod("n1-p2").unwrap().clone();
    lab.update_workloads(|s| {
        s.pods.retain(|p| p.name != "n1-p1");
        s.services.push(Service {
            name: "web".into(),
            namespace: "lab".into(),
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
            }],
            endpoints: vec![Endpoint {
                ip: IpAddr::V4(p2.ipv4),
                ready: true,
                ports: BTreeMap::from([("http".to_string(), 8080)]),
            }],
        });
    })
    .unwrap();
    let pods = list_n1();
    assert_eq!(
        pods.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
        ["n1-p2"]
    );
    assert_eq!(
        pods[0].annotations()["ambient.istio.io/redirection"],
        "enabled"
    );
    let rv_before = block_on_in_netns(&fabric, || async {
        let client = client_from_kubeconfig(&kubeconfig).await?;
        let svc: K8sService = Api::namespaced(client.clone(), "lab").get("web").await?;
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
        assert_eq!(spec.ports.unwrap()[0].port, 80);
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "lab");
        let slice = slices.get("web-v4").await?;
        assert_eq!(slice.labels()["kubernetes.io/service-name"], "web");
        let ep = &slice.endpoints[0];
        assert_eq!(ep.addresses, [p2.ipv4.to_string()]);
        assert_eq!(ep.conditions.as_ref().unwrap().ready, Some(true));
        assert_eq!(
            ep.target_ref.as_ref().unwrap().uid.as_deref(),
            Some(p2.uid.as_str())
        );
        assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(8080));
        let list = Api::<Pod>::all(client).list(&ListParams::default()).await?;
        anyhow::Ok(list.metadata.resource_version.unwrap())
    })
    .unwrap();

    // A restarted stand-in has the same objects at the same resourceVersion (nothing to
    // republish), and a removed lab takes its stand-in along.
    let new_pid = lab.restart_apiserver(&binary).unwrap();
    assert_ne!(new_pid, pid);
    let rv_after = block_on_in_netns(&fabric, || async {
        let client = client_from_kubeconfig(&kubeconfig).await?;
        let list = Api::<Pod>::all(client).list(&ListParams::default()).await?;
        assert_eq!(list.items.len(), 3);
        anyhow::Ok(list.metadata.resource_version.unwrap())
    })
    .unwrap();
    assert_eq!(rv_after, rv_before);
    assert!(lab
        .apiserver_log()
        .contains("stand-in API server listening"));
    drop(lab);
    assert!(!std::path::Path::new(&format!("/proc/{new_pid}")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_round_trips_through_the_kube_source_conversion_and_merges_three_ways() {
    use crate::k8s::convert;
    use crate::workload::{Namespace as WlNamespace, Pod as WlPod, Snapshot};
    let server = start(None).await;
    let client = kube_client(&server).await;
    let pod = |name: &str, node: &str, ip: &str| WlPod {
        uid: format!("uid-{name}"),
        name: name.into(),
        namespace: "shop".into(),
        service_account: format!("sa-{name}"),
        node: node.into(),
        ips: vec![ip.parse().unwrap()],
        labels: BTreeMap::from([("app".to_string(), name.to_string())]),
        annotations: BTreeMap::from([("lab/note".to_string(), "1".to_string())]),
        netns: None,
        host_network: false,
    };
    let mut snap = Snapshot {
        namespaces: vec![WlNamespace {
            name: "shop".into(),
            labels: BTreeMap::from([("istio.io/dataplane-mode".into(), "ambient".into())]),
        }],
        pods: vec![pod("web", "n1", "10.0.1.2"), pod("db", "n2", "fd00::3")],
        services: vec![Service {
            name: "web".into(),
            namespace: "shop".into(),
            cluster_ips: vec![
                "10.96.0.10".parse().unwrap(),
                "fd00:96::10".parse().unwrap(),
            ],
            ports: vec![
                ServicePort {
                    name: "http".into(),
                    port: 80,
                },
                ServicePort {
                    name: "grpc".into(),
                    port: 90,
                },
            ],
            endpoints: vec![
                Endpoint {
                    ip: "10.0.1.2".parse().unwrap(),
                    ready: true,
                    ports: BTreeMap::from([("http".into(), 8080), ("grpc".into(), 9090)]),
                },
                Endpoint {
                    ip: "fd00::3".parse().unwrap(),
                    ready: false,
                    ports: BTreeMap::from([("http".into(), 8080), ("grpc".into(), 9090)]),
                },
            ],
        }],
        istio: Vec::new(),
        rejected: Vec::new(),
    };
    snap.pods[1].host_network = true;
    let hosts = BTreeMap::new();
    let report = sync(&client, None, &snap, &hosts).await.unwrap();
    assert_eq!(report.created.len(), 6, "{report:?}"); // namespace, 2 pods, service, 2 slices

    // What the Kubernetes source makes of the published objects is the snapshot again.
    let read_back = |client: kube::Client| async move {
        let pods: Vec<Pod> = Api::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        let nss: Vec<Namespace> = Api::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        let svcs: Vec<K8sService> = Api::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        let slices: Vec<EndpointSlice> = Api::all(client)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        (pods, nss, svcs, slices)
    };
    let (pods, nss, svcs, slices) = read_back(client.clone()).await;
    let mut got_pods: Vec<WlPod> = pods
        .iter()
        .map(|p| convert::pod(p).unwrap().unwrap())
        .collect();
    got_pods.sort_by(|a, b| b.name.cmp(&a.name));
    assert_eq!(got_pods, snap.pods);
    let ns = convert::namespace(&nss[0]).unwrap();
    assert_eq!(ns.labels["istio.io/dataplane-mode"], "ambient");
    let slice_refs: Vec<&EndpointSlice> = slices.iter().collect();
    let mut svc = convert::service(&svcs[0], &slice_refs).unwrap();
    svc.endpoints.sort_by_key(|e| e.ip);
    assert_eq!(svc, snap.services[0]);

    // Publishing the same snapshot again changes nothing.
    let rv = server.resource_version();
    let report = sync(&client, Some(&snap), &snap, &hosts).await.unwrap();
    assert_eq!(report, SyncReport::default());
    assert_eq!(server.resource_version(), rv);

    // Labels and annotations merge three ways: what someone else wrote stays.
    let theirs = json!({"metadata": {"annotations": {"ambient.istio.io/redirection": "enabled"}}});
    let shop: Api<Pod> = Api::namespaced(client.clone(), "shop");
    shop.patch("web", &PatchParams::default(), &Patch::Merge(&theirs))
        .await
        .unwrap();
    let old = snap.clone();
    snap.pods[0].labels = BTreeMap::from([("tier".to_string(), "front".to_string())]);
    snap.pods[0].annotations.clear();
    let report = sync(&client, Some(&old), &snap, &hosts).await.unwrap();
    assert_eq!(report.updated, ["pods shop/web"]);
    let web = shop.get("web").await.unwrap();
    assert_eq!(web.labels(), &snap.pods[0].labels);
    assert_eq!(
        web.annotations().keys().collect::<Vec<_>>(),
        ["ambient.istio.io/redirection"]
    );

    // A pod under a new UID is recreated; a removed service takes its slices along.
    let old = snap.clone();
    snap.pods[1].uid = "uid-db-2".into();
    snap.services.clear();
    let report = sync(&client, Some(&old), &snap, &hosts).await.unwrap();
    assert_eq!(report.created, ["pods shop/db"]);
    assert_eq!(
        report.deleted,
        [
            "pods shop/db",
            "endpointslices shop/web-v4",
            "endpointslices shop/web-v6",
            "services shop/web"
        ]
    );
    assert_eq!(
        shop.get("db").await.unwrap().uid().as_deref(),
        Some("uid-db-2")
    );
    server.shutdown().await;
}
