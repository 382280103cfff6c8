//! The College's SQL on PostgreSQL, the central store shared by every
//! College instance: [`Pg`] implements [`Store`].
//!
//! Withdrawals go through [`ledger`] (lock, load, write, in two round
//! trips); everything else is here and in [`membership`]. Every
//! transaction runs at READ COMMITTED, set explicitly, whatever the
//! server's default: the locks-then-read order depends on it. Calls that a
//! client may abandon mid-statement run on a [`Conn`], which cancels the
//! statement and keeps the connection out of the pool.

mod guess;
mod ledger;
mod membership;
mod sessions;
mod signups;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use grantmesh_store::tokio_postgres::{self, IsolationLevel, Row};
use grantmesh_store::tokio_postgres_rustls::MakeRustlsConnect;
use uuid::Uuid;

use super::change::Change;
use super::error::{
    credential_used, email_taken, no_researcher_with, not_a_member_to_remove, not_found,
    not_member, not_principal_investigator, opened_on_other_terms,
    principal_investigator_not_removable, unknown_principal_investigator,
};
use super::{
    AccountAudit, AccountRow, Begun, CHANNEL, Finished, Guess, InvitationRow, Ledger,
    MAX_BATCHES_IN_FLIGHT, MemberRow, NewAccount, PendingSignup, Refreshed, ResearcherRow, Result,
    Store, TransactionRow, USED_CREDENTIAL_MARGIN,
};
use crate::ledger::opening::{self, Terms};
use crate::ledger::{Decision, Request};

/// The College's PostgreSQL migrations.
mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

pub(super) fn migrations() -> refinery::Runner {
    embedded::migrations::runner()
}

const ACCOUNT_COLUMNS: &str = "a.id, a.proposal_id, a.agency, a.title, a.principal_investigator, a.award, a.balance, a.currency, \
     a.opened_at, a.expires_at, a.expires_at <= now() AS expired, \
     (SELECT coalesce(max(w.id), 0) FROM withdrawals w WHERE w.account_id = a.id) AS journal_position";

/// The College's PostgreSQL pool, and what it needs to cancel a statement
/// whose caller went away ([`Conn`]).
#[derive(Clone)]
pub(super) struct Pg {
    pool: Pool,
    /// The TLS connector of the URL, for cancel requests.
    tls: MakeRustlsConnect,
    /// What this instance last knew of the accounts it withdrew from.
    guesses: std::sync::Arc<guess::Guesses>,
}

impl std::ops::Deref for Pg {
    type Target = Pool;

    fn deref(&self) -> &Pool {
        &self.pool
    }
}

impl Pg {
    pub(super) async fn connect(
        url: &str,
        pool_size: usize,
    ) -> std::result::Result<Self, grantmesh_store::StoreError> {
        let tls = grantmesh_store::PgConnect::parse(url)?.tls;
        let pool = grantmesh_store::connect(url, pool_size).await?;
        Ok(Self {
            pool,
            tls,
            guesses: Default::default(),
        })
    }

    /// A pooled connection whose statement is cancelled if the call is
    /// dropped while it runs ([`Conn`]).
    async fn conn(&self) -> Result<Conn> {
        Ok(Conn {
            object: Some(self.pool.get().await?),
            tls: self.tls.clone(),
            busy: AtomicBool::new(false),
        })
    }
}

/// A pooled connection for a call that may be dropped mid-statement (its
/// client gave up). Its statements run inside [`Conn::guard`]; if the call
/// is dropped there, the connection is taken out of the pool (never handed
/// to another call mid-statement), the statement is cancelled on the
/// server, and the connection is closed. A statement waiting on a row lock
/// held elsewhere then holds neither a pooled connection nor a backend, and
/// the next call gets a clean connection at once.
struct Conn {
    object: Option<deadpool_postgres::Object>,
    tls: MakeRustlsConnect,
    /// Inside [`Conn::guard`] (a statement may be running), or inside an
    /// open transaction ([`ledger::PgLedger`]).
    busy: AtomicBool,
}

impl std::ops::Deref for Conn {
    type Target = deadpool_postgres::Object;

    fn deref(&self) -> &deadpool_postgres::Object {
        self.object.as_ref().expect("present until dropped")
    }
}

impl Conn {
    /// The pooled connection itself.
    fn object(&self) -> &deadpool_postgres::Object {
        self
    }

