//! `bench removal`: how long a dead or frozen College instance stays visible.
//!
//! Starts a registry and College instances as child processes of this same
//! binary, kills (`kill -9`) or freezes (SIGSTOP) them one at a time, and
//! measures how long until (a) a `Watch` stream reports the removal and (b) a
//! [`Balancer`] stops picking the instance — the longest window in which a
//! client could still pick a dead instance.
//!
//! The College children share a store that only they use: `--database-url`
//! when given, else an embedded SQLite file in a temporary directory that
//! the bench removes afterwards. They sign with fixed bench keys. The store
//! plays no part in what is measured; the children merely need one to start.
//!
//! The mesh runs on TLS with a throwaway CA by default (`--transport`, see
//! [`super::transport`]); with `both`, the whole measurement runs once on
//! each transport and the table has a row per transport.

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

use super::transport::{BenchTransport, TransportChoice};

#[derive(Args, Debug)]
pub struct RemovalArgs {
    /// How many instances to kill with SIGKILL.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// How many instances to freeze with SIGSTOP (each takes about one TTL).
    #[arg(long, default_value_t = 3)]
    stops: usize,
    /// The children's store; an embedded SQLite file in a temporary directory by default.
    #[arg(long)]
    database_url: Option<String>,
    /// What the mesh runs on: TLS with a throwaway CA, plaintext, or both one after the other.
    #[arg(long, value_enum, default_value_t = TransportChoice::Tls)]
    transport: TransportChoice,
}

/// What every child is started with.
struct Children {
    database_url: String,
    /// The children's TLS flags and the bench's client transport.
    transport: BenchTransport,
}

pub async fn run(args: RemovalArgs) -> anyhow::Result<ExitCode> {
    let scratch =
        std::env::temp_dir().join(format!("grantmesh-bench-removal-{}", std::process::id()));
    let outcome = async {
        std::fs::create_dir_all(&scratch)?;
        let database_url = match &args.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite:{}", scratch.join("bench.db").display()),
        };
        println!("| transport | event | seen by | samples | p50 | p99 | max |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        for kind in args.transport.kinds() {
            let children = Children {
                database_url: database_url.clone(),
                transport: BenchTransport::new(kind, &scratch)?,
            };
            measure_all(&args, &children).await?;
        }
        anyhow::Ok(ExitCode::SUCCESS)
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}

async fn measure_all(args: &RemovalArgs, children: &Children) -> anyhow::Result<()> {
    let registry_node = children
        .spawn(
            "registry",
            "registry",
            &["--listen", "127.0.0.1:0", "--warmup", "0s"],
        )
        .await?;
    let registry = children.transport.url(registry_node.addr);
    let mut kills = Vec::new();
    for n in 0..args.kills {
        kills.push(
            measure(
                children,
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
                children,
                &registry,
                &format!("college-stop-{n}"),
                Signal::SIGSTOP,
                lead,
            )
            .await?,
        );
    }
    let transport = children.transport.kind().label();
    if !kills.is_empty() {
        report(transport, "kill -9", &kills);
    }
    if !stops.is_empty() {
        report(transport, "SIGSTOP (TTL 3 s, heartbeat 1 s)", &stops);
    }
    Ok(())
}

impl Children {
    /// Starts `grantmesh ROLE ARGS…` on the bench's transport (quiet: errors
    /// only, stderr dropped) and waits for its `listening on ADDR` line. The
    /// child is killed when dropped.
    async fn spawn(&self, name: &str, role: &str, args: &[&str]) -> anyhow::Result<ChildNode> {
        self.transport
            .spawn(name, role, args, |command: &mut Command| {
                command
                    .env("GRANTMESH_LOG", "error")
                    .env("DATABASE_URL", &self.database_url)
                    .envs(self.transport.college_env())
                    .stderr(Stdio::null());
            })
            .await
    }
}

/// One removal: how long after the signal a watcher saw the delete, and the
/// balancer dropped the instance.
struct Sample {
    watcher: Duration,
    balancer: Duration,
}

async fn measure(
    children: &Children,
    registry: &str,
    id: &str,
    signal: Signal,
    lead: Duration,
) -> anyhow::Result<Sample> {
    children.transport.member(&format!("college/{id}"))?;
    let college = children
        .spawn(
            id,
            "college",
            &[
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
    let transport = children.transport.client();
    let mut client = RegistryClient::new(
        transport
            .channel(registry, Some("registry"))
            .await
            .context("failed to reach the registry")?,
    );
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
        BalancerOptions {
            transport,
            ..BalancerOptions::default()
        },
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

fn report(transport: &str, what: &str, samples: &[Sample]) {
    let mut watcher: Vec<Duration> = samples.iter().map(|s| s.watcher).collect();
    let mut balancer: Vec<Duration> = samples.iter().map(|s| s.balancer).collect();
    watcher.sort();
    balancer.sort();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    for (seen_by, sorted) in [("Watch stream", &watcher), ("client balancer", &balancer)] {
        println!(
            "| {transport} | {what} | {seen_by} | {} | {} | {} | {} |",
            sorted.len(),
            ms(percentile(sorted, 50.0)),
            ms(percentile(sorted, 99.0)),
            ms(*sorted.last().expect("samples"))
        );
    }
}
