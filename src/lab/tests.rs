//! Lab tests. They need root; each builds its own uniquely named lab, so they run in parallel.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use super::topology::{existing_netns, is_lab_netns};
use super::*;
use crate::netns::NetNs;

fn spec(nodes: usize, pods_per_node: usize) -> LabSpec {
    LabSpec {
        name: None,
        nodes,
        pods_per_node,
        namespace_ambient: true,
        kube: false,
    }
}

/// Namespaces on the machine that belong to lab `name`.
fn netns_of(name: &str) -> Vec<String> {
    let mut names = existing_netns().unwrap();
    names.retain(|n| is_lab_netns(name, n));
    names
}

/// Opens a TCP connection from a socket created in `client` to a server listening on
/// `server_ip` in `server`, exchanges a few bytes, and returns the source address the server saw.
fn seen_source(client: &NetNs, server: &NetNs, server_ip: IpAddr) -> IpAddr {
    let listener = server.run(|| TcpListener::bind((server_ip, 0))).unwrap();
    let listener = listener.unwrap_or_else(|e| panic!("bind {server_ip}: {e}"));
    let addr = listener.local_addr().unwrap();
    // Dropped (detached) if the connect below fails; the panic fails the test anyway.
    let server_side = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        conn.write_all(b"pong").unwrap();
        peer
    });
    let socket = client
        .run(|| Socket::new(Domain::for_address(addr), Type::STREAM, None))
        .unwrap()
        .unwrap();
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = [0u8; 4];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"pong");
    server_side.join().unwrap().ip()
}

#[test]
fn pods_reach_pods_and_fabric_over_v4_and_v6() {
    let lab = Lab::up(&spec(2, 2)).unwrap();
    let pairs = [("n1-p1", "n1-p2"), ("n1-p1", "n2-p1"), ("n2-p2", "n1-p2")];
    for (from, to) in pairs {
        let (client, server) = (lab.pod(from).unwrap(), lab.pod(to).unwrap());
        let (cns, sns) = (lab.pod_netns(from).unwrap(), lab.pod_netns(to).unwrap());
        for (dst, src) in [
            (IpAddr::V4(server.ipv4), IpAddr::V4(client.ipv4)),
            (IpAddr::V6(server.ipv6), IpAddr::V6(client.ipv6)),
        ] {
            assert_eq!(seen_source(&cns, &sns, dst), src, "{from} -> {to} ({dst})");
        }
    }
    let fab = lab.fabric_netns().unwrap();
    for pod in ["n1-p2", "n2-p1"] {
        let p = lab.pod(pod).unwrap();
        let ns = lab.pod_netns(pod).unwrap();
        let v4 = seen_source(&ns, &fab, lab.fabric_ipv4().into());
        assert_eq!(v4, IpAddr::V4(p.ipv4), "{pod} -> fabric v4");
        let v6 = seen_source(&ns, &fab, lab.fabric_ipv6().into());
        assert_eq!(v6, IpAddr::V6(p.ipv6), "{pod} -> fabric v6");
    }
}

#[test]
fn lab_json_and_workload_file_round_trip() {
    let lab = Lab::up(&LabSpec {
        namespace_ambient: false,
        ..spec(1, 3)
    })
    .unwrap();
    assert!(list().unwrap().contains(&lab.name().to_string()));
    let loaded = Lab::load(lab.name()).unwrap();
    assert_eq!(loaded.state(), lab.state());
    // A loaded lab does not own the lab: dropping it leaves everything in place.
    drop(loaded);
    assert_eq!(netns_of(lab.name()).len(), 1 + 1 + 3);

    // The daemon's own reader accepts the file.
    let snapshot = crate::workload::file::load(&lab.workloads_path()).unwrap();
    assert_eq!(snapshot, lab.workloads().unwrap());
    assert_eq!(snapshot.namespaces.len(), 1);
    assert!(snapshot.namespaces[0].labels.is_empty());
    assert_eq!(snapshot.pods.len(), 3);
    let pod = &snapshot.pods[0];
    assert_eq!((pod.name.as_str(), pod.node.as_str()), ("n1-p1", "n1"));
    assert_eq!(pod.service_account, "sa-n1-p1");
    assert!(pod.netns.as_ref().unwrap().exists());
    let mut uids: Vec<&str> = snapshot.pods.iter().map(|p| p.uid.as_str()).collect();
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), 3);

    let (key, value) = AMBIENT_LABEL;
    let written = lab
        .update_workloads(|s| {
            s.namespaces[0].labels.insert(key.into(), value.into());
        })
        .unwrap();
    assert_eq!(lab.workloads().unwrap(), written);
    assert_eq!(written.namespaces[0].labels[key], value);
    // No temporary files left next to the workload file.
    let mut entries: Vec<String> = std::fs::read_dir(lab.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        ["ca", "lab.json", "workloads.json"],
        "no temporary files expected"
    );
}

