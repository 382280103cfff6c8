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
