//! The dashboard's view of the mesh, kept up to date from the registry.
//!
//! Membership comes only from the registry's `Watch` (one stream per
//! service): an instance appears on its `PUT` and disappears on its
//! `DELETE`, which carries the reason ("keepalive stream closed" when a
//! process dies, "ttl expired", "deregistered"). `ListInstances`, polled
//! every [`REFRESH`], finds services to watch and refreshes each known
//! instance's lease figures (TTL, time since its last beat); it never adds
//! or removes one, so the page has one source of truth for who is live.
//! Beside that, each instance's gRPC health is probed, and its request rate
//! is read from its `metrics` label when it has one ([`crate::scrape`]);
//! each registry replica followed is probed too, with its latency.
//!
//! Removals are the web role's own record, kept here (the last
//! [`REMOVALS_SHOWN`]): a reloaded page gets them with the first view. One
//! that happened while a watch was reconnecting shows up as an instance
//! missing from the new snapshot, and is recorded so.
//!
//! Browsers subscribe to [`Monitor::subscribe`]: a new [`Dashboard`] is
//! published on every change and every refresh.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use grantmesh_discovery::tls::Transport;
use grantmesh_discovery::{REGISTRY_SERVICE, SnapshotParts};
use grantmesh_proto::RegistryClient;
use grantmesh_proto::v1::{Instance, ListInstancesRequest, WatchRequest, watch_event::Kind};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::scrape::{METRICS_LABEL, Rate, Scraper};

/// How often lease figures, health and request rates are refreshed.
pub const REFRESH: Duration = Duration::from_secs(1);

/// How long a health probe may take before the instance shows as not answering.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// Removals kept on the page, newest first.
pub const REMOVALS_SHOWN: usize = 20;

/// Instances probed and scraped at most: a registry listing thousands of
/// instances must not turn the dashboard into a load generator.
const MAX_PROBED: usize = 200;

/// Services watched at most (one stream each).
const MAX_SERVICES: usize = 32;

/// Pause before a watch that ended is opened again (on the next registry).
const REWATCH_AFTER: Duration = Duration::from_millis(300);

/// The services every mesh has, watched from the start.
const KNOWN_SERVICES: [&str; 3] = ["registry", "agency", "college"];

/// What the dashboard shows, as sent to browsers (JSON).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Dashboard {
    /// The registry replicas followed.
    pub registries: Vec<String>,
    /// The same replicas with their health, in the same order.
    pub replicas: Vec<ReplicaView>,
    /// Whether the last call to a registry succeeded.
    pub connected: bool,
    /// Milliseconds since the epoch when this view was made.
    pub at_ms: u64,
    pub services: Vec<ServiceView>,
    /// Recent removals, newest first (at most [`REMOVALS_SHOWN`]).
    pub removals: Vec<Removal>,
}

/// A registry replica as its health probe found it.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicaView {
    pub url: String,
    /// "serving", "not serving", "not answering" or "unknown" (not probed yet).
    pub health: String,
    /// How long its last health probe took, when it answered.
    pub latency_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub instances: Vec<InstanceView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InstanceView {
    pub id: String,
    pub address: String,
    /// `key=value`, sorted.
    pub labels: Vec<String>,
    pub ttl_ms: u64,
    /// Time since the registry last heard from it, as of this view.
    pub since_last_beat_ms: u64,
    /// Whether a KeepAlive stream holds its lease (removed the moment it breaks).
    pub keep_alive_stream: bool,
    /// "serving", "not serving", "not answering" or "unknown" (not probed yet).
    pub health: String,
    /// Requests per second from its metrics, when it advertises them.
    pub requests_per_second: Option<f64>,
    /// Why the request rate is missing, when the instance has a metrics URL.
    pub metrics_note: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Removal {
    pub service: String,
    pub id: String,
    pub address: String,
    pub reason: String,
    pub at_ms: u64,
    /// `at_ms` in words, in UTC like every time the portal shows.
    pub at: String,
}

/// Why an instance missing from a new snapshot is gone: the registry
/// removed it while this watch was not listening.
const MISSED_REMOVAL: &str =
    "gone from the registry's snapshot (removed while the dashboard's watch reconnected)";

/// Follows the mesh for the dashboard; stops when its token is cancelled.
#[derive(Clone)]
pub struct Monitor {
    view: watch::Receiver<Arc<Dashboard>>,
}

impl Monitor {
    pub fn start(registries: Vec<String>, transport: Transport, stop: CancellationToken) -> Self {
        let (tx, view) = watch::channel(Arc::new(Dashboard {
            registries: registries.clone(),
            ..Dashboard::default()
        }));
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = run(registries, transport, tx, stop.clone()) => {}
            }
        });
        Self { view }
    }

    /// The view now.
    pub fn now(&self) -> Arc<Dashboard> {
        Arc::clone(&self.view.borrow())
    }

    /// Every new view (a `WatchStream` of it starts with the current one).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Dashboard>> {
        self.view.clone()
    }
}

