//! The lab's one error type: what went wrong building, using or removing a lab, each variant
//! naming the lab, node, file or command involved.

use std::path::PathBuf;

use crate::netns::NetNsError;

/// Errors from building, using or removing a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The spec or a lab name is not acceptable.
    #[error("invalid lab spec: {0}")]
    Spec(String),
    /// A lab of that name (or namespaces with its names) already exists.
    #[error("lab {name:?} already exists ({detail}); remove it with `ambit lab down {name}`")]
    Exists {
        /// Lab name.
        name: String,
        /// What was found.
        detail: String,
    },
    /// A lab, node or pod of that name does not exist.
    #[error("no {what} named {name:?}{known}")]
    NotFound {
        /// `lab`, `node` or `pod`.
        what: &'static str,
        /// Name that was asked for.
        name: String,
        /// The names that do exist, formatted for the message.
        known: String,
    },
    /// An external command (`ip`, `sysctl`) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// Command line.
        command: String,
        /// Exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The lab's CA could not be created.
    #[error("cannot create the lab CA: {0}")]
    Ca(String),
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// `lab.json` or the workload file could not be encoded or parsed.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: serde_json::Error,
    },
    /// A lab namespace could not be opened or entered.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// A ztunnel (the interop tests' and the bench's peer) failed to start, exited, or did not
    /// become ready.
    #[error("ztunnel in pod {pod}: {message}")]
    Ztunnel {
        /// Pod it serves.
        pod: String,
        /// What went wrong (with its log's last lines when it ran).
        message: String,
    },
    /// A daemon failed to start, exited, or did not become ready.
    #[error("ambit on node {node}: {message}\n--- last lines of {} ---\n{tail}", log.display())]
    Daemon {
        /// Node name.
        node: String,
        /// What went wrong.
        message: String,
        /// The daemon's log file.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// An HTTP request to a daemon endpoint failed or returned an unexpected status.
    #[error("GET {url} in node {node}: {message}")]
    Http {
        /// Node whose namespace the request was made in.
        node: String,
        /// `http://127.0.0.1:<port><path>`.
        url: String,
        /// What went wrong (status and body, or the I/O error).
        message: String,
    },
    /// The lab's stand-in API server failed to start, answer, stop, or take the workloads.
    #[error("stand-in API server: {message}\n--- last lines of {} ---\n{tail}", log.display())]
    ApiServer {
        /// What went wrong.
        message: String,
        /// The stand-in's log file.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// Removing the lab left something behind.
    #[error("lab {name} was not removed completely:\n  {}", problems.join("\n  "))]
    Teardown {
        /// Lab name.
        name: String,
        /// One line per leftover.
        problems: Vec<String>,
    },
}
