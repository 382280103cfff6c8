//! The grantmesh College: researchers and their research accounts.
//!
//! Every College instance serves `grantmesh.v1.College` from the same
//! central store ([`store`]: PostgreSQL, or an embedded SQLite file for
//! `grantmesh dev`), so any instance can serve any call and the mesh may add
//! or lose instances at will. Researchers log in for a bearer token; agencies
//! open accounts with a service credential bound to that one call (its
//! proposal and award), which the store records so it is used once; a
//! College opens accounts only for agencies it knows, within their award
//! bands ([`CollegeConfig::agencies`]); members read accounts,
//! withdraw concurrently and watch them live. Live updates cross instances
//! through PostgreSQL `NOTIFY`, or, on SQLite, an in-process fan-out that
//! reaches only the instances in the same process.

pub mod ledger;
mod metrics;
pub mod sessions;
pub mod store;
pub mod validate;
mod watch;

pub use watch::WatchLimits;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::Stream;
use grantmesh_auth::{Keys, signup};
use grantmesh_proto::v1::*;
use grantmesh_proto::{College, CollegeServer};
use grantmesh_store::Notifications;
use store::{AccountRow, AccountStore, Credential, NewAccount, TransactionRow};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// The name College instances register under.
pub const SERVICE: &str = "college";

/// Settings of one College instance.
#[derive(Clone)]
pub struct CollegeConfig {
    /// The id this instance registered under, reported by `Ping`.
    pub instance_id: String,
    /// How long one day of an account's duration lasts (24 h; simulations use a second).
    pub day_length: Duration,
    /// The token keys: signs researchers' tokens, and verifies them.
    pub keys: Keys,
    /// Whether callers are known by their mesh certificates (TLS): then an
    /// account is opened only for the agency the caller's certificate names,
    /// with a credential signed by that certificate's key. In plaintext
    /// (`--insecure`, loopback experiments) the agency named in the request
    /// is taken at its word.
    pub require_identity: bool,
    /// Connections this instance may hold to the store.
    pub pool_size: usize,
    /// The agencies that may open accounts here, by name, each with the
    /// awards it grants (minor units, both ends included). A credential
    /// from any other agency, or for an award outside its band, is refused
    /// before the store is touched.
    pub agencies: HashMap<String, (i64, i64)>,
    /// How many `WatchAccount` streams it serves, and to whom.
    pub watches: WatchLimits,
    /// Where sign-up codes are mailed (SMTP or an outbox).
    pub mail: grantmesh_mail::MailQueue,
    /// The least time between two sign-up messages to one email
    /// ([`grantmesh_auth::signup::RESEND_AFTER`] unless configured).
    pub signup_resend: Duration,
}

/// The `grantmesh.v1.College` implementation.
#[derive(Clone)]
pub struct CollegeService {
    inner: Arc<Inner>,
}

struct Inner {
    config: CollegeConfig,
    store: AccountStore,
    notifications: Notifications,
    closing: CancellationToken,
    /// Open `WatchAccount` streams, bounded.
    watchers: Arc<watch::Watchers>,
    /// Login and sign-up attempts, per email and per peer address.
    attempts: grantmesh_auth::Attempts,
    /// Withdrawals by outcome and database errors, for `/metrics`.
    metrics: metrics::CollegeMetrics,
}

/// Login attempts one email gets per minute on one College instance; see
/// [`grantmesh_auth::attempts`] for this and the per-peer limit.
pub use grantmesh_auth::attempts::{
    LOGIN_ATTEMPTS_PER_MINUTE, PEER_ATTEMPT_BURST, PEER_ATTEMPTS_PER_MINUTE,
};

