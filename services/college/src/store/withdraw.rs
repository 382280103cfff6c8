//! The one path of a batch of withdrawals, on either backend: lock and
//! load, decide, write. A store that keeps a guess of the accounts' state
//! ([`Store::guess`]) first tries the decision made from it in one round
//! trip, which writes only if the guess was right; a refusal, or a guess
//! found wrong, takes the locked path.

use std::sync::Arc;

use super::batcher::BatchSizes;
use super::error::refused;
use super::{Result, Store, StoreError, Withdrawal};
use crate::ledger::{self, Decision, Earlier, Outcome, Request};

/// How many times a batch is tried again when a backstop refused its write
/// (a race with a writer outside this code) or the database reported a
/// serialization failure or deadlock, before its callers are told to retry.
const BATCH_TRIES: usize = 5;

/// A withdrawal's answer from one batch: `None` when its account's lock was
/// held by another writer, so it was not judged and must go again in a
/// batch that waits for that lock ([`Outcome::Deferred`]).
pub(super) type Answer = Option<Result<Withdrawal>>;

/// Applies `batch` in one transaction: an answer per withdrawal, in order,
/// or one error for the whole batch, which then applied nothing.
pub(super) async fn apply(
    store: &Arc<dyn Store>,
    batch: &[Request],
    sizes: &BatchSizes,
) -> Result<Vec<Answer>> {
    if let Some(guess) = store.guess(batch) {
        let mut decision = ledger::decide(&guess.locked, batch);
        if decision.only_writes() {
            if let Some((ids, at)) = store.write_guessed(&guess, &decision).await? {
                sizes.guessed(true);
                decision.at = at;
                return answers(batch, &decision, &ids);
            }
            sizes.guessed(false);
        }
    }
    for _ in 0..BATCH_TRIES {
        let mut ledger = store.ledger().await?;
        let locked = ledger.lock_and_load(batch).await?;
        let decision = ledger::decide(&locked, batch);
        match ledger.write(&decision).await {
            Ok(ids) => return answers(batch, &decision, &ids),
            Err(StoreError::Contended(_)) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(StoreError::Contended(
        "the central store is too busy right now; retry the withdrawal with the same key".into(),
    ))
}

/// Each request's answer from the decision and the ids its entries got.
fn answers(batch: &[Request], decision: &Decision, ids: &[i64]) -> Result<Vec<Answer>> {
    if ids.len() != decision.entries.len() {
        return Err(StoreError::SqliteCall(format!(
            "the store wrote {} journal entries of {}",
            ids.len(),
            decision.entries.len()
        )));
    }
    Ok(batch
        .iter()
        .zip(&decision.outcomes)
        .map(|(request, outcome)| match outcome {
            Outcome::Applied { entry, balance } => Some(Ok(Withdrawal {
                transaction: decision.entry_row(*entry, ids[*entry]),
                balance: *balance,
                replayed: false,
            })),
            Outcome::Replayed { earlier, balance } => Some(Ok(Withdrawal {
                transaction: match earlier {
                    Earlier::Journal(row) => row.clone(),
                    Earlier::Batch(entry) => decision.entry_row(*entry, ids[*entry]),
                },
                balance: *balance,
                replayed: true,
            })),
            Outcome::Refused(refusal) => Some(Err(refused(request, refusal))),
            Outcome::Deferred => None,
        })
        .collect())
}
