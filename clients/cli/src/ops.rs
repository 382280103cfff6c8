//! Operator commands against a running mesh: health checks, the registry's
//! view of live instances (once or followed live), and a ping through
//! discovery and balancing.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use grantmesh_discovery::{Balancer, BalancerOptions, SnapshotParts, parse_registry_list};

use crate::transport::with_scheme;
use grantmesh_proto::RegistryClient;
use grantmesh_proto::v1::{
    Instance, ListInstancesReply, ListInstancesRequest, PingRequest, WatchRequest, watch_event,
};
use grantmesh_proto::{AgencyClient, CollegeClient};
use tonic::Status;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::exit::CliError;
use crate::output::{self, Format};

/// How long to wait for one registry replica before trying the next: a
/// registry on a reachable host answers in milliseconds.
const REGISTRY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How many full rounds over the replicas `instances --watch` makes, in a row,
/// without any answering before it gives up.
const WATCH_ROUNDS: u32 = 5;
/// Pause between rounds of `instances --watch` when no replica answered.
const WATCH_ROUND_PAUSE: Duration = Duration::from_secs(1);

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// List the live instances a registry knows: address, labels, TTL, last beat.
    Instances(InstancesArgs),
    /// Check a server's gRPC health; exits 0 when it is SERVING, 5 when not.
    Health(HealthArgs),
    /// Call a service's Ping through the mesh (discovery and balancing included).
    Ping(PingArgs),
    /// Every registry replica at once: health, revision, instances per
    /// service, self-preservation, uptime and latency (like `etcdctl endpoint
    /// status`). Exits 5 when a replica does not answer SERVING.
    Status(StatusArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Registry replicas, comma separated; each one is asked.
    #[arg(long, env = "GRANTMESH_REGISTRY", default_value = crate::researcher::DEFAULT_REGISTRY)]
    registry: String,
    /// How long to wait for each replica.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// Server to check, `HOST:PORT` or a URL.
    addr: String,
    /// Service to check, e.g. `grantmesh.v1.College`; the whole server when omitted.
    #[arg(long, default_value = "")]
    service: String,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Args, Debug)]
pub struct InstancesArgs {
    /// Only this service (e.g. `college`); every service when omitted.
    service: Option<String>,
    /// Registry replicas, comma separated; each is tried in turn until one answers.
    #[arg(long, env = "GRANTMESH_REGISTRY", default_value = crate::researcher::DEFAULT_REGISTRY)]
    registry: String,
    /// Follow changes live (added/removed lines) until Ctrl-C; needs SERVICE.
    #[arg(long, requires = "service")]
    watch: bool,
}

#[derive(Args, Debug)]
pub struct PingArgs {
    /// `agency` or `college`.
    service: String,
    /// Registry replicas to discover instances through, comma separated.
    #[arg(long, env = "GRANTMESH_REGISTRY", default_value = crate::researcher::DEFAULT_REGISTRY)]
    registry: String,
    /// How many pings to send.
    #[arg(long, default_value_t = 1)]
    count: u32,
}

pub async fn run(verb: Verb, format: Format) -> anyhow::Result<ExitCode> {
    match verb {
        Verb::Instances(args) if args.watch => watch_instances(args, format).await,
        Verb::Instances(args) => instances(args, format).await,
        Verb::Health(args) => health(args).await,
        Verb::Ping(args) => ping(args, format).await,
        Verb::Status(args) => status(args, format).await,
    }
}

/// What one registry replica answered `status`.
struct ReplicaStatus {
    url: String,
    /// SERVING, NOT_SERVING, or why it could not be asked.
    health: Result<String, String>,
    status: Option<grantmesh_proto::v1::RegistryStatus>,
    latency: Option<Duration>,
}

