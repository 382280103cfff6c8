//! The College's store: researchers, accounts, members and the journal,
//! shared by every College instance, on PostgreSQL ([`postgres`]) or on an
//! embedded SQLite file ([`sqlite`]); the database URL picks which.
//!
//! This module holds what both backends share: the row types, the one error
//! type and its gRPC mapping, and [`AccountStore`], which hands each call to
//! its backend. The two keep the same rules, which
//! `tests/conformance.rs` checks against both: a withdrawal checks
//! membership, expiry (by the store's clock), the idempotency key and the
//! balance, then debits and journals, all or nothing. Withdrawals are
//! applied in batches ([`batcher`]): concurrent ones share one transaction
//! and one commit, each applied in arrival order and answered on its own,
//! and a refused one changes nothing and fails no other; the journal is
//! append-only; a balance never goes below zero. An account is opened with
//! an agency credential that is recorded in the same transaction, so each
//! credential opens at most once, across all College instances.

mod batcher;
mod membership;
mod postgres;
mod sqlite;

pub use membership::{InvitationRow, MAX_PENDING_INVITATIONS};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use grantmesh_store::tokio_postgres;
use grantmesh_store::{Database, Notifications};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

/// The channel College instances notify and listen on.
pub const CHANNEL: &str = "grantmesh_accounts";

/// What the store reports, before it becomes a gRPC status in one place ([`StoreError::into_status`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A bound on what one account or researcher may hold was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Lost too many races with concurrent calls; safe to retry.
    #[error("{0}")]
    Contended(String),
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A SQLite failure other than a busy store (which is [`Self::Contended`]).
    #[error(transparent)]
    Sqlite(rusqlite::Error),
    #[error(transparent)]
    SqlitePool(#[from] deadpool_sqlite::PoolError),
    /// The blocking task running a SQLite call panicked or was cancelled.
    #[error("the sqlite call did not finish: {0}")]
    SqliteCall(String),
    /// Too much work is already waiting (a queue at its bound); retry shortly.
    #[error("{0}")]
    Overloaded(String),
    /// One failure answered to several callers: a withdrawal batch that
    /// failed as a whole fails each of its withdrawals with it.
    #[error(transparent)]
    Shared(Arc<StoreError>),
}

impl From<rusqlite::Error> for StoreError {
    /// A store still locked by other writers after the busy timeout is
    /// contention, safe to retry, as on PostgreSQL.
    fn from(err: rusqlite::Error) -> Self {
        if grantmesh_store::sqlite::is_busy(&err) {
            Self::Contended("the central store is busy right now; retry with the same key".into())
        } else {
            Self::Sqlite(err)
        }
    }
}

impl StoreError {
    pub fn into_status(self) -> Status {
        self.status()
    }

    fn status(&self) -> Status {
        match self {
            Self::NotFound(msg) => Status::not_found(msg),
            Self::PermissionDenied(msg) => Status::permission_denied(msg),
            Self::FailedPrecondition(msg) => Status::failed_precondition(msg),
            Self::AlreadyExists(msg) => Status::already_exists(msg),
            Self::ResourceExhausted(msg) => Status::resource_exhausted(msg),
            Self::Contended(msg) => Status::unavailable(msg),
            Self::Overloaded(msg) => Status::resource_exhausted(msg),
            Self::Database(err) => grantmesh_store::status(err),
            Self::Pool(err) => grantmesh_store::status(err),
            Self::Sqlite(err) => grantmesh_store::status(err),
            Self::SqlitePool(err) => grantmesh_store::status(err),
            Self::SqliteCall(msg) => {
                tracing::error!(error = %msg, "sqlite call failed");
                Status::internal("the central store failed to complete the call")
            }
            Self::Shared(err) => err.status(),
        }
    }
}

