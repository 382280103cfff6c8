//! `bench heartbeat`: unary `Registry/Heartbeat` calls on TLS and on
//! plaintext, side by side in one run.
//!
//! For each transport ([`super::transport`]) a registry runs as a child of
//! this binary, and `--instances` College instances are registered with it
//! by hand, presenting the College's certificate (with TLS the registry takes
//! renewals for a service only from a certificate naming it). Then, for each
//! `--concurrency` c: c loops, each on a connection of its own (opened, and
//! so handshaken, before the clock starts), call `Heartbeat` back to back for
//! a warm-up and then `--duration`, round-robin over the instances. The
//! transports take turns, in reverse order on odd rounds. Heartbeat touches
//! no database: it is the smallest real call of the mesh, so what TLS adds
//! shows most plainly here.
//!
//! A second measurement times what a connection costs: `--connects` times in
//! a row, a fresh connection (TCP, plus the handshake with TLS) and its first
//! Heartbeat.
//!
//! Prints calls/s, p50/p99 and CPU µs per call (this process and the
//! registry), and TLS/plaintext ratios. It asserts nothing about speed; the
//! exit status is non-zero only when a call failed.

use std::collections::BTreeMap;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use grantmesh_discovery::tls::Transport;
use grantmesh_node::process::ChildNode;
use grantmesh_proto::RegistryClient;
use grantmesh_proto::v1::{HeartbeatRequest, Instance, RegisterRequest};
use hdrhistogram::Histogram;
use tokio::process::Command;
use tokio::time::Instant;

use super::transport::{BenchTransport, Kind, TransportChoice, ratio, round_order};
use super::withdraw::load::{Call, run_load};
use super::withdraw::measure::{Measured, Sampler, cpu_per_call, histogram, min_max, ms};

#[derive(Args, Debug)]
pub struct HeartbeatArgs {
    /// What the registry runs on; by default both, side by side.
    #[arg(long, value_enum, default_value_t = TransportChoice::Both)]
    transport: TransportChoice,
    /// Instances registered, whose leases the loops renew in turn.
    #[arg(long, default_value_t = 64)]
    instances: usize,
    /// Concurrent call loops, comma separated: one cell per value.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// How long each cell is measured, after its warm-up.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured calls before each cell.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Times each cell is measured, alternating which transport goes first.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Fresh connections timed one after another (connection + first call); 0 for none.
    #[arg(long, default_value_t = 200)]
    connects: usize,
}

/// The service the bench's instances belong to, and whose certificate renews them.
const SERVICE: &str = "college";
/// The bench instances' TTL: the longest the registry allows, so that no
/// lease lapses between two renewals of it, whatever the concurrency.
const INSTANCE_TTL: Duration = Duration::from_secs(3600);

/// One registry child on one transport, its instances registered.
struct Registry {
    kind: Kind,
    /// Held so that the child lives as long as this; killed when dropped.
    _child: ChildNode,
    url: String,
    /// How the bench renews leases: as the College.
    transport: Transport,
    /// Samples this process and the registry.
    sampler: Sampler,
}

pub async fn run(args: HeartbeatArgs) -> anyhow::Result<ExitCode> {
    if args.instances == 0 || args.rounds == 0 || args.duration.is_zero() {
        bail!("--instances, --rounds and --duration must be above zero");
    }
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        bail!("--concurrency must list loop counts above zero");
    }
    let work =
        std::env::temp_dir().join(format!("grantmesh-bench-heartbeat-{}", std::process::id()));
    let outcome = async {
        std::fs::create_dir_all(&work)?;
        let mut registries = Vec::new();
        for kind in args.transport.kinds() {
            registries.push(start(kind, &work, args.instances).await?);
        }
        measure_all(&args, &registries).await
    }
    .await;
    let _ = std::fs::remove_dir_all(&work);
    outcome
}

