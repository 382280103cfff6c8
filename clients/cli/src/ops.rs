//! Operator commands against a running mesh: health checks, the registry's
//! view, and a ping through discovery.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use grantmesh_discovery::{Balancer, BalancerOptions, parse_registry_list, with_scheme};
use grantmesh_proto::v1::{ListInstancesRequest, PingRequest};
use grantmesh_proto::{AgencyClient, CollegeClient, RegistryClient};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

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
    /// Registry to ask (the first of a comma-separated list is used).
    #[arg(
        long,
        env = "GRANTMESH_REGISTRY",
        default_value = "http://127.0.0.1:7000"
    )]
    registry: String,
}

#[derive(Args, Debug)]
pub struct PingArgs {
    /// `agency` or `college`.
    service: String,
    /// Registry replicas to discover instances through, comma separated.
    #[arg(
        long,
        env = "GRANTMESH_REGISTRY",
        default_value = "http://127.0.0.1:7000"
    )]
    registry: String,
    /// How many pings to send.
    #[arg(long, default_value_t = 1)]
    count: u32,
}

pub async fn health(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let url = with_scheme(&args.addr);
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())?
            .connect()
            .await?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await?;
        anyhow::Ok(reply.into_inner().status())
    };
    let status = tokio::time::timeout(args.timeout, check)
        .await
        .with_context(|| format!("no answer from {url} within {:?}", args.timeout))?
        .with_context(|| format!("health check of {url} failed"))?;
    println!("{}", status.as_str_name());
    Ok(if status == ServingStatus::Serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn instances(args: InstancesArgs) -> anyhow::Result<ExitCode> {
    let url = parse_registry_list(&args.registry)
        .into_iter()
        .next()
        .context("--registry names no registry")?;
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| format!("failed to reach the registry at {url}"))?;
    let reply = RegistryClient::new(channel)
        .list_instances(ListInstancesRequest {
            service: args.service.unwrap_or_default(),
        })
        .await
        .context("ListInstances failed")?
        .into_inner();
    let mut instances = reply.instances;
    instances.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    println!(
        "{:<10} {:<28} {:<28} {:>10}",
        "SERVICE", "INSTANCE", "ADDRESS", "LAST BEAT"
    );
    for instance in &instances {
        let since = instance
            .since_last_beat
            .and_then(|d| Duration::try_from(d).ok())
            .map(|d| format!("{}ms ago", d.as_millis()))
            .unwrap_or_default();
        println!(
            "{:<10} {:<28} {:<28} {:>10}",
            instance.service, instance.id, instance.address, since
        );
    }
    eprintln!(
        "{} instance(s) at revision {}",
        instances.len(),
        reply.revision
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn ping(args: PingArgs) -> anyhow::Result<ExitCode> {
    let balancer = Balancer::new(
        parse_registry_list(&args.registry),
        args.service.clone(),
        BalancerOptions::default(),
    );
    for n in 0..args.count {
        let request = PingRequest {
            message: format!("ping {n}"),
            delay_ms: 0,
        };
        let reply = match args.service.as_str() {
            "college" => {
                balancer
                    .call(|channel| {
                        let request = request.clone();
                        async move { CollegeClient::new(channel).ping(request).await }
                    })
                    .await
            }
            "agency" => {
                balancer
                    .call(|channel| {
                        let request = request.clone();
                        async move { AgencyClient::new(channel).ping(request).await }
                    })
                    .await
            }
            other => anyhow::bail!("cannot ping service {other:?}: use agency or college"),
        }
        .with_context(|| format!("ping to {} failed", args.service))?
        .into_inner();
        println!("{} {}", reply.instance_id, reply.message);
    }
    Ok(ExitCode::SUCCESS)
}
