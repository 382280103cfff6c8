//! The College's SQL on PostgreSQL, the central store shared by every
//! College instance.
//!
//! Withdrawals come in batches from the batcher, and each batch is one
//! call of the `withdraw_batch` function (migration V4): one round trip,
//! one transaction, one commit, one row lock per account, at most one
//! notification, an answer per withdrawal. A batch of one, the usual case
//! under light load, is one plain statement instead ([`WITHDRAW_ONE`]),
//! which saves the function's fixed cost. `CHECK (balance >= 0)` and the
//! journal's triggers stand behind it. Calls that a client may abandon
//! mid-statement run on a [`Conn`], which cancels the statement and keeps
//! the connection out of the pool.

pub(super) mod membership;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use grantmesh_store::tokio_postgres::{self, Row};
use grantmesh_store::tokio_postgres_rustls::MakeRustlsConnect;
use uuid::Uuid;

use super::*;

/// The College's PostgreSQL migrations.
mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

pub(super) fn migrations() -> refinery::Runner {
    embedded::migrations::runner()
}

const ACCOUNT_COLUMNS: &str = "a.id, a.proposal_id, a.agency, a.title, a.principal_investigator, a.award, a.balance, \
     a.opened_at, a.expires_at, a.expires_at <= now() AS expired";

/// The SQLSTATE of the journal's trigger refusing an entry stamped at or
/// after the account's expiry (migrations V3, V4).
const EXPIRED_AT_DEBIT: &str = "GMEXP";

/// A batch of withdrawals, one call of the `withdraw_batch` function
/// (migration V4, which describes it): one round trip, one transaction, one
/// commit, at most one notification, and a row per withdrawal saying what
/// became of it.
const WITHDRAW_BATCH: &str = "SELECT r_outcome, r_id, r_researcher, r_amount, r_memo, r_at, r_balance_after, r_balance FROM withdraw_batch($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[])";

/// A batch of one withdrawal, the common case when calls do not overlap
/// (one client, light load), as one plain statement: `withdraw_batch`'s
/// fixed cost (a PL/pgSQL call, its SPI statements and arrays) is most of
/// what a lone withdrawal costs PostgreSQL. It answers with the same
/// columns and outcomes. The reads (the account, the membership, an earlier
/// use of the key) see the statement's snapshot while the debit re-checks
/// the row once it holds its lock, so when the debit did not apply and the
/// snapshot gives no reason why (a concurrent withdrawal, an expiry or a
/// membership change came in between) it answers `retry` and the
/// withdrawal goes through `withdraw_batch`, which reads after the lock.
/// An expired account is `retry` too: expiry is judged under the lock,
/// since the lock's holder may be an earlier attempt with the same key
/// that took it before the expiry and is about to commit.
const WITHDRAW_ONE: &str = "WITH target AS (
    SELECT a.id, a.balance, a.expires_at <= clock_timestamp() AS expired,
           EXISTS (SELECT 1 FROM members m WHERE m.account_id = a.id AND m.researcher_id = $2::uuid) AS is_member
      FROM accounts a WHERE a.id = $1::uuid
),
previous AS (
    SELECT w.id, w.researcher_id, w.amount, w.memo, w.balance_after, w.created_at
      FROM withdrawals w WHERE w.account_id = $1::uuid AND w.idempotency_key = $4::text
),
debit AS (
    UPDATE accounts a SET balance = a.balance - $3::bigint
     WHERE a.id = $1::uuid AND a.balance >= $3::bigint AND a.expires_at > clock_timestamp()
       AND EXISTS (SELECT 1 FROM members m WHERE m.account_id = $1::uuid AND m.researcher_id = $2::uuid)
       AND NOT EXISTS (SELECT 1 FROM previous)
    RETURNING a.balance, clock_timestamp() AS at
),
journal AS (
    INSERT INTO withdrawals (account_id, researcher_id, amount, idempotency_key, memo, balance_after, created_at)
    SELECT $1::uuid, $2::uuid, $3::bigint, $4::text, $5::text, d.balance, d.at FROM debit d
    RETURNING id, created_at, balance_after
),
notified AS (
    SELECT pg_notify('grantmesh_accounts', 'withdrawals:' || j.id || ':' || j.id || ':' || $1::uuid::text) FROM journal j
)
SELECT CASE
         WHEN t.id IS NULL THEN 'missing'
         WHEN NOT t.is_member THEN 'not_member'
         WHEN p.id IS NOT NULL THEN CASE WHEN p.amount = $3::bigint THEN 'replayed' ELSE 'key_reused' END
         WHEN j.id IS NOT NULL THEN 'applied'
         WHEN t.expired THEN 'retry'
         WHEN t.balance < $3::bigint THEN 'insufficient'
         ELSE 'retry'
       END AS r_outcome,
       coalesce(j.id, p.id) AS r_id,
       CASE WHEN j.id IS NOT NULL THEN $2::uuid ELSE p.researcher_id END AS r_researcher,
       CASE WHEN j.id IS NOT NULL THEN $3::bigint ELSE p.amount END AS r_amount,
       CASE WHEN j.id IS NOT NULL THEN $5::text ELSE p.memo END AS r_memo,
       coalesce(j.created_at, p.created_at) AS r_at,
       coalesce(j.balance_after, p.balance_after) AS r_balance_after,
       coalesce(j.balance_after, t.balance) AS r_balance,
       (SELECT count(*) FROM notified) AS notified
  FROM (SELECT 1) AS one
  LEFT JOIN target t ON true
  LEFT JOIN previous p ON true
  LEFT JOIN journal j ON true";