impl CollegeService {
    /// Connects to the store `database_url` names (`postgres://…` or
    /// `sqlite:PATH`), migrates it, and starts listening for account
    /// changes; streams end when `closing` is cancelled.
    pub async fn start(
        config: CollegeConfig,
        database_url: &str,
        closing: CancellationToken,
    ) -> Result<Self, grantmesh_store::StoreError> {
        let (store, notifications) = AccountStore::start(
            database_url,
            config.pool_size,
            config.day_length,
            closing.clone(),
        )
        .await?;
        let watchers = Arc::new(watch::Watchers::new(config.watches));
        sessions::follow_ended_sessions(store.clone(), config.keys.clone(), closing.clone());
        let service = Self {
            inner: Arc::new(Inner {
                config,
                store,
                notifications,
                closing: closing.clone(),
                watchers,
                attempts: grantmesh_auth::Attempts::new(),
                metrics: metrics::CollegeMetrics::new(),
            }),
        };
        // Forget emails and peers whose attempts have aged out, so made-up
        // ones do not grow the limiters without end.
        let inner = Arc::downgrade(&service.inner);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    () = closing.cancelled() => return,
                    _ = every.tick() => {}
                }
                let Some(inner) = inner.upgrade() else { return };
                inner.attempts.forget_idle();
            }
        });
        Ok(service)
    }

    pub fn into_server(self) -> CollegeServer<Self> {
        CollegeServer::new(self)
    }

    pub fn store(&self) -> &AccountStore {
        &self.inner.store
    }

    /// Registers the College's own metrics (docs/metrics.md) in `registry`.
    pub fn register_metrics(
        &self,
        registry: &grantmesh_server::metrics::prometheus::Registry,
    ) -> grantmesh_server::metrics::prometheus::Result<()> {
        self.inner
            .metrics
            .register(registry, self.inner.store.clone())
    }

    /// Counts a store error that was the database's fault.
    fn count(&self, err: &store::StoreError) {
        self.inner.metrics.store_error(err);
    }

    fn keys(&self) -> &Keys {
        &self.inner.config.keys
    }

    /// Refuses an agency this College does not know, or an award outside
    /// the agency's band.
    fn check_band(&self, agency: &str, award: i64) -> Result<(), Status> {
        let Some(&(min, max)) = self.inner.config.agencies.get(agency) else {
            return Err(Status::permission_denied(format!(
                "unknown agency {agency:?}: this college opens accounts only for the agencies it is configured with"
            )));
        };
        if !(min..=max).contains(&award) {
            return Err(Status::permission_denied(format!(
                "award {award} is outside agency {agency:?}'s band {min}..={max}"
            )));
        }
        Ok(())
    }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl College for CollegeService {
    /// Signs a researcher up without telling whether the email was taken:
    /// a new email and one already registered get the same reply (the name
    /// and email sent, no id) after the same work (the password is checked
    /// and hashed either way, then one upsert of the pending sign-up). A
    /// new email is mailed the code that makes the researcher
    /// (`VerifyEmail`); a registered one is mailed a notice, and its
    /// account is left exactly as it was.
    #[tracing::instrument(skip_all)]
    async fn register_researcher(
        &self,
        request: Request<RegisterResearcherRequest>,
    ) -> Result<Response<Researcher>, Status> {
        self.inner.attempts.check_peer(peer(&request))?;
        let request = request.into_inner();
        let name = validate::text("name", &request.name, 200)?;
        let email = validate::email("email", &request.email)?;
        // zxcvbn takes up to a few milliseconds: off the async threads.
        let (password, inputs) = (request.password, [name.clone(), email.clone()]);
        let password = tokio::task::spawn_blocking(move || {
            let inputs = inputs.each_ref().map(String::as_str);
            grantmesh_auth::check_new_password("password", &password, &inputs).map(|()| password)
        })
        .await
        .map_err(|_| Status::internal("the password check was interrupted"))??;
        let hash = grantmesh_auth::hash_password(password).await?;
        let code = signup::new_code();
        let pending = store::PendingSignup {
            email: &email,
            name: &name,
            password_hash: &hash,
            code_digest: &signup::code_digest(&email, &code),
        };
        let begun = self
            .inner
            .store
            .begin_signup(&pending, signup::CODE_TTL, self.inner.config.signup_resend)
            .await
            .inspect_err(|err| self.count(err))?;
        let (subject, body) = match begun {
            store::Begun::Mail => signup::code_mail(&name, &code),
            store::Begun::Registered => signup::registered_mail(),
            store::Begun::TooSoon => {
                tracing::info!(
                    "sign-up within a minute of the last message to this email: nothing sent"
                );
                (String::new(), String::new())
            }
        };
        if !body.is_empty() {
            let mail = grantmesh_mail::Mail {
                to: email.clone(),
                subject,
                body,
            };
            if self.inner.config.mail.post(mail) {
                self.inner.metrics.mail_queued();
            } else {
                self.inner.metrics.mail_dropped();
                tracing::warn!("the mail queue is full: a sign-up message was dropped");
            }
        }
        Ok(Response::new(Researcher {
            researcher_id: String::new(),
            name,
            email,
        }))
    }

    /// The code mailed at sign-up comes back: the researcher is made and
    /// logged in. Every refusal reads the same, so it tells nothing of
    /// which emails have a sign-up waiting.
    #[tracing::instrument(skip_all)]
    async fn verify_email(
        &self,
        request: Request<VerifyEmailRequest>,
    ) -> Result<Response<LoginReply>, Status> {
        let from = peer(&request);
        self.inner.attempts.check_peer(from)?;
        let request = request.into_inner();
        let email = validate::email("email", &request.email)?;
        let code = signup::normalize_code(&request.code).ok_or_else(|| {
            Status::invalid_argument(format!(
                "code must be the {} digits mailed to {email}",
                signup::CODE_DIGITS
            ))
        })?;
        self.inner.attempts.check_email(&email, from)?;
        let store = &self.inner.store;
        let hash = store
            .signup_password_hash(&email, signup::CODE_ATTEMPTS)
            .await
            .inspect_err(|err| self.count(err))?;
        // No sign-up waiting: checked against a decoy, in the same time.
        let matches = grantmesh_auth::verify_password(request.password, hash.clone()).await?;
        let checked = hash.filter(|_| matches).unwrap_or_default();
        let finished = store
            .finish_signup(
                &email,
                &signup::code_digest(&email, &code),
                &checked,
                signup::CODE_ATTEMPTS,
            )
            .await
            .inspect_err(|err| self.count(err))?;
        let store::Finished::Created(researcher) = finished else {
            return Err(Status::unauthenticated(format!(
                "no sign-up of {email} waits for this code and password: the code is wrong, \
                 used up ({} tries) or older than an hour, or the password is not the one \
                 signed up with; sign up again for a new code",
                signup::CODE_ATTEMPTS
            )));
        };
        tracing::info!(researcher = %researcher.id, "researcher registered (email verified)");
        let reply = sessions::open(&self.inner.store, self.keys(), researcher).await?;
        Ok(Response::new(reply))
    }

    #[tracing::instrument(skip_all)]
    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        let from = peer(&request);
        self.inner.attempts.check_peer(from)?;
        let request = request.into_inner();
        let email = validate::email("email", &request.email)?;
        self.inner.attempts.check_email(&email, from)?;
        let refused = || Status::unauthenticated("the email or password is wrong");
        let researcher = self
            .inner
            .store
            .researcher_by_email(&email)
            .await
            .inspect_err(|err| self.count(err))?;
        // An unknown email is checked against a decoy hash: it takes as long
        // as a wrong password, so timing does not tell which emails exist.
        let hash = researcher.as_ref().map(|r| r.password_hash.clone());
        let matches = grantmesh_auth::verify_password(request.password, hash).await?;
        let researcher = researcher.filter(|_| matches).ok_or_else(refused)?;
        let reply = sessions::open(&self.inner.store, self.keys(), researcher).await?;
        Ok(Response::new(reply))
    }

    #[tracing::instrument(skip_all)]
    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<LoginReply>, Status> {
        self.inner.attempts.check_peer(peer(&request))?;
        let reply = sessions::refresh(
            &self.inner.store,
            self.keys(),
            &request.get_ref().refresh_token,
        )
        .await?;
        Ok(Response::new(reply))
    }

    #[tracing::instrument(skip_all)]
    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutReply>, Status> {
        // The access token, or the refresh token alone once it has expired.
        let refresh_token = &request.get_ref().refresh_token;
        let bearer = match self.keys().bearer(&request) {
            Ok(bearer) => Some(bearer),
            Err(_) if !refresh_token.is_empty() => None,
            Err(status) => return Err(status),
        };
        let ended = sessions::end(&self.inner.store, self.keys(), bearer, refresh_token)
            .await
            .inspect_err(|err| self.count(err))?;
        tracing::info!(researcher = ?bearer.map(|b| b.researcher), ended, "logged out");
        Ok(Response::new(LogoutReply { ended }))
    }

    #[tracing::instrument(skip_all, fields(proposal = %request.get_ref().proposal_id))]
    async fn open_account(
        &self,
        request: Request<OpenAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let call = {
            let open = request.get_ref();
            let terms = grantmesh_auth::AccountTerms {
                proposal: &open.proposal_id,
                award: open.award_minor,
                currency: currency_or_default(&open.currency),
                principal_investigator: &open.principal_investigator_id,
                duration_days: open.duration_days,
            };
            if self.inner.config.require_identity {
                grantmesh_auth::agency::agency_call(&request, &terms)?
            } else {
                grantmesh_auth::AgencyCall {
                    agency: open.agency.clone(),
                    jti: uuid::Uuid::new_v4(),
                    expires_at: std::time::SystemTime::now()
                        + grantmesh_auth::AGENCY_CREDENTIAL_TTL,
                }
            }
        };
        let agency = call.agency;
        let request = request.into_inner();
        let proposal_id = validate::text("proposal_id", &request.proposal_id, 128)?;
        let title = validate::text("title", &request.title, 200)?;
        let principal_investigator = validate::id(
            "principal_investigator_id",
            &request.principal_investigator_id,
        )?;
        let award = validate::amount("award_minor", request.award_minor)?;
        let currency = validate::currency("currency", currency_or_default(&request.currency))?;
        if request.duration_days == 0 || request.duration_days > 3_650 {
            return Err(Status::invalid_argument("duration_days must be 1 to 3650"));
        }
        if !request.agency.is_empty() && request.agency != agency {
            return Err(Status::permission_denied(format!(
                "agency {:?} may not open accounts on behalf of agency {:?}",
                agency, request.agency
            )));
        }
        self.check_band(&agency, award)?;
        let (account, created) = self
            .inner
            .store
            .open_account(&NewAccount {
                proposal_id: &proposal_id,
                agency: &agency,
                title: &title,
                principal_investigator,
                award,
                currency: currency.code(),
                duration_days: request.duration_days,
                credential: Credential {
                    jti: call.jti,
                    expires_at: call.expires_at,
                },
            })
            .await
            .inspect_err(|err| self.count(err))?;
        if created {
            tracing::info!(account = %account.id, %agency, award, "account opened");
        }
        Ok(Response::new(account_message(account)))
    }

    async fn get_account(
        &self,
        request: Request<GetAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let caller = self.keys().researcher(&request)?;
        let id = validate::id("account_id", &request.get_ref().account_id)?;
        let account = self
            .inner
            .store
            .account(id, Some(caller))
            .await
            .inspect_err(|err| self.count(err))?;
        // The principal investigator also sees who is invited.
        let invitations = if account.principal_investigator == caller {
            self.inner
                .store
                .account_invitations(id)
                .await
                .inspect_err(|err| self.count(err))?
        } else {
            Vec::new()
        };
        let mut reply = account_message(account);
        reply.invitations = invitations.into_iter().map(invitation_message).collect();
        Ok(Response::new(reply))
    }

    async fn list_accounts(
        &self,
        request: Request<ListAccountsRequest>,
    ) -> Result<Response<ListAccountsReply>, Status> {
        let caller = self.keys().researcher(&request)?;
        let request = request.into_inner();
        let limit = match request.page_size {
            0 => DEFAULT_ACCOUNTS_PAGE,
            n if n > MAX_ACCOUNTS_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "page_size must be at most {MAX_ACCOUNTS_PAGE}"
                )));
            }
            n => n,
        };
        let after = parse_accounts_token(&request.page_token)?;
        let accounts = self
            .inner
            .store
            .accounts_of(caller, after, i64::from(limit))
            .await
            .inspect_err(|err| self.count(err))?;
        let next_page_token = match accounts.last() {
            Some(last) if accounts.len() == limit as usize => accounts_token(last),
            _ => String::new(),
        };
        Ok(Response::new(ListAccountsReply {
            accounts: accounts.into_iter().map(account_message).collect(),
            next_page_token,
        }))
    }

    /// Invites by email (the store's membership module). The same reply, after
    /// the same work, whether or not the email belongs to a researcher.
    #[tracing::instrument(skip_all, fields(account = %request.get_ref().account_id))]
    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<Account>, Status> {
        let caller = self.keys().researcher(&request)?;
        let account = validate::id("account_id", &request.get_ref().account_id)?;
        let email = validate::email("email", &request.get_ref().email)?;
        let (account, invitations) = self
            .inner
            .store
            .invite(account, caller, &email)
            .await
            .inspect_err(|err| self.count(err))?;
        let mut reply = account_message(account);
        reply.invitations = invitations.into_iter().map(invitation_message).collect();
        Ok(Response::new(reply))
    }

    #[tracing::instrument(skip_all)]
    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<LoginReply>, Status> {
        let from = peer(&request);
        self.inner.attempts.check_peer(from)?;
        let caller = self.keys().researcher(&request)?;
        let request = request.into_inner();
        let store = &self.inner.store;
        let researcher = store
            .researcher(caller)
            .await
            .inspect_err(|err| self.count(err))?
            .ok_or_else(|| {
                Status::unauthenticated("the token names no researcher of this college")
            })?;
        // A stolen token is not a way to guess the password: as logins.
        self.inner.attempts.check_email(&researcher.email, from)?;
        let matches = grantmesh_auth::verify_password(
            request.current_password,
            Some(researcher.password_hash.clone()),
        )
        .await?;
        if !matches {
            return Err(Status::unauthenticated("the current password is wrong"));
        }
        let (password, inputs) = (
            request.new_password,
            [researcher.name.clone(), researcher.email.clone()],
        );
        let password = tokio::task::spawn_blocking(move || {
            let inputs = inputs.each_ref().map(String::as_str);
            grantmesh_auth::check_new_password("new_password", &password, &inputs)
                .map(|()| password)
        })
        .await
        .map_err(|_| Status::internal("the password check was interrupted"))??;
        let hash = grantmesh_auth::hash_password(password).await?;
        let ended = store
            .change_password(caller, &hash)
            .await
            .inspect_err(|err| self.count(err))?;
        let now = SystemTime::now();
        for session in &ended {
            self.keys().revoked().revoke(*session, now);
        }
        tracing::info!(researcher = %caller, sessions_ended = ended.len(), "password changed");
        let researcher = store::ResearcherRow {
            password_hash: hash,
            ..researcher
        };
        let reply = sessions::open(store, self.keys(), researcher).await?;
        Ok(Response::new(reply))
    }

    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<Researcher>, Status> {
        let caller = self.keys().researcher(&request)?;
        let researcher = self.inner.store.researcher(caller).await.inspect_err(|err| self.count(err))?.ok_or_else(|| {
            Status::not_found(format!(
                "researcher {caller} is not registered at this college: the token names no one it knows"
            ))
        })?;
        Ok(Response::new(Researcher {
            researcher_id: researcher.id.to_string(),
            name: researcher.name,
            email: researcher.email,
        }))
    }

    async fn list_invitations(
        &self,
        request: Request<ListInvitationsRequest>,
    ) -> Result<Response<ListInvitationsReply>, Status> {
        let caller = self.keys().researcher(&request)?;
        let invitations = self
            .inner
            .store
            .invitations_for(caller)
            .await
            .inspect_err(|err| self.count(err))?;
        Ok(Response::new(ListInvitationsReply {
            invitations: invitations.into_iter().map(invitation_message).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(invitation = %request.get_ref().invitation_id))]
    async fn accept_invitation(
        &self,
        request: Request<AcceptInvitationRequest>,
    ) -> Result<Response<Account>, Status> {
        let caller = self.keys().researcher(&request)?;
        let invitation = validate::id("invitation_id", &request.get_ref().invitation_id)?;
        let account = self
            .inner
            .store
            .accept_invitation(caller, invitation)
            .await
            .inspect_err(|err| self.count(err))?;
        tracing::info!(account = %account.id, researcher = %caller, "invitation accepted");
        Ok(Response::new(account_message(account)))
    }

    #[tracing::instrument(skip_all, fields(invitation = %request.get_ref().invitation_id))]
    async fn decline_invitation(
        &self,
        request: Request<DeclineInvitationRequest>,
    ) -> Result<Response<DeclineInvitationReply>, Status> {
        let caller = self.keys().researcher(&request)?;
        let invitation = validate::id("invitation_id", &request.get_ref().invitation_id)?;
        self.inner
            .store
            .decline_invitation(caller, invitation)
            .await
            .inspect_err(|err| self.count(err))?;
        Ok(Response::new(DeclineInvitationReply {}))
    }

    #[tracing::instrument(skip_all, fields(account = %request.get_ref().account_id))]
    async fn transfer_principal(
        &self,
        request: Request<TransferPrincipalRequest>,
    ) -> Result<Response<Account>, Status> {
        let caller = self.keys().researcher(&request)?;
        let account = validate::id("account_id", &request.get_ref().account_id)?;
        let researcher = validate::id("researcher_id", &request.get_ref().researcher_id)?;
        let account = self
            .inner
            .store
            .transfer_principal(account, caller, researcher)
            .await
            .inspect_err(|err| self.count(err))?;
        tracing::info!(account = %account.id, principal_investigator = %researcher, "principal investigator handed over");
        Ok(Response::new(account_message(account)))
    }

    #[tracing::instrument(skip_all, fields(account = %request.get_ref().account_id))]
    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<Account>, Status> {
        let caller = self.keys().researcher(&request)?;
        let account = validate::id("account_id", &request.get_ref().account_id)?;
        let researcher = validate::id("researcher_id", &request.get_ref().researcher_id)?;
        let account = self
            .inner
            .store
            .remove_member(account, caller, researcher)
            .await
            .inspect_err(|err| self.count(err))?;
        Ok(Response::new(account_message(account)))
    }

    /// Counted by outcome (`grantmesh_college_withdrawals_total`) whether
    /// it is applied, replayed or refused, and wherever it was refused.
    async fn withdraw(
        &self,
        request: Request<WithdrawRequest>,
    ) -> Result<Response<WithdrawReply>, Status> {
        let metrics = &self.inner.metrics;
        let checked = (|| {
            let caller = self.keys().researcher(&request)?;
            let request = request.get_ref();
            Ok::<_, Status>((
                caller,
                validate::id("account_id", &request.account_id)?,
                validate::amount("amount_minor", request.amount_minor)?,
                validate::idempotency_key("idempotency_key", &request.idempotency_key)?,
                validate::optional_text("memo", &request.memo, 200)?,
            ))
        })();
        let (caller, account, amount, key, memo) = checked
            .inspect_err(|status| metrics.withdrawal_refused(metrics::refusal_of(status)))?;
        let withdrawal = self
            .inner
            .store
            .withdraw(account, caller, amount, &key, &memo)
            .await
            .inspect(|withdrawal| metrics.withdrawal(withdrawal))
            .inspect_err(|err| {
                self.count(err);
                metrics.withdrawal_refused(err.refusal());
            })?;
        Ok(Response::new(WithdrawReply {
            transaction: Some(transaction_message(withdrawal.transaction)),
            balance_minor: withdrawal.balance,
            replayed: withdrawal.replayed,
        }))
    }

    async fn list_transactions(
        &self,
        request: Request<ListTransactionsRequest>,
    ) -> Result<Response<ListTransactionsReply>, Status> {
        let caller = self.keys().researcher(&request)?;
        let request = request.into_inner();
        let account = validate::id("account_id", &request.account_id)?;
        let limit = validate::page_size("page_size", request.page_size, 50, 500)?;
        let before = match request.page_token.as_str() {
            "" => None,
            token => Some(token.parse::<i64>().map_err(|_| {
                Status::invalid_argument(format!(
                    "page_token {} did not come from a previous page",
                    grantmesh_proto::errors::quote(token)
                ))
            })?),
        };
        let mut rows = self
            .inner
            .store
            .transactions(account, caller, before, limit + 1)
            .await
            .inspect_err(|err| self.count(err))?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last()
                .map(|row| row.id.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListTransactionsReply {
            transactions: rows.into_iter().map(transaction_message).collect(),
            next_page_token,
        }))
    }

    type WatchAccountStream = EventStream<AccountEvent>;

    async fn watch_account(
        &self,
        request: Request<WatchAccountRequest>,
    ) -> Result<Response<Self::WatchAccountStream>, Status> {
        let caller = self.keys().researcher(&request)?;
        let account = validate::id("account_id", &request.get_ref().account_id)?;
        let peer = grantmesh_server::Caller::of(&request)
            .map_or(grantmesh_server::Peer::Unknown, |caller| caller.peer);
        let permit = self.inner.watchers.admit(caller, peer)?;
        let notices = self
            .inner
            .notifications
            .subscribe()
            .await
            .map_err(|err| Status::unavailable(err.to_string()))?;
        let stream = watch::watch(
            permit,
            self.inner.store.clone(),
            notices,
            account,
            caller,
            self.inner.closing.clone(),
        )
        .await?;
        Ok(Response::new(stream))
    }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        grantmesh_server::ping(request, &self.inner.config.instance_id, SERVICE).await
    }
}

