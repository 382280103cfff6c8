//! The College's SQL on the embedded SQLite store (`grantmesh dev`): the
//! same rules as [`super::postgres`], kept by SQLite's single writer.
//!
//! Every change runs in one `BEGIN IMMEDIATE` transaction, which takes the
//! file's write lock before reading, so what it checked (membership, expiry
//! by the store's clock, the idempotency key, the balance) still holds when
//! it writes: a withdrawal can neither overdraw nor apply one key twice, and
//! `CHECK (balance >= 0)` stands behind it as on PostgreSQL. Writers that
//! find the lock taken wait up to the busy timeout, then get `UNAVAILABLE`.
//!
//! After a change commits, the same payloads PostgreSQL's `NOTIFY` carries
//! go to the file's in-process fan-out, so `WatchAccount` works unchanged for
//! instances in this process (and only those: see [`grantmesh_store::sqlite`]).
//! Every call runs on tokio's blocking pool through the pool's `interact`.

mod membership;

use std::time::{Duration, SystemTime};

use grantmesh_store::Notifications;
use grantmesh_store::sqlite::{
    SqliteStore, is_foreign_key_violation, is_unique_violation, millis, time,
};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use uuid::Uuid;

use super::*;

/// The College's SQLite migrations.
mod embedded {
    refinery::embed_migrations!("migrations/sqlite");
}

pub(super) fn migrations() -> refinery::Runner {
    embedded::migrations::runner()
}

macro_rules! account_columns {
    () => {
        concat!(
            "a.id, a.proposal_id, a.agency, a.title, a.principal_investigator, a.award, a.balance, \
             a.opened_at, a.expires_at, a.expires_at <= ",
            grantmesh_store::sqlite_now_ms!(),
            " AS expired"
        )
    };
}

const TRANSACTION_COLUMNS: &str =
    "id, account_id, researcher_id, amount, memo, idempotency_key, created_at, balance_after";

/// The College's accounts in one SQLite file.
#[derive(Clone)]
pub(super) struct Accounts {
    db: SqliteStore,
    /// The file's in-process fan-out, published to after each commit.
    notifications: Notifications,
}

impl Accounts {
    pub(super) fn new(db: SqliteStore) -> Self {
        let notifications = Notifications::in_process(&db.path, CHANNEL);
        Self { db, notifications }
    }

    pub(super) fn notifications(&self) -> &Notifications {
        &self.notifications
    }

    /// The pool's size, idle connections, waiters and bound, for the metrics.
    pub(super) fn pool_status(&self) -> deadpool_sqlite::Status {
        self.db.pool.status()
    }

