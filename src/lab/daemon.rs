//! Running one ambit daemon per node and talking to its HTTP endpoints from inside the node.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use super::{lock, Lab, LabError};
use crate::netns::NetNs;
use crate::workload::enroll::SIDECAR_STATUS_ANNOTATION;

/// Port of the daemon's readiness endpoint (`/healthz/ready`).
pub const READY_PORT: u16 = 15021;
/// Port of the daemon's admin endpoint.
pub const ADMIN_PORT: u16 = 15000;
/// How long a daemon gets to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of the daemon log quoted in errors.
const LOG_TAIL_LINES: usize = 30;

/// A daemon the lab started (or found in `lab.json`).
#[derive(Debug)]
pub(crate) struct Daemon {
    pub pid: u32,
    /// Present when this process spawned the daemon, so it can be reaped; absent for a lab
    /// reopened with [`super::Lab::load`].
    pub child: Option<Child>,
}

/// Spawns `binary <args>` inside `ns`, in its own process group, appending stdout and stderr
/// to `log`. `label` names the process in errors.
pub(crate) fn spawn(
    ns: &NetNs,
    label: &str,
    binary: &Path,
    args: &[std::ffi::OsString],
    log: &Path,
) -> Result<Daemon, LabError> {
    let io_err = |context: String| move |source| LabError::Io { context, source };
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(format!("cannot open {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io_err(format!("cannot open {}", log.display())))?;
    let mut cmd = Command::new(binary);
    cmd.args(args);
    // Marks where each run starts when a daemon is restarted into the same log.
    let _ = writeln!(
        out,
        "=== lab: starting {cmd:?} in {} ===",
        ns.path().display()
    );
    // Own process group: a terminal's Ctrl-C does not hit it, and stop can kill its children.
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    ns.prepare_command(&mut cmd);
    let child = cmd.spawn().map_err(io_err(format!(
        "cannot start {} for {label}",
        binary.display()
    )))?;
    Ok(Daemon {
        pid: child.id(),
        child: Some(child),
    })
}

impl Daemon {
    /// Whether the daemon is still running. A spawned daemon that exited stays an unreaped
    /// zombie until [`Daemon::stop`], so its pid (and process group id) cannot be recycled in
    /// between. A daemon this process did not spawn must still be inside `ns`, which guards
    /// against a recycled pid.
    /// Without `ns` (node namespace gone) such a daemon cannot be verified and counts as gone.
    pub fn running(&self, ns: Option<&NetNs>) -> bool {
        match (&self.child, ns) {
            (Some(_), _) => !exited_unreaped(self.pid),
            (None, Some(ns)) => NetNs::open(format!("/proc/{}/ns/net", self.pid))
                .map(|own| own.id() == ns.id())
                .unwrap_or(false),
            (None, None) => false,
        }
    }

    /// Sends SIGTERM if the daemon is running.
    pub fn terminate(&self, ns: Option<&NetNs>) {
        if self.running(ns) {
            send_signal(self.pid, libc::SIGTERM);
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL (the whole process group for a spawned
    /// daemon, which also reaches children it left behind).
    pub fn stop(&mut self, ns: Option<&NetNs>, grace: Duration) -> Result<(), String> {
        if self.running(ns) {
            send_signal(self.pid, libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while self.running(ns) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let survived = self.running(ns);
        match &mut self.child {
            Some(child) => {
                // Not reaped yet, so the group id still belongs to this daemon.
                send_signal_group(self.pid, libc::SIGKILL);
                child
                    .wait()
                    .map_err(|e| format!("cannot reap daemon {}: {e}", self.pid))?;
            }
            None if survived => {
                send_signal(self.pid, libc::SIGKILL);
            }
            None => {}
        }
        if survived {
            return Err(format!(
                "daemon {} ignored SIGTERM for {grace:?} and was killed",
                self.pid
            ));
        }
        Ok(())
    }
}

/// Sends `signal` to process `pid`; a process that is already gone is not an error here.
pub(crate) fn send_signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Sends `signal` to process group `pgid`.
fn send_signal_group(pgid: u32, signal: libc::c_int) {
    // SAFETY: killpg has no memory-safety preconditions.
    unsafe { libc::killpg(pgid as libc::pid_t, signal) };
}

/// Whether child `pid` has exited, without reaping it (`waitid` with `WNOWAIT`).
fn exited_unreaped(pid: u32) -> bool {
    // SAFETY: waitid only writes into the zeroed siginfo we own.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        // rc != 0 means no such child (already reaped): not running either.
        rc != 0 || info.si_pid() != 0
    }
}

impl Lab {
    /// Starts `<binary> run --node <node> --workloads <lab dir>/workloads.json
    /// --ca-dir <lab dir>/ca <extra_args>` (in Kubernetes mode `--kube --kubeconfig
    /// <lab dir>/kubeconfig` instead of `--workloads …`)
    /// inside node `node`'s namespace, logging to `<lab dir>/ambit-<node>.log`, and records its
    /// pid in `lab.json`. Returns the pid.
    pub fn start_daemon(
        &self,
        node: &str,
        binary: &Path,
        extra_args: &[String],
    ) -> Result<u32, LabError> {
        self.node(node)?;
        let mut args: Vec<std::ffi::OsString> = vec!["run".into(), "--node".into(), node.into()];
        // Kubernetes mode: the daemon watches the lab's stand-in API server.
        if self.state.kube {
            args.extend([
                "--kube".into(),
                "--kubeconfig".into(),
                self.kubeconfig_path().into(),
            ]);
        } else {
            args.extend(["--workloads".into(), self.workloads_path().into()]);
        }
        args.extend(["--ca-dir".into(), self.dir().join(super::CA_DIR).into()]);
        args.extend(extra_args.iter().map(Into::into));
        self.start_process(node, binary, &args)
    }

    /// Starts `<binary> sidecar --pod <ns>/<pod> --workloads … --ca-dir … <extra_args>` inside
    /// pod `pod`'s namespace (sidecar topology), logging to `<lab dir>/ambit-<pod>.log`. Its
    /// readiness and admin endpoints are then reached with [`Lab::wait_ready`] and
    /// [`Lab::admin_get`] under the pod's name.
    pub fn start_sidecar(
        &self,
        pod: &str,
        binary: &Path,
        extra_args: &[String],
    ) -> Result<u32, LabError> {
        let p = self.pod(pod)?;
        let mut args: Vec<std::ffi::OsString> = vec![
            "sidecar".into(),
            "--pod".into(),
            format!("{}/{}", p.namespace, p.name).into(),
            "--workloads".into(),
            self.workloads_path().into(),
            "--ca-dir".into(),
            self.dir().join(super::CA_DIR).into(),
        ];
        args.extend(extra_args.iter().map(Into::into));
        self.start_process(pod, binary, &args)
    }

    /// Sidecar topology for the whole lab: marks every pod as carrying a sidecar (Istio's
    /// `sidecar.istio.io/status` annotation, so node daemons leave it alone and peers reach it
    /// through HBONE), starts `ambit sidecar` in every pod and waits until all are ready.
    pub fn start_sidecars(&self, binary: &Path, extra_args: &[String]) -> Result<(), LabError> {
        self.update_workloads(|s| {
            for p in &mut s.pods {
                p.annotations.insert(
                    SIDECAR_STATUS_ANNOTATION.into(),
                    r#"{"proxy":"ambit"}"#.into(),
                );
            }
        })?;
        let pods: Vec<String> = self.pods().iter().map(|p| p.name.clone()).collect();
        for pod in &pods {
            self.start_sidecar(pod, binary, extra_args)?;
        }
        for pod in &pods {
            self.wait_ready(pod, Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// Starts a process for `target` (a node or a pod) in its namespace and records it.
    fn start_process(
        &self,
        target: &str,
        binary: &Path,
        args: &[std::ffi::OsString],
    ) -> Result<u32, LabError> {
        let ns = self.target_netns(target)?;
        let mut daemons = lock(&self.daemons);
        if let Some(old) = daemons.get_mut(target) {
            if old.running(Some(&ns)) {
                return Err(self.daemon_error(target, format!("already running (pid {})", old.pid)));
            }
            // Reap the exited one before replacing it.
            let _ = old.stop(Some(&ns), Duration::ZERO);
        }
        let log = self.daemon_log_path(target);
        let daemon = spawn(&ns, target, binary, args, &log)?;
        let pid = daemon.pid;
        daemons.insert(target.to_string(), daemon);
        self.save(&daemons)?;
        Ok(pid)
    }

    /// The namespace of a node or a pod.
    pub(crate) fn target_netns(&self, target: &str) -> Result<NetNs, LabError> {
        let name = self.netns_name_of(target)?;
        NetNs::open(super::state::netns_path(name)).map_err(LabError::from)
    }

    /// Stops the daemon on `node`: SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL (which
    /// is reported as an error). No daemon running is not an error.
    pub fn stop_daemon(&self, node: &str) -> Result<(), LabError> {
        let ns = self.target_netns(node)?;
        let mut daemons = lock(&self.daemons);
        let Some(mut daemon) = daemons.remove(node) else {
            return Ok(());
        };
        let stopped = daemon.stop(Some(&ns), STOP_GRACE);
        self.save(&daemons)?;
        stopped.map_err(|message| self.daemon_error(node, message))
    }

    /// Pid of the daemon started on `node`, if any.
    pub fn daemon_pid(&self, node: &str) -> Option<u32> {
        lock(&self.daemons).get(node).map(|d| d.pid)
    }

    /// Waits until the daemon on `node` answers 200 on `/healthz/ready` (port 15021 inside the
    /// node namespace). Fails at once, quoting its log, if the daemon exits.
    pub fn wait_ready(&self, node: &str, timeout: Duration) -> Result<(), LabError> {
        let ns = self.target_netns(node)?;
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match lock(&self.daemons).get(node) {
                None => return Err(self.daemon_error(node, "no daemon was started".into())),
                Some(d) if !d.running(Some(&ns)) => {
                    let message = format!("pid {} exited before becoming ready", d.pid);
                    return Err(self.daemon_error(node, message));
                }
                Some(_) => {}
            }
            let attempt = Duration::from_secs(1).min(timeout);
            match http_get(&ns, READY_PORT, "/healthz/ready", attempt) {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => last = format!("status {}: {}", r.status, r.body.trim()),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                let message = format!("not ready after {timeout:?} (last attempt: {last})");
                return Err(self.daemon_error(node, message));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` on the daemon's admin endpoint (127.0.0.1:15000 inside the node namespace);
    /// the body, or an error unless the status is 200.
    pub fn admin_get(&self, node: &str, path: &str) -> Result<String, LabError> {
        let resp = self.node_http_get(node, ADMIN_PORT, path)?;
        if resp.status != 200 {
            return Err(LabError::Http {
                node: node.to_string(),
                url: format!("http://127.0.0.1:{ADMIN_PORT}{path}"),
                message: format!("status {}: {}", resp.status, resp.body.trim()),
            });
        }
        Ok(resp.body)
    }

    /// `GET path` on 127.0.0.1:`port` inside node `node`'s namespace, whatever the status.
    pub fn node_http_get(
        &self,
        node: &str,
        port: u16,
        path: &str,
    ) -> Result<HttpResponse, LabError> {
        let ns = self.target_netns(node)?;
        http_get(&ns, port, path, Duration::from_secs(5)).map_err(|message| LabError::Http {
            node: node.to_string(),
            url: format!("http://127.0.0.1:{port}{path}"),
            message,
        })
    }

    /// Path of the log of the daemon on `node`.
    pub fn daemon_log_path(&self, node: &str) -> PathBuf {
        log_path(self.dir(), node)
    }

    /// Everything the daemon on `node` has logged (empty if nothing yet).
    pub fn daemon_log(&self, node: &str) -> String {
        std::fs::read(self.daemon_log_path(node))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn daemon_error(&self, node: &str, message: String) -> LabError {
        let log = self.daemon_log_path(node);
        LabError::Daemon {
            node: node.to_string(),
            message,
            tail: log_tail(&log),
            log,
        }
    }
}

/// The last lines of the log at `path` (empty when it cannot be read).
pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// A parsed HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body, lossily decoded as UTF-8.
    pub body: String,
}

/// `GET path` against `127.0.0.1:port` inside `ns`, with a minimal HTTP/1.1 client.
pub(crate) fn http_get(
    ns: &NetNs,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    http_get_addr(
        ns,
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        path,
        timeout,
    )
}

/// `GET path` against `addr` from inside `ns`.
pub(crate) fn http_get_addr(
    ns: &NetNs,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    // The socket belongs to the namespace it is created in; connect and I/O happen afterwards
    // on this thread in its own namespace.
    let socket = ns
        .run(|| Socket::new(Domain::for_address(addr), Type::STREAM, None))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("socket: {e}"))?;
    socket
        .connect_timeout(&addr.into(), timeout)
        .map_err(|e| format!("connect: {e}"))?;
    let mut stream: std::net::TcpStream = socket.into();
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(resp) = parse_response(&buf, false)? {
            return Ok(resp);
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    parse_response(&buf, true)?.ok_or_else(|| "connection closed before a response".to_string())
}

/// Parses `buf` as a complete response; `None` while more bytes are needed. With `eof` a body
/// without length runs to the end of the data.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<HttpResponse>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let body = &buf[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let body = if chunked {
        match decode_chunked(body) {
            Some(body) => body,
            None if eof => return Err("truncated chunked body".into()),
            None => return Ok(None),
        }
    } else if let Some(len) = length {
        if body.len() < len {
            return if eof {
                Err(format!("body truncated at {} of {len} bytes", body.len()))
            } else {
                Ok(None)
            };
        }
        body[..len].to_vec()
    } else if eof {
        body.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }))
}

/// Decodes a complete chunked body; `None` if it is not complete yet.
fn decode_chunked(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Path of the log of the daemon on `node`.
pub(crate) fn log_path(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("ambit-{node}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_eof_bodies() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false);
        assert_eq!(r.unwrap().unwrap().body, "ok");
        let partial = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok";
        assert_eq!(parse_response(partial, false).unwrap(), None);
        assert!(parse_response(partial, true).is_err());
        let chunked =
            b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let r = parse_response(chunked, false).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "abcde"));
        let eof = b"HTTP/1.0 200 OK\r\n\r\nrest";
        assert_eq!(parse_response(eof, false).unwrap(), None);
        assert_eq!(parse_response(eof, true).unwrap().unwrap().body, "rest");
    }
}
