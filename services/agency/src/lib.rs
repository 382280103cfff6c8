//! The grantmesh Agency: a funding agency that decides on grant proposals.
//!
//! A proposal whose requested amount lies outside the agency's band is
//! rejected at once with the reason. An accepted one is recorded first, then
//! the agency asks a College instance, found through the registry, to open
//! the research account. Opening is idempotent on the proposal id, so
//! retrying it — after a slow College, a College that died mid-call, or an
//! agency that died — can never open a second account; and the reconciler
//! keeps retrying accepted proposals that still have no account, so none is
//! left without one.
//!
//! Except when it never can be: before accepting, the agency asks a College
//! who the caller is (`WhoAmI`, with the caller's own token), and a
//! researcher the College does not know is refused with nothing recorded.
//! Should a College still refuse an account for good (NOT_FOUND,
//! INVALID_ARGUMENT, FAILED_PRECONDITION: retrying cannot change the
//! answer), the proposal is marked with the College's reason
//! (`account_failure`), the reconciler stops retrying it, and the
//! researcher sees why.

pub mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use grantmesh_auth::Keys;
use grantmesh_discovery::Balancer;
use grantmesh_proto::v1::*;
use grantmesh_proto::{Agency, AgencyServer, CollegeClient};
use grantmesh_server::metrics::prometheus::{self, IntCounterVec, Opts};
use store::{NewProposal, ProposalRow, ProposalStore};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

/// The name Agency instances register under; each also carries the label `agency=<name>`.
pub const SERVICE: &str = "agency";
/// The label that tells agencies apart.
pub const NAME_LABEL: &str = "agency";

/// Settings of one Agency instance.
#[derive(Clone)]
pub struct AgencyConfig {
    pub instance_id: String,
    /// The agency's name; instances with the same name are one agency.
    pub name: String,
    /// Smallest and largest award it grants, in minor units, inclusive.
    pub band: (i64, i64),
    /// The currency it awards in.
    pub currency: grantmesh_proto::money::Currency,
    /// Verifies researchers' tokens (the public key only).
    pub keys: Keys,
    /// Signs each `OpenAccount` with the key of this agency's certificate;
    /// `None` in plaintext, where colleges take the agency named in the request.
    pub signer: Option<grantmesh_auth::AgencySigner>,
    pub pool_size: usize,
    /// How long one attempt to have a College open an account may take.
    pub open_timeout: Duration,
    /// How often accepted proposals without an account are retried.
    pub reconcile_every: Duration,
}

/// The `grantmesh.v1.Agency` implementation.
#[derive(Clone)]
pub struct AgencyService {
    inner: Arc<Inner>,
}

struct Inner {
    config: AgencyConfig,
    store: ProposalStore,
    colleges: Balancer,
    /// `grantmesh_agency_proposals_total{decision}`: proposals decided
    /// (`accepted`, `rejected`) and submissions refused before any decision
    /// was recorded (`refused`: invalid, unauthenticated, an unknown
    /// researcher, a reused key). A replay of a decided proposal is not
    /// counted again.
    proposals: IntCounterVec,
}

impl AgencyService {
    /// Connects to the store `database_url` names (`postgres://…` or
    /// `sqlite:PATH`), migrates it, and starts the reconciler (until `closing`).
    pub async fn start(
        config: AgencyConfig,
        database_url: &str,
        colleges: Balancer,
        closing: CancellationToken,
    ) -> Result<Self, grantmesh_store::StoreError> {
        let store = ProposalStore::start(database_url, config.pool_size).await?;
        let proposals = IntCounterVec::new(
            Opts::new(
                "grantmesh_agency_proposals_total",
                "Proposals decided (accepted, rejected) and submissions refused before a decision (refused)",
            ),
            &["decision"],
        )
        .expect("valid metric");
        for decision in ["accepted", "rejected", "refused"] {
            proposals.with_label_values(&[decision]);
        }
        let service = Self {
            inner: Arc::new(Inner {
                config,
                store,
                colleges,
                proposals,
            }),
        };
        tokio::spawn(service.clone().reconcile(closing));
        Ok(service)
    }

