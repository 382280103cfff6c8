//! A batch of withdrawals on SQLite: [`Ledger`] in two calls on one pooled
//! connection. The first runs `BEGIN IMMEDIATE`, which takes the file's
//! write lock (SQLite's one lock stands for every row lock), then reads
//! what the rule needs and the store's clock; the second writes and
//! commits, and the change goes to the file's in-process fan-out. No
//! account is ever locked by another writer here: a writer holding the
//! file makes `BEGIN IMMEDIATE` wait (up to the busy timeout, then
//! UNAVAILABLE), so nothing is deferred.

use std::collections::{HashMap, HashSet};

use grantmesh_store::Notifications;
use grantmesh_store::sqlite::{millis, time};
use rusqlite::{Connection, OptionalExtension, params};

use crate::ledger::{Decision, Locked, LockedAccount, Request, Role, TransactionRow};
use crate::store::change::Change;
use crate::store::{Ledger, Result, StoreError};

/// A batch's transaction on one connection. Dropped while the transaction
/// may be open, the connection is taken out of the pool and closed, which
/// rolls it back.
pub(super) struct SqliteLedger {
    conn: Option<deadpool_sqlite::Object>,
    notifications: Notifications,
    /// A call was made that may have left the transaction open.
    open: bool,
}

impl SqliteLedger {
    pub(super) fn new(conn: deadpool_sqlite::Object, notifications: Notifications) -> Self {
        Self {
            conn: Some(conn),
            notifications,
            open: false,
        }
    }

    /// Runs `call` on the connection; a failed call rolls back first.
    async fn call<T: Send + 'static>(
        &mut self,
        call: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.open = true;
        let conn = self.conn.as_ref().expect("present until dropped");
        let out = conn
            .interact(move |conn| {
                let out = call(conn);
                if out.is_err() && !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                out
            })
            .await
            .map_err(|err| StoreError::SqliteCall(err.to_string()))??;
        Ok(out)
    }
}

impl Drop for SqliteLedger {
    fn drop(&mut self) {
        if self.open
            && let Some(conn) = self.conn.take()
        {
            drop(deadpool_sqlite::Object::take(conn));
        }
    }
}

#[async_trait::async_trait]
impl Ledger for SqliteLedger {
    async fn lock_and_load(&mut self, batch: &[Request]) -> Result<Locked> {
        let batch = batch.to_vec();
        let locked = self
            .call(move |conn| {
                conn.execute_batch("BEGIN IMMEDIATE")?;
                load(conn, &batch)
            })
            .await;
        // Failed: rolled back already, so the connection may be reused.
        self.open = locked.is_ok();
        locked
    }

    async fn write(mut self: Box<Self>, decision: &Decision) -> Result<Vec<i64>> {
        let accounts: Vec<uuid::Uuid> = decision.entries.iter().map(|e| e.account).collect();
        let decision = decision.clone();
        let ids = self
            .call(move |conn| {
                let ids = write(conn, &decision)?;
                conn.execute_batch("COMMIT")?;
                Ok(ids)
            })
            .await;
        self.open = false;
        let ids = ids?;
        // Announced here, not by the caller once this returns: the caller
        // may be gone by then, the commit not.
        if let (Some(first), Some(last)) = (ids.first(), ids.last()) {
            self.notifications
                .publish(Change::withdrawals(*first, *last, accounts).encode());
        }
        Ok(ids)
    }
}

/// Inside the transaction: the state of the batch's accounts, the roles of
/// its callers, the entries of their keys, and the store's clock.
fn load(conn: &Connection, batch: &[Request]) -> Result<Locked> {
    let now: i64 = conn.query_row(
        concat!("SELECT ", grantmesh_store::sqlite_now_ms!()),
        [],
        |row| row.get(0),
    )?;
    let mut state = Locked {
        now: time(now),
        accounts: HashMap::new(),
        busy: HashSet::new(),
        used: HashMap::new(),
    };
    for request in batch {
        if let std::collections::hash_map::Entry::Vacant(slot) =
            state.accounts.entry(request.account)
        {
            let found = conn
                .prepare_cached("SELECT balance, expires_at FROM accounts WHERE id = ?1")?
                .query_row(params![request.account], |row| {
                    Ok(LockedAccount {
                        balance: row.get(0)?,
                        expires_at: time(row.get(1)?),
                        roles: HashMap::new(),
                    })
                })
                .optional()?;
            let Some(account) = found else {
                continue;
            };
            slot.insert(account);
        }
        let role: Option<String> = conn
            .prepare_cached(
                "SELECT role FROM members WHERE account_id = ?1 AND researcher_id = ?2",
            )?
            .query_row(params![request.account, request.caller], |row| row.get(0))
            .optional()?;
        if let Some(role) = role {
            let role = Role::parse(&role).ok_or_else(|| {
                StoreError::SqliteCall(format!("the store holds an unknown role {role:?}"))
            })?;
            if let Some(account) = state.accounts.get_mut(&request.account) {
                account.roles.insert(request.caller, role);
            }
        }
        let used = conn
            .prepare_cached(
                "SELECT id, amount, memo, created_at, balance_after FROM withdrawals
                 WHERE account_id = ?1 AND researcher_id = ?2 AND idempotency_key = ?3",
            )?
            .query_row(
                params![request.account, request.caller, request.key],
                |row| {
                    Ok(TransactionRow {
                        id: row.get(0)?,
                        account_id: request.account,
                        researcher_id: request.caller,
                        amount: row.get(1)?,
                        memo: row.get(2)?,
                        idempotency_key: request.key.clone(),
                        created_at: time(row.get(3)?),
                        balance_after: row.get(4)?,
                    })
                },
            )
            .optional()?;
        if let Some(used) = used {
            state.used.insert(request.scope(), used);
        }
    }
    Ok(state)
}

/// Inside the transaction: the decision's entries, in order, and balances.
fn write(conn: &Connection, decision: &Decision) -> Result<Vec<i64>> {
    let at = millis(decision.at);
    let mut ids = Vec::with_capacity(decision.entries.len());
    for entry in &decision.entries {
        ids.push(
            conn.prepare_cached(
                "INSERT INTO withdrawals (account_id, researcher_id, amount, idempotency_key, memo,
                                          balance_after, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
            )?
            .query_row(
                params![
                    entry.account,
                    entry.researcher,
                    entry.amount,
                    entry.key,
                    entry.memo,
                    entry.balance_after,
                    at
                ],
                |row| row.get(0),
            )?,
        );
    }
    for (account, balance) in &decision.balances {
        conn.prepare_cached("UPDATE accounts SET balance = ?2 WHERE id = ?1")?
            .execute(params![account, balance])?;
    }
    Ok(ids)
}
