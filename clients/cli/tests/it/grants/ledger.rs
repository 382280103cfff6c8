//! The ledger under concurrency: no overdraft, keys applied once, one account per proposal, an append-only journal.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use grantmesh_proto::v1::*;
use tonic::Code;
use uuid::Uuid;

use super::*;
use crate::support::sandbox::{DAY, Mesh};
use crate::support::*;

#[tokio::test]
async fn sixty_four_concurrent_withdrawers_never_overdraw_an_account() {
    let mesh = Mesh::start(DAY).await;
    let (_, token) = mesh.researcher("ada").await;
    let pi = mesh
        .db
        .client()
        .await
        .query_one("SELECT id::text FROM researchers", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    let account = mesh.open(&pi, 100_000, 30).await.account_id;
    let colleges = [
        mesh.college_as_agency(0, "nsf").await,
        mesh.college_as_agency(1, "nsf").await,
    ];

    // 64 withdrawers take 3,000 at a time until refused: 33 can succeed.
    let tasks = (0..64).map(|n| {
        let mut college = colleges[n % 2].clone();
        let (account, token) = (account.clone(), token.clone());
        tokio::spawn(async move {
            let mut applied = 0;
            for attempt in 0.. {
                match college
                    .withdraw(withdraw(
                        &account,
                        3_000,
                        &format!("w-{n}-{attempt}"),
                        &token,
                    ))
                    .await
                {
                    Ok(reply) => {
                        assert!(reply.get_ref().balance_minor >= 0);
                        applied += 1;
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                        assert!(
                            status.message().contains("insufficient funds"),
                            "{status:?}"
                        );
                        return applied;
                    }
                }
            }
            unreachable!()
        })
    });
    let applied: i64 = join_all(tasks).await.into_iter().map(Result::unwrap).sum();
    assert_eq!(applied, 33);
    assert_eq!(mesh.check_invariants(&account).await, (1_000, 99_000, 33));
}

#[tokio::test]
async fn a_thousand_retries_of_one_key_apply_once() {
    let mesh = Mesh::start(DAY).await;
    let (pi, token) = mesh.researcher("ada").await;
    let account = mesh.open(&pi, 100_000, 30).await.account_id;
    let colleges = [
        mesh.college_as_agency(0, "nsf").await,
        mesh.college_as_agency(1, "nsf").await,
    ];
    let limit = Arc::new(tokio::sync::Semaphore::new(50));

    let calls = (0..1_000).map(|n| {
        let mut college = colleges[n % 2].clone();
        let (account, token, limit) = (account.clone(), token.clone(), limit.clone());
        tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            college
                .withdraw(withdraw(&account, 750, "the-one-key", &token))
                .await
                .unwrap()
                .into_inner()
        })
    });
    let replies: Vec<WithdrawReply> = join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let first: Vec<_> = replies.iter().filter(|r| !r.replayed).collect();
    assert_eq!(first.len(), 1, "exactly one call applied the withdrawal");
    let id = &first[0].transaction.as_ref().unwrap().transaction_id;
    assert!(
        replies
            .iter()
            .all(|r| &r.transaction.as_ref().unwrap().transaction_id == id)
    );
    assert_eq!(mesh.check_invariants(&account).await, (99_250, 750, 1));

    let mut college = mesh.college(1).await;
    assert_status(
        college
            .withdraw(withdraw(&account, 751, "the-one-key", &token))
            .await,
        Code::FailedPrecondition,
        "already used",
    );
    assert_eq!(mesh.check_invariants(&account).await, (99_250, 750, 1));
}

