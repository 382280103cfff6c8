//! Compiles `proto/grantmesh/v1/*.proto` with `protox` (no system `protoc`
//! needed) and generates the tonic clients and servers from the result. The
//! file descriptor set is also written out so that servers can offer gRPC
//! reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "grantmesh/v1/common.proto",
    "grantmesh/v1/registry.proto",
    "grantmesh/v1/agency.proto",
    "grantmesh/v1/college.proto",
    "grantmesh/v1/issuer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("grantmesh_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        protox::prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Written by hand (src/listing.rs) so a registry can send instances
        // it encoded once; the same wire format.
        .extern_path(
            ".grantmesh.v1.ListInstancesReply",
            "crate::listing::ListInstancesReply",
        )
        .compile_fds(fds)?;
    Ok(())
}
