//! Command line: `ambit run`, `ambit sidecar`, `ambit ca`, and with the `lab` feature
//! `ambit lab …` and `ambit demo`. The flags themselves live in [`crate::config::flags`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app;
use crate::config::flags::{RunArgs, SidecarArgs, UninstallArgs};

/// ambit: node-level ambient service-mesh daemon.
#[derive(Parser, Debug)]
#[command(name = "ambit", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon for one node.
    Run(Box<RunArgs>),
    /// Build, inspect and remove local lab clusters made of network namespaces.
    #[cfg(feature = "lab")]
    #[command(subcommand)]
    Lab(crate::lab::cli::LabCommand),
    /// Build a 2-node lab, run ambit on both nodes, send traffic, print the flows, clean up.
    #[cfg(feature = "lab")]
    Demo(crate::demo::DemoArgs),
    /// Run the proxy as a sidecar of one pod (inside its network namespace): Istio's sidecar
    /// rules, then the proxy as UID/GID 1337. For comparing the two topologies.
    Sidecar(Box<SidecarArgs>),
    /// Manage the mesh CA.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Leave the mesh for good on this node: release every pod the node's daemon captured
    /// (redirect rules of both backends and policy routes removed in each pod's namespace),
    /// clear the capture memory, report per pod. Run it after the daemon has stopped.
    Uninstall(UninstallArgs),
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create a new root CA in Istio's plug-in layout (refuses to overwrite).
    Init {
        /// Directory to write ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem into.
        dir: PathBuf,
    },
    /// Run the CA service: signs workload certificates from CSRs over Istio's gRPC API
    /// (IstioCertificateService), for node daemons (the pods of their own node only) and
    /// sidecars (their own identity only). The only process that reads ca-key.pem.
    Serve(Box<crate::ca::args::CaServeArgs>),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    // Before any TLS: the Kubernetes client builds its rustls config from the process-wide
    // provider (identity TLS names its own).
    crate::identity::tls::install_process_provider();
    let result = match cli.command {
        Command::Run(args) => {
            crate::limits::raise_open_files_logged();
            args.into_config().and_then(app::run)
        }
        #[cfg(feature = "lab")]
        Command::Lab(cmd) => crate::lab::cli::run(cmd),
        #[cfg(feature = "lab")]
        Command::Demo(args) => crate::demo::run(args),
        Command::Sidecar(args) => {
            crate::limits::raise_open_files_logged();
            args.into_config().and_then(crate::sidecar::run)
        }
        Command::Uninstall(args) => crate::uninstall::run(args.into_config()),
        Command::Ca(CaCommand::Serve(args)) => {
            crate::limits::raise_open_files_logged();
            args.config().and_then(crate::ca::serve::run)
        }
        Command::Ca(CaCommand::Init { dir }) => crate::identity::ca::init(&dir)
            .map(|_| println!("CA created in {}", dir.display()))
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambit: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
