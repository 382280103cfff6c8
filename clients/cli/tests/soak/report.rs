//! The abuse figures of issue 10 (`--report`): each scenario of the issue
//! run once on fresh processes of the real binary (TLS, debug or release
//! as built), printed as rows for docs/benchmarks.md. Asserts nothing.
//!
//! Scaled down where the limit is the point: a certificate may register
//! instances of its own service only, and a service holds at most 1,000, so
//! "20k registrations" are 20k attempts of which 1,000 can be admitted;
//! idle connections are as many as this process's descriptors allow.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use grantmesh_proto::v1::*;
use grantmesh_proto::{CollegeClient, RegistryClient};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::abuse::max_instance;
use crate::mesh::{ABUSE_IDENTITY, ABUSE_SERVICE, cpu_ticks, rss_kib, tls_dir};
use crate::support::db::TestDb;
use crate::support::{Proc, tls};

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn row(scenario: &str, figure: String) {
    println!("| {scenario} | {figure} |");
}

async fn registry() -> (Proc, u32) {
    let registry = crate::mesh::registry().await;
    let pid = registry.child.id().unwrap();
    (registry, pid)
}

async fn abuser(registry: &Proc) -> RegistryClient<Channel> {
    RegistryClient::new(tls::channel_as(&registry.url(), ABUSE_IDENTITY).await)
        .max_decoding_message_size(64 << 20)
}

/// Registers `count` instances; returns how many were admitted.
async fn register_many(client: &RegistryClient<Channel>, count: usize, plain: bool) -> usize {
    let tasks = (0..16).map(|worker| {
        let mut client = client.clone();
        async move {
            let mut admitted = 0;
            for n in (worker..count).step_by(16) {
                let mut instance = max_instance(n);
                if plain {
                    instance.labels.clear();
                    instance.address = format!("https://10.0.{}.{}:7200", n / 250, n % 250);
                }
                if client
                    .register(RegisterRequest {
                        instance: Some(instance),
                    })
                    .await
                    .is_ok()
                {
                    admitted += 1;
                }
            }
            admitted
        }
    });
    join_all(tasks).await.into_iter().sum()
}

/// Time to a fresh watcher's whole snapshot (the last of its parts), and its size.
async fn snapshot(registry: &Proc, service: &str) -> (Duration, usize, String) {
    let mut client = RegistryClient::new(tls::channel(&registry.url()).await)
        .max_decoding_message_size(64 << 20);
    let started = Instant::now();
    let whole = async {
        let mut stream = client
            .watch(WatchRequest {
                service: service.into(),
            })
            .await?
            .into_inner();
        let (mut bytes, mut instances, mut parts) = (0, 0, 0);
        while let Some(part) = stream.message().await? {
            bytes += part.encoded_len();
            instances += part.instances.len();
            parts += 1;
            if !part.more {
                return Ok(Some((bytes, instances, parts)));
            }
        }
        Ok::<_, tonic::Status>(None)
    }
    .await;
    match whole {
        Ok(Some((bytes, instances, parts))) => (
            started.elapsed(),
            bytes,
            format!("{instances} instances in {parts} parts"),
        ),
        other => (started.elapsed(), 0, format!("{other:?}")),
    }
}

pub async fn run() {
    println!("abuse figures (issue 10); each scenario on fresh processes\n");
    println!("| scenario | after |");
    println!("| --- | --- |");
    snapshots().await;
    unread_watchers().await;
    registrations().await;
    made_up_watches().await;
    idle_connections().await;
    stream_flood().await;
    logins().await;
    list_cpu().await;
}

async fn snapshots() {
    let (registry, _) = registry().await;
    let client = abuser(&registry).await;
    let admitted = register_many(&client, 500, false).await;
    let (took, size, what) = snapshot(&registry, ABUSE_SERVICE).await;
    row(
        "500 max-label registrations, then a new watcher's snapshot",
        format!(
            "{admitted} admitted; snapshot {:.2} MB ({what}) in {}",
            size as f64 / 1e6,
            ms(took)
        ),
    );
    let admitted = register_many(&client, 1100, false).await;
    let (took, size, what) = snapshot(&registry, ABUSE_SERVICE).await;
    row(
        "1,100 max-label registrations (limit 1,000 per service), then a new watcher's snapshot",
        format!(
            "{} more admitted; snapshot {:.2} MB ({what}) in {}",
            admitted - 500.min(admitted),
            size as f64 / 1e6,
            ms(took)
        ),
    );
}

