//! The registry's own metrics, next to the gRPC call counts every server
//! has: live instances per service, removals by reason, and registrations
//! or watches refused by a limit. docs/metrics.md lists them.
//!
//! The instance counts are read from the state when Prometheus scrapes
//! ([`Instances`]), so they are never a second copy that could drift from
//! what `ListInstances` answers.

use std::sync::Arc;

use grantmesh_server::metrics::prometheus::{
    self, IntCounterVec, IntGaugeVec, Opts, Registry,
    core::{Collector, Desc},
    proto::MetricFamily,
};

use crate::state::{Full, RegistryState, RemovalReason};

/// Counters the registry updates as things happen.
#[derive(Clone)]
pub struct RegistryMetrics {
    removals: IntCounterVec,
    refused: IntCounterVec,
}

impl Default for RegistryMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RegistryMetrics {
    /// Counters not yet registered anywhere (a state in a unit test counts
    /// into them unseen).
    pub fn new() -> Self {
        let removals = IntCounterVec::new(
            Opts::new(
                "grantmesh_registry_removals_total",
                "Instances removed from the registry, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        // Every reason appears from the start, at zero, so a rate over it
        // is defined before the first removal.
        for reason in [
            RemovalReason::Deregistered,
            RemovalReason::TtlExpired,
            RemovalReason::KeepAliveClosed,
        ] {
            removals.with_label_values(&[reason.metric_label()]);
        }
        let refused = IntCounterVec::new(
            Opts::new(
                "grantmesh_registry_refused_total",
                "Registrations and watches refused because a limit of the registry was reached",
            ),
            &["limit"],
        )
        .expect("valid metric");
        Self { removals, refused }
    }

    pub(crate) fn removed(&self, reason: RemovalReason) {
        self.removals
            .with_label_values(&[reason.metric_label()])
            .inc();
    }

    pub(crate) fn refused(&self, full: &Full) {
        let limit = match full {
            Full::Services(_) => "services",
            Full::Instances(..) => "instances_per_service",
            Full::Member(..) => "instances_per_member",
        };
        self.refused.with_label_values(&[limit]).inc();
    }

    /// Registers these counters and the instance gauge read from `state`.
    pub(crate) fn register(
        &self,
        registry: &Registry,
        state: Arc<RegistryState>,
    ) -> prometheus::Result<()> {
        registry.register(Box::new(self.removals.clone()))?;
        registry.register(Box::new(self.refused.clone()))?;
        registry.register(Box::new(Instances::new(state)))
    }
}

/// `grantmesh_registry_instances{service}`, counted in the state at each scrape.
struct Instances {
    state: Arc<RegistryState>,
    /// Only for its description; each scrape fills a fresh one.
    template: IntGaugeVec,
}

impl Instances {
    fn new(state: Arc<RegistryState>) -> Self {
        Self {
            state,
            template: Self::gauge(),
        }
    }

    fn gauge() -> IntGaugeVec {
        IntGaugeVec::new(
            Opts::new(
                "grantmesh_registry_instances",
                "Live instances registered now, by service",
            ),
            &["service"],
        )
        .expect("valid metric")
    }
}

impl Collector for Instances {
    fn desc(&self) -> Vec<&Desc> {
        self.template.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let gauge = Self::gauge();
        for (service, instances) in self.state.instance_counts() {
            gauge
                .with_label_values(&[&service])
                .set(i64::try_from(instances).unwrap_or(i64::MAX));
        }
        gauge.collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use grantmesh_proto::v1::Instance;

    use super::*;

    fn instance(service: &str, id: &str) -> Instance {
        Instance {
            id: id.to_owned(),
            service: service.to_owned(),
            address: format!("http://127.0.0.1:1/{id}"),
            ..Instance::default()
        }
    }

    fn scrape(registry: &Registry) -> String {
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_scrape_counts_live_instances_per_service_and_removals_by_reason() {
        let state = Arc::new(RegistryState::new());
        let registry = Registry::new();
        state
            .metrics()
            .register(&registry, Arc::clone(&state))
            .unwrap();
        let ttl = Duration::from_secs(3);
        state
            .register(instance("college", "c1"), ttl, None)
            .unwrap();
        state
            .register(instance("college", "c2"), ttl, None)
            .unwrap();
        state.register(instance("agency", "a1"), ttl, None).unwrap();
        let text = scrape(&registry);
        assert!(
            text.contains(r#"grantmesh_registry_instances{service="college"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"grantmesh_registry_instances{service="agency"} 1"#),
            "{text}"
        );

        state.remove("college", "c1", RemovalReason::Deregistered);
        tokio::time::advance(Duration::from_secs(1)).await;
        state.heartbeat("college", "c2", None).unwrap().unwrap();
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert_eq!(state.expire().len(), 1, "the agency's lease ran out");
        let text = scrape(&registry);
        assert!(
            text.contains(r#"grantmesh_registry_instances{service="college"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"service="agency""#),
            "a service with no instances left is not reported: {text}"
        );
        assert!(
            text.contains(r#"grantmesh_registry_removals_total{reason="deregistered"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"grantmesh_registry_removals_total{reason="ttl_expired"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"grantmesh_registry_removals_total{reason="keepalive_closed"} 0"#),
            "{text}"
        );
    }
}
