//! The well-behaved side of the soak: researchers who propose, have their
//! account opened, withdraw and read it, and a watcher of `college` on the
//! registry. Every call is timed end to end, retries included.
//!
//! A well-behaved client retries RESOURCE_EXHAUSTED and UNAVAILABLE — the
//! answers an overloaded server documents for "not now, try again" — with
//! backoff, for at most [`RETRY_BUDGET`]; any other error, or no answer
//! within [`CALL_TIMEOUT`], is a failure of the soak.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use grantmesh_proto::v1::watch_event::Kind as EventKind;
use grantmesh_proto::v1::*;
use grantmesh_proto::{AgencyClient, CollegeClient, RegistryClient};
use hdrhistogram::Histogram;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Status};
use uuid::Uuid;

use crate::support::{authed, tls};

/// How long one attempt may go unanswered before the soak counts it failed:
/// far beyond the latency bound, so only a hang trips it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call keeps retrying RESOURCE_EXHAUSTED/UNAVAILABLE.
pub const RETRY_BUDGET: Duration = Duration::from_secs(20);
/// First retry delay; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// What a researcher withdraws each time: 1,000 withdrawals fit a minimum award.
pub const WITHDRAWAL: i64 = 300;

/// What one kind of call did.
pub struct CallStats {
    /// End-to-end latency in microseconds, retries included.
    pub latency: Histogram<u64>,
    /// Attempts answered RESOURCE_EXHAUSTED/UNAVAILABLE and retried, by code.
    pub retried: BTreeMap<String, u64>,
    /// Calls that failed for good, by reason.
    pub failed: BTreeMap<String, u64>,
    /// The first few failures, in full.
    pub examples: Vec<String>,
}

impl CallStats {
    fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            retried: BTreeMap::new(),
            failed: BTreeMap::new(),
            examples: Vec::new(),
        }
    }
}

/// Every well-behaved call, by kind.
#[derive(Default)]
pub struct Stats {
    pub calls: Mutex<BTreeMap<&'static str, CallStats>>,
    /// Withdrawals acknowledged (fresh or replayed), to check against the journal.
    pub withdrawals: AtomicU64,
}

impl Stats {
    fn with<R>(&self, kind: &'static str, f: impl FnOnce(&mut CallStats) -> R) -> R {
        let mut calls = self.calls.lock().unwrap();
        f(calls.entry(kind).or_insert_with(CallStats::new))
    }

    pub fn ok(&self, kind: &'static str, took: Duration, retried: &[Code]) {
        self.with(kind, |s| {
            s.latency.saturating_record(took.as_micros().max(1) as u64);
            for code in retried {
                *s.retried.entry(format!("{code:?}")).or_default() += 1;
            }
        });
    }

    pub fn fail(&self, kind: &'static str, reason: String, detail: String) {
        self.with(kind, |s| {
            *s.failed.entry(reason).or_default() += 1;
            if s.examples.len() < 3 {
                s.examples.push(detail);
            }
        });
    }

    /// Every failure, as "kind: reason ×n".
    pub fn failures(&self) -> Vec<String> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .flat_map(|(kind, s)| {
                s.failed.iter().map(move |(reason, n)| {
                    format!("{kind}: {reason} ×{n} (e.g. {:?})", s.examples)
                })
            })
            .collect()
    }
}

