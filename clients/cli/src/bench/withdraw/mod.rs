//! `bench withdraw`: College/Withdraw through the mesh, next to `pgbench`
//! running the one-statement withdrawal from before batching (the
//! baseline) on the same database in the same run.
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
//!    warm-up and then `--duration`, recording each call's latency; the
//!    journal then gives the size of every batch the College committed
//!    ([`sizes`]). Next to it, pgbench runs
//!    `clients/cli/bench/pgbench/withdraw.sql` — the one-statement
//!    withdrawal the College ran before batching — with c clients, for a
//!    warm-up and then `--duration`, logging every transaction's latency.
//!    Before each side the tables are vacuumed and a checkpoint is taken;
//!    with `--rounds` each cell is repeated, alternating which side goes
//!    first.
//! 4. Prints withdrawals/s, p50 and p99 of both, the batch sizes,
//!    where the CPU went (from `/proc`, see [`super::cpu`]), and a floor: the
//!    same call refused by validation before it reaches the database. With
//!    `--plots DIR`, PNG plots of throughput and p99 ([`plot`]).
//! 5. Checks the books: every account's balance is its award less its
//!    journal, and the journal holds exactly the withdrawals both sides
//!    reported. Then stops the children and drops the database.
//!
//! The mesh runs on TLS with a throwaway CA by default (`--transport`, see
//! [`super::transport`]). With `--transport both`, a TLS mesh and a
//! plaintext mesh (a registry and `--colleges` Colleges each) run on the same
//! database, and every cell measures both and pgbench, in reverse order on
//! odd rounds; a table of TLS/plaintext ratios follows.
//!
//! The load generator runs on a runtime of its own (`--client-threads`, one
//! thread by default, like `pgbench -j 1`).
//!
//! The exit status is non-zero when a call failed or the books do not add up.
//!
//! This module holds the flags and the orchestration of one run; the mesh's
//! side is [`load`], pgbench's side [`pgbench`], the figures and the printed
//! tables [`measure`], and the check of step 5 [`books`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use grantmesh_auth::AgencySigner;
use grantmesh_discovery::{Balancer, BalancerOptions};
use grantmesh_node::process::ChildNode;
use grantmesh_proto::CollegeClient;
use grantmesh_proto::v1::PingRequest;
use nix::sys::signal::Signal;
use tokio::process::Command;
use tokio_postgres::NoTls;

use super::cpu;
use super::transport::{BenchTransport, Kind, TransportChoice};
use measure::{Measured, Row, Sampler};
use pgbench::{Pgbench, PgbenchVars};
use sizes::BatchSizes;

mod books;
pub(super) mod load;
pub(super) mod measure;
mod pgbench;
// The charts' crates (plotters and its image and font stack) are built only
// with the `charts` feature, so `cargo run -p grantmesh -- dev` never compiles them.
#[cfg(feature = "charts")]
mod plot;
mod sizes;

/// The memo of every bench withdrawal, on both sides.
const MEMO: &str = "bench";
/// How long the registry and College children get to stop after SIGTERM
/// before they are killed: a node's default grace period for in-flight
/// calls; the bench stops them idle, so they normally exit at once.
const STOP_GRACE: Duration = Duration::from_secs(10);

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
    /// What the mesh runs on: TLS with a throwaway CA, plaintext, or both side by side.
    #[arg(long, value_enum, default_value_t = TransportChoice::Tls)]
    transport: TransportChoice,
    /// Write PNG plots (throughput and p99 against clients, every column and
    /// scenario) into this directory, e.g. `docs`. Needs a binary built with
    /// `--features charts`.
    #[arg(long)]
    plots: Option<PathBuf>,
}

/// One side of a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// A mesh, by index (TLS first).
    Mesh(usize),
    /// pgbench, the one-statement withdrawal (the baseline).
    Pgbench,
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

pub async fn run(args: WithdrawArgs) -> anyhow::Result<ExitCode> {
    if args.plots.is_some() && !cfg!(feature = "charts") {
        return Err(crate::exit::CliError::Usage(
            "--plots needs a grantmesh built with the charts: \
             cargo build --release -p grantmesh --features charts"
                .to_owned(),
        )
        .into());
    }
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
        let outcome = runtime.block_on(on_fresh_database(args));
        runtime.shutdown_timeout(Duration::from_secs(1));
        outcome
    })
    .await
    .context("the benchmark thread failed")?
}

