//! `grantmesh simulate`: professors and students spending research grants
//! concurrently through the mesh until the money or the time runs out, then
//! an audit of the central store that nothing was overdrawn, lost or applied
//! twice.
//!
//! Per project a professor signs up and proposes; some requests fall outside
//! the agency's band and are rejected with its reason; a funded professor
//! adds students, and all of them withdraw concurrently (some withdrawals too
//! large, some deliberately re-sent with the same idempotency key) until the
//! account is empty or has expired. Colleges in a simulation should run with
//! `--day-length 1s` so that accounts expire within the run.
//!
//! `--seed` repeats the same choices (amounts, pauses, looks, retries) for
//! every actor; timing is not repeatable, so which withdrawals are refused
//! and the totals differ from run to run. The run exits with
//! [`EXIT_INVARIANT_BREACHED`] when the audit finds a breach, and with 5
//! (unavailable) when projects failed to run to their end.

mod actors;
pub mod audit;
mod plan;
mod progress;
mod summary;

use std::ops::RangeInclusive;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use clap::Args;
use grantmesh_discovery::{Balancer, BalancerOptions, parse_registry_list};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use summary::{AuditOutcome, Summary, Tally};

/// The exit code of a run whose audit found an invariant breached.
pub const EXIT_INVARIANT_BREACHED: u8 = crate::exit::INVARIANT_BREACHED;

/// Default registry, as every other command has it.
const DEFAULT_REGISTRY: &str = crate::transport::DEFAULT_REGISTRY;
const DEFAULT_PROJECTS: u32 = 8;
const DEFAULT_STUDENTS: u32 = 3;
/// Default requests straddle the agency's default band of 300 000–500 000,
/// so that some proposals are rejected at once with the agency's reason.
const DEFAULT_MIN_REQUEST: i64 = 20_000_000;
const DEFAULT_MAX_REQUEST: i64 = 60_000_000;
/// Default account durations: with `--day-length 1s`, accounts expire 3 to
/// 6 seconds into the run, some before they are spent.
const DEFAULT_DAYS: RangeInclusive<u32> = 3..=6;
/// The hard bound on a run: far longer than default accounts live.
const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(60);
const DEFAULT_RETRY_PERCENT: u8 = 10;

/// Most projects one run may have: each is a handful of concurrent tasks
/// and researchers in the store; more is a load test, not a simulation.
const MAX_PROJECTS: u32 = 10_000;
/// Most students per project, for the same reason.
const MAX_STUDENTS: u32 = 100;
/// The agency accepts durations of 1 to 3650 days.
const MAX_DAYS: u32 = 3_650;

#[derive(Args, Clone, Debug)]
pub struct SimulateArgs {
    /// Registry replicas to discover agencies and colleges through, comma separated.
    #[arg(long, env = "GRANTMESH_REGISTRY", default_value = DEFAULT_REGISTRY)]
    pub registry: String,
    /// Projects (professors with one proposal each), all run concurrently.
    #[arg(long, env = "GRANTMESH_SIM_PROJECTS", default_value_t = DEFAULT_PROJECTS)]
    pub projects: u32,
    /// Students each funded professor adds to the account.
    #[arg(long, env = "GRANTMESH_SIM_STUDENTS", default_value_t = DEFAULT_STUDENTS)]
    pub students: u32,
    /// Seed of every random choice; a random one (printed) when omitted.
    /// The choices repeat with the seed; timing, and so the totals, do not.
    #[arg(long, env = "GRANTMESH_SIM_SEED")]
    pub seed: Option<u64>,
    /// Smallest amount a professor requests, in minor units.
    #[arg(long, env = "GRANTMESH_SIM_MIN_REQUEST", default_value_t = DEFAULT_MIN_REQUEST)]
    pub min_request: i64,
    /// Largest amount a professor requests, in minor units.
    #[arg(long, env = "GRANTMESH_SIM_MAX_REQUEST", default_value_t = DEFAULT_MAX_REQUEST)]
    pub max_request: i64,
    /// Range of proposal durations in days, `MIN..=MAX` (or one number).
    #[arg(long, env = "GRANTMESH_SIM_DAYS", default_value = "3..=6", value_parser = parse_days)]
    pub days: RangeInclusive<u32>,
    /// Hard bound on the run: everything still running then is stopped.
    #[arg(long, env = "GRANTMESH_SIM_MAX_DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub max_duration: Duration,
    /// Percentage of applied withdrawals deliberately re-sent with the same key.
    #[arg(long, env = "GRANTMESH_SIM_RETRY_PERCENT", default_value_t = DEFAULT_RETRY_PERCENT,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub retry_percent: u8,
    /// The central store, read (never written) by the audit after the run.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        required_unless_present = "no_audit"
    )]
    pub database_url: Option<String>,
    /// The mesh CA to trust for https:// registries [default: GRANTMESH_CA,
    /// else the CA `grantmesh dev` keeps in its data directory].
    #[arg(long, env = "GRANTMESH_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// The outbox the colleges keep their mail in (`--mail-outbox`): each
    /// simulated researcher reads the code they were mailed there to finish
    /// signing up [default: grantmesh dev's].
    #[arg(long, env = "GRANTMESH_MAIL_OUTBOX", value_name = "DIR")]
    pub outbox: Option<std::path::PathBuf>,
    /// Skip the audit (no database needed); the summary says it was skipped.
    #[arg(long)]
    pub no_audit: bool,
    /// Print the summary as one JSON object on stdout, and no progress line.
    #[arg(long)]
    pub json: bool,
}

