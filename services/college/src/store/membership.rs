//! Who belongs to an account, beyond opening it: invitations that the
//! invited researcher accepts or declines, the principal investigator
//! handing the role to another member, and looking a researcher up by id.
//!
//! An invitation is made out to an email, not to a researcher: inviting an
//! email that belongs to no one does exactly what inviting a registered
//! one does (the invitation waits for that email to sign up), so inviting
//! cannot be used to learn which emails exist. Only the researcher whose
//! email it names sees it and may accept it; until then they are not a
//! member, so no one can be put on an account against their will.
//!
//! These calls sit apart from the withdrawal path, in this module and in
//! each backend's `membership` module.

use std::time::SystemTime;

use uuid::Uuid;

use super::{AccountRow, AccountStore, Result, StoreError};

/// Pending invitations one account may have, and one email may hold. A
/// real account invites a few people; the bound stops a principal
/// investigator from flooding the table, and stops any number of accounts
/// from burying one researcher's list (they decline to make room). Within
/// this bound a researcher's list is one short page.
pub const MAX_PENDING_INVITATIONS: i64 = 100;

/// A pending invitation, with what the invited researcher needs to decide.
#[derive(Clone, Debug)]
pub struct InvitationRow {
    pub id: Uuid,
    pub account_id: Uuid,
    pub account_title: String,
    /// The email invited, lower-cased.
    pub email: String,
    pub invited_by_name: String,
    pub invited_by_email: String,
    pub invited_at: SystemTime,
}

impl AccountStore {
    /// Invites `email` to the account; only its principal investigator may.
    /// Inviting a member or an email already invited changes nothing. The
    /// account and its pending invitations come back.
    pub async fn invite(
        &self,
        account: Uuid,
        caller: Uuid,
        email: &str,
    ) -> Result<(AccountRow, Vec<InvitationRow>)> {
        self.store.invite(account, caller, email).await
    }

    /// The account's pending invitations, newest first.
    pub async fn account_invitations(&self, account: Uuid) -> Result<Vec<InvitationRow>> {
        self.store.account_invitations(account).await
    }

    /// The invitations made out to `caller`'s email, newest first.
    pub async fn invitations_for(&self, caller: Uuid) -> Result<Vec<InvitationRow>> {
        self.store.invitations_for(caller).await
    }

    /// `caller` accepts an invitation made out to their email and becomes a
    /// member; the invitation is gone. NOT_FOUND for any other invitation.
    pub async fn accept_invitation(&self, caller: Uuid, invitation: Uuid) -> Result<AccountRow> {
        self.store.accept_invitation(caller, invitation).await
    }

    /// Deletes an invitation made out to `caller`'s email (declined) or on
    /// an account `caller` leads (withdrawn). NOT_FOUND for any other.
    pub async fn decline_invitation(&self, caller: Uuid, invitation: Uuid) -> Result<()> {
        self.store.decline_invitation(caller, invitation).await
    }

    /// The principal investigator `caller` hands the role to `researcher`,
    /// a member; `caller` stays a member. Handing it to oneself changes
    /// nothing.
    pub async fn transfer_principal(
        &self,
        account: Uuid,
        caller: Uuid,
        researcher: Uuid,
    ) -> Result<AccountRow> {
        self.store
            .transfer_principal(account, caller, researcher)
            .await
    }
}

pub(super) fn no_invitation(invitation: Uuid) -> StoreError {
    StoreError::NotFound(format!(
        "invitation {invitation} does not exist or is not yours"
    ))
}

pub(super) fn too_many_on_account(account: Uuid) -> StoreError {
    StoreError::ResourceExhausted(format!(
        "account {account} already has {MAX_PENDING_INVITATIONS} pending invitations, the most it may have; \
         withdraw some (DeclineInvitation) before inviting more"
    ))
}

pub(super) fn too_many_for_email() -> StoreError {
    StoreError::ResourceExhausted(format!(
        "this email already holds {MAX_PENDING_INVITATIONS} pending invitations, the most it may; \
         it must accept or decline some before it can be invited again"
    ))
}

pub(super) fn not_a_member_to_promote(account: Uuid, researcher: Uuid) -> StoreError {
    StoreError::FailedPrecondition(format!(
        "researcher {researcher} is not a member of account {account}; \
         invite them and let them accept before handing them the role"
    ))
}

/// What an invitation check found, before deciding to insert.
pub(super) struct InviteCheck {
    pub(super) member: bool,
    pub(super) invited: bool,
    pub(super) on_account: i64,
    pub(super) for_email: i64,
}

impl InviteCheck {
    /// Whether to insert a new invitation, or why not.
    pub(super) fn decide(&self, account: Uuid) -> Result<bool> {
        if self.member || self.invited {
            return Ok(false);
        }
        if self.on_account >= MAX_PENDING_INVITATIONS {
            return Err(too_many_on_account(account));
        }
        if self.for_email >= MAX_PENDING_INVITATIONS {
            return Err(too_many_for_email());
        }
        Ok(true)
    }
}