#[test]
fn drop_removes_everything_even_when_the_test_panics() {
    let name = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::up(&spec(2, 1)).unwrap();
        *name.lock().unwrap() = lab.name().to_string();
        assert_eq!(netns_of(lab.name()).len(), 1 + 2 + 2);
        panic!("deliberate panic with lab {} up", lab.name());
    }));
    assert!(result.is_err());
    let name = name.into_inner().unwrap();
    assert!(!name.is_empty());
    assert_eq!(netns_of(&name), Vec::<String>::new());
    assert!(!Path::new(LAB_ROOT).join(&name).exists());
}

#[test]
fn down_by_name_removes_a_detached_lab_and_stray_namespaces() {
    let name = Lab::up(&spec(1, 1)).unwrap().detach();
    assert_eq!(netns_of(&name).len(), 3);
    // A namespace with the lab's naming scheme that lab.json does not know about.
    let stray = format!("{name}-n7-p9");
    topology::run(
        std::process::Command::new("ip").args(["netns", "add", &stray]),
        None,
    )
    .unwrap();
    down_by_name(&name).unwrap();
    assert_eq!(netns_of(&name), Vec::<String>::new());
    assert!(!Path::new(LAB_ROOT).join(&name).exists());
    let again = down_by_name(&name).unwrap_err();
    assert!(matches!(again, LabError::NotFound { .. }), "{again}");
}

#[test]
fn bad_specs_are_reported() {
    let cases = [
        (spec(0, 1), "nodes = 0 (must be 1..=9)"),
        (spec(10, 1), "nodes = 10"),
        (spec(1, 0), "pods_per_node = 0 (must be 1..=60)"),
        (spec(1, 61), "pods_per_node = 61"),
        (
            LabSpec {
                name: Some("Bad-Name".into()),
                ..spec(1, 1)
            },
            "\"Bad-Name\"",
        ),
    ];
    for (spec, expected) in cases {
        let err = Lab::up(&spec).unwrap_err();
        assert!(matches!(err, LabError::Spec(_)), "{err}");
        assert!(err.to_string().contains(expected), "{err}");
    }
    let err = Lab::load("nosuchlab0").unwrap_err();
    assert!(matches!(err, LabError::NotFound { .. }), "{err}");
}

/// A stand-in for ambit: serves `/healthz/ready` on 15021 and echoes admin requests on 15000,
/// or exits at once with `--fail`.
const FAKE_DAEMON: &str = r#"
import sys, threading, http.server
args = sys.argv[1:]
node, workloads = args[args.index("--node") + 1], args[args.index("--workloads") + 1]
if args[0] != "run" or "--fail" in args:
    print("fake ambit: failing on purpose", flush=True)
    sys.exit(3)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        port = self.server.server_address[1]
        if port == 15021 and self.path == "/healthz/ready":
            body = b"ready"
        elif port == 15000 and self.path != "/missing":
            body = f"node={node} path={self.path} workloads={workloads}".encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
for port in (15000, 15021):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("fake ambit up", flush=True)
threading.Event().wait()
"#;

