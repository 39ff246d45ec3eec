//! Persistence test of the stand-in: objects and resourceVersion survive a restart from the
//! state file.

use super::*;

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
