//! Client-side balancing over the instances the registry reports live.
//!
//! A [`Balancer`] follows one service through the registry's `Watch` stream
//! (trying the registry replicas in turn, and keeping the last known set
//! while none answers). Each change is applied to the pick set under its
//! lock before anyone is told, so once a removal has been applied no call
//! can start on the removed instance. (This is where the well-known
//! pitfall of balance channels lies — removals that only take effect on a
//! later readiness poll, or requests already queued for a removed endpoint:
//! here the pick happens at call time, against the current set.)
//!
//! Picking is power of two choices: two distinct live instances at random,
//! the one with fewer calls in flight wins. Tower's `p2c::Balance` does the
//! same, but it cannot be told "not that one again" for a retry, nor to set an
//! instance aside when its connection has just failed; both matter for the
//! window between an instance dying and the registry saying so.
//!
//! The registry sends a snapshot in parts (`WatchEvent.more`); a
//! [`SnapshotParts`] joins them, so a balancer swaps in the whole live set
//! at once and never picks from, or publishes, a part of it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use grantmesh_proto::RegistryClient;
use grantmesh_proto::v1::{
    Instance, ListInstancesRequest, WatchEvent, WatchRequest, watch_event::Kind,
};
use rand::Rng as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::transport::Channel;

use crate::tls::Transport;
use tonic::{Code, Status};

/// Tuning for a [`Balancer`].
#[derive(Clone, Debug)]
pub struct BalancerOptions {
    /// Attempts per call, the first included, each on a different instance.
    pub attempts: usize,
    /// How long an instance whose connection just failed is passed over.
    pub eject_for: Duration,
    /// How long a call waits for a first live instance before failing.
    pub wait_for_instances: Duration,
    /// Only instances carrying every one of these labels are used (e.g.
    /// `agency=nsf` to call one agency among several).
    pub labels: Vec<(String, String)>,
    /// How the registry and the instances are dialled. With TLS, an
    /// instance is only used once its certificate names the service.
    pub transport: Transport,
}

impl Default for BalancerOptions {
    fn default() -> Self {
        Self {
            attempts: 3,
            eject_for: Duration::from_secs(2),
            wait_for_instances: Duration::from_secs(3),
            labels: Vec::new(),
            transport: Transport::Insecure,
        }
    }
}

/// What a balancer currently believes about its service.
#[derive(Clone, Debug, Default)]
pub struct MeshView {
    /// The live instances, by id.
    pub instances: Vec<Instance>,
    /// Registry revision of the last change applied.
    pub revision: u64,
    /// Whether a registry is answering right now (the set is kept when not).
    pub connected: bool,
}

impl MeshView {
    /// Whether an instance with this id is in the set.
    pub fn contains(&self, id: &str) -> bool {
        self.instances.iter().any(|i| i.id == id)
    }
}

/// Balances calls to one service across its live instances. Cheap to clone.
#[derive(Clone)]
pub struct Balancer {
    shared: Arc<Shared>,
    _follow: Arc<DropGuard>,
}

struct Shared {
    service: String,
    /// The registry URLs followed, for error messages.
    registries: Vec<String>,
    /// Whether some registry has accepted the Watch call since start-up: it
    /// tells "the registry knows no instance" from "no registry answered".
    registry_answered: AtomicBool,
    /// Why no registry answers, when a look at one found it speaking the
    /// other protocol (TLS to an `http://` URL, or the reverse).
    scheme_hint: Mutex<Option<String>>,
    options: BalancerOptions,
    endpoints: RwLock<HashMap<String, Arc<Endpoint>>>,
    view: watch::Sender<MeshView>,
}

struct Endpoint {
    instance: Instance,
    channel: Channel,
    in_flight: AtomicUsize,
    ejected_until: Mutex<Option<Instant>>,
}

impl Balancer {
    /// Follows `service` through the given registry URLs (tried in turn).
    pub fn new(
        registries: Vec<String>,
        service: impl Into<String>,
        options: BalancerOptions,
    ) -> Self {
        let (view, _) = watch::channel(MeshView::default());
        let shared = Arc::new(Shared {
            service: service.into(),
            registries: registries.clone(),
            registry_answered: AtomicBool::new(false),
            scheme_hint: Mutex::new(None),
            options,
            endpoints: RwLock::new(HashMap::new()),
            view,
        });
        let stop = CancellationToken::new();
        tokio::spawn(follow(registries, Arc::clone(&shared), stop.clone()));
        Self {
            shared,
            _follow: Arc::new(stop.drop_guard()),
        }
    }

