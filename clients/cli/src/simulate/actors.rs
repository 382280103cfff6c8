//! The simulated researchers: per project a professor who signs up, proposes
//! and, once funded, adds students; then professor and students spend
//! concurrently until the account is empty or has expired.
//!
//! Every call goes through the registry and the balancer, as a real client's
//! would. What the service acknowledged is written to the project's
//! [`Acknowledged`] ledger as it happens (a key is marked as in doubt before
//! it is sent), so the ledger is right even when `--max-duration` stops an
//! actor in the middle of a call.

use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grantmesh_discovery::{Balancer, Resend};
use grantmesh_proto::v1::*;
use grantmesh_proto::{AgencyClient, CollegeClient};
use rand::rngs::StdRng;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use super::audit::{Ack, Acknowledged};
use super::plan::{self, Action, PROFESSOR};
use super::summary::{Refusal, Tally};

/// The password of every simulated researcher (they are throwaway
/// accounts); strong enough for the College's sign-up check.
const PASSWORD: &str = "orbital kettle lantern";

/// The longest one call may take before it counts as failed (its outcome
/// then unknown). Generous next to a normal call of a few milliseconds, and
/// well inside the default `--max-duration`.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Attempts at submitting a proposal. An accepted proposal whose account a
/// college has not opened yet comes back UNAVAILABLE ("retry with the same
/// idempotency key"); the agency's reconciler opens it soon after.
const PROPOSAL_ATTEMPTS: u32 = 5;

/// Pause between proposal attempts: about the agency's reconcile interval.
const PROPOSAL_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Attempts at a sign-up or login that a College holds back with
/// RESOURCE_EXHAUSTED (every simulated researcher signs up from this one
/// address, past the College's per-address burst in a large run), one
/// [`SIGN_UP_PAUSE`] apart: as a real client retrying when told to.
const SIGN_UP_ATTEMPTS: u32 = 60;
const SIGN_UP_PAUSE: Duration = Duration::from_secs(1);

/// Runs `call` again while the College answers RESOURCE_EXHAUSTED.
async fn patiently<T, Fut>(call: impl Fn() -> Fut) -> Result<T, Status>
where
    Fut: Future<Output = Result<T, Status>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Err(status)
                if status.code() == Code::ResourceExhausted && attempt < SIGN_UP_ATTEMPTS =>
            {
                attempt += 1;
                tokio::time::sleep(SIGN_UP_PAUSE).await;
            }
            other => return other,
        }
    }
}

/// Consecutive failed calls after which an actor gives up: the mesh is
/// unreachable, and hammering it further measures nothing.
const MAX_CONSECUTIVE_ERRORS: u32 = 20;

/// What the actors share for one run.
pub struct World {
    /// One balancer per agency (by its `agency` label), never one over every
    /// agency: a retried proposal must go back to the agency that has it, or
    /// two agencies could each decide the same proposal.
    pub agencies: Vec<Balancer>,
    pub colleges: Balancer,
    /// Unique per run; in emails and idempotency keys so runs never collide.
    pub run_id: String,
    /// Where the colleges keep the codes they mail (their `--mail-outbox`).
    pub outbox: std::path::PathBuf,
    pub seed: u64,
    pub students: u32,
    pub requests: RangeInclusive<i64>,
    pub days: RangeInclusive<u32>,
    pub retry_percent: u8,
    pub tally: Arc<Mutex<Tally>>,
    /// The ledger of every account opened, registered before anyone spends.
    pub ledgers: Mutex<Vec<(Uuid, Arc<Mutex<Acknowledged>>)>>,
}

/// A researcher who has signed up and logged in.
struct Researcher {
    email: String,
    token: String,
}

/// An account opened for a project, as its actors share it.
struct Funded {
    account_id: String,
    award: i64,
    /// What the service acknowledged for this account.
    ledger: Arc<Mutex<Acknowledged>>,
}

impl Funded {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Acknowledged> {
        self.ledger.lock().expect("ledger lock")
    }
}

/// What a look at the account showed.
enum Look {
    Open {
        balance: i64,
    },
    /// Empty or expired: nothing more to do.
    Done,
}

/// How one withdrawal call ended, for the actor's next move.
enum Outcome {
    Applied {
        balance: i64,
    },
    Refused(Refusal),
    /// No definite answer: the withdrawal may or may not have been applied.
    InDoubt,
}

/// How long a simulated researcher waits for the code a college mails.
const CODE_WAIT: Duration = Duration::from_secs(30);

