//! The server roles: flags, start-up checks, and handing each service to
//! [`grantmesh_server::serve`].

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use grantmesh_auth::Keys;
use grantmesh_discovery::{Balancer, BalancerOptions, RegistrarOptions, parse_registry_list};
use grantmesh_proto::service_names;
use grantmesh_proto::v1::Instance;
use grantmesh_server::ServeOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

/// Flags every server role shares.
#[derive(Args, Clone, Debug)]
pub struct ServerArgs {
    /// Address to listen on. Port 0 picks a free port (printed on stdout).
    #[arg(long, env = "GRANTMESH_LISTEN")]
    listen: Option<SocketAddr>,
    /// Id to register under; a fresh `SERVICE-xxxx` id by default.
    #[arg(long, env = "GRANTMESH_INSTANCE_ID")]
    instance_id: Option<String>,
    /// How long in-flight calls get to finish on shutdown.
    #[arg(long, env = "GRANTMESH_GRACE_PERIOD", default_value = "10s", value_parser = humantime::parse_duration)]
    grace_period: Duration,
}

/// Flags of roles that join the mesh (agency, college).
#[derive(Args, Clone, Debug)]
pub struct MeshArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// URL other instances dial to reach this one; `http://LISTEN` by default.
    #[arg(long, env = "GRANTMESH_ADVERTISE")]
    advertise: Option<String>,
    /// Registry replicas to register with, comma separated.
    #[arg(
        long,
        env = "GRANTMESH_REGISTRY",
        default_value = "http://127.0.0.1:7000"
    )]
    registry: String,
    /// How long the registry waits for a heartbeat before removing this instance.
    #[arg(long, env = "GRANTMESH_TTL", default_value = "3s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// How often this instance renews its lease.
    #[arg(long, env = "GRANTMESH_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// How long to keep serving after deregistering on shutdown, so clients stop picking this instance first.
    #[arg(long, env = "GRANTMESH_DRAIN_DELAY", default_value = "500ms", value_parser = humantime::parse_duration)]
    drain_delay: Duration,
}

#[derive(Args, Clone, Debug)]
pub struct RegistryArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// TTL for instances that register without one.
    #[arg(long, env = "GRANTMESH_TTL", default_value = "3s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// How long after start-up Watch holds back its first snapshot, so that a restarted
    /// registry has relearned the mesh first (more than the instances' heartbeat interval).
    #[arg(long, env = "GRANTMESH_REGISTRY_WARMUP", default_value = "1500ms", value_parser = humantime::parse_duration)]
    warmup: Duration,
}

/// Flags of roles that use the central store and verify tokens (agency, college).
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// PostgreSQL URL of the central store, e.g. postgres://user:pass@host:5432/grantmesh.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Connections this instance may hold to the store.
    #[arg(long, env = "GRANTMESH_POOL_SIZE", default_value_t = 16)]
    pool_size: usize,
    /// Key that signs researchers' bearer tokens (at least 32 bytes; the same on every instance).
    #[arg(long, env = "GRANTMESH_TOKEN_KEY", hide_env_values = true)]
    token_key: String,
    /// Key that signs agencies' calls to colleges (at least 32 bytes; differs from the token key).
    #[arg(long, env = "GRANTMESH_SERVICE_KEY", hide_env_values = true)]
    service_key: String,
    /// How long a researcher's token stays valid.
    #[arg(long, env = "GRANTMESH_TOKEN_TTL", default_value = "12h", value_parser = humantime::parse_duration)]
    token_ttl: Duration,
}

impl StoreArgs {
    fn keys(&self) -> anyhow::Result<Keys> {
        Keys::new(
            self.token_key.as_bytes(),
            self.service_key.as_bytes(),
            self.token_ttl,
        )
        .context("--token-key / --service-key are not usable")
    }
}

