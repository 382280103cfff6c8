//! The College's store: researchers, accounts, members and the journal,
//! shared by every College instance, on PostgreSQL ([`postgres`]) or on an
//! embedded SQLite file ([`sqlite`]); the database URL picks which.
//!
//! Both backends implement one trait, [`Store`]; [`AccountStore`] holds
//! one of them behind it and adds what both share: the withdrawal batcher
//! ([`batcher`]) and the one path a batch takes ([`withdraw`]): the
//! backend's [`Ledger::lock_and_load`] takes the row locks and reads, the
//! ledger's pure rule ([`crate::ledger::decide`]) decides, and
//! [`Ledger::write`] writes and commits. So the money rule exists once,
//! and `tests/conformance.rs` checks that both backends keep it: a refused
//! withdrawal changes nothing and fails no other; the journal is
//! append-only; a balance never goes below zero; a key is applied once per
//! (account, caller). An account is opened with an agency credential that
//! is recorded in the same transaction, so each credential opens at most
//! once, across all College instances. Changes are announced to every
//! instance in one format ([`change`]).

mod batcher;
pub(crate) mod change;
mod error;
mod membership;
mod postgres;
mod sqlite;
mod withdraw;

pub use batcher::{BatchSizes, MAX_BATCH, MAX_BATCHES_IN_FLIGHT};
pub use error::StoreError;
pub use membership::{InvitationRow, MAX_PENDING_INVITATIONS};

pub(crate) use error::not_member;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use grantmesh_store::{Database, Notifications};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use crate::ledger::TransactionRow;
use crate::ledger::{Decision, Locked, Request};

/// The channel College instances notify and listen on.
pub const CHANNEL: &str = "grantmesh_accounts";

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
    /// ISO 4217 code of the currency `award` and `balance` count minor units of.
    pub currency: String,
    pub opened_at: SystemTime,
    pub expires_at: SystemTime,
    pub expired: bool,
    pub members: Vec<MemberRow>,
    /// The id of the account's newest journal entry (0 before the first),
    /// read with the rest of the row: a watch drops every change this row
    /// already shows.
    pub journal_position: i64,
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
    /// ISO 4217 code (checked already).
    pub currency: &'a str,
    pub duration_days: u32,
    /// The agency credential this call came with; recorded as used.
    pub credential: Credential,
}

impl NewAccount<'_> {
    /// What the account is opened with, to compare a second call with.
    pub(crate) fn terms(&self) -> crate::ledger::opening::Terms {
        crate::ledger::opening::Terms {
            agency: self.agency.to_owned(),
            awarded_to: self.principal_investigator,
            award: self.award,
            currency: self.currency.to_owned(),
            duration_days: self.duration_days,
        }
    }
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

/// What rotating a refresh token found ([`AccountStore::refresh_session`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// The session (id, researcher) now answers to the new token.
    Renewed { session: Uuid, researcher: Uuid },
    /// The token had been rotated away already: a copy was used, and the
    /// session is ended now.
    Reused { session: Uuid },
    /// No live session has this token (unknown, expired or ended).
    Unknown,
}

/// A sign-up waiting for the code mailed to its email
/// ([`AccountStore::begin_signup`]); the email is lower-cased already.
#[derive(Clone, Copy, Debug)]
pub struct PendingSignup<'a> {
    pub email: &'a str,
    pub name: &'a str,
    pub password_hash: &'a str,
    /// [`grantmesh_auth::signup::code_digest`] of the code to mail.
    pub code_digest: &'a [u8],
}

/// What beginning a sign-up did ([`AccountStore::begin_signup`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Begun {
    /// The sign-up waits for this code (any earlier one is void): mail it.
    Mail,
    /// The email belongs to a researcher already: nothing waits for a
    /// code; mail them a notice instead.
    Registered,
    /// A message went to this email less than the resend interval ago:
    /// nothing changed, and nothing is to be sent.
    TooSoon,
}