    /// Runs `statements` (on this connection), marked busy meanwhile.
    async fn guard<T>(&self, statements: impl std::future::Future<Output = T>) -> T {
        self.busy.store(true, Ordering::Relaxed);
        let out = statements.await;
        self.busy.store(false, Ordering::Relaxed);
        out
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(object) = self.object.take() else {
            return;
        };
        if !self.busy.load(Ordering::Relaxed) {
            return; // back to the pool
        }
        let client = deadpool_postgres::Object::take(object);
        let token = client.cancel_token();
        let tls = self.tls.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = token.cancel_query(tls).await {
                    tracing::debug!(error = %err, "failed to cancel an abandoned statement");
                }
                drop(client);
            });
        }
    }
}

/// The account and its whole journal, read in one snapshot so that the
/// balance and the journal agree with each other.
pub(super) async fn audit(pool: &Pool, account: Uuid) -> Result<AccountAudit> {
    let mut client = pool.get().await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let row = tx
        .query_opt(
            &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts a WHERE a.id = $1"),
            &[&account],
        )
        .await?
        .ok_or_else(|| not_found(account))?;
    let mut row = account_from_row(&row);
    let journal = tx
        .query(
            "SELECT id, account_id, researcher_id, amount, memo, idempotency_key, created_at, balance_after
             FROM withdrawals WHERE account_id = $1 ORDER BY id",
            &[&account],
        )
        .await?
        .iter()
        .map(transaction_from_row)
        .collect();
    row.members = members_in(&tx, account).await?;
    tx.commit().await?;
    Ok(AccountAudit {
        account: row,
        journal,
    })
}

pub(super) async fn register_researcher(
    pool: &Pool,
    name: &str,
    email: &str,
    password_hash: &str,
) -> Result<ResearcherRow> {
    let id = Uuid::new_v4();
    let client = pool.get().await?;
    let inserted = client
        .execute(
            "INSERT INTO researchers (id, name, email, password_hash) VALUES ($1, $2, $3, $4)",
            &[&id, &name, &email, &password_hash],
        )
        .await;
    match inserted {
        Ok(_) => Ok(ResearcherRow {
            id,
            name: name.into(),
            email: email.into(),
            password_hash: password_hash.into(),
        }),
        Err(err) if grantmesh_store::is_unique_violation(&err) => Err(email_taken(email)),
        Err(err) => Err(err.into()),
    }
}

pub(super) async fn researcher_by_email(pg: &Pg, email: &str) -> Result<Option<ResearcherRow>> {
    let client = pg.conn().await?;
    let row = client
        .guard(client.query_opt(
            "SELECT id, name, email, password_hash FROM researchers WHERE email = $1",
            &[&email],
        ))
        .await?;
    Ok(row.map(|row| ResearcherRow {
        id: row.get("id"),
        name: row.get("name"),
        email: row.get("email"),
        password_hash: row.get("password_hash"),
    }))
}

