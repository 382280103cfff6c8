//! The one place where grantmesh roles are wired together.
//!
//! [`start`] takes a role's validated settings ([`config`]) and a bound
//! listener, connects what the role needs (store, balancer, registration),
//! and serves it through [`grantmesh_server::serve`] in a task of its own.
//! It hands back a [`Node`]: where it listens, the id it registered under,
//! and how to stop it along the graceful path and wait for it.
//!
//! The `grantmesh` binary (flags → settings → here), `grantmesh dev` (five
//! nodes in one process), the tests and the benchmarks all start roles this
//! way, so none of them re-creates the wiring. [`process`] starts the same
//! roles as child processes of the real binary, for tests and benchmarks
//! whose point is the operating system (kill -9, SIGSTOP).

pub mod config;
pub mod process;

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use config::{AgencySettings, CollegeSettings, MeshSettings, RegistrySettings, Role};
use grantmesh_discovery::tls::{TlsMaterial, Transport};
use grantmesh_discovery::{Balancer, BalancerOptions, RegistrarOptions};
use grantmesh_proto::service_names;
use grantmesh_proto::v1::Instance;
use grantmesh_server::{RunningServer, ServeOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use config::{Band, ConfigError, Lease, MailSettings, ServerSettings, StoreSettings};

/// A role serving in this process.
pub struct Node {
    /// The service it registered under (`registry`, `agency`, `college`).
    pub service: &'static str,
    /// The id it registered under.
    pub instance_id: String,
    /// The URL other instances and clients dial.
    pub url: String,
    /// Where its Prometheus metrics are scraped (`http://HOST:PORT/metrics`),
    /// when it serves them (`ServerSettings::metrics_listen`).
    pub metrics_url: Option<String>,
    server: RunningServer,
}

impl Node {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// A token that starts the graceful shutdown when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.server.shutdown.clone()
    }

    /// Deregisters, drains, stops, and waits for it (re-raising a panic).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.server.stop().await
    }

    /// Waits for the node to stop by itself or through its shutdown token.
    pub async fn join(self) -> anyhow::Result<()> {
        match self.server.handle.await {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => Err(err).context("the server task was cancelled"),
        }
    }

    /// Serves until `signal` resolves, then stops gracefully: what a binary runs.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let token = self.shutdown_token();
        let node = tokio::spawn(self.join());
        tokio::select! {
            () = signal => token.cancel(),
            () = token.cancelled() => {}
        }
        node.await.context("the node task failed")?
    }
}

/// Validates `role`, connects what it needs and serves it on `listener`.
///
/// A store that cannot be reached or migrated is an error here, before
/// anything registers, so a misconfigured instance never joins the mesh.
pub async fn start(role: Role, listener: TcpListener) -> anyhow::Result<Node> {
    role.validate()?;
    let transport = transport(role.server())?;
    let renewal = match (&role.server().issuer, &transport) {
        (Some(issuer), Transport::Tls(material)) => Some((issuer.clone(), material.clone())),
        _ => None,
    };
    let node = match role {
        Role::Registry(settings) => start_registry(settings, transport, listener),
        Role::Agency(settings) => start_agency(settings, transport, listener).await,
        Role::College(settings) => start_college(settings, transport, listener).await,
        Role::Issuer(settings) => start_issuer(settings, transport, listener),
    }?;
    // Renewed until the node stops; the files are reloaded as they change.
    if let Some((issuer, material)) = renewal {
        grantmesh_discovery::tls::renew::keep_renewed(material, issuer, node.shutdown_token());
    }
    Ok(node)
}