/// How many times a batch is tried again when it failed on a race that a
/// second try resolves (see [`withdraw_batch`]) before its callers are told
/// to retry.
const BATCH_TRIES: usize = 5;

/// The College's PostgreSQL pool, and what it needs to cancel a statement
/// whose caller went away ([`Conn`]).
#[derive(Clone)]
pub(super) struct Pg {
    pool: Pool,
    /// The TLS connector of the URL, for cancel requests.
    tls: MakeRustlsConnect,
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
        Ok(Self { pool, tls })
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
    /// Inside [`Conn::guard`]: a statement may be running.
    busy: AtomicBool,
}

impl std::ops::Deref for Conn {
    type Target = deadpool_postgres::Object;

    fn deref(&self) -> &deadpool_postgres::Object {
        self.object.as_ref().expect("present until dropped")
    }
}

impl Conn {
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
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
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
    let tx = client.transaction().await?;
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
                 INSERT INTO accounts (id, proposal_id, agency, title, principal_investigator, award, balance, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $6, now() + ($7::bigint * $8::bigint) * interval '1 millisecond')
                 ON CONFLICT (proposal_id) DO NOTHING
                 RETURNING id, principal_investigator
             ),
             pi AS (
                 INSERT INTO members (account_id, researcher_id, role)
                 SELECT id, principal_investigator, 'principal_investigator' FROM ins
             )
             SELECT id FROM ins",
            &[&id, &new.proposal_id, &new.agency, &new.title, &new.principal_investigator, &new.award, &days, &day_ms],
        )
        .await;
    let created = match opened {
        Ok(row) => row.is_some(),
        Err(err) if err.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) => {
            return Err(unknown_principal_investigator(new.principal_investigator));
        }
        Err(err) => return Err(err.into()),
    };
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
    client.guard(account_on(&client, id, caller)).await
}

async fn account_on(
    client: &deadpool_postgres::Object,
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
    account.members = members(client, id).await?;
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
    let tx = client.transaction().await?;
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
    tx.commit().await?;
    drop(client);
    self::account(pool, account, None).await
}

/// Removes a member; only the principal investigator may, and not themself.
pub(super) async fn remove_member(
    pool: &Pool,
    account: Uuid,
    caller: Uuid,
    researcher: Uuid,
) -> Result<AccountRow> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
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
    tx.commit().await?;
    drop(client);
    self::account(pool, account, None).await
}

