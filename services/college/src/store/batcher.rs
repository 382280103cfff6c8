//! The withdrawal batcher: concurrent withdrawals are applied together, many
//! per transaction, one commit and one notification per batch.
//!
//! Every `Withdraw` joins a queue. When fewer than the backend's limit of
//! batches are in flight, the call starts a batch at once with everything
//! queued (up to [`MAX_BATCH`]); otherwise it waits in the queue, and the
//! next batch to finish takes the queue with it as its next batch. So
//! there is no timer: one client alone gets a batch of one and no added
//! latency, and under load a batch is whatever queued while the one before
//! was in flight, which grows and shrinks with the load.
//!
//! A call that finds nothing queued and a free slot applies its withdrawal
//! itself, on its own task, as a batch of one: at one client every call
//! does, and it costs no hand-off to another task and back (two wake-ups,
//! often across threads, which at one client are most of what the College
//! adds per call). Anything that queues meanwhile is handed to a batch task
//! when that call finishes, or when it is dropped mid-statement (its client
//! gave up): the backend's statement is then abandoned as any dropped call's
//! is (see `postgres::withdraw_batch`), applied or not as a whole, and the
//! slot is released.
//!
//! A batch of queued calls runs on a task of its own, so a caller that goes
//! away only drops its answer: the batch, and its database statement,
//! always run to completion. Each caller gets its own answer; a batch that
//! fails as a whole fails each of its callers with the same error and
//! applies nothing.
//!
//! The batch sizes seen are counted in a [`BatchSizes`] histogram.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt as _;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{Backend, Result, StoreError, Withdrawal};

/// The most withdrawals applied in one batch. A batch is one database call
/// holding its accounts' row locks while it runs, and its notification
/// names the accounts it touched; 256 keeps a batch's call to a few
/// milliseconds and its notification within PostgreSQL's 8000-byte payload
/// limit, while at 64 concurrent clients a batch is rarely full.
pub const MAX_BATCH: usize = 256;

/// Withdrawals that may wait in one College's queue. Beyond this the College
/// is far behind its database, and a new call is refused with
/// RESOURCE_EXHAUSTED (retry with the same key) rather than queued without end.
pub const MAX_QUEUED: usize = 16 * MAX_BATCH;

/// Batches one College keeps in flight on PostgreSQL. Two let one batch
/// run its statement while the other commits (commits carrying a NOTIFY go
/// one at a time, database-wide); more only split the queue into smaller
/// batches that wait for the same commit slot. At most half the pool, so
/// reads always find a connection.
pub const MAX_BATCHES_IN_FLIGHT: usize = 2;

/// One withdrawal as a caller asked for it.
#[derive(Clone, Debug)]
pub(super) struct Request {
    pub(super) account: Uuid,
    pub(super) caller: Uuid,
    pub(super) amount: i64,
    pub(super) key: String,
    pub(super) memo: String,
}

/// A queued withdrawal and where its answer goes.
struct Pending {
    request: Request,
    reply: oneshot::Sender<Result<Withdrawal>>,
}

/// The queue and the batches in flight, shared by every clone of the store.
pub(super) struct Batcher {
    backend: Backend,
    /// Batches that may be in flight at once.
    limit: usize,
    state: Mutex<State>,
    sizes: Arc<BatchSizes>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Pending>,
    in_flight: usize,
}

impl Batcher {
    pub(super) fn new(backend: Backend, limit: usize) -> Arc<Self> {
        Arc::new(Self {
            backend,
            limit: limit.max(1),
            state: Mutex::default(),
            sizes: Arc::default(),
        })
    }

    pub(super) fn sizes(&self) -> &Arc<BatchSizes> {
        &self.sizes
    }

    /// Withdrawals waiting for a batch (not those in flight).
    pub(super) fn queued(&self) -> usize {
        self.state.lock().expect("batcher poisoned").queue.len()
    }

