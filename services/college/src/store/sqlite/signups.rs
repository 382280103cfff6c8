//! Sign-ups awaiting their email's code on SQLite (see
//! [`crate::store::Begun`], [`crate::store::Finished`]), by the store's
//! clock ([`grantmesh_store::sqlite_now_ms`]).

use std::time::Duration;

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use uuid::Uuid;

use super::Accounts;
use crate::store::{Begun, Finished, PendingSignup, ResearcherRow, Result};

/// How long past its expiry a sign-up row is kept before a sign-up deletes it.
const KEEP_AFTER_EXPIRY_MS: i64 = 24 * 60 * 60 * 1000;

/// The conditions of a live sign-up that still takes tries (?1 email, ?2 tries).
const LIVE: &str = concat!(
    "email = ?1 AND attempts < ?2 AND code_digest IS NOT NULL AND password_hash IS NOT NULL \
     AND expires_at > ",
    grantmesh_store::sqlite_now_ms!()
);

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Accounts {
    pub(in crate::store) async fn begin_signup_here(
        &self,
        signup: &PendingSignup<'_>,
        lifetime: Duration,
        resend_after: Duration,
    ) -> Result<Begun> {
        let (email, name) = (signup.email.to_owned(), signup.name.to_owned());
        let (hash, digest) = (signup.password_hash.to_owned(), signup.code_digest.to_vec());
        let (lifetime, resend_after) = (millis(lifetime), millis(resend_after));
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now: i64 = tx.query_row(
                concat!("SELECT ", grantmesh_store::sqlite_now_ms!()),
                [],
                |row| row.get(0),
            )?;
            tx.execute(
                "DELETE FROM signups WHERE expires_at < ?1",
                params![now - KEEP_AFTER_EXPIRY_MS],
            )?;
            let mailed: Option<i64> = tx
                .query_row(
                    "SELECT mailed_at FROM signups WHERE email = ?1",
                    params![email],
                    |row| row.get(0),
                )
                .optional()?;
            if mailed.is_some_and(|mailed| mailed > now - resend_after) {
                return Ok(Begun::TooSoon);
            }
            let registered: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM researchers WHERE email = ?1)",
                params![email],
                |row| row.get(0),
            )?;
            let (hash, digest) = if registered {
                (None, None)
            } else {
                (Some(hash), Some(digest))
            };
            tx.execute(
                "INSERT INTO signups (email, name, password_hash, code_digest, mailed_at, expires_at, attempts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5 + ?6, 0)
                 ON CONFLICT (email) DO UPDATE
                    SET name = excluded.name, password_hash = excluded.password_hash,
                        code_digest = excluded.code_digest, mailed_at = excluded.mailed_at,
                        expires_at = excluded.expires_at, attempts = 0",
                params![email, name, hash, digest, now, lifetime],
            )?;
            tx.commit()?;
            Ok(if registered { Begun::Registered } else { Begun::Mail })
        })
        .await
    }

    pub(in crate::store) async fn signup_password_hash_here(
        &self,
        email: &str,
        attempts: u32,
    ) -> Result<Option<String>> {
        let email = email.to_owned();
        self.call(move |conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT password_hash FROM signups WHERE {LIVE}"),
                    params![email, attempts],
                    |row| row.get(0),
                )
                .optional()?)
        })
        .await
    }

    pub(in crate::store) async fn finish_signup_here(
        &self,
        email: &str,
        code_digest: &[u8],
        password_hash: &str,
        attempts: u32,
    ) -> Result<Finished> {
        let (email, code_digest) = (email.to_owned(), code_digest.to_vec());
        let checked_hash = password_hash.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let pending: Option<(String, String, Vec<u8>)> = tx
                .query_row(
                    &format!("SELECT name, password_hash, code_digest FROM signups WHERE {LIVE}"),
                    params![email, attempts],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            let Some((name, password_hash, digest)) = pending else {
                return Ok(Finished::Unknown);
            };
            if digest != code_digest || password_hash != checked_hash {
                tx.execute(
                    "UPDATE signups SET attempts = attempts + 1 WHERE email = ?1",
                    params![email],
                )?;
                tx.commit()?;
                return Ok(Finished::Wrong);
            }
            let researcher = ResearcherRow {
                id: Uuid::new_v4(),
                name,
                email,
                password_hash,
            };
            let inserted = tx.execute(
                "INSERT INTO researchers (id, name, email, password_hash) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (email) DO NOTHING",
                params![
                    researcher.id,
                    researcher.name,
                    researcher.email,
                    researcher.password_hash
                ],
            )?;
            tx.execute(
                "DELETE FROM signups WHERE email = ?1",
                params![researcher.email],
            )?;
            tx.commit()?;
            Ok(if inserted == 1 {
                Finished::Created(researcher)
            } else {
                Finished::Unknown
            })
        })
        .await
    }
}