fn start_issuer(
    settings: config::IssuerSettings,
    transport: Transport,
    listener: TcpListener,
) -> anyhow::Result<Node> {
    let addr = listener.local_addr()?;
    let authority = grantmesh_discovery::tls::ca::Authority::open(&settings.ca_dir)
        .context("failed to read the CA the issuer signs with")?;
    let service = grantmesh_issuer::IssuerService::new(grantmesh_issuer::IssuerConfig {
        authority,
        tokens: settings.tokens,
        leaf_validity: settings.leaf_validity,
    });
    let (options, metrics_url) =
        unregistered_options(service_names::ISSUER, &settings.server, &transport, addr)?;
    let server = grantmesh_server::spawn(listener, Routes::new(service.into_server()), options)?;
    Ok(Node {
        service: grantmesh_discovery::tls::renew::ISSUER_SERVICE,
        instance_id: grantmesh_discovery::tls::renew::ISSUER_SERVICE.to_owned(),
        url: transport.url(addr),
        metrics_url,
        server,
    })
}

/// How a server that registers nowhere (a registry, the issuer) serves
/// `grpc_service` on `addr`, and where its metrics are scraped.
fn unregistered_options(
    grpc_service: &'static str,
    server: &config::ServerSettings,
    transport: &Transport,
    addr: std::net::SocketAddr,
) -> anyhow::Result<(ServeOptions, Option<String>)> {
    let mut options = ServeOptions::new(grpc_service);
    options.grace_period = server.grace_period;
    options.limits = server.limits;
    options.transport = transport.clone();
    let metrics_url;
    (options.metrics, metrics_url) = metrics_endpoint(server, &addr.ip().to_string())?;
    Ok((options, metrics_url))
}

/// The role's TLS files, read now so a missing or bad file fails start-up.
fn transport(server: &config::ServerSettings) -> anyhow::Result<Transport> {
    Ok(match &server.tls {
        Some(paths) => Transport::Tls(
            TlsMaterial::load(paths.clone()).context("failed to load this server's TLS files")?,
        ),
        None => Transport::Insecure,
    })
}

fn start_registry(
    settings: RegistrySettings,
    transport: Transport,
    listener: TcpListener,
) -> anyhow::Result<Node> {
    let addr = listener.local_addr()?;
    let instance_id = settings.server.instance_id(grantmesh_registry::SERVICE);
    let (options, metrics_url) =
        unregistered_options(service_names::REGISTRY, &settings.server, &transport, addr)?;
    let registry = grantmesh_registry::RegistryService::new(
        grantmesh_registry::RegistryConfig {
            instance_id: instance_id.clone(),
            default_ttl: settings.default_ttl,
            warmup: settings.warmup,
            require_identity: transport.is_tls(),
            capacity: settings.capacity,
            watches: settings.watches,
        },
        options.streams_closing.clone(),
    );
    registry
        .register_metrics(options.metrics.registry())
        .context("failed to register the registry's metrics")?;
    let server = grantmesh_server::spawn(listener, Routes::new(registry.into_server()), options)?;
    Ok(Node {
        service: grantmesh_registry::SERVICE,
        instance_id,
        url: transport.url(addr),
        metrics_url,
        server,
    })
}

async fn start_agency(
    settings: AgencySettings,
    transport: Transport,
    listener: TcpListener,
) -> anyhow::Result<Node> {
    check_agency_identity(&settings, &transport)?;
    let (instance, options) = join_mesh(
        &settings.mesh,
        &settings.server,
        &transport,
        grantmesh_agency::SERVICE,
        service_names::AGENCY,
        settings.labels(),
        &listener,
    )?;
    // The agency sends its credential only to a server whose certificate
    // names `college`: the balancer checks that on every connection.
    let colleges = Balancer::new(
        settings.mesh.registries.clone(),
        grantmesh_college::SERVICE,
        BalancerOptions {
            transport,
            ..BalancerOptions::default()
        },
    );
    let config = grantmesh_agency::AgencyConfig {
        instance_id: instance.id.clone(),
        name: settings.name.clone(),
        band: (settings.band.min(), settings.band.max()),
        currency: settings.currency,
        keys: settings.store.keys.clone(),
        signer: settings
            .server
            .tls
            .as_ref()
            .and_then(|tls| tls.identity.as_ref())
            .map(|(_, key)| grantmesh_auth::AgencySigner::new(key.clone())),
        pool_size: settings.store.pool_size,
        open_timeout: settings.open_timeout,
        reconcile_every: settings.reconcile_every,
    };
    let service = grantmesh_agency::AgencyService::start(
        config,
        &settings.store.database_url,
        colleges,
        options.streams_closing.clone(),
    )
    .await
    .context("failed to start the agency")?;
    service
        .register_metrics(options.metrics.registry())
        .context("failed to register the agency's metrics")?;
    let server = grantmesh_server::spawn(listener, Routes::new(service.into_server()), options)?;
    Ok(Node {
        service: grantmesh_agency::SERVICE,
        metrics_url: instance.labels.get("metrics").cloned(),
        instance_id: instance.id,
        url: instance.address,
        server,
    })
}

