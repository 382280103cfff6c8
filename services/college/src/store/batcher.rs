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
//! is (see `postgres::ledger`), applied or not as a whole, and the
//! slot is released.
//!
//! A batch of queued calls runs on a task of its own, so a caller that goes
//! away only drops its answer: the batch, and its database statement,
//! always run to completion. Each caller gets its own answer; a batch that
//! fails as a whole fails each of its callers with the same error and
//! applies nothing.
//!
//! A batch never holds an account that another batch of this College has
//! in flight: a request on such an account stays queued for the next batch
//! (in arrival order with the others on its account), so this College's
//! batches never wait on each other's row locks. A lock held by another
//! writer (another College instance, an operator) makes the batch skip
//! that account ([`crate::ledger::Outcome::Deferred`]); its withdrawals then
//! go on in a batch of their own per account, which waits for the lock,
//! while the rest of the batch is answered at once: one locked or hot
//! account does not hold up or fail withdrawals on any other.
//!
//! A queued withdrawal whose caller has gone (its client gave up) before a
//! batch takes it is dropped unapplied, and counted
//! ([`BatchSizes::abandoned`]).
//!
//! The batch sizes seen are counted in a [`BatchSizes`] histogram.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt as _;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::withdraw::{self, Answer};
use super::{Result, Store, StoreError, Withdrawal};
use crate::ledger::Request;

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

/// A queued withdrawal and where its answer goes.
struct Pending {
    request: Request,
    reply: oneshot::Sender<Result<Withdrawal>>,
}

/// The queue and the batches in flight, shared by every clone of the store.
pub(super) struct Batcher {
    store: Arc<dyn Store>,
    /// Batches that may be in flight at once.
    limit: usize,
    state: Mutex<State>,
    sizes: Arc<BatchSizes>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Pending>,
    in_flight: usize,
    /// The accounts of the batches in flight, with how many batches hold each.
    accounts: HashMap<Uuid, usize>,
}

impl State {
    /// The oldest queued withdrawals, up to [`MAX_BATCH`], in arrival order,
    /// leaving those on accounts another batch has in flight; the accounts
    /// taken are marked in flight. Withdrawals whose caller has gone are
    /// dropped on the way and counted in `sizes`.
    fn take_batch(&mut self, sizes: &BatchSizes) -> Vec<Pending> {
        let mut batch = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        while let Some(pending) = self.queue.pop_front() {
            if pending.reply.is_closed() {
                sizes.abandoned.fetch_add(1, Ordering::Relaxed);
            } else if batch.len() < MAX_BATCH
                && !self.accounts.contains_key(&pending.request.account)
            {
                batch.push(pending);
            } else {
                kept.push_back(pending);
            }
        }
        self.queue = kept;
        // Marked after the loop, so that withdrawals on one account go together.
        for pending in &batch {
            self.hold(pending.request.account);
        }
        batch
    }

    fn hold(&mut self, account: Uuid) {
        *self.accounts.entry(account).or_default() += 1;
    }

    fn let_go(&mut self, accounts: impl IntoIterator<Item = Uuid>) {
        for account in accounts {
            if let Some(held) = self.accounts.get_mut(&account) {
                *held -= 1;
                if *held == 0 {
                    self.accounts.remove(&account);
                }
            }
        }
    }
}

