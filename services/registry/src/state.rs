//! The registry's soft state: live instances per service, their leases, and
//! the watchers of each service.
//!
//! Everything here is synchronous and uses tokio's clock, so leases and
//! expiry are unit-tested with paused time.
//!
//! Leases expire from a timer queue (a min-heap of deadlines), not a scan:
//! a sweep pops only the leases that are due and looks at each once. A
//! heartbeat touches only its lease's time; a popped lease that was renewed
//! goes back in the queue at its new deadline, so each live lease costs one
//! pop per TTL however often it beats.
//!
//! Reads of a whole service (`ListInstances`, a Watch snapshot) take the
//! lock only to clone a cached, reference-counted copy of the service's
//! instances (rebuilt once per change of that service) and their beat
//! times; the reply is built and encoded after the lock is released. Each service has its own
//! broadcast channel, so watchers of one service are not woken by changes to
//! another. A watcher subscribes and takes its snapshot under the same lock
//! that changes take, so it sees every change after its snapshot and none
//! before it.
//!
//! A Watch snapshot is a [`Snapshot`]: the shared copy plus the beat times
//! (a few dozen bytes an instance), cut into parts of at most
//! [`SNAPSHOT_PART_BYTES`] built only as they are asked for. The copy is a
//! list of reference-counted instances, and each instance is shared by
//! every copy taken while it did not change. So a watcher stuck on its
//! snapshot holds 8 bytes of list and ~24 bytes of beat time per instance,
//! plus the instances that changed or left since it was taken (the whole
//! service, ~3.5 MB at most, only if every instance was replaced meanwhile):
//! not a copy of the service of its own.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grantmesh_proto::v1::{Instance, WatchEvent, watch_event::Kind};
use prost::bytes::{BufMut as _, Bytes, BytesMut};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::metrics::RegistryMetrics;

/// How many changes a slow watcher may fall behind before it is sent a fresh snapshot.
const WATCH_BACKLOG: usize = 256;
/// Most encoded bytes of instances in one part of a Watch snapshot; a part
/// holds at least one instance, so one at the size limits (~3.6 KB) fits
/// several times over.
pub const SNAPSHOT_PART_BYTES: usize = 16 * 1024;

/// Why an instance left the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalReason {
    Deregistered,
    TtlExpired,
    KeepAliveClosed,
}

impl RemovalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deregistered => "deregistered",
            Self::TtlExpired => "ttl expired",
            Self::KeepAliveClosed => "keepalive stream closed",
        }
    }

    /// The reason as a metric label (`grantmesh_registry_removals_total`).
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::Deregistered => "deregistered",
            Self::TtlExpired => "ttl_expired",
            Self::KeepAliveClosed => "keepalive_closed",
        }
    }
}

/// A lease held by one KeepAlive stream; only the stream that holds an
/// instance's current lease may remove it when it breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseToken(u64);

/// Most services a registry keeps (counting those only watched). Each holds
/// a broadcast channel; made-up names must not grow the registry without end.
pub const MAX_SERVICES: usize = 1024;
/// Most instances of one service. With the registry's limits on one
/// instance's size (about 3.6 KB at most), a full service's `ListInstances`
/// reply stays under gRPC's default 4 MB message limit, so every client can
/// still read it (a Watch snapshot comes in parts anyway).
pub const MAX_INSTANCES_PER_SERVICE: usize = 1000;
/// Most instances one mesh identity may hold at once, over all services: a
/// college certificate holds its one instance, an agency's its replicas.
/// Enough for any real deployment; small enough that one member holding a
/// certificate cannot fill a service and shut the others out.
pub const MAX_INSTANCES_PER_MEMBER: usize = 16;

/// How many TTLs a service's instances that all missed their lease at once
/// are kept (self-preservation, see [`RegistryState::expire`]): long enough
/// to ride out a registry pause or a short partition (30 s at the default
/// 3 s TTL), short enough that a truly dead set is gone soon after.
pub const SELF_PRESERVATION_HOLD: u32 = 10;

/// How much one registry keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Services, counting those only watched.
    pub services: usize,
    /// Instances of one service.
    pub instances_per_service: usize,
    /// Instances one identity holds, over all services.
    pub instances_per_member: usize,
}

impl Default for Capacity {
    /// [`MAX_SERVICES`] and [`MAX_INSTANCES_PER_SERVICE`].
    fn default() -> Self {
        Self {
            services: MAX_SERVICES,
            instances_per_service: MAX_INSTANCES_PER_SERVICE,
            instances_per_member: MAX_INSTANCES_PER_MEMBER,
        }
    }
}

/// A registration or watch the registry has no room for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("the registry keeps at most {0} services (--max-services)")]
    Services(usize),
    #[error(
        "service {0:?} already has {1} instances, the most one service may have (--max-instances-per-service)"
    )]
    Instances(String, usize),
    #[error(
        "{0} already holds {1} instances, the most one mesh identity may hold (--max-instances-per-member)"
    )]
    Member(String, usize),
}

/// Why a registration, renewal or removal is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Full(#[from] Full),
    /// The lease belongs to another identity: only the one that registered
    /// an instance renews, replaces or removes it.
    #[error(
        "instance {id:?} of service {service:?} is held by {owner}: only the identity that registered it may renew, replace or remove it"
    )]
    NotYours {
        service: String,
        id: String,
        owner: String,
    },
}

/// The registry's state. Shared by every RPC handler and the expiry sweeper.
pub struct RegistryState {
    inner: Mutex<Inner>,
    /// Counts removals; registered on the server's metrics by the service.
    metrics: RegistryMetrics,
    capacity: Capacity,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every change; stamped on every watch event.
    revision: u64,
    /// Next lease token to hand out.
    next_lease: u64,
    /// Next lease generation: a lease registered anew, or with a new TTL,
    /// gets a new one, so queue entries of its former self are ignored.
    next_generation: u64,
    services: HashMap<String, ServiceEntry>,
    /// When each lease is next due to be looked at (at or after its deadline).
    deadlines: BinaryHeap<Reverse<Due>>,
    /// When this registry resumed after a pause of its own: no lease runs
    /// out before one TTL after that moment.
    resumed_at: Option<Instant>,
    /// How many leases each owner holds ([`Capacity::instances_per_member`]).
    held: HashMap<Arc<str>, usize>,
}

