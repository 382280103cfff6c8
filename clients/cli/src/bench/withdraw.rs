//! `bench withdraw`: College/Withdraw through the mesh, next to `pgbench`
//! running the same SQL on the same database in the same run.
//!
//! 1. Makes a fresh database (`gm_bench_…`) on the server `--database-url`
//!    names, and starts a registry and `--colleges` College instances on it as
//!    child processes of this binary, with fixed bench keys.
//! 2. Through the real API: registers a researcher, logs in, and opens
//!    `--accounts` accounts (OpenAccount with an agency's service credential)
//!    with awards no benchmark can exhaust. Their ids go into a helper table
//!    `bench_accounts(n, id)` for pgbench.
//! 3. For each scenario (spread over every account; one hot account) and each
//!    `--concurrency` c: c tasks call College/Withdraw in a loop through a
//!    client [`Balancer`] (amount 1, a fresh idempotency key per call) for a
//!    warm-up and then `--duration`, recording each call's latency. Next to
//!    it, pgbench runs `clients/cli/bench/pgbench/withdraw.sql` — the
//!    College's WITHDRAW statement, checked against
//!    `services/college/src/store.rs` — with c clients for a warm-up and then
//!    `--duration`, logging every transaction's latency. Before each side the
//!    tables are vacuumed and a checkpoint is taken; with `--rounds` each cell
//!    is repeated, alternating which side goes first.
//! 4. Prints withdrawals/s, p50 and p99 of both, where the CPU went (from
//!    `/proc`, see [`super::cpu`]), and a floor: the same call refused by
//!    validation before it reaches the database.
//! 5. Checks the books: every account's balance is its award less its
//!    journal, and the journal holds exactly the withdrawals both sides
//!    reported. Then stops the children and drops the database.
//!
//! The load generator runs on a runtime of its own (`--client-threads`, one
//! thread by default, like `pgbench -j 1`).
//!
//! The exit status is non-zero when a call failed or the books do not add up.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use grantmesh_auth::Keys;
use grantmesh_discovery::{Balancer, BalancerOptions};
use grantmesh_proto::CollegeClient;
use grantmesh_proto::v1::{
    LoginRequest, OpenAccountRequest, PingRequest, RegisterResearcherRequest, WithdrawRequest,
};
use hdrhistogram::Histogram;
use tokio::time::Instant;
use tokio_postgres::NoTls;

use super::{Child_, cpu, signal, spawn_with};

/// The pgbench script, as it lives in the repository.
const PGBENCH_SCRIPT: &str = include_str!("../../bench/pgbench/withdraw.sql");
/// The College's store, whose WITHDRAW statement the script must repeat.
const STORE_SOURCE: &str = include_str!("../../../../services/college/src/store.rs");

/// Bench-only signing keys, the same in the children and here.
const TOKEN_KEY: &str = "grantmesh-bench-token-key-not-a-secret-0001";
const SERVICE_KEY: &str = "grantmesh-bench-service-key-not-a-secret-02";
const AGENCY: &str = "bench-agency";
const AWARD: i64 = 1_000_000_000_000;
const MEMO: &str = "bench";

#[derive(Args, Debug)]
pub struct WithdrawArgs {
    /// PostgreSQL server to measure on; a fresh database is made there and
    /// dropped afterwards. With the repository: `$(scripts/postgres start | tail -1)`.
    #[arg(long, env = "GRANTMESH_BENCH_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// How long each cell is measured, after its warm-up (whole seconds: pgbench's -T).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured run before each cell, on both sides (whole seconds; 0 for none).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Concurrent clients, comma separated: one cell per value and scenario.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Accounts the spread scenario withdraws from.
    #[arg(long, default_value_t = 64)]
    accounts: usize,
    /// College instances to start.
    #[arg(long, default_value_t = 1)]
    colleges: usize,
    /// Store connections per College instance.
    #[arg(long, default_value_t = 64)]
    pool_size: usize,
    /// The pgbench binary; by default `pgbench` on PATH, else /usr/lib/postgresql/*/bin/pgbench.
    #[arg(long)]
    pgbench: Option<PathBuf>,
    /// Times each cell is measured, alternating which side goes first; figures are over all rounds.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Threads of the load generator's Tokio runtime (1: a current-thread runtime, like `pgbench -j 1`).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Leave the bench database in place (to rerun the pgbench script by hand).
    #[arg(long)]
    keep_database: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Spread,
    Hot,
}