/// The caller's address, for the per-peer limits (none when not over TCP).
fn peer<T>(request: &Request<T>) -> Option<std::net::IpAddr> {
    request.remote_addr().map(|addr| addr.ip())
}

/// Accounts on one `ListAccounts` page by default, and at most: a page is
/// one query for the accounts and one for their members.
const DEFAULT_ACCOUNTS_PAGE: u32 = 50;
const MAX_ACCOUNTS_PAGE: u32 = 100;

/// Page tokens are the `(opened_at, id)` cursor of the page's last account.
fn accounts_token(last: &AccountRow) -> String {
    grantmesh_proto::paging::token(last.opened_at, &last.id.to_string())
}

fn parse_accounts_token(token: &str) -> Result<Option<(SystemTime, uuid::Uuid)>, Status> {
    grantmesh_proto::paging::parse(token)
}

fn timestamp(time: SystemTime) -> Option<prost_types::Timestamp> {
    Some(time.into())
}

/// The currency an `OpenAccount` names; agencies from before currencies
/// name none, and awarded in USD.
fn currency_or_default(currency: &str) -> &str {
    if currency.is_empty() {
        grantmesh_proto::money::DEFAULT_CURRENCY
    } else {
        currency
    }
}

pub(crate) fn account_message(account: AccountRow) -> Account {
    let state = if account.expired {
        account::State::Expired
    } else {
        account::State::Open
    };
    Account {
        account_id: account.id.to_string(),
        proposal_id: account.proposal_id,
        agency: account.agency,
        title: account.title,
        award_minor: account.award,
        balance_minor: account.balance,
        currency: account.currency,
        opened_at: timestamp(account.opened_at),
        expires_at: timestamp(account.expires_at),
        state: state as i32,
        members: account
            .members
            .into_iter()
            .map(|m| Member {
                researcher_id: m.researcher_id.to_string(),
                name: m.name,
                email: m.email,
                role: if m.principal_investigator {
                    member::Role::PrincipalInvestigator
                } else {
                    member::Role::Member
                } as i32,
            })
            .collect(),
        invitations: Vec::new(),
    }
}

fn invitation_message(row: store::InvitationRow) -> Invitation {
    Invitation {
        invitation_id: row.id.to_string(),
        account_id: row.account_id.to_string(),
        account_title: row.account_title,
        email: row.email,
        invited_by_name: row.invited_by_name,
        invited_by_email: row.invited_by_email,
        invited_at: timestamp(row.invited_at),
    }
}

pub(crate) fn transaction_message(row: TransactionRow) -> Transaction {
    Transaction {
        transaction_id: row.id.to_string(),
        account_id: row.account_id.to_string(),
        researcher_id: row.researcher_id.to_string(),
        amount_minor: row.amount,
        memo: row.memo,
        idempotency_key: row.idempotency_key,
        created_at: timestamp(row.created_at),
        balance_after_minor: row.balance_after,
    }
}
