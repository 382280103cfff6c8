//! Login sessions on PostgreSQL (see [`crate::store::Refreshed`]): every
//! time is the database's clock, so Colleges with skewed clocks agree on
//! which sessions are live.

use std::time::{Duration, SystemTime};

use uuid::Uuid;

use super::Pg;
use crate::store::{Refreshed, Result};

/// How long past its end a session row is kept before a login deletes it.
const KEEP_AFTER_END: &str = "1 day";

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

pub(super) async fn create(
    pg: &Pg,
    researcher: Uuid,
    refresh_hash: &[u8],
    lifetime: Duration,
) -> Result<(Uuid, SystemTime)> {
    let client = pg.conn().await?;
    let id = Uuid::new_v4();
    client
        .guard(client.execute(
            &format!("DELETE FROM sessions WHERE expires_at < now() - interval '{KEEP_AFTER_END}'"),
            &[],
        ))
        .await?;
    let row = client
        .guard(client.query_one(
            "INSERT INTO sessions (id, researcher, refresh_hash, expires_at)
             VALUES ($1, $2, $3, now() + $4::bigint * interval '1 millisecond')
             RETURNING expires_at",
            &[&id, &researcher, &refresh_hash, &millis(lifetime)],
        ))
        .await?;
    Ok((id, row.get(0)))
}

pub(super) async fn refresh(pg: &Pg, old: &[u8], new: &[u8]) -> Result<Refreshed> {
    let client = pg.conn().await?;
    let renewed = client
        .guard(client.query_opt(
            "UPDATE sessions SET previous_hash = refresh_hash, refresh_hash = $2
             WHERE refresh_hash = $1 AND ended_at IS NULL AND expires_at > now()
             RETURNING id, researcher",
            &[&old, &new],
        ))
        .await?;
    if let Some(row) = renewed {
        return Ok(Refreshed::Renewed {
            session: row.get(0),
            researcher: row.get(1),
        });
    }
    let reused = client
        .guard(client.query_opt(
            "UPDATE sessions SET ended_at = now()
             WHERE previous_hash = $1 AND ended_at IS NULL RETURNING id",
            &[&old],
        ))
        .await?;
    Ok(match reused {
        Some(row) => Refreshed::Reused {
            session: row.get(0),
        },
        None => Refreshed::Unknown,
    })
}

pub(super) async fn end(pg: &Pg, researcher: Uuid, session: Uuid) -> Result<bool> {
    let client = pg.conn().await?;
    let ended = client
        .guard(client.execute(
            "UPDATE sessions SET ended_at = now()
             WHERE id = $1 AND researcher = $2 AND ended_at IS NULL",
            &[&session, &researcher],
        ))
        .await?;
    Ok(ended == 1)
}

pub(super) async fn end_by_refresh(pg: &Pg, refresh_hash: &[u8]) -> Result<Option<Uuid>> {
    let client = pg.conn().await?;
    let ended = client
        .guard(client.query_opt(
            "UPDATE sessions SET ended_at = now()
             WHERE refresh_hash = $1 AND ended_at IS NULL RETURNING id",
            &[&refresh_hash],
        ))
        .await?;
    Ok(ended.map(|row| row.get(0)))
}

pub(super) async fn ended_since(pg: &Pg, since: SystemTime) -> Result<Vec<(Uuid, SystemTime)>> {
    let client = pg.conn().await?;
    let rows = client
        .guard(client.query(
            "SELECT id, ended_at FROM sessions WHERE ended_at >= $1",
            &[&since],
        ))
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

pub(super) async fn change_password(
    pg: &Pg,
    researcher: Uuid,
    password_hash: &str,
) -> Result<Vec<Uuid>> {
    let mut client = pg.get().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "UPDATE researchers SET password_hash = $2 WHERE id = $1",
        &[&researcher, &password_hash],
    )
    .await?;
    let ended = tx
        .query(
            "UPDATE sessions SET ended_at = now()
             WHERE researcher = $1 AND ended_at IS NULL RETURNING id",
            &[&researcher],
        )
        .await?;
    tx.commit().await?;
    Ok(ended.iter().map(|row| row.get(0)).collect())
}