    /// Runs `call` on a pooled connection, on tokio's blocking pool.
    async fn call<T: Send + 'static>(
        &self,
        call: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.db.pool.get().await?;
        conn.interact(call)
            .await
            .map_err(|err| StoreError::SqliteCall(err.to_string()))?
    }

    pub(super) async fn audit(&self, account: Uuid) -> Result<AccountAudit> {
        self.call(move |conn| {
            // A read transaction in WAL mode: every read sees one snapshot.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let row = read_account(&tx, account)?.ok_or_else(|| not_found(account))?;
            let journal = tx
                .prepare(&format!(
                    "SELECT {TRANSACTION_COLUMNS} FROM withdrawals WHERE account_id = ?1 ORDER BY id"
                ))?
                .query_map(params![account], transaction_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            tx.commit()?;
            Ok(AccountAudit {
                account: row,
                journal,
            })
        })
        .await
    }

    pub(super) async fn register_researcher(
        &self,
        name: &str,
        email: &str,
        password_hash: &str,
    ) -> Result<ResearcherRow> {
        let row = ResearcherRow {
            id: Uuid::new_v4(),
            name: name.to_owned(),
            email: email.to_owned(),
            password_hash: password_hash.to_owned(),
        };
        self.call(move |conn| {
            let inserted = conn.execute(
                "INSERT INTO researchers (id, name, email, password_hash) VALUES (?1, ?2, ?3, ?4)",
                params![row.id, row.name, row.email, row.password_hash],
            );
            match inserted {
                Ok(_) => Ok(row),
                Err(err) if is_unique_violation(&err) => Err(email_taken(&row.email)),
                Err(err) => Err(err.into()),
            }
        })
        .await
    }

    pub(super) async fn researcher_by_email(&self, email: &str) -> Result<Option<ResearcherRow>> {
        let email = email.to_owned();
        self.call(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT id, name, email, password_hash FROM researchers WHERE email = ?1",
                    params![email],
                    |row| {
                        Ok(ResearcherRow {
                            id: row.get(0)?,
                            name: row.get(1)?,
                            email: row.get(2)?,
                            password_hash: row.get(3)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    pub(super) async fn open_account(
        &self,
        day_length: Duration,
        new: &NewAccount<'_>,
    ) -> Result<(AccountRow, bool)> {
        let id = Uuid::new_v4();
        let proposal_id = new.proposal_id.to_owned();
        let agency = new.agency.to_owned();
        let title = new.title.to_owned();
        let principal_investigator = new.principal_investigator;
        let award = new.award;
        let lasts_ms = i64::try_from(day_length.as_millis())
            .unwrap_or(i64::MAX)
            .saturating_mul(i64::from(new.duration_days));
        let credential = new.credential;
        let margin_ms = i64::try_from(USED_CREDENTIAL_MARGIN.as_millis()).unwrap_or(i64::MAX);
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now: i64 = tx.query_row(concat!("SELECT ", grantmesh_store::sqlite_now_ms!()), [], |row| row.get(0))?;
            tx.execute(
                "DELETE FROM agency_credentials WHERE expires_at < ?1",
                params![now.saturating_sub(margin_ms)],
            )?;
            let recorded = tx.execute(
                "INSERT INTO agency_credentials (jti, agency, proposal_id, expires_at, used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    credential.jti,
                    agency,
                    proposal_id,
                    millis(credential.expires_at),
                    now
                ],
            );
            match recorded {
                Ok(_) => {}
                Err(err) if is_primary_key_violation(&err) => return Err(credential_used()),
                Err(err) => return Err(err.into()),
            }
            let inserted = tx.execute(
                "INSERT INTO accounts (id, proposal_id, agency, title, principal_investigator, award, balance,
                                       opened_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)
                 ON CONFLICT (proposal_id) DO NOTHING",
                params![
                    id,
                    proposal_id,
                    agency,
                    title,
                    principal_investigator,
                    award,
                    now,
                    now.saturating_add(lasts_ms)
                ],
            );
            let created = match inserted {
                Ok(rows) => rows == 1,
                Err(err) if is_foreign_key_violation(&err) => {
                    return Err(unknown_principal_investigator(principal_investigator));
                }
                Err(err) => return Err(err.into()),
            };
            if created {
                tx.execute(
                    "INSERT INTO members (account_id, researcher_id, role, added_at)
                     VALUES (?1, ?2, 'principal_investigator', ?3)",
                    params![id, principal_investigator, now],
                )?;
            }
            let account_id: Uuid = tx.query_row(
                "SELECT id FROM accounts WHERE proposal_id = ?1",
                params![proposal_id],
                |row| row.get(0),
            )?;
            let account = read_account(&tx, account_id)?.ok_or_else(|| not_found(account_id))?;
            tx.commit()?;
            Ok((account, created))
        })
        .await
    }

    pub(super) async fn account(&self, id: Uuid, caller: Option<Uuid>) -> Result<AccountRow> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let account = read_account(&tx, id)?.ok_or_else(|| not_found(id))?;
            tx.commit()?;
            if let Some(caller) = caller
                && !account.members.iter().any(|m| m.researcher_id == caller)
            {
                return Err(not_member(id));
            }
            Ok(account)
        })
        .await
    }

    pub(super) async fn accounts_of(
        &self,
        caller: Uuid,
        after: Option<(SystemTime, Uuid)>,
        limit: i64,
    ) -> Result<Vec<AccountRow>> {
        let (after_at, after_id) = after.map(|(at, id)| (millis(at), id)).unzip();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let mut accounts = tx
                .prepare(concat!(
                    "SELECT ",
                    account_columns!(),
                    " FROM accounts a JOIN members m ON m.account_id = a.id
                     WHERE m.researcher_id = ?1
                       AND (?2 IS NULL OR a.opened_at < ?2 OR (a.opened_at = ?2 AND a.id < ?3))
                     ORDER BY a.opened_at DESC, a.id DESC LIMIT ?4"
                ))?
                .query_map(params![caller, after_at, after_id, limit], account_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for account in &mut accounts {
                account.members = members(&tx, account.id)?;
            }
            tx.commit()?;
            Ok(accounts)
        })
        .await
    }

    pub(super) async fn add_member(
        &self,
        account: Uuid,
        caller: Uuid,
        email: &str,
    ) -> Result<AccountRow> {
        let email = email.to_owned();
        let notifications = self.notifications.clone();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            check_principal_investigator(&tx, account, Some(caller))?;
            let researcher: Uuid = tx
                .query_row(
                    "SELECT id FROM researchers WHERE email = ?1",
                    params![email],
                    |row| row.get(0),
                )
                .optional()?
                .ok_or_else(|| no_researcher_with(&email))?;
            let added = tx.execute(
                "INSERT INTO members (account_id, researcher_id, role) VALUES (?1, ?2, 'member')
                 ON CONFLICT DO NOTHING",
                params![account, researcher],
            )?;
            let row = read_account(&tx, account)?.ok_or_else(|| not_found(account))?;
            tx.commit()?;
            if added > 0 {
                notifications.publish(membership_payload(account));
            }
            Ok(row)
        })
        .await
    }

    pub(super) async fn remove_member(
        &self,
        account: Uuid,
        caller: Uuid,
        researcher: Uuid,
    ) -> Result<AccountRow> {
        let notifications = self.notifications.clone();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // A member may leave on their own; anyone else is removed by the principal investigator.
            let principal = if caller == researcher {
                None
            } else {
                Some(caller)
            };
            let pi = check_principal_investigator(&tx, account, principal)?;
            if researcher == pi {
                return Err(principal_investigator_not_removable());
            }
            let removed = tx.execute(
                "DELETE FROM members WHERE account_id = ?1 AND researcher_id = ?2",
                params![account, researcher],
            )?;
            if removed == 0 {
                return Err(not_a_member_to_remove(account, researcher));
            }
            let row = read_account(&tx, account)?.ok_or_else(|| not_found(account))?;
            tx.commit()?;
            notifications.publish(membership_payload(account));
            Ok(row)
        })
        .await
    }

    /// Applies a batch of withdrawals in one `BEGIN IMMEDIATE` transaction,
    /// one after the other, each seeing the ones before it: an answer per
    /// withdrawal, or one error for the whole batch (nothing applied).
    pub(super) async fn withdraw_batch(
        &self,
        batch: &[batcher::Request],
    ) -> Result<Vec<Result<Withdrawal>>> {
        let batch = batch.to_vec();
        let notifications = self.notifications.clone();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // The store's clock once the write lock is held, for every
            // withdrawal of the batch: its expiry check and its stamp.
            let now: i64 = tx.query_row(
                concat!("SELECT ", grantmesh_store::sqlite_now_ms!()),
                [],
                |row| row.get(0),
            )?;
            let mut answers = Vec::with_capacity(batch.len());
            for request in &batch {
                answers.push(apply(&tx, now, request)?);
            }
            tx.commit()?;
            let applied: Vec<&TransactionRow> = answers
                .iter()
                .filter_map(|a| a.as_ref().ok())
                .filter(|w| !w.replayed)
                .map(|w| &w.transaction)
                .collect();
            // Announced here, not by the caller once this returns: the
            // caller may be gone by then (see the batcher), the commit not.
            if let (Some(first), Some(last)) = (applied.first(), applied.last()) {
                notifications.publish(withdrawals_payload(
                    first.id,
                    last.id,
                    &applied.iter().map(|t| t.account_id).collect::<Vec<_>>(),
                ));
            }
            Ok(answers)
        })
        .await
    }

    pub(super) async fn entries(
        &self,
        account: Uuid,
        first: i64,
        last: i64,
    ) -> Result<Vec<TransactionRow>> {
        self.call(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {TRANSACTION_COLUMNS} FROM withdrawals
                     WHERE account_id = ?1 AND id BETWEEN ?2 AND ?3 ORDER BY id"
                ))?
                .query_map(params![account, first, last], transaction_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    pub(super) async fn transactions(
        &self,
        account: Uuid,
        caller: Uuid,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<TransactionRow>> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let row = read_account(&tx, account)?.ok_or_else(|| not_found(account))?;
            if !row.members.iter().any(|m| m.researcher_id == caller) {
                return Err(not_member(account));
            }
            let rows = tx
                .prepare(&format!(
                    "SELECT {TRANSACTION_COLUMNS} FROM withdrawals
                     WHERE account_id = ?1 AND (?2 IS NULL OR id < ?2)
                     ORDER BY id DESC LIMIT ?3"
                ))?
                .query_map(params![account, before, limit], transaction_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            tx.commit()?;
            Ok(rows)
        })
        .await
    }

    pub(super) async fn transaction(
        &self,
        account: Uuid,
        id: i64,
    ) -> Result<Option<TransactionRow>> {
        self.call(move |conn| {
            Ok(conn
                .query_row(
                    &format!(
                        "SELECT {TRANSACTION_COLUMNS} FROM withdrawals WHERE account_id = ?1 AND id = ?2"
                    ),
                    params![account, id],
                    transaction_from_row,
                )
                .optional()?)
        })
        .await
    }
}