    /// The service this balancer calls.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// What the balancer currently believes.
    pub fn view(&self) -> MeshView {
        self.shared.view.borrow().clone()
    }

    /// Changes to [`Balancer::view`], for callers that wait on the mesh.
    pub fn subscribe(&self) -> watch::Receiver<MeshView> {
        self.shared.view.subscribe()
    }

    /// Runs `call` with a channel to one live instance; when it fails with
    /// `UNAVAILABLE` (or the connection broke under it) it runs again on
    /// another instance, up to [`BalancerOptions::attempts`] times. That is
    /// safe for reads and for mutations that carry an idempotency key
    /// (withdrawals, proposals, account openings); the others go through
    /// [`Balancer::call_once`].
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_with(Resend::WhenUnavailable, call).await
    }

    /// As [`Balancer::call`], for a call that must not run twice because it
    /// carries no idempotency key (removing a member, accepting or declining
    /// an invitation, handing over an account): it goes to another instance
    /// only when it cannot have reached a server — no connection to the one
    /// picked could be made. A call that broke after it was sent comes back
    /// as its error; the caller reads the state to learn what happened.
    pub async fn call_once<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_with(Resend::WhenNotSent, call).await
    }

    /// [`Balancer::call`] or [`Balancer::call_once`], as `resend` says.
    pub async fn call_with<T, F, Fut>(&self, resend: Resend, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut tried: Vec<String> = Vec::new();
        let mut last_error = None;
        for _ in 0..self.shared.options.attempts.max(1) {
            let Some(endpoint) = self.pick_or_wait(&tried).await else {
                break;
            };
            let _in_flight = InFlight::start(&endpoint);
            match call(endpoint.channel.clone()).await {
                Ok(value) => return Ok(value),
                Err(status) => {
                    let not_sent = never_sent(&status);
                    let (status, transport) = classify(status);
                    if status.code() != Code::Unavailable
                        || (resend == Resend::WhenNotSent && !not_sent)
                    {
                        return Err(status);
                    }
                    if transport {
                        endpoint.eject(self.shared.options.eject_for);
                    }
                    tracing::debug!(instance = %endpoint.instance.id, error = %status, "retrying on another instance");
                    tried.push(endpoint.instance.id.clone());
                    last_error = Some(status);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| self.no_instance()))
    }

    fn no_instance(&self) -> Status {
        if !self.shared.registry_answered.load(Ordering::Relaxed) {
            let hint = self.shared.scheme_hint.lock().expect("hint lock poisoned");
            return Status::unavailable(format!(
                "no registry answered at {}{}",
                self.shared.registries.join(", "),
                hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
            ));
        }
        Status::unavailable(format!(
            "no live instance of service {:?} is registered",
            self.shared.service
        ))
    }

    async fn pick_or_wait(&self, tried: &[String]) -> Option<Arc<Endpoint>> {
        if let Some(endpoint) = self.shared.pick(tried) {
            return Some(endpoint);
        }
        if !tried.is_empty() {
            return None;
        }
        let mut changes = self.shared.view.subscribe();
        let deadline = Instant::now() + self.shared.options.wait_for_instances;
        loop {
            if let Some(endpoint) = self.shared.pick(tried) {
                return Some(endpoint);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }
}

impl Shared {
    /// Power of two choices among instances not yet tried, passing over
    /// ejected ones unless nothing else is left.
    fn pick(&self, tried: &[String]) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.read().expect("endpoint lock poisoned");
        let now = Instant::now();
        let untried: Vec<&Arc<Endpoint>> = endpoints
            .values()
            .filter(|e| !tried.contains(&e.instance.id))
            .collect();
        let healthy: Vec<&Arc<Endpoint>> = untried
            .iter()
            .copied()
            .filter(|e| !e.is_ejected(now))
            .collect();
        let pool = if healthy.is_empty() { untried } else { healthy };
        match pool.len() {
            0 => None,
            1 => Some(Arc::clone(pool[0])),
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (pool[a], pool[b]);
                let pick =
                    if b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed) {
                        b
                    } else {
                        a
                    };
                Some(Arc::clone(pick))
            }
        }
    }

    fn wanted(&self, instance: &Instance) -> bool {
        self.options
            .labels
            .iter()
            .all(|(key, value)| instance.labels.get(key) == Some(value))
    }

    /// Applies one registry event to the pick set, then publishes the new view.
    fn apply(&self, event: &WatchEvent) {
        let mut endpoints = self.endpoints.write().expect("endpoint lock poisoned");
        match event.kind() {
            Kind::Snapshot => {
                let mut fresh = HashMap::new();
                for instance in event.instances.iter().filter(|i| self.wanted(i)) {
                    let endpoint = match endpoints.remove(&instance.id) {
                        Some(known) if known.instance.address == instance.address => known,
                        _ => match Endpoint::new(instance.clone(), &self.options.transport) {
                            Some(endpoint) => endpoint,
                            None => continue,
                        },
                    };
                    fresh.insert(instance.id.clone(), endpoint);
                }
                *endpoints = fresh;
            }
            Kind::Put => {
                for instance in &event.instances {
                    if !self.wanted(instance) {
                        // Its labels may have changed so that it no longer qualifies.
                        endpoints.remove(&instance.id);
                        continue;
                    }
                    let same = endpoints
                        .get(&instance.id)
                        .is_some_and(|known| known.instance.address == instance.address);
                    if !same
                        && let Some(endpoint) =
                            Endpoint::new(instance.clone(), &self.options.transport)
                    {
                        endpoints.insert(instance.id.clone(), endpoint);
                    }
                }
            }
            Kind::Delete => {
                for instance in &event.instances {
                    endpoints.remove(&instance.id);
                }
            }
            Kind::Unspecified => return,
        }
        let mut instances: Vec<Instance> = endpoints.values().map(|e| e.instance.clone()).collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        drop(endpoints);
        self.view.send_replace(MeshView {
            instances,
            revision: event.revision,
            connected: true,
        });
    }

    fn set_connected(&self, connected: bool) {
        self.view.send_if_modified(|view| {
            let changed = view.connected != connected;
            view.connected = connected;
            changed
        });
    }
}