impl Batcher {
    pub(super) fn new(store: Arc<dyn Store>, limit: usize) -> Arc<Self> {
        Arc::new(Self {
            store,
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
        if self.take_idle_slot(request.account) {
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
                let batch = state.take_batch(&self.sizes);
                if !batch.is_empty() {
                    state.in_flight += 1;
                }
                Some(batch).filter(|batch| !batch.is_empty())
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

    /// Takes a slot if one is free, nothing is queued (which would go
    /// first) and no batch has `account` in flight.
    fn take_idle_slot(&self, account: Uuid) -> bool {
        let mut state = self.state.lock().expect("batcher poisoned");
        let idle = state.queue.is_empty()
            && state.in_flight < self.limit
            && !state.accounts.contains_key(&account);
        if idle {
            state.in_flight += 1;
            state.hold(account);
        }
        idle
    }

    /// Applies `request` as a batch of one on the caller's task, holding
    /// the slot taken for it until done (or dropped).
    async fn apply_alone(self: &Arc<Self>, request: Request) -> Result<Withdrawal> {
        let slot = Slot(Arc::clone(self), request.account);
        self.sizes.record(1);
        // A batch on one account waits for its lock, so it is never deferred.
        let outcome = self.apply(std::slice::from_ref(&request)).await;
        drop(slot);
        outcome.and_then(|answers| one_answer(answers.into_iter().next()))
    }

    /// One batch through the store; a panic fails the batch, not the batcher.
    async fn apply(&self, requests: &[Request]) -> Result<Vec<Answer>> {
        std::panic::AssertUnwindSafe(withdraw::apply(&self.store, requests, &self.sizes))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::SqliteCall(
                    "the withdrawal batch panicked".into(),
                ))
            })
    }

    /// Applies the deferred withdrawals of a batch: one batch per account,
    /// each on its own task, waiting for that account's lock.
    fn defer(self: &Arc<Self>, deferred: Vec<Pending>) {
        let mut by_account: HashMap<Uuid, Vec<Pending>> = HashMap::new();
        for pending in deferred {
            by_account
                .entry(pending.request.account)
                .or_default()
                .push(pending);
        }
        for (_, batch) in by_account {
            let batcher = Arc::clone(self);
            tokio::spawn(async move {
                let requests: Vec<Request> = batch.iter().map(|p| p.request.clone()).collect();
                let answers = batcher.apply(&requests).await;
                let answers = answers
                    .map(|answers| answers.into_iter().map(|a| one_answer(Some(a))).collect());
                answer_each(batch, answers);
            });
        }
    }

    /// Gives up a slot held for `account`: hands whatever queued meanwhile
    /// to a batch task, or frees the slot if nothing did.
    fn release(self: &Arc<Self>, account: Uuid) {
        let mut state = self.state.lock().expect("batcher poisoned");
        state.let_go([account]);
        let runtime = tokio::runtime::Handle::try_current();
        if runtime.is_err() {
            // Without a runtime (it is shutting down) the queued callers go
            // with it, each told its batch stopped (their replies dropped).
            state.queue.clear();
            state.in_flight -= 1;
            return;
        }
        let batch = state.take_batch(&self.sizes);
        if batch.is_empty() {
            state.in_flight -= 1;
            return;
        }
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
            let accounts: Vec<Uuid> = requests.iter().map(|r| r.account).collect();
            let mut deferred = Vec::new();
            match self.apply(&requests).await {
                Ok(answers) => {
                    debug_assert_eq!(answers.len(), batch.len());
                    let mut answered = Vec::with_capacity(batch.len());
                    for (pending, answer) in batch.drain(..).zip(answers) {
                        match answer {
                            Some(answer) => answered.push((pending, answer)),
                            None => deferred.push(pending),
                        }
                    }
                    // Counted before anyone hears back, so a caller that
                    // has its answer also sees the deferral counted.
                    self.sizes
                        .deferred
                        .fetch_add(deferred.len() as u64, Ordering::Relaxed);
                    for (pending, answer) in answered {
                        // A caller that went away just does not hear it.
                        drop(pending.reply.send(answer));
                    }
                }
                Err(err) => answer_each(std::mem::take(&mut batch), Err(err)),
            }
            if !deferred.is_empty() {
                self.defer(deferred);
            }
            let mut state = self.state.lock().expect("batcher poisoned");
            state.let_go(accounts);
            batch = state.take_batch(&self.sizes);
            if batch.is_empty() {
                state.in_flight -= 1;
                return;
            }
        }
    }
}

/// A slot held by a call applying its own withdrawal on an account:
/// released when the call finishes or is dropped ([`Batcher::release`]).
struct Slot(Arc<Batcher>, Uuid);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// A withdrawal's answer, or the error for one that was deferred again
/// (which a batch on one account, waiting for its lock, never is).
fn one_answer(answer: Option<Answer>) -> Result<Withdrawal> {
    match answer {
        Some(Some(answer)) => answer,
        Some(None) => Err(StoreError::Contended(
            "the account is locked by another writer; retry the withdrawal with the same key"
                .into(),
        )),
        None => Err(StoreError::SqliteCall(
            "the withdrawal batch gave no answer".into(),
        )),
    }
}

/// Sends each caller of `batch` its answer, or the whole batch's error.
fn answer_each(batch: Vec<Pending>, answers: Result<Vec<Result<Withdrawal>>>) {
    match answers {
        Ok(answers) => {
            for (pending, answer) in batch.into_iter().zip(answers) {
                let _ = pending.reply.send(answer);
            }
        }
        Err(err) => {
            let err = Arc::new(err);
            for pending in batch {
                let _ = pending
                    .reply
                    .send(Err(StoreError::Shared(Arc::clone(&err))));
            }
        }
    }
}

/// How many batches of each size a College applied: bucket `i` counts
/// batches of `2^(i-1) + 1 ..= 2^i` withdrawals (bucket 0: batches of one).
#[derive(Debug, Default)]
pub struct BatchSizes {
    buckets: [AtomicU64; BUCKETS],
    /// Queued withdrawals dropped unapplied: their caller had gone.
    abandoned: AtomicU64,
    /// Withdrawals that went again on their own, their account locked elsewhere.
    deferred: AtomicU64,
    /// Batches written in one round trip from a guess that held.
    guesses_held: AtomicU64,
    /// Batches whose guess did not hold, so went the locked way.
    guesses_missed: AtomicU64,
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

    pub(super) fn guessed(&self, held: bool) {
        let counter = if held {
            &self.guesses_held
        } else {
            &self.guesses_missed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Batches written in one round trip, decided from what this College
    /// last read or wrote of their accounts, which the write found true.
    pub fn guesses_held(&self) -> u64 {
        self.guesses_held.load(Ordering::Relaxed)
    }

    /// Batches tried that way whose accounts had changed meanwhile (or a
    /// key was used before, or the account expired): nothing was written
    /// and they went through the locked path.
    pub fn guesses_missed(&self) -> u64 {
        self.guesses_missed.load(Ordering::Relaxed)
    }

    /// Batches applied so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Withdrawals submitted in those batches (applied or refused).
    pub fn withdrawals(&self) -> u64 {
        self.withdrawals.load(Ordering::Relaxed)
    }

    /// Queued withdrawals dropped before a batch took them, because their
    /// caller had already gone: never applied, never answered.
    pub fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Withdrawals whose account's lock another writer held when their
    /// batch ran, so they went again in a batch of their own.
    pub fn deferred(&self) -> u64 {
        self.deferred.load(Ordering::Relaxed)
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
