//! Withdrawals in one round trip on PostgreSQL, from a guess.
//!
//! The locked path ([`super::ledger`]) takes two round trips and five
//! statements a batch: lock and load, then write and commit. Yet a College
//! that wrote an account a moment ago usually knows it still: nobody else
//! has touched it since. [`Guesses`] keeps, for each account this instance
//! last loaded or wrote, its balance, expiry, the callers' roles and its
//! `version` (migration V7: the database moves it on every update of the
//! account row and every change of its members, whoever writes). The
//! decision made from that ([`crate::ledger::decide`], the one rule) goes
//! in one statement, [`WRITE_GUESSED`], which locks the accounts (skipping
//! any another writer holds), and writes only if it holds every one of them
//! at the version guessed. A debit stamped at or after the expiry is still
//! refused by the journal's trigger, a key used before by its unique index:
//! either fails the statement as a whole. Whatever did not hold, nothing was
//! written, and the batch takes the locked path, which refreshes the guess.
//!
//! Only decisions that write everything they were asked are tried this way
//! ([`crate::ledger::Decision::only_writes`]): a refusal made from a guess
//! would be unproven.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use grantmesh_store::tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::Conn;
use crate::ledger::{Decision, Locked, LockedAccount, Request, Role};
use crate::store::change::{self, Change};
use crate::store::{CHANNEL, Guess, Result};

/// How many accounts' guesses one College keeps; past that it starts afresh
/// (a guess is only ever a shortcut).
const MAX_GUESSES: usize = 16_384;

/// How long an account whose guess failed goes the locked way before it is
/// guessed again: two Colleges writing one account by turns would otherwise
/// miss every time and pay three round trips instead of two.
const AFTER_A_MISS: std::time::Duration = std::time::Duration::from_secs(1);

/// The batch's debits and entries in one statement, if every account is
/// locked here at its guessed version: `$1..$3` each account's id, guessed
/// version and new balance; `$4..$9` the entries in order; `$10` the
/// channel, `$11` the notification with `$12` ([`change::FIRST`]) and `$13`
/// ([`change::LAST`]) where the ids it assigns go. The debits happen only if all
/// accounts are held (the condition is read once, before any row is
/// updated), entries only if the debits did; the entries are stamped with
/// the clock read after the locks.
pub(super) const WRITE_GUESSED: &str = "WITH guessed AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS g(id, version, balance)
),
held AS (
    SELECT a.id FROM accounts a JOIN guessed g ON g.id = a.id AND a.version = g.version
     ORDER BY a.id FOR NO KEY UPDATE OF a SKIP LOCKED
),
debits AS (
    UPDATE accounts a SET balance = g.balance
      FROM guessed g
     WHERE a.id = g.id AND (SELECT count(*) FROM held) = cardinality($1::uuid[])
    RETURNING a.id, clock_timestamp() AS at
),
clock AS (SELECT max(at) AS now, count(*) AS debited FROM debits),
numbered AS MATERIALIZED (
    SELECT nextval('withdrawals_id_seq') AS id, e.*, clock.now
      FROM unnest($4::uuid[], $5::uuid[], $6::bigint[], $7::text[], $8::text[], $9::bigint[])
           WITH ORDINALITY AS e(account, researcher, amount, key, memo, balance_after, item)
     CROSS JOIN clock
     WHERE clock.debited = cardinality($1::uuid[])
),
entries AS (
    INSERT INTO withdrawals (id, account_id, researcher_id, amount, idempotency_key, memo, balance_after, created_at)
    SELECT id, account, researcher, amount, key, memo, balance_after, now FROM numbered
    RETURNING id
)
SELECT clock.debited = cardinality($1::uuid[]) AS held, clock.now,
       (SELECT array_agg(id ORDER BY item) FROM numbered) AS ids,
       (SELECT count(*) FROM entries) AS written,
       CASE WHEN clock.debited > 0 THEN
            pg_notify($10, replace(replace($11, $12, (SELECT min(id) FROM numbered)::text),
                                   $13, (SELECT max(id) FROM numbered)::text))
       END AS notified
  FROM clock";

/// What one College instance last knew of the accounts it withdrew from.
#[derive(Default)]
pub(super) struct Guesses {
    accounts: Mutex<HashMap<Uuid, Known>>,
}

/// One account as last loaded under its lock or written here.
struct Known {
    version: i64,
    balance: i64,
    expires_at: SystemTime,
    /// The roles of the callers seen withdrawing; anyone else is unknown.
    roles: HashMap<Uuid, Role>,
    /// When a guess of it last failed.
    missed: Option<Instant>,
}

