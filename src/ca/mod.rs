//! The CA service (`ambit ca serve`) and its client: workload certificates signed from CSRs
//! over Istio's `IstioCertificateService` gRPC API, so that no node holds the mesh CA's key.

pub mod args;
pub mod auth;
pub mod client;
pub mod directory;
pub mod policy;
pub mod proto;
pub mod publish;
pub mod serve;
pub mod service;

#[cfg(test)]
mod tests;