/// Opens the account for a proposal, or returns the one already opened for
/// it, recording the credential as used in the same transaction.
pub(super) async fn open_account(
    pool: &Pool,
    day_length: Duration,
    new: &NewAccount<'_>,
) -> Result<(AccountRow, bool)> {
    let mut client = pool.get().await?;
    let id = Uuid::new_v4();
    let day_ms = i64::try_from(day_length.as_millis()).unwrap_or(i64::MAX);
    let days = i64::from(new.duration_days);
    let margin_ms = i64::try_from(USED_CREDENTIAL_MARGIN.as_millis()).unwrap_or(i64::MAX);
    // The cleanup commits on its own, before the transaction: concurrent
    // openings then wait on each other's deletes for one statement only.
    client
        .execute(
            "DELETE FROM agency_credentials WHERE expires_at < now() - $1::bigint * interval '1 millisecond'",
            &[&margin_ms],
        )
        .await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await?;
    // A concurrent use of the same credential waits here for this
    // transaction, then finds the id taken.
    let recorded = tx
        .execute(
            "INSERT INTO agency_credentials (jti, agency, proposal_id, expires_at) VALUES ($1, $2, $3, $4)",
            &[&new.credential.jti, &new.agency, &new.proposal_id, &new.credential.expires_at],
        )
        .await;
    match recorded {
        Ok(_) => {}
        Err(err) if grantmesh_store::is_unique_violation(&err) => return Err(credential_used()),
        Err(err) => return Err(err.into()),
    }
    let opened = tx
        .query_opt(
            "WITH ins AS (
                 INSERT INTO accounts (id, proposal_id, agency, title, principal_investigator, awarded_to, award, balance,
                                       duration_days, expires_at, currency)
                 VALUES ($1, $2, $3, $4, $5, $5, $6, $6, $7::bigint::integer,
                         now() + ($7::bigint * $8::bigint) * interval '1 millisecond', $9)
                 ON CONFLICT (proposal_id) DO NOTHING
                 RETURNING id, principal_investigator
             ),
             pi AS (
                 INSERT INTO members (account_id, researcher_id, role)
                 SELECT id, principal_investigator, 'principal_investigator' FROM ins
             )
             SELECT id FROM ins",
            &[&id, &new.proposal_id, &new.agency, &new.title, &new.principal_investigator, &new.award, &days, &day_ms, &new.currency],
        )
        .await;
    let created = match opened {
        Ok(row) => row.is_some(),
        Err(err) if err.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) => {
            return Err(unknown_principal_investigator(new.principal_investigator));
        }
        Err(err) => return Err(err.into()),
    };
    if !created {
        // Opened before: a replay only on the same terms. The row is
        // locked so that its terms cannot change before this commits.
        let row = tx
            .query_one(
                "SELECT agency, awarded_to, award, duration_days, currency FROM accounts WHERE proposal_id = $1 FOR SHARE",
                &[&new.proposal_id],
            )
            .await?;
        let opened = Terms {
            agency: row.get(0),
            awarded_to: row.get(1),
            award: row.get(2),
            duration_days: u32::try_from(row.get::<_, i32>(3)).unwrap_or_default(),
            currency: row.get(4),
        };
        if let Some(difference) = opening::difference(new.proposal_id, &opened, &new.terms()) {
            return Err(opened_on_other_terms(difference));
        }
    }
    tx.commit().await?;
    // Opened now or earlier (possibly by another instance a moment ago):
    // read it back in a fresh statement, which sees either.
    let row = client
        .query_one(
            &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts a WHERE a.proposal_id = $1"),
            &[&new.proposal_id],
        )
        .await?;
    let mut account = account_from_row(&row);
    account.members = members(&client, account.id).await?;
    Ok((account, created))
}

/// The account, if `caller` is one of its members (any caller when `None`).
pub(super) async fn account(pool: &Pool, id: Uuid, caller: Option<Uuid>) -> Result<AccountRow> {
    account_on(&pool.get().await?, id, caller).await
}

/// [`account`] for a call that may be dropped mid-statement ([`Conn`]).
pub(super) async fn read_account(pg: &Pg, id: Uuid, caller: Option<Uuid>) -> Result<AccountRow> {
    let client = pg.conn().await?;
    client.guard(account_on(client.object(), id, caller)).await
}

/// The account as `client` sees it: inside a transaction that changed it,
/// what that change left, read before the commit so that a committed change
/// is never reported as failed because reading it back failed.
pub(super) async fn account_on(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    caller: Option<Uuid>,
) -> Result<AccountRow> {
    let row = client
        .query_opt(
            &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts a WHERE a.id = $1"),
            &[&id],
        )
        .await?
        .ok_or_else(|| not_found(id))?;
    let mut account = account_from_row(&row);
    account.members = members_in(client, id).await?;
    if let Some(caller) = caller
        && !account.members.iter().any(|m| m.researcher_id == caller)
    {
        return Err(not_member(id));
    }
    Ok(account)
}

/// Every account `caller` is a member of.
pub(super) async fn accounts_of(
    pg: &Pg,
    caller: Uuid,
    after: Option<(SystemTime, Uuid)>,
    limit: i64,
) -> Result<Vec<AccountRow>> {
    let client = pg.conn().await?;
    client
        .guard(accounts_on(&client, caller, after, limit))
        .await
}