impl Endpoint {
    fn new(instance: Instance, transport: &Transport) -> Option<Arc<Self>> {
        match transport.channel_lazy(&instance.address, Some(&instance.service)) {
            Ok(channel) => Some(Arc::new(Self {
                channel,
                instance,
                in_flight: AtomicUsize::new(0),
                ejected_until: Mutex::new(None),
            })),
            Err(err) => {
                tracing::warn!(instance = %instance.id, address = %instance.address, error = %err, "ignoring an instance with a bad address");
                None
            }
        }
    }

    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .expect("ejection lock poisoned")
            .is_some_and(|until| now < until)
    }

    fn eject(&self, period: Duration) {
        *self.ejected_until.lock().expect("ejection lock poisoned") = Some(Instant::now() + period);
    }
}

/// Counts a call in flight on an endpoint for as long as it lives.
struct InFlight(Arc<Endpoint>);

impl InFlight {
    fn start(endpoint: &Arc<Endpoint>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(endpoint))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Maps a failure of the connection itself (the peer died mid-call, the
/// connection was reset) to `UNAVAILABLE`, as other gRPC implementations do,
/// and says whether the failure came from the transport rather than from the
/// server's answer.
fn classify(status: Status) -> (Status, bool) {
    let transport = std::error::Error::source(&status).is_some();
    match status.code() {
        Code::Unavailable => (status, transport),
        Code::Unknown | Code::Cancelled | Code::Internal
            if transport && broke_connection(&status) =>
        {
            (
                Status::unavailable(format!("connection lost: {}", status.message())),
                true,
            )
        }
        _ => (status, false),
    }
}

/// When [`Balancer::call_with`] sends a call again on another instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resend {
    /// Whenever it failed UNAVAILABLE: safe for reads and for mutations
    /// with an idempotency key.
    WhenUnavailable,
    /// Only when it never left this process (no connection could be made).
    WhenNotSent,
}

/// Whether the call failed before any byte of it could reach a server: the
/// connection to the instance could not be made.
fn never_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = err.source();
    }
    false
}