/// Checks the flags, makes the bench database, runs the bench on it, then
/// stops the children and drops the database whatever the outcome.
async fn on_fresh_database(args: WithdrawArgs) -> anyhow::Result<ExitCode> {
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
    let pgbench = pgbench::find_pgbench(args.pgbench.as_deref())?;

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
    let outcome = bench(&args, &bench_url, &pgbench, &work, &mut children).await;

    // Stop the mesh gracefully, then drop what the bench made.
    for child in &children {
        let _ = child.signal(Signal::SIGTERM);
    }
    for mut child in children {
        if child.wait(STOP_GRACE).await.is_err() {
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

/// One run on the bench database `url`: the mesh, the data, every cell, the
/// tables and the books. `children` collects the mesh's processes, which the
/// caller stops.
async fn bench(
    args: &WithdrawArgs,
    url: &str,
    pgbench: &Path,
    work: &Path,
    children: &mut Vec<ChildNode>,
) -> anyhow::Result<ExitCode> {
    let mut meshes = Vec::new();
    // Opens the bench accounts on the first mesh, as the bench agency.
    let mut opener = None;
    for kind in args.transport.kinds() {
        let transport = BenchTransport::new(kind, work)?;
        let first = children.len();
        let (balancer, registry_url) = start_mesh(args, url, &transport, children).await?;
        if opener.is_none() {
            let identity = format!("agency/{}", load::AGENCY);
            let colleges = Balancer::new(
                vec![registry_url],
                grantmesh_college::SERVICE,
                BalancerOptions {
                    transport: transport.client_as(&identity)?,
                    ..BalancerOptions::default()
                },
            );
            let signer = transport.key_file(&identity).map(AgencySigner::new);
            opener = Some((colleges, signer));
        }
        meshes.push(Mesh {
            kind,
            balancer,
            pids: children[first..]
                .iter()
                .filter_map(|c| c.child.id())
                .collect(),
        });
    }
    let balancer = &meshes[0].balancer;

    // The data, through the API (on a shared database, every mesh sees it).
    let (researcher, token) =
        load::researcher(balancer, &crate::bench::transport::outbox_in(work)).await?;
    let (colleges, signer) = opener.context("no mesh was started")?;
    let accounts =
        load::open_accounts(&colleges, signer.as_ref(), &researcher, args.accounts).await?;
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
    let postmaster = cpu::postmaster_of(backend as u32);
    if postmaster.is_none() {
        eprintln!("note: the PostgreSQL server is not on this machine; its CPU is not reported");
    }
    // Each mesh's CPU is its own children's; pgbench's side samples the first (idle) mesh.
    let samplers: Vec<Sampler> = meshes
        .iter()
        .map(|mesh| Sampler {
            children: mesh.pids.clone(),
            postmaster,
        })
        .collect();
    let ctx = Ctx {
        db,
        sampler: Sampler {
            children: meshes[0].pids.clone(),
            postmaster,
        },
        pgbench: Pgbench::new(pgbench, url, work)?,
    };

    // The floor: the same call through each mesh, refused by the College's
    // validation (amount 0) before it reaches the database. One client.
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut floors = Vec::new();
    for (mesh, sampler) in meshes.iter().zip(&samplers) {
        ctx.settle().await;
        let floor = load::floor_load(&mesh.balancer, &token, args, sampler).await;
        for (error, n) in floor.errors {
            *errors.entry(error).or_default() += n;
        }
        floors.push((mesh.kind, floor.measured));
    }

    let token: Arc<str> = token.into();
    let mut rows = Vec::new();
    let (mut mesh_total, mut pgbench_total) = (0u64, 0u64);
    // The sides of a cell: each mesh (by index), then pgbench.
    let sides: Vec<Side> = (0..meshes.len())
        .map(Side::Mesh)
        .chain([Side::Pgbench])
        .collect();
    for scenario in [Scenario::Spread, Scenario::Hot] {
        let in_play = match scenario {
            Scenario::Spread => args.accounts,
            Scenario::Hot => 1,
        };
        let accounts = Arc::new(accounts[..in_play].to_vec());
        for &clients in &args.concurrency {
            let mut mesh_runs: Vec<Vec<Measured>> = meshes.iter().map(|_| Vec::new()).collect();
            let mut pgbench_runs = Vec::new();
            // The batch sizes the College used in this cell (first mesh).
            let mut sizes = BatchSizes::default();
            for round in 0..args.rounds {
                let tag = format!(
                    "{}{clients}r{round}",
                    if scenario == Scenario::Spread {
                        "s"
                    } else {
                        "h"
                    }
                );
                // Reverse the order on odd rounds, so no side always follows another.
                for side in super::transport::round_order(&sides, round) {
                    ctx.settle().await;
                    let vars = PgbenchVars {
                        naccounts: in_play,
                        researcher: &researcher,
                        tag: &tag,
                    };
                    match side {
                        Side::Mesh(m) => {
                            let mesh_tag = format!("{tag}m{m}");
                            let mesh = load::withdraw_load(
                                &meshes[m].balancer,
                                &token,
                                Arc::clone(&accounts),
                                clients,
                                args,
                                &mesh_tag,
                                &samplers[m],
                            )
                            .await;
                            mesh_total += mesh.completed;
                            for (error, n) in mesh.errors {
                                *errors.entry(error).or_default() += n;
                            }
                            mesh_runs[m].push(mesh.measured);
                            if m == 0 {
                                sizes.add(&ctx.db, &mesh_tag).await?;
                            }
                        }
                        Side::Pgbench => {
                            let (n, measured) = ctx.pgbench_cell(clients, args, &vars).await?;
                            pgbench_total += n;
                            pgbench_runs.push(measured);
                        }
                    }
                }
            }
            let ratios: Vec<f64> = mesh_runs[0]
                .iter()
                .zip(&pgbench_runs)
                .map(|(m, p)| m.rate / p.rate.max(f64::MIN_POSITIVE))
                .collect();
            // TLS/plaintext per round, when both ran.
            let transport_ratios: Vec<f64> = match mesh_runs.as_slice() {
                [tls, plain] => tls
                    .iter()
                    .zip(plain)
                    .map(|(t, p)| t.rate / p.rate.max(f64::MIN_POSITIVE))
                    .collect(),
                _ => Vec::new(),
            };
            let row = Row {
                scenario: scenario.name(args.accounts),
                clients,
                meshes: meshes
                    .iter()
                    .map(|mesh| mesh.kind)
                    .zip(mesh_runs.into_iter().map(Measured::combine))
                    .collect(),
                pgbench: Measured::combine(pgbench_runs),
                sizes,
                ratios,
                transport_ratios,
            };
            eprintln!("{}", row.progress());
            rows.push(row);
        }
    }

    measure::print_tables(&rows, args.colleges);
    measure::print_batch_sizes(&rows);
    #[cfg(feature = "charts")]
    if let Some(dir) = &args.plots {
        plot::write_plots(&rows, dir)?;
        println!(
            "plots: {}",
            plot::FILES
                .map(|f| dir.join(f).display().to_string())
                .join(", ")
        );
    }
    measure::print_transport_table(&rows);
    for (kind, floor) in &floors {
        measure::print_floor(*kind, floor);
    }
    let books = books::check_books(&ctx.db, mesh_total, pgbench_total).await;
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

/// One mesh of the run: a registry and its Colleges on one transport.
struct Mesh {
    kind: Kind,
    /// A client of its Colleges, on its transport.
    balancer: Balancer,
    /// Its children's process ids, whose CPU counts as the mesh's.
    pids: Vec<u32>,
}

/// Starts a registry and `--colleges` College instances on the bench
/// database `url` and on `transport` (pushed onto `children` as they start),
/// and returns a balancer once every instance has registered and answered.
async fn start_mesh(
    args: &WithdrawArgs,
    url: &str,
    transport: &BenchTransport,
    children: &mut Vec<ChildNode>,
) -> anyhow::Result<(Balancer, String)> {
    let label = transport.kind().label();
    let registry = transport
        .spawn(
            &format!("registry ({label})"),
            "registry",
            &["--listen", "127.0.0.1:0"],
            |command: &mut Command| {
                command
                    .env("GRANTMESH_LOG", "error")
                    .stderr(Stdio::inherit());
            },
        )
        .await?;
    let registry_url = transport.url(registry.addr);
    children.push(registry);
    let pool_size = args.pool_size.to_string();
    let agencies = load::college_agencies();
    for n in 1..=args.colleges {
        let id = format!("college-{n}");
        transport.member(&format!("college/{id}"))?;
        let college = transport
            .spawn(
                &format!("college-{n} ({label})"),
                "college",
                &[
                    "--listen",
                    "127.0.0.1:0",
                    "--registry",
                    &registry_url,
                    "--pool-size",
                    &pool_size,
                    "--agencies",
                    &agencies,
                    "--instance-id",
                    &id,
                ],
                |command: &mut Command| {
                    command
                        .env("DATABASE_URL", url)
                        .envs(transport.college_env())
                        .env("GRANTMESH_LOG", "error")
                        .stderr(Stdio::inherit());
                },
            )
            .await?;
        children.push(college);
    }
    let balancer = Balancer::new(
        vec![registry_url.clone()],
        grantmesh_college::SERVICE,
        BalancerOptions {
            transport: transport.client(),
            ..BalancerOptions::default()
        },
    );
    let mut view = balancer.subscribe();
    tokio::time::timeout(Duration::from_secs(30), async {
        while view.borrow_and_update().instances.len() < args.colleges {
            view.changed().await?;
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("the {label} College instances did not register within 30 s"))??;
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
    Ok((balancer, registry_url))
}

/// What every measurement shares: the bench database and the pgbench set-up.
struct Ctx {
    /// A connection to the bench database, for settling and the books.
    db: tokio_postgres::Client,
    /// The processes whose CPU is sampled around each run.
    sampler: Sampler,
    /// pgbench, ready to run the one-statement script.
    pgbench: Pgbench,
}

impl Ctx {
    /// One pgbench cell: the warm-up (counted in the books only), then the
    /// measured run.
    async fn pgbench_cell(
        &self,
        clients: usize,
        args: &WithdrawArgs,
        vars: &PgbenchVars<'_>,
    ) -> anyhow::Result<(u64, Measured)> {
        let mut made = 0;
        if !args.warmup.is_zero() {
            made += self
                .pgbench
                .run(&self.sampler, clients, args.warmup, vars, "w")
                .await?
                .0;
        }
        let (n, measured) = self
            .pgbench
            .run(&self.sampler, clients, args.duration, vars, "m")
            .await?;
        Ok((made + n, measured))
    }

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

#[cfg(test)]
mod tests {
    use super::*;

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
