//! `bench removal`: how long a dead or frozen College instance stays visible.
//!
//! Starts a registry and College instances as child processes of this same
//! binary, kills (`kill -9`) or freezes (SIGSTOP) them one at a time, and
//! measures how long until (a) a `Watch` stream reports the removal and (b) a
//! [`Balancer`] stops picking the instance — the longest window in which a
//! client could still pick a dead instance.
//!
//! The College children take their store and keys from the environment the
//! bench runs in (`DATABASE_URL`, `GRANTMESH_TOKEN_KEY`,
//! `GRANTMESH_SERVICE_KEY`), as `grantmesh college` itself would.

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use grantmesh_discovery::{Balancer, BalancerOptions};
use grantmesh_node::process::ChildNode;
use grantmesh_proto::RegistryClient;
use grantmesh_proto::v1::{ListInstancesRequest, WatchRequest, watch_event::Kind};
use nix::sys::signal::Signal;
use tokio::process::Command;
use tokio::time::Instant;

#[derive(Args, Debug)]
pub struct RemovalArgs {
    /// How many instances to kill with SIGKILL.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// How many instances to freeze with SIGSTOP (each takes about one TTL).
    #[arg(long, default_value_t = 3)]
    stops: usize,
}

pub async fn run(args: RemovalArgs) -> anyhow::Result<ExitCode> {
    let registry_node = spawn(
        "registry",
        &["registry", "--listen", "127.0.0.1:0", "--warmup", "0s"],
    )
    .await?;
    let registry = registry_node.url();
    let mut kills = Vec::new();
    for n in 0..args.kills {
        kills.push(
            measure(
                &registry,
                &format!("college-kill-{n}"),
                Signal::SIGKILL,
                Duration::ZERO,
            )
            .await?,
        );
    }
    let mut stops = Vec::new();
    for n in 0..args.stops {
        // Spread the stops evenly over one heartbeat interval.
        let lead = Duration::from_millis((n * 1000 / args.stops) as u64);
        stops.push(
            measure(
                &registry,
                &format!("college-stop-{n}"),
                Signal::SIGSTOP,
                lead,
            )
            .await?,
        );
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

/// Starts this binary with `args` (quiet: errors only, stderr dropped) and
/// waits for its `listening on ADDR` line. The child is killed when dropped.
async fn spawn(name: &str, args: &[&str]) -> anyhow::Result<ChildNode> {
    let exe = std::env::current_exe().context("failed to find this binary")?;
    ChildNode::spawn(&exe, name, args, |command: &mut Command| {
        command.env("GRANTMESH_LOG", "error").stderr(Stdio::null());
    })
    .await
}

/// One removal: how long after the signal a watcher saw the delete, and the
/// balancer dropped the instance.
struct Sample {
    watcher: Duration,
    balancer: Duration,
}

async fn measure(
    registry: &str,
    id: &str,
    signal: Signal,
    lead: Duration,
) -> anyhow::Result<Sample> {
    let college = spawn(
        id,
        &[
            "college",
            "--listen",
            "127.0.0.1:0",
            "--registry",
            registry,
            "--instance-id",
            id,
        ],
    )
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
    college.signal(signal)?;
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