fn broke_connection(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.downcast_ref::<hyper::Error>().is_some()
            || err.downcast_ref::<std::io::Error>().is_some()
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Rounds of failing replicas between two warnings that a service cannot be
/// followed (a round takes about a second once the backoff is at its cap).
const UNFOLLOWED_WARN_EVERY: usize = 30;

/// Follows the registry's Watch stream for one service, replica after replica.
async fn follow(registries: Vec<String>, shared: Arc<Shared>, stop: CancellationToken) {
    if registries.is_empty() {
        tracing::warn!(service = %shared.service, "no registry to follow");
        return;
    }
    let mut backoff = Duration::from_millis(50);
    // Failures in a row: once every replica has failed, the client cannot
    // follow the service, which an operator needs to see (not at debug).
    let mut failures = 0usize;
    // Whether the last round was a poll, so that falling back is said once.
    let mut polling = false;
    for url in registries.iter().cycle() {
        let watched = tokio::select! {
            () = stop.cancelled() => return,
            result = watch_once(url, &shared) => result,
        };
        match watched {
            Ok(Followed::Polled(refused)) => {
                if !polling {
                    tracing::warn!(registry = %url, service = %shared.service, reason = %refused.message(), "the registry refused a Watch stream; reading its listing every {POLL_EVERY:?} instead");
                }
                polling = true;
                failures = 0;
                // The next round tries the next replica's Watch first.
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(POLL_EVERY) => {}
                }
                backoff = Duration::from_millis(50);
                continue;
            }
            Ok(Followed::Watched) => {
                shared.set_connected(false);
                if polling {
                    tracing::info!(registry = %url, service = %shared.service, "watching the registry again");
                }
                polling = false;
                backoff = Duration::from_millis(50);
                failures = 0;
            }
            Err(err) => {
                shared.set_connected(false);
                failures += 1;
                // Never answered: once per replica, look whether it speaks
                // the other protocol, so the error can say so.
                if !shared.registry_answered.load(Ordering::Relaxed)
                    && failures <= registries.len()
                    && let Some(hint) = crate::tls::scheme_mismatch(url).await
                {
                    *shared.scheme_hint.lock().expect("hint lock poisoned") = Some(hint);
                }
                // Once when every replica has failed, then about every half minute.
                if failures % (registries.len() * UNFOLLOWED_WARN_EVERY) == registries.len() {
                    tracing::warn!(service = %shared.service, registries = ?registries, error = %err, "cannot follow the service through any registry; keeping the last known instances");
                } else {
                    tracing::debug!(registry = %url, service = %shared.service, error = %err, "registry watch failed; keeping the last known instances");
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Joins the parts of a Watch snapshot, for any reader of a Watch stream.
///
/// The registry sends a snapshot in parts of the same revision, all but the
/// last with `more` set (so that a slow reader makes it hold a few parts, not
/// the whole set). Use one per stream: a stream that breaks amid a snapshot
/// leaves its parts unapplied.
#[derive(Debug, Default)]
pub struct SnapshotParts {
    pending: Option<WatchEvent>,
}

impl SnapshotParts {
    /// Takes the next event of the stream. A change comes back as it is; a
    /// part of a snapshot is held (`None`) until the last one, which comes
    /// back holding every instance of the parts, without `more`.
    pub fn push(&mut self, event: WatchEvent) -> Option<WatchEvent> {
        if event.kind() != Kind::Snapshot {
            // The registry sends no change amid a snapshot's parts; should
            // one come, the parts so far are no live set to keep.
            self.pending = None;
            return Some(event);
        }
        let whole = match self.pending.take() {
            Some(mut pending) if pending.revision == event.revision => {
                pending.instances.extend(event.instances);
                pending.more = event.more;
                pending
            }
            // A first part, or a new snapshot where the last was cut short.
            _ => event,
        };
        if whole.more {
            self.pending = Some(whole);
            None
        } else {
            Some(whole)
        }
    }

    /// Whether parts of a snapshot are held, waiting for the last one.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }
}

/// How a registry was followed until [`watch_once`] returned.
enum Followed {
    /// On a Watch stream, until it ended.
    Watched,
    /// The registry had no Watch stream for this client (RESOURCE_EXHAUSTED),
    /// so its listing was read once with ListInstances instead.
    Polled(Status),
}

/// How often a client whose Watch was refused reads the listing instead.
const POLL_EVERY: Duration = Duration::from_secs(1);

async fn watch_once(
    url: &str,
    shared: &Shared,
) -> Result<Followed, Box<dyn std::error::Error + Send + Sync>> {
    let channel = shared
        .options
        .transport
        .channel(url, Some(crate::REGISTRY_SERVICE))
        .await?;
    let mut client = RegistryClient::new(channel);
    let watched = client
        .watch(WatchRequest {
            service: shared.service.clone(),
        })
        .await;
    let mut events = match watched {
        Ok(events) => events.into_inner(),
        Err(refused) if refused.code() == tonic::Code::ResourceExhausted => {
            return poll_once(&mut client, shared, refused).await;
        }
        Err(err) => return Err(err.into()),
    };
    shared.registry_answered.store(true, Ordering::Relaxed);
    let mut parts = SnapshotParts::default();
    let mut received = false;
    loop {
        match events.message().await {
            Ok(Some(event)) => {
                received = true;
                if let Some(event) = parts.push(event) {
                    shared.apply(&event);
                }
            }
            Ok(None) => return Ok(Followed::Watched),
            // Refused as its first message (the registry keeps no more services).
            Err(refused) if !received && refused.code() == tonic::Code::ResourceExhausted => {
                return poll_once(&mut client, shared, refused).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Reads the listing once, for a client the registry refused a Watch.
async fn poll_once(
    client: &mut RegistryClient<Channel>,
    shared: &Shared,
    refused: Status,
) -> Result<Followed, Box<dyn std::error::Error + Send + Sync>> {
    let listing = client
        .list_instances(ListInstancesRequest {
            service: shared.service.clone(),
        })
        .await?
        .into_inner();
    shared.registry_answered.store(true, Ordering::Relaxed);
    shared.apply(&WatchEvent {
        kind: Kind::Snapshot as i32,
        revision: listing.revision,
        instances: listing.instances,
        more: false,
        ..WatchEvent::default()
    });
    Ok(Followed::Polled(refused))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A balancer is also a tower service, so generated clients can use it
/// directly (`CollegeClient::new(balancer.clone())`): each call goes to a
/// power-of-two pick, without retries. Use [`Balancer::call`] for retries.
impl tower::Service<http::Request<tonic::body::Body>> for Balancer {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let Some(endpoint) = self.shared.pick(&[]) else {
            let status = self.no_instance();
            return Box::pin(async move { Err(Box::new(status) as BoxError) });
        };
        Box::pin(async move {
            let in_flight = InFlight::start(&endpoint);
            let response = tower::ServiceExt::oneshot(in_flight.0.channel.clone(), request).await;
            response.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: Kind, revision: u64, ids: &[&str], more: bool) -> WatchEvent {
        WatchEvent {
            kind: kind as i32,
            revision,
            instances: ids
                .iter()
                .map(|id| Instance {
                    id: (*id).into(),
                    ..Instance::default()
                })
                .collect(),
            reason: String::new(),
            more,
        }
    }

    fn ids(event: &WatchEvent) -> Vec<&str> {
        event.instances.iter().map(|i| i.id.as_str()).collect()
    }

    #[test]
    fn snapshot_parts_come_out_as_one_snapshot_once_the_last_arrives() {
        let mut parts = SnapshotParts::default();
        assert!(
            parts
                .push(event(Kind::Snapshot, 7, &["a", "b"], true))
                .is_none()
        );
        assert!(parts.push(event(Kind::Snapshot, 7, &["c"], true)).is_none());
        assert!(parts.is_pending());
        let whole = parts.push(event(Kind::Snapshot, 7, &["d"], false)).unwrap();
        assert_eq!(ids(&whole), ["a", "b", "c", "d"]);
        assert_eq!(
            (whole.kind(), whole.revision, whole.more),
            (Kind::Snapshot, 7, false)
        );
        assert!(!parts.is_pending());
        // Changes and single-part snapshots pass through as they are.
        let put = parts.push(event(Kind::Put, 8, &["e"], false)).unwrap();
        assert_eq!((put.kind(), ids(&put)), (Kind::Put, vec!["e"]));
        let single = parts.push(event(Kind::Snapshot, 9, &[], false)).unwrap();
        assert!(single.instances.is_empty());
    }

    #[test]
    fn a_snapshot_cut_short_is_dropped_not_mixed_into_the_next() {
        let mut parts = SnapshotParts::default();
        assert!(
            parts
                .push(event(Kind::Snapshot, 3, &["old"], true))
                .is_none()
        );
        assert!(parts.push(event(Kind::Snapshot, 5, &["a"], true)).is_none());
        let whole = parts.push(event(Kind::Snapshot, 5, &["b"], false)).unwrap();
        assert_eq!(ids(&whole), ["a", "b"]);
        assert!(parts.push(event(Kind::Snapshot, 6, &["x"], true)).is_none());
        let delete = parts.push(event(Kind::Delete, 7, &["x"], false)).unwrap();
        assert_eq!(delete.kind(), Kind::Delete);
        assert!(!parts.is_pending(), "the cut-short parts are gone");
    }

    #[tokio::test]
    async fn a_call_names_every_registry_when_none_answers() {
        // Bound and dropped at once, so nothing listens on these ports.
        let closed = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let registries = vec![closed(), closed()];
        let options = BalancerOptions {
            wait_for_instances: Duration::from_millis(300),
            ..BalancerOptions::default()
        };
        let balancer = Balancer::new(registries.clone(), "college", options);
        let status = balancer
            .call(|_channel| async { Ok::<(), Status>(()) })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            format!(
                "no registry answered at {}, {}",
                registries[0], registries[1]
            )
        );
    }
}