/// What the metrics say about a failed call (docs/metrics.md).
impl StoreError {
    /// Why a call was refused, in a word: `insufficient_funds`, `expired`,
    /// `key_reused`, `not_member` (or not allowed), `not_found`,
    /// `overloaded`, `unavailable` (contention or the database), or the
    /// status code's name for anything else.
    pub fn refusal(&self) -> &'static str {
        match self {
            Self::FailedPrecondition(msg) if msg.starts_with(INSUFFICIENT_FUNDS) => {
                "insufficient_funds"
            }
            Self::FailedPrecondition(msg) if msg.contains(EXPIRED) => "expired",
            Self::FailedPrecondition(msg) if msg.contains(KEY_REUSED) => "key_reused",
            Self::FailedPrecondition(_) => "failed_precondition",
            Self::PermissionDenied(_) => "not_member",
            Self::NotFound(_) => "not_found",
            Self::AlreadyExists(_) => "already_exists",
            Self::ResourceExhausted(_) => "resource_exhausted",
            Self::Overloaded(_) => "overloaded",
            Self::Shared(err) => err.refusal(),
            Self::Contended(_)
            | Self::Database(_)
            | Self::Pool(_)
            | Self::Sqlite(_)
            | Self::SqlitePool(_)
            | Self::SqliteCall(_) => "unavailable",
        }
    }

    /// The kind of a failure of the database itself, or `None` for a
    /// refusal by the rules (which the database answered correctly):
    /// `connect`, `pool_timeout`, `pool_closed`, `connection_closed`,
    /// `query` (an error the server reported), `contended` (serialization
    /// failures, deadlocks, a busy SQLite file: retried or retryable),
    /// `sqlite`, or `other`.
    pub fn database_error_kind(&self) -> Option<&'static str> {
        Some(match self {
            Self::Database(err) if err.is_closed() => "connection_closed",
            Self::Database(err) if err.code().is_some() => "query",
            Self::Database(_) => "connection_closed",
            Self::Pool(err) => match err {
                deadpool_postgres::PoolError::Timeout(_) => "pool_timeout",
                deadpool_postgres::PoolError::Closed => "pool_closed",
                _ => "connect",
            },
            Self::SqlitePool(err) => match err {
                deadpool_sqlite::PoolError::Timeout(_) => "pool_timeout",
                deadpool_sqlite::PoolError::Closed => "pool_closed",
                _ => "connect",
            },
            Self::Contended(_) => "contended",
            Self::Sqlite(_) | Self::SqliteCall(_) => "sqlite",
            Self::Shared(err) => return err.database_error_kind(),
            Self::NotFound(_)
            | Self::PermissionDenied(_)
            | Self::FailedPrecondition(_)
            | Self::AlreadyExists(_)
            | Self::ResourceExhausted(_)
            | Self::Overloaded(_) => return None,
        })
    }
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        err.into_status()
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
pub struct ResearcherRow {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub password_hash: String,
}

#[derive(Clone, Debug)]
pub struct MemberRow {
    pub researcher_id: Uuid,
    pub name: String,
    pub email: String,
    pub principal_investigator: bool,
}

#[derive(Clone, Debug)]
pub struct AccountRow {
    pub id: Uuid,
    pub proposal_id: String,
    pub agency: String,
    pub title: String,
    pub principal_investigator: Uuid,
    pub award: i64,
    pub balance: i64,
    pub opened_at: SystemTime,
    pub expires_at: SystemTime,
    pub expired: bool,
    pub members: Vec<MemberRow>,
}

#[derive(Clone, Debug)]
pub struct TransactionRow {
    pub id: i64,
    pub account_id: Uuid,
    pub researcher_id: Uuid,
    pub amount: i64,
    pub memo: String,
    pub idempotency_key: String,
    pub created_at: SystemTime,
    pub balance_after: i64,
}

/// The outcome of a withdrawal that was applied, now or by an earlier call with the same key.
#[derive(Clone, Debug)]
pub struct Withdrawal {
    pub transaction: TransactionRow,
    pub balance: i64,
    pub replayed: bool,
}

/// Everything the store holds about one account, for checking its invariants
/// from outside the service (the simulation's audit, tests).
#[derive(Clone, Debug)]
pub struct AccountAudit {
    /// The account row with its members, as the store holds it now.
    pub account: AccountRow,
    /// The whole journal of the account, oldest first.
    pub journal: Vec<TransactionRow>,
}

pub struct NewAccount<'a> {
    pub proposal_id: &'a str,
    pub agency: &'a str,
    pub title: &'a str,
    pub principal_investigator: Uuid,
    pub award: i64,
    pub duration_days: u32,
    /// The agency credential this call came with; recorded as used.
    pub credential: Credential,
}

/// An agency credential, as the store records it once used: every
/// `OpenAccount` call spends one, whether it opens the account or finds it
/// already open (an agency's retry comes with a new credential).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credential {
    /// The credential's unique id (its JWT `jti`).
    pub jti: Uuid,
    /// When Colleges stop accepting it; its record may be deleted after that.
    pub expires_at: SystemTime,
}

/// How long past its expiry a used credential stays recorded before the
/// cleanup that runs with every `OpenAccount` deletes it. The expiry is
/// written by a College's clock and compared with the store's, so the two
/// may disagree by a little; a minute of margin keeps a credential recorded
/// for as long as any College with a plausibly skewed clock still accepts it.
pub const USED_CREDENTIAL_MARGIN: Duration = Duration::from_secs(60);