impl Scenario {
    fn name(self, accounts: usize) -> String {
        match self {
            Self::Spread => format!("spread over {accounts} accounts"),
            Self::Hot => "one hot account".to_owned(),
        }
    }
}

/// What one side of one cell measured.
struct Measured {
    /// Withdrawals per second over the measured window.
    rate: f64,
    /// Latencies in microseconds.
    latency: Histogram<u64>,
    /// CPU spent over `cpu_wall`, in which `cpu_count` withdrawals completed.
    cpu: CpuUse,
    cpu_wall: Duration,
    cpu_count: u64,
}

/// CPU ticks spent during a window, by who spent them.
#[derive(Default, Clone, Copy)]
struct CpuUse {
    /// This process (mesh) or pgbench.
    driver: u64,
    /// Registry and College children (mesh only; idle during pgbench).
    mesh: u64,
    postgres: u64,
    machine_busy: u64,
    machine_total: u64,
}

struct Row {
    scenario: String,
    clients: usize,
    mesh: Measured,
    pgbench: Measured,
    /// mesh/pgbench of each round.
    ratios: Vec<f64>,
}

impl Measured {
    /// Rounds of equal length as one: mean rate, every latency, all CPU.
    fn combine(rounds: Vec<Measured>) -> Measured {
        let n = rounds.len().max(1) as f64;
        let mut all = Measured {
            rate: 0.0,
            latency: histogram(),
            cpu: CpuUse::default(),
            cpu_wall: Duration::ZERO,
            cpu_count: 0,
        };
        for round in rounds {
            all.rate += round.rate / n;
            all.latency.add(&round.latency).expect("same bounds");
            all.cpu = all.cpu + round.cpu;
            all.cpu_wall += round.cpu_wall;
            all.cpu_count += round.cpu_count;
        }
        all
    }
}

/// Processes whose CPU is sampled.
struct Sampler {
    children: Vec<u32>,
    postmaster: Option<u32>,
}

