//! Invitations, handing over the principal investigator's role, and
//! researchers by id, on PostgreSQL (see [`crate::store::membership`]).

use deadpool_postgres::Pool;
use grantmesh_store::tokio_postgres::Row;
use uuid::Uuid;

use super::{lock_as_principal_investigator, notify_membership};
use crate::store::membership::{
    InvitationRow, InviteCheck, MAX_PENDING_INVITATIONS, no_invitation, not_a_member_to_promote,
};
use crate::store::{AccountRow, ResearcherRow, Result};

const INVITATION_COLUMNS: &str = "SELECT i.id, i.account_id, a.title, i.email, r.name AS by_name, r.email AS by_email, i.invited_at
     FROM invitations i JOIN accounts a ON a.id = i.account_id JOIN researchers r ON r.id = i.invited_by";

pub(super) async fn invite(
    pool: &Pool,
    account: Uuid,
    caller: Uuid,
    email: &str,
) -> Result<(AccountRow, Vec<InvitationRow>)> {
    let mut client = pool.get().await?;
    let tx = client
        .build_transaction()
        .isolation_level(grantmesh_store::tokio_postgres::IsolationLevel::ReadCommitted)
        .start()
        .await?;
    lock_as_principal_investigator(&tx, account, Some(caller)).await?;
    // Invitations of one email from different accounts take turns, so two
    // at once cannot both slip under the per-email bound.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1)::bigint)",
        &[&email],
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM members m JOIN researchers r ON r.id = m.researcher_id
                            WHERE m.account_id = $1 AND r.email = $2),
                    EXISTS (SELECT 1 FROM invitations WHERE account_id = $1 AND email = $2),
                    (SELECT count(*) FROM invitations WHERE account_id = $1),
                    (SELECT count(*) FROM invitations WHERE email = $2)",
            &[&account, &email],
        )
        .await?;
    let check = InviteCheck {
        member: row.get(0),
        invited: row.get(1),
        on_account: row.get(2),
        for_email: row.get(3),
    };
    if check.decide(account)? {
        tx.execute(
            "INSERT INTO invitations (id, account_id, email, invited_by) VALUES ($1, $2, $3, $4)",
            &[&Uuid::new_v4(), &account, &email, &caller],
        )
        .await?;
    }
    tx.commit().await?;
    drop(client);
    let row = super::account(pool, account, None).await?;
    Ok((row, account_invitations(pool, account).await?))
}

pub(super) async fn account_invitations(pool: &Pool, account: Uuid) -> Result<Vec<InvitationRow>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "{INVITATION_COLUMNS} WHERE i.account_id = $1 ORDER BY i.invited_at DESC, i.id LIMIT $2"
            ),
            &[&account, &MAX_PENDING_INVITATIONS],
        )
        .await?;
    Ok(rows.iter().map(invitation).collect())
}

pub(super) async fn invitations_for(pool: &Pool, caller: Uuid) -> Result<Vec<InvitationRow>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "{INVITATION_COLUMNS}
                 WHERE i.email = (SELECT email FROM researchers WHERE id = $1)
                 ORDER BY i.invited_at DESC, i.id LIMIT $2"
            ),
            &[&caller, &MAX_PENDING_INVITATIONS],
        )
        .await?;
    Ok(rows.iter().map(invitation).collect())
}

pub(super) async fn accept_invitation(
    pool: &Pool,
    caller: Uuid,
    invitation: Uuid,
) -> Result<AccountRow> {
    let mut client = pool.get().await?;
    let tx = client
        .build_transaction()
        .isolation_level(grantmesh_store::tokio_postgres::IsolationLevel::ReadCommitted)
        .start()
        .await?;
    let account: Uuid = tx
        .query_opt(
            "SELECT i.account_id FROM invitations i JOIN researchers r ON r.email = i.email
             WHERE i.id = $1 AND r.id = $2 FOR UPDATE OF i",
            &[&invitation, &caller],
        )
        .await?
        .ok_or_else(|| no_invitation(invitation))?
        .get(0);
    tx.execute(
        "INSERT INTO members (account_id, researcher_id, role) VALUES ($1, $2, 'member') ON CONFLICT DO NOTHING",
        &[&account, &caller],
    )
    .await?;
    tx.execute("DELETE FROM invitations WHERE id = $1", &[&invitation])
        .await?;
    notify_membership(&tx, account).await?;
    let row = super::account_on(&tx, account, None).await?;
    tx.commit().await?;
    Ok(row)
}

pub(super) async fn decline_invitation(pool: &Pool, caller: Uuid, invitation: Uuid) -> Result<()> {
    let client = pool.get().await?;
    let deleted = client
        .execute(
            "DELETE FROM invitations i USING accounts a
             WHERE i.id = $1 AND a.id = i.account_id
               AND (a.principal_investigator = $2
                    OR i.email = (SELECT email FROM researchers WHERE id = $2))",
            &[&invitation, &caller],
        )
        .await?;
    if deleted == 0 {
        return Err(no_invitation(invitation));
    }
    Ok(())
}

pub(super) async fn transfer_principal(
    pool: &Pool,
    account: Uuid,
    caller: Uuid,
    researcher: Uuid,
) -> Result<AccountRow> {
    let mut client = pool.get().await?;
    let tx = client
        .build_transaction()
        .isolation_level(grantmesh_store::tokio_postgres::IsolationLevel::ReadCommitted)
        .start()
        .await?;
    lock_as_principal_investigator(&tx, account, Some(caller)).await?;
    if researcher != caller {
        let member: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM members WHERE account_id = $1 AND researcher_id = $2)",
                &[&account, &researcher],
            )
            .await?
            .get(0);
        if !member {
            return Err(not_a_member_to_promote(account, researcher));
        }
        tx.execute(
            "UPDATE accounts SET principal_investigator = $2 WHERE id = $1",
            &[&account, &researcher],
        )
        .await?;
        tx.execute(
            "UPDATE members
             SET role = CASE WHEN researcher_id = $2 THEN 'principal_investigator' ELSE 'member' END
             WHERE account_id = $1 AND researcher_id IN ($2, $3)",
            &[&account, &researcher, &caller],
        )
        .await?;
        notify_membership(&tx, account).await?;
    }
    let row = super::account_on(&tx, account, None).await?;
    tx.commit().await?;
    Ok(row)
}

pub(super) async fn researcher(pool: &Pool, id: Uuid) -> Result<Option<ResearcherRow>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT id, name, email, password_hash FROM researchers WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|row| ResearcherRow {
        id: row.get("id"),
        name: row.get("name"),
        email: row.get("email"),
        password_hash: row.get("password_hash"),
    }))
}

fn invitation(row: &Row) -> InvitationRow {
    InvitationRow {
        id: row.get("id"),
        account_id: row.get("account_id"),
        account_title: row.get("title"),
        email: row.get("email"),
        invited_by_name: row.get("by_name"),
        invited_by_email: row.get("by_email"),
        invited_at: row.get("invited_at"),
    }
}
