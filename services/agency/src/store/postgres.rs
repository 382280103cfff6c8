//! The Agency's SQL on PostgreSQL, the central store shared by every
//! Agency instance.

use std::time::SystemTime;

use deadpool_postgres::Pool;
use grantmesh_store::tokio_postgres::Row;
use tonic::Status;
use uuid::Uuid;

use super::*;

/// The Agency's PostgreSQL migrations.
mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

pub(super) fn migrations() -> refinery::Runner {
    embedded::migrations::runner()
}

const COLUMNS: &str = "id, agency, principal_investigator, idempotency_key, title, description, requested_amount, \
                       duration_days, decision, reason, account_id, submitted_at, account_failure";

/// Records a decided proposal, or returns the one recorded earlier under
/// the same idempotency key (`false` in the second place).
pub(super) async fn insert(
    pool: &Pool,
    new: &NewProposal<'_>,
) -> Result<(ProposalRow, bool), Status> {
    let client = pool.get().await.map_err(db)?;
    let decision = if new.accepted { "accepted" } else { "rejected" };
    let inserted = client
        .query_opt(
            &format!(
                "INSERT INTO proposals (id, agency, principal_investigator, idempotency_key, title, description,
                                        requested_amount, duration_days, decision, reason)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (agency, principal_investigator, idempotency_key) DO NOTHING
                 RETURNING {COLUMNS}"
            ),
            &[
                &Uuid::new_v4(),
                &new.agency,
                &new.principal_investigator,
                &new.idempotency_key,
                &new.title,
                &new.description,
                &new.requested_amount,
                &new.duration_days,
                &decision,
                &new.reason,
            ],
        )
        .await
        .map_err(db)?;
    if let Some(row) = inserted {
        return Ok((proposal(&row), true));
    }
    // A fresh statement sees the earlier one even if it committed a moment ago.
    let row = client
        .query_one(
            &format!("SELECT {COLUMNS} FROM proposals WHERE agency = $1 AND principal_investigator = $2 AND idempotency_key = $3"),
            &[&new.agency, &new.principal_investigator, &new.idempotency_key],
        )
        .await
        .map_err(db)?;
    Ok((proposal(&row), false))
}

pub(super) async fn set_account(pool: &Pool, proposal: Uuid, account: &str) -> Result<(), Status> {
    let client = pool.get().await.map_err(db)?;
    client
        .execute(
            "UPDATE proposals SET account_id = $2 WHERE id = $1 AND (account_id IS NULL OR account_id = $2)",
            &[&proposal, &account],
        )
        .await
        .map_err(db)?;
    Ok(())
}

/// Records why no account can be opened for an accepted proposal (once,
/// and only while it has no account).
pub(super) async fn set_account_failure(
    pool: &Pool,
    proposal: Uuid,
    reason: &str,
) -> Result<(), Status> {
    let client = pool.get().await.map_err(db)?;
    client
        .execute(
            "UPDATE proposals SET account_failure = $2
             WHERE id = $1 AND account_id IS NULL AND account_failure IS NULL",
            &[&proposal, &reason],
        )
        .await
        .map_err(db)?;
    Ok(())
}

pub(super) async fn get(
    pool: &Pool,
    agency: &str,
    id: Uuid,
) -> Result<Option<ProposalRow>, Status> {
    let client = pool.get().await.map_err(db)?;
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM proposals WHERE agency = $1 AND id = $2"),
            &[&agency, &id],
        )
        .await
        .map_err(db)?;
    Ok(row.as_ref().map(proposal))
}

/// The investigator's proposals, newest first, after the `(submitted_at, id)` cursor.
pub(super) async fn list(
    pool: &Pool,
    agency: &str,
    investigator: Uuid,
    after: Option<(SystemTime, Uuid)>,
    limit: i64,
) -> Result<Vec<ProposalRow>, Status> {
    let client = pool.get().await.map_err(db)?;
    let (at, id) = after.unzip();
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM proposals
                 WHERE agency = $1 AND principal_investigator = $2
                   AND ($3::timestamptz IS NULL OR (submitted_at, id) < ($3, $4))
                 ORDER BY submitted_at DESC, id DESC LIMIT $5"
            ),
            &[&agency, &investigator, &at, &id, &limit],
        )
        .await
        .map_err(db)?;
    Ok(rows.iter().map(proposal).collect())
}

/// Accepted proposals still waiting for their account, oldest first.
pub(super) async fn awaiting_account(
    pool: &Pool,
    agency: &str,
    older_than_secs: f64,
    limit: i64,
) -> Result<Vec<ProposalRow>, Status> {
    let client = pool.get().await.map_err(db)?;
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM proposals
                 WHERE agency = $1 AND decision = 'accepted' AND account_id IS NULL AND account_failure IS NULL
                   AND submitted_at < now() - $2::float8 * interval '1 second'
                 ORDER BY submitted_at LIMIT $3"
            ),
            &[&agency, &older_than_secs, &limit],
        )
        .await
        .map_err(db)?;
    Ok(rows.iter().map(proposal).collect())
}

fn proposal(row: &Row) -> ProposalRow {
    ProposalRow {
        id: row.get("id"),
        agency: row.get("agency"),
        principal_investigator: row.get("principal_investigator"),
        idempotency_key: row.get("idempotency_key"),
        title: row.get("title"),
        description: row.get("description"),
        requested_amount: row.get("requested_amount"),
        duration_days: row.get("duration_days"),
        accepted: row.get::<_, &str>("decision") == "accepted",
        reason: row.get("reason"),
        account_id: row.get("account_id"),
        submitted_at: row.get("submitted_at"),
        account_failure: row.get("account_failure"),
    }
}