async fn accounts_on(
    client: &deadpool_postgres::Object,
    caller: Uuid,
    after: Option<(SystemTime, Uuid)>,
    limit: i64,
) -> Result<Vec<AccountRow>> {
    let (after_at, after_id) = after.unzip();
    let rows = client
        .query(
            &format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts a JOIN members m ON m.account_id = a.id
                 WHERE m.researcher_id = $1
                   AND ($2::timestamptz IS NULL OR (a.opened_at, a.id) < ($2, $3::uuid))
                 ORDER BY a.opened_at DESC, a.id DESC LIMIT $4"
            ),
            &[&caller, &after_at, &after_id, &limit],
        )
        .await?;
    let mut accounts: Vec<AccountRow> = rows.iter().map(account_from_row).collect();
    let ids: Vec<Uuid> = accounts.iter().map(|a| a.id).collect();
    let members = client
        .query(
            "SELECT m.account_id, r.id, r.name, r.email, m.role FROM members m
             JOIN researchers r ON r.id = m.researcher_id
             WHERE m.account_id = ANY($1) ORDER BY m.role DESC, m.added_at, r.email",
            &[&ids],
        )
        .await?;
    for row in &members {
        let account: Uuid = row.get(0);
        if let Some(target) = accounts.iter_mut().find(|a| a.id == account) {
            target.members.push(MemberRow {
                researcher_id: row.get(1),
                name: row.get(2),
                email: row.get(3),
                principal_investigator: row.get::<_, &str>(4) == "principal_investigator",
            });
        }
    }
    Ok(accounts)
}

/// Adds the researcher with `email`; only the principal investigator may.
pub(super) async fn add_member(
    pool: &Pool,
    account: Uuid,
    caller: Uuid,
    email: &str,
) -> Result<AccountRow> {
    let mut client = pool.get().await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await?;
    lock_as_principal_investigator(&tx, account, Some(caller)).await?;
    let researcher: Uuid = tx
        .query_opt("SELECT id FROM researchers WHERE email = $1", &[&email])
        .await?
        .ok_or_else(|| no_researcher_with(email))?
        .get(0);
    let added = tx
        .execute(
            "INSERT INTO members (account_id, researcher_id, role) VALUES ($1, $2, 'member') ON CONFLICT DO NOTHING",
            &[&account, &researcher],
        )
        .await?;
    if added > 0 {
        notify_membership(&tx, account).await?;
    }
    let row = account_on(&tx, account, None).await?;
    tx.commit().await?;
    Ok(row)
}

/// Removes a member; only the principal investigator may, and not themself.
pub(super) async fn remove_member(
    pool: &Pool,
    account: Uuid,
    caller: Uuid,
    researcher: Uuid,
) -> Result<AccountRow> {
    let mut client = pool.get().await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await?;
    // A member may leave on their own; anyone else is removed by the principal investigator.
    let principal = if caller == researcher {
        None
    } else {
        Some(caller)
    };
    let pi = lock_as_principal_investigator(&tx, account, principal).await?;
    if researcher == pi {
        return Err(principal_investigator_not_removable());
    }
    let removed = tx
        .execute(
            "DELETE FROM members WHERE account_id = $1 AND researcher_id = $2",
            &[&account, &researcher],
        )
        .await?;
    if removed == 0 {
        return Err(not_a_member_to_remove(account, researcher));
    }
    notify_membership(&tx, account).await?;
    let row = account_on(&tx, account, None).await?;
    tx.commit().await?;
    Ok(row)
}

/// The journal, newest first, `limit` entries before `before` (an entry id).
pub(super) async fn transactions(
    pg: &Pg,
    account: Uuid,
    caller: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<TransactionRow>> {
    let client = pg.conn().await?;
    client
        .guard(async {
            account_on(client.object(), account, Some(caller)).await?;
            let rows = client
                .query(
                    "SELECT id, account_id, researcher_id, amount, memo, idempotency_key, created_at, balance_after
                     FROM withdrawals WHERE account_id = $1 AND ($2::bigint IS NULL OR id < $2)
                     ORDER BY id DESC LIMIT $3",
                    &[&account, &before, &limit],
                )
                .await?;
            Ok(rows.iter().map(transaction_from_row).collect())
        })
        .await
}

pub(super) async fn transaction(pg: &Pg, account: Uuid, id: i64) -> Result<Option<TransactionRow>> {
    let client = pg.conn().await?;
    let row = client
        .guard(client.query_opt(
            "SELECT id, account_id, researcher_id, amount, memo, idempotency_key, created_at, balance_after
             FROM withdrawals WHERE account_id = $1 AND id = $2",
            &[&account, &id],
        ))
        .await?;
    Ok(row.as_ref().map(transaction_from_row))
}

/// The account's journal entries with ids in `first..=last`, oldest first:
/// what one notified batch added to it.
pub(super) async fn entries(
    pg: &Pg,
    account: Uuid,
    first: i64,
    last: i64,
) -> Result<Vec<TransactionRow>> {
    let client = pg.conn().await?;
    let rows = client
        .guard(client.query(
            "SELECT id, account_id, researcher_id, amount, memo, idempotency_key, created_at, balance_after
             FROM withdrawals WHERE account_id = $1 AND id BETWEEN $2 AND $3 ORDER BY id",
            &[&account, &first, &last],
        ))
        .await?;
    Ok(rows.iter().map(transaction_from_row).collect())
}

/// Locks the account's row and returns its principal investigator, who
/// must be `caller` when one is given (`None`: a member leaving on their own).
async fn lock_as_principal_investigator(
    tx: &deadpool_postgres::Transaction<'_>,
    account: Uuid,
    caller: Option<Uuid>,
) -> Result<Uuid> {
    let pi: Uuid = tx
        .query_opt(
            "SELECT principal_investigator FROM accounts WHERE id = $1 FOR UPDATE",
            &[&account],
        )
        .await?
        .ok_or_else(|| not_found(account))?
        .get(0);
    if let Some(caller) = caller
        && pi != caller
    {
        let member: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM members WHERE account_id = $1 AND researcher_id = $2)",
                &[&account, &caller],
            )
            .await?
            .get(0);
        // Only members learn that the account exists.
        return Err(if member {
            not_principal_investigator(account)
        } else {
            not_member(account)
        });
    }
    Ok(pi)
}