/// One withdrawal of a batch, inside its transaction at the store's time
/// `now`: the outer error fails the whole batch, the inner one is this
/// withdrawal's own answer (refusals change nothing).
fn apply(tx: &Connection, now: i64, request: &batcher::Request) -> Result<Result<Withdrawal>> {
    let batcher::Request {
        account,
        caller,
        amount,
        ref key,
        ref memo,
    } = *request;
    let Some((balance, expires_at)) = tx
        .prepare_cached("SELECT balance, expires_at FROM accounts WHERE id = ?1")?
        .query_row(params![account], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .optional()?
    else {
        return Ok(Err(not_found(account)));
    };
    let is_member: bool = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM members WHERE account_id = ?1 AND researcher_id = ?2)",
        )?
        .query_row(params![account, caller], |row| row.get(0))?;
    if !is_member {
        return Ok(Err(not_member(account)));
    }
    let previous = tx
        .prepare_cached(&format!(
            "SELECT {TRANSACTION_COLUMNS} FROM withdrawals WHERE account_id = ?1 AND idempotency_key = ?2"
        ))?
        .query_row(params![account, key], transaction_from_row)
        .optional()?;
    if let Some(previous) = previous {
        if previous.amount != amount {
            return Ok(Err(key_reused(key, previous.amount, amount)));
        }
        return Ok(Ok(Withdrawal {
            transaction: previous,
            balance,
            replayed: true,
        }));
    }
    if expires_at <= now {
        return Ok(Err(expired(account)));
    }
    if balance < amount {
        return Ok(Err(insufficient_funds(account, balance, amount)));
    }
    let balance_after: i64 = tx
        .prepare_cached(
            "UPDATE accounts SET balance = balance - ?2 WHERE id = ?1 RETURNING balance",
        )?
        .query_row(params![account, amount], |row| row.get(0))?;
    let id: i64 = tx
        .prepare_cached(
            "INSERT INTO withdrawals (account_id, researcher_id, amount, idempotency_key, memo,
                                      balance_after, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
        )?
        .query_row(
            params![account, caller, amount, key, memo, balance_after, now],
            |row| row.get(0),
        )?;
    Ok(Ok(Withdrawal {
        transaction: TransactionRow {
            id,
            account_id: account,
            researcher_id: caller,
            amount,
            memo: memo.clone(),
            idempotency_key: key.clone(),
            created_at: time(now),
            balance_after,
        },
        balance: balance_after,
        replayed: false,
    }))
}

