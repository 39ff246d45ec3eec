//! ambit: a node-level ambient service-mesh daemon.
//!
//! See `ARCHITECTURE.md` for how a connection and a pod event travel through these modules.

pub mod admin;
pub mod app;
pub mod ca;
pub mod capture;
pub mod cli;
pub mod config;
pub mod copy;
#[cfg(feature = "lab")]
pub mod demo;
pub mod drain;
pub mod explain;
pub mod flows;
pub mod hbone;
pub mod identity;
pub mod inspect;
pub mod k8s;
#[cfg(feature = "lab")]
pub mod lab;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod netns;
pub mod podns;
pub mod policy;
pub mod proxy;
pub mod reconcile;
pub mod rules;
pub mod sidecar;
pub mod signal;
pub mod socket;
pub mod uninstall;
pub mod workload;
