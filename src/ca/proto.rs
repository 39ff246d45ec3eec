//! The CA API's generated types and gRPC stubs (`proto/istio/v1/auth/ca.proto`, package
//! `istio.v1.auth`), shared by the service and its clients.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("istio.v1.auth");
