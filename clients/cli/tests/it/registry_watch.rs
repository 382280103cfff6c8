//! The registry's Watch snapshots of big services: they come in parts that a
//! balancer applies whole, and watchers that never read cannot make the
//! registry (the real binary) hold a copy of the service each, even when
//! each watches a revision of its own.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use grantmesh_discovery::{Balancer, BalancerOptions};
use grantmesh_proto::RegistryClient;
use grantmesh_proto::v1::{
    Instance, ListInstancesRequest, RegisterRequest, WatchRequest, watch_event::Kind,
};
use prost::Message as _;
use tonic::transport::Channel;

use crate::support::{Proc, sandbox, tls};

/// Registry labels at their limits: 16 labels, 64-byte keys, 128-byte values.
fn max_labels() -> HashMap<String, String> {
    (0..16)
        .map(|n| (format!("{n:0>64}"), "v".repeat(128)))
        .collect()
}

/// Instance `n` of `college` at the registry's size limits (~3.5 KB).
fn max_instance(n: usize) -> Instance {
    Instance {
        id: format!("college-{n:0>120}"),
        service: "college".into(),
        address: format!("https://{}:9", "a".repeat(256 - "https://:9".len())),
        labels: max_labels(),
        ttl: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        ..Instance::default()
    }
}

/// Registers `count` instances at the size limits, 16 at a time.
async fn register_many(client: &RegistryClient<Channel>, count: usize) {
    join_all((0..16).map(|worker| {
        let mut client = client.clone();
        async move {
            for n in (worker..count).step_by(16) {
                client
                    .register(RegisterRequest {
                        instance: Some(max_instance(n)),
                    })
                    .await
                    .expect("Register");
            }
        }
    }))
    .await;
}

#[tokio::test]
async fn a_big_snapshot_arrives_in_parts_and_a_balancer_sees_it_whole() {
    let count = 300;
    // One writer's certificate (`college/college`) holds all of them.
    let registry = sandbox::registry_holding("registry-parts", count).await;
    let writer = RegistryClient::new(tls::channel_as(&registry.url, "college/college").await);
    register_many(&writer, count).await;

    let mut parts = Vec::new();
    let mut stream = RegistryClient::new(tls::channel(&registry.url).await)
        .watch(WatchRequest {
            service: "college".into(),
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let part = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the next part within 10 s")
            .unwrap()
            .expect("a part");
        let last = !part.more;
        parts.push(part);
        if last {
            break;
        }
    }
    assert!(parts.len() > 10, "{} parts for ~1 MB", parts.len());
    let revision = parts[0].revision;
    for part in &parts {
        assert_eq!(part.kind(), Kind::Snapshot);
        assert_eq!(part.revision, revision, "one snapshot, one revision");
        assert!(
            part.encoded_len() <= 17 * 1024,
            "{} bytes",
            part.encoded_len()
        );
    }
    let mut ids: Vec<String> = parts
        .iter()
        .flat_map(|p| p.instances.iter().map(|i| i.id.clone()))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "the parts' union is the live set");

    // A balancer's view goes from nothing to everything, never through a part.
    let balancer = Balancer::new(
        vec![registry.url.clone()],
        "college",
        BalancerOptions {
            transport: tls::transport(&registry.url),
            ..BalancerOptions::default()
        },
    );
    let mut views = balancer.subscribe();
    let mut seen = Vec::new();
    let whole = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let size = views.borrow_and_update().instances.len();
            seen.push(size);
            if size == count {
                return;
            }
            views.changed().await.unwrap();
        }
    })
    .await;
    assert!(
        whole.is_ok(),
        "the balancer never saw all {count}: {seen:?}"
    );
    assert!(
        seen.iter().all(|&size| size == 0 || size == count),
        "views of a partial set were published: {seen:?}"
    );
}

/// The resident set of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// The RSS once it has stopped moving: sampled every 250 ms until four
/// samples in a row agree within 1 MiB, at most 15 s.
async fn settled_rss_kib(pid: u32) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut samples = vec![rss_kib(pid)];
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        samples.push(rss_kib(pid));
        let last = &samples[samples.len().saturating_sub(4)..];
        if last.len() == 4 && last.iter().max().unwrap() - last.iter().min().unwrap() < 1024 {
            break;
        }
    }
    *samples.last().unwrap()
}

#[tokio::test]
async fn watchers_that_never_read_a_full_service_cost_the_registry_far_less_than_its_snapshots() {
    // Plaintext: anyone may register, and the bytes held per stream are the same.
    let registry = Proc::registry(&[]).await;
    let pid = registry.child.id().unwrap();
    let connect = || async {
        RegistryClient::new(
            Channel::from_shared(registry.url())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    };
    let writer = connect().await;
    register_many(&writer, 1000).await;
    let snapshot_bytes = writer
        .clone()
        .list_instances(ListInstancesRequest {
            service: "college".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .encoded_len() as u64;
    assert!(snapshot_bytes > 3_000_000, "{snapshot_bytes} bytes");

    let before = settled_rss_kib(pid).await;
    let (connections, per_connection) = (16, 4);
    let mut held = Vec::new();
    for _ in 0..connections {
        let client = connect().await;
        for _ in 0..per_connection {
            // The service changes before each watcher opens, so each
            // snapshot is of a revision of its own (as under churn).
            let n = held.len();
            let mut changed = max_instance(n);
            changed.ttl = Some(prost_types::Duration {
                seconds: 3000 + n as i64,
                nanos: 0,
            });
            writer
                .clone()
                .register(RegisterRequest {
                    instance: Some(changed),
                })
                .await
                .unwrap();
            let stream = client
                .clone()
                .watch(WatchRequest {
                    service: "college".into(),
                })
                .await
                .unwrap()
                .into_inner();
            held.push(stream);
        }
    }
    let holding = settled_rss_kib(pid).await;
    let watchers = held.len() as u64;
    let grown = holding.saturating_sub(before);
    // A copy each would be 64 × 3.5 MB = 213 MiB; allow an eighth of it.
    let allowed = watchers * snapshot_bytes / 1024 / 8;
    eprintln!(
        "registry RSS {before} → {holding} KiB with {watchers} unread watchers: \
         {grown} KiB, {} KiB per watcher (snapshot {snapshot_bytes} bytes, allowed {allowed} KiB)",
        grown / watchers
    );
    assert!(
        grown < allowed,
        "{watchers} unread watchers grew the registry by {grown} KiB, over {allowed} KiB"
    );
    drop(held);
}