    /// Registers the Agency's own metrics (docs/metrics.md) in `registry`.
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.inner.proposals.clone()))
    }

    pub fn into_server(self) -> AgencyServer<Self> {
        AgencyServer::new(self)
    }

    fn config(&self) -> &AgencyConfig {
        &self.inner.config
    }

    /// Has a College open the account for an accepted proposal and records
    /// it; a refusal for good is recorded as the proposal's account failure.
    async fn open_account(&self, proposal: &ProposalRow) -> Result<String, OpenFailure> {
        let open = OpenAccountRequest {
            proposal_id: proposal.id.to_string(),
            agency: self.config().name.clone(),
            principal_investigator_id: proposal.principal_investigator.to_string(),
            title: proposal.title.clone(),
            award_minor: proposal.requested_amount,
            duration_days: proposal.duration_days as u32,
            currency: self.config().currency.code().to_owned(),
        };
        let timeout = self.config().open_timeout;
        let account = self
            .inner
            .colleges
            .call(|channel| {
                let mut request = Request::new(open.clone());
                request.set_timeout(timeout);
                // A credential is good for one call: every attempt, on
                // whichever college, signs its own.
                let terms = grantmesh_auth::AccountTerms {
                    proposal: &open.proposal_id,
                    award: open.award_minor,
                    currency: &open.currency,
                    principal_investigator: &open.principal_investigator_id,
                    duration_days: open.duration_days,
                };
                let authorized = match &self.config().signer {
                    Some(signer) => signer
                        .credential(&open.agency, &terms)
                        .map_err(Status::internal)
                        .and_then(|credential| {
                            grantmesh_auth::authorize(&mut request, &credential)
                        }),
                    None => Ok(()),
                };
                async move {
                    authorized?;
                    let mut client = CollegeClient::new(channel);
                    let call = client.open_account(request);
                    match tokio::time::timeout(timeout, call).await {
                        Ok(result) => result,
                        Err(_) => Err(Status::unavailable(format!(
                            "the college did not open the account within {timeout:?}"
                        ))),
                    }
                }
            })
            .await;
        let account = match account {
            Ok(account) => account.into_inner(),
            Err(status) if is_permanent(&status) => {
                let reason = status.message().to_owned();
                self.inner
                    .store
                    .set_account_failure(proposal.id, &reason)
                    .await
                    .map_err(OpenFailure::Transient)?;
                tracing::warn!(proposal = %proposal.id, %reason, "the college refused the account for good; giving up on it");
                return Err(OpenFailure::Permanent(reason));
            }
            Err(status) => return Err(OpenFailure::Transient(status)),
        };
        self.inner
            .store
            .set_account(proposal.id, &account.account_id)
            .await
            .map_err(OpenFailure::Transient)?;
        tracing::info!(proposal = %proposal.id, account = %account.account_id, "account opened");
        Ok(account.account_id)
    }

    /// Retries accepted proposals that still have no account.
    async fn reconcile(self, closing: CancellationToken) {
        let every = self.config().reconcile_every;
        loop {
            tokio::select! {
                () = closing.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            // Leave fresh ones to the call that is still handling them.
            let waiting = match self
                .inner
                .store
                .awaiting_account(
                    &self.config().name,
                    (self.config().open_timeout * 2).as_secs_f64(),
                    50,
                )
                .await
            {
                Ok(waiting) => waiting,
                Err(status) => {
                    tracing::warn!(error = %status.message(), "reconciler could not read proposals");
                    continue;
                }
            };
            for proposal in waiting {
                match self.open_account(&proposal).await {
                    Ok(account) => {
                        tracing::info!(proposal = %proposal.id, %account, "reconciler opened a missing account")
                    }
                    // Already logged and recorded; never retried again.
                    Err(OpenFailure::Permanent(_)) => {}
                    Err(OpenFailure::Transient(status)) => {
                        tracing::warn!(proposal = %proposal.id, error = %status.message(), "reconciler could not open the account yet")
                    }
                }
            }
        }
    }

    fn message(&self, proposal: ProposalRow) -> Proposal {
        Proposal {
            proposal_id: proposal.id.to_string(),
            agency: proposal.agency,
            principal_investigator_id: proposal.principal_investigator.to_string(),
            title: proposal.title,
            description: proposal.description,
            requested_amount_minor: proposal.requested_amount,
            duration_days: proposal.duration_days as u32,
            decision: if proposal.accepted {
                proposal::Decision::Accepted
            } else {
                proposal::Decision::Rejected
            } as i32,
            reason: proposal.reason,
            account_id: proposal.account_id.unwrap_or_default(),
            submitted_at: Some(proposal.submitted_at.into()),
            account_failure: proposal.account_failure.unwrap_or_default(),
            currency: self.config().currency.code().to_owned(),
        }
    }

    /// Refuses a caller the Colleges do not know, before anything is
    /// recorded: a validly signed token for a researcher never registered
    /// would otherwise leave an accepted proposal that no College can open
    /// an account for. Asked with the caller's own token. Only a College's
    /// NOT_FOUND (no such researcher) or UNAUTHENTICATED (the token's
    /// session has ended) refuses; when no College answers, the proposal goes ahead
    /// and opening its account settles it (or the reconciler does).
    async fn check_investigator(&self, investigator: Uuid, token: &str) -> Result<(), Status> {
        let timeout = self.config().open_timeout;
        let answer = self
            .inner
            .colleges
            .call(|channel| {
                let mut request = Request::new(WhoAmIRequest {});
                request.set_timeout(timeout);
                let authorized = grantmesh_auth::authorize(&mut request, token);
                async move {
                    authorized?;
                    match tokio::time::timeout(
                        timeout,
                        CollegeClient::new(channel).who_am_i(request),
                    )
                    .await
                    {
                        Ok(result) => result,
                        Err(_) => Err(Status::unavailable("the college did not answer in time")),
                    }
                }
            })
            .await;
        match answer {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => {
                Err(Status::failed_precondition(format!(
                    "researcher {investigator} is not registered at any college, so no account could be opened \
                     for this proposal; sign up at the college first (the token is validly signed, but names no one the college knows)"
                )))
            }
            // The colleges keep the sessions: a token of an ended session
            // (logged out) is refused here too, though its signature is good.
            Err(status) if status.code() == tonic::Code::Unauthenticated => {
                Err(Status::unauthenticated(status.message().to_owned()))
            }
            Err(status) => {
                tracing::debug!(error = %status.message(), "could not ask a college about the investigator; going ahead");
                Ok(())
            }
        }
    }
}

