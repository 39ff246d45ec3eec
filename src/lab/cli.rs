//! `ambit lab up|down|list|exec|policy` (and the hidden `ambit lab apiserver`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{Lab, LabSpec};

/// Lab subcommands.
#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Build a lab cluster and start one ambit per node; prints the lab's name.
    Up(UpArgs),
    /// Remove a lab: daemons, namespaces, files.
    Down {
        /// Lab name (see `ambit lab list`); omit with --all.
        name: Option<String>,
        /// Remove every lab.
        #[arg(long)]
        all: bool,
    },
    /// List labs with their nodes and pods.
    List,
    /// Run a command inside a pod's (or node's, or `fab`) network namespace.
    Exec {
        /// Lab name.
        lab: String,
        /// Pod (`n1-p1`), node (`n1`) or `fab`.
        target: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Replace the lab's Istio security policies (AuthorizationPolicy, PeerAuthentication) with
    /// those of a JSON file: one object as `kubectl get -o json` prints it, a `kind: List`, or an
    /// array; `[]` removes them all. In Kubernetes mode they are published to the API server.
    Policy {
        /// Lab name.
        lab: String,
        /// The JSON file (`-`: standard input).
        file: PathBuf,
    },
    /// Run the stand-in Kubernetes API server (what `lab up --kube` starts in the fabric).
    #[command(hide = true)]
    Apiserver {
        /// Address to listen on (HTTP, no TLS).
        #[arg(long)]
        listen: SocketAddr,
        /// State file: loaded at start, rewritten on every change. The server exits when its
        /// directory is removed.
        #[arg(long)]
        state: PathBuf,
    },
}

/// Options of `ambit lab up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Lab name (default: generated).
    #[arg(long)]
    name: Option<String>,
    /// Number of nodes.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Pods per node.
    #[arg(long, default_value_t = 2)]
    pods: usize,
    /// Leave the pods' namespace out of the mesh (no ambient label).
    #[arg(long)]
    no_mesh: bool,
    /// Do not start the daemons.
    #[arg(long)]
    no_daemons: bool,
    /// Sidecar topology: one `ambit sidecar` per pod instead of one daemon per node.
    #[arg(long, conflicts_with = "kube")]
    sidecar: bool,
    /// Extra arguments for every `ambit run` (e.g. `--rules=nftables`).
    #[arg(long = "daemon-arg", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
    /// Kubernetes mode: start a stand-in API server in the fabric (`172.31.0.1:6443`, kubeconfig
    /// in the lab directory) and have the daemons watch it instead of the workload file.
    #[arg(long)]
    kube: bool,
}

/// Runs a lab subcommand.
pub fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up(args) => up(args),
        LabCommand::Down { name, all } => {
            let names = match (name, all) {
                (Some(n), false) => vec![n],
                (None, true) => super::list()?,
                _ => anyhow::bail!("give a lab name or --all"),
            };
            for n in names {
                super::down_by_name(&n).with_context(|| format!("removing lab {n}"))?;
                println!("removed lab {n}");
            }
            Ok(())
        }
        LabCommand::List => {
            for name in super::list()? {
                let lab = Lab::load(&name)?;
                println!(
                    "{name}: {} nodes, {} pods",
                    lab.nodes().len(),
                    lab.pods().len()
                );
                for pod in lab.pods() {
                    println!(
                        "  {:8} node {:3} {:15} {:20} netns {}",
                        pod.name, pod.node, pod.ipv4, pod.ipv6, pod.netns_name
                    );
                }
            }
            Ok(())
        }
        LabCommand::Exec {
            lab,
            target,
            command,
        } => {
            let lab = Lab::load(&lab)?;
            let ns =
                crate::netns::NetNs::open(super::state::netns_path(lab.netns_name_of(&target)?))?;
            let mut cmd = Command::new(&command[0]);
            cmd.args(&command[1..]);
            let status = ns
                .spawn(&mut cmd)
                .and_then(|mut child| child.wait())
                .with_context(|| format!("running {:?}", command[0]))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        LabCommand::Policy { lab, file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let policies =
                policy_list(&text).with_context(|| format!("{} is not JSON", file.display()))?;
            let count = policies.len();
            Lab::load(&lab)?.update_workloads(|s| s.istio = policies)?;
            println!("lab {lab}: {count} policy objects in the workload file");
            Ok(())
        }
        LabCommand::Apiserver { listen, state } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("building the runtime")?
            .block_on(super::apiserver::serve(listen, state)),
    }
}

/// The objects of `text`: an array's items, or the one value (a `kind: List` is unpacked by the
/// policy engine, which judges each object on its own).
fn policy_list(text: &str) -> Result<Vec<serde_json::Value>, serde_json::Error> {
    Ok(match serde_json::from_str(text)? {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    })
}

fn up(args: UpArgs) -> anyhow::Result<()> {
    let spec = LabSpec {
        name: args.name,
        nodes: args.nodes,
        pods_per_node: args.pods,
        // Sidecar pods are in the mesh through their sidecars, not the ambient label.
        namespace_ambient: !args.no_mesh && !args.sidecar,
        kube: args.kube,
    };
    let lab = Lab::up(&spec)?;
    let binary = std::env::current_exe().context("locating the ambit binary")?;
    if args.kube {
        lab.start_apiserver(&binary)?;
        println!(
            "stand-in API server {} (kubeconfig {})",
            lab.apiserver_url(),
            lab.kubeconfig_path().display()
        );
    }
    match (args.no_daemons, args.sidecar) {
        (true, _) => {}
        (false, true) => {
            lab.start_sidecars(&binary, &args.daemon_args)?;
            println!("sidecar topology: one `ambit sidecar` per pod (UID 1337)");
        }
        (false, false) => start_all(&lab, &binary, &args.daemon_args)?,
    }
    for pod in lab.pods() {
        println!(
            "{:8} node {:3} {:15} {}",
            pod.name, pod.node, pod.ipv4, pod.ipv6
        );
    }
    let name = lab.detach();
    println!("lab {name} is up; remove it with: ambit lab down {name}");
    Ok(())
}

/// Starts one daemon per node and waits until all are ready.
pub fn start_all(lab: &Lab, binary: &std::path::Path, args: &[String]) -> anyhow::Result<()> {
    for node in lab.nodes() {
        lab.start_daemon(&node.name, binary, args)?;
    }
    for node in lab.nodes() {
        lab.wait_ready(&node.name, Duration::from_secs(30))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_files_hold_one_object_or_an_array() {
        let one = r#"{"kind": "AuthorizationPolicy", "metadata": {"name": "a"}}"#;
        assert_eq!(policy_list(one).unwrap().len(), 1);
        let list = r#"{"kind": "List", "items": [{}, {}]}"#;
        assert_eq!(policy_list(list).unwrap().len(), 1);
        assert_eq!(policy_list("[{}, {}]").unwrap().len(), 2);
        assert!(policy_list("[]").unwrap().is_empty());
        assert!(policy_list("not json").is_err());
    }
}