/// Applies a batch of withdrawals with one call of `withdraw_batch`: an
/// answer per withdrawal, in order, or one error for the whole batch, which
/// then applied nothing. A batch of one may run on its caller's task (see
/// the batcher), so it is dropped when its client gives up: it runs on a
/// [`Conn`], and its statement is cancelled, applied or not as a whole.
pub(super) async fn withdraw_batch(
    pg: &Pg,
    batch: &[batcher::Request],
) -> Result<Vec<Result<Withdrawal>>> {
    let accounts: Vec<Uuid> = batch.iter().map(|w| w.account).collect();
    let callers: Vec<Uuid> = batch.iter().map(|w| w.caller).collect();
    let amounts: Vec<i64> = batch.iter().map(|w| w.amount).collect();
    let keys: Vec<&str> = batch.iter().map(|w| w.key.as_str()).collect();
    let memos: Vec<&str> = batch.iter().map(|w| w.memo.as_str()).collect();
    let client = pg.conn().await?;
    let mut one = batch.len() == 1;
    // Neither race below happens while every withdrawal goes through
    // `withdraw_batch`, which takes the account's row lock before it reads:
    // they are backstops for a write made some other way (or by
    // [`WITHDRAW_ONE`], which reads before the lock). A second try of the
    // whole batch reads what the other writer did.
    for _ in 0..BATCH_TRIES {
        let answered = client
            .guard(async {
                if one {
                    let w = &batch[0];
                    let statement = client.prepare_cached(WITHDRAW_ONE).await?;
                    client
                        .query(
                            &statement,
                            &[&w.account, &w.caller, &w.amount, &w.key, &w.memo],
                        )
                        .await
                } else {
                    let statement = client.prepare_cached(WITHDRAW_BATCH).await?;
                    client
                        .query(&statement, &[&accounts, &callers, &amounts, &keys, &memos])
                        .await
                }
            })
            .await;
        let rows = match answered {
            Ok(rows) => rows,
            // The same key applied concurrently by another writer.
            Err(err) if grantmesh_store::is_unique_violation(&err) => continue,
            // An entry would have been stamped at or after the expiry.
            Err(err) if err.code().map(|c| c.code()) == Some(EXPIRED_AT_DEBIT) => continue,
            Err(err) => return Err(err.into()),
        };
        if rows.len() != batch.len() {
            return Err(StoreError::SqliteCall(format!(
                "withdraw_batch answered {} rows for {} withdrawals",
                rows.len(),
                batch.len()
            )));
        }
        if one && rows[0].get::<_, &str>("r_outcome") == "retry" {
            one = false;
            continue;
        }
        return Ok(batch
            .iter()
            .zip(&rows)
            .map(|(w, row)| answer(w, row))
            .collect());
    }
    Err(StoreError::Contended(
        "the central store is too busy right now; retry the withdrawal with the same key".into(),
    ))
}

/// One withdrawal's answer from its row of `withdraw_batch`.
fn answer(w: &batcher::Request, row: &Row) -> Result<Withdrawal> {
    let outcome: &str = row.get("r_outcome");
    let entry = || TransactionRow {
        id: row.get("r_id"),
        account_id: w.account,
        researcher_id: row.get("r_researcher"),
        amount: row.get("r_amount"),
        memo: row.get("r_memo"),
        idempotency_key: w.key.clone(),
        created_at: row.get("r_at"),
        balance_after: row.get("r_balance_after"),
    };
    match outcome {
        "applied" | "replayed" => Ok(Withdrawal {
            transaction: entry(),
            balance: row.get("r_balance"),
            replayed: outcome == "replayed",
        }),
        "key_reused" => Err(key_reused(&w.key, row.get("r_amount"), w.amount)),
        "missing" => Err(not_found(w.account)),
        "not_member" => Err(not_member(w.account)),
        "expired" => Err(expired(w.account)),
        "insufficient" => Err(insufficient_funds(
            w.account,
            row.get("r_balance"),
            w.amount,
        )),
        other => Err(StoreError::SqliteCall(format!(
            "withdraw_batch answered an unknown outcome {other:?}"
        ))),
    }
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
            account_on(&client, account, Some(caller)).await?;
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
    if caller.is_some_and(|caller| pi != caller) {
        return Err(not_principal_investigator(account));
    }
    Ok(pi)
}

async fn notify_membership(tx: &deadpool_postgres::Transaction<'_>, account: Uuid) -> Result<()> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &membership_payload(account)],
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
        opened_at: row.get("opened_at"),
        expires_at: row.get("expires_at"),
        expired: row.get("expired"),
        members: Vec::new(),
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
