//! The grantmesh College service.
//!
//! This crate serves `grantmesh.v1.College`. It joins the mesh under the
//! service name `college`; research accounts come with the grant domain.

use std::time::Duration;

use grantmesh_proto::v1::*;
use grantmesh_proto::{College, CollegeServer};
use tonic::{Request, Response, Status};

/// The name College instances register under.
pub const SERVICE: &str = "college";

/// The `grantmesh.v1.College` implementation.
#[derive(Clone)]
pub struct CollegeService {
    instance_id: String,
}

impl CollegeService {
    pub fn new(instance_id: String) -> Self {
        Self { instance_id }
    }

    pub fn into_server(self) -> CollegeServer<Self> {
        CollegeServer::new(self)
    }
}

fn not_yet() -> Status {
    Status::unimplemented("research accounts are not served by this build")
}

type EventStream<T> = std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl College for CollegeService {
    async fn register_researcher(&self, _: Request<RegisterResearcherRequest>) -> Result<Response<Researcher>, Status> { Err(not_yet()) }
    async fn login(&self, _: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> { Err(not_yet()) }
    async fn open_account(&self, _: Request<OpenAccountRequest>) -> Result<Response<Account>, Status> { Err(not_yet()) }
    async fn get_account(&self, _: Request<GetAccountRequest>) -> Result<Response<Account>, Status> { Err(not_yet()) }
    async fn list_accounts(&self, _: Request<ListAccountsRequest>) -> Result<Response<ListAccountsReply>, Status> { Err(not_yet()) }
    async fn add_member(&self, _: Request<AddMemberRequest>) -> Result<Response<Account>, Status> { Err(not_yet()) }
    async fn remove_member(&self, _: Request<RemoveMemberRequest>) -> Result<Response<Account>, Status> { Err(not_yet()) }
    async fn withdraw(&self, _: Request<WithdrawRequest>) -> Result<Response<WithdrawReply>, Status> { Err(not_yet()) }
    async fn list_transactions(&self, _: Request<ListTransactionsRequest>) -> Result<Response<ListTransactionsReply>, Status> { Err(not_yet()) }
    type WatchAccountStream = EventStream<AccountEvent>;
    async fn watch_account(&self, _: Request<WatchAccountRequest>) -> Result<Response<Self::WatchAccountStream>, Status> { Err(not_yet()) }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        let request = request.into_inner();
        if request.delay_ms > 30_000 {
            return Err(Status::invalid_argument("delay_ms must be at most 30000"));
        }
        tokio::time::sleep(Duration::from_millis(request.delay_ms.into())).await;
        Ok(Response::new(PingReply { message: request.message, instance_id: self.instance_id.clone(), service: SERVICE.to_owned() }))
    }
}