fn fake_daemon(dir: &Path) -> PathBuf {
    let path = dir.join("fake-ambit");
    std::fs::write(&path, format!("#!/usr/bin/python3\n{FAKE_DAEMON}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn daemons_start_get_ready_answer_and_stop() {
    let lab = Lab::up(&spec(2, 1)).unwrap();
    let bin = fake_daemon(lab.dir());
    // The fake speaks to no CA: no CA service is started for it.
    let local = format!(
        "--insecure-local-ca-dir={}",
        lab.dir().join(CA_DIR).display()
    );
    let pid = lab
        .start_daemon("n1", &bin, std::slice::from_ref(&local))
        .unwrap();
    lab.wait_ready("n1", Duration::from_secs(20)).unwrap();
    assert_eq!(Lab::load(lab.name()).unwrap().daemon_pid("n1"), Some(pid));
    let body = lab.admin_get("n1", "/config_dump").unwrap();
    let expected = format!(
        "node=n1 path=/config_dump workloads={}",
        lab.workloads_path().display()
    );
    assert_eq!(body, expected);
    let err = lab.admin_get("n1", "/missing").unwrap_err();
    assert!(err.to_string().contains("status 404"), "{err}");
    // The daemon listens inside n1's namespace only.
    assert!(lab.admin_get("n2", "/config_dump").is_err());
    assert!(lab.daemon_log("n1").contains("fake ambit up"));

    lab.stop_daemon("n1").unwrap();
    assert_eq!(lab.daemon_pid("n1"), None);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());

    // A daemon that exits is reported with its log.
    lab.start_daemon("n2", &bin, &["--fail".to_string(), local.clone()])
        .unwrap();
    let err = lab.wait_ready("n2", Duration::from_secs(20)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("exited before becoming ready"), "{text}");
    assert!(text.contains("failing on purpose"), "{text}");

    // Drop stops a daemon that is still running.
    let pid = lab.start_daemon("n2", &bin, &[local]).unwrap();
    lab.wait_ready("n2", Duration::from_secs(20)).unwrap();
    drop(lab);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn lab_netns_names_are_matched_exactly() {
    assert!(is_lab_netns("ab", "ab-fab"));
    assert!(is_lab_netns("ab", "ab-n3"));
    assert!(is_lab_netns("ab", "ab-n3-p12"));
    assert!(!is_lab_netns("ab", "abc-n3"));
    assert!(!is_lab_netns("ab", "ab-n3-x"));
    assert!(!is_lab_netns("ab", "ab-n-p1"));
    assert!(!is_lab_netns("ab", "ambit-rt-exp1"));
}

#[test]
#[ignore = "builds the largest lab (9 nodes x 60 pods); slow"]
fn largest_lab_builds_and_routes_end_to_end() {
    let started = std::time::Instant::now();
    let lab = Lab::up(&spec(MAX_NODES, MAX_PODS_PER_NODE)).unwrap();
    eprintln!("built {} pods in {:?}", lab.pods().len(), started.elapsed());
    let (from, to) = (lab.pod("n1-p1").unwrap(), lab.pod("n9-p60").unwrap());
    let (cns, sns) = (
        lab.pod_netns("n1-p1").unwrap(),
        lab.pod_netns("n9-p60").unwrap(),
    );
    assert_eq!(
        seen_source(&cns, &sns, to.ipv4.into()),
        IpAddr::V4(from.ipv4)
    );
    assert_eq!(
        seen_source(&cns, &sns, to.ipv6.into()),
        IpAddr::V6(from.ipv6)
    );
    let started = std::time::Instant::now();
    lab.down().unwrap();
    eprintln!("removed in {:?}", started.elapsed());
}

#[test]
fn existing_names_are_refused_and_left_alone() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Lab>();
    let lab = Lab::up(&spec(1, 1)).unwrap();
    let taken = LabSpec {
        name: Some(lab.name().to_string()),
        ..spec(1, 1)
    };
    let err = Lab::up(&taken).unwrap_err();
    assert!(matches!(err, LabError::Exists { .. }), "{err}");
    assert_eq!(
        netns_of(lab.name()).len(),
        3,
        "the existing lab must survive"
    );
    assert_eq!(
        lab.netns_name_of("n1-p1").unwrap(),
        format!("{}-n1-p1", lab.name())
    );
    assert_eq!(
        lab.netns_name_of("fab").unwrap(),
        format!("{}-fab", lab.name())
    );
    assert!(lab.netns_name_of("n2").is_err());

    // Namespaces left over from a lab that was killed (no directory) also block the name.
    let name = format!("{}x", lab.name());
    let leftover = format!("{name}-n1");
    let add = ["netns", "add", leftover.as_str()];
    topology::run(std::process::Command::new("ip").args(add), None).unwrap();
    let err = Lab::up(&LabSpec {
        name: Some(name.clone()),
        ..spec(1, 1)
    })
    .unwrap_err();
    assert!(err.to_string().contains(&leftover), "{err}");
    assert_eq!(
        netns_of(&name),
        vec![leftover.clone()],
        "not ours to delete"
    );
    assert!(!Path::new(LAB_ROOT).join(&name).exists());
    down_by_name(&name).unwrap();
}