async fn status(args: StatusArgs, format: Format) -> anyhow::Result<ExitCode> {
    let registries = parse_registry_list(&args.registry);
    if registries.is_empty() {
        return Err(CliError::Usage("--registry names no registry".to_owned()).into());
    }
    let transport = crate::transport::for_urls(registries.iter().map(String::as_str), None)?;
    // Every replica at once: one that hangs costs the timeout once, not per replica.
    let asked = futures::future::join_all(registries.iter().map(|url| {
        let transport = transport.clone();
        async move {
            let ask = async {
                let channel = transport
                    .channel(url, Some(grantmesh_discovery::REGISTRY_SERVICE))
                    .await?;
                let health = HealthClient::new(channel.clone())
                    .check(HealthCheckRequest {
                        service: "grantmesh.v1.Registry".to_owned(),
                    })
                    .await?
                    .into_inner()
                    .status()
                    .as_str_name()
                    .to_owned();
                let started = std::time::Instant::now();
                let described = RegistryClient::new(channel)
                    .describe_registry(grantmesh_proto::v1::DescribeRegistryRequest {})
                    .await?
                    .into_inner();
                anyhow::Ok((health, described, started.elapsed()))
            };
            match tokio::time::timeout(args.timeout, ask).await {
                Ok(Ok((health, described, latency))) => ReplicaStatus {
                    url: url.clone(),
                    health: Ok(health),
                    status: Some(described),
                    latency: Some(latency),
                },
                Ok(Err(err)) => {
                    // The innermost cause says it best ("Connection refused").
                    let message = err
                        .chain()
                        .last()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    let hint = scheme_hints(std::slice::from_ref(url)).await;
                    ReplicaStatus {
                        url: url.clone(),
                        health: Err(format!("{message}{hint}")),
                        status: None,
                        latency: None,
                    }
                }
                Err(_) => ReplicaStatus {
                    url: url.clone(),
                    health: Err(format!("no answer within {:?}", args.timeout)),
                    status: None,
                    latency: None,
                },
            }
        }
    }))
    .await;
    match format {
        Format::Json => {
            let mut rows = Vec::new();
            for replica in &asked {
                let mut row = serde_json::json!({ "registry": replica.url });
                match &replica.health {
                    Ok(health) => row["health"] = health.clone().into(),
                    Err(error) => row["error"] = error.clone().into(),
                }
                if let Some(status) = &replica.status {
                    row["status"] = serde_json::from_str(&output::to_json(status)?)?;
                }
                if let Some(latency) = replica.latency {
                    row["latencyMs"] = (latency.as_secs_f64() * 1000.0).into();
                }
                rows.push(row);
            }
            println!("{}", serde_json::json!({ "registries": rows }));
        }
        Format::Table | Format::Csv => {
            let mut table = output::table([
                "REGISTRY",
                "HEALTH",
                "REVISION",
                "INSTANCES",
                "SELF-PRESERVATION",
                "UPTIME",
                "LATENCY",
            ]);
            for replica in &asked {
                let status = replica.status.clone().unwrap_or_default();
                let instances = status
                    .services
                    .iter()
                    .map(|s| format!("{} {}", s.service, s.instances))
                    .collect::<Vec<_>>()
                    .join(", ");
                let preserving = status
                    .services
                    .iter()
                    .filter(|s| s.self_preservation)
                    .map(|s| s.service.clone())
                    .collect::<Vec<_>>();
                let answered = replica.status.is_some();
                table.add_row([
                    replica.url.clone(),
                    match &replica.health {
                        Ok(health) if status.warming_up => format!("{health} (warming up)"),
                        Ok(health) => health.clone(),
                        Err(error) => format!("unreachable: {error}"),
                    },
                    if answered {
                        status.revision.to_string()
                    } else {
                        String::new()
                    },
                    if answered && instances.is_empty() {
                        "none".to_owned()
                    } else {
                        instances
                    },
                    match (answered, preserving.is_empty()) {
                        (false, _) => String::new(),
                        (true, true) => "no".to_owned(),
                        (true, false) => format!("yes: {}", preserving.join(", ")),
                    },
                    output::duration(status.uptime.as_ref())
                        .split_whitespace()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" "),
                    replica
                        .latency
                        .map(|l| format!("{:.2} ms", l.as_secs_f64() * 1000.0))
                        .unwrap_or_default(),
                ]);
            }
            println!("{}", table.trim_fmt());
        }
    }
    let serving = asked
        .iter()
        .filter(|r| r.health.as_deref() == Ok("SERVING"))
        .count();
    if serving == asked.len() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{serving} of {} registry replica(s) SERVING", asked.len());
        Ok(ExitCode::from(crate::exit::UNAVAILABLE))
    }
}

