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

    // Invited, then accepted: the acceptance is the membership change.
    let (grace, grace_token) = mesh.researcher("grace").await;
    join(&mesh, &mut other, &account, &token, (&grace, &grace_token)).await;
    let event = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.kind(), account_event::Kind::Membership);
    assert_eq!(event.account.unwrap().members.len(), 2);
}

/// The race of issue 10: a first attempt waits on the account's row lock
/// across the expiry (its client gives up), a retry on the other college
/// after the expiry waits for the lock too and is told to retry, then the
/// lock is released. The first attempt must not debit after the expiry, and
/// once the key is answered "expired" the answer stays.
#[tokio::test]
async fn a_key_refused_at_expiry_is_never_applied_later() {
    let mesh = Mesh::start(Duration::from_secs(1)).await;
    let (pi, token) = mesh.researcher("ada").await;
    let account = mesh.open(&pi, 100_000, 2).await;
    let id: uuid::Uuid = account.account_id.parse().unwrap();

    let mut holder = mesh.db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .unwrap();
    // Attempt 1 on college A, with a deadline shorter than the lock wait.
    let mut first = withdraw(&account.account_id, 1_000, "k", &token);
    first.set_timeout(Duration::from_millis(500));
    let gave_up = mesh.college(0).await.withdraw(first).await.unwrap_err();
    assert!(
        matches!(gave_up.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{gave_up:?}"
    );

    // After the expiry, the retry on college B cannot be answered while the
    // lock is held: the holder may be an attempt with this key that locked
    // the account before its expiry, so nothing final can be said yet. It
    // waits for the lock (the expiry is judged when the lock is taken) and
    // is told to retry: UNAVAILABLE, not a final answer.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let mut college_b = mesh.college(1).await;
    let waited = college_b
        .withdraw(withdraw(&account.account_id, 1_000, "k", &token))
        .await
        .unwrap_err();
    assert_eq!(waited.code(), Code::Unavailable, "{waited:?}");

    // The lock goes; the key's answer is now final: expired, and it stays so.
    tx.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let expired = college_b
        .withdraw(withdraw(&account.account_id, 1_000, "k", &token))
        .await
        .unwrap_err();
    assert_eq!(expired.code(), Code::FailedPrecondition, "{expired:?}");
    assert!(expired.message().contains("expired"), "{expired:?}");
    let again = college_b
        .withdraw(withdraw(&account.account_id, 1_000, "k", &token))
        .await
        .unwrap_err();
    assert_eq!(
        again.code(),
        Code::FailedPrecondition,
        "the key's answer stays: {again:?}"
    );
    assert_eq!(
        mesh.check_invariants(&account.account_id).await,
        (100_000, 0, 0),
        "no money left the account after its expiry"
    );
}

#[tokio::test]
async fn watchers_see_every_withdrawal_of_a_batch_in_order_from_another_college() {
    const WITHDRAWALS: usize = 48;
    let mesh = Mesh::start(DAY).await;
    let (pi, token) = mesh.researcher("ada").await;
    let account = mesh.open(&pi, 100_000, 30).await.account_id;
    let mut streams = Vec::new();
    for _ in 0..2 {
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
        assert_eq!(snapshot.kind(), account_event::Kind::Snapshot);
        streams.push(events);
    }

    // Concurrent withdrawals on the other College, applied in batches.
    let other = mesh.college(1).await;
    let calls = (0..WITHDRAWALS).map(|n| {
        let (mut other, account, token) = (other.clone(), account.clone(), token.clone());
        tokio::spawn(async move {
            let reply = other
                .withdraw(withdraw(&account, n as i64 + 1, &format!("b-{n}"), &token))
                .await
                .unwrap()
                .into_inner();
            reply.transaction.unwrap()
        })
    });
    let mut made: Vec<(i64, i64)> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|t| {
            let t = t.unwrap();
            (t.transaction_id.parse().unwrap(), t.balance_after_minor)
        })
        .collect();
    made.sort();

    for events in &mut streams {
        let mut seen = Vec::new();
        while seen.len() < WITHDRAWALS {
            let event = tokio::time::timeout(Duration::from_secs(10), events.message())
                .await
                .expect("every withdrawal is reported")
                .unwrap()
                .unwrap();
            assert_eq!(event.kind(), account_event::Kind::Withdrawal);
            let transaction = event.transaction.unwrap();
            assert_eq!(
                event.account.unwrap().balance_minor,
                transaction.balance_after_minor
            );
            seen.push((
                transaction.transaction_id.parse::<i64>().unwrap(),
                transaction.balance_after_minor,
            ));
        }
        assert_eq!(seen, made, "every withdrawal once, in journal order");
    }
    let spent = (1..=WITHDRAWALS as i64).sum::<i64>();
    assert_eq!(
        mesh.check_invariants(&account).await,
        (100_000 - spent, spent, WITHDRAWALS as i64)
    );
}
