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
    /// Explain what happens to a new connection from a pod of this node to an address: the
    /// capture rule in the pod's netns (with its counters), the route, the destination's
    /// listener and policy decision, and the flows seen. Asks this node's daemon.
    Explain(ExplainArgs),
    /// Show this node daemon's state as tables (like `istioctl ztunnel-config`).
    Config(ConfigArgs),
}

/// `ambit config` flags.
#[derive(clap::Args, Debug)]
struct ConfigArgs {
    /// What to show.
    #[arg(value_enum)]
    section: crate::inspect::Section,
    /// The daemon's admin endpoint.
    #[arg(long, default_value = crate::config::DEFAULT_ADMIN_ADDR)]
    admin: std::net::SocketAddr,
    /// Output: a table, or the daemon's JSON.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Output,
}

/// GETs `path` from the daemon at `admin`, requiring a 200.
fn admin_get(admin: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    let (status, body) =
        crate::admin::client::get(admin, path, std::time::Duration::from_secs(10))?;
    if status != 200 {
        anyhow::bail!(
            "the daemon at {admin} answered {status} to {path}: {}",
            body.trim()
        );
    }
    Ok(body)
}

fn show_config(args: ConfigArgs) -> anyhow::Result<()> {
    use crate::inspect::{json_part, source_path, table, Section};
    let parse = |body: &str, path: &str| -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(body)
            .map_err(|e| anyhow::anyhow!("the daemon's {path} is not JSON: {e}"))
    };
    let path = source_path(args.section);
    let doc = parse(&admin_get(args.admin, path)?, path)?;
    match args.output {
        Output::Json => println!("{:#}", json_part(args.section, &doc)),
        Output::Text => {
            let pools = match args.section {
                Section::Connections => Some(parse(
                    &admin_get(args.admin, "/config_dump")?,
                    "/config_dump",
                )?),
                _ => None,
            };
            print!("{}", table(args.section, &doc, pools.as_ref()));
        }
    }
    Ok(())
}

/// `ambit explain` flags.
#[derive(clap::Args, Debug)]
struct ExplainArgs {
    /// The source pod: name, namespace/name or IP (a pod of this node).
    src: String,
    /// The destination, ip:port (a pod, a Service's ClusterIP, or any address).
    dst: std::net::SocketAddr,
    /// The daemon's admin endpoint.
    #[arg(long, default_value = crate::config::DEFAULT_ADMIN_ADDR)]
    admin: std::net::SocketAddr,
    /// Output: the steps as text, or the daemon's JSON.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Output,
}

/// Output format of the query commands.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Output {
    /// Human-readable.
    Text,
    /// JSON, as the daemon answers.
    Json,
}

fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    use crate::admin::client::encode_segment;
    let path = format!(
        "/explain/{}/{}",
        encode_segment(&args.src),
        encode_segment(&args.dst.to_string())
    );
    let body = admin_get(args.admin, &path)?;
    match args.output {
        Output::Json => println!("{}", body.trim()),
        Output::Text => {
            let e: crate::explain::Explanation = serde_json::from_str(&body)
                .map_err(|e| anyhow::anyhow!("the daemon's explanation does not parse: {e}"))?;
            print!("{}", crate::explain::text::render(&e));
        }
    }
    Ok(())
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
    /// Revoke workload certificates: add their serial numbers to DIR/ca-crl.pem, re-signed with
    /// the CA key (run where ca-key.pem lives). Proxies started with --ca-crl pick it up,
    /// refuse the revoked certificates and close live connections using them.
    Revoke(crate::ca::args::CaRevokeArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held until the end of main: dropping it flushes the lines still queued.
    let logging = crate::logging::init(match &cli.command {
        Command::Run(args) => args.log_format,
        Command::Sidecar(args) => args.log_format,
        _ => crate::config::LogFormat::Text,
    });
    // Before any TLS: the Kubernetes client builds its rustls config from the process-wide
    // provider (identity TLS names its own).
    crate::identity::tls::install_process_provider();
    let result = match cli.command {
        Command::Run(args) => {
            crate::limits::raise_open_files_logged();
            let log = logging.control.clone();
            args.into_config().and_then(|c| app::run(c, log))
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
        Command::Explain(args) => explain(args),
        Command::Config(args) => show_config(args),
        Command::Ca(CaCommand::Serve(args)) => {
            crate::limits::raise_open_files_logged();
            args.config().and_then(crate::ca::serve::run)
        }
        Command::Ca(CaCommand::Revoke(args)) => args.run(),
        Command::Ca(CaCommand::Init { dir }) => crate::identity::ca::init(&dir)
            .map(|_| println!("CA created in {}", dir.display()))
            .map_err(anyhow::Error::from),
    };
    // Flush the queued log lines before the error line, so it comes last.
    drop(logging);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambit: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
