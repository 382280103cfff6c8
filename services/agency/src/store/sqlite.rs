//! The Agency's SQL on the embedded SQLite store (`grantmesh dev`): the same
//! rules as [`super::postgres`]. Every call runs on tokio's blocking pool
//! through the pool's `interact`; writes are single statements, which SQLite
//! runs one at a time under its write lock.

use std::time::SystemTime;

use grantmesh_store::sqlite::{SqliteStore, millis, time};
use rusqlite::{Connection, OptionalExtension, Row, params};
use tonic::Status;
use uuid::Uuid;

use super::*;

/// The Agency's SQLite migrations.
mod embedded {
    refinery::embed_migrations!("migrations/sqlite");
}

pub(super) fn migrations() -> refinery::Runner {
    embedded::migrations::runner()
}

const COLUMNS: &str = "id, agency, principal_investigator, idempotency_key, title, description, requested_amount, \
                       duration_days, decision, reason, account_id, submitted_at, account_failure";

/// The Agency's proposals in one SQLite file.
#[derive(Clone)]
pub(super) struct Proposals {
    db: SqliteStore,
}

impl Proposals {
    pub(super) fn new(db: SqliteStore) -> Self {
        Self { db }
    }

    /// Runs `call` on a pooled connection, on tokio's blocking pool.
    async fn call<T: Send + 'static>(
        &self,
        call: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let conn = self.db.pool.get().await.map_err(db)?;
        conn.interact(call)
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "sqlite call did not finish");
                Status::internal("the central store failed to complete the call")
            })?
            .map_err(db)
    }

    pub(super) async fn insert(
        &self,
        new: &NewProposal<'_>,
    ) -> Result<(ProposalRow, bool), Status> {
        let id = Uuid::new_v4();
        let agency = new.agency.to_owned();
        let investigator = new.principal_investigator;
        let key = new.idempotency_key.to_owned();
        let title = new.title.to_owned();
        let description = new.description.to_owned();
        let requested_amount = new.requested_amount;
        let duration_days = new.duration_days;
        let decision = if new.accepted { "accepted" } else { "rejected" };
        let reason = new.reason.to_owned();
        self.call(move |conn| {
            let inserted = conn
                .query_row(
                    &format!(
                        "INSERT INTO proposals (id, agency, principal_investigator, idempotency_key, title, description,
                                                requested_amount, duration_days, decision, reason, submitted_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, {})
                         ON CONFLICT (agency, principal_investigator, idempotency_key) DO NOTHING
                         RETURNING {COLUMNS}",
                        grantmesh_store::sqlite_now_ms!()
                    ),
                    params![
                        id,
                        agency,
                        investigator,
                        key,
                        title,
                        description,
                        requested_amount,
                        duration_days,
                        decision,
                        reason
                    ],
                    proposal,
                )
                .optional()?;
            if let Some(row) = inserted {
                return Ok((row, true));
            }
            let row = conn.query_row(
                &format!(
                    "SELECT {COLUMNS} FROM proposals
                     WHERE agency = ?1 AND principal_investigator = ?2 AND idempotency_key = ?3"
                ),
                params![agency, investigator, key],
                proposal,
            )?;
            Ok((row, false))
        })
        .await
    }

    pub(super) async fn set_account(&self, proposal: Uuid, account: &str) -> Result<(), Status> {
        let account = account.to_owned();
        self.call(move |conn| {
            conn.execute(
                "UPDATE proposals SET account_id = ?2 WHERE id = ?1 AND (account_id IS NULL OR account_id = ?2)",
                params![proposal, account],
            )?;
            Ok(())
        })
        .await
    }

    pub(super) async fn set_account_failure(
        &self,
        proposal: Uuid,
        reason: &str,
    ) -> Result<(), Status> {
        let reason = reason.to_owned();
        self.call(move |conn| {
            conn.execute(
                "UPDATE proposals SET account_failure = ?2
                 WHERE id = ?1 AND account_id IS NULL AND account_failure IS NULL",
                params![proposal, reason],
            )?;
            Ok(())
        })
        .await
    }

    pub(super) async fn get(&self, agency: &str, id: Uuid) -> Result<Option<ProposalRow>, Status> {
        let agency = agency.to_owned();
        self.call(move |conn| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM proposals WHERE agency = ?1 AND id = ?2"),
                params![agency, id],
                proposal,
            )
            .optional()
        })
        .await
    }

    pub(super) async fn list(
        &self,
        agency: &str,
        investigator: Uuid,
        after: Option<(SystemTime, Uuid)>,
        limit: i64,
    ) -> Result<Vec<ProposalRow>, Status> {
        let agency = agency.to_owned();
        let (at, id) = after.map(|(at, id)| (millis(at), id)).unzip();
        self.call(move |conn| {
            conn.prepare(&format!(
                "SELECT {COLUMNS} FROM proposals
                 WHERE agency = ?1 AND principal_investigator = ?2
                   AND (?3 IS NULL OR (submitted_at, id) < (?3, ?4))
                 ORDER BY submitted_at DESC, id DESC LIMIT ?5"
            ))?
            .query_map(params![agency, investigator, at, id, limit], proposal)?
            .collect()
        })
        .await
    }

    pub(super) async fn awaiting_account(
        &self,
        agency: &str,
        older_than_secs: f64,
        limit: i64,
    ) -> Result<Vec<ProposalRow>, Status> {
        let agency = agency.to_owned();
        self.call(move |conn| {
            conn.prepare(&format!(
                "SELECT {COLUMNS} FROM proposals
                 WHERE agency = ?1 AND decision = 'accepted' AND account_id IS NULL AND account_failure IS NULL
                   AND submitted_at < {} - CAST(?2 * 1000 AS INTEGER)
                 ORDER BY submitted_at LIMIT ?3",
                grantmesh_store::sqlite_now_ms!()
            ))?
            .query_map(params![agency, older_than_secs, limit], proposal)?
            .collect()
        })
        .await
    }
}

fn proposal(row: &Row<'_>) -> rusqlite::Result<ProposalRow> {
    Ok(ProposalRow {
        id: row.get("id")?,
        agency: row.get("agency")?,
        principal_investigator: row.get("principal_investigator")?,
        idempotency_key: row.get("idempotency_key")?,
        title: row.get("title")?,
        description: row.get("description")?,
        requested_amount: row.get("requested_amount")?,
        duration_days: row.get("duration_days")?,
        accepted: row.get::<_, String>("decision")? == "accepted",
        reason: row.get("reason")?,
        account_id: row.get("account_id")?,
        submitted_at: time(row.get("submitted_at")?),
        account_failure: row.get("account_failure")?,
    })
}
