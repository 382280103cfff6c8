//! Login sessions on SQLite (see [`crate::store::Refreshed`]), by the
//! store's clock ([`grantmesh_store::sqlite_now_ms`]).

use std::time::{Duration, SystemTime};

use grantmesh_store::sqlite::{millis, time};
use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::Accounts;
use crate::store::{Refreshed, Result};

/// How long past its end a session row is kept before a login deletes it.
const KEEP_AFTER_END_MS: i64 = 24 * 60 * 60 * 1000;

impl Accounts {
    pub(in crate::store) async fn create_session(
        &self,
        researcher: Uuid,
        refresh_hash: &[u8],
        lifetime: Duration,
    ) -> Result<(Uuid, SystemTime)> {
        let refresh_hash = refresh_hash.to_vec();
        let lifetime = i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX);
        self.call(move |conn| {
            conn.execute(
                concat!(
                    "DELETE FROM sessions WHERE expires_at < ",
                    grantmesh_store::sqlite_now_ms!(),
                    " - ?1"
                ),
                params![KEEP_AFTER_END_MS],
            )?;
            let id = Uuid::new_v4();
            let expires: i64 = conn.query_row(
                concat!(
                    "INSERT INTO sessions (id, researcher, refresh_hash, expires_at) VALUES (?1, ?2, ?3, ",
                    grantmesh_store::sqlite_now_ms!(),
                    " + ?4) RETURNING expires_at"
                ),
                params![id, researcher, refresh_hash, lifetime],
                |row| row.get(0),
            )?;
            Ok((id, time(expires)))
        })
        .await
    }

    pub(in crate::store) async fn refresh_session(
        &self,
        old: &[u8],
        new: &[u8],
    ) -> Result<Refreshed> {
        let (old, new) = (old.to_vec(), new.to_vec());
        self.call(move |conn| {
            let renewed = conn
                .query_row(
                    concat!(
                        "UPDATE sessions SET previous_hash = refresh_hash, refresh_hash = ?2
                         WHERE refresh_hash = ?1 AND ended_at IS NULL AND expires_at > ",
                        grantmesh_store::sqlite_now_ms!(),
                        " RETURNING id, researcher"
                    ),
                    params![old, new],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            if let Some((session, researcher)) = renewed {
                return Ok(Refreshed::Renewed {
                    session,
                    researcher,
                });
            }
            let reused = conn
                .query_row(
                    concat!(
                        "UPDATE sessions SET ended_at = ",
                        grantmesh_store::sqlite_now_ms!(),
                        " WHERE previous_hash = ?1 AND ended_at IS NULL RETURNING id"
                    ),
                    params![old],
                    |row| row.get(0),
                )
                .optional()?;
            Ok(match reused {
                Some(session) => Refreshed::Reused { session },
                None => Refreshed::Unknown,
            })
        })
        .await
    }

    pub(in crate::store) async fn end_session(
        &self,
        researcher: Uuid,
        session: Uuid,
    ) -> Result<bool> {
        self.call(move |conn| {
            let ended = conn.execute(
                concat!(
                    "UPDATE sessions SET ended_at = ",
                    grantmesh_store::sqlite_now_ms!(),
                    " WHERE id = ?1 AND researcher = ?2 AND ended_at IS NULL"
                ),
                params![session, researcher],
            )?;
            Ok(ended == 1)
        })
        .await
    }

    pub(in crate::store) async fn change_password(
        &self,
        researcher: Uuid,
        password_hash: &str,
    ) -> Result<Vec<Uuid>> {
        let password_hash = password_hash.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "UPDATE researchers SET password_hash = ?2 WHERE id = ?1",
                params![researcher, password_hash],
            )?;
            let ended = tx
                .prepare(concat!(
                    "UPDATE sessions SET ended_at = ",
                    grantmesh_store::sqlite_now_ms!(),
                    " WHERE researcher = ?1 AND ended_at IS NULL RETURNING id"
                ))?
                .query_map(params![researcher], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<Uuid>>>()?;
            tx.commit()?;
            Ok(ended)
        })
        .await
    }

    pub(in crate::store) async fn end_session_by_refresh(
        &self,
        refresh_hash: &[u8],
    ) -> Result<Option<Uuid>> {
        let refresh_hash = refresh_hash.to_vec();
        self.call(move |conn| {
            Ok(conn
                .query_row(
                    concat!(
                        "UPDATE sessions SET ended_at = ",
                        grantmesh_store::sqlite_now_ms!(),
                        " WHERE refresh_hash = ?1 AND ended_at IS NULL RETURNING id"
                    ),
                    params![refresh_hash],
                    |row| row.get(0),
                )
                .optional()?)
        })
        .await
    }

    pub(in crate::store) async fn sessions_ended_since(
        &self,
        since: SystemTime,
    ) -> Result<Vec<(Uuid, SystemTime)>> {
        let since = millis(since);
        self.call(move |conn| {
            let mut statement =
                conn.prepare_cached("SELECT id, ended_at FROM sessions WHERE ended_at >= ?1")?;
            let rows = statement
                .query_map(params![since], |row| {
                    Ok((row.get(0)?, time(row.get::<_, i64>(1)?)))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }
}
