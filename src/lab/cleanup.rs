//! Claiming a lab name, and removing a lab: on drop, explicitly, or by name from the CLI.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::daemon::{send_signal, STOP_GRACE};
use super::state::{self, LabState};
use super::topology::{self, is_lab_netns};
use super::{lock, validate_name, Lab, LabError, LabSpec, LAB_ROOT};
use crate::netns::NetNs;

/// Attempts at finding an unused generated name before giving up.
const NAME_ATTEMPTS: usize = 16;

/// A generated lab name: `ab` and 6 hex digits.
fn generate_name() -> Result<String, LabError> {
    let bytes = state::random_bytes(3).map_err(|source| LabError::Io {
        context: "cannot read /dev/urandom".into(),
        source,
    })?;
    Ok(format!(
        "ab{:02x}{:02x}{:02x}",
        bytes[0], bytes[1], bytes[2]
    ))
}

/// Picks the lab's name and claims it by creating its directory (creation is exclusive, so two
/// labs never share a name), then lays out the lab. Refuses a name whose namespaces already
/// exist (left over from a lab that was killed), since cleanup would then remove them.
pub(super) fn claim(spec: &LabSpec) -> Result<LabState, LabError> {
    let existing = topology::existing_netns()?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let retry = spec.name.is_none() && attempt < NAME_ATTEMPTS;
        let name = match &spec.name {
            Some(name) => name.clone(),
            None => generate_name()?,
        };
        let dir = Path::new(LAB_ROOT).join(&name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists && retry => continue,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(LabError::Exists {
                    detail: format!("{} exists", dir.display()),
                    name,
                })
            }
            Err(source) => {
                return Err(LabError::Io {
                    context: format!("cannot create {}", dir.display()),
                    source,
                })
            }
        }
        let strays: Vec<&str> = existing
            .iter()
            .filter(|n| is_lab_netns(&name, n))
            .map(String::as_str)
            .collect();
        if !strays.is_empty() {
            let _ = std::fs::remove_dir(&dir);
            if retry {
                continue;
            }
            return Err(LabError::Exists {
                detail: format!("network namespaces {} exist", strays.join(", ")),
                name,
            });
        }
        return LabState::plan(&name, spec).map_err(|source| {
            let _ = std::fs::remove_dir(&dir);
            LabError::Io {
                context: "cannot read /dev/urandom".into(),
                source,
            }
        });
    }
}

impl Lab {
    /// Stops the daemons, deletes the namespaces and the lab directory. Things already gone
    /// are not problems; returns one line per thing that could not be removed.
    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut daemons = std::mem::take(&mut *lock(&self.daemons));
        let netns: Vec<Option<NetNs>> = daemons
            .keys()
            .map(|node| self.target_netns(node).ok())
            .collect();
        // Signal every daemon first so they shut down in parallel, then wait for each.
        for (daemon, ns) in daemons.values().zip(&netns) {
            daemon.terminate(ns.as_ref());
        }
        for ((node, daemon), ns) in daemons.iter_mut().zip(&netns) {
            if let Err(e) = daemon.stop(ns.as_ref(), STOP_GRACE) {
                problems.push(format!("node {node}: {e}"));
            }
        }
        if let Err(e) = self.stop_apiserver() {
            problems.push(e.to_string());
        }
        if let Some(pods) = lock(&self.kubelet).take() {
            if let Err(e) = pods.stop() {
                problems.push(e.to_string());
            }
        }
        problems.extend(super::kubelet::cleanup(&self.state.name));
        problems.extend(topology::delete_netns(&self.state.netns_names()));
        match std::fs::remove_dir_all(&self.state.dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                problems.push(format!("cannot remove {}: {e}", self.state.dir.display()))
            }
            _ => {}
        }
        problems
    }

    /// Removes the lab now (daemons, namespaces, directory), reporting anything left behind.
    /// Works for owned and loaded labs alike.
    pub fn down(mut self) -> Result<(), LabError> {
        self.owned = false;
        let problems = self.teardown();
        if problems.is_empty() {
            return Ok(());
        }
        Err(LabError::Teardown {
            name: self.state.name.clone(),
            problems,
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let problems = self.teardown();
        // Drop cannot return an error; leftovers are worth a line on stderr.
        if !problems.is_empty() {
            eprintln!(
                "lab {}: cleanup left things behind:\n  {}",
                self.state.name,
                problems.join("\n  ")
            );
        }
    }
}

/// Removes lab `name` as far as it exists: from its `lab.json` if readable, and in any case
/// every namespace named like one of its namespaces (with whatever processes are inside them)
/// and its directory. For `ambit lab down`, also after a crash.
pub fn down_by_name(name: &str) -> Result<(), LabError> {
    validate_name(name)?;
    let dir = Path::new(LAB_ROOT).join(name);
    let mut problems = Vec::new();
    let mut found = dir.exists();
    // An unreadable lab.json is not fatal: the name alone finds the namespaces.
    if let Ok(lab) = Lab::load(name) {
        match lab.down() {
            Ok(()) => {}
            Err(LabError::Teardown { problems: p, .. }) => problems.extend(p),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if !super::kubelet::lab_cgroup_roots(name).is_empty() {
        found = true;
    }
    problems.extend(super::kubelet::cleanup(name));
    let strays: Vec<String> = topology::existing_netns()?
        .into_iter()
        .filter(|n| is_lab_netns(name, n))
        .collect();
    if !strays.is_empty() {
        found = true;
        kill_processes_in(&strays);
        problems.extend(topology::delete_netns(&strays));
    }
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            problems.push(format!("cannot remove {}: {e}", dir.display()))
        }
        _ => {}
    }
    if !found {
        return Err(LabError::NotFound {
            what: "lab",
            name: name.to_string(),
            known: String::new(),
        });
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(LabError::Teardown {
            name: name.to_string(),
            problems,
        })
    }
}

/// SIGKILLs every process (other than this one) whose network namespace is one of `names`:
/// daemons whose pids were lost, servers a test left running. Only namespaces a lab created
/// are matched, so nothing else on the machine is touched.
fn kill_processes_in(names: &[String]) {
    let ids: HashSet<(u64, u64)> = names
        .iter()
        .filter_map(|n| NetNs::open(state::netns_path(n)).ok())
        .map(|ns| (ns.id().dev, ns.id().ino))
        .collect();
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    for entry in proc_dir.filter_map(|e| e.ok()) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // stat follows the ns/net magic link to the namespace's nsfs inode.
        let Ok(meta) = std::fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        if ids.contains(&(meta.dev(), meta.ino())) {
            send_signal(pid, libc::SIGKILL);
        }
    }
}