/// What to do with a lease whose queue entry came due.
enum Verdict {
    /// Look at it again then.
    Later(Instant),
    /// Its lease ran out: remove it.
    Expire(Instance),
    /// The entry is of a lease since removed or registered anew: drop it.
    Stale,
}

/// An entry of the timer queue.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    generation: u64,
    service: String,
    id: String,
}

struct ServiceEntry {
    instances: BTreeMap<String, Lease>,
    changes: broadcast::Sender<WatchEvent>,
    /// Whether its instances are being kept past their TTL (logged once per episode).
    preserving: bool,
    /// The instances as registered, in id order; rebuilt after a change.
    cached: Option<Arc<[Arc<Instance>]>>,
    /// The same, each encoded once (without the read-time fields) for
    /// [`RegistryState::list_encoded`]; rebuilt after a change.
    encoded: Option<Arc<[Bytes]>>,
}

struct Lease {
    /// As registered, without the read-time fields; shared with every
    /// listing taken since it last changed.
    instance: Arc<Instance>,
    ttl: Duration,
    last_beat: Instant,
    /// The KeepAlive stream that renews it, if any.
    holder: Option<LeaseToken>,
    generation: u64,
    /// The mesh identity that registered it (`college/college-1`); `None` on
    /// a registry that runs without identities (plaintext).
    owner: Option<Arc<str>>,
}

impl Lease {
    /// Whether `caller` may renew, replace or remove this lease.
    fn is_for(&self, caller: Option<&str>) -> bool {
        self.owner.is_none() || self.owner.as_deref() == caller
    }

    fn not_yours(&self, service: &str, id: &str) -> Refused {
        Refused::NotYours {
            service: service.to_owned(),
            id: id.to_owned(),
            owner: self.owner.as_deref().unwrap_or("nobody").to_owned(),
        }
    }
}

/// A copy of one service's instances taken under the lock, made into a
/// reply after it is released.
#[derive(Debug)]
pub struct Listing {
    instances: Arc<[Arc<Instance>]>,
    beats: Vec<(Instant, bool)>,
}

impl Listing {
    /// The instances with the time since each last beat, as of `now`.
    fn read(self, now: Instant) -> Vec<Instance> {
        (0..self.instances.len())
            .map(|at| self.instance(at, now))
            .collect()
    }

    /// The instance at `at` with the time since its last beat, as of `now`.
    fn instance(&self, at: usize, now: Instant) -> Instance {
        let (last_beat, kept_alive) = self.beats[at];
        let mut instance = Instance::clone(&self.instances[at]);
        instance.since_last_beat =
            prost_types::Duration::try_from(now.duration_since(last_beat)).ok();
        instance.keep_alive_stream = kept_alive;
        instance
    }
}

/// A Watch snapshot of one service, handed out part by part: each part is
/// built (and its instances copied) only when it is asked for, so a watcher
/// holds the shared instances and their beat times, not a copy of them.
///
/// Parts hold at most [`SNAPSHOT_PART_BYTES`] of encoded instances (at least
/// one); all but the last have `more` set. An empty service is one part.
#[derive(Debug)]
pub struct Snapshot {
    listing: Listing,
    revision: u64,
    /// When the snapshot was taken: every part reports beats as of then.
    taken_at: Instant,
    /// The first instance of the next part.
    next: usize,
    /// Whether the last part was handed out.
    done: bool,
}

impl Snapshot {
    /// The revision every part carries.
    pub fn revision(&self) -> u64 {
        self.revision
    }
}

impl Iterator for Snapshot {
    type Item = WatchEvent;

    fn next(&mut self) -> Option<WatchEvent> {
        if self.done {
            return None;
        }
        let total = self.listing.instances.len();
        let mut instances = Vec::new();
        let mut bytes = 0;
        while self.next < total {
            let instance = self.listing.instance(self.next, self.taken_at);
            // As a field of the part: its tag and length prefix included.
            let len = prost::encoding::message::encoded_len(3, &instance);
            if !instances.is_empty() && bytes + len > SNAPSHOT_PART_BYTES {
                break;
            }
            bytes += len;
            instances.push(instance);
            self.next += 1;
        }
        self.done = self.next == total;
        Some(WatchEvent {
            kind: Kind::Snapshot as i32,
            revision: self.revision,
            instances,
            reason: String::new(),
            more: !self.done,
        })
    }
}

impl Default for RegistryState {
    fn default() -> Self {
        Self::new()
    }
}

impl RegistryState {
    pub fn new() -> Self {
        Self::with_capacity(Capacity::default())
    }

