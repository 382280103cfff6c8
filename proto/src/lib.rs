//! The grantmesh gRPC contracts, package `grantmesh.v1`.
//!
//! The `.proto` files under `proto/proto/` are the source of truth; this
//! crate compiles them at build time without a system `protoc` and re-exports
//! the generated messages, clients and servers. [`FILE_DESCRIPTOR_SET`] is
//! what the servers hand to gRPC reflection so that `grpcurl` needs no proto
//! files.

mod generated {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("grantmesh.v1");
}

/// Every generated message, client and server of `grantmesh.v1`.
pub mod v1 {
    pub use crate::generated::*;
}

pub use v1::agency_client::AgencyClient;
pub use v1::agency_server::{Agency, AgencyServer};
pub use v1::college_client::CollegeClient;
pub use v1::college_server::{College, CollegeServer};
pub use v1::registry_client::RegistryClient;
pub use v1::registry_server::{Registry, RegistryServer};

/// The encoded `FileDescriptorSet` of every grantmesh proto file (with its
/// imports), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/grantmesh_descriptor.bin"));

/// Fully qualified gRPC service names, as health checks and reflection use them.
pub mod service_names {
    pub const REGISTRY: &str = "grantmesh.v1.Registry";
    pub const AGENCY: &str = "grantmesh.v1.Agency";
    pub const COLLEGE: &str = "grantmesh.v1.College";
}