async fn health(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let url = with_scheme(&args.addr);
    let check = async {
        let channel = crate::transport::for_urls([url.as_str()], None)?
            .channel(&url, None)
            .await?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await?;
        anyhow::Ok(reply.into_inner().status())
    };
    let checked = tokio::time::timeout(args.timeout, check)
        .await
        .map_err(|_| {
            anyhow::Error::new(Status::deadline_exceeded(format!(
                "no answer from {url} within {:?}",
                args.timeout
            )))
        })
        .and_then(|checked| checked);
    let status = match checked {
        Ok(status) => status,
        Err(err) => {
            let hint = scheme_hints(std::slice::from_ref(&url)).await;
            if hint.is_empty() {
                return Err(err);
            }
            return Err(CliError::Unavailable(format!("{url} did not answer{hint}")).into());
        }
    };
    println!("{}", status.as_str_name());
    if status != ServingStatus::Serving {
        return Err(CliError::Unavailable(format!("{url} is {}", status.as_str_name())).into());
    }
    Ok(ExitCode::SUCCESS)
}

/// Connects to the first replica that answers; the error names every one tried.
async fn first_registry(
    registries: &[String],
) -> Result<(String, RegistryClient<Channel>), Status> {
    let transport = crate::transport::for_urls(registries.iter().map(String::as_str), None)
        .map_err(|err| Status::invalid_argument(format!("{err:#}")))?;
    for url in registries {
        let connect = transport.channel(url, Some(grantmesh_discovery::REGISTRY_SERVICE));
        match tokio::time::timeout(REGISTRY_CONNECT_TIMEOUT, connect).await {
            Ok(Ok(channel)) => return Ok((url.clone(), RegistryClient::new(channel))),
            Ok(Err(err)) => {
                tracing::debug!(registry = %url, error = ?err, "registry did not answer")
            }
            Err(_) => tracing::debug!(registry = %url, "registry did not answer in time"),
        }
    }
    Err(Status::unavailable(format!(
        "no registry answered at {}{}",
        registries.join(", "),
        scheme_hints(registries).await
    )))
}

/// ` (127.0.0.1:7000 speaks TLS: use https://127.0.0.1:7000)` for each
/// registry that speaks the other protocol than its URL says; empty when none does.
pub async fn scheme_hints(urls: &[String]) -> String {
    let mut hints = Vec::new();
    for url in urls {
        if let Some(hint) = grantmesh_discovery::tls::scheme_mismatch(url).await {
            hints.push(hint);
        }
    }
    if hints.is_empty() {
        String::new()
    } else {
        format!(" ({})", hints.join("; "))
    }
}

pub(crate) async fn list_from_any(
    registries: &[String],
    service: &str,
) -> Result<(String, ListInstancesReply), Status> {
    let mut last = None;
    let mut remaining = registries;
    while !remaining.is_empty() {
        let (url, mut client) = first_registry(remaining).await?;
        let index = registries.iter().position(|r| *r == url).unwrap_or(0);
        remaining = &registries[index + 1..];
        match client
            .list_instances(ListInstancesRequest {
                service: service.to_owned(),
            })
            .await
        {
            Ok(reply) => return Ok((url, reply.into_inner())),
            // A connection that broke under the call may be the wrong scheme
            // (plaintext HTTP/2 to a TLS registry): say so when it is.
            Err(status) if std::error::Error::source(&status).is_some() => {
                let hint = scheme_hints(std::slice::from_ref(&url)).await;
                if !hint.is_empty() {
                    return Err(Status::unavailable(format!("{url} did not answer{hint}")));
                }
                if status.code() != tonic::Code::Unavailable {
                    return Err(status);
                }
                last = Some(status);
            }
            Err(status) if status.code() == tonic::Code::Unavailable => last = Some(status),
            Err(status) => return Err(status),
        }
    }
    Err(last.unwrap_or_else(|| {
        Status::unavailable(format!("no registry answered at {}", registries.join(", ")))
    }))
}

