//! Running the rule tools (`iptables-restore`, `nft`, `ip`, ...) inside a pod's namespace.

use std::io::Write;
use std::process::{Command, Stdio};

use super::RulesError;
use crate::netns::NetNs;

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    /// Whether it exited with status 0.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error, trimmed.
    pub stderr: String,
    status: std::process::ExitStatus,
    command: String,
}

impl Output {
    /// Turns a failed run into a [`RulesError::Command`].
    pub fn check(self, ns: &NetNs) -> Result<Output, RulesError> {
        if self.success {
            return Ok(self);
        }
        Err(RulesError::Command {
            netns: ns.path().to_path_buf(),
            command: self.command,
            status: self.status,
            stderr: self.stderr,
        })
    }
}

/// Runs `program args` inside `ns`, feeding `stdin` if given. A non-zero exit is not an error
/// here (callers decide, some failures are expected); failing to start the program is.
pub fn run(
    ns: &NetNs,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Output, RulesError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let spawn_err = |source| RulesError::Spawn {
        netns: ns.path().to_path_buf(),
        command: command.clone(),
        source,
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        // Tool messages are parsed in a few places; keep them in English.
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ns.spawn(&mut cmd).map_err(spawn_err)?;
    // Writing from another thread: a large script must not deadlock against a child that
    // fills its stdout pipe before reading all of its input.
    let writer = match (stdin, child.stdin.take()) {
        (Some(text), Some(mut pipe)) => {
            let text = text.to_owned();
            Some(std::thread::spawn(move || pipe.write_all(text.as_bytes())))
        }
        _ => None,
    };
    let out = child.wait_with_output().map_err(spawn_err)?;
    if let Some(writer) = writer {
        // A write error only matters if the tool then failed, which its status reports.
        let _ = writer.join();
    }
    Ok(Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        status: out.status,
        command,
    })
}

/// Runs and requires success.
pub fn run_ok(
    ns: &NetNs,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, RulesError> {
    Ok(run(ns, program, args, stdin)?.check(ns)?.stdout)
}
