//! The one place that starts a grantmesh gRPC server.
//!
//! Every role (registry, agency, college) hands [`serve`] its own service
//! routes and gets the same surroundings: `grpc.health.v1.Health`, gRPC
//! reflection (v1 and v1alpha, so old and new `grpcurl` both work), mesh
//! registration through [`grantmesh_discovery::Registrar`], and one graceful
//! shutdown path:
//!
//! 1. the shutdown future resolves (SIGTERM/SIGINT in the binary, a token in tests);
//! 2. the instance deregisters from every registry and health turns NOT_SERVING;
//! 3. it keeps serving for the drain delay, so clients that follow the
//!    registry stop picking it before it stops accepting;
//! 4. streaming handlers are told to finish ([`ServeOptions::streams_closing`]),
//!    new connections are refused and in-flight calls get the grace period;
//! 5. whatever is still running after the grace period is dropped.
//!
//! A server never binds its own port: it takes a bound [`TcpListener`], so
//! tests bind `127.0.0.1:0` and binaries bind what their flags say.

pub mod admission;
pub mod calls_open;
pub mod metrics;
pub mod odd_input;
pub use grantmesh_discovery::peers;
pub mod telemetry;

pub use admission::{Caller, Limits, Peer};
pub use metrics::Metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use grantmesh_discovery::tls::Transport;
use grantmesh_discovery::{Registrar, RegistrarOptions};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;

/// Calls one connection may have open at once (HTTP/2
/// `SETTINGS_MAX_CONCURRENT_STREAMS`). A client's balancer multiplexes all
/// its calls to an instance over one connection, and the benches run 64
/// concurrent callers; beyond a few hundred, one connection's streams only
/// crowd out everyone else's (thousands of idle Watch streams on a handful
/// of connections slowed other watchers from 1 ms to 600 ms).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// How one server joins the mesh and leaves it.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The fully qualified gRPC service this server provides, e.g.
    /// `grantmesh.v1.College`; health reports on it by name.
    pub grpc_service: &'static str,
    /// Registration with the registries, or `None` for a server that does not
    /// register (the registry itself).
    pub registration: Option<RegistrarOptions>,
    /// How long to keep serving after deregistering, so that clients stop
    /// picking this instance before it stops accepting.
    pub drain_delay: Duration,
    /// How long in-flight calls get to finish once the server stops accepting.
    pub grace_period: Duration,
    /// Cancelled when streaming handlers should end (step 4 above). Services
    /// with long-lived streams hold a clone of it.
    pub streams_closing: CancellationToken,
    /// TLS with this server's certificate, or plaintext by explicit choice.
    pub transport: Transport,
    /// How many calls it handles at once.
    pub limits: Limits,
    /// Where its calls are counted.
    pub metrics: Metrics,
}

impl ServeOptions {
    /// Options for a server that does not register with a registry.
    pub fn new(grpc_service: &'static str) -> Self {
        Self {
            grpc_service,
            registration: None,
            drain_delay: Duration::ZERO,
            grace_period: Duration::from_secs(10),
            streams_closing: CancellationToken::new(),
            transport: Transport::Insecure,
            limits: Limits::default(),
            metrics: Metrics::new(),
        }
    }
}

/// Serves `routes` (plus health and reflection) on `listener` until
/// `shutdown` resolves, then drains as the module docs describe.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let local_addr = listener
        .local_addr()
        .context("failed to read the listener's address")?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(options.grpc_service, ServingStatus::Serving)
        .await;

    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1(options.grpc_service)?)
        .add_service(reflection_v1alpha(options.grpc_service)?);

    let stop_accepting = CancellationToken::new();
    let activities = grantmesh_discovery::activity::Activities::new();
    let activities_watch = activities.accepting();
    let builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_max_header_list_size(Some(odd_input::MAX_HEADER_BLOCK_BYTES))
        .concurrency_limit_per_connection(options.limits.calls_per_connection)
        .load_shed(true)
        .layer(options.metrics.layer())
        .layer(calls_open::CallsOpenLayer::new(std::sync::Arc::clone(
            &activities,
        )))
        .layer(admission::AdmissionLayer::new(options.limits))
        .layer(odd_input::OddInputLayer)
        .add_routes(routes);
    let server: std::pin::Pin<
        Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match &options.transport {
        Transport::Tls(material) => {
            material
                .server_config()
                .context("this server has no usable certificate")?;
            Box::pin(builder.serve_with_incoming_shutdown(
                grantmesh_discovery::incoming::tls(
                    listener,
                    material.clone(),
                    options.limits.connections,
                    activities,
                ),
                stop_accepting.clone().cancelled_owned(),
            ))
        }
        Transport::Insecure => {
            tracing::warn!(
                %local_addr,
                service = options.grpc_service,
                "PLAINTEXT: serving without TLS (--insecure); anyone on the network can read and forge calls"
            );
            Box::pin(builder.serve_with_incoming_shutdown(
                grantmesh_discovery::incoming::plaintext(
                    listener,
                    options.limits.connections,
                    activities,
                ),
                stop_accepting.clone().cancelled_owned(),
            ))
        }
    };
    let mut server = server;

    let mut registrar = options.registration.clone().map(Registrar::start);
    tracing::info!(%local_addr, service = options.grpc_service, "serving");

    let mut accepting = activities_watch;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            result = &mut server => {
                // The server ended without being asked to: a fatal transport error.
                if let Some(registrar) = registrar {
                    registrar.deregister().await;
                }
                return result.context("the gRPC server stopped unexpectedly");
            }
            () = &mut shutdown => break,
            Ok(()) = accepting.changed() => {
                // Out of descriptors, say: the server takes no new connection,
                // so it leaves the registry and says NOT_SERVING until it does.
                let now = *accepting.borrow_and_update();
                let status = if now { ServingStatus::Serving } else { ServingStatus::NotServing };
                if now {
                    tracing::warn!(%local_addr, "accepting connections again: registering and serving");
                    registrar = registrar.or_else(|| options.registration.clone().map(Registrar::start));
                } else {
                    tracing::error!(%local_addr, "cannot accept connections: deregistering and reporting NOT_SERVING until it can");
                    if let Some(registrar) = registrar.take() {
                        registrar.deregister().await;
                    }
                }
                health.set_service_status("", status).await;
                health.set_service_status(options.grpc_service, status).await;
            }
        }
    }

    tracing::info!(%local_addr, "shutting down: deregistering and draining");
    if let Some(registrar) = registrar {
        registrar.deregister().await;
    }
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(options.grpc_service, ServingStatus::NotServing)
        .await;
    tokio::time::sleep(options.drain_delay).await;

    options.streams_closing.cancel();
    stop_accepting.cancel();
    match tokio::time::timeout(options.grace_period, &mut server).await {
        Ok(result) => result.context("the gRPC server failed while draining")?,
        Err(_) => tracing::warn!(
            grace_period = ?options.grace_period,
            "calls still running after the grace period were dropped"
        ),
    }
    tracing::info!(%local_addr, "stopped");
    Ok(())
}

