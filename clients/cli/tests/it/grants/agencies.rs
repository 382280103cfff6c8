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
                == ["agency-erc"]
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
        at_nsf.reason.contains("300000 to 500000"),
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