impl Sampler {
    async fn sample(&self) -> CpuUse {
        // Wait (briefly) for the postmaster to reap backends that just exited.
        let mut postgres = 0;
        if let Some(postmaster) = self.postmaster {
            for _ in 0..200 {
                if let Some(ticks) = cpu::server_ticks(postmaster) {
                    postgres = ticks;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let (machine_busy, machine_total) = cpu::machine_ticks();
        CpuUse {
            driver: cpu::process_ticks(std::process::id(), true),
            mesh: self
                .children
                .iter()
                .map(|&pid| cpu::process_ticks(pid, false))
                .sum(),
            postgres,
            machine_busy,
            machine_total,
        }
    }
}

impl std::ops::Add for CpuUse {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self {
            driver: self.driver + other.driver,
            mesh: self.mesh + other.mesh,
            postgres: self.postgres + other.postgres,
            machine_busy: self.machine_busy + other.machine_busy,
            machine_total: self.machine_total + other.machine_total,
        }
    }
}

impl std::ops::Sub for CpuUse {
    type Output = Self;
    fn sub(self, before: Self) -> Self {
        Self {
            driver: self.driver.saturating_sub(before.driver),
            mesh: self.mesh.saturating_sub(before.mesh),
            postgres: self.postgres.saturating_sub(before.postgres),
            machine_busy: self.machine_busy.saturating_sub(before.machine_busy),
            machine_total: self.machine_total.saturating_sub(before.machine_total),
        }
    }
}

pub async fn run(args: WithdrawArgs) -> anyhow::Result<ExitCode> {
    // The load generator gets a runtime of its own, so that its size is a
    // flag of the benchmark rather than whatever the binary's default is.
    let threads = args.client_threads;
    let runtime = match threads {
        0 => bail!("--client-threads must be at least 1"),
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    tokio::task::spawn_blocking(move || {
        let outcome = runtime.block_on(measure(args));
        runtime.shutdown_timeout(Duration::from_secs(1));
        outcome
    })
    .await
    .context("the benchmark thread failed")?
}

async fn measure(args: WithdrawArgs) -> anyhow::Result<ExitCode> {
    if args.duration.subsec_nanos() != 0
        || args.duration.is_zero()
        || args.warmup.subsec_nanos() != 0
    {
        bail!(
            "--duration and --warmup must be whole seconds (pgbench's -T), --duration at least 1s"
        );
    }
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        bail!("--concurrency must list client counts above zero");
    }
    if args.accounts == 0 || args.colleges == 0 || args.rounds == 0 {
        bail!("--accounts, --colleges and --rounds must be above zero");
    }
    let script = pgbench_script()?;
    let pgbench = find_pgbench(args.pgbench.as_deref())?;

    let database = format!(
        "gm_bench_{}",
        grantmesh_discovery::new_instance_id("x").trim_start_matches("x-")
    );
    let bench_url = with_database(&args.database_url, &database)?;
    let (admin, connection) = tokio_postgres::connect(&args.database_url, NoTls)
        .await
        .context("failed to reach the PostgreSQL server in --database-url")?;
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .context("failed to create the bench database")?;
    eprintln!("bench database: {database}");

    let work = std::env::temp_dir().join(&database);
    std::fs::create_dir_all(&work)?;
    let mut children = Vec::new();
    let outcome = bench(&args, &bench_url, &pgbench, script, &work, &mut children).await;

    // Stop the mesh gracefully, then drop what the bench made.
    for child in &children {
        let _ = signal(&child.child, 15);
    }
    for mut child in children {
        if tokio::time::timeout(Duration::from_secs(10), child.child.wait())
            .await
            .is_err()
        {
            let _ = child.child.kill().await;
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    if args.keep_database {
        eprintln!("kept the bench database: {bench_url}");
    } else if let Err(err) = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await
    {
        eprintln!("warning: failed to drop the bench database {database}: {err}");
    }
    outcome
}

async fn bench(
    args: &WithdrawArgs,
    url: &str,
    pgbench: &Path,
    script: &str,
    work: &Path,
    children: &mut Vec<Child_>,
) -> anyhow::Result<ExitCode> {
    // The mesh.
    let registry = spawn_with(
        &["registry", "--listen", "127.0.0.1:0"],
        &[],
        Stdio::inherit(),
    )
    .await?;
    let registry_url = registry.url.clone();
    children.push(registry);
    let pool_size = args.pool_size.to_string();
    let env = [
        ("DATABASE_URL", url),
        ("GRANTMESH_TOKEN_KEY", TOKEN_KEY),
        ("GRANTMESH_SERVICE_KEY", SERVICE_KEY),
    ];
    for _ in 0..args.colleges {
        let college = spawn_with(
            &[
                "college",
                "--listen",
                "127.0.0.1:0",
                "--registry",
                &registry_url,
                "--pool-size",
                &pool_size,
            ],
            &env,
            Stdio::inherit(),
        )
        .await?;
        children.push(college);
    }
    let balancer = Balancer::new(
        vec![registry_url.clone()],
        grantmesh_college::SERVICE,
        BalancerOptions::default(),
    );
    let mut view = balancer.subscribe();
    tokio::time::timeout(Duration::from_secs(30), async {
        while view.borrow_and_update().instances.len() < args.colleges {
            view.changed().await?;
        }
        anyhow::Ok(())
    })
    .await
    .context("the College instances did not register within 30 s")??;
    for _ in 0..args.colleges * 4 {
        balancer
            .call(|channel| async move {
                CollegeClient::new(channel)
                    .ping(PingRequest {
                        message: "bench".into(),
                        delay_ms: 0,
                    })
                    .await
            })
            .await
            .context("a College instance does not answer")?;
    }

    // The data, through the API.
    let (researcher, token) = researcher(&balancer).await?;
    let accounts = open_accounts(&balancer, &researcher, args.accounts).await?;
    let (db, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("failed to reach the bench database")?;
    tokio::spawn(connection);
    db.batch_execute("CREATE TABLE bench_accounts (n int PRIMARY KEY, id uuid NOT NULL)")
        .await?;
    db.execute(
        "INSERT INTO bench_accounts (n, id) SELECT n, id::uuid FROM unnest($1::text[]) WITH ORDINALITY AS t(id, n)",
        &[&accounts],
    )
    .await?;
    let backend: i32 = db.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    let sampler = Sampler {
        children: children.iter().filter_map(|c| c.child.id()).collect(),
        postmaster: cpu::postmaster_of(backend as u32),
    };
    if sampler.postmaster.is_none() {
        eprintln!("note: the PostgreSQL server is not on this machine; its CPU is not reported");
    }
    let script_path = work.join("withdraw.sql");
    std::fs::write(&script_path, script)?;
    let ctx = Ctx {
        db,
        sampler,
        pgbench: pgbench.to_owned(),
        script: script_path,
        url: url.to_owned(),
        work: work.to_owned(),
    };

    // The floor: the same call through the mesh, refused by the College's
    // validation (amount 0) before it reaches the database. One client.
    ctx.settle().await;
    let floor = {
        let (balancer, token) = (balancer.clone(), Arc::<str>::from(token.as_str()));
        run_load(
            1,
            args.warmup,
            args.duration,
            &ctx.sampler,
            move |_, seq| {
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
            },
        )
        .await
    };

    let token: Arc<str> = token.into();
    let mut rows = Vec::new();
    let mut errors: BTreeMap<String, u64> = floor.errors.clone();
    let (mut mesh_total, mut pgbench_total) = (0u64, 0u64);
    for scenario in [Scenario::Spread, Scenario::Hot] {
        let in_play = match scenario {
            Scenario::Spread => args.accounts,
            Scenario::Hot => 1,
        };
        let accounts = Arc::new(accounts[..in_play].to_vec());
        for &clients in &args.concurrency {
            let (mut mesh_runs, mut pgbench_runs) = (Vec::new(), Vec::new());
            for round in 0..args.rounds {
                let tag = format!(
                    "{}{clients}r{round}",
                    if scenario == Scenario::Spread {
                        "s"
                    } else {
                        "h"
                    }
                );
                // Alternate which side goes first, so neither always follows the other.
                for mesh_side in [round % 2 == 0, round % 2 == 1] {
                    ctx.settle().await;
                    if mesh_side {
                        let mesh = withdraw_load(
                            &balancer,
                            &token,
                            Arc::clone(&accounts),
                            clients,
                            args,
                            &tag,
                            &ctx.sampler,
                        )
                        .await;
                        mesh_total += mesh.completed;
                        for (error, n) in mesh.errors {
                            *errors.entry(error).or_default() += n;
                        }
                        mesh_runs.push(mesh.measured);
                    } else {
                        let vars = PgbenchVars {
                            naccounts: in_play,
                            researcher: &researcher,
                            tag: &tag,
                        };
                        if !args.warmup.is_zero() {
                            pgbench_total += ctx.pgbench(clients, args.warmup, &vars, "w").await?.0;
                        }
                        let (n, measured) = ctx.pgbench(clients, args.duration, &vars, "m").await?;
                        pgbench_total += n;
                        pgbench_runs.push(measured);
                    }
                }
            }
            let ratios: Vec<f64> = mesh_runs
                .iter()
                .zip(&pgbench_runs)
                .map(|(m, p)| m.rate / p.rate.max(f64::MIN_POSITIVE))
                .collect();
            let row = Row {
                scenario: scenario.name(args.accounts),
                clients,
                mesh: Measured::combine(mesh_runs),
                pgbench: Measured::combine(pgbench_runs),
                ratios,
            };
            eprintln!(
                "{} | {clients} clients: mesh {:.0}/s p50 {} p99 {}; pgbench {:.0}/s p50 {} p99 {}",
                row.scenario,
                row.mesh.rate,
                ms(row.mesh.latency.value_at_quantile(0.5)),
                ms(row.mesh.latency.value_at_quantile(0.99)),
                row.pgbench.rate,
                ms(row.pgbench.latency.value_at_quantile(0.5)),
                ms(row.pgbench.latency.value_at_quantile(0.99)),
            );
            rows.push(row);
        }
    }

    print_tables(&rows, args.colleges);
    println!(
        "floor: Withdraw refused by validation (mesh, no database), 1 client: {:.0}/s, p50 {}, p99 {}; \
         CPU µs per call: client {:.0}, mesh {:.0}",
        floor.measured.rate,
        ms(floor.measured.latency.value_at_quantile(0.5)),
        ms(floor.measured.latency.value_at_quantile(0.99)),
        floor.measured.cpu.driver as f64 * cpu::tick().as_secs_f64() * 1e6
            / floor.measured.cpu_count.max(1) as f64,
        floor.measured.cpu.mesh as f64 * cpu::tick().as_secs_f64() * 1e6
            / floor.measured.cpu_count.max(1) as f64,
    );
    let books = check_books(&ctx.db, mesh_total, pgbench_total).await;
    let mut ok = true;
    if errors.is_empty() {
        println!("mesh errors: 0");
    } else {
        ok = false;
        println!("mesh errors: {}", errors.values().sum::<u64>());
        for (error, n) in &errors {
            println!("  {n} × {error}");
        }
    }
    match books {
        Ok(summary) => println!("invariant: ok ({summary})"),
        Err(err) => {
            ok = false;
            println!("invariant: FAILED: {err:#}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Registers the bench researcher and logs in: (researcher id, bearer token).
async fn researcher(balancer: &Balancer) -> anyhow::Result<(String, String)> {
    const EMAIL: &str = "bench@example.org";
    const PASSWORD: &str = "bench-password-1";
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
    let reply = balancer
        .call(|channel| async move {
            CollegeClient::new(channel)
                .login(LoginRequest {
                    email: EMAIL.into(),
                    password: PASSWORD.into(),
                })
                .await
        })
        .await
        .context("Login failed")?
        .into_inner();
    let id = reply
        .researcher
        .context("Login named no researcher")?
        .researcher_id;
    Ok((id, reply.token))
}

/// Opens `n` accounts with the bench researcher as principal investigator; their ids, in order.
async fn open_accounts(
    balancer: &Balancer,
    researcher: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let keys = Keys::new(
        TOKEN_KEY.as_bytes(),
        SERVICE_KEY.as_bytes(),
        Duration::from_secs(3600),
    )?;
    let credential = keys.agency_token(AGENCY)?;
    let mut ids = Vec::with_capacity(n);
    for k in 1..=n {
        let request = OpenAccountRequest {
            proposal_id: format!("bench-{k}"),
            agency: AGENCY.into(),
            principal_investigator_id: researcher.to_owned(),
            title: format!("Bench account {k}"),
            award_minor: AWARD,
            duration_days: 3_650,
        };
        let account = balancer
            .call(|channel| {
                let mut request = tonic::Request::new(request.clone());
                let authorized = grantmesh_auth::authorize(&mut request, &credential);
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

struct MeshOutcome {
    measured: Measured,
    /// Successful calls, warm-up included.
    completed: u64,
    errors: BTreeMap<String, u64>,
}

struct TaskOutcome {
    latency: Histogram<u64>,
    measured: u64,
    completed: u64,
    errors: BTreeMap<String, u64>,
}

type Call = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// `clients` tasks calling `call(task, seq)` back to back for `warmup` and
/// then `duration`; latencies and CPU count in the second part only.
async fn run_load<F>(
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

/// Withdrawals of 1 from `accounts` (each task picks at random), a fresh idempotency key per call.
async fn withdraw_load(
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

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// pgbench's variables for one cell.
struct PgbenchVars<'a> {
    naccounts: usize,
    researcher: &'a str,
    tag: &'a str,
}

/// What every measurement shares: the bench database and the pgbench set-up.
struct Ctx {
    db: tokio_postgres::Client,
    sampler: Sampler,
    pgbench: PathBuf,
    script: PathBuf,
    url: String,
    work: PathBuf,
}

impl Ctx {
    /// Puts the database in the same state before each run: pgbench's
    /// connections gone (and reaped, for the CPU count), the tables vacuumed
    /// and analyzed, a fresh checkpoint (so neither side meets one, or the
    /// full-page writes after one, more than the other).
    async fn settle(&self) {
        for _ in 0..100 {
            let left: i64 = match self
                .db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'",
                    &[],
                )
                .await
            {
                Ok(row) => row.get(0),
                Err(_) => 0,
            };
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Err(err) = self
            .db
            .batch_execute("VACUUM (ANALYZE) accounts, members, withdrawals, bench_accounts")
            .await
        {
            eprintln!("warning: VACUUM failed: {err}");
        }
        // Needs superuser or pg_checkpoint; without it runs just meet checkpoints as they come.
        let _ = self.db.batch_execute("CHECKPOINT").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    /// One pgbench run: (transactions processed, what was measured).
    async fn pgbench(
        &self,
        clients: usize,
        duration: Duration,
        vars: &PgbenchVars<'_>,
        phase: &str,
    ) -> anyhow::Result<(u64, Measured)> {
        let (pgbench, script, url, work, sampler) = (
            &self.pgbench,
            &self.script,
            &self.url,
            &self.work,
            &self.sampler,
        );
        let run = format!("{}{phase}", vars.tag);
        let log_prefix = work.join(format!("log-{run}"));
        let mut command = tokio::process::Command::new(pgbench);
        command
            .args(["-n", "-M", "prepared", "-f"])
            .arg(script)
            .args([
                "-c",
                &clients.to_string(),
                "-j",
                &clients.min(2).to_string(),
            ])
            .args(["-T", &duration.as_secs().to_string()])
            .args(["-D", &format!("naccounts={}", vars.naccounts)])
            .args(["-D", &format!("researcher={}", vars.researcher)])
            .args([
                "-D",
                "amount=1",
                "-D",
                &format!("memo={MEMO}"),
                "-D",
                &format!("run={run}"),
                "-D",
                "seq=0",
            ])
            .arg("-l")
            .arg(format!("--log-prefix={}", log_prefix.display()))
            .arg(url)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let before = sampler.sample().await;
        let started = Instant::now();
        let output = command
            .output()
            .await
            .with_context(|| format!("failed to run {}", pgbench.display()))?;
        let window = started.elapsed();
        let cpu = sampler.sample().await - before;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() || stderr.contains("aborted") {
            bail!("pgbench failed ({}):\n{stdout}{stderr}", output.status);
        }
        let field = |label: &str| -> anyhow::Result<f64> {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(label))
                .with_context(|| format!("no {label:?} in pgbench's output:\n{stdout}"))?;
            let value = line[label.len()..].split_whitespace().next().unwrap_or("");
            value
                .parse()
                .with_context(|| format!("cannot read {line:?}"))
        };
        let processed = field("number of transactions actually processed:")? as u64;
        let failed = field("number of failed transactions:").unwrap_or(0.0);
        if failed > 0.0 {
            bail!("pgbench reports failed transactions:\n{stdout}");
        }
        let tps = field("tps =")?;
        // Every transaction's latency, from the per-client logs.
        let mut latency = histogram();
        let prefix = log_prefix
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        for entry in std::fs::read_dir(work)? {
            let entry = entry?;
            if !entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&format!("{prefix}.")))
            {
                continue;
            }
            for line in std::fs::read_to_string(entry.path())?.lines() {
                let micros: u64 = line
                    .split_whitespace()
                    .nth(2)
                    .and_then(|f| f.parse().ok())
                    .with_context(|| format!("unexpected pgbench log line {line:?}"))?;
                latency.saturating_record(micros);
            }
            std::fs::remove_file(entry.path())?;
        }
        if latency.len() != processed {
            bail!(
                "pgbench logged {} transactions but reports {processed}",
                latency.len()
            );
        }
        // The rate is pgbench's own (without connection set-up); the CPU is
        // pgbench's whole life, in which it processed every transaction.
        Ok((
            processed,
            Measured {
                rate: tps,
                latency,
                cpu,
                cpu_wall: window,
                cpu_count: processed,
            },
        ))
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn ms(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

fn print_tables(rows: &[Row], colleges: usize) {
    let rounds = rows.first().map_or(1, |row| row.ratios.len());
    let range = if rounds > 1 {
        format!(" | per round ({rounds})")
    } else {
        String::new()
    };
    println!(
        "| scenario | clients | mesh withdrawals/s | mesh p50 | mesh p99 | pgbench tps | pgbench p50 | pgbench p99 | mesh/pgbench{range} |"
    );
    println!(
        "| --- | --: | --: | --: | --: | --: | --: | --: | --:{} |",
        if rounds > 1 { " | --:" } else { "" }
    );
    for row in rows {
        let (mesh, pg) = (row.mesh.rate, row.pgbench.rate);
        let range = if rounds > 1 {
            let min = row.ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let max = row.ratios.iter().copied().fold(0.0, f64::max);
            format!(" | {min:.2}–{max:.2}")
        } else {
            String::new()
        };
        println!(
            "| {} | {} | {:.0} | {} | {} | {:.0} | {} | {} | {:.2}{range} |",
            row.scenario,
            row.clients,
            mesh,
            ms(row.mesh.latency.value_at_quantile(0.5)),
            ms(row.mesh.latency.value_at_quantile(0.99)),
            pg,
            ms(row.pgbench.latency.value_at_quantile(0.5)),
            ms(row.pgbench.latency.value_at_quantile(0.99)),
            if pg > 0.0 { mesh / pg } else { 0.0 },
        );
    }
    println!();
    let tick = cpu::tick().as_secs_f64();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "Where the CPU went while measuring, in % of one core ({cores} cores: {} in all). Client: this process \
         (mesh) or pgbench. Mesh: {colleges} College instance(s) and the registry. Other: every other process on \
         the machine. Then CPU µs per withdrawal of client / mesh / PostgreSQL.",
        cores * 100
    );
    println!();
    println!(
        "| scenario | clients | run | client | mesh | PostgreSQL | other | idle | µs per withdrawal |"
    );
    println!("| --- | --: | --- | --: | --: | --: | --: | --: | --: |");
    let mut disturbed = Vec::new();
    for row in rows {
        for (run, m) in [("mesh", &row.mesh), ("pgbench", &row.pgbench)] {
            let wall = m.cpu_wall.as_secs_f64();
            let share = |ticks: u64| ticks as f64 * tick / wall * 100.0;
            let (client, mesh, postgres) = (
                share(m.cpu.driver),
                share(m.cpu.mesh),
                share(m.cpu.postgres),
            );
            let busy = m.cpu.machine_busy as f64 / m.cpu.machine_total.max(1) as f64
                * cores as f64
                * 100.0;
            let idle = cores as f64 * 100.0 - busy;
            let other = (busy - client - mesh - postgres).max(0.0);
            if other >= 25.0 {
                disturbed.push(format!(
                    "{} / {} clients / {run}: {other:.0}%",
                    row.scenario, row.clients
                ));
            }
            let per = |ticks: u64| {
                if m.cpu_count > 0 {
                    ticks as f64 * tick * 1e6 / m.cpu_count as f64
                } else {
                    0.0
                }
            };
            println!(
                "| {} | {} | {run} | {client:.0}% | {mesh:.0}% | {postgres:.0}% | {other:.0}% | {idle:.0}% | {:.0} / {:.0} / {:.0} |",
                row.scenario,
                row.clients,
                per(m.cpu.driver),
                per(m.cpu.mesh),
                per(m.cpu.postgres),
            );
        }
    }
    println!();
    if !disturbed.is_empty() {
        println!(
            "warning: other processes took a quarter of a core or more in: {}",
            disturbed.join("; ")
        );
        println!();
    }
}

/// Every account's balance is its award less its journal, and the journal
/// holds exactly the withdrawals both sides reported.
async fn check_books(
    db: &tokio_postgres::Client,
    mesh: u64,
    pgbench: u64,
) -> anyhow::Result<String> {
    let wrong: i64 = db
        .query_one(
            "SELECT count(*) FROM accounts a
             LEFT JOIN (SELECT account_id, sum(amount) AS spent FROM withdrawals GROUP BY account_id) w ON w.account_id = a.id
             WHERE a.balance <> a.award - coalesce(w.spent, 0)",
            &[],
        )
        .await?
        .get(0);
    let accounts: i64 = db
        .query_one("SELECT count(*) FROM accounts", &[])
        .await?
        .get(0);
    let journal: i64 = db
        .query_one("SELECT count(*) FROM withdrawals", &[])
        .await?
        .get(0);
    if wrong != 0 {
        bail!("{wrong} of {accounts} accounts have a balance other than award − withdrawals");
    }
    if journal as u64 != mesh + pgbench {
        bail!(
            "the journal holds {journal} withdrawals, but the mesh made {mesh} and pgbench {pgbench}"
        );
    }
    Ok(format!(
        "{accounts} accounts; balance = award − withdrawals; journal {journal} = mesh {mesh} + pgbench {pgbench}"
    ))
}

/// The pgbench script, after checking that it repeats the College's WITHDRAW
/// statement with only its parameters replaced.
fn pgbench_script() -> anyhow::Result<&'static str> {
    let start = STORE_SOURCE
        .find("const WITHDRAW: &str = \"")
        .context("no WITHDRAW statement in store.rs")?;
    let body = &STORE_SOURCE[start + "const WITHDRAW: &str = \"".len()..];
    let statement = &body[..body
        .find("\";")
        .context("unterminated WITHDRAW statement")?];
    let expected = statement
        .trim_matches('\n')
        .replace("$1", "(SELECT id FROM bench_accounts WHERE n = :n)")
        .replace("$2", ":researcher")
        .replace("$3", ":amount")
        .replace("$4", "('pgb-' || :run || '-' || :client_id || '-' || :seq)")
        .replace("$5", ":memo");
    let sql: String = PGBENCH_SCRIPT
        .lines()
        .filter(|line| !line.starts_with("--") && !line.starts_with('\\'))
        .collect::<Vec<_>>()
        .join("\n");
    if sql.trim_end().trim_end_matches(';') != expected {
        bail!(
            "clients/cli/bench/pgbench/withdraw.sql no longer repeats the WITHDRAW statement of \
             services/college/src/store.rs; update it (the statement with $1…$5 replaced as its header says)"
        );
    }
    Ok(PGBENCH_SCRIPT)
}

fn find_pgbench(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_owned());
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("pgbench"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.flatten()
                .map(|d| d.path().join("bin/pgbench"))
                .collect()
        })
        .unwrap_or_default();
    debian.sort();
    debian.reverse(); // the newest version first
    on_path
        .into_iter()
        .chain(debian)
        .find(|path| path.is_file())
        .context("no pgbench found on PATH or in /usr/lib/postgresql/*/bin: install postgresql-client or pass --pgbench")
}

/// The same server URL with another database: a `postgres://` URL's path is
/// replaced, a `key=value` string gets `dbname=`.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let scheme = &url[..url.len() - rest.len()];
        let (before_query, query) = match rest.find('?') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let authority = before_query.split('/').next().unwrap_or("");
        return Ok(format!("{scheme}{authority}/{database}{query}"));
    }
    if url.contains('=') {
        return Ok(format!("{url} dbname={database}"));
    }
    bail!("--database-url must be a postgres:// URL or a key=value connection string")
}

/// One Withdraw through the mesh with the researcher's token.
async fn withdraw(
    balancer: &Balancer,
    token: &str,
    request: &WithdrawRequest,
) -> Result<tonic::Response<grantmesh_proto::v1::WithdrawReply>, tonic::Status> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pgbench_script_repeats_the_withdraw_statement() {
        pgbench_script().unwrap();
    }

    #[test]
    fn database_urls_get_the_bench_database() {
        assert_eq!(
            with_database("postgres://u@h:1/postgres", "b").unwrap(),
            "postgres://u@h:1/b"
        );
        assert_eq!(
            with_database("postgres://u@h:1", "b").unwrap(),
            "postgres://u@h:1/b"
        );
        assert_eq!(
            with_database("postgresql://u@h/x?sslmode=disable", "b").unwrap(),
            "postgresql://u@h/b?sslmode=disable"
        );
        assert_eq!(
            with_database("host=h user=u", "b").unwrap(),
            "host=h user=u dbname=b"
        );
    }
}