async fn notify_membership(tx: &deadpool_postgres::Transaction<'_>, account: Uuid) -> Result<()> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &Change::Membership(account).encode()],
    )
    .await?;
    Ok(())
}

async fn members(client: &deadpool_postgres::Object, account: Uuid) -> Result<Vec<MemberRow>> {
    members_in(client, account).await
}

async fn members_in(
    client: &impl deadpool_postgres::GenericClient,
    account: Uuid,
) -> Result<Vec<MemberRow>> {
    let rows = client
        .query(
            "SELECT r.id, r.name, r.email, m.role FROM members m JOIN researchers r ON r.id = m.researcher_id
             WHERE m.account_id = $1 ORDER BY m.role DESC, m.added_at, r.email",
            &[&account],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| MemberRow {
            researcher_id: row.get(0),
            name: row.get(1),
            email: row.get(2),
            principal_investigator: row.get::<_, &str>(3) == "principal_investigator",
        })
        .collect())
}

fn account_from_row(row: &Row) -> AccountRow {
    AccountRow {
        id: row.get("id"),
        proposal_id: row.get("proposal_id"),
        agency: row.get("agency"),
        title: row.get("title"),
        principal_investigator: row.get("principal_investigator"),
        award: row.get("award"),
        balance: row.get("balance"),
        currency: row.get("currency"),
        opened_at: row.get("opened_at"),
        expires_at: row.get("expires_at"),
        expired: row.get("expired"),
        members: Vec::new(),
        journal_position: row.get("journal_position"),
    }
}

fn transaction_from_row(row: &Row) -> TransactionRow {
    TransactionRow {
        id: row.get("id"),
        account_id: row.get("account_id"),
        researcher_id: row.get("researcher_id"),
        amount: row.get("amount"),
        memo: row.get("memo"),
        idempotency_key: row.get("idempotency_key"),
        created_at: row.get("created_at"),
        balance_after: row.get("balance_after"),
    }
}

#[async_trait::async_trait]
impl Store for Pg {
    async fn ledger(&self) -> Result<Box<dyn Ledger>> {
        Ok(Box::new(ledger::PgLedger::new(
            self.conn().await?,
            std::sync::Arc::clone(&self.guesses),
        )))
    }

    fn guess(&self, batch: &[Request]) -> Option<Guess> {
        self.guesses.guess(batch)
    }

    async fn write_guessed(
        &self,
        guess: &Guess,
        decision: &Decision,
    ) -> Result<Option<(Vec<i64>, SystemTime)>> {
        guess::write(&self.conn().await?, &self.guesses, guess, decision).await
    }

    /// Two: one batch runs its statements while the other commits (commits
    /// carrying a NOTIFY go one at a time, database-wide); at most half
    /// the pool, so reads always find a connection.
    fn batches_in_flight(&self, pool_size: usize) -> usize {
        MAX_BATCHES_IN_FLIGHT.min(pool_size / 2)
    }

