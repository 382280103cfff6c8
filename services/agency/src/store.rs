//! The Agency's proposals in the central store, on PostgreSQL
//! ([`postgres`]) or on an embedded SQLite file ([`sqlite`]); the database
//! URL picks which. Both keep the same rules, which the College's
//! `tests/conformance.rs` checks against both: one proposal per
//! (agency, investigator, idempotency key), newest-first listing with a
//! `(submitted_at, id)` cursor, and accepted proposals awaiting an account.

mod postgres;
mod sqlite;

use std::time::SystemTime;

use deadpool_postgres::Pool;
use grantmesh_store::Database;
use tonic::Status;
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct ProposalRow {
    pub id: Uuid,
    pub agency: String,
    pub principal_investigator: Uuid,
    pub idempotency_key: String,
    pub title: String,
    pub description: String,
    pub requested_amount: i64,
    pub duration_days: i32,
    pub accepted: bool,
    pub reason: String,
    pub account_id: Option<String>,
    pub submitted_at: SystemTime,
    /// Why no account can ever be opened for this accepted proposal (a
    /// College refused it for good); the reconciler no longer retries it.
    pub account_failure: Option<String>,
}

pub struct NewProposal<'a> {
    pub agency: &'a str,
    pub principal_investigator: Uuid,
    pub idempotency_key: &'a str,
    pub title: &'a str,
    pub description: &'a str,
    pub requested_amount: i64,
    pub duration_days: i32,
    pub accepted: bool,
    pub reason: &'a str,
}

/// The history table of the Agency's migrations, on either backend.
const HISTORY_TABLE: &str = "agency_schema_history";

/// The Agency's view of the central store.
#[derive(Clone)]
pub struct ProposalStore {
    backend: Backend,
}

/// The store behind a [`ProposalStore`].
#[derive(Clone)]
enum Backend {
    Postgres(Pool),
    Sqlite(sqlite::Proposals),
}

impl ProposalStore {
    pub fn new(pool: Pool) -> Self {
        Self {
            backend: Backend::Postgres(pool),
        }
    }

    /// Migrates the store `database_url` names (`postgres://…` or
    /// `sqlite:PATH`) and connects to it with at most `pool_size` connections.
    pub async fn start(
        database_url: &str,
        pool_size: usize,
    ) -> Result<Self, grantmesh_store::StoreError> {
        let backend = match Database::parse(database_url)? {
            Database::Postgres(url) => {
                grantmesh_store::migrate(&url, postgres::migrations(), HISTORY_TABLE).await?;
                Backend::Postgres(grantmesh_store::connect(&url, pool_size).await?)
            }
            Database::Sqlite(path) => {
                let db = grantmesh_store::sqlite::connect(&path, pool_size).await?;
                grantmesh_store::sqlite::migrate(&db, sqlite::migrations(), HISTORY_TABLE).await?;
                Backend::Sqlite(sqlite::Proposals::new(db))
            }
        };
        Ok(Self { backend })
    }

    /// Records a decided proposal, or returns the one recorded earlier under
    /// the same idempotency key (`false` in the second place).
    pub async fn insert(&self, new: &NewProposal<'_>) -> Result<(ProposalRow, bool), Status> {
        match &self.backend {
            Backend::Postgres(pool) => postgres::insert(pool, new).await,
            Backend::Sqlite(db) => db.insert(new).await,
        }
    }

    /// Records the account opened for an accepted proposal (once; the same
    /// account again is a no-op).
    pub async fn set_account(&self, proposal: Uuid, account: &str) -> Result<(), Status> {
        match &self.backend {
            Backend::Postgres(pool) => postgres::set_account(pool, proposal, account).await,
            Backend::Sqlite(db) => db.set_account(proposal, account).await,
        }
    }

    /// Records why no account can ever be opened for an accepted proposal
    /// that has none; the first reason stays.
    pub async fn set_account_failure(&self, proposal: Uuid, reason: &str) -> Result<(), Status> {
        match &self.backend {
            Backend::Postgres(pool) => postgres::set_account_failure(pool, proposal, reason).await,
            Backend::Sqlite(db) => db.set_account_failure(proposal, reason).await,
        }
    }

    pub async fn get(&self, agency: &str, id: Uuid) -> Result<Option<ProposalRow>, Status> {
        match &self.backend {
            Backend::Postgres(pool) => postgres::get(pool, agency, id).await,
            Backend::Sqlite(db) => db.get(agency, id).await,
        }
    }

    /// The investigator's proposals, newest first, after the `(submitted_at, id)` cursor.
    pub async fn list(
        &self,
        agency: &str,
        investigator: Uuid,
        after: Option<(SystemTime, Uuid)>,
        limit: i64,
    ) -> Result<Vec<ProposalRow>, Status> {
        match &self.backend {
            Backend::Postgres(pool) => {
                postgres::list(pool, agency, investigator, after, limit).await
            }
            Backend::Sqlite(db) => db.list(agency, investigator, after, limit).await,
        }
    }

    /// Accepted proposals still waiting for their account (and not given up
    /// on), oldest first.
    pub async fn awaiting_account(
        &self,
        agency: &str,
        older_than_secs: f64,
        limit: i64,
    ) -> Result<Vec<ProposalRow>, Status> {
        match &self.backend {
            Backend::Postgres(pool) => {
                postgres::awaiting_account(pool, agency, older_than_secs, limit).await
            }
            Backend::Sqlite(db) => db.awaiting_account(agency, older_than_secs, limit).await,
        }
    }
}

/// The status for a failed database call, on either backend.
fn db(err: impl std::error::Error + 'static) -> Status {
    grantmesh_store::status(&err)
}
