//! The grantmesh registry: health-checked service discovery.
//!
//! Instances register under a service name with an id they choose, then keep
//! a lease alive with `Heartbeat` calls or a `KeepAlive` stream. An instance
//! is removed when it deregisters, at once when its KeepAlive stream breaks
//! (the process died, its connection was reset), and after its TTL when its
//! beats stop (it hangs, or the network cut it off). `Watch` streams a
//! snapshot and then every change, per service.
//!
//! What a watcher that never reads can make the registry hold is bounded:
//! its snapshot goes out in parts of at most [`state::SNAPSHOT_PART_BYTES`]
//! (16 KiB), each built from the service's shared instance list only once
//! the stream's queue ([`WATCH_QUEUE`] events) has room for it. An unread
//! watcher thus costs its queued parts, the part being encoded and what the
//! HTTP/2 layer buffers for a stream that its peer does not drain (hyper's
//! send buffer, at most 400 KiB), plus its share of the instance list (the
//! instances that changed since its snapshot, see [`state`]): not its own
//! copy of the service (up to 3.5 MB). At most [`MAX_WATCHERS`]
//! streams are open at once, so the bound holds for the registry as a whole.
//!
//! The state is soft and in memory only; see [`state`].

pub mod metrics;
pub mod state;

use grantmesh_proto::errors::quote;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use grantmesh_discovery::tls::Identity;
use grantmesh_proto::v1::{
    DeregisterReply, DeregisterRequest, DescribeRegistryRequest, HeartbeatReply, HeartbeatRequest,
    Instance, KeepAliveReply, KeepAliveRequest, ListInstancesReply, ListInstancesRequest,
    PingReply, PingRequest, RegisterReply, RegisterRequest, RegistryStatus, ServiceStatus,
    WatchEvent, WatchRequest,
};
use grantmesh_proto::{Registry, RegistryServer};
use grantmesh_server::Caller;
use grantmesh_server::peers::{self as shares, Peer, Shares, Split};
pub use state::Capacity;
use state::RegistryState;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// The service name the registry answers to in `Ping`.
pub const SERVICE: &str = "registry";
/// How big one registration may be: with [`state::MAX_INSTANCES_PER_SERVICE`]
/// instances of at most ~3.6 KB each, a whole service's `ListInstances`
/// reply stays under gRPC's default 4 MB message limit.
const MAX_ADDRESS_BYTES: usize = 256;
const MAX_LABELS: usize = 16;
const MAX_LABEL_KEY_BYTES: usize = 64;
const MAX_LABEL_VALUE_BYTES: usize = 128;

/// Shortest and longest TTL an instance may ask for.
pub const TTL_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(3600));
/// Most `Watch` streams one registry serves at once; the next is refused
/// with RESOURCE_EXHAUSTED. Each costs a task and at most a few hundred KiB
/// when its client stops reading (see the module docs).
pub const MAX_WATCHERS: usize = 4096;
/// How many events (snapshot parts or changes) a Watch stream queues ahead
/// of its client. Changes a watcher falls behind on wait in the service's
/// shared backlog instead, and past it the watcher gets a fresh snapshot.
const WATCH_QUEUE: usize = 2;

/// How often due leases are looked at.
const SWEEP_EVERY: Duration = Duration::from_millis(50);
/// A gap this long between two sweeps means the registry itself was not
/// running (SIGSTOP, a starved host): see [`RegistryState::resumed_after_pause`].
const PAUSE_THRESHOLD: Duration = Duration::from_secs(1);

/// Settings of one registry replica.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// This replica's id, reported by `Ping`.
    pub instance_id: String,
    /// TTL for instances that register without one.
    pub default_ttl: Duration,
    /// How long after start-up `Watch` holds back its first snapshot, so that
    /// a restarted replica has relearned the mesh (instances register again
    /// within one heartbeat interval) before any client replaces its view
    /// with what this replica knows.
    pub warmup: Duration,
    /// Whether writes must come from a mesh member whose certificate names
    /// the service (TLS); `false` only on a plaintext registry (`--insecure`).
    pub require_identity: bool,
    /// How many services and instances it keeps.
    pub capacity: Capacity,
    /// How its Watch streams are shared out by caller.
    pub watches: Split,
}

/// Watch streams open at once per peer by default: a machine's balancers
/// follow a handful of services each; one client opening thousands keeps
/// only this many.
pub const MAX_WATCHERS_PER_PEER: usize = 256;

/// Of [`MAX_WATCHERS`], how many only mesh members (agencies' and colleges'
/// balancers) may open by default.
pub const WATCHERS_RESERVED_FOR_MEMBERS: usize = 1024;