    /// An empty registry that keeps at most `capacity`.
    pub fn with_capacity(capacity: Capacity) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            metrics: RegistryMetrics::new(),
            capacity,
        }
    }

    /// The counters this state updates.
    pub fn metrics(&self) -> &RegistryMetrics {
        &self.metrics
    }

    /// The revision and, for every service with live instances, how many it
    /// has and whether it is held in self-preservation; sorted by service.
    pub fn status(&self) -> (u64, Vec<(String, usize, bool)>) {
        let inner = self.lock();
        let mut services: Vec<_> = inner
            .services
            .iter()
            .filter(|(_, entry)| !entry.instances.is_empty())
            .map(|(name, entry)| (name.clone(), entry.instances.len(), entry.preserving))
            .collect();
        services.sort();
        (inner.revision, services)
    }

    /// How many live instances each service has, for services with any.
    pub fn instance_counts(&self) -> Vec<(String, usize)> {
        self.lock()
            .services
            .iter()
            .filter(|(_, entry)| !entry.instances.is_empty())
            .map(|(name, entry)| (name.clone(), entry.instances.len()))
            .collect()
    }

    /// Removes an instance under the lock and counts the removal.
    fn remove_locked(
        &self,
        inner: &mut Inner,
        service: &str,
        id: &str,
        reason: RemovalReason,
    ) -> bool {
        let removed = inner.remove(service, id, reason);
        if removed {
            self.metrics.removed(reason);
        }
        removed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("registry state lock poisoned")
    }

    /// Adds or refreshes an instance and renews its lease, on behalf of
    /// `owner` (the caller's mesh identity): an instance another identity
    /// holds is refused. Watchers hear of it only when it is new or its
    /// address or labels changed.
    pub fn register(
        &self,
        mut instance: Instance,
        ttl: Duration,
        owner: Option<&str>,
    ) -> Result<u64, Refused> {
        instance.ttl = prost_types::Duration::try_from(ttl).ok();
        instance.since_last_beat = None;
        instance.keep_alive_stream = false;
        let mut inner = self.lock();
        let now = Instant::now();
        if let Some(lease) = inner
            .services
            .get(&instance.service)
            .and_then(|entry| entry.instances.get(&instance.id))
            && !lease.is_for(owner)
        {
            return Err(lease.not_yours(&instance.service, &instance.id));
        }
        inner.make_room(&instance.service, self.capacity.services)?;
        let generation = inner.next_generation + 1;
        let held = owner.map_or(0, |owner| inner.held.get(owner).copied().unwrap_or(0));
        let entry = inner.service_mut(&instance.service);
        let new = !entry.instances.contains_key(&instance.id);
        if new && entry.instances.len() >= self.capacity.instances_per_service {
            return Err(Full::Instances(
                instance.service.clone(),
                self.capacity.instances_per_service,
            )
            .into());
        }
        if new && held >= self.capacity.instances_per_member {
            let owner = owner.unwrap_or_default().to_owned();
            return Err(Full::Member(owner, self.capacity.instances_per_member).into());
        }
        let owner: Option<Arc<str>> = owner.map(Arc::from);
        let (changed, queue) = match entry.instances.get_mut(&instance.id) {
            Some(lease) => {
                let changed = *lease.instance != instance;
                // A new TTL may make the deadline earlier than the queued one.
                let queue = lease.ttl != ttl;
                if queue {
                    lease.generation = generation;
                }
                if changed {
                    lease.instance = Arc::new(instance.clone());
                }
                lease.ttl = ttl;
                lease.last_beat = now;
                (changed, queue)
            }
            None => {
                entry.instances.insert(
                    instance.id.clone(),
                    Lease {
                        instance: Arc::new(instance.clone()),
                        ttl,
                        last_beat: now,
                        holder: None,
                        generation,
                        owner: owner.clone(),
                    },
                );
                if let Some(owner) = owner {
                    *inner.held.entry(owner).or_default() += 1;
                }
                (true, true)
            }
        };
        if queue {
            inner.next_generation = generation;
            inner.deadlines.push(Reverse(Due {
                at: now + ttl,
                generation,
                service: instance.service.clone(),
                id: instance.id.clone(),
            }));
        }
        if changed {
            let service = instance.service.clone();
            inner.publish(&service, Kind::Put, vec![instance], "");
        }
        Ok(inner.revision)
    }

    /// Removes an instance; returns whether it was there.
    pub fn remove(&self, service: &str, id: &str, reason: RemovalReason) -> bool {
        let mut inner = self.lock();
        self.remove_locked(&mut inner, service, id, reason)
    }

    /// Removes an instance at `caller`'s request: only its owner may.
    /// Returns whether it was there.
    pub fn deregister(
        &self,
        service: &str,
        id: &str,
        caller: Option<&str>,
    ) -> Result<bool, Refused> {
        let mut inner = self.lock();
        if let Some(lease) = inner
            .services
            .get(service)
            .and_then(|entry| entry.instances.get(id))
            && !lease.is_for(caller)
        {
            return Err(lease.not_yours(service, id));
        }
        Ok(self.remove_locked(&mut inner, service, id, RemovalReason::Deregistered))
    }

    /// Renews a lease at `caller`'s request (its owner only); returns its
    /// TTL, or `None` when the instance is unknown.
    pub fn heartbeat(
        &self,
        service: &str,
        id: &str,
        caller: Option<&str>,
    ) -> Result<Option<Duration>, Refused> {
        self.lock().renew(service, id, None, caller)
    }

    /// Renews a lease on behalf of a KeepAlive stream of `caller` (its
    /// owner only) and makes that stream its holder. Returns the TTL, or
    /// `None` when the instance is unknown.
    pub fn keep_alive(
        &self,
        service: &str,
        id: &str,
        token: LeaseToken,
        caller: Option<&str>,
    ) -> Result<Option<Duration>, Refused> {
        self.lock().renew(service, id, Some(token), caller)
    }

    /// A token for a new KeepAlive stream.
    pub fn new_lease_token(&self) -> LeaseToken {
        let mut inner = self.lock();
        inner.next_lease += 1;
        LeaseToken(inner.next_lease)
    }

    /// A KeepAlive stream ended: remove the instance at once, unless another
    /// stream has taken the lease over since, or the stream broke after
    /// `quiet` — at least half the lease's TTL without a beat.
    ///
    /// A process that dies (a crash, kill -9) was beating until its socket
    /// closed, so it goes at once. A stream that broke after going silent
    /// was cut off first (HTTP/2 keepalive closes a connection ~15 s into a
    /// blackhole partition): that is silence, which the lease's TTL and
    /// self-preservation judge, not a departure.
    pub fn keep_alive_closed(
        &self,
        service: &str,
        id: &str,
        token: LeaseToken,
        quiet: Option<Duration>,
    ) -> bool {
        let mut inner = self.lock();
        let Some(lease) = inner
            .services
            .get(service)
            .and_then(|entry| entry.instances.get(id))
            .filter(|lease| lease.holder == Some(token))
        else {
            return false;
        };
        if let Some(quiet) = quiet
            && quiet >= lease.ttl / 2
        {
            tracing::info!(
                service,
                instance = id,
                ?quiet,
                "a KeepAlive stream broke after going silent: its lease runs out as a silence would"
            );
            return false;
        }
        self.remove_locked(&mut inner, service, id, RemovalReason::KeepAliveClosed)
    }

    /// The registry itself was not running for `gap` (stopped, starved):
    /// every lease gets one TTL from now before it can run out, since no
    /// instance could have reached it meanwhile.
    pub fn resumed_after_pause(&self, gap: Duration) {
        let mut inner = self.lock();
        inner.resumed_at = Some(Instant::now());
        let leases: usize = inner.services.values().map(|e| e.instances.len()).sum();
        tracing::warn!(
            ?gap,
            leases,
            "the registry was paused: giving every lease one TTL to beat again before any expires"
        );
    }

    /// Removes every instance whose lease ran out; returns what was removed.
    /// Only the leases that are due are looked at (see the module docs).
    ///
    /// Self-preservation: when every instance of a service (two or more)
    /// has gone silent at once (each for over half its TTL) and some have
    /// run out, the likelier story is that the registry lost
    /// touch with them — a partition, or this registry paused — not that
    /// they all died together (a dead process is removed at once when its
    /// KeepAlive stream breaks). They are then kept, and logged, for up to
    /// [`SELF_PRESERVATION_HOLD`] TTLs, so clients keep calling instances
    /// that may well be answering them; a client's balancer already sets
    /// aside one that is not. One instance among live ones still goes after
    /// its TTL.
    pub fn expire(&self) -> Vec<Instance> {
        let mut inner = self.lock();
        let now = Instant::now();
        let mut removed = Vec::new();
        while inner
            .deadlines
            .peek()
            .is_some_and(|Reverse(due)| due.at <= now)
        {
            let Reverse(due) = inner.deadlines.pop().expect("peeked");
            match inner.look_at(&due, now) {
                Verdict::Later(at) => inner.deadlines.push(Reverse(Due { at, ..due })),
                Verdict::Expire(instance) => {
                    removed.push(instance);
                    self.remove_locked(
                        &mut inner,
                        &due.service,
                        &due.id,
                        RemovalReason::TtlExpired,
                    );
                }
                Verdict::Stale => {}
            }
        }
        if inner
            .resumed_at
            .is_some_and(|at| now.duration_since(at) > crate::TTL_RANGE.1)
        {
            inner.resumed_at = None;
        }
        // Services nobody registers in or watches any more are forgotten.
        inner
            .services
            .retain(|_, entry| !entry.instances.is_empty() || entry.changes.receiver_count() > 0);
        removed
    }

    /// The live instances of `service` (of every service when empty), with
    /// the time since each last beat.
    pub fn list(&self, service: &str) -> (Vec<Instance>, u64) {
        let (listings, revision) = self.of_services(service, ServiceEntry::listing);
        let now = Instant::now();
        let instances = listings
            .into_iter()
            .flat_map(|listing| listing.read(now))
            .collect();
        (instances, revision)
    }

    /// `read` of `service`, or of every service when it is empty, under the
    /// lock, with the revision they were read at.
    fn of_services<T>(
        &self,
        service: &str,
        read: impl Fn(&mut ServiceEntry) -> T,
    ) -> (Vec<T>, u64) {
        let mut inner = self.lock();
        let names: Vec<String> = if service.is_empty() {
            inner.services.keys().cloned().collect()
        } else {
            vec![service.to_owned()]
        };
        let read: Vec<T> = names
            .iter()
            .filter_map(|name| inner.services.get_mut(name).map(&read))
            .collect();
        (read, inner.revision)
    }

    /// As [`RegistryState::list`], the instances already encoded as
    /// `ListInstancesReply.instances` (field 1): each instance's bytes are
    /// made once per change, and a read only appends the time since its
    /// last beat and whether a stream holds it (fields 6 and 7 come last; a
    /// field may come in any order).
    pub fn list_encoded(&self, service: &str) -> (Bytes, u64) {
        let (listings, revision) = self.of_services(service, ServiceEntry::encoded_listing);
        let now = Instant::now();
        let room: usize = listings
            .iter()
            .map(|(encoded, _)| encoded.iter().map(|b| b.len() + 32).sum::<usize>())
            .sum();
        let mut out = BytesMut::with_capacity(room);
        for (encoded, beats) in listings {
            for (bytes, (last_beat, kept_alive)) in encoded.iter().zip(beats) {
                let since = prost_types::Duration::try_from(now.duration_since(last_beat)).ok();
                let mut read_time = Vec::with_capacity(16);
                if let Some(since) = &since {
                    prost::encoding::message::encode(6, since, &mut read_time);
                }
                if kept_alive {
                    prost::encoding::bool::encode(7, &kept_alive, &mut read_time);
                }
                out.put_u8(grantmesh_proto::listing::INSTANCES_KEY);
                prost::encoding::encode_varint((bytes.len() + read_time.len()) as u64, &mut out);
                out.put_slice(bytes);
                out.put_slice(&read_time);
            }
        }
        (out.freeze(), revision)
    }

    /// A snapshot of `service` (in parts) and a subscription to every change after it.
    pub fn watch(
        &self,
        service: &str,
    ) -> Result<(Snapshot, broadcast::Receiver<WatchEvent>), Full> {
        let (listing, revision, changes) = {
            let mut inner = self.lock();
            inner.make_room(service, self.capacity.services)?;
            let revision = inner.revision;
            let entry = inner.service_mut(service);
            (entry.listing(), revision, entry.changes.subscribe())
        };
        let snapshot = Snapshot {
            listing,
            revision,
            taken_at: Instant::now(),
            next: 0,
            done: false,
        };
        Ok((snapshot, changes))
    }

    /// How many entries the timer queue holds (one per lease, plus those of
    /// leases removed since their last turn).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.lock().deadlines.len()
    }
}

