//! The College's SQL on the embedded SQLite store (`grantmesh dev`): the
//! same rules as [`super::postgres`], kept by SQLite's single writer.
//!
//! [`Accounts`] implements [`Store`]; withdrawals go through [`ledger`].
//! Every change runs in one `BEGIN IMMEDIATE` transaction, which takes the
//! file's write lock before reading, so what it checked still holds when
//! it writes, and `CHECK (balance >= 0)` stands behind it as on PostgreSQL.
//! Writers that find the lock taken wait up to the busy timeout, then get
//! `UNAVAILABLE`.
//!
//! After a change commits, the same payloads PostgreSQL's `NOTIFY` carries
//! go to the file's in-process fan-out, so `WatchAccount` works unchanged for
//! instances in this process (and only those: see [`grantmesh_store::sqlite`]).
//! Every call runs on tokio's blocking pool through the pool's `interact`.

mod ledger;
mod membership;
mod sessions;
mod signups;

use std::time::{Duration, SystemTime};

use grantmesh_store::Notifications;
use grantmesh_store::sqlite::{
    SqliteStore, is_foreign_key_violation, is_unique_violation, millis, time,
};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use uuid::Uuid;

use super::change::Change;
use super::error::{
    credential_used, email_taken, no_researcher_with, not_a_member_to_remove, not_found,
    not_member, not_principal_investigator, opened_on_other_terms,
    principal_investigator_not_removable, unknown_principal_investigator,
};
use super::{
    AccountAudit, AccountRow, Begun, CHANNEL, Finished, InvitationRow, Ledger, MemberRow,
    NewAccount, PendingSignup, Refreshed, ResearcherRow, Result, Store, StoreError, TransactionRow,
    USED_CREDENTIAL_MARGIN,
};
use crate::ledger::opening::{self, Terms};

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
            "a.id, a.proposal_id, a.agency, a.title, a.principal_investigator, a.award, a.balance, a.currency, \
             a.opened_at, a.expires_at, a.expires_at <= ",
            grantmesh_store::sqlite_now_ms!(),
            " AS expired, \
             (SELECT coalesce(max(w.id), 0) FROM withdrawals w WHERE w.account_id = a.id) AS journal_position"
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
}

#[async_trait::async_trait]
impl Store for Accounts {
    async fn ledger(&self) -> Result<Box<dyn Ledger>> {
        Ok(Box::new(ledger::SqliteLedger::new(
            self.db.pool.get().await?,
            self.notifications.clone(),
        )))
    }

    /// One: SQLite has one writer, so a second batch would only wait.
    fn batches_in_flight(&self, _pool_size: usize) -> usize {
        1
    }

    /// The pool's size, idle connections, waiters and bound, for the metrics.
    fn pool_status(&self) -> deadpool_sqlite::Status {
        self.db.pool.status()
    }