/// The default sharing of Watch streams.
pub fn default_watches() -> Split {
    Split {
        total: MAX_WATCHERS,
        per_peer: MAX_WATCHERS_PER_PEER,
        reserved_for_members: WATCHERS_RESERVED_FOR_MEMBERS,
    }
}

/// The `grantmesh.v1.Registry` implementation.
#[derive(Clone)]
pub struct RegistryService {
    state: Arc<RegistryState>,
    config: RegistryConfig,
    closing: CancellationToken,
    /// When the warm-up ends.
    ready_at: tokio::time::Instant,
    /// One share per open `Watch` stream, [`RegistryConfig::watches`].
    watchers: Arc<Shares>,
}

impl RegistryService {
    /// A registry whose expiry sweeper and streams run until `closing` is cancelled.
    pub fn new(config: RegistryConfig, closing: CancellationToken) -> Self {
        let state = Arc::new(RegistryState::with_capacity(config.capacity));
        tokio::spawn(sweep(Arc::clone(&state), closing.clone()));
        let ready_at = tokio::time::Instant::now() + config.warmup;
        let watchers = Shares::new(config.watches);
        Self {
            state,
            config,
            closing,
            ready_at,
            watchers,
        }
    }

    /// Registers the registry's own metrics (docs/metrics.md) in `registry`.
    pub fn register_metrics(
        &self,
        registry: &grantmesh_server::metrics::prometheus::Registry,
    ) -> grantmesh_server::metrics::prometheus::Result<()> {
        self.state
            .metrics()
            .register(registry, Arc::clone(&self.state))
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> RegistryServer<Self> {
        RegistryServer::new(self)
    }
}

async fn sweep(state: Arc<RegistryState>, closing: CancellationToken) {
    let mut ticker = tokio::time::interval(SWEEP_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = closing.cancelled() => return,
            _ = ticker.tick() => {
                let now = tokio::time::Instant::now();
                let gap = now.duration_since(last);
                last = now;
                if gap > PAUSE_THRESHOLD {
                    state.resumed_after_pause(gap);
                }
                state.expire();
            }
        }
    }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let peer = grantmesh_discovery::tls::peer_identity(&request);
        let instance = request
            .into_inner()
            .instance
            .ok_or_else(|| Status::invalid_argument("instance is required"))?;
        let ttl = validate_instance(&instance, self.config.default_ttl)?;
        let owner = self.authorize(peer.as_ref(), &instance.service, &instance.id)?;
        if self.config.require_identity && !instance.address.starts_with("https://") {
            return Err(Status::invalid_argument(format!(
                "instance.address {} must be an https:// URL: this mesh runs on TLS",
                quote(&instance.address)
            )));
        }
        let revision = self
            .state
            .register(instance, ttl, owner.as_deref())
            .map_err(|refused| self.refused(&refused))?;
        Ok(Response::new(RegisterReply {
            ttl: proto_duration(ttl),
            revision,
        }))
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterReply>, Status> {
        let peer = grantmesh_discovery::tls::peer_identity(&request);
        let request = request.into_inner();
        validate_name("service", &request.service)?;
        validate_name("instance_id", &request.instance_id)?;
        let owner = self.authorize(peer.as_ref(), &request.service, &request.instance_id)?;
        let removed = self
            .state
            .deregister(&request.service, &request.instance_id, owner.as_deref())
            .map_err(|refused| self.refused(&refused))?;
        let (_, revision) = self.state.list(&request.service);
        Ok(Response::new(DeregisterReply { removed, revision }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let peer = grantmesh_discovery::tls::peer_identity(&request);
        let request = request.into_inner();
        validate_name("service", &request.service)?;
        validate_name("instance_id", &request.instance_id)?;
        let owner = self.authorize(peer.as_ref(), &request.service, &request.instance_id)?;
        match self
            .state
            .heartbeat(&request.service, &request.instance_id, owner.as_deref())
            .map_err(|refused| self.refused(&refused))?
        {
            Some(ttl) => Ok(Response::new(HeartbeatReply {
                ttl: proto_duration(ttl),
            })),
            None => Err(unknown_instance(&request.service, &request.instance_id)),
        }
    }

    type KeepAliveStream = EventStream<KeepAliveReply>;

    async fn keep_alive(
        &self,
        request: Request<Streaming<KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let peer = grantmesh_discovery::tls::peer_identity(&request);
        let mut beats = request.into_inner();
        let (replies, reply_stream) = mpsc::channel(4);
        let state = Arc::clone(&self.state);
        let this = self.clone();
        let closing = self.closing.clone();
        tokio::spawn(async move {
            let token = state.new_lease_token();
            // Every instance this stream renews: all of them are removed at
            // once when it breaks, not only the last one it renewed.
            let mut held: std::collections::HashSet<(String, String)> = Default::default();
            // When the last beat came: a stream that breaks long after it is
            // a cut-off peer, not a dead one.
            let mut last_beat = tokio::time::Instant::now();
            // `None`: not ended by the peer; `Some(quiet)`: ended (closed or
            // broken: HTTP/2 keepalive's close reads as a clean end too),
            // `quiet` after the last beat.
            let ended_by_peer = loop {
                let beat = tokio::select! {
                    () = closing.cancelled() => break None,
                    beat = beats.message() => beat,
                };
                let beat = match beat {
                    Ok(Some(beat)) => beat,
                    Ok(None) | Err(_) => break Some(last_beat.elapsed()),
                };
                last_beat = tokio::time::Instant::now();
                let renewed = validate_name("service", &beat.service)
                    .and_then(|()| validate_name("instance_id", &beat.instance_id))
                    .and_then(|()| this.authorize(peer.as_ref(), &beat.service, &beat.instance_id))
                    .and_then(|owner| {
                        state
                            .keep_alive(&beat.service, &beat.instance_id, token, owner.as_deref())
                            .map_err(|refused| this.refused(&refused))
                    });
                let ttl = match renewed {
                    Ok(ttl) => ttl,
                    Err(status) => {
                        let _ = replies.send(Err(status)).await;
                        break None;
                    }
                };
                if ttl.is_some() {
                    held.insert((beat.service.clone(), beat.instance_id.clone()));
                }
                let reply = KeepAliveReply {
                    instance_id: beat.instance_id,
                    known: ttl.is_some(),
                    ttl: ttl.and_then(proto_duration),
                };
                if replies.send(Ok(reply)).await.is_err() {
                    break Some(last_beat.elapsed());
                }
            };
            if let Some(quiet) = ended_by_peer {
                for (service, id) in held {
                    state.keep_alive_closed(&service, &id, token, Some(quiet));
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(reply_stream))))
    }

    async fn list_instances(
        &self,
        request: Request<ListInstancesRequest>,
    ) -> Result<Response<ListInstancesReply>, Status> {
        let service = request.into_inner().service;
        if !service.is_empty() {
            validate_name("service", &service)?;
        }
        let (encoded, revision) = self.state.list_encoded(&service);
        Ok(Response::new(ListInstancesReply {
            instances: Vec::new(),
            revision,
            encoded,
        }))
    }

    type WatchStream = EventStream<WatchEvent>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = Caller::of(&request).map_or(Peer::Unknown, |caller| caller.peer);
        let service = request.into_inner().service;
        validate_name("service", &service)?;
        let split = self.watchers.split();
        let permit = self.watchers.take(peer).map_err(|full| {
            Status::resource_exhausted(match full {
                shares::Full::Total => format!(
                    "the registry serves at most {} Watch streams at once; try again later, or poll ListInstances",
                    split.total
                ),
                shares::Full::Anonymous => format!(
                    "the registry serves at most {} Watch streams to callers without a mesh certificate; try again later, or poll ListInstances",
                    split.total - split.reserved_for_members
                ),
                shares::Full::Peer => format!(
                    "{} already has {} Watch streams open, the most one caller may; close some, or poll ListInstances",
                    peer.describe(),
                    split.per_peer
                ),
            })
        })?;
        let (events, event_stream) = mpsc::channel(WATCH_QUEUE);
        let state = Arc::clone(&self.state);
        let closing = self.closing.clone();
        let ready_at = self.ready_at;
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = closing.cancelled() => return,
                () = events.closed() => return,
                () = tokio::time::sleep_until(ready_at) => {}
            }
            loop {
                let (snapshot, mut changes) = match state.watch(&service) {
                    Ok(watch) => watch,
                    Err(full) => {
                        state.metrics().refused(&full);
                        let _ = events
                            .send(Err(Status::resource_exhausted(full.to_string())))
                            .await;
                        return;
                    }
                };
                // Each part is built only once the queue has room for it.
                for part in snapshot {
                    let Some(room) = reserve(&events, &closing).await else {
                        return;
                    };
                    room.send(Ok(part));
                }
                // Forward changes until the watcher falls too far behind,
                // then start over from a fresh snapshot.
                loop {
                    let change = tokio::select! {
                        () = closing.cancelled() => return,
                        () = events.closed() => return,
                        change = changes.recv() => change,
                    };
                    match change {
                        Ok(event) => {
                            let Some(room) = reserve(&events, &closing).await else {
                                return;
                            };
                            room.send(Ok(event));
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(event_stream))))
    }

    async fn describe_registry(
        &self,
        _: Request<DescribeRegistryRequest>,
    ) -> Result<Response<RegistryStatus>, Status> {
        let (revision, services) = self.state.status();
        let now = tokio::time::Instant::now();
        let started = self.ready_at - self.config.warmup;
        Ok(Response::new(RegistryStatus {
            revision,
            services: services
                .into_iter()
                .map(|(service, instances, self_preservation)| ServiceStatus {
                    service,
                    instances: u32::try_from(instances).unwrap_or(u32::MAX),
                    self_preservation,
                })
                .collect(),
            uptime: prost_types::Duration::try_from(now.duration_since(started)).ok(),
            warming_up: now < self.ready_at,
        }))
    }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        grantmesh_server::ping(request, &self.config.instance_id, SERVICE).await
    }
}

impl RegistryService {
    /// Counts a refusal for lack of room and says why.
    fn refused(&self, refused: &state::Refused) -> Status {
        match refused {
            state::Refused::Full(full) => {
                self.state.metrics().refused(full);
                Status::resource_exhausted(full.to_string())
            }
            state::Refused::NotYours { .. } => Status::permission_denied(refused.to_string()),
        }
    }