async fn registrations() {
    let (registry, pid) = registry().await;
    let before = rss_kib(pid).unwrap_or(0);
    let client = abuser(&registry).await;
    let started = Instant::now();
    let admitted = register_many(&client, 20_000, false).await;
    let took = started.elapsed();
    let after = rss_kib(pid).unwrap_or(0);
    let mut lists = Vec::new();
    for _ in 0..8 {
        let mut client = client.clone();
        lists.push(tokio::spawn(async move {
            client
                .list_instances(ListInstancesRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().encoded_len())
        }));
    }
    let sizes: Vec<_> = join_all(lists)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let after_lists = rss_kib(pid).unwrap_or(0);
    row(
        "20,000 max-label registrations attempted (one certificate, one service)",
        format!(
            "{admitted} admitted in {:.1} s; RSS {} → {}; 8 concurrent ListInstances (all, {:.1} MB each): {}",
            took.as_secs_f64(),
            mib(before),
            mib(after),
            sizes
                .first()
                .and_then(|s| s.as_ref().ok())
                .map_or(0.0, |s| *s as f64 / 1e6),
            mib(after_lists)
        ),
    );
}

async fn made_up_watches() {
    let (registry, pid) = registry().await;
    let before = rss_kib(pid).unwrap_or(0);
    let mut held = Vec::new();
    let (mut ok, mut refused, mut other) = (0, 0, 0);
    // 256 streams per connection at most, so 80 connections of 250.
    for conn in 0..80 {
        let channel = tls::channel(&registry.url()).await;
        let opened = (0..250).map(|n| {
            let mut client = RegistryClient::new(channel.clone());
            async move {
                let mut stream = client
                    .watch(WatchRequest {
                        service: format!("made-up-{conn}-{n}"),
                    })
                    .await?
                    .into_inner();
                let first = stream.message().await?;
                Ok::<_, tonic::Status>((stream, first))
            }
        });
        for result in join_all(opened).await {
            match result {
                Ok((stream, Some(_))) => {
                    ok += 1;
                    held.push(stream);
                }
                Err(status) if status.code() == tonic::Code::ResourceExhausted => refused += 1,
                _ => other += 1,
            }
        }
    }
    let holding = rss_kib(pid).unwrap_or(0);
    drop(held);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = rss_kib(pid).unwrap_or(0);
    // Are the made-up names forgotten once nobody watches them?
    let (_, _, fresh) = snapshot(&registry, "a-name-after-the-flood").await;
    row(
        "20,000 Watch calls on made-up service names",
        format!(
            "{ok} answered with a snapshot, {refused} RESOURCE_EXHAUSTED, {other} other; RSS {} → {} while held, {} 10 s after they close; a new name's Watch then: {fresh}",
            mib(before),
            mib(holding),
            mib(after)
        ),
    );
}

/// A health check on `channel`, timed.
async fn health(channel: Channel) -> Result<Duration, String> {
    let started = Instant::now();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| format!("{:?}", s.code()))?;
    Ok(started.elapsed())
}