/// What a code sent back did ([`AccountStore::finish_signup`]).
#[derive(Clone, Debug)]
pub enum Finished {
    /// The code was right: the researcher now exists, and the sign-up is gone.
    Created(ResearcherRow),
    /// A sign-up waits, but not for this code and password: one try is spent.
    Wrong,
    /// Nothing waits for a code at this email (never signed up, expired,
    /// out of tries, or registered already).
    Unknown,
}

/// A central store: everything the College reads and writes, on one
/// backend. Every method is one transaction of its own.
#[async_trait::async_trait]
trait Store: Send + Sync + 'static {
    /// A transaction for one batch of withdrawals ([`Ledger`]).
    async fn ledger(&self) -> Result<Box<dyn Ledger>>;
    /// What this instance last read or wrote of `batch`'s accounts, for a
    /// decision [`Store::write_guessed`] writes in one round trip if it
    /// still holds. `None` when the store keeps no such guess, or lacks one
    /// for some account or caller of the batch.
    fn guess(&self, _batch: &[Request]) -> Option<Guess> {
        None
    }
    /// Writes `decision`, made from `guess`, in one statement that takes
    /// the accounts' row locks and writes only if each is still at the
    /// version guessed, lets its entries be stamped before its expiry and
    /// takes none of their keys: then the new entries' ids, in order, and
    /// their stamp. `Ok(None)` when it did not hold: nothing was written,
    /// and the batch goes through [`Ledger`] instead.
    async fn write_guessed(
        &self,
        _guess: &Guess,
        _decision: &Decision,
    ) -> Result<Option<(Vec<i64>, SystemTime)>> {
        Ok(None)
    }
    /// Batches of withdrawals worth keeping in flight at once.
    fn batches_in_flight(&self, pool_size: usize) -> usize;
    /// The connection pool's size, idle connections, waiters and bound.
    fn pool_status(&self) -> deadpool_postgres::Status;

    async fn audit(&self, account: Uuid) -> Result<AccountAudit>;
    async fn register_researcher(
        &self,
        name: &str,
        email: &str,
        password_hash: &str,
    ) -> Result<ResearcherRow>;
    async fn begin_signup(
        &self,
        signup: &PendingSignup<'_>,
        lifetime: Duration,
        resend_after: Duration,
    ) -> Result<Begun>;
    async fn signup_password_hash(&self, email: &str, attempts: u32) -> Result<Option<String>>;
    async fn finish_signup(
        &self,
        email: &str,
        code_digest: &[u8],
        password_hash: &str,
        attempts: u32,
    ) -> Result<Finished>;
    async fn researcher_by_email(&self, email: &str) -> Result<Option<ResearcherRow>>;
    async fn researcher(&self, id: Uuid) -> Result<Option<ResearcherRow>>;
    async fn create_session(
        &self,
        researcher: Uuid,
        refresh_hash: &[u8],
        lifetime: Duration,
    ) -> Result<(Uuid, SystemTime)>;
    async fn refresh_session(&self, old: &[u8], new: &[u8]) -> Result<Refreshed>;
    async fn end_session(&self, researcher: Uuid, session: Uuid) -> Result<bool>;
    async fn change_password(&self, researcher: Uuid, password_hash: &str) -> Result<Vec<Uuid>>;
    async fn end_session_by_refresh(&self, refresh_hash: &[u8]) -> Result<Option<Uuid>>;
    async fn sessions_ended_since(&self, since: SystemTime) -> Result<Vec<(Uuid, SystemTime)>>;
    async fn open_account(
        &self,
        day_length: Duration,
        new: &NewAccount<'_>,
    ) -> Result<(AccountRow, bool)>;
    async fn account(&self, id: Uuid, caller: Option<Uuid>) -> Result<AccountRow>;
    async fn accounts_of(
        &self,
        caller: Uuid,
        after: Option<(SystemTime, Uuid)>,
        limit: i64,
    ) -> Result<Vec<AccountRow>>;
    async fn add_member(&self, account: Uuid, caller: Uuid, email: &str) -> Result<AccountRow>;
    async fn remove_member(
        &self,
        account: Uuid,
        caller: Uuid,
        researcher: Uuid,
    ) -> Result<AccountRow>;
    async fn transactions(
        &self,
        account: Uuid,
        caller: Uuid,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<TransactionRow>>;
    async fn entries(&self, account: Uuid, first: i64, last: i64) -> Result<Vec<TransactionRow>>;
    async fn transaction(&self, account: Uuid, id: i64) -> Result<Option<TransactionRow>>;

    async fn invite(
        &self,
        account: Uuid,
        caller: Uuid,
        email: &str,
    ) -> Result<(AccountRow, Vec<InvitationRow>)>;
    async fn account_invitations(&self, account: Uuid) -> Result<Vec<InvitationRow>>;
    async fn invitations_for(&self, caller: Uuid) -> Result<Vec<InvitationRow>>;
    async fn accept_invitation(&self, caller: Uuid, invitation: Uuid) -> Result<AccountRow>;
    async fn decline_invitation(&self, caller: Uuid, invitation: Uuid) -> Result<()>;
    async fn transfer_principal(
        &self,
        account: Uuid,
        caller: Uuid,
        researcher: Uuid,
    ) -> Result<AccountRow>;
}

