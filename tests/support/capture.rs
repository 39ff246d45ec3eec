//! A packet capture in the fabric: tcpdump on one interface of a namespace, flushed with a
//! sentinel segment, and its output parsed into TCP segments. Shared by the tests that prove
//! what crossed the wire (HBONE encryption, no plaintext after a crash).

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ambit::lab::traffic::connect;
use ambit::netns::NetNs;

use super::{DEADLINE, PROMPT};

/// `tcpdump` writing every TCP segment on one interface of a namespace to a file.
///
/// tcpdump takes packets from the kernel's ring in order but block by block, so stopping it
/// right after some traffic may lose the tail. [`Capture::flush`] sends a sentinel segment and
/// waits until it is in the file: everything before it is then there too.
pub struct Capture {
    child: Child,
    file: PathBuf,
    /// tcpdump's stderr, line by line.
    said: mpsc::Receiver<String>,
}

impl Capture {
    /// Starts tcpdump on `iface` in `ns` and waits until it is listening.
    pub fn start(ns: &NetNs, iface: &str, file: &Path) -> Capture {
        let mut cmd = Command::new("tcpdump");
        cmd.args(["-i", iface, "-B", "16384", "-U", "-nn", "-Z", "root", "-w"])
            .arg(file)
            .arg("tcp")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = ns.spawn(&mut cmd).expect("spawn tcpdump");
        let stderr = child.stderr.take().expect("tcpdump stderr");
        let (tx, rx) = mpsc::channel();
        // Drains stderr for tcpdump's whole life, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut capture = Capture {
            child,
            file: file.to_owned(),
            said: rx,
        };
        let until = Instant::now() + DEADLINE;
        let mut said = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match capture.said.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => return capture,
                Ok(line) => said.push(line),
                Err(_) => {
                    let status = capture.child.try_wait();
                    panic!("tcpdump never started listening ({status:?}): {said:?}");
                }
            }
        }
    }

    /// tcpdump's one-line-per-packet rendering of the file so far (a packet being written
    /// may be cut short; the lines before it are complete).
    pub fn read(&self) -> String {
        let out = Command::new("tcpdump")
            .args(["-r"])
            .arg(&self.file)
            .args(["-nn"])
            .stdin(Stdio::null())
            .output()
            .expect("tcpdump -r");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Connects from `ns` to `sentinel` (any outcome: a SYN is enough) and waits until that
    /// segment is in the file.
    pub async fn flush(&self, ns: &NetNs, sentinel: SocketAddr) {
        let _ = tokio::time::timeout(PROMPT, connect(ns, sentinel)).await;
        let until = Instant::now() + DEADLINE;
        let seen = |text: &str| {
            text.lines()
                .filter_map(segment)
                .any(|s| s.dst == (sentinel.ip(), sentinel.port()))
        };
        while !seen(&self.read()) {
            assert!(
                Instant::now() < until,
                "the sentinel to {sentinel} never reached the capture file"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops tcpdump (SIGTERM), waits for it, checks that the kernel dropped no packet, and
    /// returns the file's bytes and tcpdump's one-line-per-packet rendering of it.
    pub fn stop(mut self) -> (Vec<u8>, String) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) of our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for tcpdump");
        assert!(
            status.success() || status.code().is_none(),
            "tcpdump: {status}"
        );
        // tcpdump has exited: its stderr ends, and with it the channel.
        let mut said = Vec::new();
        while let Ok(line) = self.said.recv_timeout(DEADLINE) {
            said.push(line);
        }
        assert!(
            said.iter().any(|l| l == "0 packets dropped by kernel"),
            "tcpdump lost packets: {said:?}"
        );
        let raw = std::fs::read(&self.file).expect("read capture");
        (raw, self.read())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Only matters when a test panics before stop().
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One TCP segment as `tcpdump -nn` prints it.
pub struct Segment {
    pub src: (IpAddr, u16),
    pub dst: (IpAddr, u16),
    /// TCP payload length.
    pub len: usize,
}

/// Parses a `tcpdump -nn` line of a TCP segment
/// (`<time> IP[6] <ip>.<port> > <ip>.<port>: Flags [..], ..., length <n>`).
pub fn segment(line: &str) -> Option<Segment> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.len() < 5 || !matches!(words[1], "IP" | "IP6") || words[3] != ">" {
        return None;
    }
    let parse = |s: &str| -> Option<(IpAddr, u16)> {
        let (ip, port) = s.trim_end_matches(':').rsplit_once('.')?;
        Some((ip.parse().ok()?, port.parse().ok()?))
    };
    let len = words
        .iter()
        .rposition(|w| *w == "length")
        .and_then(|i| words.get(i + 1))
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or(0);
    Some(Segment {
        src: parse(words[2])?,
        dst: parse(words[4])?,
        len,
    })
}

/// Occurrences of `needle` in `haystack`.
pub fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}
