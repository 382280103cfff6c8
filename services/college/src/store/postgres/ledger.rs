//! A batch of withdrawals on PostgreSQL: [`Ledger`] in two round trips.
//!
//! The first sends `BEGIN ISOLATION LEVEL READ COMMITTED`, the lock
//! statement and the load statement together (pipelined on one
//! connection): the server runs them in order, so the load's snapshot is
//! taken after the row locks are held and sees every commit before them.
//! It reads, for each withdrawal, its account's balance and expiry, the
//! caller's role, an earlier entry with the caller's key, and reserves a
//! journal id from the sequence; and the clock, once. The second sends the
//! write (the journal entries, the balances and the `NOTIFY`, one
//! statement) and `COMMIT` together. `CHECK (balance >= 0)`, the unique
//! (account, caller, key) and the expiry trigger stand behind the rule as
//! backstops.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use grantmesh_store::tokio_postgres::Row;
use grantmesh_store::tokio_postgres::error::SqlState;
use grantmesh_store::tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::Conn;
use super::guess::Guesses;
use crate::ledger::{Decision, KeyScope, Locked, LockedAccount, Request, Role, TransactionRow};
use crate::store::change::Change;
use crate::store::{CHANNEL, Ledger, Result, StoreError};

/// The row locks of a batch on one account: waits for a lock held elsewhere.
const LOCK_WAITING: &str =
    "SELECT id FROM accounts WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE";

/// The row locks of a batch on several accounts: an account locked
/// elsewhere is skipped, and its withdrawals deferred, rather than holding
/// up the rest.
const LOCK_SKIPPING: &str =
    "SELECT id FROM accounts WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE SKIP LOCKED";

/// Everything the rule judges a batch by, one row per withdrawal in order,
/// read after the locks (a statement of its own, so a snapshot of its own).
const LOAD: &str = "WITH clock AS (SELECT clock_timestamp() AS now)
SELECT a.id IS NOT NULL AS found, a.balance, a.expires_at, a.version, m.role,
       w.id AS w_id, w.amount AS w_amount, w.memo AS w_memo, w.created_at AS w_at,
       w.balance_after AS w_balance_after,
       clock.now, nextval('withdrawals_id_seq') AS reserved
  FROM unnest($1::uuid[], $2::uuid[], $3::text[]) WITH ORDINALITY AS b(account, caller, key, item)
  CROSS JOIN clock
  LEFT JOIN accounts a ON a.id = b.account
  LEFT JOIN members m ON m.account_id = b.account AND m.researcher_id = b.caller
  LEFT JOIN withdrawals w ON w.account_id = b.account AND w.researcher_id = b.caller
                         AND w.idempotency_key = b.key
 ORDER BY b.item";

/// The decision's writes and its notification, in one statement.
const WRITE: &str = "WITH entries AS (
    INSERT INTO withdrawals (id, account_id, researcher_id, amount, idempotency_key, memo, balance_after, created_at)
    SELECT e.id, e.account, e.researcher, e.amount, e.key, e.memo, e.balance_after, $8::timestamptz
      FROM unnest($1::bigint[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[], $6::text[], $7::bigint[])
           AS e(id, account, researcher, amount, key, memo, balance_after)
    RETURNING 1
),
debits AS (
    UPDATE accounts a SET balance = v.balance
      FROM unnest($9::uuid[], $10::bigint[]) AS v(id, balance)
     WHERE a.id = v.id
    RETURNING 1
)
SELECT (SELECT count(*) FROM entries) AS entries, (SELECT count(*) FROM debits) AS debits,
       pg_notify($11, $12)";

/// The SQLSTATE of the journal's trigger refusing an entry stamped at or
/// after the account's expiry (migrations V3, V4).
const EXPIRED_AT_DEBIT: &str = "GMEXP";

/// A batch's transaction on one connection, open from
/// [`Ledger::lock_and_load`] until [`Ledger::write`] commits. The
/// connection stays marked busy all that while, so a batch dropped halfway
/// (its caller gave up, or an error) closes it instead of handing an open
/// transaction back to the pool.
pub(super) struct PgLedger {
    pub(super) conn: Conn,
    /// Journal ids the load reserved, one per withdrawal, ascending.
    reserved: Vec<i64>,
    /// The accounts the load locked, with their versions, for `guesses`
    /// once the write commits.
    loaded: Vec<(Uuid, i64, LockedAccount)>,
    guesses: Arc<Guesses>,
}

impl PgLedger {
    pub(super) fn new(conn: Conn, guesses: Arc<Guesses>) -> Self {
        Self {
            conn,
            reserved: Vec::new(),
            loaded: Vec::new(),
            guesses,
        }
    }

    /// Tells the guesses what this batch found and left, once committed.
    fn remember(&self, decision: &Decision) {
        let mut versions = HashMap::new();
        for (account, version, state) in &self.loaded {
            self.guesses.loaded(*account, *version, state);
            versions.insert(*account, *version);
        }
        self.guesses.wrote(&versions, decision);
    }
}