/// What reflection lists on a port: the one grantmesh service it serves,
/// health and reflection itself — not every service in the descriptor set,
/// which would send `grpcurl` users to calls this port does not answer.
fn reflection_builder(grpc_service: &'static str) -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(grantmesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .with_service_name(grpc_service)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
}

fn reflection_v1(
    grpc_service: &'static str,
) -> anyhow::Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
> {
    reflection_builder(grpc_service)
        .include_reflection_service(false)
        .build_v1()
        .context("failed to build the v1 reflection service")
}

fn reflection_v1alpha(
    grpc_service: &'static str,
) -> anyhow::Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
> {
    reflection_builder(grpc_service)
        .include_reflection_service(false)
        .build_v1alpha()
        .context("failed to build the v1alpha reflection service")
}

/// Resolves on the first SIGINT or SIGTERM. The handlers are installed
/// when this is called, not when the future is first polled: call it
/// before saying the process is ready ("listening on", "mesh is up"), so a
/// signal sent the moment a script reads that line is not the default
/// action's (an exit without draining).
pub fn terminate_signal() -> impl Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("failed to install the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("failed to install the SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM"),
            _ = int.recv() => tracing::info!("received SIGINT"),
        }
    }
}

/// A server running in this process, as tests and embedders start it.
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Cancel to shut it down along the graceful path.
    pub shutdown: CancellationToken,
    /// Ends when the server has stopped.
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// `SCHEME://ADDR`, what a client dials.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Shuts the server down and waits for it, re-raising a panic from it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.handle.await {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => Err(err).context("the server task was cancelled"),
        }
    }
}

/// Spawns [`serve`] on an already bound listener.
pub fn spawn(
    listener: TcpListener,
    routes: Routes,
    options: ServeOptions,
) -> anyhow::Result<RunningServer> {
    let addr = listener.local_addr()?;
    let scheme = options.transport.scheme();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(serve(
        listener,
        routes,
        options,
        shutdown.clone().cancelled_owned(),
    ));
    Ok(RunningServer {
        addr,
        scheme,
        shutdown,
        handle,
    })
}

/// The `Ping` every grantmesh service answers: echoes the message, names the
/// instance, and holds the call for `delay_ms` first, so operators and tests
/// can keep a call in flight: up to [`admission::MAX_PING_DELAY`] for a mesh
/// member, up to [`Limits::anonymous_ping_delay`] (a second by default) for
/// anyone else, so that no stranger holds admission for long.
pub async fn ping(
    request: tonic::Request<grantmesh_proto::v1::PingRequest>,
    instance_id: &str,
    service: &str,
) -> Result<tonic::Response<grantmesh_proto::v1::PingReply>, tonic::Status> {
    let most =
        Caller::of(&request).map_or(admission::MAX_PING_DELAY, |caller| caller.max_ping_delay);
    let request = request.into_inner();
    let delay = Duration::from_millis(request.delay_ms.into());
    if delay > most {
        return Err(tonic::Status::invalid_argument(format!(
            "delay_ms must be at most {} for this caller{}",
            most.as_millis(),
            if most < admission::MAX_PING_DELAY {
                " (longer delays are for mesh members with a client certificate)"
            } else {
                ""
            }
        )));
    }
    if !delay.is_zero() {
        // Not for zero: even a zero sleep waits for the timer's next tick (~1 ms).
        tokio::time::sleep(delay).await;
    }
    Ok(tonic::Response::new(grantmesh_proto::v1::PingReply {
        message: request.message,
        instance_id: instance_id.to_owned(),
        service: service.to_owned(),
    }))
}
