//! ambit: a node-level ambient service-mesh daemon.
//!
//! See `ARCHITECTURE.md` for how a connection and a pod event travel through these modules.

pub mod netns;
pub mod workload;
