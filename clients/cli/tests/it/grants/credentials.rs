//! The agencies' service credential against real Colleges: bound to one
//! proposal and award, used once across College instances, only from an
//! agency a College knows and within its band, and never past its expiry.
//! Every refusal is checked in the database to have changed nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use grantmesh_proto::v1::*;
use tonic::Code;
use uuid::Uuid;

use super::*;
use crate::support::sandbox::{DAY, Mesh};
use crate::support::*;

/// An `OpenAccount` request from `nsf` for `proposal_id`.
fn open_request(proposal_id: &str, pi: &str, award: i64) -> OpenAccountRequest {
    OpenAccountRequest {
        proposal_id: proposal_id.into(),
        agency: "nsf".into(),
        principal_investigator_id: pi.into(),
        title: "Bound".into(),
        award_minor: award,
        duration_days: 30,
    }
}

/// (accounts, recorded credentials) in the mesh's database.
async fn store_counts(mesh: &Mesh) -> (i64, i64) {
    let client = mesh.db.client().await;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM accounts), (SELECT count(*) FROM agency_credentials)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn a_credential_replayed_at_the_other_college_is_refused_and_changes_nothing() {
    let mesh = Mesh::start(DAY).await;
    let (pi, _) = mesh.researcher("ada").await;
    let proposal = Uuid::new_v4().to_string();
    let credential = keys().agency_credential("nsf", &proposal, 400_000).unwrap();
    let account = mesh
        .college(0)
        .await
        .open_account(authed(open_request(&proposal, &pi, 400_000), &credential))
        .await
        .unwrap()
        .into_inner();
    let before = store_counts(&mesh).await;
    assert_eq!(before, (1, 1));

    for college in [1, 0] {
        assert_status(
            mesh.college(college)
                .await
                .open_account(authed(open_request(&proposal, &pi, 400_000), &credential))
                .await,
            Code::PermissionDenied,
            "this agency credential was already used",
        );
    }
    assert_eq!(store_counts(&mesh).await, before);
    let (balance, _, entries) = mesh.check_invariants(&account.account_id).await;
    assert_eq!((balance, entries), (400_000, 0));

    // The agency's retry signs a new credential and gets the same account.
    let retry = keys().agency_credential("nsf", &proposal, 400_000).unwrap();
    let again = mesh
        .college(1)
        .await
        .open_account(authed(open_request(&proposal, &pi, 400_000), &retry))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.account_id, account.account_id);
    assert_eq!(store_counts(&mesh).await, (1, 2));
}

#[tokio::test]
async fn a_credential_for_one_proposal_and_award_opens_no_other() {
    let mesh = Mesh::start(DAY).await;
    let (pi, _) = mesh.researcher("ada").await;
    let (a, b) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let credential = keys().agency_credential("nsf", &a, 400_000).unwrap();
    let mut college = mesh.college(0).await;
    assert_status(
        college
            .open_account(authed(open_request(&b, &pi, 400_000), &credential))
            .await,
        Code::PermissionDenied,
        "issued for another proposal",
    );
    assert_status(
        college
            .open_account(authed(open_request(&a, &pi, 500_000), &credential))
            .await,
        Code::PermissionDenied,
        "issued for another award",
    );
    // The rogue's dream: a huge award on a captured credential.
    assert_status(
        college
            .open_account(authed(
                open_request(&a, &pi, 1_000_000_000_000_000),
                &credential,
            ))
            .await,
        Code::PermissionDenied,
        "issued for another award",
    );
    assert_eq!(store_counts(&mesh).await, (0, 0));
    // Refused before it was recorded: the credential still opens its own call.
    college
        .open_account(authed(open_request(&a, &pi, 400_000), &credential))
        .await
        .unwrap();
    assert_eq!(store_counts(&mesh).await, (1, 1));
}

#[tokio::test]
async fn an_unknown_agency_or_an_award_outside_its_band_is_refused_before_the_store() {
    let mesh = Mesh::start(DAY).await;
    let (pi, _) = mesh.researcher("ada").await;
    let mut college = mesh.college(0).await;

    let proposal = Uuid::new_v4().to_string();
    let rogue = keys()
        .agency_credential("rogue", &proposal, 400_000)
        .unwrap();
    let request = OpenAccountRequest {
        agency: "rogue".into(),
        ..open_request(&proposal, &pi, 400_000)
    };
    assert_status(
        college.open_account(authed(request, &rogue)).await,
        Code::PermissionDenied,
        "unknown agency \"rogue\"",
    );

    for award in [299_999, 500_001] {
        let proposal = Uuid::new_v4().to_string();
        let credential = keys().agency_credential("nsf", &proposal, award).unwrap();
        assert_status(
            college
                .open_account(authed(open_request(&proposal, &pi, award), &credential))
                .await,
            Code::PermissionDenied,
            "outside agency \"nsf\"'s band 300000..=500000",
        );
    }
    // `erc` is known with a band of its own.
    let proposal = Uuid::new_v4().to_string();
    let credential = keys().agency_credential("erc", &proposal, 400_000).unwrap();
    let request = OpenAccountRequest {
        agency: "erc".into(),
        ..open_request(&proposal, &pi, 400_000)
    };
    assert_status(
        college.open_account(authed(request, &credential)).await,
        Code::PermissionDenied,
        "band 100000..=200000",
    );
    assert_eq!(store_counts(&mesh).await, (0, 0));
}

#[tokio::test]
async fn an_expired_credential_is_refused() {
    let mesh = Mesh::start(DAY).await;
    let (pi, _) = mesh.researcher("ada").await;
    let proposal = Uuid::new_v4().to_string();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Signed as an agency would, with the test service key, but expired a
    // minute ago (well past the verifier's leeway).
    let claims = serde_json::json!({
        "sub": "nsf",
        "kind": "agency",
        "aud": "college",
        "proposal": proposal,
        "award": 400_000,
        "iat": now - 120,
        "exp": now - 60,
        "jti": Uuid::new_v4(),
    });
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(db::SERVICE_KEY.as_bytes()),
    )
    .unwrap();
    assert_status(
        mesh.college(1)
            .await
            .open_account(authed(open_request(&proposal, &pi, 400_000), &expired))
            .await,
        Code::Unauthenticated,
        "expired",
    );
    assert_eq!(store_counts(&mesh).await, (0, 0));
}

#[tokio::test]
async fn the_agency_still_opens_accounts_with_a_credential_per_call() {
    let mesh = Mesh::start(DAY).await;
    let (pi, pi_token) = mesh.researcher("ada").await;
    let mut agency = mesh.agency().await;
    for n in 0..3 {
        let proposal = agency
            .submit_proposal(authed(
                SubmitProposalRequest {
                    title: format!("Bound call {n}"),
                    description: String::new(),
                    requested_amount_minor: 400_000,
                    duration_days: 30,
                    idempotency_key: format!("credential-{n}"),
                },
                &pi_token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(proposal.decision(), proposal::Decision::Accepted);
        assert_eq!(proposal.principal_investigator_id, pi);
        assert!(!proposal.account_id.is_empty());
        let (balance, _, _) = mesh.check_invariants(&proposal.account_id).await;
        assert_eq!(balance, 400_000);
    }
    let (accounts, credentials) = store_counts(&mesh).await;
    assert_eq!(accounts, 3);
    assert!(credentials >= 3, "each opening spent a credential");
}
