//! Several named agencies, each with its own band, chosen by label.

use std::time::Duration;

use grantmesh_proto::AgencyClient;
use grantmesh_proto::v1::*;
use tonic::Code;

use super::*;
use crate::support::sandbox::{self, DAY, Mesh};
use crate::support::*;

#[tokio::test]
async fn several_named_agencies_each_decide_by_their_own_band() {
    let mesh = Mesh::start(DAY).await;
    let (_, token) = mesh.researcher("ada").await;
    let erc = sandbox::agency(
        &mesh.db.url,
        &mesh.registry.url,
        "erc",
        grantmesh_node::Band::new(100_000, 200_000).unwrap(),
    )
    .await;

    // Clients choose an agency by its label among all registered agencies.
    let options = grantmesh_discovery::BalancerOptions {
        labels: vec![("agency".into(), "erc".into())],
        transport: crate::support::tls::transport(&mesh.registry.url),
        ..Default::default()
    };
    let agencies =
        grantmesh_discovery::Balancer::new(vec![mesh.registry.url.clone()], "agency", options);
    assert_eventually(
        Duration::from_secs(5),
        "the erc agency is seen, and only it",
        || async {
            agencies
                .view()
                .instances
                .iter()
                .map(|i| i.id.clone())
                .collect::<Vec<_>>()
                == ["erc"]
        },
    )
    .await;
    let submit = |key: &str| {
        authed(
            SubmitProposalRequest {
                title: "Small grant".into(),
                description: String::new(),
                requested_amount_minor: 150_000,
                duration_days: 30,
                idempotency_key: key.into(),
            },
            &token,
        )
    };
    let at_erc = agencies
        .call(|channel| {
            let request = submit("k1");
            async move { AgencyClient::new(channel).submit_proposal(request).await }
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (at_erc.agency.as_str(), at_erc.decision()),
        ("erc", proposal::Decision::Accepted)
    );
    let at_nsf = mesh
        .agency()
        .await
        .submit_proposal(submit("k1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (at_nsf.agency.as_str(), at_nsf.decision()),
        ("nsf", proposal::Decision::Rejected)
    );
    assert!(
        at_nsf
            .reason
            .contains("USD 1,500.00 is outside nsf's band of USD 3,000.00 to 5,000.00"),
        "{}",
        at_nsf.reason
    );

    // Each agency sees only its own proposals.
    let mut nsf = mesh.agency().await;
    assert_status(
        nsf.get_proposal(authed(
            GetProposalRequest {
                proposal_id: at_erc.proposal_id.clone(),
            },
            &token,
        ))
        .await,
        Code::NotFound,
        "nsf",
    );
    let listed = nsf
        .list_proposals(authed(ListProposalsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.proposals.len(), 1);
    erc.stop().await.unwrap();
}

#[tokio::test]
async fn a_validly_signed_token_for_a_researcher_no_college_knows_is_refused_before_anything_is_recorded()
 {
    let mesh = Mesh::start(DAY).await;
    let stranger = uuid::Uuid::new_v4();
    let token = token_of(stranger);
    let mut agency = mesh.agency().await;
    let submitted = agency
        .submit_proposal(authed(
            SubmitProposalRequest {
                title: "Ghost".into(),
                description: String::new(),
                requested_amount_minor: 400_000,
                duration_days: 30,
                idempotency_key: "ghost-1".into(),
            },
            &token,
        ))
        .await;
    assert_status(submitted, Code::FailedPrecondition, "not registered");
    let row = mesh
        .db
        .client()
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM proposals), (SELECT count(*) FROM accounts)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 0));
}

#[tokio::test]
async fn the_reconciler_gives_up_on_a_proposal_no_college_can_open_and_says_why() {
    let mesh = Mesh::start(DAY).await;
    let stranger = uuid::Uuid::new_v4();
    let token = token_of(stranger);
    // An accepted proposal with no account for a researcher no college
    // knows, as one accepted before the up-front check would be.
    let proposal = uuid::Uuid::new_v4();
    let db = mesh.db.client().await;
    db.execute(
        "INSERT INTO proposals (id, agency, principal_investigator, idempotency_key, title, description,
                                requested_amount, duration_days, decision, reason, submitted_at)
         VALUES ($1, 'nsf', $2, 'old-1', 'Orphan', '', 400000, 30, 'accepted', '', now() - interval '1 minute')",
        &[&proposal, &stranger],
    )
    .await
    .unwrap();
    let failure = || async {
        db.query_one(
            "SELECT account_failure FROM proposals WHERE id = $1",
            &[&proposal],
        )
        .await
        .unwrap()
        .get::<_, Option<String>>(0)
    };
    assert_eventually(
        Duration::from_secs(10),
        "the reconciler marks the proposal",
        || async { failure().await.is_some() },
    )
    .await;
    let reason = failure().await.unwrap();
    assert!(reason.contains("not a registered researcher"), "{reason}");

    // The researcher sees why, and no account was opened.
    let mut agency = mesh.agency().await;
    let shown = agency
        .get_proposal(authed(
            GetProposalRequest {
                proposal_id: proposal.to_string(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.account_failure, reason);
    assert!(shown.account_id.is_empty());
    let listed = agency
        .list_proposals(authed(ListProposalsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.proposals[0].account_failure, reason);
    // Given up on for good: several reconcile rounds later, still so.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(failure().await.as_deref(), Some(reason.as_str()));
    let accounts: i64 = db
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(accounts, 0);
}
