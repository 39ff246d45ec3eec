//! Tests: cgroup parsing on hand-written `/proc/<pid>/cgroup` files, the scan on a fake `/proc`
//! tree, and (root) discovery of real lab pods.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::cgroup::{pod_from_line, pod_from_path};
use super::*;
use crate::netns::NetNs;

const UID_A: &str = "97d9ec13-88b1-43f1-b278-a58674ba1cbd";
const UID_B: &str = "034a277c-30d3-41bc-8e02-7494348f0f50";
const CID_1: &str = "3af651ff07a3b328abf918646c5478922c0f7a49aaf2ea5bfdea57e8d96d39ca";
const CID_2: &str = "7577ea1eeb5a3113e6aaad8381534b177363ff4761889a3c4f4e760b0e98bbb6";

fn pod(uid: &str, cid: Option<&str>) -> Option<CgroupPod> {
    Some(CgroupPod {
        uid: uid.to_string(),
        container_id: cid.map(str::to_string),
    })
}

// ---------------------------------------------------------------------------------------------
// Parsing: one fixture per spelling. Contents written for these tests, shaped like what the
// kernel prints for a container process on nodes of each kind.

/// cgroup v1, cgroupfs driver, burstable pod, Docker: every controller hierarchy shows the path.
const V1_CGROUPFS_BURSTABLE_DOCKER: &str = "\
12:hugetlb:/kubepods/burstable/pod97d9ec13-88b1-43f1-b278-a58674ba1cbd/3af651ff07a3b328abf918646c5478922c0f7a49aaf2ea5bfdea57e8d96d39ca
11:memory:/kubepods/burstable/pod97d9ec13-88b1-43f1-b278-a58674ba1cbd/3af651ff07a3b328abf918646c5478922c0f7a49aaf2ea5bfdea57e8d96d39ca
10:cpu,cpuacct:/kubepods/burstable/pod97d9ec13-88b1-43f1-b278-a58674ba1cbd/3af651ff07a3b328abf918646c5478922c0f7a49aaf2ea5bfdea57e8d96d39ca
9:pids:/kubepods/burstable/pod97d9ec13-88b1-43f1-b278-a58674ba1cbd/3af651ff07a3b328abf918646c5478922c0f7a49aaf2ea5bfdea57e8d96d39ca
8:net_cls,net_prio:/kubepods/burstable/pod97d9ec13-88b1-43f1-b278-a58674ba1cbd/3af651ff07a3b328abf918646c5478922c0f7a49aaf2ea5bfdea57e8d96d39ca
2:rdma:/
1:name=systemd:/kubepods/burstable/pod97d9ec13-88b1-43f1-b278-a58674ba1cbd/3af651ff07a3b328abf918646c5478922c0f7a49aaf2ea5bfdea57e8d96d39ca
0::/
";

/// cgroup v2 only, systemd driver, burstable pod, containerd.
const V2_SYSTEMD_BURSTABLE_CONTAINERD: &str = "\
0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod97d9ec13_88b1_43f1_b278_a58674ba1cbd.slice/cri-containerd-3af651ff07a3b328abf918646c5478922c0f7a49aaf2ea5bfdea57e8d96d39ca.scope
";

/// cgroup v1, systemd driver, guaranteed pod (no QoS slice), CRI-O.
const V1_SYSTEMD_GUARANTEED_CRIO: &str = "\
7:devices:/kubepods.slice/kubepods-pod034a277c_30d3_41bc_8e02_7494348f0f50.slice/crio-7577ea1eeb5a3113e6aaad8381534b177363ff4761889a3c4f4e760b0e98bbb6.scope
6:freezer:/kubepods.slice/kubepods-pod034a277c_30d3_41bc_8e02_7494348f0f50.slice/crio-7577ea1eeb5a3113e6aaad8381534b177363ff4761889a3c4f4e760b0e98bbb6.scope
1:name=systemd:/kubepods.slice/kubepods-pod034a277c_30d3_41bc_8e02_7494348f0f50.slice/crio-7577ea1eeb5a3113e6aaad8381534b177363ff4761889a3c4f4e760b0e98bbb6.scope
";