async fn start_college(
    settings: CollegeSettings,
    transport: Transport,
    listener: TcpListener,
) -> anyhow::Result<Node> {
    let (instance, options) = join_mesh(
        &settings.mesh,
        &settings.server,
        &transport,
        grantmesh_college::SERVICE,
        service_names::COLLEGE,
        Default::default(),
        &listener,
    )?;
    let config = grantmesh_college::CollegeConfig {
        instance_id: instance.id.clone(),
        day_length: settings.day_length,
        keys: settings.store.keys.clone(),
        require_identity: transport.is_tls(),
        pool_size: settings.store.pool_size,
        agencies: settings.agency_bands(),
        watches: settings.watches,
        mail: mail_queue(&settings.mail)?,
        signup_resend: settings.signup_resend,
    };
    let service = grantmesh_college::CollegeService::start(
        config,
        &settings.store.database_url,
        options.streams_closing.clone(),
    )
    .await
    .context("failed to start the college")?;
    service
        .register_metrics(options.metrics.registry())
        .context("failed to register the college's metrics")?;
    let server = grantmesh_server::spawn(listener, Routes::new(service.into_server()), options)?;
    Ok(Node {
        service: grantmesh_college::SERVICE,
        metrics_url: instance.labels.get("metrics").cloned(),
        instance_id: instance.id,
        url: instance.address,
        server,
    })
}

/// Starts delivering a college's mail as `mail` says.
fn mail_queue(mail: &config::MailSettings) -> anyhow::Result<grantmesh_mail::MailQueue> {
    let mailer = mail.mailer()?;
    tracing::info!("sign-up mail goes to the {}", mailer.describe());
    Ok(grantmesh_mail::MailQueue::start(
        mailer,
        grantmesh_mail::QUEUE_CAPACITY,
        CancellationToken::new(),
    ))
}

/// This server's metrics, and the URL of their endpoint when it serves one
/// (`http://HOST:PORT/metrics`, HOST being where other instances reach it).
fn metrics_endpoint(
    server: &config::ServerSettings,
    host: &str,
) -> anyhow::Result<(grantmesh_server::Metrics, Option<String>)> {
    let metrics = grantmesh_server::Metrics::new();
    let Some(listen) = server.metrics_listen else {
        return Ok((metrics, None));
    };
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("failed to listen for metrics on {listen}"))?;
    listener.set_nonblocking(true)?;
    let addr = grantmesh_server::metrics::spawn_endpoint(
        TcpListener::from_std(listener)?,
        metrics.clone(),
        CancellationToken::new(),
    )?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Ok((
        metrics,
        Some(format!("http://{host}:{}/metrics", addr.port())),
    ))
}