impl Inner {
    /// Decides about a lease whose queue entry came due.
    fn look_at(&mut self, due: &Due, now: Instant) -> Verdict {
        let resumed_at = self.resumed_at;
        let Some(entry) = self.services.get_mut(&due.service) else {
            return Verdict::Stale;
        };
        let Some(lease) = entry.instances.get(&due.id) else {
            return Verdict::Stale;
        };
        if lease.generation != due.generation {
            return Verdict::Stale;
        }
        let deadline = lease.last_beat + lease.ttl;
        if deadline > now {
            return Verdict::Later(deadline); // renewed since it was queued
        }
        if let Some(resumed) = resumed_at
            && resumed + lease.ttl > now
        {
            return Verdict::Later(resumed + lease.ttl);
        }
        // "At once": every instance has been silent for over half its
        // TTL. Healthy instances beat every heartbeat interval, so their
        // deadlines are spread over one interval; a cut-off set passes its
        // deadlines one by one, but all of them have gone quiet together.
        let all_at_once = entry.instances.len() >= 2
            && entry
                .instances
                .values()
                .all(|lease| now.duration_since(lease.last_beat) > lease.ttl / 2);
        let hold_ends = lease.last_beat + lease.ttl * SELF_PRESERVATION_HOLD;
        if all_at_once && now <= hold_ends {
            if !entry.preserving {
                entry.preserving = true;
                tracing::warn!(
                    service = due.service,
                    instances = entry.instances.len(),
                    "every instance of the service missed its lease at once: keeping them (self-preservation) \
                     until they beat again or {SELF_PRESERVATION_HOLD} TTLs pass"
                );
            }
            // Looked at again soon: it goes once another instance beats.
            return Verdict::Later((now + lease.ttl / 4).min(hold_ends + Duration::from_millis(1)));
        }
        Verdict::Expire(Instance::clone(&lease.instance))
    }