/// Makes one call the way a well-behaved client does: retries
/// RESOURCE_EXHAUSTED/UNAVAILABLE with backoff, and records the outcome.
pub async fn call<T, F, Fut>(stats: &Stats, kind: &'static str, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let started = Instant::now();
    let mut retried = Vec::new();
    let mut backoff = FIRST_BACKOFF;
    loop {
        match tokio::time::timeout(CALL_TIMEOUT, attempt()).await {
            Ok(Ok(reply)) => {
                stats.ok(kind, started.elapsed(), &retried);
                return Some(reply.into_inner());
            }
            Ok(Err(status))
                if matches!(status.code(), Code::ResourceExhausted | Code::Unavailable)
                    && started.elapsed() + backoff < RETRY_BUDGET =>
            {
                retried.push(status.code());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Ok(Err(status)) => {
                let reason = if retried.is_empty() {
                    format!("{:?}", status.code())
                } else {
                    format!("{:?} after {} retries", status.code(), retried.len())
                };
                stats.fail(kind, reason, status.message().chars().take(200).collect());
                return None;
            }
            Err(_) => {
                stats.fail(
                    kind,
                    format!("no answer within {CALL_TIMEOUT:?}"),
                    String::new(),
                );
                return None;
            }
        }
    }
}

/// Signs up and logs in a researcher at `college`; returns the token.
/// Done before the abuse starts: logins from this address are then rate
/// limited by the flood, as they should be.
pub async fn researcher(college: &str, name: &str) -> String {
    let mut college = CollegeClient::new(tls::channel(college).await);
    let email = format!("{name}-{}@university.edu", Uuid::new_v4().simple());
    crate::support::sign_up(&mut college, name, &email, "correct horse battery staple")
        .await
        .token
}

/// Where the researchers call.
#[derive(Clone)]
pub struct Targets {
    pub agency: AgencyClient<Channel>,
    pub colleges: Vec<CollegeClient<Channel>>,
}

impl Targets {
    pub async fn connect(agency: &str, colleges: &[String]) -> Targets {
        let mut clients = Vec::new();
        for url in colleges {
            clients.push(CollegeClient::new(tls::channel(url).await));
        }
        Targets {
            agency: AgencyClient::new(tls::channel(agency).await),
            colleges: clients,
        }
    }
}

/// One researcher's loop until `stop`: propose, wait for the account, then
/// three withdrawals and a read, alternating colleges.
pub async fn researcher_loop(
    targets: Targets,
    token: String,
    stats: &Stats,
    stop: CancellationToken,
) {
    let mut round = 0usize;
    while !stop.is_cancelled() {
        let request = SubmitProposalRequest {
            title: format!("Soak round {round}"),
            description: String::new(),
            requested_amount_minor: 400_000,
            duration_days: 365,
            idempotency_key: Uuid::new_v4().to_string(),
        };
        let Some(proposal) = call(stats, "SubmitProposal", || {
            let mut agency = targets.agency.clone();
            let request = authed(request.clone(), &token);
            async move { agency.submit_proposal(request).await }
        })
        .await
        else {
            continue;
        };
        if proposal.decision() != proposal::Decision::Accepted {
            stats.fail(
                "SubmitProposal",
                "not accepted".into(),
                proposal.reason.clone(),
            );
            continue;
        }
        let mut account_id = proposal.account_id.clone();
        let waiting = Instant::now();
        while account_id.is_empty() && waiting.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let request = GetProposalRequest {
                proposal_id: proposal.proposal_id.clone(),
            };
            if let Some(p) = call(stats, "GetProposal", || {
                let mut agency = targets.agency.clone();
                let request = authed(request.clone(), &token);
                async move { agency.get_proposal(request).await }
            })
            .await
            {
                account_id = p.account_id;
            }
        }
        if account_id.is_empty() {
            stats.fail(
                "SubmitProposal",
                "no account within 30 s".into(),
                proposal.proposal_id,
            );
            continue;
        }
        for n in 0..3 {
            let college = &targets.colleges[(round + n) % targets.colleges.len()];
            let request = WithdrawRequest {
                account_id: account_id.clone(),
                amount_minor: WITHDRAWAL,
                idempotency_key: Uuid::new_v4().to_string(),
                memo: "soak".into(),
            };
            if call(stats, "Withdraw", || {
                let mut college = college.clone();
                let request = authed(request.clone(), &token);
                async move { college.withdraw(request).await }
            })
            .await
            .is_some()
            {
                stats.withdrawals.fetch_add(1, Ordering::Relaxed);
            }
        }
        let college = &targets.colleges[round % targets.colleges.len()];
        let request = GetAccountRequest {
            account_id: account_id.clone(),
        };
        call(stats, "GetAccount", || {
            let mut college = college.clone();
            let request = authed(request.clone(), &token);
            async move { college.get_account(request).await }
        })
        .await;
        round += 1;
    }
}

/// What the long-lived watcher saw.
#[derive(Debug, Default)]
pub struct Watched {
    pub events: u64,
    /// The colleges it knew of when the soak ended.
    pub colleges: usize,
    /// Why its stream ended before the soak did, if it did.
    pub broken: Option<String>,
}

/// A watcher of `college` that follows one stream for the whole soak, and
/// every [`WATCH_PROBE_EVERY`] opens a fresh Watch (timed to its snapshot)
/// and lists the colleges.
pub async fn watcher(registry: String, stats: &Stats, stop: CancellationToken) -> Watched {
    const WATCH_PROBE_EVERY: Duration = Duration::from_secs(2);
    let channel = tls::channel(&registry).await;
    let mut follower = RegistryClient::new(tls::channel(&registry).await);
    let mut stream = follower
        .watch(WatchRequest {
            service: "college".into(),
        })
        .await
        .expect("the long-lived watch starts")
        .into_inner();
    let mut watched = Watched::default();
    let mut known: HashSet<String> = HashSet::new();
    let mut probe = tokio::time::interval(WATCH_PROBE_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            message = stream.message() => match message {
                Ok(Some(event)) => {
                    watched.events += 1;
                    match event.kind() {
                        EventKind::Snapshot => {
                            known = event.instances.iter().map(|i| i.id.clone()).collect();
                        }
                        EventKind::Put => known.extend(event.instances.iter().map(|i| i.id.clone())),
                        EventKind::Delete => {
                            for i in &event.instances {
                                known.remove(&i.id);
                            }
                        }
                        _ => {}
                    }
                }
                Ok(None) => { watched.broken = Some("the stream ended".into()); break; }
                Err(status) => { watched.broken = Some(format!("{status:?}")); break; }
            },
            _ = probe.tick() => {
                let request = WatchRequest { service: "college".into() };
                call(stats, "Watch (to snapshot)", || {
                    let mut client = RegistryClient::new(channel.clone());
                    let request = request.clone();
                    async move {
                        let mut stream = client.watch(request).await?.into_inner();
                        match stream.message().await? {
                            Some(first) => Ok(tonic::Response::new(first)),
                            None => Err(Status::internal("the watch ended before its snapshot")),
                        }
                    }
                })
                .await;
                let request = ListInstancesRequest { service: "college".into() };
                call(stats, "ListInstances", || {
                    let mut client = RegistryClient::new(channel.clone());
                    let request = request.clone();
                    async move { client.list_instances(request).await }
                })
                .await;
            }
        }
    }
    watched.colleges = known.len();
    watched
}

/// Signs up a researcher with `email` (the login flood's victim).
pub async fn researcher_with_email(college: &str, email: &str) {
    let mut college = CollegeClient::new(tls::channel(college).await);
    crate::support::sign_up(
        &mut college,
        "Victim",
        email,
        "correct horse battery staple",
    )
    .await;
}