#[derive(Args, Clone, Debug)]
pub struct AgencyArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// The agency's name; instances with the same name are one agency.
    #[arg(
        long,
        env = "GRANTMESH_AGENCY_NAME",
        default_value = "grantmesh-agency"
    )]
    name: String,
    /// Smallest award granted, in minor units.
    #[arg(long, env = "GRANTMESH_MIN_AWARD", default_value_t = 300_000)]
    min_award: i64,
    /// Largest award granted, in minor units.
    #[arg(long, env = "GRANTMESH_MAX_AWARD", default_value_t = 500_000)]
    max_award: i64,
    /// How long one attempt to have a college open an account may take.
    #[arg(long, env = "GRANTMESH_OPEN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    open_timeout: Duration,
    /// How often accepted proposals still without an account are retried.
    #[arg(long, env = "GRANTMESH_RECONCILE_EVERY", default_value = "2s", value_parser = humantime::parse_duration)]
    reconcile_every: Duration,
}

#[derive(Args, Clone, Debug)]
pub struct CollegeArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// How long one day of an account's duration lasts (simulations use 1s).
    #[arg(long, env = "GRANTMESH_DAY_LENGTH", default_value = "24h", value_parser = humantime::parse_duration)]
    day_length: Duration,
}

const DEFAULT_REGISTRY_PORT: u16 = 7000;
const DEFAULT_AGENCY_PORT: u16 = 7100;
const DEFAULT_COLLEGE_PORT: u16 = 7200;

pub async fn run_registry(args: RegistryArgs) -> anyhow::Result<ExitCode> {
    if !(grantmesh_registry::TTL_RANGE.0..=grantmesh_registry::TTL_RANGE.1).contains(&args.ttl) {
        bail!(
            "--ttl {:?} is outside {:?}..={:?}",
            args.ttl,
            grantmesh_registry::TTL_RANGE.0,
            grantmesh_registry::TTL_RANGE.1
        );
    }
    let listener = bind(&args.server, DEFAULT_REGISTRY_PORT).await?;
    let instance_id = args
        .server
        .instance_id
        .clone()
        .unwrap_or_else(|| grantmesh_discovery::new_instance_id("registry"));
    let mut options = ServeOptions::new(service_names::REGISTRY);
    options.grace_period = args.server.grace_period;
    let registry = grantmesh_registry::RegistryService::new(
        grantmesh_registry::RegistryConfig {
            instance_id,
            default_ttl: args.ttl,
            warmup: args.warmup,
        },
        options.streams_closing.clone(),
    );
    serve(listener, Routes::new(registry.into_server()), options).await
}

pub async fn run_agency(args: AgencyArgs) -> anyhow::Result<ExitCode> {
    let keys = args.store.keys()?;
    if args.name.trim().is_empty() || args.name.len() > 64 {
        bail!("--name must be 1 to 64 characters");
    }
    if args.min_award <= 0 || args.min_award > args.max_award {
        bail!(
            "--min-award ({}) must be more than zero and at most --max-award ({})",
            args.min_award,
            args.max_award
        );
    }
    let labels = [(grantmesh_agency::NAME_LABEL.to_owned(), args.name.clone())].into();
    let (listener, instance, options) = join_mesh(
        &args.mesh,
        grantmesh_agency::SERVICE,
        service_names::AGENCY,
        DEFAULT_AGENCY_PORT,
        labels,
    )
    .await?;
    let colleges = Balancer::new(
        parse_registry_list(&args.mesh.registry),
        grantmesh_college::SERVICE,
        BalancerOptions::default(),
    );
    let config = grantmesh_agency::AgencyConfig {
        instance_id: instance.id.clone(),
        name: args.name.clone(),
        band: (args.min_award, args.max_award),
        keys,
        pool_size: args.store.pool_size,
        open_timeout: args.open_timeout,
        reconcile_every: args.reconcile_every,
    };
    let service = grantmesh_agency::AgencyService::start(
        config,
        &args.store.database_url,
        colleges,
        options.streams_closing.clone(),
    )
    .await
    .context("failed to start the agency")?;
    serve(listener, Routes::new(service.into_server()), options).await
}