/// Whether a failure is a primary-key violation, which SQLite reports apart
/// from other unique constraints.
fn is_primary_key_violation(err: &rusqlite::Error) -> bool {
    err.sqlite_error()
        .is_some_and(|err| err.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

/// The account's principal investigator, if it is `caller`. Inside an
/// immediate transaction, which already holds the write lock (PostgreSQL
/// takes a row lock here instead).
/// The account's principal investigator, who must be `caller` when one is
/// given (`None`: a member leaving on their own).
fn check_principal_investigator(
    conn: &Connection,
    account: Uuid,
    caller: Option<Uuid>,
) -> Result<Uuid> {
    let pi: Uuid = conn
        .query_row(
            "SELECT principal_investigator FROM accounts WHERE id = ?1",
            params![account],
            |row| row.get(0),
        )
        .optional()?
        .ok_or_else(|| not_found(account))?;
    if caller.is_some_and(|caller| pi != caller) {
        return Err(not_principal_investigator(account));
    }
    Ok(pi)
}

/// The account with its members, if it exists.
fn read_account(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<AccountRow>> {
    let account = conn
        .query_row(
            concat!(
                "SELECT ",
                account_columns!(),
                " FROM accounts a WHERE a.id = ?1"
            ),
            params![id],
            account_from_row,
        )
        .optional()?;
    let Some(mut account) = account else {
        return Ok(None);
    };
    account.members = members(conn, id)?;
    Ok(Some(account))
}

fn members(conn: &Connection, account: Uuid) -> rusqlite::Result<Vec<MemberRow>> {
    conn.prepare_cached(
        "SELECT r.id, r.name, r.email, m.role FROM members m JOIN researchers r ON r.id = m.researcher_id
         WHERE m.account_id = ?1 ORDER BY m.role DESC, m.added_at, r.email",
    )?
    .query_map(params![account], |row| {
        Ok(MemberRow {
            researcher_id: row.get(0)?,
            name: row.get(1)?,
            email: row.get(2)?,
            principal_investigator: row.get::<_, String>(3)? == "principal_investigator",
        })
    })?
    .collect()
}

fn account_from_row(row: &Row<'_>) -> rusqlite::Result<AccountRow> {
    Ok(AccountRow {
        id: row.get("id")?,
        proposal_id: row.get("proposal_id")?,
        agency: row.get("agency")?,
        title: row.get("title")?,
        principal_investigator: row.get("principal_investigator")?,
        award: row.get("award")?,
        balance: row.get("balance")?,
        opened_at: time(row.get("opened_at")?),
        expires_at: time(row.get("expires_at")?),
        expired: row.get("expired")?,
        members: Vec::new(),
    })
}

fn transaction_from_row(row: &Row<'_>) -> rusqlite::Result<TransactionRow> {
    Ok(TransactionRow {
        id: row.get("id")?,
        account_id: row.get("account_id")?,
        researcher_id: row.get("researcher_id")?,
        amount: row.get("amount")?,
        memo: row.get("memo")?,
        idempotency_key: row.get("idempotency_key")?,
        created_at: time(row.get("created_at")?),
        balance_after: row.get("balance_after")?,
    })
}
