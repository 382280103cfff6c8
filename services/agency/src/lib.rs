//! The grantmesh Agency service.
//!
//! This crate serves `grantmesh.v1.Agency`. It joins the mesh under the
//! service name `agency`; proposals come with the grant domain.

use std::time::Duration;

use grantmesh_proto::v1::*;
use grantmesh_proto::{Agency, AgencyServer};
use tonic::{Request, Response, Status};

/// The name Agency instances register under.
pub const SERVICE: &str = "agency";

/// The `grantmesh.v1.Agency` implementation.
#[derive(Clone)]
pub struct AgencyService {
    instance_id: String,
}

impl AgencyService {
    pub fn new(instance_id: String) -> Self {
        Self { instance_id }
    }

    pub fn into_server(self) -> AgencyServer<Self> {
        AgencyServer::new(self)
    }
}

fn not_yet() -> Status {
    Status::unimplemented("proposals are not served by this build")
}

#[tonic::async_trait]
impl Agency for AgencyService {
    async fn submit_proposal(&self, _: Request<SubmitProposalRequest>) -> Result<Response<Proposal>, Status> { Err(not_yet()) }
    async fn get_proposal(&self, _: Request<GetProposalRequest>) -> Result<Response<Proposal>, Status> { Err(not_yet()) }
    async fn list_proposals(&self, _: Request<ListProposalsRequest>) -> Result<Response<ListProposalsReply>, Status> { Err(not_yet()) }
    async fn describe_agency(&self, _: Request<DescribeAgencyRequest>) -> Result<Response<AgencyInfo>, Status> { Err(not_yet()) }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        let request = request.into_inner();
        if request.delay_ms > 30_000 {
            return Err(Status::invalid_argument("delay_ms must be at most 30000"));
        }
        tokio::time::sleep(Duration::from_millis(request.delay_ms.into())).await;
        Ok(Response::new(PingReply { message: request.message, instance_id: self.instance_id.clone(), service: SERVICE.to_owned() }))
    }
}
