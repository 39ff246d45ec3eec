//! REST tests of the stand-in: CRUD, list selectors and error statuses over raw HTTP, merge and
//! JSON patches through kube-rs, and Events from the kube-rs recorder.

use super::*;

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
