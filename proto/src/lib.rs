//! The grantmesh gRPC contracts, package `grantmesh.v1`.
//!
//! The `.proto` files under `proto/proto/` are the source of truth; this
//! crate compiles them at build time without a system `protoc` and re-exports
//! the generated messages, clients and servers. [`FILE_DESCRIPTOR_SET`] is
//! what the servers hand to gRPC reflection so that `grpcurl` needs no proto
//! files.

pub mod listing;
pub mod money;

mod generated {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("grantmesh.v1");
}

/// Every generated message, client and server of `grantmesh.v1`.
pub mod v1 {
    pub use crate::generated::*;
    pub use crate::listing::ListInstancesReply;
}

pub use v1::agency_client::AgencyClient;
pub use v1::agency_server::{Agency, AgencyServer};
pub use v1::college_client::CollegeClient;
pub use v1::college_server::{College, CollegeServer};
pub use v1::issuer_client::IssuerClient;
pub use v1::issuer_server::{Issuer, IssuerServer};
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
    pub const ISSUER: &str = "grantmesh.v1.Issuer";
}

/// How error messages show what a caller sent.
pub mod errors {
    /// Most characters of a caller's value that a status message repeats: a
    /// message that echoed a megabyte id whole would itself exceed the
    /// client's message limit and arrive as RESOURCE_EXHAUSTED instead of
    /// the INVALID_ARGUMENT that names the problem.
    pub const QUOTED_CHARS: usize = 64;

    /// `value` quoted for a status message, cut to [`QUOTED_CHARS`] characters.
    pub fn quote(value: &str) -> String {
        match value.char_indices().nth(QUOTED_CHARS) {
            None => format!("{value:?}"),
            Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn long_values_are_cut_and_short_ones_kept() {
            assert_eq!(quote("abc"), "\"abc\"");
            let long = "x".repeat(1_000_000);
            let shown = quote(&long);
            assert!(shown.len() < 100, "{shown}");
            assert!(shown.ends_with("(1000000 bytes)"), "{shown}");
            assert_eq!(quote("\0"), "\"\\0\"");
        }
    }
}

/// Page tokens of the listing calls: `<micros since the epoch>.<id>` of the
/// last entry of a page, the cursor of a `(time, id)` ordering.
pub mod paging {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// The token for a page whose last entry is `(at, id)`.
    pub fn token(at: SystemTime, id: &str) -> String {
        let micros = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        format!("{micros}.{id}")
    }

    /// The cursor in `token` (`None` for the first page, an empty token).
    pub fn parse<Id: std::str::FromStr>(
        token: &str,
    ) -> Result<Option<(SystemTime, Id)>, tonic::Status> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || {
            tonic::Status::invalid_argument(format!(
                "page_token {} did not come from a previous page",
                crate::errors::quote(token)
            ))
        };
        let (micros, id) = token.split_once('.').ok_or_else(bad)?;
        let micros: u64 = micros.parse().map_err(|_| bad())?;
        Ok(Some((
            UNIX_EPOCH + Duration::from_micros(micros),
            id.parse().map_err(|_| bad())?,
        )))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_token_gives_back_its_cursor_and_junk_is_refused() {
            let at = UNIX_EPOCH + Duration::from_micros(1_796_000_000_123_456);
            let cursor = parse::<String>(&token(at, "abc")).unwrap();
            assert_eq!(cursor, Some((at, "abc".to_owned())));
            assert_eq!(parse::<String>("").unwrap(), None);
            let bad = parse::<u32>("12.x").unwrap_err();
            assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        }
    }
}