async fn instances(args: InstancesArgs, format: Format) -> anyhow::Result<ExitCode> {
    let registries = parse_registry_list(&args.registry);
    if registries.is_empty() {
        return Err(CliError::Usage("--registry names no registry".to_owned()).into());
    }
    let (url, mut reply) =
        list_from_any(&registries, args.service.as_deref().unwrap_or_default()).await?;
    reply
        .instances
        .sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    output::emit(format, &reply, |r| output::instances(&r.instances))?;
    let answered = format!(
        "{} instance(s), answered by {url} at revision {}",
        reply.instances.len(),
        reply.revision
    );
    match format {
        Format::Table | Format::Csv => println!("{answered}"),
        Format::Json => eprintln!("{answered}"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn watch_instances(args: InstancesArgs, format: Format) -> anyhow::Result<ExitCode> {
    let registries = parse_registry_list(&args.registry);
    let service = args.service.unwrap_or_default();
    let follow = async {
        let mut silent_rounds = 0;
        loop {
            let mut answered = false;
            for url in &registries {
                match follow_one(url, &service, format).await {
                    Ok(()) => {
                        answered = true;
                        eprintln!("registry {url} closed the watch; trying the next replica");
                    }
                    Err(FollowError::NotAnswered) => {}
                    Err(FollowError::Broke(status)) => {
                        answered = true;
                        eprintln!(
                            "registry {url} stopped answering ({}); trying the next replica",
                            status.message()
                        );
                    }
                    Err(FollowError::Refused(status)) => return Err(anyhow::Error::new(status)),
                    Err(FollowError::Print(err)) => return Err(err),
                }
            }
            silent_rounds = if answered { 0 } else { silent_rounds + 1 };
            if silent_rounds >= WATCH_ROUNDS {
                return Err(Status::unavailable(format!(
                    "no registry answered at {}",
                    registries.join(", ")
                ))
                .into());
            }
            tokio::time::sleep(WATCH_ROUND_PAUSE).await;
        }
    };
    tokio::select! {
        result = follow => result,
        _ = tokio::signal::ctrl_c() => Ok(ExitCode::SUCCESS),
    }
}

enum FollowError {
    NotAnswered,
    Broke(Status),
    Refused(Status),
    Print(anyhow::Error),
}

/// Follows one replica's Watch stream, printing each change as it comes.
async fn follow_one(url: &str, service: &str, format: Format) -> Result<(), FollowError> {
    let (_, mut client) = first_registry(&[url.to_owned()])
        .await
        .map_err(|_| FollowError::NotAnswered)?;
    let mut events = client
        .watch(WatchRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable => FollowError::NotAnswered,
            _ => FollowError::Refused(status),
        })?
        .into_inner();
    if format == Format::Table {
        eprintln!("following {service} at {url} (Ctrl-C to stop)");
    }
    // A snapshot comes in parts: it is printed once whole.
    let mut parts = SnapshotParts::default();
    loop {
        let event = match events.message().await {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(()),
            Err(status) => return Err(FollowError::Broke(status)),
        };
        let Some(event) = parts.push(event) else {
            continue;
        };
        if format == Format::Json {
            println!("{}", output::to_json(&event).map_err(FollowError::Print)?);
            continue;
        }
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        match event.kind() {
            watch_event::Kind::Snapshot => {
                println!("{now} snapshot at revision {}", event.revision);
                println!("{}", output::instances(&event.instances));
            }
            watch_event::Kind::Put => {
                for i in &event.instances {
                    println!("{now} + {}", describe(i));
                }
            }
            watch_event::Kind::Delete => {
                for i in &event.instances {
                    println!("{now} - {} ({})", describe(i), event.reason);
                }
            }
            watch_event::Kind::Unspecified => {}
        }
    }
}

fn describe(i: &Instance) -> String {
    format!("{} {} {}", i.service, i.id, i.address)
}

async fn ping(args: PingArgs, format: Format) -> anyhow::Result<ExitCode> {
    if !matches!(args.service.as_str(), "college" | "agency") {
        return Err(CliError::Usage(format!(
            "cannot ping service {:?}: use agency or college",
            args.service
        ))
        .into());
    }
    let balancer = Balancer::new(
        parse_registry_list(&args.registry),
        args.service.clone(),
        BalancerOptions {
            transport: crate::transport::for_registries(&args.registry, None)?,
            ..BalancerOptions::default()
        },
    );
    for n in 0..args.count {
        let request = PingRequest {
            message: format!("ping {n}"),
            delay_ms: 0,
        };
        let started = std::time::Instant::now();
        let reply = balancer
            .call(|channel| {
                let request = request.clone();
                let service = args.service.clone();
                async move {
                    if service == "college" {
                        CollegeClient::new(channel).ping(request).await
                    } else {
                        AgencyClient::new(channel).ping(request).await
                    }
                }
            })
            .await
            .context("ping failed")?
            .into_inner();
        match format {
            Format::Json => println!("{}", output::to_json(&reply)?),
            // The first ping also waits for the registry's snapshot and a
            // connection; later ones are one round trip.
            Format::Table | Format::Csv => println!(
                "{} {} time={:.2} ms",
                reply.instance_id,
                reply.message,
                started.elapsed().as_secs_f64() * 1000.0
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}
