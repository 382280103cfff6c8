//! Bad input is refused with a status naming the field, and changes nothing.

use grantmesh_proto::v1::*;
use tonic::Code;
use uuid::Uuid;

use super::*;
use crate::support::sandbox::{DAY, Mesh};
use crate::support::*;

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_changes_nothing() {
    let mesh = Mesh::start(DAY).await;
    let (pi, token) = mesh.researcher("ada").await;
    let account = mesh.open(&pi, 100_000, 30).await.account_id;
    let mut college = mesh.college(0).await;

    for amount in [0, -5, i64::MAX] {
        assert_status(
            college
                .withdraw(withdraw(&account, amount, "k", &token))
                .await,
            Code::InvalidArgument,
            "amount_minor",
        );
    }
    assert_status(
        college.withdraw(withdraw(&account, 10, "", &token)).await,
        Code::InvalidArgument,
        "idempotency_key",
    );
    assert_status(
        college
            .withdraw(withdraw(&account, 10, &"k".repeat(129), &token))
            .await,
        Code::InvalidArgument,
        "idempotency_key",
    );
    let mut long_memo = withdraw(&account, 10, "k", &token);
    long_memo.get_mut().memo = "m".repeat(201);
    assert_status(
        college.withdraw(long_memo).await,
        Code::InvalidArgument,
        "memo",
    );
    assert_status(
        college
            .withdraw(withdraw("not-an-id", 10, "k", &token))
            .await,
        Code::InvalidArgument,
        "account_id",
    );
    assert_status(
        college
            .withdraw(withdraw(&Uuid::new_v4().to_string(), 10, "k", &token))
            .await,
        Code::NotFound,
        "does not exist",
    );
    assert_status(
        college
            .withdraw(withdraw(&account, 100_001, "k", &token))
            .await,
        Code::FailedPrecondition,
        "insufficient funds",
    );
    assert_status(
        college
            .get_account(authed(
                GetAccountRequest {
                    account_id: Uuid::new_v4().to_string(),
                },
                &token,
            ))
            .await,
        Code::NotFound,
        "does not exist",
    );

    let register = |name: &str, email: &str, password: &str| RegisterResearcherRequest {
        name: name.into(),
        email: email.into(),
        password: password.into(),
    };
    assert_status(
        college
            .register_researcher(register("Ada", "not-an-email", "orbital kettle lantern"))
            .await,
        Code::InvalidArgument,
        "email",
    );
    assert_status(
        college
            .register_researcher(register("", "a@b.edu", "orbital kettle lantern"))
            .await,
        Code::InvalidArgument,
        "name",
    );
    assert_status(
        college
            .register_researcher(register(
                &"n".repeat(201),
                "a@b.edu",
                "orbital kettle lantern",
            ))
            .await,
        Code::InvalidArgument,
        "name",
    );
    assert_status(
        college
            .register_researcher(register("Ada", "a@b.edu", "short"))
            .await,
        Code::InvalidArgument,
        "password",
    );
    // A common password, or one made of the researcher's own name, is
    // refused with zxcvbn's reason, and the password is not echoed.
    for weak in ["password123", "lovelaceada1"] {
        let refused = college
            .register_researcher(register("Ada Lovelace", "ada.l@b.edu", weak))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains("password is too easy to guess"),
            "{refused:?}"
        );
        assert!(!refused.message().contains(weak), "{refused:?} echoes it");
    }

    let mut agency = mesh.agency().await;
    let proposal = |title: &str, amount: i64, days: u32, key: &str| SubmitProposalRequest {
        title: title.into(),
        description: String::new(),
        requested_amount_minor: amount,
        duration_days: days,
        idempotency_key: key.into(),
    };
    assert_status(
        agency
            .submit_proposal(authed(proposal("", 400_000, 30, "k"), &token))
            .await,
        Code::InvalidArgument,
        "title",
    );
    assert_status(
        agency
            .submit_proposal(authed(proposal("t", 0, 30, "k"), &token))
            .await,
        Code::InvalidArgument,
        "requested_amount_minor",
    );
    assert_status(
        agency
            .submit_proposal(authed(proposal("t", 400_000, 0, "k"), &token))
            .await,
        Code::InvalidArgument,
        "duration_days",
    );
    assert_status(
        agency
            .submit_proposal(authed(proposal("t", 400_000, 30, ""), &token))
            .await,
        Code::InvalidArgument,
        "idempotency_key",
    );
    assert_status(
        agency
            .get_proposal(authed(
                GetProposalRequest {
                    proposal_id: "nope".into(),
                },
                &token,
            ))
            .await,
        Code::InvalidArgument,
        "proposal_id",
    );
    assert_status(
        agency
            .get_proposal(authed(
                GetProposalRequest {
                    proposal_id: Uuid::new_v4().to_string(),
                },
                &token,
            ))
            .await,
        Code::NotFound,
        "does not exist",
    );
    assert_status(
        agency
            .list_proposals(authed(
                ListProposalsRequest {
                    page_size: 10,
                    page_token: "garbage".into(),
                },
                &token,
            ))
            .await,
        Code::InvalidArgument,
        "page_token",
    );

    // Nothing above changed anything.
    assert_eq!(mesh.check_invariants(&account).await, (100_000, 0, 0));
    let db = mesh.db.client().await;
    let proposals: i64 = db
        .query_one("SELECT COUNT(*) FROM proposals", &[])
        .await
        .unwrap()
        .get(0);
    let researchers: i64 = db
        .query_one("SELECT COUNT(*) FROM researchers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((proposals, researchers), (0, 1));
}

#[tokio::test]
async fn odd_input_is_refused_up_front_and_never_echoed_whole() {
    let mesh = Mesh::start(DAY).await;
    let (_, token) = mesh.researcher("ada").await;
    let mut college = mesh.college(0).await;
    let mut agency = mesh.agency().await;

    // A NUL in an email or a title never reaches the database.
    let signup = college
        .register_researcher(RegisterResearcherRequest {
            name: "Nul".into(),
            email: "nul\0@uni.edu".into(),
            password: "correct horse battery".into(),
        })
        .await;
    assert_status(signup, Code::InvalidArgument, "email");
    let login = college
        .login(LoginRequest {
            email: "nul\0@uni.edu".into(),
            password: "correct horse battery".into(),
        })
        .await;
    assert_status(login, Code::InvalidArgument, "email");
    let proposal = |title: &str, amount: i64, key: &str| {
        authed(
            SubmitProposalRequest {
                title: title.into(),
                requested_amount_minor: amount,
                duration_days: 30,
                idempotency_key: key.into(),
                ..Default::default()
            },
            &token,
        )
    };
    assert_status(
        agency
            .submit_proposal(proposal("bad\0title", 400_000, "p-nul"))
            .await,
        Code::InvalidArgument,
        "title contains control characters",
    );

    // A megabyte id is refused as INVALID_ARGUMENT, quoting only its start.
    let huge = "x".repeat(1 << 20);
    let refused = college
        .get_account(authed(GetAccountRequest { account_id: huge }, &token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{}", refused.code());
    assert!(
        refused.message().len() < 200,
        "{} bytes",
        refused.message().len()
    );

    // A proposal key reused for another request is refused, as Withdraw does.
    agency
        .submit_proposal(proposal("Folding", 400_000, "p-1"))
        .await
        .unwrap();
    assert_status(
        agency
            .submit_proposal(proposal("Folding", 450_000, "p-1"))
            .await,
        Code::FailedPrecondition,
        "already used",
    );
    let replayed = agency
        .submit_proposal(proposal("Folding", 400_000, "p-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.requested_amount_minor, 400_000);
}
