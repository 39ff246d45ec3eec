//! Tests of the lab's Kubernetes mode: nodes read published workloads with kube-rs, and
//! publishing round-trips through the kube source's conversion.

use super::*;

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
        .into_iter()
        // Besides the lab's pods, n1 runs the DaemonSet pod the lab publishes per node (the
        // pod the daemon's CA token is bound to).
        .filter(|p| {
            let daemon = p.namespace().as_deref() == Some(crate::lab::ca::DAEMON_NAMESPACE);
            assert!(!daemon || p.name_any() == "ambit-n1", "{}", p.name_any());
            !daemon
        })
        .collect::<Vec<_>>()
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
        // 3 lab pods and the 2 DaemonSet pods.
        assert_eq!(list.items.len(), 5);
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
        workload: None,
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
    // A controller's pod: its owner reaches the kube source, which names the workload by it.
    snap.pods[0].workload = Some("web-set".into());
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
