//! Time and change: expiry by the database clock, and live account updates across colleges.

use std::time::Duration;

use grantmesh_proto::v1::*;
use tonic::Code;

use super::*;
use crate::support::sandbox::{DAY, Mesh};
use crate::support::*;

#[tokio::test]
async fn withdrawals_are_refused_once_the_account_has_expired() {
    // A "day" lasts one second here.
    let mesh = Mesh::start(Duration::from_secs(1)).await;
    let (pi, token) = mesh.researcher("ada").await;
    let account = mesh.open(&pi, 100_000, 2).await;
    let mut college = mesh.college(1).await;
    let mut events = college
        .watch_account(authed(
            WatchAccountRequest {
                account_id: account.account_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        events.message().await.unwrap().unwrap().kind(),
        account_event::Kind::Snapshot
    );

    college
        .withdraw(withdraw(&account.account_id, 1_000, "before", &token))
        .await
        .unwrap();
    assert_eq!(
        events.message().await.unwrap().unwrap().kind(),
        account_event::Kind::Withdrawal
    );

    let expired = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("an expiry event within the account's two 1-second days")
        .unwrap()
        .unwrap();
    assert_eq!(expired.kind(), account_event::Kind::Expired);
    assert_eq!(expired.account.unwrap().state(), account::State::Expired);

    assert_status(
        college
            .withdraw(withdraw(&account.account_id, 1_000, "after", &token))
            .await,
        Code::FailedPrecondition,
        "expired",
    );
    // The first withdrawal's key still answers with its original result.
    let replay = college
        .withdraw(withdraw(&account.account_id, 1_000, "before", &token))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(
        mesh.check_invariants(&account.account_id).await,
        (99_000, 1_000, 1)
    );
}

#[tokio::test]
async fn watchers_see_changes_made_on_another_college_instance() {
    let mesh = Mesh::start(DAY).await;
    let (pi, token) = mesh.researcher("ada").await;
    let account = mesh.open(&pi, 100_000, 30).await.account_id;
    let mut events = mesh
        .college(0)
        .await
        .watch_account(authed(
            WatchAccountRequest {
                account_id: account.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let snapshot = events.message().await.unwrap().unwrap();
    assert_eq!(snapshot.account.unwrap().balance_minor, 100_000);

    let mut other = mesh.college(1).await;
    other
        .withdraw(withdraw(&account, 4_000, "k1", &token))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.kind(), account_event::Kind::Withdrawal);
    assert_eq!(event.account.unwrap().balance_minor, 96_000);
    assert_eq!(event.transaction.unwrap().amount_minor, 4_000);

    let (_, _) = mesh.researcher("grace").await;
    let email: String = mesh
        .db
        .client()
        .await
        .query_one("SELECT email FROM researchers WHERE name = 'grace'", &[])
        .await
        .unwrap()
        .get(0);
    other
        .add_member(authed(
            AddMemberRequest {
                account_id: account.clone(),
                email,
            },
            &token,
        ))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.kind(), account_event::Kind::Membership);
    assert_eq!(event.account.unwrap().members.len(), 2);
}