/// The id an agency or college registers under. On TLS its certificate
/// must name this service and one member of it (`college/college-1`): the
/// registry lets that identity hold only its own instance, so the id is the
/// certificate's name unless `--instance-id` picks one it may hold (a
/// replica, `nsf-2`). Without TLS, the configured id or a random one.
fn member_instance_id(
    server: &config::ServerSettings,
    transport: &Transport,
    service: &str,
) -> anyhow::Result<String> {
    let Transport::Tls(material) = transport else {
        return Ok(server.instance_id(service));
    };
    let Some(identity) = material.identity() else {
        bail!(
            "this {service}'s certificate names no grantmesh identity: issue one with \
             `grantmesh ca issue --service {service} --name <instance id>`"
        );
    };
    let Some(name) = identity.name() else {
        bail!(
            "this {service}'s certificate is for all of {identity}, not for one instance: the registry \
             lets a certificate register only the instance it names. Issue one with \
             `grantmesh ca issue --service {service} --name <instance id>`"
        );
    };
    if identity.service_name() != service {
        bail!("this {service} was given a certificate for {identity}, not for a {service}");
    }
    let id = server
        .instance_id
        .clone()
        .unwrap_or_else(|| name.to_owned());
    if !identity.may_hold(service, &id) {
        bail!(
            "--instance-id {id:?} is not what this {service}'s certificate names ({identity}): \
             it may register {name:?} or {name:?}-<replica> only"
        );
    }
    Ok(id)
}

/// The name an agency's certificate gives it, which must be its configured
/// name: colleges open accounts for the agency its certificate names.
fn check_agency_identity(settings: &AgencySettings, transport: &Transport) -> anyhow::Result<()> {
    let Transport::Tls(material) = transport else {
        return Ok(());
    };
    let identity = material.identity();
    if identity.as_ref().and_then(|identity| identity.name()) != Some(settings.name.as_str()) {
        bail!(
            "the agency {:?} needs a certificate for agency/{} (this one names {}): colleges open \
             accounts for the agency its certificate names. Issue one with \
             `grantmesh ca issue --service agency --name {}`",
            settings.name,
            settings.name,
            identity.map_or_else(
                || "no grantmesh identity".to_owned(),
                |identity| identity.to_string()
            ),
            settings.name
        );
    }
    Ok(())
}

/// Works out what to advertise and builds the registration.
fn join_mesh(
    mesh: &MeshSettings,
    server: &config::ServerSettings,
    transport: &Transport,
    service: &str,
    grpc_service: &'static str,
    labels: std::collections::HashMap<String, String>,
    listener: &TcpListener,
) -> anyhow::Result<(Instance, ServeOptions)> {
    let bound = listener.local_addr()?;
    let address = match &mesh.advertise {
        Some(url) if url.contains("://") => url.clone(),
        Some(host_port) => format!("{}://{host_port}", transport.scheme()),
        None if bound.ip().is_unspecified() => bail!(
            "listening on {bound} (all interfaces): say with --advertise which URL other instances should dial"
        ),
        None => transport.url(bound),
    };
    let host = address
        .parse::<tonic::codegen::http::Uri>()
        .ok()
        .and_then(|uri| uri.host().map(str::to_owned))
        .unwrap_or_else(|| bound.ip().to_string());
    let (metrics, metrics_url) = metrics_endpoint(server, &host)?;
    let mut labels = labels;
    if let Some(url) = metrics_url {
        labels.insert("metrics".to_owned(), url);
    }
    let instance = Instance {
        id: member_instance_id(server, transport, service)?,
        service: service.to_owned(),
        address,
        labels,
        ..Instance::default()
    };
    tracing::info!(instance = %instance.id, address = %instance.address, "joining the mesh");
    let options = ServeOptions {
        grpc_service,
        registration: Some(RegistrarOptions {
            registries: mesh.registries.clone(),
            instance: instance.clone(),
            heartbeat_interval: mesh.lease.heartbeat_interval(),
            ttl: mesh.lease.ttl(),
            transport: transport.clone(),
        }),
        drain_delay: mesh.drain_delay,
        grace_period: server.grace_period,
        streams_closing: CancellationToken::new(),
        transport: transport.clone(),
        limits: server.limits,
        metrics,
    };
    Ok((instance, options))
}