/// Starts a registry on `kind` and registers `instances` College instances with it.
async fn start(kind: Kind, work: &std::path::Path, instances: usize) -> anyhow::Result<Registry> {
    let bench = BenchTransport::new(kind, work)?;
    let node = bench
        .spawn(
            &format!("registry ({})", kind.label()),
            "registry",
            &[
                "--listen",
                "127.0.0.1:0",
                "--warmup",
                "0s",
                // One bench identity holds every instance.
                "--max-instances-per-member",
                &instances.max(1).to_string(),
            ],
            |command: &mut Command| {
                command
                    .env("GRANTMESH_LOG", "error")
                    .stderr(Stdio::inherit());
            },
        )
        .await?;
    let url = bench.url(node.addr);
    let transport = bench.client_as(&format!("{SERVICE}/{}", instance_id_prefix()))?;
    let mut client = RegistryClient::new(
        transport
            .channel(&url, Some("registry"))
            .await
            .context("failed to reach the bench registry")?,
    );
    for n in 0..instances {
        client
            .register(RegisterRequest {
                instance: Some(Instance {
                    id: instance_id(n),
                    service: SERVICE.into(),
                    // Never dialled: only its lease is renewed.
                    address: format!("{}://127.0.0.1:9", transport.scheme()),
                    ttl: Some(INSTANCE_TTL.try_into().expect("a small duration")),
                    ..Instance::default()
                }),
            })
            .await
            .with_context(|| format!("failed to register a bench instance on {url}"))?;
    }
    let sampler = Sampler {
        children: node.child.id().into_iter().collect(),
        postmaster: None,
    };
    Ok(Registry {
        kind,
        _child: node,
        url,
        transport,
        sampler,
    })
}

fn instance_id(n: usize) -> String {
    format!("{}-{n}", instance_id_prefix())
}

/// The bench instances' ids are replicas of this one name, which the
/// bench's certificate names.
fn instance_id_prefix() -> &'static str {
    "bench-heartbeat"
}

/// One cell: both transports at one concurrency.
struct Row {
    clients: usize,
    /// Each transport's figures over every round, in the order of `registries`.
    runs: Vec<(Kind, Measured)>,
    /// First/second transport of each round (TLS/plaintext with `both`).
    ratios: Vec<f64>,
}

