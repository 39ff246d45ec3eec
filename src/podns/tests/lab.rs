//! Real lab pods (root): kubelet-like placeholder processes, found through /proc.

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
    let child = match ns {
        Some(ns) => ns.spawn(&mut cmd),
        None => cmd.spawn(),
    }
    .unwrap();
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
