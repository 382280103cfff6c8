//! Joining the grantmesh mesh and calling into it.
//!
//! - [`Registrar`]: what a server instance runs. It registers with every
//!   registry replica it is given, keeps its lease alive over a `KeepAlive`
//!   stream, registers again when a registry restarts or forgets it, and
//!   deregisters on shutdown.
//! - [`Balancer`]: what a client holds for one service. It follows the
//!   registry's `Watch` stream, keeps one lazily connected channel per live
//!   instance, and picks an instance per call by power of two choices over
//!   in-flight calls. A removed instance is dropped from the pick set in the
//!   same step that applies the registry's change, so no call that starts
//!   after the change can go to it. Calls that fail with `UNAVAILABLE` are
//!   retried (bounded) on another instance, and the instance that failed is
//!   set aside for a moment so concurrent callers avoid it too.
//!
//! Dependencies point one way: `grantmesh-proto` ← this crate ← services, clients.

pub mod activity;
mod balancer;
pub mod incoming;
pub mod peers;
mod registrar;
pub mod tls;

pub use balancer::{Balancer, BalancerOptions, MeshView, Resend, SnapshotParts};
pub use registrar::{Registrar, RegistrarOptions};

use std::time::Duration;

/// Heartbeat interval used when none is configured.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Lease TTL used when none is configured.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3);

/// A fresh instance id for `service`, stable for the life of the process
/// that makes it: `college-3f2a9c1e`.
pub fn new_instance_id(service: &str) -> String {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!("{service}-{}", &uuid[..12])
}

/// Splits a comma-separated list of registry URLs, adding `http://` where no
/// scheme was given.
pub fn parse_registry_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(with_scheme)
        .collect()
}

/// `127.0.0.1:7000` → `http://127.0.0.1:7000`; URLs with a scheme are kept.
pub fn with_scheme(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// The service name registries answer to, and name in their certificates.
pub const REGISTRY_SERVICE: &str = "registry";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_lists_are_split_and_given_a_scheme() {
        assert_eq!(
            parse_registry_list("127.0.0.1:1, http://h:2,,"),
            vec!["http://127.0.0.1:1".to_owned(), "http://h:2".to_owned()]
        );
    }

    #[test]
    fn instance_ids_start_with_the_service_and_differ() {
        let a = new_instance_id("college");
        assert!(a.starts_with("college-"));
        assert_ne!(a, new_instance_id("college"));
    }
}