pub use batcher::{BatchSizes, MAX_BATCH, MAX_BATCHES_IN_FLIGHT};

/// The College's view of the central store.
#[derive(Clone)]
pub struct AccountStore {
    backend: Backend,
    /// Every withdrawal goes through it ([`batcher`]).
    batcher: Arc<batcher::Batcher>,
    /// How long one "day" of an account's duration lasts.
    day_length: Duration,
}

/// The store behind an [`AccountStore`].
#[derive(Clone)]
enum Backend {
    Postgres(postgres::Pg),
    Sqlite(sqlite::Accounts),
}

impl Backend {
    /// Applies a batch of withdrawals in one transaction: an answer for
    /// each, in order, or an error for the whole batch (nothing applied).
    async fn withdraw_batch(&self, batch: &[batcher::Request]) -> Result<Vec<Result<Withdrawal>>> {
        match self {
            Self::Postgres(pg) => postgres::withdraw_batch(pg, batch).await,
            Self::Sqlite(db) => db.withdraw_batch(batch).await,
        }
    }
}

/// The history table of the College's migrations, on either backend.
const HISTORY_TABLE: &str = "college_schema_history";

impl AccountStore {
    fn with_backend(backend: Backend, pool_size: usize, day_length: Duration) -> Self {
        // SQLite has one writer: a second batch would only wait for the first.
        let in_flight = match backend {
            Backend::Postgres(_) => MAX_BATCHES_IN_FLIGHT.min(pool_size / 2),
            Backend::Sqlite(_) => 1,
        };
        Self {
            batcher: batcher::Batcher::new(backend.clone(), in_flight),
            backend,
            day_length,
        }
    }

    /// The sizes of the withdrawal batches this store applied so far.
    pub fn batch_sizes(&self) -> &Arc<BatchSizes> {
        self.batcher.sizes()
    }

    /// The connection pool's size, idle connections, waiters and bound, as
    /// of now (for the metrics, read at each scrape).
    pub fn pool_status(&self) -> deadpool_postgres::Status {
        match &self.backend {
            Backend::Postgres(pg) => pg.status(),
            Backend::Sqlite(db) => db.pool_status(),
        }
    }

    /// Withdrawals waiting for a batch right now (not those in flight).
    pub fn withdrawals_queued(&self) -> usize {
        self.batcher.queued()
    }

    /// Migrates the store at `database_url`, connects to it and subscribes to
    /// its account changes (until `closing`, on PostgreSQL).
    pub async fn start(
        database_url: &str,
        pool_size: usize,
        day_length: Duration,
        closing: CancellationToken,
    ) -> std::result::Result<(Self, Notifications), grantmesh_store::StoreError> {
        let backend = match Database::parse(database_url)? {
            Database::Postgres(url) => {
                grantmesh_store::migrate(&url, postgres::migrations(), HISTORY_TABLE).await?;
                Backend::Postgres(postgres::Pg::connect(&url, pool_size).await?)
            }
            Database::Sqlite(path) => {
                let db = grantmesh_store::sqlite::connect(&path, pool_size).await?;
                grantmesh_store::sqlite::migrate(&db, sqlite::migrations(), HISTORY_TABLE).await?;
                Backend::Sqlite(sqlite::Accounts::new(db))
            }
        };
        let notifications = match &backend {
            Backend::Postgres(_) => Notifications::start(database_url, CHANNEL, closing)?,
            Backend::Sqlite(accounts) => accounts.notifications().clone(),
        };
        Ok((
            Self::with_backend(backend, pool_size, day_length),
            notifications,
        ))
    }

    /// Connects to the central store at `database_url` without migrating it,
    /// for tools that read an existing store (the simulation's audit).
    pub async fn connect(
        database_url: &str,
        pool_size: usize,
        day_length: Duration,
    ) -> std::result::Result<Self, grantmesh_store::StoreError> {
        let backend = match Database::parse(database_url)? {
            Database::Postgres(url) => {
                Backend::Postgres(postgres::Pg::connect(&url, pool_size).await?)
            }
            Database::Sqlite(path) => Backend::Sqlite(sqlite::Accounts::new(
                grantmesh_store::sqlite::connect(&path, pool_size).await?,
            )),
        };
        Ok(Self::with_backend(backend, pool_size, day_length))
    }

    /// The account and its whole journal, read in one snapshot so that the
    /// balance and the journal agree with each other.
    pub async fn audit(&self, account: Uuid) -> Result<AccountAudit> {
        match &self.backend {
            Backend::Postgres(pool) => postgres::audit(pool, account).await,
            Backend::Sqlite(db) => db.audit(account).await,
        }
    }