/// A batch's accounts as one College instance last read or wrote them
/// ([`Store::guess`]): the state to decide from, and the version of each
/// account it is true at. Only a write that finds every account at its
/// version makes the decision real.
pub(crate) struct Guess {
    /// The accounts and the callers' roles; the clock is this instance's
    /// (the write is stamped by the store's, and refused at expiry by it).
    pub(crate) locked: Locked,
    pub(crate) versions: HashMap<Uuid, i64>,
}

/// One batch of withdrawals' transaction on a backend: the only two things
/// a store does for the money rule. Dropped without [`Ledger::write`], it
/// rolls back (its connection is closed, never reused mid-transaction).
#[async_trait::async_trait]
trait Ledger: Send {
    /// Begins the transaction, takes the row locks of the batch's accounts
    /// (in id order), and only then reads what [`crate::ledger::decide`]
    /// judges by, and the store's clock. A batch on several accounts skips
    /// a lock another writer holds (that account is [`Locked::busy`]); a
    /// batch on one account waits for it.
    async fn lock_and_load(&mut self, batch: &[Request]) -> Result<Locked>;
    /// Writes what `decision` says (its journal entries, the balances, the
    /// change notification) and commits: the new entries' ids, in order.
    /// [`StoreError::Contended`] when a backstop refused the write (a race
    /// with a writer outside this code): nothing was written; try again.
    async fn write(self: Box<Self>, decision: &Decision) -> Result<Vec<i64>>;
}

/// The College's view of the central store.
#[derive(Clone)]
pub struct AccountStore {
    store: Arc<dyn Store>,
    /// Every withdrawal goes through it ([`batcher`]).
    batcher: Arc<batcher::Batcher>,
    /// How long one "day" of an account's duration lasts.
    day_length: Duration,
}

/// The history table of the College's migrations, on either backend.
const HISTORY_TABLE: &str = "college_schema_history";

