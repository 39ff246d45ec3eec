//! The open-file limit (issue 11): `ambit run` and `ambit sidecar` started with a soft
//! RLIMIT_NOFILE of 1024 under a higher hard limit (as `ulimit -n 1024` in the shell that
//! starts them would) run with the soft limit raised to the hard limit, and say so in the log.
//!
//! The limit is set on this test process and inherited by the daemons it spawns, so this file
//! holds this one test alone.
#![cfg(feature = "lab")]

mod support;

use std::path::Path;

use ambit::lab::{Lab, LabSpec};
use support::DEADLINE;

/// The soft limit the daemons are started with.
const START_SOFT: u64 = 1024;

/// (soft, hard) "Max open files" of process `pid`, as the kernel shows it.
fn open_files(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a 'Max open files' line");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn daemons_raise_the_soft_open_file_limit_to_the_hard_limit() {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    // Root may raise the hard limit if it happens to be low here.
    let hard = hard.max(4 * START_SOFT);
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        START_SOFT,
        hard,
    )
    .expect("setrlimit");

    let lab = Lab::up(&LabSpec {
        nodes: 1,
        pods_per_node: 1,
        ..LabSpec::default()
    })
    .expect("lab up");
    let bin = Path::new(env!("CARGO_BIN_EXE_ambit"));
    lab.start_sidecars(bin, &[]).expect("sidecar");
    let daemon = lab
        .start_daemon("n1", bin, &["--rules=iptables".into()])
        .expect("daemon");
    lab.wait_ready("n1", DEADLINE).expect("daemon ready");
    let sidecar = lab.daemon_pid("n1-p1").expect("sidecar pid");

    for (target, pid) in [("n1", daemon), ("n1-p1", sidecar)] {
        let (soft, now_hard) = open_files(pid);
        println!(
            "{target}: Max open files {soft} (soft) {now_hard} (hard), started with {START_SOFT}"
        );
        assert_eq!(now_hard, hard, "{target}: hard limit changed");
        assert_eq!(soft, hard, "{target}: soft limit not raised");
        let log = support::settled_log(&lab, target, |l| l.contains("raised the open-file limit"));
        assert!(
            log.contains("raised the open-file limit")
                && log.contains(&format!("old_soft={START_SOFT}"))
                && log.contains(&format!("new_soft={hard}")),
            "{target} did not log the raise:\n{log}"
        );
    }
}