    async fn audit(&self, account: Uuid) -> Result<AccountAudit> {
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

    async fn register_researcher(
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

    async fn begin_signup(
        &self,
        signup: &PendingSignup<'_>,
        lifetime: Duration,
        resend_after: Duration,
    ) -> Result<Begun> {
        self.begin_signup_here(signup, lifetime, resend_after).await
    }

    async fn signup_password_hash(&self, email: &str, attempts: u32) -> Result<Option<String>> {
        self.signup_password_hash_here(email, attempts).await
    }

    async fn finish_signup(
        &self,
        email: &str,
        code_digest: &[u8],
        password_hash: &str,
        attempts: u32,
    ) -> Result<Finished> {
        self.finish_signup_here(email, code_digest, password_hash, attempts)
            .await
    }

    async fn researcher_by_email(&self, email: &str) -> Result<Option<ResearcherRow>> {
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

    async fn open_account(
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
        let terms = new.terms();
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
                "INSERT INTO accounts (id, proposal_id, agency, title, principal_investigator, awarded_to, award,
                                       balance, duration_days, opened_at, expires_at, currency)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (proposal_id) DO NOTHING",
                params![
                    id,
                    proposal_id,
                    agency,
                    title,
                    principal_investigator,
                    award,
                    terms.duration_days,
                    now,
                    now.saturating_add(lasts_ms),
                    terms.currency
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
            } else {
                // Opened before: a replay only on the same terms.
                let opened = tx.query_row(
                    "SELECT agency, awarded_to, award, duration_days, currency FROM accounts WHERE proposal_id = ?1",
                    params![proposal_id],
                    |row| {
                        Ok(Terms {
                            agency: row.get(0)?,
                            awarded_to: row.get(1)?,
                            award: row.get(2)?,
                            duration_days: row.get(3)?,
                            currency: row.get(4)?,
                        })
                    },
                )?;
                if let Some(difference) = opening::difference(&proposal_id, &opened, &terms) {
                    return Err(opened_on_other_terms(difference));
                }
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

    async fn account(&self, id: Uuid, caller: Option<Uuid>) -> Result<AccountRow> {
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

    async fn accounts_of(
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

    async fn add_member(&self, account: Uuid, caller: Uuid, email: &str) -> Result<AccountRow> {
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
                notifications.publish(Change::Membership(account).encode());
            }
            Ok(row)
        })
        .await
    }

    async fn remove_member(
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
            notifications.publish(Change::Membership(account).encode());
            Ok(row)
        })
        .await
    }

    async fn entries(&self, account: Uuid, first: i64, last: i64) -> Result<Vec<TransactionRow>> {
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

    async fn transactions(
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

    async fn transaction(&self, account: Uuid, id: i64) -> Result<Option<TransactionRow>> {
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

    async fn researcher(&self, id: Uuid) -> Result<Option<ResearcherRow>> {
        Accounts::researcher(self, id).await
    }

    async fn create_session(
        &self,
        researcher: Uuid,
        refresh_hash: &[u8],
        lifetime: Duration,
    ) -> Result<(Uuid, SystemTime)> {
        Accounts::create_session(self, researcher, refresh_hash, lifetime).await
    }

    async fn refresh_session(&self, old: &[u8], new: &[u8]) -> Result<Refreshed> {
        Accounts::refresh_session(self, old, new).await
    }

    async fn end_session(&self, researcher: Uuid, session: Uuid) -> Result<bool> {
        Accounts::end_session(self, researcher, session).await
    }

    async fn change_password(&self, researcher: Uuid, password_hash: &str) -> Result<Vec<Uuid>> {
        Accounts::change_password(self, researcher, password_hash).await
    }

    async fn end_session_by_refresh(&self, refresh_hash: &[u8]) -> Result<Option<Uuid>> {
        Accounts::end_session_by_refresh(self, refresh_hash).await
    }

    async fn sessions_ended_since(&self, since: SystemTime) -> Result<Vec<(Uuid, SystemTime)>> {
        Accounts::sessions_ended_since(self, since).await
    }

    async fn invite(
        &self,
        account: Uuid,
        caller: Uuid,
        email: &str,
    ) -> Result<(AccountRow, Vec<InvitationRow>)> {
        Accounts::invite(self, account, caller, email).await
    }

    async fn account_invitations(&self, account: Uuid) -> Result<Vec<InvitationRow>> {
        Accounts::account_invitations(self, account).await
    }

    async fn invitations_for(&self, caller: Uuid) -> Result<Vec<InvitationRow>> {
        Accounts::invitations_for(self, caller).await
    }

    async fn accept_invitation(&self, caller: Uuid, invitation: Uuid) -> Result<AccountRow> {
        Accounts::accept_invitation(self, caller, invitation).await
    }

    async fn decline_invitation(&self, caller: Uuid, invitation: Uuid) -> Result<()> {
        Accounts::decline_invitation(self, caller, invitation).await
    }

    async fn transfer_principal(
        &self,
        account: Uuid,
        caller: Uuid,
        researcher: Uuid,
    ) -> Result<AccountRow> {
        Accounts::transfer_principal(self, account, caller, researcher).await
    }
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
    if let Some(caller) = caller
        && pi != caller
    {
        let member: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM members WHERE account_id = ?1 AND researcher_id = ?2)",
            params![account, caller],
            |row| row.get(0),
        )?;
        // Only members learn that the account exists.
        return Err(if member {
            not_principal_investigator(account)
        } else {
            not_member(account)
        });
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
        currency: row.get("currency")?,
        opened_at: time(row.get("opened_at")?),
        expires_at: time(row.get("expires_at")?),
        expired: row.get("expired")?,
        members: Vec::new(),
        journal_position: row.get("journal_position")?,
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