    /// Writes of instance `id` of `service` come only from the mesh member
    /// whose certificate names that instance (`college/college-1` for
    /// `college-1`; see [`Identity::may_hold`]); returns the caller's
    /// identity, which the lease is bound to. Reads (`ListInstances`,
    /// `Watch`) stay open to any TLS client: researchers' tools must find
    /// agencies and colleges without a mesh certificate, addresses are not
    /// secrets, and whoever dials an instance checks that its certificate
    /// names the service it expects.
    fn authorize(
        &self,
        peer: Option<&Identity>,
        service: &str,
        id: &str,
    ) -> Result<Option<String>, Status> {
        if !self.config.require_identity {
            return Ok(None);
        }
        match peer {
            Some(peer) if peer.may_hold(service, id) => Ok(Some(peer.to_string())),
            Some(peer) if peer.service_name() != service => {
                Err(Status::permission_denied(format!(
                    "your certificate names {peer}: you may register, renew or remove instances of {:?} only, not of {}",
                    peer.service_name(),
                    quote(service)
                )))
            }
            Some(peer) => Err(Status::permission_denied(match peer.name() {
                Some(name) => format!(
                    "your certificate names {peer}: you may register, renew or remove instance {name:?} (or {name:?}-<replica>) only, not {}",
                    quote(id)
                ),
                None => format!(
                    "your certificate names no instance (it is for all of {peer}): instance {} may be registered only with a certificate for {service}/<instance id> (`grantmesh ca issue --service {service} --name <instance id>`)",
                    quote(id)
                ),
            })),
            None => Err(Status::unauthenticated(format!(
                "registering, renewing or removing instance {} of {} needs a mesh certificate naming that instance (a client certificate from the mesh CA)",
                quote(id),
                quote(service)
            ))),
        }
    }
}

/// Room for one event on a Watch stream's queue; `None` once the stream or
/// the registry is closing.
async fn reserve<'a, T>(
    events: &'a mpsc::Sender<T>,
    closing: &CancellationToken,
) -> Option<mpsc::Permit<'a, T>> {
    tokio::select! {
        () = closing.cancelled() => None,
        room = events.reserve() => room.ok(),
    }
}

