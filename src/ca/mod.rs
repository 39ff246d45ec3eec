//! The CA service (`ambit ca serve`) and its client: workload certificates signed from CSRs
//! over Istio's `IstioCertificateService` gRPC API, so that no node holds the mesh CA's key.

pub mod proto;
