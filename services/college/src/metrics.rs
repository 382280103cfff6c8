//! The College's own metrics, next to the gRPC call counts every server
//! has: withdrawals by outcome, database errors by kind, and the store's
//! connection pool. docs/metrics.md lists them.
//!
//! Withdrawals are counted in the handler from what it answers, so a
//! refusal is counted once however deep it was decided (validation, the
//! token, the store). The pool is read when Prometheus scrapes
//! ([`PoolGauges`]), not copied as it changes.

use grantmesh_server::metrics::prometheus::{
    self, IntCounterVec, IntGauge, Opts, Registry,
    core::{Collector, Desc},
    proto::MetricFamily,
};

use crate::store::{AccountStore, StoreError, Withdrawal};

/// Counters the College updates as calls are answered.
#[derive(Clone)]
pub(crate) struct CollegeMetrics {
    withdrawals: IntCounterVec,
    database_errors: IntCounterVec,
    mail: IntCounterVec,
}

impl CollegeMetrics {
    pub(crate) fn new() -> Self {
        let withdrawals = IntCounterVec::new(
            Opts::new(
                "grantmesh_college_withdrawals_total",
                "Withdraw calls answered, by outcome (applied, replayed, refused) and, for refusals, the reason",
            ),
            &["outcome", "reason"],
        )
        .expect("valid metric");
        // The outcomes an operator watches are there from the start, at
        // zero, so a rate over them is defined before the first one.
        for (outcome, reason) in [
            ("applied", ""),
            ("replayed", ""),
            ("refused", "insufficient_funds"),
            ("refused", "expired"),
        ] {
            withdrawals.with_label_values(&[outcome, reason]);
        }
        let database_errors = IntCounterVec::new(
            Opts::new(
                "grantmesh_college_database_errors_total",
                "Calls that failed because of the database, by kind of failure",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let mail = IntCounterVec::new(
            Opts::new(
                "grantmesh_college_mail_total",
                "Sign-up messages (codes, notices) handed to the mail queue (queued) or refused by a full queue (dropped)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for outcome in ["queued", "dropped"] {
            mail.with_label_values(&[outcome]);
        }
        Self {
            withdrawals,
            database_errors,
            mail,
        }
    }

    /// A sign-up message taken by the mail queue.
    pub(crate) fn mail_queued(&self) {
        self.mail.with_label_values(&["queued"]).inc();
    }

    /// A sign-up message the full mail queue refused.
    pub(crate) fn mail_dropped(&self) {
        self.mail.with_label_values(&["dropped"]).inc();
    }

    /// A withdrawal applied now, or replayed from an earlier call with its key.
    pub(crate) fn withdrawal(&self, withdrawal: &Withdrawal) {
        let outcome = if withdrawal.replayed {
            "replayed"
        } else {
            "applied"
        };
        self.withdrawals.with_label_values(&[outcome, ""]).inc();
    }

    /// A withdrawal refused for `reason` (see [`StoreError::refusal`]).
    pub(crate) fn withdrawal_refused(&self, reason: &str) {
        self.withdrawals
            .with_label_values(&["refused", reason])
            .inc();
    }

    /// Counts `err` if the database itself failed.
    pub(crate) fn store_error(&self, err: &StoreError) {
        if let Some(kind) = err.database_error_kind() {
            self.database_errors.with_label_values(&[kind]).inc();
        }
    }

    /// Registers these counters and the pool gauges read from `store`.
    pub(crate) fn register(
        &self,
        registry: &Registry,
        store: AccountStore,
    ) -> prometheus::Result<()> {
        registry.register(Box::new(self.withdrawals.clone()))?;
        registry.register(Box::new(self.database_errors.clone()))?;
        registry.register(Box::new(self.mail.clone()))?;
        registry.register(Box::new(PoolGauges::new(store)))
    }
}

/// The label for a withdrawal refused before it reached the store.
pub(crate) fn refusal_of(status: &tonic::Status) -> &'static str {
    match status.code() {
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::InvalidArgument => "invalid",
        _ => "other",
    }
}

/// `grantmesh_college_store_pool_*`: the pool as `deadpool` reports it at
/// each scrape.
struct PoolGauges {
    store: AccountStore,
    size: IntGauge,
    available: IntGauge,
    waiting: IntGauge,
    max: IntGauge,
    /// The batcher's own counts ([`crate::store::BatchSizes`]), caught up at each scrape.
    abandoned: prometheus::IntCounter,
    deferred: prometheus::IntCounter,
    /// Batches written in one round trip from a guess, by whether it held.
    guesses: prometheus::IntCounterVec,
}

impl PoolGauges {
    fn new(store: AccountStore) -> Self {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        Self {
            store,
            size: gauge(
                "grantmesh_college_store_pool_connections",
                "Connections the store pool holds now, idle or in use",
            ),
            available: gauge(
                "grantmesh_college_store_pool_available",
                "Idle connections in the store pool, ready for a call",
            ),
            waiting: gauge(
                "grantmesh_college_store_pool_waiting",
                "Calls waiting for a connection from the store pool",
            ),
            max: gauge(
                "grantmesh_college_store_pool_max",
                "The most connections the store pool may hold (--pool-size)",
            ),
            abandoned: prometheus::IntCounter::new(
                "grantmesh_college_withdrawals_abandoned_total",
                "Queued withdrawals dropped unapplied because their caller had gone",
            )
            .expect("valid metric"),
            deferred: prometheus::IntCounter::new(
                "grantmesh_college_withdrawals_deferred_total",
                "Withdrawals that went again on their own, their account locked by another writer",
            )
            .expect("valid metric"),
            guesses: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "grantmesh_college_withdrawal_guesses_total",
                    "Batches tried in one round trip from what this College last knew of their accounts, by whether that still held",
                ),
                &["held"],
            )
            .expect("valid metric"),
        }
    }
}

impl Collector for PoolGauges {
    fn desc(&self) -> Vec<&Desc> {
        [&self.size, &self.available, &self.waiting, &self.max]
            .into_iter()
            .flat_map(|gauge| gauge.desc())
            .chain(self.abandoned.desc())
            .chain(self.deferred.desc())
            .chain(self.guesses.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let status = self.store.pool_status();
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.size.set(count(status.size));
        self.available.set(count(status.available));
        self.waiting.set(count(status.waiting));
        self.max.set(count(status.max_size));
        let sizes = self.store.batch_sizes();
        let catch_up = |counter: &prometheus::IntCounter, now: u64| {
            counter.inc_by(now.saturating_sub(counter.get()));
        };
        catch_up(&self.abandoned, sizes.abandoned());
        catch_up(&self.deferred, sizes.deferred());
        catch_up(
            &self.guesses.with_label_values(&["true"]),
            sizes.guesses_held(),
        );
        catch_up(
            &self.guesses.with_label_values(&["false"]),
            sizes.guesses_missed(),
        );
        [&self.size, &self.available, &self.waiting, &self.max]
            .into_iter()
            .flat_map(|gauge| gauge.collect())
            .chain(self.abandoned.collect())
            .chain(self.deferred.collect())
            .chain(self.guesses.collect())
            .collect()
    }
}
