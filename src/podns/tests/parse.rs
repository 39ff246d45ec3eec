//! Parsing tests: one fixture per spelling (the fixtures are in `mod.rs`), plus UIDs, pod-level
//! cgroups, malformed lines and ambiguous files.

use super::*;

fn pod(uid: &str, cid: Option<&str>) -> Option<CgroupPod> {
    Some(CgroupPod {
        uid: uid.to_string(),
        container_id: cid.map(str::to_string),
    })
}

#[test]
fn cgroup_v1_cgroupfs_docker() {
    assert_eq!(
        pod_from_cgroup(V1_CGROUPFS_BURSTABLE_DOCKER),
        pod(UID_A, Some(CID_1))
    );
}

#[test]
fn cgroup_v2_systemd_containerd() {
    assert_eq!(
        pod_from_cgroup(V2_SYSTEMD_BURSTABLE_CONTAINERD),
        pod(UID_A, Some(CID_1))
    );
}

#[test]
fn systemd_guaranteed_crio() {
    assert_eq!(
        pod_from_cgroup(V1_SYSTEMD_GUARANTEED_CRIO),
        pod(UID_B, Some(CID_2))
    );
}

#[test]
fn systemd_besteffort_docker() {
    assert_eq!(
        pod_from_cgroup(V1_SYSTEMD_BESTEFFORT_DOCKER),
        pod(UID_A, Some(CID_1))
    );
}

#[test]
fn cgroupfs_guaranteed_and_crio() {
    assert_eq!(
        pod_from_cgroup(V2_CGROUPFS_GUARANTEED),
        pod(UID_B, Some(CID_2))
    );
    assert_eq!(
        pod_from_cgroup(V1_CGROUPFS_BESTEFFORT_CRIO),
        pod(UID_B, Some(CID_2))
    );
}

#[test]
fn nested_under_a_prefix() {
    assert_eq!(pod_from_cgroup(KIND_CGROUPFS), pod(UID_A, Some(CID_1)));
    assert_eq!(pod_from_cgroup(KIND_SYSTEMD), pod(UID_A, Some(CID_1)));
    assert_eq!(
        pod_from_cgroup(CONTAINERD_UNEXPANDED),
        pod(UID_B, Some(CID_2))
    );
    assert_eq!(pod_from_cgroup(LAB_BOTH_SPELLINGS), pod(UID_A, Some(CID_1)));
}

#[test]
fn relative_paths_from_a_cgroup_namespace() {
    assert_eq!(
        pod_from_cgroup(CGROUPNS_RELATIVE_CGROUPFS),
        pod(UID_A, Some(CID_1))
    );
    assert_eq!(
        pod_from_cgroup(CGROUPNS_RELATIVE_SYSTEMD),
        pod(UID_B, Some(CID_2))
    );
}

#[test]
fn pod_level_cgroup_and_odd_container_components() {
    // A process directly in the pod's cgroup (no container level).
    assert_eq!(
        pod_from_path(&format!("/kubepods/burstable/pod{UID_A}")),
        pod(UID_A, None)
    );
    assert_eq!(
        pod_from_path(&format!("/kubepods/burstable/pod{UID_A}/not-a-container")),
        pod(UID_A, None)
    );
    // CRI-O's conmon lives in the pod slice too (it is in the host netns; the scan skips it).
    assert_eq!(
        pod_from_path(&format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{CID_2}.scope",
            UID_B.replace('-', "_")
        )),
        pod(UID_B, Some(CID_2))
    );
    // Deeper levels below the container (systemd inside a container) keep the pod.
    assert_eq!(
        pod_from_path(&format!("/kubepods/pod{UID_B}/{CID_2}/init.scope")),
        pod(UID_B, Some(CID_2))
    );
}

