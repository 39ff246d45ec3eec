//! `ambit lab up|down|list|exec`.

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
    /// Extra arguments for every `ambit run` (e.g. `--rules=nftables`).
    #[arg(long = "daemon-arg", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
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
                .prepare_command(&mut cmd)
                .status()
                .with_context(|| format!("running {:?}", command[0]))?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
}

fn up(args: UpArgs) -> anyhow::Result<()> {
    let spec = LabSpec {
        name: args.name,
        nodes: args.nodes,
        pods_per_node: args.pods,
        namespace_ambient: !args.no_mesh,
    };
    let lab = Lab::up(&spec)?;
    if !args.no_daemons {
        let binary = std::env::current_exe().context("locating the ambit binary")?;
        start_all(&lab, &binary, &args.daemon_args)?;
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