async fn idle_connections() {
    let (registry, pid) = registry().await;
    let existing = tls::channel(&registry.url()).await;
    let quiet = health(existing.clone()).await;
    let want = 8_000usize;
    let opened: Vec<_> = join_all((0..want).map(|_| async {
        tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(registry.addr))
            .await
            .ok()
            .and_then(Result::ok)
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before = cpu_ticks(pid);
    let loaded = health(existing.clone()).await;
    let started = Instant::now();
    let new_connection = match tls::transport_as(&registry.url(), Some(ABUSE_IDENTITY))
        .channel(&registry.url(), None)
        .await
    {
        Ok(channel) => {
            let mut client = RegistryClient::new(channel);
            match client
                .register(RegisterRequest {
                    instance: Some(max_instance(0)),
                })
                .await
            {
                Ok(_) => format!("a new connection + Register took {}", ms(started.elapsed())),
                Err(s) => format!("Register on a new connection failed: {:?}", s.code()),
            }
        }
        Err(err) => format!(
            "a new connection failed after {}: {err}",
            ms(started.elapsed())
        ),
    };
    let cpu = cpu_ticks(pid) - cpu_before;
    let spent = started.elapsed();
    row(
        &format!(
            "{want} idle connections that never send (fd limit here 20k; server cap 4,096, 256 openings at once)"
        ),
        format!(
            "{} connected; health check on an existing connection {:?} quiet, {:?} under the flood; {new_connection}; registry CPU meanwhile {:.0} %",
            opened.len(),
            quiet.map(ms),
            loaded.map(ms),
            cpu as f64 / 100.0 / spent.as_secs_f64() * 100.0
        ),
    );
    drop(opened);
}

/// Event latency of a normal watcher: 20 register/deregister pairs, each timed to its event.
async fn watcher_latency(
    registry: &Proc,
    writer: &mut RegistryClient<Channel>,
) -> (Duration, Duration) {
    let mut watch = RegistryClient::new(tls::channel(&registry.url()).await)
        .watch(WatchRequest {
            service: ABUSE_SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap();
    let mut took = Vec::new();
    for n in 0..20 {
        let mut instance = max_instance(n);
        instance.labels.clear();
        let started = Instant::now();
        writer
            .register(RegisterRequest {
                instance: Some(instance),
            })
            .await
            .unwrap();
        watch.message().await.unwrap();
        took.push(started.elapsed());
        writer
            .deregister(DeregisterRequest {
                service: ABUSE_SERVICE.into(),
                instance_id: format!("abuse-{n}"),
            })
            .await
            .unwrap();
        watch.message().await.unwrap();
    }
    took.sort();
    (took[took.len() / 2], took[took.len() - 1])
}

async fn stream_flood() {
    let (registry, _) = registry().await;
    let mut writer = abuser(&registry).await;
    let quiet = watcher_latency(&registry, &mut writer).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..8 {
        let channel = tls::channel(&registry.url()).await;
        for _ in 0..1000 {
            let (channel, stop, opened) = (channel.clone(), stop.clone(), opened.clone());
            tokio::spawn(async move {
                let Ok(watch) = RegistryClient::new(channel)
                    .watch(WatchRequest {
                        service: "college".into(),
                    })
                    .await
                else {
                    return;
                };
                opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut stream = watch.into_inner();
                tokio::select! {
                    () = stop.cancelled() => {}
                    _ = async { while let Ok(Some(_)) = stream.message().await {} } => {}
                }
            });
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let flooded = watcher_latency(&registry, &mut writer).await;
    row(
        "8,000 Watch streams asked for on 8 connections, then a normal watcher's event latency",
        format!(
            "{} streams open (256 per connection at most); median / max {} / {} quiet, {} / {} under the flood",
            opened.load(std::sync::atomic::Ordering::Relaxed),
            ms(quiet.0),
            ms(quiet.1),
            ms(flooded.0),
            ms(flooded.1)
        ),
    );
    stop.cancel();
}

async fn college(registry: &Proc, db: &TestDb) -> (Proc, u32, CollegeClient<Channel>) {
    let dir = tls_dir().to_str().unwrap().to_owned();
    let college = Proc::member(
        "college",
        &registry.url(),
        &["--tls-dir", &dir, "--database-url", &db.url],
    )
    .await;
    let pid = college.child.id().unwrap();
    let client = CollegeClient::new(tls::channel(&college.url()).await);
    (college, pid, client)
}

async fn sign_up(client: &mut CollegeClient<Channel>, email: &str) {
    crate::support::sign_up(client, "Ada", email, "correct horse battery staple").await;
}

async fn logins() {
    let (registry, _) = registry().await;
    let db = TestDb::create().await;

    // 128 concurrent wrong-password logins.
    let (_college, pid, mut client) = college(&registry, &db).await;
    let victim = format!("victim-{}@university.edu", uuid::Uuid::new_v4().simple());
    sign_up(&mut client, &victim).await;
    let before = rss_kib(pid).unwrap_or(0);
    let sampling = tokio::spawn(async move {
        let mut peak = 0;
        for _ in 0..100 {
            peak = peak.max(rss_kib(pid).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    });
    let started = Instant::now();
    let answers = join_all((0..128).map(|n| {
        let mut client = client.clone();
        let email = if n % 2 == 0 {
            victim.clone()
        } else {
            format!("nobody-{n}@example.org")
        };
        async move {
            match client
                .login(LoginRequest {
                    email,
                    password: format!("wrong guess {n}"),
                })
                .await
            {
                Ok(_) => "OK".to_owned(),
                Err(s) => format!("{:?}", s.code()),
            }
        }
    }))
    .await;
    let took = started.elapsed();
    let peak = sampling.await.unwrap();
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for a in answers {
        *codes.entry(a).or_default() += 1;
    }
    tokio::time::sleep(Duration::from_secs(15)).await;
    let later = rss_kib(pid).unwrap_or(0);
    row(
        "128 concurrent wrong-password logins (half one account, half unknown emails)",
        format!(
            "answered in {} ({codes:?}); RSS {} → peak {} → {} 15 s later",
            ms(took),
            mib(before),
            mib(peak),
            mib(later)
        ),
    );

    // Timing, on a college of its own (fresh rate limits).
    let (_college, _, mut client) = college(&registry, &db).await;
    let mut known = Vec::new();
    for n in 0..10 {
        let email = format!("known-{n}-{}@university.edu", uuid::Uuid::new_v4().simple());
        sign_up(&mut client, &email).await;
        known.push(email);
    }
    let time = |email: String| {
        let mut client = client.clone();
        async move {
            let started = Instant::now();
            let _ = client
                .login(LoginRequest {
                    email,
                    password: "a wrong password".into(),
                })
                .await;
            started.elapsed()
        }
    };
    let (mut k, mut u) = (Vec::new(), Vec::new());
    for (n, email) in known.into_iter().enumerate() {
        k.push(time(email).await);
        u.push(time(format!("unknown-{n}@example.org")).await);
    }
    k.sort();
    u.sort();
    row(
        "wrong password, known vs unknown email (10 each, alternating)",
        format!(
            "median {} known, {} unknown (min {} / {})",
            ms(k[5]),
            ms(u[5]),
            ms(k[0]),
            ms(u[0])
        ),
    );
}

async fn list_cpu() {
    for plain in [true, false] {
        let (registry, pid) = registry().await;
        let client = abuser(&registry).await;
        let admitted = register_many(&client, 1000, plain).await;
        let mut lister = RegistryClient::new(tls::channel(&registry.url()).await)
            .max_decoding_message_size(64 << 20);
        let mut size = 0;
        let calls = 200;
        let before = cpu_ticks(pid);
        for _ in 0..calls {
            size = lister
                .list_instances(ListInstancesRequest {
                    service: ABUSE_SERVICE.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .encoded_len();
        }
        let ticks = cpu_ticks(pid) - before;
        row(
            &format!(
                "ListInstances of a {admitted}-instance service ({})",
                if plain {
                    "no labels"
                } else {
                    "labels at their limits"
                }
            ),
            format!(
                "{:.2} ms of registry CPU per call ({calls} calls), reply {:.2} MB",
                ticks as f64 * 10.0 / calls as f64,
                size as f64 / 1e6
            ),
        );
    }
}

/// Watchers that never read, of a service at its limits: what each costs the registry.
async fn unread_watchers() {
    let (registry, pid) = registry().await;
    let client = abuser(&registry).await;
    register_many(&client, 1000, false).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid).unwrap_or(0);
    let mut held = Vec::new();
    let (connections, per_connection) = (64, 4);
    for _ in 0..connections {
        let channel = tls::channel(&registry.url()).await;
        for _ in 0..per_connection {
            if let Ok(watch) = RegistryClient::new(channel.clone())
                .watch(WatchRequest {
                    service: ABUSE_SERVICE.into(),
                })
                .await
            {
                held.push(watch.into_inner());
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let holding = rss_kib(pid).unwrap_or(0);
    let watchers = held.len();
    drop(held);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rss_kib(pid).unwrap_or(0);
    row(
        &format!(
            "{watchers} Watch streams that never read, of a 1,000-instance service at its limits ({connections} connections)"
        ),
        format!(
            "RSS {} → {} while held ({:.1} MiB per watcher), {} 5 s after they close",
            mib(before),
            mib(holding),
            (holding.saturating_sub(before)) as f64 / 1024.0 / watchers.max(1) as f64,
            mib(after)
        ),
    );
}
