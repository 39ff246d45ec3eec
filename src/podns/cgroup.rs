//! Reading a pod UID out of a `/proc/<pid>/cgroup` file. Pure string work, no I/O.
//!
//! Each line is `<hierarchy id>:<controllers>:<path>`: `4:memory:/kubepods/...` for cgroup v1,
//! `0::/kubepods.slice/...` for cgroup v2. Kubelet names the pod's cgroup after the pod UID in
//! one of two spellings, depending on its cgroup driver:
//!
//! * cgroupfs: a path component `pod<uid>` (dashed UID) under a `kubepods` component, e.g.
//!   `/kubepods/burstable/pod<uid>/<container id>` or `/kubepods/pod<uid>/crio-<id>`;
//! * systemd: a slice `<...>-pod<uid>.slice` whose UID has `_` for `-` (systemd reserves `-`
//!   for slice nesting), e.g.
//!   `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`.
//!
//! A third, unexpanded form appears when containerd is told to use the systemd driver without
//! systemd managing it: `/system.slice/containerd.service/kubepods-burstable-pod<uid_>.slice:cri-containerd:<id>`.
//!
//! Either may sit below a prefix (kind and k3s run kubelet inside a cgroup of their own:
//! `/kubelet/kubepods/...`, `/kubelet.slice/kubelet-kubepods.slice/...`,
//! `/system.slice/containerd.service/kubepods-...`); the lab uses `/ambit-lab-<name>/kubepods/...`.
//! A path component is taken as a pod component only below (or at) a component that mentions
//! `kubepods` (or below a leading `..`, as a reader in a cgroup namespace sees it), so a
//! `pod<something>` elsewhere (a user slice, podman's `libpod-...`) is not.

/// What a cgroup file says about the pod a process belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupPod {
    /// Pod UID in the dashed, lowercase form (`2c48913c-b29f-11e7-9350-020968147796`).
    pub uid: String,
    /// Container ID (64 hex digits) from the component below the pod's, if it has that shape
    /// (`<id>`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`, ...).
    pub container_id: Option<String>,
}

/// Pod of the process whose `/proc/<pid>/cgroup` contents are `contents`.
///
/// Lines that name no pod (`/`, `/user.slice`, another hierarchy the runtime does not manage,
/// garbage) are ignored. Lines that do must agree on the UID; if two lines name different pods
/// the file is ambiguous and `None` is returned, as is the case when no line names a pod.
pub fn pod_from_cgroup(contents: &str) -> Option<CgroupPod> {
    let mut found: Option<CgroupPod> = None;
    for line in contents.lines() {
        let Some(pod) = pod_from_line(line) else {
            continue;
        };
        match &mut found {
            None => found = Some(pod),
            Some(f) if f.uid != pod.uid => return None,
            Some(f) => {
                if f.container_id.is_none() {
                    f.container_id = pod.container_id;
                }
            }
        }
    }
    found
}

/// Pod UID named by `contents` (see [`pod_from_cgroup`]).
pub fn pod_uid_from_cgroup(contents: &str) -> Option<String> {
    pod_from_cgroup(contents).map(|p| p.uid)
}

/// Pod named by one line of a cgroup file (`N:controllers:/path`), if any.
pub fn pod_from_line(line: &str) -> Option<CgroupPod> {
    let mut parts = line.trim_end().splitn(3, ':');
    let hierarchy = parts.next()?;
    let _controllers = parts.next()?;
    // The path may itself contain ':' (splitn keeps it whole).
    let path = parts.next()?;
    if hierarchy.is_empty() || !hierarchy.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pod_from_path(path)
}

/// Pod named by a cgroup path (`/kubepods/besteffort/pod<uid>/<id>`, ...), if any.
pub fn pod_from_path(path: &str) -> Option<CgroupPod> {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    if !path.starts_with('/') {
        return None;
    }
    let mut components = path.split('/').filter(|c| !c.is_empty());
    let mut under_kubepods = false;
    while let Some(component) = components.next() {
        // `..` means the reader sits in a cgroup namespace (a DaemonSet pod on cgroup v2 sees
        // `0::/../../pod<uid>/<id>` for its neighbours): the `kubepods` part is above its root.
        under_kubepods |= component.contains("kubepods") || component == "..";
        if !under_kubepods {
            continue;
        }
        // containerd with the systemd driver but not running under systemd leaves the
        // cgroupsPath unexpanded: `kubepods-burstable-pod<uid_>.slice:cri-containerd:<id>`.
        let (head, inline_id) = match component.split_once(':') {
            Some((head, rest)) => (head, rest.rsplit(':').next()),
            None => (component, None),
        };
        if let Some(uid) = uid_from_component(head) {
            let container_id = match inline_id {
                Some(id) => container_id_from_component(id),
                None => components.next().and_then(container_id_from_component),
            };
            return Some(CgroupPod { uid, container_id });
        }
    }
    None
}

/// UID from a pod component: `pod<uid>` (cgroupfs) or `<prefix>-pod<uid_>.slice` (systemd).
fn uid_from_component(component: &str) -> Option<String> {
    let (stem, is_slice) = match component.strip_suffix(".slice") {
        Some(stem) => (stem, true),
        None => (component, false),
    };
    // Hex digits never contain "pod", so the last occurrence starts the pod part.
    let at = stem.rfind("pod")?;
    let before = &stem[..at];
    let shape_ok = if is_slice {
        // `kubepods-pod<uid>.slice`, `kubepods-burstable-pod<uid>.slice`,
        // `kubelet-kubepods-besteffort-pod<uid>.slice`.
        before.ends_with('-') && before.contains("kubepods")
    } else {
        before.is_empty()
    };
    if !shape_ok {
        return None;
    }
    normalize_uid(&stem[at + 3..])
}

/// Normalises a pod UID to the dashed lowercase form: accepts 8-4-4-4-12 hex digits separated
/// by `-` or `_` (the systemd spelling). Anything else gives `None`.
pub fn normalize_uid(s: &str) -> Option<String> {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    if s.len() != 36 {
        return None;
    }
    let mut out = String::with_capacity(36);
    let mut rest = s;
    for (i, len) in GROUPS.iter().enumerate() {
        if i > 0 {
            let sep = rest.as_bytes()[0];
            if sep != b'-' && sep != b'_' {
                return None;
            }
            rest = &rest[1..];
            out.push('-');
        }
        let group = rest.get(..*len)?;
        if !group.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        out.push_str(&group.to_ascii_lowercase());
        rest = &rest[*len..];
    }
    rest.is_empty().then_some(out)
}

/// Container ID from the component below the pod's: `<64 hex>`, or that wrapped as
/// `<runtime>-<id>.scope` / `<runtime>-<id>` (`cri-containerd-`, `crio-`, `docker-`, ...).
fn container_id_from_component(component: &str) -> Option<String> {
    let stem = component.strip_suffix(".scope").unwrap_or(component);
    let id = match stem.rsplit_once('-') {
        Some((_, id)) => id,
        None => stem,
    };
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}