impl SimulateArgs {
    /// The defaults, for a mesh found through `registries` (comma separated)
    /// whose central store is at `database_url`; for `grantmesh dev --simulate`.
    #[allow(dead_code, reason = "called by `grantmesh dev --simulate`")]
    pub fn for_mesh(registries: impl Into<String>, database_url: impl Into<String>) -> Self {
        Self {
            registry: registries.into(),
            projects: DEFAULT_PROJECTS,
            students: DEFAULT_STUDENTS,
            seed: None,
            min_request: DEFAULT_MIN_REQUEST,
            max_request: DEFAULT_MAX_REQUEST,
            days: DEFAULT_DAYS,
            max_duration: DEFAULT_MAX_DURATION,
            retry_percent: DEFAULT_RETRY_PERCENT,
            database_url: Some(database_url.into()),
            ca: None,
            outbox: None,
            no_audit: false,
            json: false,
        }
    }

    /// Checks the settings together, whoever built them (flags or code).
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            !parse_registry_list(&self.registry).is_empty(),
            "--registry must name at least one registry"
        );
        ensure!(
            (1..=MAX_PROJECTS).contains(&self.projects),
            "--projects must be 1 to {MAX_PROJECTS} (got {})",
            self.projects
        );
        ensure!(
            self.students <= MAX_STUDENTS,
            "--students must be at most {MAX_STUDENTS} (got {})",
            self.students
        );
        ensure!(
            0 < self.min_request && self.min_request <= self.max_request,
            "--min-request ({}) must be more than zero and at most --max-request ({})",
            self.min_request,
            self.max_request
        );
        ensure!(
            1 <= *self.days.start()
                && self.days.start() <= self.days.end()
                && *self.days.end() <= MAX_DAYS,
            "--days must be a range within 1..={MAX_DAYS} (got {:?})",
            self.days
        );
        ensure!(
            !self.max_duration.is_zero(),
            "--max-duration must be more than zero"
        );
        ensure!(
            self.retry_percent <= 100,
            "--retry-percent must be 0 to 100 (got {})",
            self.retry_percent
        );
        if !self.no_audit {
            ensure!(
                self.database_url.as_deref().is_some_and(|u| !u.is_empty()),
                "--database-url (or DATABASE_URL) is required for the audit; pass --no-audit to skip it"
            );
        }
        Ok(())
    }
}

/// `3..=6`, `3..6` (end excluded) or `4`.
fn parse_days(text: &str) -> Result<RangeInclusive<u32>, String> {
    let number = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| format!("{text:?} is not a range of days such as 3..=6"))
    };
    let range = if let Some((start, end)) = text.split_once("..=") {
        number(start)?..=number(end)?
    } else if let Some((start, end)) = text.split_once("..") {
        let end = number(end)?;
        number(start)?..=end.checked_sub(1).ok_or("an empty range of days")?
    } else {
        let days = number(text)?;
        days..=days
    };
    if range.is_empty() {
        return Err(format!("{text:?} is an empty range of days"));
    }
    Ok(range)
}

/// One balancer per agency the registry lists, chosen by its `agency`
/// label; one over every agency only when the registry cannot say which
/// there are (the calls then fail as they would anyway).
async fn agency_balancers(registries: &[String], options: &BalancerOptions) -> Vec<Balancer> {
    let mut names = std::collections::BTreeSet::new();
    for url in registries {
        let listed = async {
            let channel = options
                .transport
                .channel(url, Some(grantmesh_discovery::REGISTRY_SERVICE))
                .await?;
            let reply = grantmesh_proto::RegistryClient::new(channel)
                .list_instances(grantmesh_proto::v1::ListInstancesRequest {
                    service: grantmesh_agency::SERVICE.to_owned(),
                })
                .await?;
            anyhow::Ok(reply.into_inner())
        };
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(3), listed).await {
            names.extend(
                reply
                    .instances
                    .iter()
                    .filter_map(|i| i.labels.get("agency").cloned()),
            );
            break;
        }
    }
    if names.is_empty() {
        return vec![Balancer::new(
            registries.to_vec(),
            grantmesh_agency::SERVICE,
            options.clone(),
        )];
    }
    names
        .into_iter()
        .map(|name| {
            let options = BalancerOptions {
                labels: vec![("agency".to_owned(), name)],
                ..options.clone()
            };
            Balancer::new(registries.to_vec(), grantmesh_agency::SERVICE, options)
        })
        .collect()
}

