//! The client side of discovery, in one process: a real registry and real
//! College servers on loopback sockets, and a [`Balancer`] following them.
//! Registration is done by hand here so that an instance can leave the
//! registry while it is still alive and answering — the only way to see
//! whether a client still sends it calls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::assert_eventually;
use crate::support::{sandbox, tls};
use grantmesh_discovery::{Balancer, BalancerOptions};
use grantmesh_node::Node;
use grantmesh_proto::v1::{DeregisterRequest, Instance, PingRequest, RegisterRequest};
use grantmesh_proto::{CollegeClient, RegistryClient};
use tokio::time::Instant;
use tonic::Code;

async fn start_registry() -> Node {
    sandbox::registry("registry-test", Duration::from_secs(60), Duration::ZERO).await
}

/// A College that keeps itself registered with a side registry of its own,
/// which this test does not watch, so that the test alone decides when it
/// is listed in the registry under test. (The side registry serves until
/// the test's runtime ends.)
async fn start_college(id: &str) -> Node {
    let side = sandbox::registry("registry-side", Duration::from_secs(60), Duration::ZERO).await;
    sandbox::college(
        &crate::support::shared_database().await,
        id,
        sandbox::DAY,
        &[&side.url],
    )
    .await
}

/// Registers `server` by hand, as a college would (with the certificate of
/// college instance `id`).
async fn register(registry: &Node, id: &str, server: &Node) {
    let mut client = RegistryClient::new(tls::channel_as(&registry.url, &tls::college(id)).await);
    let instance = Instance {
        id: id.into(),
        service: "college".into(),
        address: server.url.clone(),
        ..Default::default()
    };
    client
        .register(RegisterRequest {
            instance: Some(instance),
        })
        .await
        .unwrap();
}

async fn deregister(registry: &Node, id: &str) {
    let mut client = RegistryClient::new(tls::channel_as(&registry.url, &tls::college(id)).await);
    let reply = client
        .deregister(DeregisterRequest {
            service: "college".into(),
            instance_id: id.into(),
        })
        .await
        .unwrap();
    assert!(reply.into_inner().removed);
}

async fn ping(balancer: &Balancer) -> Result<String, tonic::Status> {
    balancer
        .call(|channel| async move {
            CollegeClient::new(channel)
                .ping(PingRequest::default())
                .await
        })
        .await
        .map(|reply| reply.into_inner().instance_id)
}

#[tokio::test]
async fn no_call_that_starts_after_a_removal_reaches_the_removed_instance() {
    let registry = start_registry().await;
    let a = start_college("college-a").await;
    let b = start_college("college-b").await;
    register(&registry, "college-a", &a).await;
    register(&registry, "college-b", &b).await;
    let balancer = Balancer::new(
        vec![registry.url.clone()],
        "college",
        BalancerOptions {
            transport: tls::transport(&registry.url),
            ..BalancerOptions::default()
        },
    );
    assert_eventually(Duration::from_secs(5), "both colleges seen", || async {
        balancer.view().instances.len() == 2
    })
    .await;

    // Note the moment the client has applied b's removal.
    let removal_seen = Arc::new(Mutex::new(None::<Instant>));
    let mut changes = balancer.subscribe();
    let seen = Arc::clone(&removal_seen);
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            if !changes.borrow().contains("college-b") {
                *seen.lock().unwrap() = Some(Instant::now());
                return;
            }
        }
    });

    // Eight callers, half through `Balancer::call` and half through the
    // balancer used as a plain tower service by a generated client, each
    // noting when every call started and who answered it.
    let stop = Instant::now() + Duration::from_millis(1_500);
    let mut callers = Vec::new();
    for n in 0..8 {
        let balancer = balancer.clone();
        callers.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            let mut client = CollegeClient::new(balancer.clone());
            while Instant::now() < stop {
                let started = Instant::now();
                let answered_by = if n % 2 == 0 {
                    ping(&balancer).await.unwrap()
                } else {
                    client
                        .ping(PingRequest::default())
                        .await
                        .unwrap()
                        .into_inner()
                        .instance_id
                };
                calls.push((started, answered_by));
            }
            calls
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    deregister(&registry, "college-b").await;

    let mut calls = Vec::new();
    for caller in callers {
        calls.extend(caller.await.unwrap());
    }
    let removal_seen = removal_seen
        .lock()
        .unwrap()
        .expect("the client saw the removal");
    let before = calls
        .iter()
        .filter(|(started, by)| *started < removal_seen && by == "college-b")
        .count();
    let after: Vec<_> = calls
        .iter()
        .filter(|(started, by)| *started > removal_seen && by == "college-b")
        .collect();
    let total_after = calls
        .iter()
        .filter(|(started, _)| *started > removal_seen)
        .count();
    assert!(before > 0, "college-b served calls before it was removed");
    assert!(
        total_after > 100,
        "enough calls ran after the removal ({total_after})"
    );
    assert!(
        after.is_empty(),
        "{} of {total_after} calls started after the removal still went to college-b",
        after.len()
    );

    // college-b is still alive and answering: it was only ever the balancer
    // that kept calls away from it.
    let mut direct = CollegeClient::new(tls::channel(&b.url).await);
    assert_eq!(
        direct
            .ping(PingRequest::default())
            .await
            .unwrap()
            .into_inner()
            .instance_id,
        "college-b"
    );
}

