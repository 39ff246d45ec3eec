//! Tests: cgroup parsing on hand-written `/proc/<pid>/cgroup` files, the scan on a fake `/proc`
//! tree, and (root) discovery of real lab pods.
//!
//! This file holds the shared fixtures (pod and container ids, and one `/proc/<pid>/cgroup`
//! file per spelling: contents written for these tests, shaped like what the kernel prints for
//! a container process on nodes of each kind) and imports; the tests are in `parse` (cgroup
//! spellings), `fake_proc` (the scan on a fake `/proc`) and `lab` (root: real lab pods). Each
//! takes these with `use super::*`.

mod fake_proc;
#[cfg(feature = "lab")]
mod lab;
mod parse;

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

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

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
