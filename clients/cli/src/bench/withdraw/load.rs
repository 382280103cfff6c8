//! The mesh's side of the bench: calls through the registry, the College
//! children and a client [`Balancer`], as any client of the mesh makes them.
//!
//! [`researcher`] and [`open_accounts`] make the bench's data through the
//! real API. [`run_load`] runs client tasks calling back to back for a
//! warm-up and a measured window; [`withdraw_load`] and [`floor_load`] are
//! its two loads: withdrawals of 1, and the same call refused by validation
//! (`bench heartbeat` drives its own calls with [`run_load`] too).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use grantmesh_auth::{AccountTerms, AgencySigner};
use grantmesh_discovery::Balancer;
use grantmesh_proto::CollegeClient;
use grantmesh_proto::v1::{
    OpenAccountRequest, RegisterResearcherRequest, VerifyEmailRequest, WithdrawReply,
    WithdrawRequest,
};
use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::measure::{Measured, Sampler, histogram};
use super::{MEMO, WithdrawArgs};

/// The agency whose certificate opens the bench accounts.
pub(super) const AGENCY: &str = "bench-agency";
/// Each bench account's award, in minor units: more than any run can withdraw
/// at 1 per call, so no withdrawal is refused for want of funds.
const AWARD: i64 = 1_000_000_000_000;

/// The bench colleges' `--agencies`: they know the bench agency, with a band
/// of exactly the bench award.
pub(super) fn college_agencies() -> String {
    format!("{AGENCY}={AWARD}..{AWARD}")
}

/// Signs the bench researcher up, reading the code from the colleges'
/// `outbox`, which logs them in: (researcher id, bearer token).
pub(super) async fn researcher(
    balancer: &Balancer,
    outbox: &std::path::Path,
) -> anyhow::Result<(String, String)> {
    const EMAIL: &str = "bench@example.org";
    const PASSWORD: &str = "orbital kettle lantern";
    balancer
        .call(|channel| async move {
            CollegeClient::new(channel)
                .register_researcher(RegisterResearcherRequest {
                    name: "Bench Researcher".into(),
                    email: EMAIL.into(),
                    password: PASSWORD.into(),
                })
                .await
        })
        .await
        .context("RegisterResearcher failed")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        let letter = grantmesh_mail::outbox::latest_to(outbox, EMAIL)?;
        if let Some(code) = letter.and_then(|l| grantmesh_auth::signup::code_in(&l.body)) {
            break code;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no sign-up code reached {} within 30 s",
            outbox.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reply = balancer
        .call(|channel| {
            let code = code.clone();
            async move {
                CollegeClient::new(channel)
                    .verify_email(VerifyEmailRequest {
                        email: EMAIL.into(),
                        code,
                        password: PASSWORD.into(),
                    })
                    .await
            }
        })
        .await
        .context("VerifyEmail failed")?
        .into_inner();
    let id = reply
        .researcher
        .context("VerifyEmail named no researcher")?
        .researcher_id;
    Ok((id, reply.token))
}

/// Opens `n` accounts with the bench researcher as principal investigator,
/// through `balancer` (which presents the bench agency's certificate) with
/// credentials of `signer` (`None` in plaintext); their ids, in order.
pub(super) async fn open_accounts(
    balancer: &Balancer,
    signer: Option<&AgencySigner>,
    researcher: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    for k in 1..=n {
        let request = OpenAccountRequest {
            proposal_id: format!("bench-{k}"),
            agency: AGENCY.into(),
            principal_investigator_id: researcher.to_owned(),
            title: format!("Bench account {k}"),
            award_minor: AWARD,
            duration_days: 3_650,
            currency: grantmesh_proto::money::DEFAULT_CURRENCY.into(),
        };
        let account = balancer
            .call(|channel| {
                // One credential per call, bound to the account's terms.
                let terms = AccountTerms {
                    proposal: &request.proposal_id,
                    award: AWARD,
                    currency: &request.currency,
                    principal_investigator: &request.principal_investigator_id,
                    duration_days: request.duration_days,
                };
                let credential = signer.map(|signer| signer.credential(AGENCY, &terms));
                let mut request = tonic::Request::new(request.clone());
                let authorized = match credential {
                    Some(credential) => {
                        credential
                            .map_err(tonic::Status::internal)
                            .and_then(|credential| {
                                grantmesh_auth::authorize(&mut request, &credential)
                            })
                    }
                    None => Ok(()),
                };
                async move {
                    authorized?;
                    CollegeClient::new(channel).open_account(request).await
                }
            })
            .await
            .context("OpenAccount failed")?
            .into_inner();
        ids.push(account.account_id);
    }
    Ok(ids)
}

/// What one load run through the mesh gave.
pub(in crate::bench) struct MeshOutcome {
    /// Rate, latency and CPU of the measured window.
    pub(in crate::bench) measured: Measured,
    /// Successful calls, warm-up included.
    pub(in crate::bench) completed: u64,
    /// Failed calls by what went wrong, warm-up included.
    pub(in crate::bench) errors: BTreeMap<String, u64>,
}

/// What one client task of a load run gave.
struct TaskOutcome {
    /// Latencies of the measured window, in microseconds.
    latency: Histogram<u64>,
    /// Successful calls in the measured window.
    measured: u64,
    /// Successful calls, warm-up included.
    completed: u64,
    /// Failed calls by what went wrong.
    errors: BTreeMap<String, u64>,
}

/// One call of a load run: `Err` says what went wrong, as counted in the errors.
pub(in crate::bench) type Call = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// `clients` tasks calling `call(task, seq)` back to back for `warmup` and
/// then `duration`; latencies and CPU count in the second part only.
pub(in crate::bench) async fn run_load<F>(
    clients: usize,
    warmup: Duration,
    duration: Duration,
    sampler: &Sampler,
    call: F,
) -> MeshOutcome
where
    F: Fn(usize, u64) -> Call + Clone + Send + 'static,
{
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::with_capacity(clients);
    for task in 0..clients {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = TaskOutcome {
                latency: histogram(),
                measured: 0,
                completed: 0,
                errors: BTreeMap::new(),
            };
            tokio::time::sleep_until(start).await;
            for seq in 0u64.. {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let result = call(task, seq).await;
                let elapsed = began.elapsed();
                match result {
                    Ok(()) => {
                        out.completed += 1;
                        if began >= measure_from {
                            out.measured += 1;
                            out.latency.saturating_record(elapsed.as_micros() as u64);
                        }
                    }
                    Err(error) => *out.errors.entry(error).or_default() += 1,
                }
            }
            out
        }));
    }
    tokio::time::sleep_until(measure_from).await;
    let before = sampler.sample().await;
    tokio::time::sleep_until(end).await;
    let cpu = sampler.sample().await - before;
    let mut outcome = MeshOutcome {
        measured: Measured {
            rate: 0.0,
            latency: histogram(),
            cpu,
            cpu_wall: duration,
            cpu_count: 0,
        },
        completed: 0,
        errors: BTreeMap::new(),
    };
    for task in tasks {
        match task.await {
            Ok(out) => {
                outcome.measured.cpu_count += out.measured;
                outcome
                    .measured
                    .latency
                    .add(&out.latency)
                    .expect("same bounds");
                outcome.completed += out.completed;
                for (error, n) in out.errors {
                    *outcome.errors.entry(error).or_default() += n;
                }
            }
            Err(err) => {
                *outcome
                    .errors
                    .entry(format!("client task failed: {err}"))
                    .or_default() += 1
            }
        }
    }
    outcome.measured.rate = outcome.measured.cpu_count as f64 / duration.as_secs_f64();
    outcome
}