fn unknown_instance(service: &str, id: &str) -> Status {
    Status::not_found(format!(
        "instance {} of service {} is not registered (its lease expired or the registry restarted); register again",
        quote(id),
        quote(service)
    ))
}

fn proto_duration(duration: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(duration).ok()
}

/// Service names and instance ids: 1–128 characters of `A-Za-z0-9._-`.
fn validate_name(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    if value.len() > 128
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(Status::invalid_argument(format!(
            "{field} {} must be 1 to 128 characters of letters, digits, '.', '_' or '-'",
            quote(value)
        )));
    }
    Ok(())
}

/// Checks a registration and returns the TTL to apply.
fn validate_instance(instance: &Instance, default_ttl: Duration) -> Result<Duration, Status> {
    validate_name("instance.id", &instance.id)?;
    validate_name("instance.service", &instance.service)?;
    let uri: http_uri::Uri = instance.address.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "instance.address {} is not a URL such as http://10.0.0.5:7101",
            quote(&instance.address)
        ))
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https"))
        || uri.host().is_none()
        || uri.port_u16().is_none()
    {
        return Err(Status::invalid_argument(format!(
            "instance.address {} needs an http or https scheme, a host and a port",
            quote(&instance.address)
        )));
    }
    if instance.address.len() > MAX_ADDRESS_BYTES {
        return Err(Status::invalid_argument(format!(
            "instance.address may be at most {MAX_ADDRESS_BYTES} bytes"
        )));
    }
    if instance.labels.len() > MAX_LABELS
        || instance
            .labels
            .iter()
            .any(|(k, v)| k.len() > MAX_LABEL_KEY_BYTES || v.len() > MAX_LABEL_VALUE_BYTES)
    {
        return Err(Status::invalid_argument(format!(
            "instance.labels allows at most {MAX_LABELS} labels, keys up to {MAX_LABEL_KEY_BYTES} \
             and values up to {MAX_LABEL_VALUE_BYTES} bytes"
        )));
    }
    let ttl = match &instance.ttl {
        None => default_ttl,
        // Checked field by field first: prost's conversion normalizes with
        // plain arithmetic, which overflows (and panics) on extreme values.
        Some(ttl) if ttl.seconds < 0 || !(0..1_000_000_000).contains(&ttl.nanos) => {
            return Err(Status::invalid_argument(format!(
                "instance.ttl must be a positive duration with 0 to 999999999 nanos (got {}s {}ns)",
                ttl.seconds, ttl.nanos
            )));
        }
        Some(ttl) => Duration::new(ttl.seconds as u64, ttl.nanos as u32),
    };
    if ttl < TTL_RANGE.0 || ttl > TTL_RANGE.1 {
        return Err(Status::invalid_argument(format!(
            "instance.ttl {ttl:?} is outside {:?}..={:?}",
            TTL_RANGE.0, TTL_RANGE.1
        )));
    }
    Ok(ttl)
}