/// Why a College did not open an account.
enum OpenFailure {
    /// Refused for good, with the College's reason; recorded on the proposal.
    Permanent(String),
    /// Might succeed later (no College answered, a timeout, a store hiccup).
    Transient(Status),
}

/// Whether a College's refusal to open an account can never change on a
/// retry: the request itself is wrong for it (an unknown principal
/// investigator is NOT_FOUND). PERMISSION_DENIED and UNAUTHENTICATED are
/// left to retry: they come from configuration (bands, keys) that an
/// operator may fix.
fn is_permanent(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::NotFound | tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
    )
}

/// The refusal a researcher gets for an accepted proposal whose account
/// will never be opened.
fn account_failed(proposal: Uuid, reason: &str) -> Status {
    Status::failed_precondition(format!(
        "proposal {proposal} was accepted, but no account can be opened for it: {reason}"
    ))
}

fn text(field: &str, value: &str, min: usize, max: usize) -> Result<String, Status> {
    let value = value.trim();
    let chars = value.chars().count();
    if chars < min {
        return Err(Status::invalid_argument(format!(
            "{field} must not be empty"
        )));
    }
    if chars > max {
        return Err(Status::invalid_argument(format!(
            "{field} is longer than {max} characters"
        )));
    }
    // Line breaks and tabs are text; other control characters (NUL among
    // them, which PostgreSQL refuses) are not.
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Status::invalid_argument(format!(
            "{field} contains control characters"
        )));
    }
    Ok(value.to_owned())
}

/// Page tokens are the `(submitted_at, id)` cursor of the last entry.
fn page_token(proposal: &ProposalRow) -> String {
    grantmesh_proto::paging::token(proposal.submitted_at, &proposal.id.to_string())
}

fn parse_page_token(token: &str) -> Result<Option<(SystemTime, Uuid)>, Status> {
    grantmesh_proto::paging::parse(token)
}