    fn pool_status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }

    async fn audit(&self, account: Uuid) -> Result<AccountAudit> {
        audit(self, account).await
    }

    async fn register_researcher(
        &self,
        name: &str,
        email: &str,
        password_hash: &str,
    ) -> Result<ResearcherRow> {
        register_researcher(self, name, email, password_hash).await
    }

    async fn begin_signup(
        &self,
        signup: &PendingSignup<'_>,
        lifetime: Duration,
        resend_after: Duration,
    ) -> Result<Begun> {
        signups::begin(self, signup, lifetime, resend_after).await
    }

    async fn signup_password_hash(&self, email: &str, attempts: u32) -> Result<Option<String>> {
        signups::password_hash(self, email, attempts).await
    }

    async fn finish_signup(
        &self,
        email: &str,
        code_digest: &[u8],
        password_hash: &str,
        attempts: u32,
    ) -> Result<Finished> {
        signups::finish(self, email, code_digest, password_hash, attempts).await
    }

    async fn researcher_by_email(&self, email: &str) -> Result<Option<ResearcherRow>> {
        researcher_by_email(self, email).await
    }

    async fn researcher(&self, id: Uuid) -> Result<Option<ResearcherRow>> {
        membership::researcher(self, id).await
    }

    async fn create_session(
        &self,
        researcher: Uuid,
        refresh_hash: &[u8],
        lifetime: Duration,
    ) -> Result<(Uuid, SystemTime)> {
        sessions::create(self, researcher, refresh_hash, lifetime).await
    }

    async fn refresh_session(&self, old: &[u8], new: &[u8]) -> Result<Refreshed> {
        sessions::refresh(self, old, new).await
    }

    async fn end_session(&self, researcher: Uuid, session: Uuid) -> Result<bool> {
        sessions::end(self, researcher, session).await
    }

    async fn change_password(&self, researcher: Uuid, password_hash: &str) -> Result<Vec<Uuid>> {
        sessions::change_password(self, researcher, password_hash).await
    }

    async fn end_session_by_refresh(&self, refresh_hash: &[u8]) -> Result<Option<Uuid>> {
        sessions::end_by_refresh(self, refresh_hash).await
    }

    async fn sessions_ended_since(&self, since: SystemTime) -> Result<Vec<(Uuid, SystemTime)>> {
        sessions::ended_since(self, since).await
    }

    async fn open_account(
        &self,
        day_length: Duration,
        new: &NewAccount<'_>,
    ) -> Result<(AccountRow, bool)> {
        open_account(self, day_length, new).await
    }

    async fn account(&self, id: Uuid, caller: Option<Uuid>) -> Result<AccountRow> {
        read_account(self, id, caller).await
    }

    async fn accounts_of(
        &self,
        caller: Uuid,
        after: Option<(SystemTime, Uuid)>,
        limit: i64,
    ) -> Result<Vec<AccountRow>> {
        accounts_of(self, caller, after, limit).await
    }

    async fn add_member(&self, account: Uuid, caller: Uuid, email: &str) -> Result<AccountRow> {
        add_member(self, account, caller, email).await
    }

    async fn remove_member(
        &self,
        account: Uuid,
        caller: Uuid,
        researcher: Uuid,
    ) -> Result<AccountRow> {
        remove_member(self, account, caller, researcher).await
    }

    async fn transactions(
        &self,
        account: Uuid,
        caller: Uuid,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<TransactionRow>> {
        transactions(self, account, caller, before, limit).await
    }

    async fn entries(&self, account: Uuid, first: i64, last: i64) -> Result<Vec<TransactionRow>> {
        entries(self, account, first, last).await
    }

    async fn transaction(&self, account: Uuid, id: i64) -> Result<Option<TransactionRow>> {
        transaction(self, account, id).await
    }

    async fn invite(
        &self,
        account: Uuid,
        caller: Uuid,
        email: &str,
    ) -> Result<(AccountRow, Vec<InvitationRow>)> {
        membership::invite(self, account, caller, email).await
    }

    async fn account_invitations(&self, account: Uuid) -> Result<Vec<InvitationRow>> {
        membership::account_invitations(self, account).await
    }

    async fn invitations_for(&self, caller: Uuid) -> Result<Vec<InvitationRow>> {
        membership::invitations_for(self, caller).await
    }

    async fn accept_invitation(&self, caller: Uuid, invitation: Uuid) -> Result<AccountRow> {
        membership::accept_invitation(self, caller, invitation).await
    }

    async fn decline_invitation(&self, caller: Uuid, invitation: Uuid) -> Result<()> {
        membership::decline_invitation(self, caller, invitation).await
    }

    async fn transfer_principal(
        &self,
        account: Uuid,
        caller: Uuid,
        researcher: Uuid,
    ) -> Result<AccountRow> {
        membership::transfer_principal(self, account, caller, researcher).await
    }
}
