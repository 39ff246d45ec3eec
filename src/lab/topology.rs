//! Builds and removes the lab's namespaces, links, addresses and routes with `ip`.
//!
//! Every change is made inside a namespace the lab created (`ip -n <ns>`, or `sysctl` entered
//! into the namespace): the machine's own network namespace is never touched. Commands for one
//! namespace are sent as a single `ip -batch` to keep a lab with hundreds of pods quick to build.

use std::io::Write;
use std::process::{Command, Stdio};

use super::state::{LabState, POD_GATEWAY_V4, POD_GATEWAY_V6};
use super::LabError;
use crate::netns::NetNs;

/// Bridge in the fabric namespace that every node's veth is attached to.
const BRIDGE: &str = "br0";

/// Renders `cmd` for error messages.
fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` (feeding `stdin` if given) and fails with its command line and stderr unless it
/// exits successfully.
pub(crate) fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<(), LabError> {
    run_in(None, cmd, stdin)
}

/// [`run`], inside `ns` when given.
fn run_in(ns: Option<&NetNs>, cmd: &mut Command, stdin: Option<&str>) -> Result<(), LabError> {
    let command = describe(cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let spawn_err = |source| LabError::Io {
        context: format!("cannot run `{command}`"),
        source,
    };
    let spawned = match ns {
        Some(ns) => ns.spawn(cmd),
        None => cmd.spawn(),
    };
    let mut child = spawned.map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error means the child exited early; its status and stderr say why.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(());
    }
    Err(LabError::Command {
        command,
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// `ip` commands to run in one namespace (or in the root namespace for `netns add/del`).
struct Batch {
    netns: Option<String>,
    lines: Vec<String>,
}

impl Batch {
    fn new(netns: Option<&str>) -> Self {
        Batch {
            netns: netns.map(str::to_string),
            lines: Vec::new(),
        }
    }

    fn add(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    /// Runs the batch; stops at the first failing line and names it in the error.
    fn run(self) -> Result<(), LabError> {
        let mut cmd = Command::new("ip");
        if let Some(ns) = &self.netns {
            cmd.args(["-n", ns]);
        }
        cmd.args(["-batch", "-"]);
        let input = self.lines.join("\n") + "\n";
        run(&mut cmd, Some(&input)).map_err(|e| match e {
            LabError::Command {
                command,
                status,
                stderr,
            } => {
                // ip reports "Command failed -:<line>"; show the line itself, not its number.
                let failed = stderr
                    .rsplit_once("Command failed -:")
                    .and_then(|(_, n)| n.trim().parse::<usize>().ok())
                    .and_then(|n| self.lines.get(n.wrapping_sub(1)));
                let command = match failed {
                    Some(line) => format!("{command} (line: ip {line})"),
                    None => command,
                };
                LabError::Command {
                    command,
                    status,
                    stderr,
                }
            }
            other => other,
        })
    }
}

/// Sets sysctls inside the namespace `netns` (a `sysctl` process that enters it before exec).
fn sysctls(netns: &str, settings: &[&str]) -> Result<(), LabError> {
    let ns = NetNs::open(super::state::netns_path(netns))?;
    let mut cmd = Command::new("sysctl");
    cmd.args(["-q", "-w"]).args(settings);
    run_in(Some(&ns), &mut cmd, None)
}

/// Settings shared by every lab namespace: no duplicate address detection, so addresses are
/// usable at once (the lab assigns unique addresses itself).
const NO_DAD: [&str; 2] = [
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
];

/// Creates every namespace of `lab` and wires them up. On error the caller removes whatever
/// was created (see [`delete_netns`]).
pub(crate) fn build(lab: &LabState) -> Result<(), LabError> {
    let mut root = Batch::new(None);
    for name in lab.netns_names() {
        root.add(format!("netns add {name}"));
    }
    root.run()?;

    // Sysctls first: interfaces copy the namespace's defaults when they are created.
    let router = [
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        NO_DAD[0],
        NO_DAD[1],
    ];
    sysctls(&lab.fabric_netns, &router)?;
    for node in &lab.nodes {
        let mut settings = router.to_vec();
        // The daemon redirects and marks traffic; strict reverse-path checks would drop some.
        settings.extend([
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ]);
        sysctls(&node.netns_name, &settings)?;
    }
    for pod in &lab.pods {
        let mut settings = NO_DAD.to_vec();
        // Pods are addressed statically; router advertisements would only add noise.
        settings.extend([
            "net.ipv6.conf.all.accept_ra=0",
            "net.ipv6.conf.default.accept_ra=0",
        ]);
        sysctls(&pod.netns_name, &settings)?;
    }

    // Fabric: a bridge holding the fabric addresses, one veth per node.
    let mut fab = Batch::new(Some(&lab.fabric_netns));
    fab.add("link set lo up");
    fab.add(format!("link add {BRIDGE} type bridge mcast_snooping 0"));
    fab.add(format!("addr add {}/24 dev {BRIDGE}", lab.fabric_ipv4));
    fab.add(format!(
        "addr add {}/64 dev {BRIDGE} nodad",
        lab.fabric_ipv6
    ));
    fab.add(format!("link set {BRIDGE} up"));
    for node in &lab.nodes {
        let ifname = &node.name;
        fab.add(format!(
            "link add {ifname} type veth peer name eth0 netns {}",
            node.netns_name
        ));
        fab.add(format!("link set {ifname} master {BRIDGE}"));
        fab.add(format!("link set {ifname} up"));
    }
    fab.run()?;

    // Nodes, first pass: fabric side up, one veth per pod (node ends up, still unaddressed, so
    // the pod side gets carrier as soon as it is brought up).
    for node in &lab.nodes {
        let mut b = Batch::new(Some(&node.netns_name));
        b.add("link set lo up");
        b.add(format!("addr add {}/24 dev eth0", node.ipv4));
        b.add(format!("addr add {}/64 dev eth0 nodad", node.ipv6));
        b.add("link set eth0 up");
        for pod in lab.pods.iter().filter(|p| p.node == node.name) {
            b.add(format!(
                "link add {} type veth peer name eth0 netns {}",
                pod.node_ifname, pod.netns_name
            ));
            b.add(format!("link set {} up", pod.node_ifname));
        }
        b.run()?;
    }

    // Pods: one address per family, everything through the node's gateway addresses.
    for pod in &lab.pods {
        let mut b = Batch::new(Some(&pod.netns_name));
        b.add("link set lo up");
        b.add(format!("addr add {}/32 dev eth0", pod.ipv4));
        b.add(format!("addr add {}/128 dev eth0 nodad", pod.ipv6));
        b.add("link set eth0 up");
        b.add(format!("route add {POD_GATEWAY_V4}/32 dev eth0 scope link"));
        b.add(format!("route add default via {POD_GATEWAY_V4} dev eth0"));
        b.add(format!("route add ::/0 via {POD_GATEWAY_V6} dev eth0"));
        b.run()?;
    }

    // Nodes, second pass: gateway addresses and host routes to each pod, routes to the other
    // nodes' pod ranges through the fabric.
    for node in &lab.nodes {
        let mut b = Batch::new(Some(&node.netns_name));
        for pod in lab.pods.iter().filter(|p| p.node == node.name) {
            let dev = &pod.node_ifname;
            b.add(format!("addr add {POD_GATEWAY_V4}/32 dev {dev}"));
            b.add(format!("addr add {POD_GATEWAY_V6}/64 dev {dev} nodad"));
            b.add(format!("route add {}/32 dev {dev}", pod.ipv4));
            b.add(format!("route add {}/128 dev {dev}", pod.ipv6));
        }
        for other in lab.nodes.iter().filter(|o| o.name != node.name) {
            b.add(format!(
                "route add {} via {}",
                other.pod_cidr_v4, other.ipv4
            ));
            b.add(format!(
                "route add {} via {}",
                other.pod_cidr_v6, other.ipv6
            ));
        }
        b.run()?;
    }

    // Fabric: routes back to every pod range, so servers on the fabric address answer pods.
    let mut fab = Batch::new(Some(&lab.fabric_netns));
    for node in &lab.nodes {
        fab.add(format!("route add {} via {}", node.pod_cidr_v4, node.ipv4));
        fab.add(format!("route add {} via {}", node.pod_cidr_v6, node.ipv6));
    }
    fab.run()
}

/// Names of all named network namespaces (`ip netns list`, read from the directory).
pub(crate) fn existing_netns() -> Result<Vec<String>, LabError> {
    let dir = match std::fs::read_dir("/var/run/netns") {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LabError::Io {
                context: "cannot list /var/run/netns".into(),
                source,
            })
        }
    };
    Ok(dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// Deletes the named namespaces that exist; returns one message per namespace that could not
/// be deleted. Missing namespaces are not an error (cleanup may run twice).
pub(crate) fn delete_netns(names: &[String]) -> Vec<String> {
    let existing = match existing_netns() {
        Ok(existing) => existing,
        Err(e) => return vec![e.to_string()],
    };
    let mut problems = Vec::new();
    for name in names.iter().filter(|n| existing.contains(n)) {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", name]), None) {
            problems.push(e.to_string());
        }
    }
    problems
}

/// Whether `netns` is one of the names lab `lab` creates (`<lab>-fab`, `<lab>-n<N>`,
/// `<lab>-n<N>-p<M>`). Exact shapes, so one lab's name being a prefix of another's never
/// makes cleanup touch the other lab.
pub(crate) fn is_lab_netns(lab: &str, netns: &str) -> bool {
    let Some(rest) = netns.strip_prefix(lab).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if rest == "fab" {
        return true;
    }
    let Some(rest) = rest.strip_prefix('n') else {
        return false;
    };
    match rest.split_once("-p") {
        Some((node, pod)) => number(node) && number(pod),
        None => number(rest),
    }
}