/// The code mailed to `email`, read from the colleges' outbox as it arrives.
async fn mailed_code(outbox: &std::path::Path, email: &str) -> Result<String, Status> {
    let deadline = tokio::time::Instant::now() + CODE_WAIT;
    loop {
        let letter = grantmesh_mail::outbox::latest_to(outbox, email)
            .map_err(|err| Status::internal(format!("reading {}: {err}", outbox.display())))?;
        if let Some(code) = letter.and_then(|l| grantmesh_auth::signup::code_in(&l.body)) {
            return Ok(code);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Status::deadline_exceeded(format!(
                "no code for {email} reached the outbox {} within {CODE_WAIT:?} \
                 (is it the colleges' --mail-outbox?)",
                outbox.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl World {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().expect("tally lock")
    }

    /// Runs one project from sign-up to the end of its account; failures to
    /// get that far are counted, not returned.
    pub async fn project(self: Arc<Self>, project: u32) {
        if let Err((step, status)) = self.run_project(project).await {
            let key = format!("{step}: {:?}", status.code());
            tracing::warn!(project, step, error = %status, "simulated project failed");
            let mut tally = self.tally();
            *tally.failed.entry(key).or_default() += 1;
            // One message in full, for the summary: the counts by code alone
            // do not say why ("no registry answered at … speaks TLS: use https://").
            tally
                .first_failure
                .get_or_insert_with(|| format!("{step}: {}", status.message()));
        }
    }

    async fn run_project(self: &Arc<Self>, project: u32) -> Result<(), (&'static str, Status)> {
        let mut rng = plan::actor_rng(self.seed, project, PROFESSOR);
        let proposed = plan::proposal(&mut rng, self.requests.clone(), self.days.clone());
        let professor = self
            .sign_up(project, PROFESSOR)
            .await
            .map_err(|s| ("sign up", s))?;
        let decision = self
            .propose(project, &professor, proposed)
            .await
            .map_err(|s| ("propose", s))?;
        if decision.decision() != proposal::Decision::Accepted {
            // Grouped by reason, so the one amount that differs between
            // proposals is left out of it ("the requested amount is outside …").
            let reason = decision
                .reason
                .replace(&format!(" {} ", proposed.amount), " ");
            *self.tally().rejected.entry(reason).or_default() += 1;
            return Ok(());
        }
        let account_id = decision.account_id;
        let account: Uuid = account_id.parse().map_err(|_| {
            (
                "propose",
                Status::internal(format!("the agency answered account id {account_id:?}")),
            )
        })?;
        let ledger = Arc::new(Mutex::new(Acknowledged::default()));
        self.ledgers
            .lock()
            .expect("ledgers lock")
            .push((account, Arc::clone(&ledger)));
        {
            let mut tally = self.tally();
            tally.accepted += 1;
            tally.accounts.push(account_id.clone());
        }

        let mut members = vec![(PROFESSOR, professor.token.clone(), rng)];
        for member in 1..=self.students {
            let student = self
                .sign_up(project, member)
                .await
                .map_err(|s| ("sign up a student", s))?;
            let message = AddMemberRequest {
                account_id: account_id.clone(),
                email: student.email.clone(),
            };
            // Adding is an invitation, which the student accepts.
            let invited = self
                .college(Some(&professor.token), message, |mut c, r| async move {
                    c.add_member(r).await
                })
                .await
                .map_err(|s| ("invite a student", s))?;
            let invitation_id = invited
                .invitations
                .iter()
                .find(|i| i.email.eq_ignore_ascii_case(&student.email))
                .map(|i| i.invitation_id.clone())
                .ok_or_else(|| {
                    (
                        "invite a student",
                        Status::internal("the reply lists no invitation for the student"),
                    )
                })?;
            // No idempotency key: sent again only if it never reached a College.
            self.college_once(
                Some(&student.token),
                AcceptInvitationRequest { invitation_id },
                |mut c, r| async move { c.accept_invitation(r).await },
            )
            .await
            .map_err(|s| ("accept the invitation", s))?;
            members.push((
                member,
                student.token,
                plan::actor_rng(self.seed, project, member),
            ));
        }
        let award = self
            .college(
                Some(&professor.token),
                GetAccountRequest {
                    account_id: account_id.clone(),
                },
                |mut c, r| async move { c.get_account(r).await },
            )
            .await
            .map_err(|s| ("read the new account", s))?
            .award_minor;

        let funded = Arc::new(Funded {
            account_id,
            award,
            ledger,
        });
        self.tally().running += 1;
        // Dropping the set (when the run is stopped) stops the actors too.
        let mut actors = JoinSet::new();
        for (member, token, rng) in members {
            let world = Arc::clone(self);
            let funded = Arc::clone(&funded);
            actors.spawn(async move {
                world.spend(project, member, &token, rng, &funded).await;
            });
        }
        while actors.join_next().await.is_some() {}
        self.tally().running -= 1;
        Ok(())
    }

    async fn sign_up(&self, project: u32, member: u32) -> Result<Researcher, Status> {
        let (name, role) = if member == PROFESSOR {
            (format!("Professor {project}"), "professor".to_owned())
        } else {
            (
                format!("Student {project}.{member}"),
                format!("student{member}"),
            )
        };
        let email = format!(
            "{}-p{project}-{role}@simulation.grantmesh.test",
            self.run_id
        );
        let register = RegisterResearcherRequest {
            name,
            email: email.clone(),
            password: PASSWORD.to_owned(),
        };
        patiently(|| {
            self.college(None, register.clone(), |mut c, r| async move {
                c.register_researcher(r).await
            })
        })
        .await?;
        let code = mailed_code(&self.outbox, &email).await?;
        let verify = VerifyEmailRequest {
            email: email.clone(),
            code,
            password: PASSWORD.to_owned(),
        };
        let token = patiently(|| {
            self.college(None, verify.clone(), |mut c, r| async move {
                c.verify_email(r).await
            })
        })
        .await?
        .token;
        Ok(Researcher { email, token })
    }

    async fn propose(
        &self,
        project: u32,
        professor: &Researcher,
        proposed: plan::Proposal,
    ) -> Result<Proposal, Status> {
        let message = SubmitProposalRequest {
            title: format!("Simulated project {project}"),
            description: format!("seed {}", self.seed),
            requested_amount_minor: proposed.amount,
            duration_days: proposed.days,
            idempotency_key: format!("{}-proposal-{project}", self.run_id),
        };
        // Projects go to the agencies in turn; every attempt of one project
        // goes to the same agency.
        let agency = &self.agencies[project as usize % self.agencies.len()];
        let mut attempt = 1;
        loop {
            let message = message.clone();
            let token = professor.token.as_str();
            let reply = agency
                .call(|channel| {
                    let request = authorized(message.clone(), Some(token));
                    async move {
                        AgencyClient::new(channel)
                            .submit_proposal(request?)
                            .await
                            .map(Response::into_inner)
                    }
                })
                .await;
            match reply {
                Err(status)
                    if status.code() == Code::Unavailable && attempt < PROPOSAL_ATTEMPTS =>
                {
                    attempt += 1;
                    tokio::time::sleep(PROPOSAL_RETRY_PAUSE).await;
                }
                reply => return reply,
            }
        }
    }

    /// One actor's life: steps drawn from its generator until the account
    /// is empty, has expired, or the mesh stops answering.
    async fn spend(
        &self,
        project: u32,
        member: u32,
        token: &str,
        mut rng: StdRng,
        funded: &Funded,
    ) {
        let account_id = funded.account_id.as_str();
        let mut sent = 0u64;
        let mut errors = 0;
        // What this actor last saw left in the account.
        let mut left = funded.award;
        while errors < MAX_CONSECUTIVE_ERRORS {
            let step = plan::step(&mut rng, funded.award, self.retry_percent);
            tokio::time::sleep(step.pause).await;
            match step.action {
                Action::Look => match self.look(token, account_id).await {
                    Some(Look::Open { balance }) => {
                        errors = 0;
                        left = balance;
                    }
                    Some(Look::Done) => return,
                    None => errors += 1,
                },
                Action::Withdraw {
                    amount,
                    large,
                    retry,
                } => {
                    // Researchers ask for what they saw left, except for
                    // the deliberately large requests.
                    let amount = if large {
                        amount
                    } else {
                        amount.min(left).max(1)
                    };
                    sent += 1;
                    let key = format!("{}-{project}-{member}-{sent}", self.run_id);
                    let outcome = self.withdraw(token, funded, amount, &key).await;
                    // A call without an answer is always sent again with its
                    // key, as a careful client would, to learn its outcome.
                    let again = match outcome {
                        Outcome::Applied { .. } => retry,
                        Outcome::InDoubt => true,
                        Outcome::Refused(_) => false,
                    };
                    let outcome = if again {
                        funded.ledger().retrying(&key);
                        match self.withdraw(token, funded, amount, &key).await {
                            Outcome::InDoubt => outcome,
                            second => second,
                        }
                    } else {
                        outcome
                    };
                    match outcome {
                        Outcome::Applied { balance } => {
                            errors = 0;
                            left = balance;
                            if balance == 0 {
                                return;
                            }
                        }
                        Outcome::Refused(Refusal::Expired) => return,
                        // Refused: look at what is left, as a researcher would.
                        Outcome::Refused(Refusal::InsufficientFunds) => {
                            match self.look(token, account_id).await {
                                Some(Look::Open { balance }) => {
                                    errors = 0;
                                    left = balance;
                                }
                                Some(Look::Done) => return,
                                None => errors += 1,
                            }
                        }
                        Outcome::Refused(Refusal::Other) | Outcome::InDoubt => errors += 1,
                    }
                }
            }
        }
        tracing::warn!(
            project,
            member,
            "simulated researcher gave up after {MAX_CONSECUTIVE_ERRORS} failed calls in a row"
        );
    }

    /// Reads the account: `None` when the call failed.
    async fn look(&self, token: &str, account_id: &str) -> Option<Look> {
        let message = GetAccountRequest {
            account_id: account_id.to_owned(),
        };
        let account = self
            .college(Some(token), message, |mut c, r| async move {
                c.get_account(r).await
            })
            .await
            .ok()?;
        Some(
            if account.state() == account::State::Expired || account.balance_minor == 0 {
                Look::Done
            } else {
                Look::Open {
                    balance: account.balance_minor,
                }
            },
        )
    }

    /// One `Withdraw` call, recorded in the ledger and the tally.
    async fn withdraw(&self, token: &str, funded: &Funded, amount: i64, key: &str) -> Outcome {
        let message = WithdrawRequest {
            account_id: funded.account_id.clone(),
            amount_minor: amount,
            idempotency_key: key.to_owned(),
            memo: "simulated spending".to_owned(),
        };
        funded.ledger().sending(key);
        let started = Instant::now();
        let reply = self
            .college(Some(token), message, |mut c, r| async move {
                c.withdraw(r).await
            })
            .await;
        let took = started.elapsed();
        let mut tally = self.tally();
        tally.record_latency(took);
        match reply {
            Ok(reply) => {
                let transaction = reply.transaction.unwrap_or_default();
                // An id that does not parse can match no journal entry, so
                // the audit reports it.
                let ack = Ack {
                    transaction_id: transaction.transaction_id.parse().unwrap_or(-1),
                    amount: transaction.amount_minor,
                };
                funded.ledger().acknowledged(key, ack);
                if reply.replayed {
                    tally.replayed += 1;
                } else {
                    tally.applied += 1;
                    tally.money_moved += transaction.amount_minor;
                }
                Outcome::Applied {
                    balance: reply.balance_minor,
                }
            }
            Err(status) => {
                let refusal = refusal(&status);
                tally.refuse(refusal);
                if refusal == Refusal::Other {
                    *tally
                        .other_errors
                        .entry(format!("{:?}", status.code()))
                        .or_default() += 1;
                }
                if is_definite(&status) {
                    funded.ledger().refused(key);
                    Outcome::Refused(refusal)
                } else {
                    Outcome::InDoubt
                }
            }
        }
    }

    /// Calls a College through the balancer with a fresh request per attempt.
    async fn college<T, R, F, Fut>(
        &self,
        token: Option<&str>,
        message: T,
        call: F,
    ) -> Result<R, Status>
    where
        T: Clone,
        F: Fn(CollegeClient<Channel>, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        self.college_with(Resend::WhenUnavailable, token, message, call)
            .await
    }

    /// As [`World::college`], for a call that must not run twice.
    async fn college_once<T, R, F, Fut>(
        &self,
        token: Option<&str>,
        message: T,
        call: F,
    ) -> Result<R, Status>
    where
        T: Clone,
        F: Fn(CollegeClient<Channel>, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        self.college_with(Resend::WhenNotSent, token, message, call)
            .await
    }

    async fn college_with<T, R, F, Fut>(
        &self,
        resend: Resend,
        token: Option<&str>,
        message: T,
        call: F,
    ) -> Result<R, Status>
    where
        T: Clone,
        F: Fn(CollegeClient<Channel>, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        self.colleges
            .call_with(resend, |channel| {
                let request = authorized(message.clone(), token);
                let client = CollegeClient::new(channel);
                let call = request.map(|request| call(client, request));
                async move { call?.await.map(Response::into_inner) }
            })
            .await
    }
}

/// A request with the call timeout and, when given, the bearer token.
fn authorized<T>(message: T, token: Option<&str>) -> Result<Request<T>, Status> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    if let Some(token) = token {
        grantmesh_auth::authorize(&mut request, token)?;
    }
    Ok(request)
}

/// Why a withdrawal was refused, from the College's status.
fn refusal(status: &Status) -> Refusal {
    if status.code() != Code::FailedPrecondition {
        return Refusal::Other;
    }
    if status.message().contains("has expired") {
        Refusal::Expired
    } else if status.message().contains("insufficient funds") {
        Refusal::InsufficientFunds
    } else {
        Refusal::Other
    }
}

/// Whether the College certainly did not apply a withdrawal that failed
/// with `status`: it checked and refused. Anything else (unavailable, timed
/// out, internal) leaves the outcome in doubt.
fn is_definite(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::FailedPrecondition
            | Code::InvalidArgument
            | Code::NotFound
            | Code::PermissionDenied
            | Code::Unauthenticated
    )
}