mod http_uri {
    pub use tonic::codegen::http::Uri;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(ttl: prost_types::Duration) -> Instance {
        Instance {
            id: "college-1".into(),
            service: "college".into(),
            address: "https://127.0.0.1:7200".into(),
            ttl: Some(ttl),
            ..Instance::default()
        }
    }

    #[test]
    fn a_megabyte_name_or_address_is_refused_without_being_repeated_whole() {
        let huge = "x".repeat(1 << 20);
        let named = validate_name("service", &huge).unwrap_err();
        let address = validate_instance(
            &Instance {
                id: "college-1".into(),
                service: "college".into(),
                address: format!("https://{huge}"),
                ..Default::default()
            },
            Duration::from_secs(3),
        )
        .unwrap_err();
        for refused in [named, address] {
            assert_eq!(refused.code(), tonic::Code::InvalidArgument);
            assert!(refused.message().len() < 300, "{}", refused.message().len());
            assert!(refused.message().contains("bytes)"), "{refused:?}");
        }
    }

    #[tokio::test]
    async fn the_watch_after_the_most_streams_is_refused_until_one_closes() {
        let closing = CancellationToken::new();
        let registry = RegistryService::new(
            RegistryConfig {
                instance_id: "registry-1".into(),
                default_ttl: Duration::from_secs(3),
                warmup: Duration::ZERO,
                require_identity: false,
                capacity: Capacity::default(),
                watches: default_watches(),
            },
            closing.clone(),
        );
        let watch = || {
            registry.watch(Request::new(WatchRequest {
                service: "college".into(),
            }))
        };
        let mut open = Vec::new();
        for _ in 0..MAX_WATCHERS {
            open.push(watch().await.expect("a watch within the limit"));
        }
        let refused = watch().await.err().expect("one past the limit");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("4096"), "{refused:?}");
        // A closed stream gives its place back once its task has seen it.
        drop(open.pop());
        let mut reopened = None;
        for _ in 0..100 {
            if let Ok(stream) = watch().await {
                reopened = Some(stream);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(reopened.is_some(), "a place came free");
        closing.cancel();
    }

    #[test]
    fn absurd_ttls_are_refused_not_panicked_on() {
        for (seconds, nanos) in [
            (i64::MIN, -999_999_999),
            (i64::MAX, 999_999_999),
            (0, i32::MIN),
            (-1, 0),
            (i64::MAX, -999_999_999),
        ] {
            let ttl = prost_types::Duration { seconds, nanos };
            let refused = validate_instance(&instance(ttl), Duration::from_secs(3))
                .expect_err("an absurd ttl is refused");
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
            assert!(refused.message().contains("instance.ttl"), "{refused:?}");
        }
    }
}