/// cgroup v1, systemd driver, best-effort pod, Docker.
const V1_SYSTEMD_BESTEFFORT_DOCKER: &str = "\
4:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod97d9ec13_88b1_43f1_b278_a58674ba1cbd.slice/docker-3af651ff07a3b328abf918646c5478922c0f7a49aaf2ea5bfdea57e8d96d39ca.scope
1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod97d9ec13_88b1_43f1_b278_a58674ba1cbd.slice/docker-3af651ff07a3b328abf918646c5478922c0f7a49aaf2ea5bfdea57e8d96d39ca.scope
";

/// cgroupfs driver, guaranteed pod: the pod directory sits right under `kubepods`.
const V2_CGROUPFS_GUARANTEED: &str = "\
0::/kubepods/pod034a277c-30d3-41bc-8e02-7494348f0f50/7577ea1eeb5a3113e6aaad8381534b177363ff4761889a3c4f4e760b0e98bbb6
";

/// cgroupfs driver, best-effort pod, CRI-O (container directory named `crio-<id>`).
const V1_CGROUPFS_BESTEFFORT_CRIO: &str = "\
5:cpuset:/kubepods/besteffort/pod034a277c-30d3-41bc-8e02-7494348f0f50/crio-7577ea1eeb5a3113e6aaad8381534b177363ff4761889a3c4f4e760b0e98bbb6
3:pids:/kubepods/besteffort/pod034a277c-30d3-41bc-8e02-7494348f0f50/crio-7577ea1eeb5a3113e6aaad8381534b177363ff4761889a3c4f4e760b0e98bbb6
";

/// kind node with cgroupfs: kubelet runs under `/kubelet`.
const KIND_CGROUPFS: &str = "\
0::/kubelet/kubepods/besteffort/pod97d9ec13-88b1-43f1-b278-a58674ba1cbd/3af651ff07a3b328abf918646c5478922c0f7a49aaf2ea5bfdea57e8d96d39ca
";

/// kind node with the systemd driver: slices are prefixed with `kubelet-`.
const KIND_SYSTEMD: &str = "\
0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod97d9ec13_88b1_43f1_b278_a58674ba1cbd.slice/cri-containerd-3af651ff07a3b328abf918646c5478922c0f7a49aaf2ea5bfdea57e8d96d39ca.scope
";

/// containerd in `system.slice` asked for the systemd driver but not managed by systemd: the
/// cgroupsPath (`slice:prefix:id`) ends up verbatim under containerd's own cgroup.
const CONTAINERD_UNEXPANDED: &str = "\
8:pids:/system.slice/containerd.service/kubepods-burstable-pod034a277c_30d3_41bc_8e02_7494348f0f50.slice:cri-containerd:7577ea1eeb5a3113e6aaad8381534b177363ff4761889a3c4f4e760b0e98bbb6
1:name=systemd:/system.slice/containerd.service/kubepods-burstable-pod034a277c_30d3_41bc_8e02_7494348f0f50.slice:cri-containerd:7577ea1eeb5a3113e6aaad8381534b177363ff4761889a3c4f4e760b0e98bbb6
";

/// Read from inside a private cgroup namespace (a DaemonSet pod on cgroup v2): paths of other
/// pods are relative to the reader's own cgroup and start with `..`.
const CGROUPNS_RELATIVE_CGROUPFS: &str = "0::/../../pod97d9ec13-88b1-43f1-b278-a58674ba1cbd/3af651ff07a3b328abf918646c5478922c0f7a49aaf2ea5bfdea57e8d96d39ca\n";
const CGROUPNS_RELATIVE_SYSTEMD: &str = "0::/../kubepods-besteffort-pod034a277c_30d3_41bc_8e02_7494348f0f50.slice/cri-containerd-7577ea1eeb5a3113e6aaad8381534b177363ff4761889a3c4f4e760b0e98bbb6.scope\n";

/// The lab's spelling: kubelet-like trees under a lab-specific root, one per hierarchy.
const LAB_BOTH_SPELLINGS: &str = "\
9:name=systemd:/
8:pids:/ambit-lab-ab12cd34/kubepods/besteffort/pod97d9ec13-88b1-43f1-b278-a58674ba1cbd/3af651ff07a3b328abf918646c5478922c0f7a49aaf2ea5bfdea57e8d96d39ca
4:memory:/process_api/0011223344
1:cpu:/
0::/ambit-lab-ab12cd34.slice/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod97d9ec13_88b1_43f1_b278_a58674ba1cbd.slice/cri-containerd-3af651ff07a3b328abf918646c5478922c0f7a49aaf2ea5bfdea57e8d96d39ca.scope
";

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