    fn renew(
        &mut self,
        service: &str,
        id: &str,
        holder: Option<LeaseToken>,
        caller: Option<&str>,
    ) -> Result<Option<Duration>, Refused> {
        let Some(entry) = self.services.get_mut(service) else {
            return Ok(None);
        };
        let Some(lease) = entry.instances.get_mut(id) else {
            return Ok(None);
        };
        if !lease.is_for(caller) {
            return Err(lease.not_yours(service, id));
        }
        lease.last_beat = Instant::now();
        if holder.is_some() {
            lease.holder = holder;
        }
        let ttl = lease.ttl;
        if entry.preserving {
            entry.preserving = false;
            tracing::warn!(
                service,
                instance = id,
                "renewals are back: normal expiry resumes (self-preservation over)"
            );
        }
        Ok(Some(ttl))
    }

    /// Whether `service` exists or there is room for it.
    fn make_room(&mut self, service: &str, most: usize) -> Result<(), Full> {
        if self.services.contains_key(service) || self.services.len() < most {
            return Ok(());
        }
        // Full: first forget services that nobody uses any more.
        self.services
            .retain(|_, entry| !entry.instances.is_empty() || entry.changes.receiver_count() > 0);
        if self.services.len() < most {
            Ok(())
        } else {
            Err(Full::Services(most))
        }
    }

    fn service_mut(&mut self, service: &str) -> &mut ServiceEntry {
        self.services
            .entry(service.to_owned())
            .or_insert_with(|| ServiceEntry {
                instances: BTreeMap::new(),
                changes: broadcast::channel(WATCH_BACKLOG).0,
                preserving: false,
                cached: None,
                encoded: None,
            })
    }

    fn remove(&mut self, service: &str, id: &str, reason: RemovalReason) -> bool {
        let Some(lease) = self
            .services
            .get_mut(service)
            .and_then(|entry| entry.instances.remove(id))
        else {
            return false;
        };
        if let Some(owner) = &lease.owner
            && let Some(count) = self.held.get_mut(owner)
        {
            *count -= 1;
            if *count == 0 {
                self.held.remove(owner);
            }
        }
        tracing::info!(
            service,
            instance = id,
            reason = reason.as_str(),
            "instance removed"
        );
        self.publish(
            service,
            Kind::Delete,
            vec![Arc::unwrap_or_clone(lease.instance)],
            reason.as_str(),
        );
        true
    }

    fn publish(&mut self, service: &str, kind: Kind, instances: Vec<Instance>, reason: &str) {
        self.revision += 1;
        let event = WatchEvent {
            kind: kind as i32,
            revision: self.revision,
            instances,
            reason: reason.to_owned(),
            more: false,
        };
        let entry = self.service_mut(service);
        entry.cached = None;
        entry.encoded = None;
        // No receivers is fine: nobody is watching this service.
        let _ = entry.changes.send(event);
    }
}

impl ServiceEntry {
    /// Each instance encoded once, in id order, and their beat times.
    fn encoded_listing(&mut self) -> (Arc<[Bytes]>, Vec<(Instant, bool)>) {
        let encoded = self
            .encoded
            .get_or_insert_with(|| {
                self.instances
                    .values()
                    .map(|lease| Bytes::from(prost::Message::encode_to_vec(&*lease.instance)))
                    .collect()
            })
            .clone();
        (encoded, self.beats())
    }

    /// When each instance, in id order, last beat, and whether a stream holds it.
    fn beats(&self) -> Vec<(Instant, bool)> {
        self.instances
            .values()
            .map(|lease| (lease.last_beat, lease.holder.is_some()))
            .collect()
    }

