//! The College's SQL on PostgreSQL, the central store shared by every
//! College instance.
//!
//! A withdrawal is one statement, one round trip: it checks membership,
//! expiry (by the database's clock), the idempotency key and the balance,
//! debits the account, appends to the journal and queues a notification for
//! live watchers, all or nothing. Concurrency is left to PostgreSQL's row lock
//! on the account: a concurrent debit re-checks the balance on the latest
//! row version, and `CHECK (balance >= 0)` stands behind it. When nothing was
//! debited, the same statement's reads say why.

pub(super) mod membership;

use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use grantmesh_store::tokio_postgres::{self, Row};
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
/// after the account's expiry (migration V3).
const EXPIRED_AT_DEBIT: &str = "GMEXP";

/// The withdrawal, one statement. Expiry is judged by `clock_timestamp()`,
/// the database's clock at the moment the debit holds the account's row
/// lock, and the journal entry is stamped with that same moment: a
/// statement that waited on the lock across the expiry debits nothing, so
/// a key's answer never turns from "expired" into "applied" (`now()` would
/// be the statement's start, from before the wait). PostgreSQL does not
/// re-check a waiting UPDATE's conditions when the lock holder let go
/// without changing the row, so the journal's trigger (V3) makes the final
/// check on the stamped moment and fails the whole statement.
const WITHDRAW: &str = "
WITH target AS (
    SELECT a.id, a.balance, a.expires_at <= clock_timestamp() AS expired,
           EXISTS (SELECT 1 FROM members m WHERE m.account_id = a.id AND m.researcher_id = $2) AS is_member
    FROM accounts a WHERE a.id = $1
),
previous AS (
    SELECT w.id, w.researcher_id, w.amount, w.memo, w.balance_after, w.created_at
    FROM withdrawals w WHERE w.account_id = $1 AND w.idempotency_key = $4
),
debit AS (
    UPDATE accounts a SET balance = a.balance - $3
    WHERE a.id = $1
      AND a.balance >= $3
      AND a.expires_at > clock_timestamp()
      AND EXISTS (SELECT 1 FROM members m WHERE m.account_id = $1 AND m.researcher_id = $2)
      AND NOT EXISTS (SELECT 1 FROM previous)
    RETURNING a.balance, clock_timestamp() AS at
),
journal AS (
    INSERT INTO withdrawals (account_id, researcher_id, amount, idempotency_key, memo, balance_after, created_at)
    SELECT $1, $2, $3, $4, $5, balance, at FROM debit
    RETURNING id, created_at, balance_after
),
notified AS (
    SELECT pg_notify('grantmesh_accounts', 'withdrawal:' || $1::text || ':' || j.id::text) FROM journal j
)
SELECT (SELECT count(*) FROM notified) AS notified,
       j.id AS new_id, j.created_at AS new_at, j.balance_after AS new_balance,
       t.id IS NOT NULL AS account_exists, t.is_member, t.expired, t.balance,
       p.id AS prev_id, p.researcher_id AS prev_researcher, p.amount AS prev_amount, p.memo AS prev_memo,
       p.balance_after AS prev_balance_after, p.created_at AS prev_at
FROM (SELECT 1) AS one
LEFT JOIN journal j ON true
LEFT JOIN target t ON true
LEFT JOIN previous p ON true";

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

pub(super) async fn researcher_by_email(pool: &Pool, email: &str) -> Result<Option<ResearcherRow>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT id, name, email, password_hash FROM researchers WHERE email = $1",
            &[&email],
        )
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
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts a WHERE a.id = $1"),
            &[&id],
        )
        .await?
        .ok_or_else(|| not_found(id))?;
    let mut account = account_from_row(&row);
    account.members = members(&client, id).await?;
    if let Some(caller) = caller
        && !account.members.iter().any(|m| m.researcher_id == caller)
    {
        return Err(not_member(id));
    }
    Ok(account)
}

/// Every account `caller` is a member of.
pub(super) async fn accounts_of(
    pool: &Pool,
    caller: Uuid,
    after: Option<(SystemTime, Uuid)>,
    limit: i64,
) -> Result<Vec<AccountRow>> {
    let client = pool.get().await?;
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

/// Applies a withdrawal once per idempotency key; see the module docs.
pub(super) async fn withdraw(
    pool: &Pool,
    account: Uuid,
    caller: Uuid,
    amount: i64,
    key: &str,
    memo: &str,
) -> Result<Withdrawal> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(WITHDRAW).await?;
    // A second pass is needed only when a concurrent call changed the
    // account between this statement's snapshot and its debit.
    for _ in 0..5 {
        let row = match client
            .query_one(&statement, &[&account, &caller, &amount, &key, &memo])
            .await
        {
            Ok(row) => row,
            // The same key applied concurrently by another call: the
            // next pass finds it as `previous`.
            Err(err) if grantmesh_store::is_unique_violation(&err) => continue,
            // The debit would have landed at or after the expiry (it waited
            // on the row lock across it): nothing was applied, and the next
            // pass reads the account as expired.
            Err(err) if err.code().map(|c| c.code()) == Some(EXPIRED_AT_DEBIT) => continue,
            Err(err) => return Err(err.into()),
        };
        if let Some(id) = row.get::<_, Option<i64>>("new_id") {
            let balance: i64 = row.get("new_balance");
            return Ok(Withdrawal {
                transaction: TransactionRow {
                    id,
                    account_id: account,
                    researcher_id: caller,
                    amount,
                    memo: memo.to_owned(),
                    idempotency_key: key.to_owned(),
                    created_at: row.get("new_at"),
                    balance_after: balance,
                },
                balance,
                replayed: false,
            });
        }
        if !row.get::<_, bool>("account_exists") {
            return Err(not_found(account));
        }
        if !row.get::<_, bool>("is_member") {
            return Err(not_member(account));
        }
        let balance: i64 = row.get("balance");
        if let Some(previous) = row.get::<_, Option<i64>>("prev_id") {
            let previous_amount: i64 = row.get("prev_amount");
            if previous_amount != amount {
                return Err(key_reused(key, previous_amount, amount));
            }
            return Ok(Withdrawal {
                transaction: TransactionRow {
                    id: previous,
                    account_id: account,
                    researcher_id: row.get("prev_researcher"),
                    amount: previous_amount,
                    memo: row.get("prev_memo"),
                    idempotency_key: key.to_owned(),
                    created_at: row.get("prev_at"),
                    balance_after: row.get("prev_balance_after"),
                },
                balance,
                replayed: true,
            });
        }
        if row.get::<_, bool>("expired") {
            return Err(expired(account));
        }
        if balance < amount {
            return Err(insufficient_funds(account, balance, amount));
        }
    }
    Err(contended(account))
}

/// The journal, newest first, `limit` entries before `before` (an entry id).
pub(super) async fn transactions(
    pool: &Pool,
    account: Uuid,
    caller: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<TransactionRow>> {
    self::account(pool, account, Some(caller)).await?;
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, account_id, researcher_id, amount, memo, idempotency_key, created_at, balance_after
             FROM withdrawals WHERE account_id = $1 AND ($2::bigint IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3",
            &[&account, &before, &limit],
        )
        .await?;
    Ok(rows.iter().map(transaction_from_row).collect())
}

pub(super) async fn transaction(
    pool: &Pool,
    account: Uuid,
    id: i64,
) -> Result<Option<TransactionRow>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT id, account_id, researcher_id, amount, memo, idempotency_key, created_at, balance_after
             FROM withdrawals WHERE account_id = $1 AND id = $2",
            &[&account, &id],
        )
        .await?;
    Ok(row.as_ref().map(transaction_from_row))
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
