//! Lab pods that look like kubelet's to the cgroup scan ([`crate::podns`]).
//!
//! For each lab pod one long-lived placeholder process (like the pause container: `sleep`)
//! is started inside the pod's network namespace and moved into cgroups named the way kubelet
//! names a pod's container cgroup, under a lab-specific root so parallel labs never share a
//! directory and cleanup can remove the lab's tree without looking at anything else:
//!
//! * cgroup v1 `pids` hierarchy, cgroupfs-driver spelling:
//!   `/sys/fs/cgroup/pids/ambit-lab-<lab>/kubepods/besteffort/pod<uid>/<64 hex>`
//! * cgroup v2, systemd-driver spelling:
//!   `<cgroup2 mount>/ambit-lab-<lab>.slice/kubepods.slice/kubepods-besteffort.slice/`
//!   `kubepods-besteffort-pod<uid with _>.slice/cri-containerd-<64 hex>.scope`
//!
//! `/proc/<pid>/cgroup` of the placeholder then names the pod UID in each hierarchy used (the
//! same UID in both spellings). A hierarchy whose lab root cannot be created (read-only
//! cgroupfs, EPERM) is skipped; if none is usable [`start`] fails saying why, and the lab can
//! stay with explicit named-namespace paths.
//!
//! [`KubeletPods`] kills its processes and removes its cgroups when dropped or [`stopped`];
//! [`cleanup`] does the same by lab name (for `lab down`, also after a crash).
//!
//! [`stopped`]: KubeletPods::stop

use std::collections::BTreeSet;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::lab::{Lab, LabError, LabPod};
use crate::netns::NetNs;
use crate::podns::pod_uid_from_cgroup;

/// How long [`cleanup`] waits for killed processes to leave their cgroups.
const EXIT_WAIT: Duration = Duration::from_secs(3);

/// How a hierarchy's directories are spelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// kubelet `--cgroup-driver=cgroupfs`: `kubepods/besteffort/pod<uid>/<id>`.
    Cgroupfs,
    /// kubelet `--cgroup-driver=systemd`: `kubepods-besteffort-pod<uid_>.slice/cri-containerd-<id>.scope`.
    Systemd,
}

/// A cgroup hierarchy the lab places pod processes in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// Mount point (`/sys/fs/cgroup/pids`, `/sys/fs/cgroup/unified`, `/sys/fs/cgroup`).
    pub mount: PathBuf,
    /// Spelling used in it.
    pub driver: Driver,
}

impl Hierarchy {
    /// The lab's root directory in this hierarchy (everything the lab creates is below it).
    pub fn lab_root(&self, lab: &str) -> PathBuf {
        self.mount.join(lab_root_name(lab, self.driver))
    }

    /// The container cgroup of pod `uid` (container id `cid`), lab root first, leaf last.
    fn pod_dirs(&self, lab: &str, uid: &str, cid: &str) -> Vec<PathBuf> {
        let root = self.lab_root(lab);
        let parts: Vec<String> = match self.driver {
            Driver::Cgroupfs => vec![
                "kubepods".into(),
                "besteffort".into(),
                format!("pod{uid}"),
                cid.to_string(),
            ],
            Driver::Systemd => vec![
                "kubepods.slice".into(),
                "kubepods-besteffort.slice".into(),
                format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_")),
                format!("cri-containerd-{cid}.scope"),
            ],
        };
        let mut dirs = vec![root.clone()];
        let mut dir = root;
        for p in parts {
            dir = dir.join(p);
            dirs.push(dir.clone());
        }
        dirs
    }
}

/// Name of the lab's root directory in a hierarchy.
fn lab_root_name(lab: &str, driver: Driver) -> String {
    match driver {
        Driver::Cgroupfs => format!("ambit-lab-{lab}"),
        Driver::Systemd => format!("ambit-lab-{lab}.slice"),
    }
}

/// A mounted cgroup hierarchy, from `/proc/self/mountinfo`.
#[derive(Debug)]
struct Mount {
    point: PathBuf,
    /// `cgroup2`, or the v1 super options (`rw,pids`).
    v2: bool,
    options: String,
}

/// Every cgroup mount of this mount namespace, one per hierarchy (first mount point wins).
fn cgroup_mounts() -> Vec<Mount> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut seen = BTreeSet::new();
    let mut mounts = Vec::new();
    for line in info.lines() {
        // `<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> <source> <super options>`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(point), Some(fstype)) = (left.get(4), right.first()) else {
            continue;
        };
        // Mount points with spaces and the like are escaped (`\040`); the lab does not need them.
        if point.contains('\\') {
            continue;
        }
        let v2 = match *fstype {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let options = right.get(2).copied().unwrap_or("").to_string();
        let dev = left.get(2).copied().unwrap_or("").to_string();
        if !seen.insert(dev) {
            continue;
        }
        mounts.push(Mount {
            point: PathBuf::from(point),
            v2,
            options,
        });
    }
    mounts
}