    /// The cached instances (rebuilt if a change invalidated them) and their beat times.
    fn listing(&mut self) -> Listing {
        let instances = self
            .cached
            .get_or_insert_with(|| {
                self.instances
                    .values()
                    .map(|lease| Arc::clone(&lease.instance))
                    .collect()
            })
            .clone();
        Listing {
            instances,
            beats: self.beats(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn instance(service: &str, id: &str) -> Instance {
        Instance {
            id: id.to_owned(),
            service: service.to_owned(),
            address: format!("http://127.0.0.1:1/{id}"),
            ..Instance::default()
        }
    }

    const TTL: Duration = Duration::from_secs(3);

    /// A snapshot's parts joined, as a client applies them.
    fn whole(snapshot: Snapshot) -> WatchEvent {
        let revision = snapshot.revision();
        let mut instances = Vec::new();
        for part in snapshot {
            assert_eq!(part.revision, revision);
            instances.extend(part.instances);
        }
        WatchEvent {
            kind: Kind::Snapshot as i32,
            revision,
            instances,
            ..WatchEvent::default()
        }
    }

    /// An instance at the registry's size limits (as the soak's abusers register).
    fn max_instance(n: usize) -> Instance {
        Instance {
            id: format!("college-{n:0>120}"),
            service: "college".into(),
            address: format!("https://{}:9", "a".repeat(256 - "https://:9".len())),
            labels: (0..16)
                .map(|n| (format!("{n:0>64}"), "v".repeat(128)))
                .collect(),
            ..Instance::default()
        }
    }

    #[test]
    fn a_full_service_is_snapshotted_in_bounded_parts_with_more_on_all_but_the_last() {
        let state = RegistryState::new();
        for n in 0..MAX_INSTANCES_PER_SERVICE {
            state.register(max_instance(n), TTL, None).unwrap();
        }
        let (snapshot, _changes) = state.watch("college").unwrap();
        let revision = snapshot.revision();
        let parts: Vec<WatchEvent> = snapshot.collect();
        let whole_len: usize = parts.iter().map(|p| p.instances.len()).sum();
        assert_eq!(whole_len, MAX_INSTANCES_PER_SERVICE);
        assert!(parts.len() > 100, "{} parts", parts.len());
        let (last, rest) = parts.split_last().unwrap();
        assert!(
            rest.iter().all(|p| p.more),
            "every part but the last has more"
        );
        assert!(!last.more, "the last part ends the snapshot");
        for part in &parts {
            assert_eq!(part.kind(), Kind::Snapshot);
            assert_eq!(part.revision, revision);
            assert!(
                part.encoded_len() <= SNAPSHOT_PART_BYTES + 64,
                "a part of {} bytes",
                part.encoded_len()
            );
        }
        // Joined, the parts are the listing, in order.
        let ids = |instances: &[Instance]| -> Vec<String> {
            instances.iter().map(|i| i.id.clone()).collect()
        };
        let joined: Vec<Instance> = parts.into_iter().flat_map(|p| p.instances).collect();
        assert_eq!(ids(&joined), ids(&state.list("college").0));
        // The whole would have been one message this big.
        let whole = WatchEvent {
            instances: joined,
            ..WatchEvent::default()
        };
        assert!(whole.encoded_len() > 3_000_000);
    }

    #[test]
    fn an_unread_snapshot_shares_the_instances_instead_of_copying_them() {
        let state = RegistryState::new();
        for n in 0..MAX_INSTANCES_PER_SERVICE {
            state.register(max_instance(n), TTL, None).unwrap();
        }
        let watchers: Vec<_> = (0..64).map(|_| state.watch("college").unwrap()).collect();
        let shared = &watchers[0].0.listing.instances;
        for (snapshot, _) in &watchers {
            assert!(Arc::ptr_eq(shared, &snapshot.listing.instances));
        }
        // The registry's own copy plus the 64 watchers' handles.
        assert_eq!(Arc::strong_count(shared), 64 + 1);
        // What each holds of its own: a beat time per instance.
        let own = std::mem::size_of_val(watchers[0].0.listing.beats.as_slice());
        assert!(own < 32 * 1024, "{own} bytes per watcher");
        // After a change, a new snapshot shares every unchanged instance
        // with the old ones: a watcher stuck on an old revision holds what
        // changed since, not a copy of the service.
        let mut changed = max_instance(0);
        changed.labels.insert("zone".into(), "b".into());
        state.register(changed, TTL, None).unwrap();
        let (newer, _) = state.watch("college").unwrap();
        let (old, new) = (shared, &newer.listing.instances);
        assert!(!Arc::ptr_eq(old, new));
        assert!(!Arc::ptr_eq(&old[0], &new[0]), "the changed one is new");
        assert!(
            old[1..]
                .iter()
                .zip(&new[1..])
                .all(|(o, n)| Arc::ptr_eq(o, n)),
            "the others are shared"
        );
    }

    #[test]
    fn an_instance_bigger_than_a_part_is_sent_alone() {
        // Bigger than the registry admits (its handlers check sizes, the
        // state does not): a part still makes progress, one instance at least.
        let state = RegistryState::new();
        let mut big = instance("college", "b");
        big.labels
            .insert("big".into(), "x".repeat(2 * SNAPSHOT_PART_BYTES));
        state.register(instance("college", "a"), TTL, None).unwrap();
        state.register(big, TTL, None).unwrap();
        state.register(instance("college", "c"), TTL, None).unwrap();
        let parts: Vec<Vec<String>> = state
            .watch("college")
            .unwrap()
            .0
            .map(|p| p.instances.into_iter().map(|i| i.id).collect())
            .collect();
        assert_eq!(parts, [vec!["a"], vec!["b"], vec!["c"]]);
    }

    #[test]
    fn an_empty_service_is_one_part_without_instances() {
        let state = RegistryState::new();
        let parts: Vec<WatchEvent> = state.watch("college").unwrap().0.collect();
        assert_eq!(parts.len(), 1);
        assert!(parts[0].instances.is_empty());
        assert!(!parts[0].more);
        assert_eq!(parts[0].kind(), Kind::Snapshot);
    }

    #[tokio::test(start_paused = true)]
    async fn instances_that_all_miss_their_lease_at_once_are_kept_for_a_while() {
        let state = RegistryState::new();
        state
            .register(instance("college", "c1"), TTL, None)
            .unwrap();
        state
            .register(instance("college", "c2"), TTL, None)
            .unwrap();
        tokio::time::advance(TTL * 2).await;
        assert!(state.expire().is_empty(), "both missed at once: kept");
        assert_eq!(state.list("college").0.len(), 2);
        // One comes back: the other, alone in missing its lease, goes when
        // it is next looked at (within a quarter of its TTL).
        state.heartbeat("college", "c1", None).unwrap().unwrap();
        tokio::time::advance(TTL / 4).await;
        let removed = state.expire();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].id, "c2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_preserved_service_is_removed_after_the_hold() {
        let state = RegistryState::new();
        state
            .register(instance("college", "c1"), TTL, None)
            .unwrap();
        state
            .register(instance("college", "c2"), TTL, None)
            .unwrap();
        tokio::time::advance(TTL * SELF_PRESERVATION_HOLD - Duration::from_millis(100)).await;
        assert!(state.expire().is_empty());
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(state.expire().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_instance_and_one_among_live_ones_expire_after_their_ttl() {
        let state = RegistryState::new();
        state.register(instance("agency", "a1"), TTL, None).unwrap();
        state
            .register(instance("college", "c1"), TTL, None)
            .unwrap();
        state
            .register(instance("college", "c2"), TTL, None)
            .unwrap();
        // c1 beats every second; c2 and a1 fall silent.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(1)).await;
            state.heartbeat("college", "c1", None).unwrap().unwrap();
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        let mut removed: Vec<String> = state.expire().into_iter().map(|i| i.id).collect();
        removed.sort();
        assert_eq!(removed, ["a1", "c2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_set_cut_off_together_is_kept_although_its_deadlines_are_spread() {
        let state = RegistryState::new();
        state
            .register(instance("college", "c1"), TTL, None)
            .unwrap();
        tokio::time::advance(Duration::from_millis(800)).await;
        state
            .register(instance("college", "c2"), TTL, None)
            .unwrap();
        // Both are cut off now; c1's deadline passes first, c2 is 0.8 s behind.
        tokio::time::advance(TTL - Duration::from_millis(700)).await;
        assert!(state.expire().is_empty(), "c1 is late, c2 silent too: kept");
        assert_eq!(state.list("college").0.len(), 2);
    }

    #[test]
    fn a_service_holds_a_bounded_number_of_instances() {
        let state = RegistryState::new();
        for n in 0..MAX_INSTANCES_PER_SERVICE {
            state
                .register(instance("college", &format!("c{n}")), TTL, None)
                .unwrap();
        }
        let full = state
            .register(instance("college", "one-more"), TTL, None)
            .unwrap_err();
        assert_eq!(
            full,
            Full::Instances("college".into(), MAX_INSTANCES_PER_SERVICE).into()
        );
        // A known instance can still renew by registering again.
        state
            .register(instance("college", "c0"), TTL, None)
            .unwrap();
    }

    #[test]
    fn only_the_identity_that_registered_an_instance_renews_replaces_or_removes_it() {
        let state = RegistryState::new();
        let owner = Some("college/college-1");
        let rogue = Some("college/college-2");
        state
            .register(instance("college", "college-1"), TTL, owner)
            .unwrap();
        let mut hijack = instance("college", "college-1");
        hijack.address = "https://10.6.6.6:7200".into();
        assert!(matches!(
            state.register(hijack, TTL, rogue),
            Err(Refused::NotYours { .. })
        ));
        assert!(state.heartbeat("college", "college-1", rogue).is_err());
        let token = state.new_lease_token();
        assert!(
            state
                .keep_alive("college", "college-1", token, rogue)
                .is_err()
        );
        assert!(state.deregister("college", "college-1", rogue).is_err());
        let (listed, _) = state.list("college");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].address, instance("college", "college-1").address);
        assert!(
            state
                .heartbeat("college", "college-1", owner)
                .unwrap()
                .is_some()
        );
        assert!(state.deregister("college", "college-1", owner).unwrap());
        // Once gone, the id is free for whoever may hold it.
        state
            .register(instance("college", "college-1"), TTL, rogue)
            .unwrap();
    }

    #[test]
    fn one_identity_holds_a_bounded_number_of_instances_and_others_still_register() {
        let state = RegistryState::new();
        let greedy = Some("agency/greedy");
        for n in 0..MAX_INSTANCES_PER_MEMBER {
            state
                .register(instance("agency", &format!("greedy-{n}")), TTL, greedy)
                .unwrap();
        }
        let full = state
            .register(instance("agency", "greedy-more"), TTL, greedy)
            .unwrap_err();
        assert_eq!(
            full,
            Full::Member("agency/greedy".into(), MAX_INSTANCES_PER_MEMBER).into()
        );
        state
            .register(instance("agency", "nsf"), TTL, Some("agency/nsf"))
            .unwrap();
        // A removal gives the identity its room back.
        state.remove("agency", "greedy-0", RemovalReason::Deregistered);
        state
            .register(instance("agency", "greedy-more"), TTL, greedy)
            .unwrap();
    }

    #[test]
    fn made_up_services_cannot_grow_the_registry_and_unused_ones_are_forgotten() {
        let state = RegistryState::new();
        let mut watchers = Vec::new();
        for n in 0..MAX_SERVICES {
            watchers.push(state.watch(&format!("made-up-{n}")).unwrap());
        }
        assert_eq!(
            state.watch("one-more").unwrap_err(),
            Full::Services(MAX_SERVICES)
        );
        assert_eq!(
            state
                .register(instance("college", "c1"), TTL, None)
                .unwrap_err(),
            Full::Services(MAX_SERVICES).into()
        );
        // Once the watchers are gone, their services make room again.
        drop(watchers);
        state
            .register(instance("college", "c1"), TTL, None)
            .unwrap();
        state.expire();
        assert_eq!(
            state.lock().services.len(),
            1,
            "only the service in use is kept"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_is_removed_once_its_ttl_passes_without_a_beat() {
        let state = RegistryState::new();
        state
            .register(instance("college", "c1"), TTL, None)
            .unwrap();
        tokio::time::advance(Duration::from_millis(2_900)).await;
        assert!(state.expire().is_empty());
        tokio::time::advance(Duration::from_millis(200)).await;
        let removed = state.expire();
        assert_eq!(removed.len(), 1);
        assert!(state.list("college").0.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_heartbeat_within_the_ttl_keeps_the_instance() {
        let state = RegistryState::new();
        state
            .register(instance("college", "c1"), TTL, None)
            .unwrap();
        let (_, mut changes) = state.watch("college").unwrap();
        // Beats at 1 s, then one 2.5 s late, then on time again.
        for gap in [1_000, 2_500, 1_000, 1_000] {
            tokio::time::advance(Duration::from_millis(gap)).await;
            assert!(state.expire().is_empty());
            assert!(state.heartbeat("college", "c1", None).unwrap().is_some());
        }
        assert!(
            changes.try_recv().is_err(),
            "no remove/re-add may be published"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_for_an_unknown_instance_is_refused() {
        let state = RegistryState::new();
        assert_eq!(state.heartbeat("college", "ghost", None).unwrap(), None);
    }

    #[tokio::test]
    async fn watchers_of_one_service_are_not_woken_by_another() {
        let state = RegistryState::new();
        let (snapshot, mut college) = state.watch("college").unwrap();
        assert!(whole(snapshot).instances.is_empty());
        state.register(instance("agency", "a1"), TTL, None).unwrap();
        assert!(college.try_recv().is_err());
        state
            .register(instance("college", "c1"), TTL, None)
            .unwrap();
        let event = college.try_recv().expect("a put for college");
        assert_eq!(event.kind(), Kind::Put);
        assert_eq!(event.instances[0].id, "c1");
    }

    #[tokio::test]
    async fn a_watch_sees_every_change_after_its_snapshot_with_rising_revisions() {
        let state = RegistryState::new();
        state
            .register(instance("college", "c1"), TTL, None)
            .unwrap();
        let (snapshot, mut changes) = state.watch("college").unwrap();
        let snapshot = whole(snapshot);
        assert_eq!(snapshot.instances.len(), 1);
        state
            .register(instance("college", "c2"), TTL, None)
            .unwrap();
        state.remove("college", "c1", RemovalReason::Deregistered);
        let put = changes.try_recv().unwrap();
        let delete = changes.try_recv().unwrap();
        assert!(snapshot.revision < put.revision && put.revision < delete.revision);
        assert_eq!((put.kind(), delete.kind()), (Kind::Put, Kind::Delete));
        assert_eq!(delete.reason, "deregistered");
    }

    #[tokio::test]
    async fn registering_again_unchanged_publishes_nothing() {
        let state = RegistryState::new();
        state
            .register(instance("college", "c1"), TTL, None)
            .unwrap();
        let (_, mut changes) = state.watch("college").unwrap();
        state
            .register(instance("college", "c1"), TTL, None)
            .unwrap();
        assert!(changes.try_recv().is_err());
    }

    #[tokio::test]
    async fn only_the_stream_holding_the_lease_removes_it_when_closing() {
        let state = RegistryState::new();
        state
            .register(instance("college", "c1"), TTL, None)
            .unwrap();
        let old = state.new_lease_token();
        let new = state.new_lease_token();
        state.keep_alive("college", "c1", old, None).unwrap();
        state.keep_alive("college", "c1", new, None).unwrap();
        assert!(!state.keep_alive_closed("college", "c1", old, None));
        assert_eq!(state.list("college").0.len(), 1);
        assert!(state.keep_alive_closed("college", "c1", new, None));
        assert!(state.list("college").0.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_beating_lease_keeps_one_queue_entry_however_often_it_beats() {
        let state = RegistryState::new();
        state
            .register(instance("college", "c1"), TTL, None)
            .unwrap();
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(500)).await;
            state.heartbeat("college", "c1", None).unwrap().unwrap();
            assert!(state.expire().is_empty());
        }
        assert_eq!(state.queued(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_registered_again_with_a_shorter_ttl_runs_out_on_the_shorter_one() {
        let state = RegistryState::new();
        state
            .register(instance("college", "c1"), TTL * 10, None)
            .unwrap();
        state
            .register(instance("college", "c1"), TTL, None)
            .unwrap();
        tokio::time::advance(TTL + Duration::from_millis(100)).await;
        assert_eq!(state.expire().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_removed_and_registered_again_is_expired_once_on_its_new_lease() {
        let state = RegistryState::new();
        state
            .register(instance("college", "c1"), TTL, None)
            .unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        state.remove("college", "c1", RemovalReason::Deregistered);
        state
            .register(instance("college", "c1"), TTL, None)
            .unwrap();
        // The first lease's queue entry comes due: it is not the lease now.
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert!(state.expire().is_empty());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(state.expire().len(), 1);
        assert_eq!(state.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_pause_of_its_own_every_lease_gets_one_ttl_to_beat_again() {
        let state = RegistryState::new();
        state.register(instance("agency", "a1"), TTL, None).unwrap();
        // The registry is stopped for 10 s: nobody could renew meanwhile.
        tokio::time::advance(Duration::from_secs(10)).await;
        state.resumed_after_pause(Duration::from_secs(10));
        assert!(state.expire().is_empty(), "not expired on resuming");
        tokio::time::advance(TTL - Duration::from_millis(100)).await;
        assert!(state.expire().is_empty(), "still within its grace");
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(state.expire().len(), 1, "gone one TTL after resuming");
    }

    #[tokio::test]
    async fn an_encoded_listing_reads_back_as_the_listing_itself() {
        let state = RegistryState::new();
        let mut labelled = instance("college", "c1");
        labelled.labels = [("metrics".to_owned(), "http://x/metrics".to_owned())].into();
        state.register(labelled, TTL, None).unwrap();
        state
            .register(instance("college", "c2"), TTL, None)
            .unwrap();
        state.register(instance("agency", "a1"), TTL, None).unwrap();
        let token = state.new_lease_token();
        state
            .keep_alive("college", "c2", token, None)
            .unwrap()
            .unwrap();
        for service in ["college", ""] {
            let (listed, revision) = state.list(service);
            let (encoded, encoded_revision) = state.list_encoded(service);
            let reply = grantmesh_proto::v1::ListInstancesReply {
                encoded,
                revision: encoded_revision,
                ..Default::default()
            };
            let read =
                grantmesh_proto::v1::ListInstancesReply::decode(reply.encode_to_vec().as_slice())
                    .unwrap();
            assert_eq!(read.revision, revision);
            let without_beats = |instances: Vec<Instance>| -> Vec<Instance> {
                instances
                    .into_iter()
                    .map(|mut i| {
                        assert!(i.since_last_beat.is_some(), "{i:?}");
                        i.since_last_beat = None;
                        i
                    })
                    .collect()
            };
            assert_eq!(without_beats(read.instances), without_beats(listed));
        }
        // A change is seen at the next read.
        state
            .register(instance("college", "c3"), TTL, None)
            .unwrap();
        let (encoded, _) = state.list_encoded("college");
        let reply = grantmesh_proto::v1::ListInstancesReply {
            encoded,
            ..Default::default()
        };
        let read =
            grantmesh_proto::v1::ListInstancesReply::decode(reply.encode_to_vec().as_slice())
                .unwrap();
        let ids: Vec<_> = read.instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["c1", "c2", "c3"]);
        assert!(
            read.instances[1].keep_alive_stream,
            "read-time fields are stamped"
        );
    }

    #[tokio::test]
    async fn listings_show_each_change_to_a_service() {
        let state = RegistryState::new();
        state
            .register(instance("college", "c1"), TTL, None)
            .unwrap();
        assert_eq!(state.list("college").0.len(), 1);
        state
            .register(instance("college", "c2"), TTL, None)
            .unwrap();
        let mut relabelled = instance("college", "c1");
        relabelled.labels.insert("zone".into(), "b".into());
        state.register(relabelled, TTL, None).unwrap();
        let (listed, _) = state.list("college");
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].labels.get("zone").map(String::as_str), Some("b"));
        let snapshot = whole(state.watch("college").unwrap().0);
        let labels = |instances: &[Instance]| -> Vec<_> {
            instances
                .iter()
                .map(|i| (i.id.clone(), i.labels.clone()))
                .collect()
        };
        assert_eq!(labels(&snapshot.instances), labels(&listed));
        state.remove("college", "c2", RemovalReason::Deregistered);
        assert_eq!(state.list("").0.len(), 1);
    }
}
