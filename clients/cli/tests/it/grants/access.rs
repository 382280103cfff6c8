//! Who may do what: tokens, memberships, the principal investigator, the agencies' credential.

use std::time::Duration;

use grantmesh_proto::v1::*;
use tonic::Code;

use super::*;
use crate::support::sandbox::{DAY, Mesh};
use crate::support::*;

#[tokio::test]
async fn authentication_and_permissions_are_enforced() {
    let mesh = Mesh::start(DAY).await;
    let (pi, pi_token) = mesh.researcher("ada").await;
    let (_, outsider_token) = mesh.researcher("mallory").await;
    let (member, member_token) = mesh.researcher("grace").await;
    let account = mesh.open(&pi, 100_000, 30).await.account_id;
    let mut college = mesh.college(0).await;
    join(
        &mesh,
        &mut college,
        &account,
        &pi_token,
        (&member, &member_token),
    )
    .await;

    // No token, a forged token.
    let bare = tonic::Request::new(GetAccountRequest {
        account_id: account.clone(),
    });
    assert_status(
        college.get_account(bare).await,
        Code::Unauthenticated,
        "authorization",
    );
    assert_status(
        college
            .get_account(authed(
                GetAccountRequest {
                    account_id: account.clone(),
                },
                "not-a-token",
            ))
            .await,
        Code::Unauthenticated,
        "invalid",
    );
    let forged = grantmesh_auth::Keys::new(
        b"forged-token-key-0123456789abcde",
        b"forged-service-key-0123456789abc",
        Duration::from_secs(60),
    )
    .unwrap()
    .researcher_token(pi.parse().unwrap())
    .unwrap()
    .0;
    assert_status(
        college.withdraw(withdraw(&account, 1, "k", &forged)).await,
        Code::Unauthenticated,
        "invalid",
    );
    let mut agency = mesh.agency().await;
    let proposal = SubmitProposalRequest {
        title: "t".into(),
        description: String::new(),
        requested_amount_minor: 400_000,
        duration_days: 1,
        idempotency_key: "k".into(),
    };
    assert_status(
        agency.submit_proposal(tonic::Request::new(proposal)).await,
        Code::Unauthenticated,
        "authorization",
    );
    assert_status(
        college
            .login(LoginRequest {
                email: "nobody@university.edu".into(),
                password: "orbital kettle lantern".into(),
            })
            .await,
        Code::Unauthenticated,
        "wrong",
    );

    // Someone else's account.
    assert_status(
        college
            .get_account(authed(
                GetAccountRequest {
                    account_id: account.clone(),
                },
                &outsider_token,
            ))
            .await,
        Code::PermissionDenied,
        "not a member",
    );
    assert_status(
        college
            .withdraw(withdraw(&account, 1, "k", &outsider_token))
            .await,
        Code::PermissionDenied,
        "not a member",
    );
    assert_status(
        college
            .list_transactions(authed(
                ListTransactionsRequest {
                    account_id: account.clone(),
                    ..Default::default()
                },
                &outsider_token,
            ))
            .await,
        Code::PermissionDenied,
        "not a member",
    );
    // Members may not manage membership; only the PI may.
    assert_status(
        college
            .add_member(authed(
                AddMemberRequest {
                    account_id: account.clone(),
                    email: "x@university.edu".into(),
                },
                &member_token,
            ))
            .await,
        Code::PermissionDenied,
        "principal investigator",
    );
    assert_status(
        college
            .remove_member(authed(
                RemoveMemberRequest {
                    account_id: account.clone(),
                    researcher_id: pi.clone(),
                },
                &pi_token,
            ))
            .await,
        Code::FailedPrecondition,
        "cannot be removed",
    );
    // Only an agency opens accounts.
    let open = OpenAccountRequest {
        proposal_id: "p".into(),
        agency: "nsf".into(),
        principal_investigator_id: pi.clone(),
        title: "t".into(),
        award_minor: 1,
        duration_days: 1,
    };
    assert_status(
        college.open_account(authed(open.clone(), &pi_token)).await,
        Code::PermissionDenied,
        "agency",
    );
    assert_status(
        college.open_account(tonic::Request::new(open)).await,
        Code::Unauthenticated,
        "authorization",
    );
    // And another researcher's proposal is not yours.
    let mine = agency
        .submit_proposal(authed(
            SubmitProposalRequest {
                title: "Mine".into(),
                description: String::new(),
                requested_amount_minor: 400_000,
                duration_days: 1,
                idempotency_key: "k".into(),
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_status(
        agency
            .get_proposal(authed(
                GetProposalRequest {
                    proposal_id: mine.proposal_id,
                },
                &outsider_token,
            ))
            .await,
        Code::PermissionDenied,
        "not yours",
    );
    assert_eq!(mesh.check_invariants(&account).await, (100_000, 0, 0));
}

#[tokio::test]
async fn password_guessing_against_one_email_is_held_to_a_rate() {
    let mesh = Mesh::start(DAY).await;
    let mut college = mesh.college(0).await;
    let guess = |email: &str| LoginRequest {
        email: email.into(),
        password: "not the password".into(),
    };
    for _ in 0..grantmesh_college::LOGIN_ATTEMPTS_PER_MINUTE {
        let wrong = college.login(guess("victim@uni.edu")).await.unwrap_err();
        assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    }
    let held = college.login(guess("victim@uni.edu")).await.unwrap_err();
    assert_eq!(held.code(), Code::ResourceExhausted, "{held:?}");
    assert!(
        held.message().contains("too many login attempts"),
        "{held:?}"
    );
    // Another email is not held back.
    let other = college.login(guess("someone@uni.edu")).await.unwrap_err();
    assert_eq!(other.code(), Code::Unauthenticated, "{other:?}");
}
