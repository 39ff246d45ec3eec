//! What `ambit uninstall` did, per pod and in total, as the command prints it.

use std::fmt;
use std::path::PathBuf;

/// What was removed from one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// iptables tables (per family) that held chains of ours.
    pub iptables: Vec<String>,
    /// nftables tables of ours.
    pub nftables: Vec<String>,
    /// ip rules and table-100 routes.
    pub routes: usize,
}

/// The outcome for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Rules or routes of ours were removed.
    Released(Removed),
    /// Nothing of ours was there.
    AlreadyClean,
    /// The captured namespace no longer exists (or its path now names another one): nothing
    /// is left to capture.
    Gone,
    /// The source lists the pod but its namespace was not found on this node.
    NotFound(String),
    /// Removing failed; the pod stays in the capture memory so a rerun retries it.
    Failed(String),
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodReport {
    /// `namespace/name`.
    pub pod: String,
    /// The namespace released, when there was one.
    pub netns: Option<PathBuf>,
    /// What happened.
    pub outcome: Outcome,
}

/// Everything `ambit uninstall` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Per pod, in the order handled.
    pub pods: Vec<PodReport>,
    /// With a state directory: whether the capture memory was removed (`false`: kept,
    /// reduced to the pods that failed).
    pub memory_cleared: Option<bool>,
    /// Redirection annotations removed through the Kubernetes API.
    pub annotations_removed: usize,
    /// Redirection annotations that could not be removed (the pod is released all the same).
    pub annotations_failed: usize,
}

impl Report {
    /// Pods whose release failed.
    pub fn failures(&self) -> usize {
        self.pods
            .iter()
            .filter(|p| matches!(p.outcome, Outcome::Failed(_)))
            .count()
    }
}

impl fmt::Display for PodReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.pod)?;
        match &self.outcome {
            Outcome::Released(r) => {
                let mut parts: Vec<String> = Vec::new();
                if !r.iptables.is_empty() {
                    parts.push(format!("removed rules from {}", r.iptables.join(", ")));
                }
                if !r.nftables.is_empty() {
                    parts.push(format!("removed nft tables {}", r.nftables.join(", ")));
                }
                if r.routes > 0 {
                    parts.push(format!("removed {} policy rule(s)/route(s)", r.routes));
                }
                write!(f, "released: {}", parts.join("; "))?
            }
            Outcome::AlreadyClean => write!(f, "already clean")?,
            Outcome::Gone => write!(f, "namespace gone, nothing to release")?,
            Outcome::NotFound(why) => write!(f, "not released: {why}")?,
            Outcome::Failed(why) => write!(f, "FAILED: {why}")?,
        }
        match &self.netns {
            Some(path) => write!(f, " ({})", path.display()),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count =
            |pred: fn(&Outcome) -> bool| self.pods.iter().filter(|p| pred(&p.outcome)).count();
        write!(
            f,
            "{} released, {} already clean, {} gone, {} not found, {} failed",
            count(|o| matches!(o, Outcome::Released(_))),
            count(|o| matches!(o, Outcome::AlreadyClean)),
            count(|o| matches!(o, Outcome::Gone)),
            count(|o| matches!(o, Outcome::NotFound(_))),
            self.failures(),
        )?;
        match self.memory_cleared {
            Some(true) => write!(f, "; capture memory cleared")?,
            Some(false) => write!(f, "; capture memory kept for the failed pods")?,
            None => {}
        }
        if self.annotations_removed > 0 {
            write!(
                f,
                "; {} redirection annotation(s) removed",
                self.annotations_removed
            )?;
        }
        if self.annotations_failed > 0 {
            write!(
                f,
                "; {} redirection annotation(s) could not be removed (see the warnings)",
                self.annotations_failed
            )?;
        }
        Ok(())
    }
}