impl Guesses {
    /// The guess for `batch`, if every account is known, not missed lately,
    /// and every caller's role on it is known.
    pub(super) fn guess(&self, batch: &[Request]) -> Option<Guess> {
        let known = self.accounts.lock().expect("guesses poisoned");
        let mut locked = Locked {
            now: SystemTime::now(),
            accounts: HashMap::new(),
            busy: Default::default(),
            used: HashMap::new(),
        };
        let mut versions = HashMap::new();
        for request in batch {
            let account = known.get(&request.account)?;
            if account.missed.is_some_and(|at| at.elapsed() < AFTER_A_MISS) {
                return None;
            }
            let role = *account.roles.get(&request.caller)?;
            versions.insert(request.account, account.version);
            locked
                .accounts
                .entry(request.account)
                .or_insert_with(|| LockedAccount {
                    balance: account.balance,
                    expires_at: account.expires_at,
                    roles: HashMap::new(),
                })
                .roles
                .insert(request.caller, role);
        }
        Some(Guess { locked, versions })
    }

    /// Records what the locked path read of `account` at `version` (before
    /// its write, if any), and what its decision left.
    pub(super) fn loaded(&self, account: Uuid, version: i64, state: &LockedAccount) {
        let mut known = self.accounts.lock().expect("guesses poisoned");
        if known.len() >= MAX_GUESSES && !known.contains_key(&account) {
            known.clear();
        }
        let earlier = known.remove(&account);
        let mut roles = state.roles.clone();
        if let Some(earlier) = &earlier
            && earlier.version == version
        {
            // Nothing changed in between: the roles seen then still hold.
            for (caller, role) in &earlier.roles {
                roles.entry(*caller).or_insert(*role);
            }
        }
        known.insert(
            account,
            Known {
                version,
                balance: state.balance,
                expires_at: state.expires_at,
                roles,
                missed: earlier.and_then(|k| k.missed),
            },
        );
    }

    /// Records a write of `decision`: each debited account moved one
    /// version on from the one it was at (`versions`) to its new balance.
    pub(super) fn wrote(&self, versions: &HashMap<Uuid, i64>, decision: &Decision) {
        let mut known = self.accounts.lock().expect("guesses poisoned");
        for (account, balance) in &decision.balances {
            if let (Some(known), Some(version)) = (known.get_mut(account), versions.get(account)) {
                known.version = version + 1;
                known.balance = *balance;
            }
        }
    }

    /// Records that a guess of these accounts did not hold.
    fn missed(&self, accounts: impl Iterator<Item = Uuid>) {
        let mut known = self.accounts.lock().expect("guesses poisoned");
        let now = Instant::now();
        for account in accounts {
            if let Some(known) = known.get_mut(&account) {
                known.missed = Some(now);
            }
        }
    }
}

/// [`crate::store::Store::write_guessed`] on `conn`.
pub(super) async fn write(
    conn: &Conn,
    guesses: &Guesses,
    guess: &Guess,
    decision: &Decision,
) -> Result<Option<(Vec<i64>, SystemTime)>> {
    let (debited, balances): (Vec<Uuid>, Vec<i64>) = decision.balances.iter().copied().unzip();
    let versions: Vec<i64> = debited.iter().map(|a| guess.versions[a]).collect();
    let entries = &decision.entries;
    let accounts: Vec<Uuid> = entries.iter().map(|e| e.account).collect();
    let researchers: Vec<Uuid> = entries.iter().map(|e| e.researcher).collect();
    let amounts: Vec<i64> = entries.iter().map(|e| e.amount).collect();
    let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    let memos: Vec<&str> = entries.iter().map(|e| e.memo.as_str()).collect();
    let after: Vec<i64> = entries.iter().map(|e| e.balance_after).collect();
    let pattern = Change::withdrawals_pattern(accounts.iter().copied());
    let params: [&(dyn ToSql + Sync); 13] = [
        &debited,
        &versions,
        &balances,
        &accounts,
        &researchers,
        &amounts,
        &keys,
        &memos,
        &after,
        &CHANNEL,
        &pattern,
        &change::FIRST,
        &change::LAST,
    ];
    let row = conn
        .guard(async {
            let statement = conn.prepare_cached(WRITE_GUESSED).await?;
            conn.query_one(&statement, &params).await
        })
        .await;
    let row = match row {
        Ok(row) => row,
        // A key used before, the expiry reached, a serialization failure.
        Err(err) if super::ledger::raced(&err) => {
            guesses.missed(debited.into_iter());
            return Ok(None);
        }
        Err(err) => return Err(err.into()),
    };
    if !row.get::<_, bool>("held") {
        guesses.missed(debited.into_iter());
        return Ok(None);
    }
    let ids: Vec<i64> = row.get("ids");
    let written: i64 = row.get("written");
    if ids.len() != entries.len() || written != entries.len() as i64 {
        return Err(crate::store::StoreError::SqliteCall(format!(
            "the one-trip write assigned {} ids and wrote {written} entries of {}",
            ids.len(),
            entries.len()
        )));
    }
    guesses.wrote(&guess.versions, decision);
    Ok(Some((ids, row.get("now"))))
}
