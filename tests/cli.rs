//! The command line as a user runs it: `ambit lab up/list/exec/down` and `ambit demo`, driving
//! the real binary.
#![cfg(feature = "lab")]

use std::process::{Command, Output};

fn ambit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(args)
        .output()
        .expect("run ambit")
}

fn stdout_of(args: &[&str]) -> String {
    let out = ambit(args);
    assert!(
        out.status.success(),
        "ambit {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes the lab even if an assertion fails half-way.
struct LabGuard(String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = ambit(&["lab", "down", &self.0]);
    }
}

#[test]
fn lab_up_list_exec_down() {
    let name = format!("cli{}", std::process::id());
    let _guard = LabGuard(name.clone());
    let up = stdout_of(&["lab", "up", "--name", &name, "--nodes", "1", "--pods", "2"]);
    assert!(
        up.contains("10.240.1.2") && up.contains(&format!("lab {name} is up")),
        "{up}"
    );

    let list = stdout_of(&["lab", "list"]);
    assert!(list.contains(&format!("{name}: 1 nodes, 2 pods")), "{list}");

    // exec runs inside the pod's namespace: it sees the pod's address and the redirect
    // rules the daemon installed there.
    let addrs = stdout_of(&["lab", "exec", &name, "n1-p2", "--", "ip", "-o", "addr"]);
    assert!(
        addrs.contains("10.240.1.3/32") && addrs.contains("fd00:240:1::3/128"),
        "{addrs}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let rules = stdout_of(&[
            "lab",
            "exec",
            &name,
            "n1-p2",
            "--",
            "iptables-save",
            "-t",
            "nat",
        ]);
        if rules.contains("-j REDIRECT --to-ports 15006") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rules never installed: {rules}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let failed = ambit(&["lab", "exec", &name, "n1-p2", "--", "false"]);
    assert_eq!(failed.status.code(), Some(1), "exit status passed through");
    let missing = ambit(&["lab", "exec", &name, "n9-p9", "--", "true"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("n9-p9"));

    let down = stdout_of(&["lab", "down", &name]);
    assert!(down.contains(&format!("removed lab {name}")), "{down}");
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&netns.stdout).contains(&format!("{name}-")));
}

#[test]
fn demo_shows_captured_flows_and_cleans_up() {
    let out = stdout_of(&["demo"]);
    for line in [
        "n2-p1 over IPv4 (across nodes)",
        "echo intact",
        "flows recorded by ambit on n1",
        "lab removed",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(!out.contains("CORRUPTED"), "{out}");
    let listeners = ["outbound", "hbone"];
    for l in listeners {
        assert!(
            out.lines().any(|x| x.trim_start().starts_with(l)),
            "no {l} flow:\n{out}"
        );
    }
    let name = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("lab "))
        .and_then(|l| l.split_whitespace().next())
        .expect("lab name on the first line")
        .to_string();
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&netns.stdout).contains(&format!("{name}-")));
}