    pub async fn register_researcher(
        &self,
        name: &str,
        email: &str,
        password_hash: &str,
    ) -> Result<ResearcherRow> {
        match &self.backend {
            Backend::Postgres(pool) => {
                postgres::register_researcher(pool, name, email, password_hash).await
            }
            Backend::Sqlite(db) => db.register_researcher(name, email, password_hash).await,
        }
    }

    pub async fn researcher_by_email(&self, email: &str) -> Result<Option<ResearcherRow>> {
        match &self.backend {
            Backend::Postgres(pg) => postgres::researcher_by_email(pg, email).await,
            Backend::Sqlite(db) => db.researcher_by_email(email).await,
        }
    }

    /// Opens the account for a proposal, or returns the one already opened
    /// for it, and records `new.credential` as used, in one transaction. A
    /// credential used before is refused (PERMISSION_DENIED) and nothing
    /// changes. Recorded credentials past their expiry (plus
    /// [`USED_CREDENTIAL_MARGIN`]) are deleted on the way.
    pub async fn open_account(&self, new: &NewAccount<'_>) -> Result<(AccountRow, bool)> {
        match &self.backend {
            Backend::Postgres(pool) => postgres::open_account(pool, self.day_length, new).await,
            Backend::Sqlite(db) => db.open_account(self.day_length, new).await,
        }
    }

    /// The account, if `caller` is one of its members (any caller when `None`).
    pub async fn account(&self, id: Uuid, caller: Option<Uuid>) -> Result<AccountRow> {
        match &self.backend {
            Backend::Postgres(pg) => postgres::read_account(pg, id, caller).await,
            Backend::Sqlite(db) => db.account(id, caller).await,
        }
    }

    /// Every account `caller` is a member of, newest first.
    /// Up to `limit` accounts `caller` is a member of, newest first, after
    /// the `(opened_at, id)` cursor; their members come in one more query.
    pub async fn accounts_of(
        &self,
        caller: Uuid,
        after: Option<(SystemTime, Uuid)>,
        limit: i64,
    ) -> Result<Vec<AccountRow>> {
        match &self.backend {
            Backend::Postgres(pg) => postgres::accounts_of(pg, caller, after, limit).await,
            Backend::Sqlite(db) => db.accounts_of(caller, after, limit).await,
        }
    }

    /// Adds the researcher with `email` at once; only the principal
    /// investigator may. `AddMember` does not use this (it invites:
    /// [`Self::invite`]); tools and tests that set up accounts do.
    pub async fn add_member(&self, account: Uuid, caller: Uuid, email: &str) -> Result<AccountRow> {
        match &self.backend {
            Backend::Postgres(pool) => postgres::add_member(pool, account, caller, email).await,
            Backend::Sqlite(db) => db.add_member(account, caller, email).await,
        }
    }

    /// Removes a member; only the principal investigator may, and not themself.
    pub async fn remove_member(
        &self,
        account: Uuid,
        caller: Uuid,
        researcher: Uuid,
    ) -> Result<AccountRow> {
        match &self.backend {
            Backend::Postgres(pool) => {
                postgres::remove_member(pool, account, caller, researcher).await
            }
            Backend::Sqlite(db) => db.remove_member(account, caller, researcher).await,
        }
    }

    /// Applies a withdrawal once per idempotency key: the same key and amount
    /// again is replayed with the original transaction, the same key with
    /// another amount is refused; see the module docs. Concurrent
    /// withdrawals are applied together in batches ([`batcher`]); each gets
    /// its own answer.
    pub async fn withdraw(
        &self,
        account: Uuid,
        caller: Uuid,
        amount: i64,
        key: &str,
        memo: &str,
    ) -> Result<Withdrawal> {
        self.batcher
            .submit(batcher::Request {
                account,
                caller,
                amount,
                key: key.to_owned(),
                memo: memo.to_owned(),
            })
            .await
    }