/// Runs a simulation and its audit; [`EXIT_INVARIANT_BREACHED`] when the audit finds a breach.
pub async fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let seed = args.seed.unwrap_or_else(plan::random_seed);
    eprintln!("simulate: seed {seed} (repeat the same choices with --seed {seed})");
    let registries = parse_registry_list(&args.registry);
    let options = BalancerOptions {
        transport: crate::transport::for_registries(&args.registry, args.ca.as_deref())?,
        ..BalancerOptions::default()
    };
    let tally = Arc::new(Mutex::new(Tally::default()));
    let world = Arc::new(actors::World {
        agencies: agency_balancers(&registries, &options).await,
        colleges: Balancer::new(registries, grantmesh_college::SERVICE, options),
        run_id: grantmesh_discovery::new_instance_id("sim"),
        outbox: args
            .outbox
            .clone()
            .or_else(crate::mail::dev_outbox)
            .context("cannot tell where the colleges keep their mail; pass --outbox DIR")?,
        seed,
        students: args.students,
        requests: args.min_request..=args.max_request,
        days: args.days.clone(),
        retry_percent: args.retry_percent,
        tally: Arc::clone(&tally),
        ledgers: Mutex::new(Vec::new()),
    });

    let stop_progress = CancellationToken::new();
    let progress = progress::spawn(
        Arc::clone(&tally),
        args.projects,
        args.json,
        stop_progress.clone(),
    );
    let started = Instant::now();
    let mut projects = JoinSet::new();
    for project in 0..args.projects {
        projects.spawn(Arc::clone(&world).project(project));
    }
    let all_done = async { while projects.join_next().await.is_some() {} };
    let stopped_by_max_duration = tokio::time::timeout(args.max_duration, all_done)
        .await
        .is_err();
    // Aborting a project drops its actors mid-call; their keys stay in doubt.
    projects.shutdown().await;
    let took = started.elapsed();
    stop_progress.cancel();
    let _ = progress.await;
    if stopped_by_max_duration {
        eprintln!(
            "simulate: stopped by --max-duration {}",
            humantime::format_duration(args.max_duration)
        );
    }

    let decided = {
        let tally = tally.lock().expect("tally lock");
        tally.accepted + tally.rejected.values().sum::<u64>()
    };
    if decided == 0 {
        let tally = tally.lock().expect("tally lock");
        bail!(
            "no proposal got a decision from an agency: {:?}; the first failure: {}",
            tally.failed,
            tally.first_failure.as_deref().unwrap_or("none")
        );
    }

    let ledgers: Vec<_> = world
        .ledgers
        .lock()
        .expect("ledgers lock")
        .iter()
        .map(|(account, ledger)| (*account, ledger.lock().expect("ledger lock").clone()))
        .collect();
    let audit = match (&args.database_url, args.no_audit) {
        (Some(url), false) => {
            let breaches = audit::audit_accounts(url, &ledgers)
                .await
                .context("the audit could not read the store")?;
            if breaches.is_empty() {
                AuditOutcome::Passed {
                    accounts: ledgers.len(),
                }
            } else {
                AuditOutcome::Breached {
                    accounts: ledgers.len(),
                    breaches,
                }
            }
        }
        _ => {
            eprintln!("simulate: audit skipped (--no-audit)");
            AuditOutcome::Skipped
        }
    };

    let summary = {
        let tally = tally.lock().expect("tally lock");
        Summary::new(
            seed,
            args.projects,
            args.students,
            &tally,
            took,
            stopped_by_max_duration,
            audit,
        )
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&summary).context("failed to write the summary as JSON")?
        );
    } else {
        println!("{}", summary.table());
    }
    for breach in summary.breaches() {
        eprintln!(
            "invariant breached: account {} {:?}: {}",
            breach.account, breach.check, breach.detail
        );
    }
    let code = summary.exit_code();
    if code == EXIT_INVARIANT_BREACHED {
        eprintln!("simulate: invariant breached");
    } else if code != 0 {
        eprintln!(
            "simulate: {} of {} project(s) failed: {:?}; the first failure: {}",
            summary.failed_projects(),
            args.projects,
            summary.proposals.failed_by_error,
            summary.proposals.first_failure.as_deref().unwrap_or("none")
        );
    }
    Ok(ExitCode::from(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_ranges_are_read_in_every_written_form() {
        assert_eq!(parse_days("3..=6"), Ok(3..=6));
        assert_eq!(parse_days("3..7"), Ok(3..=6));
        assert_eq!(parse_days("4"), Ok(4..=4));
        assert!(parse_days("6..=3").is_err());
        assert!(parse_days("three").is_err());
    }

    #[test]
    fn settings_for_a_mesh_are_valid_and_bad_ones_are_named() {
        let args = SimulateArgs::for_mesh("http://127.0.0.1:7000", "postgres://x/y");
        args.validate().unwrap();
        let mut bad = args.clone();
        bad.min_request = 70_000_000;
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("--min-request")
        );
        let mut bad = args.clone();
        bad.database_url = None;
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("--no-audit")
        );
        bad.no_audit = true;
        bad.validate().unwrap();
    }
}
