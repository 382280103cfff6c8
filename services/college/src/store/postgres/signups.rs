//! Sign-ups awaiting their email's code on PostgreSQL (see
//! [`crate::store::Begun`], [`crate::store::Finished`]), by the database's
//! clock.

use std::time::Duration;

use uuid::Uuid;

use super::Pg;
use crate::store::{Begun, Finished, PendingSignup, ResearcherRow, Result};

/// How long past its expiry a sign-up row is kept before a sign-up deletes it.
const KEEP_AFTER_EXPIRY: &str = "1 day";

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

pub(super) async fn begin(
    pg: &Pg,
    signup: &PendingSignup<'_>,
    lifetime: Duration,
    resend_after: Duration,
) -> Result<Begun> {
    let client = pg.conn().await?;
    client
        .guard(client.execute(
            &format!(
                "DELETE FROM signups WHERE expires_at < now() - interval '{KEEP_AFTER_EXPIRY}'"
            ),
            &[],
        ))
        .await?;
    // One statement: two sign-ups of one email at once take turns on its
    // row, and the one that finds a message sent within `resend_after`
    // changes nothing (no row returned).
    let row = client
        .guard(client.query_opt(
            "WITH registered AS (SELECT EXISTS (SELECT 1 FROM researchers WHERE email = $1) AS yes)
             INSERT INTO signups (email, name, password_hash, code_digest, mailed_at, expires_at, attempts)
             SELECT $1, $2,
                    CASE WHEN yes THEN NULL ELSE $3 END,
                    CASE WHEN yes THEN NULL ELSE $4::bytea END,
                    now(), now() + $5::bigint * interval '1 millisecond', 0
             FROM registered
             ON CONFLICT (email) DO UPDATE
                SET name = EXCLUDED.name, password_hash = EXCLUDED.password_hash,
                    code_digest = EXCLUDED.code_digest, mailed_at = EXCLUDED.mailed_at,
                    expires_at = EXCLUDED.expires_at, attempts = 0
                WHERE signups.mailed_at <= now() - $6::bigint * interval '1 millisecond'
             RETURNING code_digest IS NULL",
            &[
                &signup.email,
                &signup.name,
                &signup.password_hash,
                &signup.code_digest,
                &millis(lifetime),
                &millis(resend_after),
            ],
        ))
        .await?;
    Ok(match row.map(|row| row.get::<_, bool>(0)) {
        None => Begun::TooSoon,
        Some(true) => Begun::Registered,
        Some(false) => Begun::Mail,
    })
}

/// The conditions of a live sign-up that still takes tries ($1 email, $2 tries).
const LIVE: &str = "email = $1 AND expires_at > now() AND attempts < $2
                    AND code_digest IS NOT NULL AND password_hash IS NOT NULL";

fn tries(attempts: u32) -> i32 {
    i32::try_from(attempts).unwrap_or(i32::MAX)
}

pub(super) async fn password_hash(pg: &Pg, email: &str, attempts: u32) -> Result<Option<String>> {
    let client = pg.conn().await?;
    let row = client
        .guard(client.query_opt(
            &format!("SELECT password_hash FROM signups WHERE {LIVE}"),
            &[&email, &tries(attempts)],
        ))
        .await?;
    Ok(row.map(|row| row.get(0)))
}

pub(super) async fn finish(
    pg: &Pg,
    email: &str,
    code_digest: &[u8],
    password_hash: &str,
    attempts: u32,
) -> Result<Finished> {
    let mut client = pg.get().await?;
    let tx = client.transaction().await?;
    let pending = tx
        .query_opt(
            &format!(
                "SELECT name, password_hash, code_digest FROM signups WHERE {LIVE} FOR UPDATE"
            ),
            &[&email, &tries(attempts)],
        )
        .await?;
    let Some(pending) = pending else {
        return Ok(Finished::Unknown);
    };
    if pending.get::<_, &[u8]>("code_digest") != code_digest
        || pending.get::<_, &str>("password_hash") != password_hash
    {
        tx.execute(
            "UPDATE signups SET attempts = attempts + 1 WHERE email = $1",
            &[&email],
        )
        .await?;
        tx.commit().await?;
        return Ok(Finished::Wrong);
    }
    let researcher = ResearcherRow {
        id: Uuid::new_v4(),
        name: pending.get("name"),
        email: email.to_owned(),
        password_hash: pending.get("password_hash"),
    };
    // The row lock above orders this with any other finish for the email;
    // an email registered by other means meanwhile only loses the sign-up.
    let inserted = tx
        .execute(
            "INSERT INTO researchers (id, name, email, password_hash) VALUES ($1, $2, $3, $4)
             ON CONFLICT (email) DO NOTHING",
            &[
                &researcher.id,
                &researcher.name,
                &researcher.email,
                &researcher.password_hash,
            ],
        )
        .await?;
    tx.execute("DELETE FROM signups WHERE email = $1", &[&email])
        .await?;
    tx.commit().await?;
    Ok(if inserted == 1 {
        Finished::Created(researcher)
    } else {
        Finished::Unknown
    })
}