impl AgencyService {
    /// `SubmitProposal`; sets `decided` once the decision is recorded, so
    /// the caller counts a refusal only when nothing was.
    async fn submit(
        &self,
        request: Request<SubmitProposalRequest>,
        decided: &mut bool,
    ) -> Result<Response<Proposal>, Status> {
        let investigator = self.config().keys.researcher(&request)?;
        let token = grantmesh_auth::bearer(&request)?.to_owned();
        let request = request.into_inner();
        let title = text("title", &request.title, 1, 200)?;
        let description = text("description", &request.description, 0, 10_000)?;
        if request.requested_amount_minor <= 0 {
            return Err(Status::invalid_argument(format!(
                "requested_amount_minor must be more than zero (got {})",
                request.requested_amount_minor
            )));
        }
        if request.duration_days == 0 || request.duration_days > 3_650 {
            return Err(Status::invalid_argument("duration_days must be 1 to 3650"));
        }
        let key = text("idempotency_key", &request.idempotency_key, 1, 128)?;
        let (min, max) = self.config().band;
        let amount = request.requested_amount_minor;
        let reason = if amount < min || amount > max {
            let currency = self.config().currency;
            format!(
                "the requested amount {} is outside {}'s band of {} to {}",
                currency.format(amount),
                self.config().name,
                currency.format(min),
                currency.number(max)
            )
        } else {
            String::new()
        };
        if reason.is_empty() {
            self.check_investigator(investigator, &token).await?;
        }
        let (proposal, new) = self
            .inner
            .store
            .insert(&NewProposal {
                agency: &self.config().name,
                principal_investigator: investigator,
                idempotency_key: &key,
                title: &title,
                description: &description,
                requested_amount: amount,
                duration_days: request.duration_days as i32,
                accepted: reason.is_empty(),
                reason: &reason,
            })
            .await?;
        *decided = true;
        if new {
            tracing::info!(proposal = %proposal.id, accepted = proposal.accepted, amount, "proposal decided");
            let decision = if proposal.accepted {
                "accepted"
            } else {
                "rejected"
            };
            self.inner.proposals.with_label_values(&[decision]).inc();
        } else if proposal.requested_amount != amount
            || proposal.title != title
            || proposal.duration_days != request.duration_days as i32
        {
            // As Withdraw does: one key, one request; a different request
            // under a used key is a mistake to report, not to paper over.
            *decided = false;
            return Err(Status::failed_precondition(format!(
                "idempotency_key {} was already used for proposal {} ({:?}, {} minor units, {} days); \
                 use a new key for a new proposal",
                grantmesh_proto::errors::quote(&key),
                proposal.id,
                proposal.title,
                proposal.requested_amount,
                proposal.duration_days
            )));
        }
        let mut proposal = proposal;
        if let Some(reason) = &proposal.account_failure {
            return Err(account_failed(proposal.id, reason));
        }
        if proposal.accepted && proposal.account_id.is_none() {
            let account = self.open_account(&proposal).await.map_err(|failure| match failure {
                OpenFailure::Permanent(reason) => account_failed(proposal.id, &reason),
                OpenFailure::Transient(status) => Status::unavailable(format!(
                    "proposal {} was accepted but its account is not open yet ({}); retry with the same idempotency key",
                    proposal.id,
                    status.message()
                )),
            })?;
            proposal.account_id = Some(account);
        }
        Ok(Response::new(self.message(proposal)))
    }
}

#[tonic::async_trait]
impl Agency for AgencyService {
    #[tracing::instrument(skip_all, fields(agency = %self.config().name))]
    async fn submit_proposal(
        &self,
        request: Request<SubmitProposalRequest>,
    ) -> Result<Response<Proposal>, Status> {
        let mut decided = false;
        let answer = self.submit(request, &mut decided).await;
        if answer.is_err() && !decided {
            self.inner.proposals.with_label_values(&["refused"]).inc();
        }
        answer
    }

    async fn get_proposal(
        &self,
        request: Request<GetProposalRequest>,
    ) -> Result<Response<Proposal>, Status> {
        let investigator = self.config().keys.researcher(&request)?;
        let id_text = &request.get_ref().proposal_id;
        if id_text.is_empty() {
            return Err(Status::invalid_argument("proposal_id is required"));
        }
        let id: Uuid = id_text.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "proposal_id {} is not a valid id",
                grantmesh_proto::errors::quote(id_text)
            ))
        })?;
        let proposal = self
            .inner
            .store
            .get(&self.config().name, id)
            .await?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "proposal {id} does not exist at {}",
                    self.config().name
                ))
            })?;
        // Another researcher's proposal answers as one that does not exist.
        if proposal.principal_investigator != investigator {
            return Err(Status::not_found(format!(
                "proposal {id} does not exist at {}",
                self.config().name
            )));
        }
        Ok(Response::new(self.message(proposal)))
    }

    async fn list_proposals(
        &self,
        request: Request<ListProposalsRequest>,
    ) -> Result<Response<ListProposalsReply>, Status> {
        let investigator = self.config().keys.researcher(&request)?;
        let request = request.into_inner();
        let limit = match request.page_size {
            0 => 20,
            n if n > 100 => return Err(Status::invalid_argument("page_size must be at most 100")),
            n => i64::from(n),
        };
        let after = parse_page_token(&request.page_token)?;
        let mut rows = self
            .inner
            .store
            .list(&self.config().name, investigator, after, limit + 1)
            .await?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(page_token).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListProposalsReply {
            proposals: rows.into_iter().map(|p| self.message(p)).collect(),
            next_page_token,
        }))
    }

    async fn describe_agency(
        &self,
        _: Request<DescribeAgencyRequest>,
    ) -> Result<Response<AgencyInfo>, Status> {
        let (min, max) = self.config().band;
        Ok(Response::new(AgencyInfo {
            name: self.config().name.clone(),
            min_amount_minor: min,
            max_amount_minor: max,
            currency: self.config().currency.code().to_owned(),
        }))
    }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        grantmesh_server::ping(request, &self.config().instance_id, SERVICE).await
    }
}