/// The hierarchies the lab uses: the v1 `pids` hierarchy (cgroupfs spelling) and the cgroup2
/// hierarchy (systemd spelling), as far as they are mounted.
pub fn lab_hierarchies() -> Vec<Hierarchy> {
    let mounts = cgroup_mounts();
    let mut out = Vec::new();
    if let Some(m) = mounts
        .iter()
        .find(|m| !m.v2 && m.options.split(',').any(|o| o == "pids"))
    {
        out.push(Hierarchy {
            mount: m.point.clone(),
            driver: Driver::Cgroupfs,
        });
    }
    if let Some(m) = mounts.iter().find(|m| m.v2) {
        out.push(Hierarchy {
            mount: m.point.clone(),
            driver: Driver::Systemd,
        });
    }
    out
}

/// One lab pod's placeholder process.
#[derive(Debug)]
pub struct PodProcess {
    /// Pod name (`n1-p1`).
    pub pod: String,
    /// Pod UID (as in the workload file).
    pub uid: String,
    /// Container ID used in the cgroup names (64 hex digits).
    pub container_id: String,
    /// Process id.
    pub pid: u32,
    /// The container cgroups it was moved into, one per hierarchy.
    pub cgroups: Vec<PathBuf>,
    child: Child,
}

/// The placeholder processes of a lab's pods. Dropping it kills them and removes their cgroups
/// (unless [`detach`](KubeletPods::detach)ed).
#[derive(Debug)]
pub struct KubeletPods {
    lab: String,
    hierarchies: Vec<Hierarchy>,
    skipped: Vec<String>,
    processes: Vec<PodProcess>,
    owned: bool,
}

/// Starts one placeholder process per pod of `lab` (see the module documentation).
pub fn start_pod_processes(lab: &Lab) -> Result<KubeletPods, LabError> {
    start(lab.name(), lab.pods())
}

/// Starts one placeholder process per pod in `pods` of lab `lab`. On error everything started
/// or created so far is removed again.
pub fn start(lab: &str, pods: &[LabPod]) -> Result<KubeletPods, LabError> {
    crate::lab::validate_name(lab)?;
    let mut hierarchies = Vec::new();
    let mut skipped = Vec::new();
    for h in lab_hierarchies() {
        let root = h.lab_root(lab);
        match std::fs::create_dir(&root) {
            Ok(()) => hierarchies.push(h),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Left over from an earlier lab of this name: not ours to reuse.
                for h in &hierarchies {
                    let _ = std::fs::remove_dir(h.lab_root(lab));
                }
                return Err(LabError::Exists {
                    name: lab.to_string(),
                    detail: format!("cgroup {} exists", root.display()),
                });
            }
            Err(e) => skipped.push(format!("cannot create {}: {e}", root.display())),
        }
    }
    let mut pods_out = KubeletPods {
        lab: lab.to_string(),
        hierarchies,
        skipped,
        processes: Vec::new(),
        owned: true,
    };
    if pods_out.hierarchies.is_empty() {
        let detail = if pods_out.skipped.is_empty() {
            "no cgroup v1 `pids` or cgroup2 hierarchy is mounted".to_string()
        } else {
            pods_out.skipped.join("; ")
        };
        pods_out.owned = false;
        return Err(LabError::Io {
            context: format!("cannot place lab {lab}'s pod processes in kubelet-style cgroups"),
            source: io::Error::other(detail),
        });
    }
    for pod in pods {
        // On error, dropping `pods_out` removes what exists so far.
        pods_out.add(pod)?;
    }
    Ok(pods_out)
}

/// 64 random hex digits.
fn container_id() -> Result<String, LabError> {
    super::random_hex(32)
}

