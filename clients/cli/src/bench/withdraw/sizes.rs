//! The batch sizes the College used in one cell, read back from the journal.
//!
//! Every withdrawal of one College batch is written by one transaction (its
//! lock-and-load, then its write and `COMMIT`), so the journal rows of a
//! batch share their `xmin`: grouping the mesh's rows of a cell by `xmin`
//! gives the exact size of every batch the College committed, across
//! processes and without any counter in the College. (Only applied
//! withdrawals are journalled; in the bench all are. A withdrawal deferred
//! because another writer held its account's lock is counted in the batch
//! that applied it, not the one that skipped it.)

use anyhow::Context as _;

/// The size of every batch of one cell, in no order.
#[derive(Clone, Debug, Default)]
pub(super) struct BatchSizes {
    sizes: Vec<u64>,
}

impl BatchSizes {
    /// Adds the batches of the mesh run whose idempotency keys start `mesh-{tag}-`.
    pub(super) async fn add(
        &mut self,
        db: &tokio_postgres::Client,
        tag: &str,
    ) -> anyhow::Result<()> {
        let rows = db
            .query(
                "SELECT count(*) FROM withdrawals WHERE idempotency_key LIKE $1 GROUP BY xmin::text",
                &[&format!("mesh-{tag}-%")],
            )
            .await
            .context("failed to read the College's batch sizes from the journal")?;
        self.sizes
            .extend(rows.iter().map(|row| row.get::<_, i64>(0) as u64));
        Ok(())
    }

    /// Batches seen.
    pub(super) fn batches(&self) -> usize {
        self.sizes.len()
    }

    /// Withdrawals per batch on average (1 when none was seen).
    pub(super) fn mean(&self) -> f64 {
        if self.sizes.is_empty() {
            return 1.0;
        }
        self.sizes.iter().sum::<u64>() as f64 / self.sizes.len() as f64
    }

    /// The size at quantile `q` (0..=1) of batches (not of withdrawals).
    pub(super) fn quantile(&self, q: f64) -> u64 {
        let mut sorted = self.sizes.clone();
        sorted.sort_unstable();
        match sorted.len() {
            0 => 0,
            n => sorted[((n - 1) as f64 * q).round() as usize],
        }
    }

    /// Share of the withdrawals that went in a batch of more than one.
    pub(super) fn batched_share(&self) -> f64 {
        let all: u64 = self.sizes.iter().sum();
        let alone = self.sizes.iter().filter(|&&s| s == 1).count() as u64;
        if all == 0 {
            0.0
        } else {
            (all - alone) as f64 / all as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sizes_of_a_cell_give_its_mean_quantiles_and_batched_share() {
        let none = BatchSizes::default();
        assert_eq!(none.mean(), 1.0);
        assert_eq!(none.quantile(0.5), 0);
        assert_eq!(none.batched_share(), 0.0);
        let sizes = BatchSizes {
            sizes: vec![30, 34, 32, 1],
        };
        assert!((sizes.mean() - 97.0 / 4.0).abs() < 1e-9);
        assert_eq!(sizes.quantile(0.5), 32);
        assert_eq!(sizes.quantile(1.0), 34);
        assert!((sizes.batched_share() - 96.0 / 97.0).abs() < 1e-9);
    }
}
