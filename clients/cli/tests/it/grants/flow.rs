//! The whole grant flow, from a researcher's registration to withdrawals on two colleges.

use grantmesh_proto::v1::*;
use tonic::Code;

use super::*;
use crate::support::sandbox::{DAY, Mesh};
use crate::support::*;

#[tokio::test]
async fn the_whole_flow_runs_from_registration_to_withdrawals_across_two_colleges() {
    let mesh = Mesh::start(DAY).await;
    let (pi, pi_token) = mesh.researcher("ada").await;
    let (student, student_token) = mesh.researcher("grace").await;

    let mut agency = mesh.agency().await;
    let info = agency
        .describe_agency(DescribeAgencyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.min_amount_minor, info.max_amount_minor),
        (300_000, 500_000)
    );
    let proposal = agency
        .submit_proposal(authed(
            SubmitProposalRequest {
                title: "Protein folding at scale".into(),
                description: "Three years of compute.".into(),
                requested_amount_minor: 400_000,
                duration_days: 365,
                idempotency_key: "proposal-1".into(),
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(proposal.decision(), proposal::Decision::Accepted);
    assert_eq!(proposal.principal_investigator_id, pi);
    assert!(
        !proposal.account_id.is_empty(),
        "the reply carries the account id"
    );

    let rejected = agency
        .submit_proposal(authed(
            SubmitProposalRequest {
                title: "Too small".into(),
                description: String::new(),
                requested_amount_minor: 299_999,
                duration_days: 30,
                idempotency_key: "proposal-2".into(),
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rejected.decision(), proposal::Decision::Rejected);
    assert!(
        rejected.reason.contains("band") && rejected.account_id.is_empty(),
        "{}",
        rejected.reason
    );

    let listed = agency
        .list_proposals(authed(
            ListProposalsRequest {
                page_size: 1,
                page_token: String::new(),
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.proposals.len(), 1);
    assert_eq!(
        listed.proposals[0].proposal_id, rejected.proposal_id,
        "newest first"
    );
    let second = agency
        .list_proposals(authed(
            ListProposalsRequest {
                page_size: 1,
                page_token: listed.next_page_token,
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.proposals[0].proposal_id, proposal.proposal_id);
    assert!(second.next_page_token.is_empty());
    let fetched = agency
        .get_proposal(authed(
            GetProposalRequest {
                proposal_id: proposal.proposal_id.clone(),
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.account_id, proposal.account_id);

    // The PI adds a student; each withdraws on a different College instance.
    let account_id = proposal.account_id.clone();
    let mut college_a = mesh.college(0).await;
    let mut college_b = mesh.college(1).await;
    college_a
        .get_account(authed(
            GetAccountRequest {
                account_id: account_id.clone(),
            },
            &pi_token,
        ))
        .await
        .unwrap();
    let students = college_a
        .list_accounts(authed(ListAccountsRequest::default(), &student_token))
        .await
        .unwrap()
        .into_inner();
    assert!(students.accounts.is_empty());
    let added = join(
        &mesh,
        &mut college_b,
        &account_id,
        &pi_token,
        (&student, &student_token),
    )
    .await;
    assert_eq!(added.members.len(), 2);
    assert_eq!(added.members[0].role(), member::Role::PrincipalInvestigator);

    let first = college_a
        .withdraw(withdraw(&account_id, 25_000, "w-1", &student_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.balance_minor, 375_000);
    let second = college_b
        .withdraw(withdraw(&account_id, 5_000, "w-2", &pi_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.balance_minor, 370_000);

    for college in [&mut college_a, &mut college_b] {
        let account = college
            .get_account(authed(
                GetAccountRequest {
                    account_id: account_id.clone(),
                },
                &student_token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(account.balance_minor, 370_000);
        assert_eq!(account.award_minor, 400_000);
        assert_eq!(account.state(), account::State::Open);
    }
    let journal = college_b
        .list_transactions(authed(
            ListTransactionsRequest {
                account_id: account_id.clone(),
                page_size: 1,
                page_token: String::new(),
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(journal.transactions[0].amount_minor, 5_000, "newest first");
    let rest = college_b
        .list_transactions(authed(
            ListTransactionsRequest {
                account_id: account_id.clone(),
                page_size: 10,
                page_token: journal.next_page_token,
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.transactions.len(), 1);
    assert_eq!(rest.transactions[0].researcher_id, student);
    assert_eq!(
        mesh.check_invariants(&account_id).await,
        (370_000, 30_000, 2)
    );

    // Removing the student takes their access away.
    college_a
        .remove_member(authed(
            RemoveMemberRequest {
                account_id: account_id.clone(),
                researcher_id: student.clone(),
            },
            &pi_token,
        ))
        .await
        .unwrap();
    assert_status(
        college_b
            .withdraw(withdraw(&account_id, 1, "w-3", &student_token))
            .await,
        Code::NotFound,
        "does not exist",
    );
}
