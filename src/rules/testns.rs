//! Throwaway named network namespaces for kernel tests; deleted on drop, even when a test fails.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::netns::NetNs;

/// A namespace `ambit-rt-<pid>-<n>-<nanos>` with `lo` up, deleted when dropped.
pub struct TestNs {
    pub ns: NetNs,
    _guard: Guard,
}

impl TestNs {
    pub fn new() -> TestNs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "ambit-rt-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh("ip", &["netns", "add", &name]);
        // Owned from here on, so a failure below still deletes it.
        let guard = Guard(name.clone());
        sh("ip", &["-n", &name, "link", "set", "lo", "up"]);
        let ns = NetNs::open(format!("/var/run/netns/{name}")).expect("open test netns");
        TestNs { ns, _guard: guard }
    }

    /// Runs a command inside the namespace and returns its stdout; panics on failure.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut cmd = Command::new(program);
        cmd.args(args);
        let out = self.ns.output(&mut cmd).expect("spawn");
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().expect("spawn");
    assert!(status.success(), "{program} {args:?} failed");
}