// ---------------------------------------------------------------------------------------------
// The scan, on a fake /proc tree: numeric directories with a `cgroup` file and an `ns/net`
// symlink to a real namespace file. No privileges needed.

struct FakeProc(PathBuf);

impl FakeProc {
    fn new(tag: &str) -> FakeProc {
        let dir = std::env::temp_dir().join(format!(
            "ambit-podns-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        FakeProc(dir)
    }

    /// Adds process `pid` with cgroup file `cgroup` (None: no file, as for an exited process)
    /// and network namespace `net` (a path to symlink to).
    fn add(&self, pid: &str, cgroup: Option<&[u8]>, net: Option<&str>) {
        let dir = self.0.join(pid);
        std::fs::create_dir_all(dir.join("ns")).unwrap();
        if let Some(c) = cgroup {
            std::fs::write(dir.join("cgroup"), c).unwrap();
        }
        if let Some(n) = net {
            std::os::unix::fs::symlink(n, dir.join("ns").join("net")).unwrap();
        }
    }
}

impl Drop for FakeProc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn index_reads_every_pid_once_and_ignores_the_rest() {
    let p = FakeProc::new("index");
    let host = Some("/proc/self/ns/net");
    p.add("1", Some(b"0::/init.scope\n"), host);
    p.add("100", Some(V1_CGROUPFS_BURSTABLE_DOCKER.as_bytes()), host);
    p.add(
        "250",
        Some(V2_SYSTEMD_BURSTABLE_CONTAINERD.as_bytes()),
        host,
    );
    p.add("99", Some(V1_SYSTEMD_GUARANTEED_CRIO.as_bytes()), host);
    p.add("300", Some(b"0::/system.slice/sshd.service\n"), host);
    p.add("301", None, None); // exited between listing and reading
    p.add("302", Some(b"\xff\xfe\x00garbage\npod\n:::\n"), host);
    p.add("abc", Some(V2_CGROUPFS_GUARANTEED.as_bytes()), host); // not a pid
    p.add("+5", Some(V2_CGROUPFS_GUARANTEED.as_bytes()), host); // not a pid either
    std::fs::write(p.0.join("uptime"), "1.0 1.0\n").unwrap();
    let index = index_pods(&p.0).unwrap();
    let expected: HashMap<String, Vec<u32>> = [
        (UID_A.to_string(), vec![100, 250]),
        (UID_B.to_string(), vec![99]),
    ]
    .into();
    assert_eq!(index, expected);
}

#[test]
fn scan_errors_name_the_pod_and_what_was_found() {
    let p = FakeProc::new("errors");
    let host = Some("/proc/self/ns/net");
    p.add("1", Some(b"0::/init.scope\n"), host);
    // Pod A: both processes in the host namespace (like a hostNetwork pod).
    p.add("10", Some(V2_SYSTEMD_BURSTABLE_CONTAINERD.as_bytes()), host);
    p.add("11", Some(V1_SYSTEMD_BESTEFFORT_DOCKER.as_bytes()), host);
    // Pod B: its process's namespace link is gone.
    p.add("20", Some(V2_CGROUPFS_GUARANTEED.as_bytes()), None);

    let ips = [ip("10.1.2.3")];
    let err = find_pod_netns(&p.0, UID_A, &ips).unwrap_err();
    assert!(matches!(err, DiscoveryError::HostNetwork { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(UID_A) && msg.contains("10, 11"), "{msg}");

    // The systemd spelling of a UID is accepted as input too.
    let err = find_pod_netns(&p.0, &UID_A.replace('-', "_"), &ips).unwrap_err();
    assert!(matches!(err, DiscoveryError::HostNetwork { .. }), "{err}");

    let err = find_pod_netns(&p.0, UID_B, &ips).unwrap_err();
    assert!(matches!(err, DiscoveryError::NoProcess { .. }), "{err}");

    let nobody = "4967fd1a-1948-4cad-9d4f-169464ab041d";
    let err = find_pod_netns(&p.0, nobody, &ips).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(nobody) && msg.contains(&p.0.display().to_string()),
        "{msg}"
    );

    let err = find_pod_netns(&p.0, UID_A, &[]).unwrap_err();
    assert!(matches!(err, DiscoveryError::NoIps { .. }), "{err}");

    let err = find_pod_netns(Path::new("/nonexistent/proc"), UID_A, &ips).unwrap_err();
    assert!(matches!(err, DiscoveryError::List { .. }), "{err}");

    // The same answers from an index.
    let index = index_pods(&p.0).unwrap();
    let err = find_pod_netns_indexed(&p.0, &index, UID_A, &ips).unwrap_err();
    assert!(matches!(err, DiscoveryError::HostNetwork { .. }), "{err}");
    let err = find_pod_netns_indexed(&p.0, &index, nobody, &ips).unwrap_err();
    assert!(matches!(err, DiscoveryError::NoProcess { .. }), "{err}");

    // Finder: no fallback for a hostNetwork pod; fallback (to an empty dir) for a missing one.
    let empty = p.0.join("netns");
    std::fs::create_dir(&empty).unwrap();
    let finder = Finder {
        host_proc: p.0.clone(),
        netns_dir: Some(empty.clone()),
        netns_prefix: None,
    };
    let err = finder.find(UID_A, &ips).unwrap_err();
    assert!(matches!(err, DiscoveryError::HostNetwork { .. }), "{err}");
    let err = finder.find(nobody, &ips).unwrap_err();
    assert!(matches!(err, DiscoveryError::NotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("no process of pod") && msg.contains("10.1.2.3"),
        "{msg}"
    );
}

#[test]
fn own_namespace_addresses_include_loopback() {
    let ns = NetNs::current().unwrap();
    let has = addresses(&ns).unwrap();
    assert!(has.contains(&ip("127.0.0.1")), "{has:?}");
    confirm_ips(&ns, &[ip("127.0.0.1")]).unwrap();
    confirm_ips(&ns, &[]).unwrap();
    let err = confirm_ips(&ns, &[ip("127.0.0.1"), ip("192.0.2.77")]).unwrap_err();
    assert!(err.to_string().contains("192.0.2.77"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Real lab pods (root): kubelet-like placeholder processes, found through /proc.

#[cfg(feature = "lab")]
mod lab {
    use std::collections::HashSet;
    use std::process::{Child, Command, Stdio};

    use super::*;
    use crate::lab::kubelet::{self, KubeletPods};
    use crate::lab::{Lab, LabPod, LabSpec};

    fn lab_2x2() -> Lab {
        Lab::up(&LabSpec {
            name: None,
            nodes: 2,
            pods_per_node: 2,
            namespace_ambient: true,
            kube: false,
        })
        .expect("lab up")
    }

    fn ips(pod: &LabPod) -> Vec<IpAddr> {
        vec![pod.ipv4.into(), pod.ipv6.into()]
    }

    fn id_of(pod: &LabPod) -> crate::netns::NetNsId {
        NetNs::open(&pod.netns_path).unwrap().id()
    }

    fn alive(pid: u32) -> bool {
        // A zombie has an empty cmdline and state Z; treat it as gone.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
            Err(_) => false,
        }
    }

    /// A `sleep` in `ns` (or the host namespace) moved into cgroup dir `cgroup`.
    fn extra_process(ns: Option<&NetNs>, cgroup: &Path) -> Child {
        let mut cmd = Command::new("sleep");
        cmd.arg("1000").stdin(Stdio::null());
        if let Some(ns) = ns {
            ns.prepare_command(&mut cmd);
        }
        let child = cmd.spawn().unwrap();
        std::fs::write(cgroup.join("cgroup.procs"), child.id().to_string()).unwrap();
        child
    }

    fn started(lab: &Lab) -> KubeletPods {
        let kp = kubelet::start_pod_processes(lab).expect("kubelet-like pod processes");
        assert_eq!(kp.processes().len(), lab.pods().len());
        assert!(!kp.hierarchies().is_empty());
        kp
    }

    #[test]
    fn cgroup_scan_finds_each_lab_pod() {
        let lab = lab_2x2();
        let kp = started(&lab);
        for pod in lab.pods() {
            let p = kp.process(&pod.name).unwrap();
            let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid)).unwrap();
            assert!(
                cgroup.contains(&format!("ambit-lab-{}", lab.name())),
                "{cgroup}"
            );

            let ns = find_pod_netns(Path::new("/proc"), &pod.uid, &ips(pod)).unwrap();
            assert_eq!(ns.id(), id_of(pod), "pod {}", pod.name);
            // One IP of the pod is enough, either family.
            let ns = find_pod_netns(Path::new("/proc"), &pod.uid, &[pod.ipv6.into()]).unwrap();
            assert_eq!(ns.id(), id_of(pod));
            confirm_ips(&ns, &ips(pod)).unwrap();
        }

        // A UID of no pod.
        let nobody = "dba48cd6-1286-4cc2-9f8c-e574ca2c3fa3";
        let err = find_pod_netns(Path::new("/proc"), nobody, &ips(&lab.pods()[0])).unwrap_err();
        assert!(matches!(err, DiscoveryError::NoProcess { .. }), "{err}");
        assert!(err.to_string().contains(nobody), "{err}");

        // The right pod with another pod's IP: its namespace is found but not confirmed.
        let (a, b) = (&lab.pods()[0], &lab.pods()[1]);
        let err = find_pod_netns(Path::new("/proc"), &a.uid, &[b.ipv4.into()]).unwrap_err();
        assert!(matches!(err, DiscoveryError::NoIpMatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&a.uid) && msg.contains(&b.ipv4.to_string()),
            "{msg}"
        );
        assert!(
            msg.contains(&a.ipv4.to_string()),
            "lists what it has: {msg}"
        );

        // Index: exactly this lab's pods among the processes in this lab's cgroups.
        let index = index_pods(Path::new("/proc")).unwrap();
        let uids: HashSet<&str> = lab.pods().iter().map(|p| p.uid.as_str()).collect();
        for pod in lab.pods() {
            let pid = kp.process(&pod.name).unwrap().pid;
            assert_eq!(index.get(&pod.uid), Some(&vec![pid]), "pod {}", pod.name);
        }
        let marker = format!("/ambit-lab-{}/", lab.name());
        let marker_slice = format!("/ambit-lab-{}.slice/", lab.name());
        for (uid, pids) in &index {
            for pid in pids {
                let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
                    continue;
                };
                if c.contains(&marker) || c.contains(&marker_slice) {
                    assert!(uids.contains(uid.as_str()), "pid {pid} uid {uid}: {c}");
                }
            }
        }
        for pod in lab.pods() {
            let ns = find_pod_netns_indexed(Path::new("/proc"), &index, &pod.uid, &ips(pod));
            assert_eq!(ns.unwrap().id(), id_of(pod));
        }
    }

    #[test]
    fn other_namespaces_of_the_pod_are_confirmed_away_or_ambiguous() {
        let lab = lab_2x2();
        let kp = started(&lab);
        let (a, b) = (&lab.pods()[0], &lab.pods()[1]);
        let leaf = kp.process(&a.name).unwrap().cgroups[0].clone();
        // Pod A also has a process in the host namespace and one in pod B's namespace.
        let mut in_host = extra_process(None, &leaf);
        let mut in_b = extra_process(Some(&NetNs::open(&b.netns_path).unwrap()), &leaf);
        assert_eq!(index_pods(Path::new("/proc")).unwrap()[&a.uid].len(), 3);
        let ns = find_pod_netns(Path::new("/proc"), &a.uid, &ips(a)).unwrap();
        assert_eq!(ns.id(), id_of(a));

        // Once pod B's namespace also holds A's IP, there is no telling which is A's.
        let status = Command::new("ip")
            .args([
                "-n",
                &b.netns_name,
                "addr",
                "add",
                &format!("{}/32", a.ipv4),
                "dev",
                "lo",
            ])
            .status()
            .unwrap();
        assert!(status.success());
        let err = find_pod_netns(Path::new("/proc"), &a.uid, &ips(a)).unwrap_err();
        assert!(matches!(err, DiscoveryError::Ambiguous { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&a.uid) && msg.contains(&a.ipv4.to_string()),
            "{msg}"
        );

        // The named scan sees the same ambiguity among this lab's namespaces.
        let prefix = format!("{}-", lab.name());
        let dir = Path::new("/var/run/netns");
        let err = find_named_netns(
            dir,
            Some(&prefix),
            Path::new("/proc"),
            &a.uid,
            &[a.ipv4.into()],
        )
        .unwrap_err();
        assert!(matches!(err, DiscoveryError::Ambiguous { .. }), "{err}");
        assert!(err.to_string().contains(&a.netns_name), "{err}");
        assert!(err.to_string().contains(&b.netns_name), "{err}");
        // A's IPv6 address is still only in A.
        let ns = find_named_netns(
            dir,
            Some(&prefix),
            Path::new("/proc"),
            &a.uid,
            &[a.ipv6.into()],
        );
        assert_eq!(ns.unwrap().id(), id_of(a));

        for c in [&mut in_host, &mut in_b] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        drop(kp);
    }

    #[test]
    fn named_netns_fallback_finds_lab_pods_by_ip() {
        let lab = lab_2x2();
        let prefix = format!("{}-", lab.name());
        let dir = Path::new("/var/run/netns");
        for pod in lab.pods() {
            let ns = find_named_netns(dir, Some(&prefix), Path::new("/proc"), &pod.uid, &ips(pod));
            assert_eq!(ns.unwrap().id(), id_of(pod), "pod {}", pod.name);
        }
        let err = find_named_netns(
            dir,
            Some(&prefix),
            Path::new("/proc"),
            &lab.pods()[0].uid,
            &[ip("10.240.9.99")],
        )
        .unwrap_err();
        assert!(matches!(err, DiscoveryError::NoNamedNetns { .. }), "{err}");
        assert!(err.to_string().contains(&prefix), "{err}");

        // Without kubelet-like processes the cgroup scan finds nothing; Finder falls back.
        let finder = Finder {
            netns_prefix: Some(prefix),
            ..Finder::default()
        };
        for pod in lab.pods() {
            assert!(matches!(
                find_pod_netns(Path::new("/proc"), &pod.uid, &ips(pod)),
                Err(DiscoveryError::NoProcess { .. })
            ));
            assert_eq!(finder.find(&pod.uid, &ips(pod)).unwrap().id(), id_of(pod));
        }
    }

    #[test]
    fn processes_and_cgroups_are_removed_on_drop_stop_and_cleanup() {
        let lab = lab_2x2();
        let roots = |lab: &Lab| kubelet::lab_cgroup_roots(lab.name());

        // Drop.
        let kp = started(&lab);
        let pids: Vec<u32> = kp.processes().iter().map(|p| p.pid).collect();
        let dirs: Vec<PathBuf> = kp
            .processes()
            .iter()
            .flat_map(|p| p.cgroups.clone())
            .collect();
        assert!(pids.iter().all(|&p| alive(p)));
        assert!(dirs.iter().all(|d| d.is_dir()));
        assert_eq!(roots(&lab).len(), kp.hierarchies().len());
        drop(kp);
        assert!(pids.iter().all(|&p| !alive(p)), "{pids:?}");
        assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
        assert!(roots(&lab).is_empty(), "{:?}", roots(&lab));

        // Stop.
        let kp = started(&lab);
        let pids: Vec<u32> = kp.processes().iter().map(|p| p.pid).collect();
        kp.stop().unwrap();
        assert!(pids.iter().all(|&p| !alive(p)));
        assert!(roots(&lab).is_empty());

        // Detached, then removed by name (as `lab down` does), including a stray process.
        let kp = started(&lab);
        let pids: Vec<u32> = kp.processes().iter().map(|p| p.pid).collect();
        let leaf = kp.processes()[0].cgroups[0].clone();
        let mut stray = extra_process(None, &leaf);
        kp.detach();
        assert!(pids.iter().all(|&p| alive(p)));
        assert_eq!(kubelet::cleanup(lab.name()), Vec::<String>::new());
        assert!(pids.iter().all(|&p| !alive(p)));
        assert!(roots(&lab).is_empty());
        stray.wait().unwrap();
        for pid in pids {
            // Reap the detached children (they are this process's).
            unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
        }
        // Nothing left: cleanup again is a no-op.
        assert!(kubelet::cleanup(lab.name()).is_empty());
    }
}
