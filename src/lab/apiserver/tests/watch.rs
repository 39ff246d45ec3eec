//! Watch tests of the stand-in: resuming from a resourceVersion, bookmarks and streaming lists,
//! `410 Expired` and dropped watches, the bounded history, and the kube-rs watcher end to end.

use super::*;

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