/// What the helper tasks tell the monitor.
enum Update {
    /// One message of service `0`'s watch.
    Watched(String, grantmesh_proto::v1::WatchEvent),
    /// A `ListInstances` answer (or `None` when no registry answered).
    Listed(Option<Vec<Instance>>),
    Health(String, &'static str),
    Requests(String, Result<f64, String>),
    /// The health probe of registry replica `0` (an index into the replicas).
    Replica(usize, &'static str, Option<Duration>),
}

struct Entry {
    instance: Instance,
    /// When `instance.since_last_beat` was read.
    read_at: Instant,
    health: &'static str,
    rate: Rate,
    requests_per_second: Option<f64>,
    metrics_note: Option<String>,
}

impl Entry {
    fn new(instance: Instance) -> Self {
        Self {
            instance,
            read_at: Instant::now(),
            health: "unknown",
            rate: Rate::default(),
            requests_per_second: None,
            metrics_note: None,
        }
    }
}

struct State {
    registries: Vec<String>,
    replicas: Vec<ReplicaView>,
    connected: bool,
    services: BTreeMap<String, BTreeMap<String, Entry>>,
    removals: Vec<Removal>,
}

async fn run(
    registries: Vec<String>,
    transport: Transport,
    publish: watch::Sender<Arc<Dashboard>>,
    stop: CancellationToken,
) {
    // One channel per replica, in the order given (`None`: not dialable).
    let replica_channels: Vec<Option<Channel>> = registries
        .iter()
        .map(
            |url| match transport.channel_lazy(url, Some(REGISTRY_SERVICE)) {
                Ok(channel) => Some(channel),
                Err(err) => {
                    tracing::warn!(registry = %url, error = %err, "dashboard cannot dial registry");
                    None
                }
            },
        )
        .collect();
    let clients: Arc<Vec<RegistryClient<Channel>>> = Arc::new(
        replica_channels
            .iter()
            .flatten()
            .cloned()
            .map(RegistryClient::new)
            .collect(),
    );
    let (updates, mut incoming) = mpsc::channel::<Update>(256);
    let mut state = State {
        replicas: registries
            .iter()
            .map(|url| ReplicaView {
                url: url.clone(),
                health: "unknown".to_owned(),
                latency_ms: None,
            })
            .collect(),
        registries,
        connected: false,
        services: BTreeMap::new(),
        removals: Vec::new(),
    };
    let mut watched: Vec<String> = Vec::new();
    for service in KNOWN_SERVICES {
        spawn_watch(service.to_owned(), &clients, &updates, &stop);
        watched.push(service.to_owned());
    }
    let scraper = Scraper::default();
    let mut health_channels: HashMap<String, Channel> = HashMap::new();
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                spawn_list(&clients, &updates);
                probe_replicas(&replica_channels, &updates);
                refresh_instances(&state, &transport, &scraper, &mut health_channels, &updates);
            }
            Some(update) = incoming.recv() => {
                if let Update::Listed(Some(instances)) = &update {
                    for instance in instances {
                        if !watched.contains(&instance.service) && watched.len() < MAX_SERVICES {
                            spawn_watch(instance.service.clone(), &clients, &updates, &stop);
                            watched.push(instance.service.clone());
                        }
                    }
                }
                state.apply(update);
            }
        }
        health_channels.retain(|id, _| state.services.values().any(|s| s.contains_key(id)));
        publish.send_replace(Arc::new(state.view()));
    }
}