async fn measure_all(args: &HeartbeatArgs, registries: &[Registry]) -> anyhow::Result<ExitCode> {
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut rows = Vec::new();
    let indices: Vec<usize> = (0..registries.len()).collect();
    for &clients in &args.concurrency {
        let mut runs: Vec<Vec<Measured>> = registries.iter().map(|_| Vec::new()).collect();
        for round in 0..args.rounds {
            for r in round_order(&indices, round) {
                let registry = &registries[r];
                let outcome = heartbeat_load(registry, clients, args).await?;
                for (error, n) in outcome.errors {
                    *errors.entry(error).or_default() += n;
                }
                runs[r].push(outcome.measured);
            }
        }
        let ratios = match runs.as_slice() {
            [a, b] => a
                .iter()
                .zip(b)
                .map(|(a, b)| ratio(a.rate, b.rate))
                .collect(),
            _ => Vec::new(),
        };
        let row = Row {
            clients,
            runs: registries
                .iter()
                .map(|r| r.kind)
                .zip(runs.into_iter().map(Measured::combine))
                .collect(),
            ratios,
        };
        eprintln!("{}", row.progress());
        rows.push(row);
    }
    print_calls(&rows);

    if args.connects > 0 {
        println!("| transport | fresh connections | connect + first Heartbeat p50 | p99 |");
        println!("| --- | --: | --: | --: |");
        let mut connects = Vec::new();
        for registry in registries {
            let latency = connect_load(registry, args.connects).await?;
            println!(
                "| {} | {} | {} | {} |",
                registry.kind.label(),
                args.connects,
                ms(latency.value_at_quantile(0.5)),
                ms(latency.value_at_quantile(0.99)),
            );
            connects.push(latency);
        }
        if let [tls, plain] = connects.as_slice() {
            println!(
                "| TLS/plaintext | | {:.2} | {:.2} |",
                ratio(
                    tls.value_at_quantile(0.5) as f64,
                    plain.value_at_quantile(0.5) as f64
                ),
                ratio(
                    tls.value_at_quantile(0.99) as f64,
                    plain.value_at_quantile(0.99) as f64
                ),
            );
        }
        println!();
    }

    if errors.is_empty() {
        println!("errors: 0");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("errors: {}", errors.values().sum::<u64>());
        for (error, n) in &errors {
            println!("  {n} × {error}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// `clients` loops of Heartbeat on `registry`, each on a connection of its own.
async fn heartbeat_load(
    registry: &Registry,
    clients: usize,
    args: &HeartbeatArgs,
) -> anyhow::Result<super::withdraw::load::MeshOutcome> {
    let mut channels = Vec::with_capacity(clients);
    for _ in 0..clients {
        channels.push(
            registry
                .transport
                .channel(&registry.url, Some("registry"))
                .await
                .context("failed to connect to the bench registry")?,
        );
    }
    let channels = Arc::new(channels);
    let instances = args.instances;
    let outcome = run_load(
        clients,
        args.warmup,
        args.duration,
        &registry.sampler,
        move |task, seq| -> Call {
            let mut client = RegistryClient::new(channels[task].clone());
            // Round-robin over the instances, the loops spread apart.
            let n = (task as u64 + seq * clients as u64) % instances as u64;
            let request = HeartbeatRequest {
                service: SERVICE.into(),
                instance_id: instance_id(n as usize),
            };
            Box::pin(async move {
                client.heartbeat(request).await.map(drop).map_err(|status| {
                    format!("Heartbeat: {:?}: {}", status.code(), status.message())
                })
            })
        },
    )
    .await;
    Ok(outcome)
}

/// `n` fresh connections one after another, each timed up to its first Heartbeat's answer.
async fn connect_load(registry: &Registry, n: usize) -> anyhow::Result<Histogram<u64>> {
    let mut latency = histogram();
    for _ in 0..n {
        let began = Instant::now();
        let channel = registry
            .transport
            .channel(&registry.url, Some("registry"))
            .await
            .context("failed to connect to the bench registry")?;
        RegistryClient::new(channel)
            .heartbeat(HeartbeatRequest {
                service: SERVICE.into(),
                instance_id: instance_id(0),
            })
            .await
            .context("Heartbeat on a fresh connection failed")?;
        latency.saturating_record(began.elapsed().as_micros() as u64);
    }
    Ok(latency)
}

impl Row {
    fn progress(&self) -> String {
        let mut line = format!("{} loops:", self.clients);
        for (kind, m) in &self.runs {
            line += &format!(
                " {} {:.0}/s p50 {} p99 {};",
                kind.label(),
                m.rate,
                ms(m.latency.value_at_quantile(0.5)),
                ms(m.latency.value_at_quantile(0.99)),
            );
        }
        line
    }
}

/// Calls/s, latency and CPU per call on each transport; TLS/plaintext when both ran.
fn print_calls(rows: &[Row]) {
    println!("| transport | loops | calls/s | p50 | p99 | CPU µs per call: client / registry |");
    println!("| --- | --: | --: | --: | --: | --: |");
    for row in rows {
        for (kind, m) in &row.runs {
            let (client, registry) = cpu_per_call(m);
            println!(
                "| {} | {} | {:.0} | {} | {} | {client:.0} / {registry:.0} |",
                kind.label(),
                row.clients,
                m.rate,
                ms(m.latency.value_at_quantile(0.5)),
                ms(m.latency.value_at_quantile(0.99)),
            );
        }
    }
    println!();
    if rows.iter().all(|row| row.runs.len() < 2) {
        return;
    }
    let rounds = rows.first().map_or(1, |row| row.ratios.len());
    println!(
        "| loops | calls/s TLS/plaintext | per round ({rounds}) | p50 TLS/plaintext | p99 TLS/plaintext | CPU per call TLS/plaintext: client / registry |"
    );
    println!("| --: | --: | --: | --: | --: | --: |");
    for row in rows {
        let [(_, tls), (_, plain)] = row.runs.as_slice() else {
            continue;
        };
        let quantile = |q: f64| {
            ratio(
                tls.latency.value_at_quantile(q) as f64,
                plain.latency.value_at_quantile(q) as f64,
            )
        };
        let ((tls_client, tls_registry), (plain_client, plain_registry)) =
            (cpu_per_call(tls), cpu_per_call(plain));
        println!(
            "| {} | {:.2} | {} | {:.2} | {:.2} | {:.2} / {:.2} |",
            row.clients,
            ratio(tls.rate, plain.rate),
            min_max(&row.ratios),
            quantile(0.5),
            quantile(0.99),
            ratio(tls_client, plain_client),
            ratio(tls_registry, plain_registry),
        );
    }
    println!();
}