#[tokio::test]
async fn the_last_known_instances_are_kept_while_no_registry_answers() {
    let registry = start_registry().await;
    let a = start_college("college-a").await;
    register(&registry, "college-a", &a).await;
    let balancer = Balancer::new(
        vec![registry.url.clone()],
        "college",
        BalancerOptions {
            transport: tls::transport(&registry.url),
            ..BalancerOptions::default()
        },
    );
    assert_eventually(Duration::from_secs(5), "college seen", || async {
        balancer.view().instances.len() == 1
    })
    .await;

    registry.stop().await.unwrap();
    assert_eventually(
        Duration::from_secs(5),
        "the client notices the registry is gone",
        || async { !balancer.view().connected },
    )
    .await;
    assert_eq!(balancer.view().instances.len(), 1);
    assert_eq!(ping(&balancer).await.unwrap(), "college-a");
}

#[tokio::test]
async fn a_call_with_no_live_instance_fails_unavailable_naming_the_service() {
    let registry = start_registry().await;
    let options = BalancerOptions {
        wait_for_instances: Duration::from_millis(200),
        transport: tls::transport(&registry.url),
        ..BalancerOptions::default()
    };
    let balancer = Balancer::new(vec![registry.url.clone()], "college", options);
    let status = ping(&balancer).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("\"college\""),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_call_to_a_dead_instance_is_retried_on_a_live_one() {
    let registry = start_registry().await;
    let live = start_college("college-live").await;
    register(&registry, "college-live", &live).await;
    // Registered, but nothing listens at its address any more.
    let dead = start_college("college-dead").await;
    register(&registry, "college-dead", &dead).await;
    dead.stop().await.unwrap();
    let balancer = Balancer::new(
        vec![registry.url.clone()],
        "college",
        BalancerOptions {
            transport: tls::transport(&registry.url),
            ..BalancerOptions::default()
        },
    );
    assert_eventually(Duration::from_secs(5), "both seen", || async {
        balancer.view().instances.len() == 2
    })
    .await;

    for _ in 0..50 {
        assert_eq!(ping(&balancer).await.unwrap(), "college-live");
    }
}

#[tokio::test]
async fn a_fresh_registry_holds_its_first_snapshot_until_the_mesh_has_registered_again() {
    // The college is up before the registry, so that its registration
    // surely lands inside the warm-up even on a loaded machine.
    let college = start_college("college-w").await;
    let started = Instant::now();
    let registry = sandbox::registry(
        "registry-warm",
        Duration::from_secs(60),
        Duration::from_secs(3),
    )
    .await;
    let mut client = RegistryClient::new(tls::channel(&registry.url).await);
    let mut events = client
        .watch(grantmesh_proto::v1::WatchRequest {
            service: "college".into(),
        })
        .await
        .unwrap()
        .into_inner();

    // An instance registers again while the registry is warming up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    register(&registry, "college-w", &college).await;

    let first = events.message().await.unwrap().expect("a snapshot");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the snapshot waited for the warm-up"
    );
    assert_eq!(
        first.kind(),
        grantmesh_proto::v1::watch_event::Kind::Snapshot
    );
    assert_eq!(
        first.instances.len(),
        1,
        "the snapshot already holds the re-registered instance"
    );
}