#[tokio::test]
async fn a_retried_accept_opens_one_account() {
    let mesh = Mesh::start(DAY).await;
    let (pi, token) = mesh.researcher("ada").await;

    // The College side: the same proposal opened twenty times on two
    // instances, each time with a new credential, as an agency retries.
    let proposal_id = Uuid::new_v4().to_string();
    let colleges = [
        mesh.college_as_agency(0, "nsf").await,
        mesh.college_as_agency(1, "nsf").await,
    ];
    let opens = (0..20).map(|n| {
        let mut college = colleges[n % 2].clone();
        let request = OpenAccountRequest {
            proposal_id: proposal_id.clone(),
            agency: "nsf".into(),
            principal_investigator_id: pi.clone(),
            title: "Retried".into(),
            award_minor: 400_000,
            duration_days: 30,
            currency: "USD".into(),
        };
        let credential = agency_credential("nsf", &request);
        tokio::spawn(async move {
            college
                .open_account(authed(request, &credential))
                .await
                .unwrap()
                .into_inner()
                .account_id
        })
    });
    let ids: Vec<String> = join_all(opens)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(ids.iter().all(|id| id == &ids[0]));

    // The Agency side: one submission retried ten times at once.
    let mut agency = mesh.agency().await;
    let submits = (0..10).map(|_| {
        let mut agency = agency.clone();
        let token = token.clone();
        tokio::spawn(async move {
            agency
                .submit_proposal(authed(
                    SubmitProposalRequest {
                        title: "Retried proposal".into(),
                        description: String::new(),
                        requested_amount_minor: 350_000,
                        duration_days: 90,
                        idempotency_key: "same-key".into(),
                    },
                    &token,
                ))
                .await
                .unwrap()
                .into_inner()
        })
    });
    let proposals: Vec<Proposal> = join_all(submits)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(
        proposals
            .iter()
            .all(|p| p.proposal_id == proposals[0].proposal_id
                && p.account_id == proposals[0].account_id)
    );
    let again = agency
        .get_proposal(authed(
            GetProposalRequest {
                proposal_id: proposals[0].proposal_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.account_id, proposals[0].account_id);

    let db = mesh.db.client().await;
    let counts: (i64, i64) = {
        let row = db
            .query_one(
                "SELECT (SELECT COUNT(*) FROM accounts), (SELECT COUNT(*) FROM proposals)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        counts,
        (2, 1),
        "one account per proposal, one proposal per key"
    );
}

#[tokio::test]
async fn the_journal_cannot_be_rewritten() {
    let mesh = Mesh::start(DAY).await;
    let (pi, token) = mesh.researcher("ada").await;
    let account = mesh.open(&pi, 100_000, 30).await.account_id;
    mesh.college(0)
        .await
        .withdraw(withdraw(&account, 10, "k", &token))
        .await
        .unwrap();
    let db = mesh.db.client().await;
    for statement in [
        "UPDATE withdrawals SET amount = 1",
        "DELETE FROM withdrawals",
        "TRUNCATE withdrawals CASCADE",
    ] {
        let err = db.batch_execute(statement).await.expect_err(statement);
        assert!(
            err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"),
            "{err:?}"
        );
    }
    let overdraw = db
        .batch_execute("UPDATE accounts SET balance = -1")
        .await
        .expect_err("CHECK (balance >= 0)");
    assert!(format!("{overdraw:?}").contains("check"), "{overdraw:?}");
}

#[tokio::test]
async fn a_row_lock_held_elsewhere_fails_a_withdrawal_quickly_and_spares_other_calls() {
    let mesh = Mesh::start(DAY).await;
    let (pi, token) = mesh.researcher("ada").await;
    let account = mesh.open(&pi, 100_000, 30).await;
    let id: Uuid = account.account_id.parse().unwrap();
    // Someone else holds the account's row lock and sits on it.
    let mut holder = mesh.db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .unwrap();

    let mut college = mesh.college(0).await;
    let started = std::time::Instant::now();
    let blocked = tokio::time::timeout(
        grantmesh_store::LOCK_TIMEOUT + Duration::from_secs(5),
        college.withdraw(withdraw(&account.account_id, 1_000, "w-locked", &token)),
    )
    .await
    .expect("refused in time, not left hanging")
    .expect_err("the withdrawal cannot take the lock");
    assert_eq!(blocked.code(), Code::Unavailable, "{blocked:?}");
    assert!(started.elapsed() >= grantmesh_store::LOCK_TIMEOUT - Duration::from_millis(500));
    // Reading the account does not wait for the lock.
    let read = tokio::time::timeout(
        Duration::from_secs(2),
        college.get_account(authed(
            GetAccountRequest {
                account_id: account.account_id.clone(),
            },
            &token,
        )),
    )
    .await
    .expect("an unrelated call answers at once")
    .unwrap();
    assert_eq!(
        read.into_inner().balance_minor,
        100_000,
        "nothing was applied"
    );

    // Once the lock is released, the retry with the same key goes through, once.
    tx.rollback().await.unwrap();
    college
        .withdraw(withdraw(&account.account_id, 1_000, "w-locked", &token))
        .await
        .expect("the retry succeeds");
    assert_eq!(
        mesh.check_invariants(&account.account_id).await,
        (99_000, 1_000, 1)
    );
}

#[tokio::test]
async fn a_hot_account_under_sixty_four_callers_is_debited_in_batches_and_adds_up() {
    let mesh = Mesh::start(DAY).await;
    let (pi, token) = mesh.researcher("ada").await;
    let account = mesh.open(&pi, 100_000, 30).await.account_id;
    let college = mesh.college(0).await;
    let start = Arc::new(tokio::sync::Barrier::new(64));

    // 64 callers on one College take 70 at a time until refused: 1,428 can succeed.
    let tasks = (0..64).map(|n| {
        let mut college = college.clone();
        let (account, token, start) = (account.clone(), token.clone(), start.clone());
        tokio::spawn(async move {
            start.wait().await;
            let mut applied = 0;
            for attempt in 0.. {
                match college
                    .withdraw(withdraw(&account, 70, &format!("h-{n}-{attempt}"), &token))
                    .await
                {
                    Ok(reply) => {
                        assert!(reply.get_ref().balance_minor >= 0);
                        assert!(!reply.get_ref().replayed);
                        applied += 1;
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                        assert!(
                            status.message().contains("insufficient funds"),
                            "{status:?}"
                        );
                        return applied;
                    }
                }
            }
            unreachable!()
        })
    });
    let applied: i64 = join_all(tasks).await.into_iter().map(Result::unwrap).sum();
    assert_eq!(applied, 100_000 / 70);
    assert_eq!(
        mesh.check_invariants(&account).await,
        (100_000 % 70, 100_000 - 100_000 % 70, 1_428)
    );
    // The withdrawals of one batch share one transaction: several did.
    let id: Uuid = account.parse().unwrap();
    let largest: i64 = mesh
        .db
        .client()
        .await
        .query_one(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM withdrawals WHERE account_id = $1
             GROUP BY xmin::text) batches",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(largest > 1, "no two withdrawals shared a commit");
    // The journal's balances follow its order: each entry one debit below the last.
    let balances: Vec<i64> = mesh
        .db
        .client()
        .await
        .query(
            "SELECT balance_after FROM withdrawals WHERE account_id = $1 ORDER BY id",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(balances.windows(2).all(|w| w[0] - w[1] == 70));
}