/// Follows `service` through the registries in turn, for as long as the monitor runs.
fn spawn_watch(
    service: String,
    clients: &Arc<Vec<RegistryClient<Channel>>>,
    updates: &mpsc::Sender<Update>,
    stop: &CancellationToken,
) {
    let (clients, updates, stop) = (Arc::clone(clients), updates.clone(), stop.clone());
    tokio::spawn(async move {
        let mut next = 0usize;
        while !stop.is_cancelled() && !clients.is_empty() {
            let mut client = clients[next % clients.len()].clone();
            next += 1;
            let opened = client
                .watch(WatchRequest {
                    service: service.clone(),
                })
                .await;
            if let Ok(stream) = opened {
                let mut stream = stream.into_inner();
                // A snapshot comes in parts: the view shows it once whole.
                let mut parts = SnapshotParts::default();
                while let Some(Ok(event)) = stream.next().await {
                    let Some(event) = parts.push(event) else {
                        continue;
                    };
                    if updates
                        .send(Update::Watched(service.clone(), event))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            tokio::time::sleep(REWATCH_AFTER).await;
        }
    });
}

/// Asks the registries in turn for every live instance.
fn spawn_list(clients: &Arc<Vec<RegistryClient<Channel>>>, updates: &mpsc::Sender<Update>) {
    let (clients, updates) = (Arc::clone(clients), updates.clone());
    tokio::spawn(async move {
        for client in clients.iter() {
            let mut client = client.clone();
            let listed = tokio::time::timeout(
                REFRESH,
                client.list_instances(ListInstancesRequest::default()),
            )
            .await;
            if let Ok(Ok(reply)) = listed {
                let _ = updates
                    .send(Update::Listed(Some(reply.into_inner().instances)))
                    .await;
                return;
            }
        }
        let _ = updates.send(Update::Listed(None)).await;
    });
}

/// Probes each registry replica's health, timing it, each in its own task.
fn probe_replicas(channels: &[Option<Channel>], updates: &mpsc::Sender<Update>) {
    use grantmesh_proto::service_names::REGISTRY;
    for (n, channel) in channels.iter().enumerate() {
        let (channel, updates) = (channel.clone(), updates.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let health = match channel {
                None => "not answering",
                Some(channel) => probe(channel, REGISTRY).await,
            };
            let latency = (health != "not answering").then(|| started.elapsed());
            let _ = updates.send(Update::Replica(n, health, latency)).await;
        });
    }
}

/// Probes each instance's health and reads its metrics, each in its own task.
fn refresh_instances(
    state: &State,
    transport: &Transport,
    scraper: &Scraper,
    channels: &mut HashMap<String, Channel>,
    updates: &mpsc::Sender<Update>,
) {
    let instances = state
        .services
        .values()
        .flat_map(|s| s.values())
        .take(MAX_PROBED);
    for entry in instances {
        let instance = &entry.instance;
        let channel = match channels.get(&instance.id) {
            Some(channel) => Some(channel.clone()),
            None => transport
                .channel_lazy(&instance.address, Some(&instance.service))
                .ok()
                .inspect(|c| {
                    channels.insert(instance.id.clone(), c.clone());
                }),
        };
        let (id, updates_h) = (instance.id.clone(), updates.clone());
        let service_name = grpc_service_name(&instance.service);
        tokio::spawn(async move {
            let health = match channel {
                None => "not answering",
                Some(channel) => probe(channel, service_name).await,
            };
            let _ = updates_h.send(Update::Health(id, health)).await;
        });
        if let Some(url) = instance.labels.get(METRICS_LABEL) {
            let (id, url, scraper, updates) = (
                instance.id.clone(),
                url.clone(),
                scraper.clone(),
                updates.clone(),
            );
            tokio::spawn(async move {
                let total = scraper.requests_total(&url).await;
                let _ = updates.send(Update::Requests(id, total)).await;
            });
        }
    }
}

fn grpc_service_name(service: &str) -> &'static str {
    use grantmesh_proto::service_names::{AGENCY, COLLEGE, REGISTRY};
    match service {
        "college" => COLLEGE,
        "agency" => AGENCY,
        "registry" => REGISTRY,
        _ => "",
    }
}

async fn probe(channel: Channel, service: &str) -> &'static str {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest {
        service: service.to_owned(),
    });
    match tokio::time::timeout(PROBE_TIMEOUT, check).await {
        Ok(Ok(reply)) if reply.get_ref().status() == ServingStatus::Serving => "serving",
        Ok(Ok(_)) => "not serving",
        _ => "not answering",
    }
}

impl Removal {
    /// `instance` of `service`, removed now for `reason`.
    fn new(service: &str, instance: Instance, reason: &str) -> Self {
        let now = SystemTime::now();
        Self {
            service: service.to_owned(),
            id: instance.id,
            address: instance.address,
            reason: reason.to_owned(),
            at_ms: epoch_ms(now),
            at: crate::views::when(now),
        }
    }
}

fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn duration_ms(d: Option<&prost_types::Duration>) -> u64 {
    d.and_then(|d| Duration::try_from(*d).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl State {
    fn find(&mut self, id: &str) -> Option<&mut Entry> {
        self.services.values_mut().find_map(|s| s.get_mut(id))
    }

    fn apply(&mut self, update: Update) {
        self.apply_one(update);
        self.removals.truncate(REMOVALS_SHOWN);
    }

    fn apply_one(&mut self, update: Update) {
        match update {
            Update::Watched(service, event) => {
                self.connected = true;
                let instances = self.services.entry(service.clone()).or_default();
                match event.kind() {
                    Kind::Snapshot => {
                        let mut fresh = BTreeMap::new();
                        let missing: Vec<String> = instances
                            .keys()
                            .filter(|id| !event.instances.iter().any(|i| &i.id == *id))
                            .cloned()
                            .collect();
                        for id in missing {
                            if let Some(gone) = instances.remove(&id) {
                                self.removals.insert(
                                    0,
                                    Removal::new(&service, gone.instance, MISSED_REMOVAL),
                                );
                            }
                        }
                        for instance in event.instances {
                            let entry = match instances.remove(&instance.id) {
                                Some(mut entry) => {
                                    entry.instance = instance;
                                    entry.read_at = Instant::now();
                                    entry
                                }
                                None => Entry::new(instance),
                            };
                            fresh.insert(entry.instance.id.clone(), entry);
                        }
                        *instances = fresh;
                    }
                    Kind::Put => {
                        for instance in event.instances {
                            match instances.get_mut(&instance.id) {
                                Some(entry) => {
                                    entry.instance = instance;
                                    entry.read_at = Instant::now();
                                }
                                None => {
                                    instances.insert(instance.id.clone(), Entry::new(instance));
                                }
                            }
                        }
                    }
                    Kind::Delete => {
                        for mut instance in event.instances {
                            if let Some(known) = instances.remove(&instance.id) {
                                instance.address = known.instance.address;
                            }
                            let reason = if event.reason.is_empty() {
                                "removed"
                            } else {
                                &event.reason
                            };
                            self.removals
                                .insert(0, Removal::new(&service, instance, reason));
                        }
                    }
                    Kind::Unspecified => {}
                }
            }
            Update::Replica(n, health, latency) => {
                if let Some(replica) = self.replicas.get_mut(n) {
                    replica.health = health.to_owned();
                    replica.latency_ms = latency.map(|d| d.as_millis() as u64);
                }
            }
            Update::Listed(None) => self.connected = false,
            Update::Listed(Some(listed)) => {
                self.connected = true;
                for instance in listed {
                    if let Some(entry) = self.find(&instance.id) {
                        entry.instance.ttl = instance.ttl;
                        entry.instance.since_last_beat = instance.since_last_beat;
                        entry.instance.keep_alive_stream = instance.keep_alive_stream;
                        entry.read_at = Instant::now();
                    }
                }
            }
            Update::Health(id, health) => {
                if let Some(entry) = self.find(&id) {
                    entry.health = health;
                }
            }
            Update::Requests(id, total) => {
                if let Some(entry) = self.find(&id) {
                    match total {
                        Ok(total) => {
                            entry.metrics_note = None;
                            if let Some(rate) = entry.rate.record(Instant::now(), total) {
                                entry.requests_per_second = Some(rate);
                            }
                        }
                        Err(why) => {
                            entry.requests_per_second = None;
                            entry.metrics_note = Some(why);
                        }
                    }
                }
            }
        }
    }

    fn view(&self) -> Dashboard {
        debug_assert!(self.removals.len() <= REMOVALS_SHOWN);
        let services = self
            .services
            .iter()
            .filter(|(_, instances)| !instances.is_empty())
            .map(|(name, instances)| ServiceView {
                name: name.clone(),
                instances: instances
                    .values()
                    .map(|entry| {
                        let i = &entry.instance;
                        let mut labels: Vec<String> =
                            i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        labels.sort();
                        InstanceView {
                            id: i.id.clone(),
                            address: i.address.clone(),
                            labels,
                            ttl_ms: duration_ms(i.ttl.as_ref()),
                            since_last_beat_ms: duration_ms(i.since_last_beat.as_ref())
                                + entry.read_at.elapsed().as_millis() as u64,
                            keep_alive_stream: i.keep_alive_stream,
                            health: entry.health.to_owned(),
                            requests_per_second: entry.requests_per_second,
                            metrics_note: entry.metrics_note.clone(),
                        }
                    })
                    .collect(),
            })
            .collect();
        Dashboard {
            registries: self.registries.clone(),
            replicas: self.replicas.clone(),
            connected: self.connected,
            at_ms: epoch_ms(SystemTime::now()),
            services,
            removals: self.removals.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grantmesh_proto::v1::WatchEvent;

    fn instance(id: &str) -> Instance {
        Instance {
            id: id.into(),
            service: "college".into(),
            address: format!("https://{id}:7200"),
            ..Instance::default()
        }
    }

    fn event(kind: Kind, instances: Vec<Instance>, reason: &str) -> Update {
        Update::Watched(
            "college".into(),
            WatchEvent {
                kind: kind as i32,
                revision: 1,
                instances,
                reason: reason.into(),
                more: false,
            },
        )
    }

    fn state() -> State {
        State {
            registries: vec![],
            replicas: vec![],
            connected: false,
            services: BTreeMap::new(),
            removals: vec![],
        }
    }

    fn ids(state: &State) -> Vec<String> {
        state
            .view()
            .services
            .iter()
            .flat_map(|s| s.instances.iter().map(|i| i.id.clone()))
            .collect()
    }

    #[tokio::test]
    async fn a_deleted_instance_leaves_the_view_and_its_reason_is_shown() {
        let mut s = state();
        s.apply(event(
            Kind::Snapshot,
            vec![instance("c1"), instance("c2")],
            "",
        ));
        assert_eq!(ids(&s), ["c1", "c2"]);
        s.apply(event(
            Kind::Delete,
            vec![instance("c1")],
            "keepalive stream closed",
        ));
        assert_eq!(ids(&s), ["c2"]);
        let removal = &s.view().removals[0];
        assert_eq!(
            (removal.id.as_str(), removal.reason.as_str()),
            ("c1", "keepalive stream closed")
        );
        assert_eq!(removal.address, "https://c1:7200");
    }

    #[tokio::test]
    async fn removals_are_timed_in_utc_and_bounded() {
        let mut s = state();
        for n in 0..REMOVALS_SHOWN + 5 {
            let id = format!("c{n}");
            s.apply(event(Kind::Put, vec![instance(&id)], ""));
            s.apply(event(Kind::Delete, vec![instance(&id)], "ttl expired"));
        }
        let removals = s.view().removals;
        assert_eq!(removals.len(), REMOVALS_SHOWN);
        assert_eq!(
            removals[0].id,
            format!("c{}", REMOVALS_SHOWN + 4),
            "newest first"
        );
        assert!(removals[0].at.ends_with(" UTC"), "{}", removals[0].at);
    }

    #[tokio::test]
    async fn an_instance_missing_from_a_new_snapshot_is_recorded_as_removed() {
        let mut s = state();
        s.apply(event(
            Kind::Snapshot,
            vec![instance("c1"), instance("c2")],
            "",
        ));
        assert!(s.view().removals.is_empty());
        // The watch reconnected; c2 went while it was away.
        s.apply(event(Kind::Snapshot, vec![instance("c1")], ""));
        assert_eq!(ids(&s), ["c1"]);
        let removals = s.view().removals;
        assert_eq!(removals.len(), 1);
        assert_eq!(removals[0].id, "c2");
        assert_eq!(removals[0].reason, MISSED_REMOVAL);
    }

    #[tokio::test]
    async fn each_registry_replica_is_a_row_with_its_health() {
        let mut s = state();
        s.replicas = ["https://r1:7000", "https://r2:7000"]
            .map(|url| ReplicaView {
                url: url.to_owned(),
                health: "unknown".to_owned(),
                latency_ms: None,
            })
            .to_vec();
        s.apply(Update::Replica(
            0,
            "serving",
            Some(Duration::from_millis(3)),
        ));
        s.apply(Update::Replica(1, "not answering", None));
        let replicas = s.view().replicas;
        assert_eq!(
            replicas
                .iter()
                .map(|r| (r.url.as_str(), r.health.as_str(), r.latency_ms))
                .collect::<Vec<_>>(),
            [
                ("https://r1:7000", "serving", Some(3)),
                ("https://r2:7000", "not answering", None)
            ]
        );
    }

    #[tokio::test]
    async fn a_listing_refreshes_known_instances_but_never_adds_one() {
        let mut s = state();
        s.apply(event(Kind::Put, vec![instance("c1")], ""));
        let mut listed = instance("c1");
        listed.keep_alive_stream = true;
        s.apply(Update::Listed(Some(vec![listed, instance("ghost")])));
        assert_eq!(ids(&s), ["c1"]);
        assert!(s.view().services[0].instances[0].keep_alive_stream);
    }

    #[tokio::test]
    async fn health_and_request_rates_attach_to_their_instance() {
        let mut s = state();
        s.apply(event(Kind::Put, vec![instance("c1")], ""));
        s.apply(Update::Health("c1".into(), "serving"));
        s.apply(Update::Requests("c1".into(), Err("no answer".into())));
        let view = s.view();
        let row = &view.services[0].instances[0];
        assert_eq!(row.health, "serving");
        assert_eq!(row.metrics_note.as_deref(), Some("no answer"));
        assert_eq!(row.requests_per_second, None);
    }
}