impl AccountStore {
    fn with_store(store: Arc<dyn Store>, pool_size: usize, day_length: Duration) -> Self {
        let in_flight = store.batches_in_flight(pool_size);
        Self {
            batcher: batcher::Batcher::new(Arc::clone(&store), in_flight),
            store,
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
        self.store.pool_status()
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
        let (store, notifications): (Arc<dyn Store>, Notifications) =
            match Database::parse(database_url)? {
                Database::Postgres(url) => {
                    grantmesh_store::migrate(&url, postgres::migrations(), HISTORY_TABLE).await?;
                    (
                        Arc::new(postgres::Pg::connect(&url, pool_size).await?),
                        Notifications::start(database_url, CHANNEL, closing)?,
                    )
                }
                Database::Sqlite(path) => {
                    let db = grantmesh_store::sqlite::connect(&path, pool_size).await?;
                    grantmesh_store::sqlite::migrate(&db, sqlite::migrations(), HISTORY_TABLE)
                        .await?;
                    let accounts = sqlite::Accounts::new(db);
                    let notifications = accounts.notifications().clone();
                    (Arc::new(accounts), notifications)
                }
            };
        Ok((
            Self::with_store(store, pool_size, day_length),
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
        let store: Arc<dyn Store> = match Database::parse(database_url)? {
            Database::Postgres(url) => Arc::new(postgres::Pg::connect(&url, pool_size).await?),
            Database::Sqlite(path) => Arc::new(sqlite::Accounts::new(
                grantmesh_store::sqlite::connect(&path, pool_size).await?,
            )),
        };
        Ok(Self::with_store(store, pool_size, day_length))
    }

    /// The account and its whole journal, read in one snapshot so that the
    /// balance and the journal agree with each other.
    pub async fn audit(&self, account: Uuid) -> Result<AccountAudit> {
        self.store.audit(account).await
    }

    pub async fn register_researcher(
        &self,
        name: &str,
        email: &str,
        password_hash: &str,
    ) -> Result<ResearcherRow> {
        self.store
            .register_researcher(name, email, password_hash)
            .await
    }

    pub async fn researcher_by_email(&self, email: &str) -> Result<Option<ResearcherRow>> {
        self.store.researcher_by_email(email).await
    }

    /// Makes `signup` the one waiting at its email for `lifetime`, by the
    /// store's clock, unless a message went to that email less than
    /// `resend_after` ago (see [`Begun`]). Sign-ups a day past their expiry
    /// are deleted on the way.
    pub async fn begin_signup(
        &self,
        signup: &PendingSignup<'_>,
        lifetime: Duration,
        resend_after: Duration,
    ) -> Result<Begun> {
        self.store
            .begin_signup(signup, lifetime, resend_after)
            .await
    }

    /// The password hash of the sign-up waiting at `email`, if one is live
    /// with fewer than `attempts` wrong tries: what the password sent with
    /// its code must match.
    pub async fn signup_password_hash(&self, email: &str, attempts: u32) -> Result<Option<String>> {
        self.store.signup_password_hash(email, attempts).await
    }

    /// Checks the code of digest `code_digest`, and `password_hash` (the
    /// hash the caller's password was found to match; anything else when it
    /// matched none), against the sign-up waiting at `email`, live and with
    /// fewer than `attempts` wrong tries: if both are its own, creates the
    /// researcher and removes the sign-up in one transaction (see
    /// [`Finished`]).
    pub async fn finish_signup(
        &self,
        email: &str,
        code_digest: &[u8],
        password_hash: &str,
        attempts: u32,
    ) -> Result<Finished> {
        self.store
            .finish_signup(email, code_digest, password_hash, attempts)
            .await
    }

    /// The researcher with this id, if registered.
    pub async fn researcher(&self, id: Uuid) -> Result<Option<ResearcherRow>> {
        self.store.researcher(id).await
    }

    /// Opens a login session of `researcher`, lasting `lifetime` by the
    /// store's clock, answering to the refresh token of digest
    /// `refresh_hash`; its id and end. Sessions long past their end are
    /// deleted on the way.
    pub async fn create_session(
        &self,
        researcher: Uuid,
        refresh_hash: &[u8],
        lifetime: Duration,
    ) -> Result<(Uuid, SystemTime)> {
        self.store
            .create_session(researcher, refresh_hash, lifetime)
            .await
    }

    /// Sets `researcher`'s password hash and ends every live session of
    /// theirs, in one transaction: the sessions ended.
    pub async fn change_password(
        &self,
        researcher: Uuid,
        password_hash: &str,
    ) -> Result<Vec<Uuid>> {
        self.store.change_password(researcher, password_hash).await
    }

    /// Rotates a live session's refresh token from digest `old` to `new`
    /// (see [`Refreshed`]).
    pub async fn refresh_session(&self, old: &[u8], new: &[u8]) -> Result<Refreshed> {
        self.store.refresh_session(old, new).await
    }

    /// Ends `researcher`'s session `session`; whether it was live.
    pub async fn end_session(&self, researcher: Uuid, session: Uuid) -> Result<bool> {
        self.store.end_session(researcher, session).await
    }

    /// Ends the live session answering to the refresh token of digest
    /// `refresh_hash` (the token is proof enough); its id, if there was one.
    pub async fn end_session_by_refresh(&self, refresh_hash: &[u8]) -> Result<Option<Uuid>> {
        self.store.end_session_by_refresh(refresh_hash).await
    }

    /// Sessions ended at or after `since`, with when: what every College
    /// refuses the tokens of.
    pub async fn sessions_ended_since(&self, since: SystemTime) -> Result<Vec<(Uuid, SystemTime)>> {
        self.store.sessions_ended_since(since).await
    }

    /// Opens the account for a proposal, or returns the one already opened
    /// for it on the same terms ([`crate::ledger::opening`]; other terms are
    /// FAILED_PRECONDITION, naming the difference), and records
    /// `new.credential` as used, in one transaction. A credential used
    /// before is refused (PERMISSION_DENIED) and nothing changes. Recorded
    /// credentials past their expiry (plus [`USED_CREDENTIAL_MARGIN`]) are
    /// deleted on the way.
    pub async fn open_account(&self, new: &NewAccount<'_>) -> Result<(AccountRow, bool)> {
        self.store.open_account(self.day_length, new).await
    }

    /// The account, if `caller` is one of its members (any caller when `None`).
    pub async fn account(&self, id: Uuid, caller: Option<Uuid>) -> Result<AccountRow> {
        self.store.account(id, caller).await
    }

    /// Up to `limit` accounts `caller` is a member of, newest first, after
    /// the `(opened_at, id)` cursor.
    pub async fn accounts_of(
        &self,
        caller: Uuid,
        after: Option<(SystemTime, Uuid)>,
        limit: i64,
    ) -> Result<Vec<AccountRow>> {
        self.store.accounts_of(caller, after, limit).await
    }

    /// Adds the researcher with `email` at once; only the principal
    /// investigator may. `AddMember` does not use this (it invites:
    /// [`Self::invite`]); tools and tests that set up accounts do.
    pub async fn add_member(&self, account: Uuid, caller: Uuid, email: &str) -> Result<AccountRow> {
        self.store.add_member(account, caller, email).await
    }

    /// Removes a member; only the principal investigator may, and not themself.
    pub async fn remove_member(
        &self,
        account: Uuid,
        caller: Uuid,
        researcher: Uuid,
    ) -> Result<AccountRow> {
        self.store.remove_member(account, caller, researcher).await
    }

    /// Applies a withdrawal once per idempotency key of the caller on the
    /// account: the same key and amount again is replayed with the original
    /// transaction, the same key with another amount is refused. Concurrent
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
            .submit(Request {
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
        self.store
            .transactions(account, caller, before, limit)
            .await
    }

    /// The account's journal entries with ids in `first..=last`, oldest
    /// first: what one notified batch of withdrawals added to it.
    pub async fn entries(
        &self,
        account: Uuid,
        first: i64,
        last: i64,
    ) -> Result<Vec<TransactionRow>> {
        self.store.entries(account, first, last).await
    }

    pub async fn transaction(&self, account: Uuid, id: i64) -> Result<Option<TransactionRow>> {
        self.store.transaction(account, id).await
    }
}
