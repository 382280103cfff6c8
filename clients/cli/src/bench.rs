//! `grantmesh bench …`: measurements of a real mesh on this machine. They
//! report figures; they assert nothing.
//!
//! `bench removal` starts a registry and College instances as child
//! processes of this same binary, kills or stops them, and measures how long
//! until (a) a `Watch` stream reports the removal and (b) a [`Balancer`]
//! stops picking the instance — the longest window in which a client could
//! still pick a dead instance.
//!
//! `bench withdraw` ([`withdraw`]) measures College/Withdraw through the
//! mesh (registry, College children, client [`Balancer`]) at several
//! concurrencies, on many accounts and on one hot account, and runs
//! `pgbench` with the same SQL against the same database in the same run.

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use grantmesh_discovery::{Balancer, BalancerOptions};
use grantmesh_proto::RegistryClient;
use grantmesh_proto::v1::{ListInstancesRequest, WatchRequest, watch_event::Kind};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

mod cpu;
mod withdraw;

#[derive(Subcommand, Debug)]
pub enum Bench {
    /// Time from `kill -9` / SIGSTOP of an instance to its removal as watchers and clients see it.
    Removal(RemovalArgs),
    /// Withdrawals/s and p50/p99 through the mesh, next to `pgbench` running the same SQL.
    Withdraw(withdraw::WithdrawArgs),
}

#[derive(Args, Debug)]
pub struct RemovalArgs {
    /// How many instances to kill with SIGKILL.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// How many instances to freeze with SIGSTOP (each takes about one TTL).
    #[arg(long, default_value_t = 3)]
    stops: usize,
}

pub async fn run(bench: Bench) -> anyhow::Result<ExitCode> {
    match bench {
        Bench::Removal(args) => removal(args).await,
        Bench::Withdraw(args) => withdraw::run(args).await,
    }
}

struct Child_ {
    child: Child,
    url: String,
}

async fn spawn(args: &[&str]) -> anyhow::Result<Child_> {
    spawn_with(args, &[], Stdio::null()).await
}

/// Starts this binary with `args` and extra environment, and waits for its
/// `listening on ADDR` line. The child is killed when dropped.
async fn spawn_with(args: &[&str], envs: &[(&str, &str)], stderr: Stdio) -> anyhow::Result<Child_> {
    let exe = std::env::current_exe().context("failed to find this binary")?;
    let mut child = Command::new(exe)
        .args(args)
        .envs(envs.iter().copied())
        .env("GRANTMESH_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .context("failed to start a child process")?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("child did not start listening")??
        .context("child exited")?;
    let addr = line
        .strip_prefix("listening on ")
        .context("unexpected first line")?
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Child_ {
        child,
        url: format!("http://{addr}"),
    })
}

fn signal(child: &Child, signal: i32) -> anyhow::Result<()> {
    let pid = child.id().context("child already exited")?;
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}

/// One removal: when the signal was sent, when a watcher saw the delete,
/// when the balancer dropped the instance.
struct Sample {
    watcher: Duration,
    balancer: Duration,
}

async fn measure(registry: &str, id: &str, sig: i32, lead: Duration) -> anyhow::Result<Sample> {
    let college = spawn(&[
        "college",
        "--listen",
        "127.0.0.1:0",
        "--registry",
        registry,
        "--instance-id",
        id,
    ])
    .await?;
    // Wait until the registry holds the instance's lease on a KeepAlive stream.
    let mut client = RegistryClient::connect(registry.to_owned()).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let instances = client
            .list_instances(ListInstancesRequest {
                service: "college".into(),
            })
            .await?
            .into_inner()
            .instances;
        if instances.iter().any(|i| i.id == id && i.keep_alive_stream) {
            break;
        }
        if Instant::now() > deadline {
            bail!("{id} never registered");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let balancer = Balancer::new(
        vec![registry.to_owned()],
        "college",
        BalancerOptions::default(),
    );
    let mut view = balancer.subscribe();
    while !view.borrow_and_update().contains(id) {
        view.changed().await?;
    }
    let mut events = client
        .watch(WatchRequest {
            service: "college".into(),
        })
        .await?
        .into_inner();
    events.message().await?; // the snapshot

    // Where in the heartbeat cycle the signal lands matters for SIGSTOP.
    tokio::time::sleep(lead).await;
    let sent = Instant::now();
    signal(&college.child, sig)?;
    let watcher = async {
        while let Some(event) = events.message().await? {
            if event.kind() == Kind::Delete && event.instances.iter().any(|i| i.id == id) {
                return anyhow::Ok(sent.elapsed());
            }
        }
        bail!("watch ended")
    };
    let balancer_seen = async {
        while view.borrow_and_update().contains(id) {
            view.changed().await?;
        }
        anyhow::Ok(sent.elapsed())
    };
    let (watcher, balancer) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::try_join!(watcher, balancer_seen)
    })
    .await
    .context("no removal within 30 s")??;
    drop(college);
    Ok(Sample { watcher, balancer })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(what: &str, samples: &[Sample]) {
    let mut watcher: Vec<Duration> = samples.iter().map(|s| s.watcher).collect();
    let mut balancer: Vec<Duration> = samples.iter().map(|s| s.balancer).collect();
    watcher.sort();
    balancer.sort();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    for (seen_by, sorted) in [("Watch stream", &watcher), ("client balancer", &balancer)] {
        println!(
            "| {what} | {seen_by} | {} | {} | {} | {} |",
            sorted.len(),
            ms(percentile(sorted, 50.0)),
            ms(percentile(sorted, 99.0)),
            ms(*sorted.last().expect("samples"))
        );
    }
}

async fn removal(args: RemovalArgs) -> anyhow::Result<ExitCode> {
    let registry = spawn(&["registry", "--listen", "127.0.0.1:0", "--warmup", "0s"]).await?;
    let mut kills = Vec::new();
    for n in 0..args.kills {
        kills.push(
            measure(
                &registry.url,
                &format!("college-kill-{n}"),
                9,
                Duration::ZERO,
            )
            .await?,
        );
    }
    let mut stops = Vec::new();
    for n in 0..args.stops {
        // Spread the stops evenly over one heartbeat interval.
        let lead = Duration::from_millis((n * 1000 / args.stops) as u64);
        stops.push(measure(&registry.url, &format!("college-stop-{n}"), 19, lead).await?);
    }
    println!("| event | seen by | samples | p50 | p99 | max |");
    println!("| --- | --- | --- | --- | --- | --- |");
    if !kills.is_empty() {
        report("kill -9", &kills);
    }
    if !stops.is_empty() {
        report("SIGSTOP (TTL 3 s, heartbeat 1 s)", &stops);
    }
    Ok(ExitCode::SUCCESS)
}