    /// Applies `request` at once if nothing is queued and a slot is free;
    /// otherwise queues it. Either way, waits for its answer.
    pub(super) async fn submit(self: &Arc<Self>, request: Request) -> Result<Withdrawal> {
        if self.take_idle_slot() {
            return self.apply_alone(request).await;
        }
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.state.lock().expect("batcher poisoned");
            if state.queue.len() >= MAX_QUEUED {
                return Err(StoreError::Overloaded(format!(
                    "this college already has {MAX_QUEUED} withdrawals waiting for the central store; \
                     retry shortly with the same key"
                )));
            }
            state.queue.push_back(Pending { request, reply });
            if state.in_flight < self.limit {
                state.in_flight += 1;
                Some(take_batch(&mut state.queue))
            } else {
                None
            }
        };
        if let Some(batch) = start {
            tokio::spawn(Arc::clone(self).run(batch));
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Shared(Arc::new(StoreError::SqliteCall(
                "the withdrawal batch stopped before answering".into(),
            ))))
        })
    }

    /// Takes a slot if one is free and nothing is queued (which would go first).
    fn take_idle_slot(&self) -> bool {
        let mut state = self.state.lock().expect("batcher poisoned");
        let idle = state.queue.is_empty() && state.in_flight < self.limit;
        if idle {
            state.in_flight += 1;
        }
        idle
    }

    /// Applies `request` as a batch of one on the caller's task, holding
    /// the slot taken for it until done (or dropped).
    async fn apply_alone(self: &Arc<Self>, request: Request) -> Result<Withdrawal> {
        let slot = Slot(Arc::clone(self));
        self.sizes.record(1);
        let outcome = self.apply(std::slice::from_ref(&request)).await;
        drop(slot);
        outcome.and_then(|answers| {
            answers.into_iter().next().unwrap_or_else(|| {
                Err(StoreError::SqliteCall(
                    "the withdrawal batch gave no answer".into(),
                ))
            })
        })
    }

    /// One batch through the backend; a panic fails the batch, not the batcher.
    async fn apply(&self, requests: &[Request]) -> Result<Vec<Result<Withdrawal>>> {
        std::panic::AssertUnwindSafe(self.backend.withdraw_batch(requests))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::SqliteCall(
                    "the withdrawal batch panicked".into(),
                ))
            })
    }

    /// Gives up a slot: hands whatever queued meanwhile to a batch task, or
    /// frees the slot if nothing did.
    fn release(self: &Arc<Self>) {
        let mut state = self.state.lock().expect("batcher poisoned");
        let runtime = tokio::runtime::Handle::try_current();
        if state.queue.is_empty() || runtime.is_err() {
            // Without a runtime (it is shutting down) the queued callers go
            // with it, each told its batch stopped (their replies dropped).
            state.queue.clear();
            state.in_flight -= 1;
            return;
        }
        let batch = take_batch(&mut state.queue);
        drop(state);
        if let Ok(runtime) = runtime {
            runtime.spawn(Arc::clone(self).run(batch));
        }
    }

    /// Applies `batch`, then whatever queued meanwhile, until the queue is empty.
    async fn run(self: Arc<Self>, mut batch: Vec<Pending>) {
        loop {
            self.sizes.record(batch.len());
            let requests: Vec<Request> = batch.iter().map(|p| p.request.clone()).collect();
            match self.apply(&requests).await {
                Ok(answers) => {
                    debug_assert_eq!(answers.len(), batch.len());
                    for (pending, answer) in batch.drain(..).zip(answers) {
                        // A caller that went away just does not hear it.
                        let _ = pending.reply.send(answer);
                    }
                }
                Err(err) => {
                    let err = Arc::new(err);
                    for pending in batch.drain(..) {
                        let _ = pending
                            .reply
                            .send(Err(StoreError::Shared(Arc::clone(&err))));
                    }
                }
            }
            let mut state = self.state.lock().expect("batcher poisoned");
            if state.queue.is_empty() {
                state.in_flight -= 1;
                return;
            }
            batch = take_batch(&mut state.queue);
        }
    }
}

/// A slot held by a call applying its own withdrawal: released when the
/// call finishes or is dropped ([`Batcher::release`]).
struct Slot(Arc<Batcher>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// The oldest [`MAX_BATCH`] queued withdrawals, in arrival order.
fn take_batch(queue: &mut VecDeque<Pending>) -> Vec<Pending> {
    let n = queue.len().min(MAX_BATCH);
    queue.drain(..n).collect()
}

/// How many batches of each size a College applied: bucket `i` counts
/// batches of `2^(i-1) + 1 ..= 2^i` withdrawals (bucket 0: batches of one).
#[derive(Debug, Default)]
pub struct BatchSizes {
    buckets: [AtomicU64; BUCKETS],
    batches: AtomicU64,
    withdrawals: AtomicU64,
    largest: AtomicUsize,
}

/// Buckets of [`BatchSizes`]: 1, 2, 3–4, … up to [`MAX_BATCH`].
const BUCKETS: usize = MAX_BATCH.ilog2() as usize + 1;

impl BatchSizes {
    fn record(&self, size: usize) {
        let bucket = size.max(1).next_power_of_two().ilog2() as usize;
        self.buckets[bucket.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.withdrawals.fetch_add(size as u64, Ordering::Relaxed);
        self.largest.fetch_max(size, Ordering::Relaxed);
    }

    /// Batches applied so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Withdrawals submitted in those batches (applied or refused).
    pub fn withdrawals(&self) -> u64 {
        self.withdrawals.load(Ordering::Relaxed)
    }

    /// The largest batch so far.
    pub fn largest(&self) -> usize {
        self.largest.load(Ordering::Relaxed)
    }

    /// `(largest size in the bucket, batches)` for every bucket, smallest first.
    pub fn buckets(&self) -> Vec<(usize, u64)> {
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, n)| (1 << i, n.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_fall_into_power_of_two_buckets() {
        let sizes = BatchSizes::default();
        for size in [1, 2, 3, 4, 5, 200, MAX_BATCH] {
            sizes.record(size);
        }
        let buckets = sizes.buckets();
        assert_eq!(buckets[0], (1, 1));
        assert_eq!(buckets[1], (2, 1));
        assert_eq!(buckets[2], (4, 2));
        assert_eq!(buckets[3], (8, 1));
        assert_eq!(buckets[BUCKETS - 1], (MAX_BATCH, 2));
        assert_eq!(sizes.batches(), 7);
        assert_eq!(
            sizes.withdrawals(),
            1 + 2 + 3 + 4 + 5 + 200 + MAX_BATCH as u64
        );
        assert_eq!(sizes.largest(), MAX_BATCH);
    }
}