impl KubeletPods {
    /// Starts the placeholder process of one more pod (e.g. a pod added to the lab later).
    pub fn add(&mut self, pod: &LabPod) -> Result<&PodProcess, LabError> {
        let cid = container_id()?;
        let netns = NetNs::open(&pod.netns_path)?;
        let mut leaves = Vec::new();
        for h in &self.hierarchies {
            let dirs = h.pod_dirs(&self.lab, &pod.uid, &cid);
            let leaf = dirs.last().expect("pod_dirs is never empty").clone();
            std::fs::create_dir_all(&leaf).map_err(|source| LabError::Io {
                context: format!("cannot create cgroup {}", leaf.display()),
                source,
            })?;
            leaves.push(leaf);
        }
        let mut cmd = Command::new("sleep");
        cmd.arg("2147483647")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a terminal's ^C after `ambit lab up` does not reach it.
            .process_group(0);
        let child = netns.spawn(&mut cmd).map_err(|source| LabError::Io {
            context: format!("cannot start the placeholder process of pod {}", pod.name),
            source,
        })?;
        let pid = child.id();
        // From here on the process is tracked, so an error below still gets it killed.
        self.processes.push(PodProcess {
            pod: pod.name.clone(),
            uid: pod.uid.clone(),
            container_id: cid,
            pid,
            cgroups: leaves.clone(),
            child,
        });
        for leaf in &leaves {
            let procs = leaf.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(|source| LabError::Io {
                context: format!("cannot move pid {pid} into {}", procs.display()),
                source,
            })?;
        }
        let proc_cgroup = format!("/proc/{pid}/cgroup");
        let shown = std::fs::read_to_string(&proc_cgroup).map_err(|source| LabError::Io {
            context: format!("cannot read {proc_cgroup}"),
            source,
        })?;
        if pod_uid_from_cgroup(&shown).as_deref() != Some(pod.uid.as_str()) {
            return Err(LabError::Io {
                context: format!("{proc_cgroup} does not name pod {} ({})", pod.name, pod.uid),
                source: io::Error::other(format!("it reads:\n{}", shown.trim_end())),
            });
        }
        Ok(self.processes.last().expect("just pushed"))
    }

    /// Lab name.
    pub fn lab(&self) -> &str {
        &self.lab
    }

    /// The placeholder processes, in pod order.
    pub fn processes(&self) -> &[PodProcess] {
        &self.processes
    }

    /// The placeholder process of pod `name`.
    pub fn process(&self, name: &str) -> Option<&PodProcess> {
        self.processes.iter().find(|p| p.pod == name)
    }

    /// Hierarchies the processes were placed in.
    pub fn hierarchies(&self) -> &[Hierarchy] {
        &self.hierarchies
    }

    /// Hierarchies that were not usable, with the reason.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Leaves the processes and cgroups in place (for a lab that outlives this process);
    /// [`cleanup`] removes them later by lab name.
    pub fn detach(mut self) {
        self.owned = false;
    }

    /// Kills the processes and removes the lab's cgroups now, reporting what was left behind.
    pub fn stop(mut self) -> Result<(), LabError> {
        self.owned = false;
        let problems = self.teardown();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LabError::Teardown {
                name: self.lab.clone(),
                problems,
            })
        }
    }

    fn teardown(&mut self) -> Vec<String> {
        for p in &mut self.processes {
            let _ = p.child.kill();
        }
        for p in &mut self.processes {
            // Reaps the child so no zombie is left (a zombie has already left its cgroups).
            let _ = p.child.wait();
        }
        self.processes.clear();
        cleanup(&self.lab)
    }
}

impl Drop for KubeletPods {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let problems = self.teardown();
        if !problems.is_empty() {
            eprintln!(
                "lab {}: kubelet-style pod processes left things behind:\n  {}",
                self.lab,
                problems.join("\n  ")
            );
        }
    }
}

/// The lab's root cgroup directories that exist, in every mounted hierarchy.
pub fn lab_cgroup_roots(lab: &str) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for m in cgroup_mounts() {
        for driver in [Driver::Cgroupfs, Driver::Systemd] {
            let root = m.point.join(lab_root_name(lab, driver));
            if root.is_dir() {
                roots.push(root);
            }
        }
    }
    roots
}

/// Every directory of the tree at `root`, children before parents.
fn dirs_deepest_first(root: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.filter_map(|e| e.ok()) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs_deepest_first(&e.path(), out);
            }
        }
    }
    out.push(root.to_path_buf());
}

/// Pids listed in `<dir>/cgroup.procs`.
fn procs_in(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process in lab `lab`'s cgroups (only those: the tree under
/// `ambit-lab-<lab>[.slice]` in each hierarchy) and removes the directories, deepest first.
/// Nothing there is not a problem. Returns one line per thing that could not be removed. For
/// `Lab` teardown and `ambit lab down <name>`.
pub fn cleanup(lab: &str) -> Vec<String> {
    if crate::lab::validate_name(lab).is_err() {
        return vec![format!("invalid lab name {lab:?}")];
    }
    let me = std::process::id() as i32;
    let mut dirs = Vec::new();
    for root in lab_cgroup_roots(lab) {
        dirs_deepest_first(&root, &mut dirs);
    }
    for dir in &dirs {
        for pid in procs_in(dir) {
            if pid > 0 && pid != me {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let deadline = Instant::now() + EXIT_WAIT;
    let mut problems = Vec::new();
    for dir in &dirs {
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                // Busy: a killed process has not left yet.
                Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    let left = procs_in(dir);
                    let procs = if left.is_empty() {
                        String::new()
                    } else {
                        format!(" (processes still in it: {left:?})")
                    };
                    problems.push(format!(
                        "cannot remove cgroup {}: {e}{procs}",
                        dir.display()
                    ));
                    break;
                }
            }
        }
    }
    problems
}
