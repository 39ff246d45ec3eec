//! The scan, on a fake /proc tree: numeric directories with a `cgroup` file and an `ns/net`
//! symlink to a real namespace file. No privileges needed.

use super::*;

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