/// The floor: the same call through the mesh from one client, refused by
/// the College's validation (amount 0) before it reaches the database.
pub(super) async fn floor_load(
    balancer: &Balancer,
    token: &str,
    args: &WithdrawArgs,
    sampler: &Sampler,
) -> MeshOutcome {
    let (balancer, token) = (balancer.clone(), Arc::<str>::from(token));
    run_load(1, args.warmup, args.duration, sampler, move |_, seq| {
        let (balancer, token) = (balancer.clone(), Arc::clone(&token));
        let request = WithdrawRequest {
            account_id: String::new(),
            amount_minor: 0,
            idempotency_key: format!("floor-{seq}"),
            memo: MEMO.into(),
        };
        Box::pin(async move {
            let refused = withdraw(&balancer, &token, &request).await;
            match refused {
                Err(status) if status.code() == tonic::Code::InvalidArgument => Ok(()),
                Err(status) => Err(format!(
                    "floor Withdraw: {:?}: {}",
                    status.code(),
                    status.message()
                )),
                Ok(_) => Err("floor Withdraw: an invalid withdrawal was applied".into()),
            }
        })
    })
    .await
}

/// Withdrawals of 1 from `accounts` (each task picks at random), a fresh idempotency key per call.
pub(super) async fn withdraw_load(
    balancer: &Balancer,
    token: &Arc<str>,
    accounts: Arc<Vec<String>>,
    clients: usize,
    args: &WithdrawArgs,
    tag: &str,
    sampler: &Sampler,
) -> MeshOutcome {
    let (caller, token, tag) = (balancer.clone(), Arc::clone(token), Arc::<str>::from(tag));
    run_load(
        clients,
        args.warmup,
        args.duration,
        sampler,
        move |task, seq| {
            let (balancer, token) = (caller.clone(), Arc::clone(&token));
            // Which account: a hash of (task, seq), so every task spreads its calls.
            let pick = (splitmix(((task as u64) << 40) ^ seq) % accounts.len() as u64) as usize;
            let request = WithdrawRequest {
                account_id: accounts[pick].clone(),
                amount_minor: 1,
                idempotency_key: format!("mesh-{tag}-{task}-{seq}"),
                memo: MEMO.into(),
            };
            Box::pin(async move {
                let reply = withdraw(&balancer, &token, &request)
                    .await
                    .map_err(|status| {
                        format!("Withdraw: {:?}: {}", status.code(), status.message())
                    })?;
                if reply.get_ref().replayed {
                    return Err("Withdraw: a fresh idempotency key was answered as a replay".into());
                }
                Ok(())
            })
        },
    )
    .await
}

/// SplitMix64's finaliser: a cheap, well-mixed hash, so that the account a
/// call picks needs no random-number generator shared between tasks.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One Withdraw through the mesh with the researcher's token.
async fn withdraw(
    balancer: &Balancer,
    token: &str,
    request: &WithdrawRequest,
) -> Result<tonic::Response<WithdrawReply>, tonic::Status> {
    balancer
        .call(|channel| {
            let mut request = tonic::Request::new(request.clone());
            let authorized = grantmesh_auth::authorize(&mut request, token);
            async move {
                authorized?;
                CollegeClient::new(channel).withdraw(request).await
            }
        })
        .await
}