pub async fn run_college(args: CollegeArgs) -> anyhow::Result<ExitCode> {
    let keys = args.store.keys()?;
    if args.day_length.is_zero() {
        bail!("--day-length must be more than zero");
    }
    let (listener, instance, options) = join_mesh(
        &args.mesh,
        grantmesh_college::SERVICE,
        service_names::COLLEGE,
        DEFAULT_COLLEGE_PORT,
        Default::default(),
    )
    .await?;
    let config = grantmesh_college::CollegeConfig {
        instance_id: instance.id.clone(),
        day_length: args.day_length,
        keys,
        pool_size: args.store.pool_size,
    };
    let service = grantmesh_college::CollegeService::start(
        config,
        &args.store.database_url,
        options.streams_closing.clone(),
    )
    .await
    .context("failed to start the college")?;
    serve(listener, Routes::new(service.into_server()), options).await
}

async fn serve(
    listener: TcpListener,
    routes: Routes,
    options: ServeOptions,
) -> anyhow::Result<ExitCode> {
    grantmesh_server::serve(
        listener,
        routes,
        options,
        grantmesh_server::terminate_signal(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

async fn bind(args: &ServerArgs, default_port: u16) -> anyhow::Result<TcpListener> {
    let addr = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr}"))?;
    let bound = listener.local_addr()?;
    // The first line on stdout says where to reach this server; scripts and
    // tests that pass port 0 read it.
    println!("listening on {bound}");
    Ok(listener)
}

/// Binds, works out what to advertise and builds the registration.
async fn join_mesh(
    args: &MeshArgs,
    service: &str,
    grpc_service: &'static str,
    default_port: u16,
    labels: std::collections::HashMap<String, String>,
) -> anyhow::Result<(TcpListener, Instance, ServeOptions)> {
    if args.ttl < grantmesh_registry::TTL_RANGE.0 || args.ttl > grantmesh_registry::TTL_RANGE.1 {
        bail!(
            "--ttl {:?} is outside {:?}..={:?}",
            args.ttl,
            grantmesh_registry::TTL_RANGE.0,
            grantmesh_registry::TTL_RANGE.1
        );
    }
    if args.heartbeat_interval.is_zero() || args.heartbeat_interval >= args.ttl {
        bail!(
            "--heartbeat-interval ({:?}) must be more than zero and shorter than --ttl ({:?})",
            args.heartbeat_interval,
            args.ttl
        );
    }
    let registries = parse_registry_list(&args.registry);
    if registries.is_empty() {
        bail!("--registry names no registry");
    }
    let listener = bind(&args.server, default_port).await?;
    let bound = listener.local_addr()?;
    let address = match &args.advertise {
        Some(url) => grantmesh_discovery::with_scheme(url),
        None if bound.ip().is_unspecified() => {
            bail!(
                "listening on {bound} (all interfaces): say with --advertise which URL other instances should dial"
            )
        }
        None => format!("http://{bound}"),
    };
    let id = args
        .server
        .instance_id
        .clone()
        .unwrap_or_else(|| grantmesh_discovery::new_instance_id(service));
    let instance = Instance {
        id,
        service: service.to_owned(),
        address,
        labels,
        ..Instance::default()
    };
    tracing::info!(instance = %instance.id, address = %instance.address, "joining the mesh");
    let options = ServeOptions {
        grpc_service,
        registration: Some(RegistrarOptions {
            registries,
            instance: instance.clone(),
            heartbeat_interval: args.heartbeat_interval,
            ttl: args.ttl,
        }),
        drain_delay: args.drain_delay,
        grace_period: args.server.grace_period,
        streams_closing: CancellationToken::new(),
    };
    Ok((listener, instance, options))
}