    /// The journal, newest first, `limit` entries before `before` (an entry id).
    pub async fn transactions(
        &self,
        account: Uuid,
        caller: Uuid,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<TransactionRow>> {
        match &self.backend {
            Backend::Postgres(pg) => {
                postgres::transactions(pg, account, caller, before, limit).await
            }
            Backend::Sqlite(db) => db.transactions(account, caller, before, limit).await,
        }
    }

    /// The account's journal entries with ids in `first..=last`, oldest
    /// first: what one notified batch of withdrawals added to it.
    pub async fn entries(
        &self,
        account: Uuid,
        first: i64,
        last: i64,
    ) -> Result<Vec<TransactionRow>> {
        match &self.backend {
            Backend::Postgres(pg) => postgres::entries(pg, account, first, last).await,
            Backend::Sqlite(db) => db.entries(account, first, last).await,
        }
    }

    pub async fn transaction(&self, account: Uuid, id: i64) -> Result<Option<TransactionRow>> {
        match &self.backend {
            Backend::Postgres(pg) => postgres::transaction(pg, account, id).await,
            Backend::Sqlite(db) => db.transaction(account, id).await,
        }
    }
}

fn not_found(account: Uuid) -> StoreError {
    StoreError::NotFound(format!("account {account} does not exist"))
}

fn credential_used() -> StoreError {
    StoreError::PermissionDenied("this agency credential was already used".into())
}

pub(crate) fn not_member(account: Uuid) -> StoreError {
    StoreError::PermissionDenied(format!("you are not a member of account {account}"))
}

fn not_principal_investigator(account: Uuid) -> StoreError {
    StoreError::PermissionDenied(format!(
        "only the principal investigator of account {account} may change its members"
    ))
}

fn principal_investigator_not_removable() -> StoreError {
    StoreError::FailedPrecondition(
        "the principal investigator cannot be removed from their own account; \
         hand the role to another member first (TransferPrincipal)"
            .into(),
    )
}

fn no_researcher_with(email: &str) -> StoreError {
    StoreError::NotFound(format!(
        "no researcher is registered with email {}",
        grantmesh_proto::errors::quote(email)
    ))
}

fn not_a_member_to_remove(account: Uuid, researcher: Uuid) -> StoreError {
    StoreError::NotFound(format!(
        "researcher {researcher} is not a member of account {account}"
    ))
}

fn email_taken(email: &str) -> StoreError {
    StoreError::AlreadyExists(format!(
        "a researcher with email {} is already registered",
        grantmesh_proto::errors::quote(email)
    ))
}

fn unknown_principal_investigator(researcher: Uuid) -> StoreError {
    StoreError::NotFound(format!(
        "principal investigator {researcher} is not a registered researcher"
    ))
}

/// The words that tell the withdrawal refusals apart, shared by the
/// messages below and [`StoreError::refusal`], so the two cannot drift.
const KEY_REUSED: &str = "was already used on this account for a withdrawal of";
const EXPIRED: &str = "has expired; no more withdrawals can be made";
const INSUFFICIENT_FUNDS: &str = "insufficient funds:";

fn key_reused(key: &str, previous_amount: i64, amount: i64) -> StoreError {
    StoreError::FailedPrecondition(format!(
        "idempotency_key {} {KEY_REUSED} {previous_amount}, \
         not {amount}; use a new key for a new withdrawal",
        grantmesh_proto::errors::quote(key)
    ))
}

fn expired(account: Uuid) -> StoreError {
    StoreError::FailedPrecondition(format!("account {account} {EXPIRED}"))
}

fn insufficient_funds(account: Uuid, balance: i64, amount: i64) -> StoreError {
    StoreError::FailedPrecondition(format!(
        "{INSUFFICIENT_FUNDS} account {account} holds {balance}, the withdrawal asks for {amount}"
    ))
}

/// The payload announcing one batch of withdrawals:
/// `withdrawals:<first entry id>:<last entry id>:<account>,<account>,…` (the
/// accounts the batch debited, or `*` for any). PostgreSQL's
/// `withdraw_batch` builds the same one in SQL.
fn withdrawals_payload(first: i64, last: i64, accounts: &[Uuid]) -> String {
    let mut touched: Vec<String> = accounts.iter().map(Uuid::to_string).collect();
    touched.sort();
    touched.dedup();
    format!("withdrawals:{first}:{last}:{}", touched.join(","))
}

/// The payload announcing a membership change: `membership:<account>`.
fn membership_payload(account: Uuid) -> String {
    format!("membership:{account}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_withdrawal_refusal_is_told_apart_by_its_metric_label() {
        let account = Uuid::nil();
        assert_eq!(
            insufficient_funds(account, 1, 2).refusal(),
            "insufficient_funds"
        );
        assert_eq!(expired(account).refusal(), "expired");
        assert_eq!(key_reused("k", 1, 2).refusal(), "key_reused");
        assert_eq!(not_member(account).refusal(), "not_member");
        assert_eq!(not_found(account).refusal(), "not_found");
        let shared = StoreError::Shared(Arc::new(expired(account)));
        assert_eq!(shared.refusal(), "expired");
        assert_eq!(expired(account).database_error_kind(), None);
        assert_eq!(
            StoreError::Contended("busy".into()).database_error_kind(),
            Some("contended")
        );
    }
}
