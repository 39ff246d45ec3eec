//! Generates the gRPC code for the CA API (`proto/istio/v1/auth/ca.proto`) with
//! tonic-prost-build. Needs `protoc` (Debian: protobuf-compiler; `./dev` installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/istio/v1/auth/ca.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_protos(&[proto], &["proto"])?;
    Ok(())
}
