//! The agencies' credentials against real Colleges: an account is opened
//! only by a caller whose certificate names an agency the college knows,
//! with a credential signed by that certificate's key, bound to the
//! account's terms, used once across College instances, within the agency's
//! band, and never past its expiry. Every refusal is checked in the database
//! to have changed nothing.

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
        currency: "USD".into(),
    }
}

/// `nsf`'s credential for `open`.
fn nsf(open: &OpenAccountRequest) -> String {
    agency_credential("nsf", open)
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
    let credential = nsf(&open_request(&proposal, &pi, 400_000));
    let account = mesh
        .college_as_agency(0, "nsf")
        .await
        .open_account(authed(open_request(&proposal, &pi, 400_000), &credential))
        .await
        .unwrap()
        .into_inner();
    let before = store_counts(&mesh).await;
    assert_eq!(before, (1, 1));

    for college in [1, 0] {
        assert_status(
            mesh.college_as_agency(college, "nsf")
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
    let retry = nsf(&open_request(&proposal, &pi, 400_000));
    let again = mesh
        .college_as_agency(1, "nsf")
        .await
        .open_account(authed(open_request(&proposal, &pi, 400_000), &retry))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.account_id, account.account_id);
    assert_eq!(store_counts(&mesh).await, (1, 2));
}

#[tokio::test]
async fn a_credential_for_one_set_of_terms_opens_no_other() {
    let mesh = Mesh::start(DAY).await;
    let (pi, _) = mesh.researcher("ada").await;
    let (other_pi, _) = mesh.researcher("mallory").await;
    let (a, b) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let credential = nsf(&open_request(&a, &pi, 400_000));
    let mut college = mesh.college_as_agency(0, "nsf").await;
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
    // A relay that rewrites who leads the account, or for how long.
    assert_status(
        college
            .open_account(authed(open_request(&a, &other_pi, 400_000), &credential))
            .await,
        Code::PermissionDenied,
        "issued for another principal investigator",
    );
    let longer = OpenAccountRequest {
        duration_days: 3_650,
        ..open_request(&a, &pi, 400_000)
    };
    assert_status(
        college.open_account(authed(longer, &credential)).await,
        Code::PermissionDenied,
        "issued for another duration",
    );
    // Or in which currency the award is counted (400,000 yen for 4,000 dollars).
    let in_yen = OpenAccountRequest {
        currency: "JPY".into(),
        ..open_request(&a, &pi, 400_000)
    };
    assert_status(
        college.open_account(authed(in_yen, &credential)).await,
        Code::PermissionDenied,
        "issued for another currency",
    );
    assert_eq!(store_counts(&mesh).await, (0, 0));
    // Refused before it was recorded: the credential still opens its own call.
    college
        .open_account(authed(open_request(&a, &pi, 400_000), &credential))
        .await
        .unwrap();
    assert_eq!(store_counts(&mesh).await, (1, 1));
    // A currency that is no ISO 4217 code is refused by name, the credential aside.
    let made_up = OpenAccountRequest {
        currency: "DOGE".into(),
        ..open_request(&b, &pi, 400_000)
    };
    let credential = nsf(&made_up);
    assert_status(
        college.open_account(authed(made_up, &credential)).await,
        Code::InvalidArgument,
        "currency: \"DOGE\" is not an ISO 4217 currency code",
    );
    assert_eq!(store_counts(&mesh).await, (1, 1));
}

#[tokio::test]
async fn an_unknown_agency_or_an_award_outside_its_band_is_refused_before_the_store() {
    let mesh = Mesh::start(DAY).await;
    let (pi, _) = mesh.researcher("ada").await;
    let mut college = mesh.college_as_agency(0, "nsf").await;

    // An agency certificate the colleges were not configured with.
    let proposal = Uuid::new_v4().to_string();
    let request = OpenAccountRequest {
        agency: "rogue".into(),
        ..open_request(&proposal, &pi, 400_000)
    };
    let rogue = agency_credential("rogue", &request);
    assert_status(
        mesh.college_as_agency(0, "rogue")
            .await
            .open_account(authed(request, &rogue))
            .await,
        Code::PermissionDenied,
        "unknown agency \"rogue\"",
    );

    for award in [299_999, 500_001] {
        let proposal = Uuid::new_v4().to_string();
        let credential = nsf(&open_request(&proposal, &pi, award));
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
    let request = OpenAccountRequest {
        agency: "erc".into(),
        ..open_request(&proposal, &pi, 400_000)
    };
    let credential = agency_credential("erc", &request);
    assert_status(
        mesh.college_as_agency(0, "erc")
            .await
            .open_account(authed(request, &credential))
            .await,
        Code::PermissionDenied,
        "band 100000..=200000",
    );
    assert_eq!(store_counts(&mesh).await, (0, 0));
}

#[tokio::test]
async fn one_agency_cannot_open_accounts_as_another_nor_anyone_as_an_agency() {
    let mesh = Mesh::start(DAY).await;
    let (pi, pi_token) = mesh.researcher("ada").await;
    let proposal = Uuid::new_v4().to_string();
    let as_erc = OpenAccountRequest {
        agency: "erc".into(),
        ..open_request(&proposal, &pi, 150_000)
    };
    // `nsf`'s certificate, asking in `erc`'s name (and band), with a
    // credential it signed itself as `erc`, or one `erc` signed (captured).
    let nsf_signed_as_erc = {
        let nsf_key = crate::support::tls::member("agency/nsf");
        let (_, key) =
            grantmesh_discovery::tls::ca::leaf_files(crate::support::tls::dir(), &nsf_key);
        grantmesh_auth::AgencySigner::new(key)
            .credential(
                "erc",
                &grantmesh_auth::AccountTerms {
                    proposal: &proposal,
                    award: 150_000,
                    principal_investigator: &pi,
                    duration_days: 30,
                    currency: "USD",
                },
            )
            .unwrap()
    };
    let mut as_nsf = mesh.college_as_agency(0, "nsf").await;
    assert_status(
        as_nsf
            .open_account(authed(as_erc.clone(), &nsf_signed_as_erc))
            .await,
        Code::PermissionDenied,
        "the certificate names agency \"nsf\"",
    );
    let captured = agency_credential("erc", &as_erc);
    assert_status(
        as_nsf.open_account(authed(as_erc.clone(), &captured)).await,
        Code::Unauthenticated,
        "signed with the key of the agency's own certificate",
    );
    // A college's certificate, and a researcher without one.
    let mut as_college = grantmesh_proto::CollegeClient::new(
        crate::support::tls::channel_as(&mesh.colleges[1].url, "college/college-1").await,
    );
    assert_status(
        as_college
            .open_account(authed(as_erc.clone(), &captured))
            .await,
        Code::PermissionDenied,
        "only a funding agency may open research accounts",
    );
    assert_status(
        mesh.college(0)
            .await
            .open_account(authed(as_erc.clone(), &pi_token))
            .await,
        Code::Unauthenticated,
        "needs a funding agency's mesh certificate",
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
