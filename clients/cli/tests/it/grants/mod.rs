//! The grant domain against a real PostgreSQL: researchers, proposals,
//! accounts, concurrent withdrawals and their journal. Services run in this
//! process on loopback sockets, each test with a fresh database; the
//! invariants are checked in the database itself, not taken from replies.

mod access;
mod agencies;
mod bad_input;
mod credentials;
mod flow;
mod ledger;
mod live;

use grantmesh_proto::v1::*;
use tonic::{Code, Status};

use uuid::Uuid;

use crate::support::authed;
use crate::support::sandbox::Mesh;

pub(super) fn withdraw(
    account: &str,
    amount: i64,
    key: &str,
    token: &str,
) -> tonic::Request<WithdrawRequest> {
    authed(
        WithdrawRequest {
            account_id: account.into(),
            amount_minor: amount,
            idempotency_key: key.into(),
            memo: "reagents".into(),
        },
        token,
    )
}

pub(super) fn assert_status(
    result: Result<impl std::fmt::Debug, Status>,
    code: Code,
    mentions: &str,
) {
    let status = result.expect_err("the call should have been refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(mentions),
        "{:?} should mention {mentions:?}",
        status.message()
    );
}

pub(super) async fn student_email_of(mesh: &Mesh, researcher: &str) -> String {
    let client = mesh.db.client().await;
    let id: Uuid = researcher.parse().unwrap();
    client
        .query_one("SELECT email FROM researchers WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

/// Makes `member` a member of `account` the way the service allows it: the
/// principal investigator invites their email (through `college`), and they
/// accept. Returns the account as the acceptance left it.
pub(super) async fn join(
    mesh: &Mesh,
    college: &mut grantmesh_proto::CollegeClient<tonic::transport::Channel>,
    account: &str,
    pi_token: &str,
    (member, member_token): (&str, &str),
) -> Account {
    let email = student_email_of(mesh, member).await;
    let invited = college
        .add_member(authed(
            AddMemberRequest {
                account_id: account.into(),
                email: email.clone(),
            },
            pi_token,
        ))
        .await
        .expect("the principal investigator invites")
        .into_inner();
    let invitation = invited
        .invitations
        .iter()
        .find(|i| i.email == email)
        .expect("the reply lists the invitation")
        .invitation_id
        .clone();
    college
        .accept_invitation(authed(
            AcceptInvitationRequest {
                invitation_id: invitation,
            },
            member_token,
        ))
        .await
        .expect("the invited researcher accepts")
        .into_inner()
}