#[async_trait::async_trait]
impl Ledger for PgLedger {
    async fn lock_and_load(&mut self, batch: &[Request]) -> Result<Locked> {
        let client = &self.conn;
        client.busy.store(true, Ordering::Relaxed);
        let one_account = batch.iter().all(|r| r.account == batch[0].account);
        let lock = client
            .prepare_cached(if one_account {
                LOCK_WAITING
            } else {
                LOCK_SKIPPING
            })
            .await?;
        let load = client.prepare_cached(LOAD).await?;
        let mut accounts: Vec<Uuid> = batch.iter().map(|r| r.account).collect();
        let callers: Vec<Uuid> = batch.iter().map(|r| r.caller).collect();
        let keys: Vec<&str> = batch.iter().map(|r| r.key.as_str()).collect();
        let ordered = accounts.clone();
        accounts.sort_unstable();
        accounts.dedup();
        let lock_params: [&(dyn ToSql + Sync); 1] = [&accounts];
        let load_params: [&(dyn ToSql + Sync); 3] = [&ordered, &callers, &keys];
        let (_, locked, loaded) = futures::try_join!(
            client.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED"),
            client.query(&lock, &lock_params),
            client.query(&load, &load_params),
        )
        .map_err(contention)?;
        if loaded.len() != batch.len() {
            return Err(StoreError::SqliteCall(format!(
                "the load answered {} rows for {} withdrawals",
                loaded.len(),
                batch.len()
            )));
        }
        let held: HashSet<Uuid> = locked.iter().map(|row| row.get(0)).collect();
        let now: SystemTime = loaded[0].get("now");
        let mut state = Locked {
            now,
            accounts: HashMap::new(),
            busy: HashSet::new(),
            used: HashMap::new(),
        };
        self.reserved = loaded.iter().map(|row| row.get("reserved")).collect();
        self.reserved.sort_unstable();
        let mut versions = HashMap::new();
        for (request, row) in batch.iter().zip(&loaded) {
            if load_one(&mut state, &held, request, row)? {
                versions.insert(request.account, row.get::<_, i64>("version"));
            }
        }
        self.loaded = versions
            .into_iter()
            .map(|(account, version)| (account, version, state.accounts[&account].clone()))
            .collect();
        Ok(state)
    }

    async fn write(self: Box<Self>, decision: &Decision) -> Result<Vec<i64>> {
        let client = &self.conn;
        if decision.entries.is_empty() {
            client.batch_execute("COMMIT").await?;
            client.busy.store(false, Ordering::Relaxed);
            self.remember(decision);
            return Ok(Vec::new());
        }
        let ids = self.reserved[..decision.entries.len()].to_vec();
        let entries = &decision.entries;
        let accounts: Vec<Uuid> = entries.iter().map(|e| e.account).collect();
        let researchers: Vec<Uuid> = entries.iter().map(|e| e.researcher).collect();
        let amounts: Vec<i64> = entries.iter().map(|e| e.amount).collect();
        let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        let memos: Vec<&str> = entries.iter().map(|e| e.memo.as_str()).collect();
        let after: Vec<i64> = entries.iter().map(|e| e.balance_after).collect();
        let (debited, balances): (Vec<Uuid>, Vec<i64>) = decision.balances.iter().copied().unzip();
        let change =
            Change::withdrawals(ids[0], ids[ids.len() - 1], accounts.iter().copied()).encode();
        let write = client.prepare_cached(WRITE).await?;
        let params: [&(dyn ToSql + Sync); 12] = [
            &ids,
            &accounts,
            &researchers,
            &amounts,
            &keys,
            &memos,
            &after,
            &decision.at,
            &debited,
            &balances,
            &CHANNEL,
            &change,
        ];
        let (_, ()) = futures::try_join!(
            client.query_one(&write, &params),
            client.batch_execute("COMMIT"),
        )
        .map_err(contention)?;
        client.busy.store(false, Ordering::Relaxed);
        self.remember(decision);
        Ok(ids)
    }
}

/// What one withdrawal's row of the load adds to the batch's state: true
/// when its account is locked here.
fn load_one(
    state: &mut Locked,
    held: &HashSet<Uuid>,
    request: &Request,
    row: &Row,
) -> Result<bool> {
    if !row.get::<_, bool>("found") {
        return Ok(false);
    }
    if !held.contains(&request.account) {
        state.busy.insert(request.account);
        return Ok(false);
    }
    let account = state
        .accounts
        .entry(request.account)
        .or_insert_with(|| LockedAccount {
            balance: row.get("balance"),
            expires_at: row.get("expires_at"),
            roles: HashMap::new(),
        });
    if let Some(role) = row.get::<_, Option<&str>>("role") {
        let role = Role::parse(role).ok_or_else(|| {
            StoreError::SqliteCall(format!("the store holds an unknown role {role:?}"))
        })?;
        account.roles.insert(request.caller, role);
    }
    if let Some(id) = row.get::<_, Option<i64>>("w_id") {
        state.used.insert(
            KeyScope {
                account: request.account,
                caller: request.caller,
                key: request.key.clone(),
            },
            TransactionRow {
                id,
                account_id: request.account,
                researcher_id: request.caller,
                amount: row.get("w_amount"),
                memo: row.get("w_memo"),
                idempotency_key: request.key.clone(),
                created_at: row.get("w_at"),
                balance_after: row.get("w_balance_after"),
            },
        );
    }
    Ok(true)
}

/// A failure a second try of the batch resolves: the same key applied by a
/// writer outside this code, an entry the expiry backstop refused, a
/// serialization failure or a deadlock. Anything else is itself.
fn contention(err: grantmesh_store::tokio_postgres::Error) -> StoreError {
    if raced(&err) {
        StoreError::Contended("the withdrawal raced another writer; retry with the same key".into())
    } else {
        err.into()
    }
}

/// Whether `err` is a race with another writer that nothing was written
/// for: a key applied meanwhile (the unique index), an entry stamped at or
/// after the expiry (the journal's trigger), a serialization failure or a
/// deadlock.
pub(super) fn raced(err: &grantmesh_store::tokio_postgres::Error) -> bool {
    grantmesh_store::is_unique_violation(err)
        || err.code().is_some_and(|code| {
            code.code() == EXPIRED_AT_DEBIT
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
        })
}