#[test]
fn uid_is_normalised_to_dashed_lowercase() {
    let upper = UID_A.to_uppercase();
    assert_eq!(
        pod_uid_from_cgroup(&format!("0::/kubepods/besteffort/pod{upper}/{CID_1}\n")),
        Some(UID_A.to_string())
    );
    assert_eq!(normalize_uid(&UID_A.replace('-', "_")), Some(UID_A.into()));
    assert_eq!(normalize_uid(&upper), Some(UID_A.into()));
    assert_eq!(normalize_uid(UID_A), Some(UID_A.into()));
    for bad in [
        "",
        "97d9ec13-88b1-43f1-b278-a58674ba1cb",   // short
        "97d9ec13-88b1-43f1-b278-a58674ba1cbd0", // long
        "97d9ec13.88b1.43f1.b278.a58674ba1cbd",  // other separator
        "97d9ec1388b1-43f1-b278-a58674ba1cbd-",  // separators misplaced
        "97d9ec13-88b1-43f1-b278-a58674ba1cbg",  // not hex
        "97d9ec13-88b1-43f1-b278-a58674ba1cé",   // multi-byte
    ] {
        assert_eq!(normalize_uid(bad), None, "{bad:?}");
    }
}

#[test]
fn host_and_other_processes_name_no_pod() {
    let host_v1 = "\
11:blkio:/system.slice/containerd.service
10:memory:/system.slice/containerd.service
1:name=systemd:/system.slice/containerd.service
0::/system.slice/containerd.service
";
    let user_session = "0::/user.slice/user-1000.slice/session-4.scope\n";
    let root = "12:pids:/\n1:name=systemd:/init.scope\n0::/init.scope\n";
    // A QoS-level cgroup, no pod.
    let qos = "0::/kubepods.slice/kubepods-burstable.slice\n";
    // Podman pods and containers are not Kubernetes pods.
    let podman = format!("0::/machine.slice/libpod-{CID_1}.scope\n");
    let podman_pod =
        format!("0::/machine.slice/machine-libpod_pod_{CID_2}.slice/libpod-{CID_1}.scope\n");
    // `pod<uid>` outside any `kubepods` tree.
    let stray = format!("0::/user.slice/pod{UID_A}/{CID_1}\n");
    // Slice spelling without the kubepods prefix, and cgroupfs spelling with a prefix.
    let not_kubelet_slice = format!("0::/kubepods/x-pod{}.slice\n", UID_A.replace('-', "_"));
    let prefixed_dir = format!("0::/kubepods/burstable/xpod{UID_A}/{CID_1}\n");
    for contents in [
        host_v1,
        user_session,
        root,
        qos,
        &podman,
        &podman_pod,
        &stray,
        &prefixed_dir,
        "",
        "\n\n",
    ] {
        assert_eq!(pod_from_cgroup(contents), None, "{contents:?}");
    }
    // `x-pod<uid>.slice` under kubepods: the slice must itself mention kubepods.
    assert_eq!(pod_from_cgroup(&not_kubelet_slice), None);
}

#[test]
fn malformed_lines_are_ignored() {
    let good = format!("0::/kubepods/pod{UID_A}/{CID_1}");
    for line in [
        "garbage".to_string(),
        "3:cpu".to_string(),
        format!("x:cpu:/kubepods/pod{UID_A}/{CID_1}"),
        format!(":cpu:/kubepods/pod{UID_A}/{CID_1}"),
        format!("0::kubepods/pod{UID_A}/{CID_1}"),
        "0::/kubepods/podnot-a-uid/x".to_string(),
        format!("0::/kubepods/pod{}/{CID_1}", &UID_A[..30]),
    ] {
        assert_eq!(pod_from_line(&line), None, "{line:?}");
        // Garbage next to a good line does not hide it.
        let file = format!("{line}\n{good}\n");
        assert_eq!(pod_uid_from_cgroup(&file), Some(UID_A.into()), "{file:?}");
    }
    assert_eq!(
        pod_from_line(&format!("{good} (deleted)")),
        pod(UID_A, Some(CID_1))
    );
    assert_eq!(pod_from_line(&format!("{good}\r")), pod(UID_A, Some(CID_1)));
}

#[test]
fn lines_naming_different_pods_make_the_file_ambiguous() {
    let file = format!("4:memory:/kubepods/pod{UID_A}/{CID_1}\n0::/kubepods/pod{UID_B}/{CID_2}\n");
    assert_eq!(pod_from_cgroup(&file), None);
    // Agreeing lines with and without a container id: the id is kept.
    let file = format!("4:memory:/kubepods/pod{UID_A}\n0::/kubepods/pod{UID_A}/{CID_1}\n");
    assert_eq!(pod_from_cgroup(&file), pod(UID_A, Some(CID_1)));
}
