//! Invitations, handing over the principal investigator's role, and
//! researchers by id, on SQLite (see [`crate::store::membership`]): each
//! change in one immediate transaction, which holds the file's write lock,
//! so the bounds checked still hold when the row is written.

use grantmesh_store::sqlite::time;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use uuid::Uuid;

use super::{Accounts, check_principal_investigator, read_account};
use crate::store::change::Change;
use crate::store::error::not_found;
use crate::store::membership::{
    InvitationRow, InviteCheck, MAX_PENDING_INVITATIONS, no_invitation, not_a_member_to_promote,
};
use crate::store::{AccountRow, ResearcherRow, Result};

const INVITATION_COLUMNS: &str = "SELECT i.id, i.account_id, a.title, i.email, r.name AS by_name, r.email AS by_email, i.invited_at
     FROM invitations i JOIN accounts a ON a.id = i.account_id JOIN researchers r ON r.id = i.invited_by";

impl Accounts {
    pub(in crate::store) async fn invite(
        &self,
        account: Uuid,
        caller: Uuid,
        email: &str,
    ) -> Result<(AccountRow, Vec<InvitationRow>)> {
        let email = email.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            check_principal_investigator(&tx, account, Some(caller))?;
            let check = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM members m JOIN researchers r ON r.id = m.researcher_id
                                WHERE m.account_id = ?1 AND r.email = ?2),
                        EXISTS (SELECT 1 FROM invitations WHERE account_id = ?1 AND email = ?2),
                        (SELECT count(*) FROM invitations WHERE account_id = ?1),
                        (SELECT count(*) FROM invitations WHERE email = ?2)",
                params![account, email],
                |row| {
                    Ok(InviteCheck {
                        member: row.get(0)?,
                        invited: row.get(1)?,
                        on_account: row.get(2)?,
                        for_email: row.get(3)?,
                    })
                },
            )?;
            if check.decide(account)? {
                tx.execute(
                    concat!(
                        "INSERT INTO invitations (id, account_id, email, invited_by, invited_at)
                         VALUES (?1, ?2, ?3, ?4, ",
                        grantmesh_store::sqlite_now_ms!(),
                        ")"
                    ),
                    params![Uuid::new_v4(), account, email, caller],
                )?;
            }
            let row = read_account(&tx, account)?.ok_or_else(|| not_found(account))?;
            let invitations = of_account(&tx, account)?;
            tx.commit()?;
            Ok((row, invitations))
        })
        .await
    }

    pub(in crate::store) async fn account_invitations(
        &self,
        account: Uuid,
    ) -> Result<Vec<InvitationRow>> {
        self.call(move |conn| Ok(of_account(conn, account)?)).await
    }

    pub(in crate::store) async fn invitations_for(
        &self,
        caller: Uuid,
    ) -> Result<Vec<InvitationRow>> {
        self.call(move |conn| {
            Ok(conn
                .prepare(&format!(
                    "{INVITATION_COLUMNS}
                     WHERE i.email = (SELECT email FROM researchers WHERE id = ?1)
                     ORDER BY i.invited_at DESC, i.id LIMIT ?2"
                ))?
                .query_map(params![caller, MAX_PENDING_INVITATIONS], invitation)?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    pub(in crate::store) async fn accept_invitation(
        &self,
        caller: Uuid,
        invitation: Uuid,
    ) -> Result<AccountRow> {
        let notifications = self.notifications.clone();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let account: Uuid = tx
                .query_row(
                    "SELECT i.account_id FROM invitations i JOIN researchers r ON r.email = i.email
                     WHERE i.id = ?1 AND r.id = ?2",
                    params![invitation, caller],
                    |row| row.get(0),
                )
                .optional()?
                .ok_or_else(|| no_invitation(invitation))?;
            tx.execute(
                "INSERT INTO members (account_id, researcher_id, role) VALUES (?1, ?2, 'member')
                 ON CONFLICT DO NOTHING",
                params![account, caller],
            )?;
            tx.execute("DELETE FROM invitations WHERE id = ?1", params![invitation])?;
            let row = read_account(&tx, account)?.ok_or_else(|| not_found(account))?;
            tx.commit()?;
            notifications.publish(Change::Membership(account).encode());
            Ok(row)
        })
        .await
    }

    pub(in crate::store) async fn decline_invitation(
        &self,
        caller: Uuid,
        invitation: Uuid,
    ) -> Result<()> {
        self.call(move |conn| {
            let deleted = conn.execute(
                "DELETE FROM invitations
                 WHERE id = ?1
                   AND (account_id IN (SELECT id FROM accounts WHERE principal_investigator = ?2)
                        OR email = (SELECT email FROM researchers WHERE id = ?2))",
                params![invitation, caller],
            )?;
            if deleted == 0 {
                return Err(no_invitation(invitation));
            }
            Ok(())
        })
        .await
    }

    pub(in crate::store) async fn transfer_principal(
        &self,
        account: Uuid,
        caller: Uuid,
        researcher: Uuid,
    ) -> Result<AccountRow> {
        let notifications = self.notifications.clone();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            check_principal_investigator(&tx, account, Some(caller))?;
            let changed = researcher != caller;
            if changed {
                let member: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM members WHERE account_id = ?1 AND researcher_id = ?2)",
                    params![account, researcher],
                    |row| row.get(0),
                )?;
                if !member {
                    return Err(not_a_member_to_promote(account, researcher));
                }
                tx.execute(
                    "UPDATE accounts SET principal_investigator = ?2 WHERE id = ?1",
                    params![account, researcher],
                )?;
                tx.execute(
                    "UPDATE members
                     SET role = CASE WHEN researcher_id = ?2 THEN 'principal_investigator' ELSE 'member' END
                     WHERE account_id = ?1 AND researcher_id IN (?2, ?3)",
                    params![account, researcher, caller],
                )?;
            }
            let row = read_account(&tx, account)?.ok_or_else(|| not_found(account))?;
            tx.commit()?;
            if changed {
                notifications.publish(Change::Membership(account).encode());
            }
            Ok(row)
        })
        .await
    }

    pub(in crate::store) async fn researcher(&self, id: Uuid) -> Result<Option<ResearcherRow>> {
        self.call(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT id, name, email, password_hash FROM researchers WHERE id = ?1",
                    params![id],
                    |row| {
                        Ok(ResearcherRow {
                            id: row.get(0)?,
                            name: row.get(1)?,
                            email: row.get(2)?,
                            password_hash: row.get(3)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }
}

fn of_account(conn: &Connection, account: Uuid) -> rusqlite::Result<Vec<InvitationRow>> {
    conn.prepare_cached(&format!(
        "{INVITATION_COLUMNS} WHERE i.account_id = ?1 ORDER BY i.invited_at DESC, i.id LIMIT ?2"
    ))?
    .query_map(params![account, MAX_PENDING_INVITATIONS], invitation)?
    .collect()
}

fn invitation(row: &Row<'_>) -> rusqlite::Result<InvitationRow> {
    Ok(InvitationRow {
        id: row.get("id")?,
        account_id: row.get("account_id")?,
        account_title: row.get("title")?,
        email: row.get("email")?,
        invited_by_name: row.get("by_name")?,
        invited_by_email: row.get("by_email")?,
        invited_at: time(row.get("invited_at")?),
    })
}
