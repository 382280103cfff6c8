//! The mesh as its operators see it: real `grantmesh` processes on real
//! sockets, stopped, killed and restarted with real signals.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;
use grantmesh_discovery::{Balancer, BalancerOptions};
use grantmesh_proto::CollegeClient;
use grantmesh_proto::v1::PingRequest;
use grantmesh_proto::v1::watch_event::Kind;
use nix::sys::signal::Signal;
use tokio::time::Instant;
use tonic::Code;

#[tokio::test]
async fn instances_register_and_are_listed_and_watched() {
    let registry = Proc::registry(&[]).await;
    let _c1 = Proc::member("college", &registry.url(), &["--instance-id", "college-a"]).await;
    let _c2 = Proc::member("college", &registry.url(), &["--instance-id", "college-b"]).await;
    let agency = Proc::member("agency", &registry.url(), &["--instance-id", "agency-a"]).await;

    assert_eventually(
        Duration::from_secs(5),
        "both colleges and the agency listed",
        || async {
            ids(&registry.url(), "college").await == ["college-a", "college-b"]
                && ids(&registry.url(), "agency").await == ["agency-a"]
        },
    )
    .await;
    let agencies = list(&registry.url(), "agency").await;
    assert_eq!(agencies.len(), 1);
    assert_eq!(
        agencies[0].address,
        agency.url(),
        "the advertised address is what clients dial"
    );
    assert_eq!(
        list(&registry.url(), "").await.len(),
        3,
        "an empty service lists every service"
    );

    let mut events = watch(&registry.url(), "college").await;
    let (_, snapshot) = next_event(&mut events, Duration::from_secs(2), |e| {
        e.kind() == Kind::Snapshot
    })
    .await
    .expect("a snapshot first");
    let mut snapshot_ids: Vec<_> = snapshot.instances.iter().map(|i| i.id.as_str()).collect();
    snapshot_ids.sort();
    assert_eq!(snapshot_ids, ["college-a", "college-b"]);

    let _c3 = Proc::member("college", &registry.url(), &["--instance-id", "college-c"]).await;
    let (_, put) = next_event(&mut events, Duration::from_secs(3), is_put_of("college-c"))
        .await
        .expect("the new college is announced");
    assert!(put.revision > snapshot.revision);

    // The operator's table names every instance with its address.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_grantmesh"))
        .args(["instances", "--registry", &registry.url()])
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(
        table.contains("agency-a") && table.contains(&agency.url()),
        "{table}"
    );
    assert!(table.contains("college-c"), "{table}");
}

#[tokio::test]
async fn a_killed_instance_is_removed_at_once_not_after_its_ttl() {
    let registry = Proc::registry(&[]).await;
    let college = Proc::member(
        "college",
        &registry.url(),
        &["--instance-id", "college-k", "--ttl", "10s"],
    )
    .await;
    let mut events = watch_once_streaming(&registry, "college-k").await;

    let killed_at = Instant::now();
    college.signal(Signal::SIGKILL);
    let (seen_at, event) = next_event(
        &mut events,
        Duration::from_secs(5),
        is_delete_of("college-k"),
    )
    .await
    .expect("the killed college is removed");
    assert!(
        seen_at - killed_at < Duration::from_secs(2),
        "removed after {:?}, TTL is 10 s",
        seen_at - killed_at
    );
    assert_eq!(event.reason, "keepalive stream closed");
}

/// A clean stop deregisters before the instance's keep-alive stream
/// closes, so the registry (its watchers, its removal metrics) sees a
/// departure, not a lost stream.
#[tokio::test]
async fn an_instance_stopped_with_sigterm_is_removed_as_deregistered() {
    let registry = Proc::registry(&[]).await;
    let college = Proc::member("college", &registry.url(), &["--instance-id", "college-s"]).await;
    let mut events = watch_once_streaming(&registry, "college-s").await;

    college.signal(Signal::SIGTERM);
    let (_, event) = next_event(
        &mut events,
        Duration::from_secs(10),
        is_delete_of("college-s"),
    )
    .await
    .expect("the stopped college is removed");
    assert_eq!(event.reason, "deregistered");
    assert_eq!(college.wait(Duration::from_secs(15)).await, Some(0));
}

#[tokio::test]
async fn a_stopped_instance_is_removed_after_its_ttl_and_returns_when_continued() {
    let registry = Proc::registry(&[]).await;
    let college = Proc::member("college", &registry.url(), &["--instance-id", "college-s"]).await;
    assert_eventually(Duration::from_secs(5), "college registered", || async {
        ids(&registry.url(), "college").await == ["college-s"]
    })
    .await;
    let mut events = watch(&registry.url(), "college").await;

    let stopped_at = Instant::now();
    college.signal(Signal::SIGSTOP);
    let (seen_at, event) = next_event(
        &mut events,
        Duration::from_secs(8),
        is_delete_of("college-s"),
    )
    .await
    .expect("the stopped college expires");
    let after = seen_at - stopped_at;
    assert_eq!(event.reason, "ttl expired");
    // The default TTL is 3 s, counted from the last beat before the stop.
    assert!(
        after > Duration::from_secs(2) && after < Duration::from_millis(4_500),
        "expired after {after:?}"
    );

    college.signal(Signal::SIGCONT);
    next_event(&mut events, Duration::from_secs(3), is_put_of("college-s"))
        .await
        .expect("the continued college registers again");
}

#[tokio::test]
async fn a_late_heartbeat_does_not_make_the_instance_flap() {
    let registry = Proc::registry(&[]).await;
    let college = Proc::member("college", &registry.url(), &["--instance-id", "college-l"]).await;
    assert_eventually(Duration::from_secs(5), "college registered", || async {
        ids(&registry.url(), "college").await == ["college-l"]
    })
    .await;
    let mut events = watch(&registry.url(), "college").await;
    next_event(&mut events, Duration::from_secs(2), |e| {
        e.kind() == Kind::Snapshot
    })
    .await
    .unwrap();

    // Beats are due every second; this holds one back by about 1.8 s, well
    // inside the 3 s TTL.
    college.signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    college.signal(Signal::SIGCONT);

    let flap = next_event(&mut events, Duration::from_secs(3), |_| true).await;
    assert!(flap.is_none(), "no change may be published, got {flap:?}");
    assert_eq!(ids(&registry.url(), "college").await, ["college-l"]);
}

#[tokio::test]
async fn a_restarted_registry_relearns_the_mesh_within_a_heartbeat_interval() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let registry = Proc::start("registry", &["registry", "--listen", &listen]).await;
    let url = registry.url();
    let _college = Proc::member("college", &url, &["--instance-id", "college-r"]).await;
    let _agency = Proc::member("agency", &url, &["--instance-id", "agency-r"]).await;
    assert_eventually(Duration::from_secs(5), "both registered", || async {
        list(&url, "").await.len() == 2
    })
    .await;

    registry.signal(Signal::SIGKILL);
    registry.wait(Duration::from_secs(5)).await;
    let registry = Proc::start("registry", &["registry", "--listen", &listen]).await;
    let back_at = Instant::now();
    assert_eventually(
        Duration::from_secs(1),
        "the whole mesh re-registered within one heartbeat interval",
        || async { list(&url, "").await.len() == 2 },
    )
    .await;
    eprintln!(
        "mesh relearned {:?} after the registry came back",
        back_at.elapsed()
    );
    drop(registry);
}

#[tokio::test]
async fn two_registry_replicas_give_the_same_answers() {
    let r1 = Proc::registry(&[]).await;
    let r2 = Proc::registry(&[]).await;
    let both = format!("{},{}", r1.url(), r2.url());
    let _c1 = Proc::member("college", &both, &["--instance-id", "college-1"]).await;
    let _c2 = Proc::member("college", &both, &["--instance-id", "college-2"]).await;
    let _a1 = Proc::member("agency", &both, &["--instance-id", "agency-1"]).await;
    assert_eventually(
        Duration::from_secs(5),
        "three instances on the first replica",
        || async { list(&r1.url(), "").await.len() == 3 },
    )
    .await;
    assert_eventually(Duration::from_secs(5), "both replicas agree", || async {
        let strip = |instances: Vec<grantmesh_proto::v1::Instance>| {
            instances
                .into_iter()
                .map(|i| (i.service, i.id, i.address))
                .collect::<Vec<_>>()
        };
        strip(list(&r1.url(), "").await) == strip(list(&r2.url(), "").await)
    })
    .await;

    // A client following both replicas keeps working when one dies.
    let balancer = Balancer::new(
        vec![r1.url(), r2.url()],
        "college",
        BalancerOptions::default(),
    );
    r1.signal(Signal::SIGKILL);
    for _ in 0..20 {
        balancer
            .call(|ch| async move { CollegeClient::new(ch).ping(PingRequest::default()).await })
            .await
            .expect("ping through the surviving replica's view");
    }
}

#[tokio::test]
async fn sigterm_drains_an_instance_without_failing_in_flight_calls() {
    let (registry, leaving, _staying, balancer) =
        two_colleges("college-leaving", "college-staying").await;

    // A slow call already running on the instance that is about to leave.
    let mut direct = CollegeClient::connect(leaving.url()).await.unwrap();
    let slow = tokio::spawn(async move {
        direct
            .ping(PingRequest {
                message: "slow".into(),
                delay_ms: 1_000,
            })
            .await
    });
    // And a steady stream of calls through the mesh.
    let load = PingLoad::start(&balancer, 4, Duration::from_secs(3), 20);
    tokio::time::sleep(Duration::from_millis(300)).await;
    leaving.signal(Signal::SIGTERM);

    let slow = slow
        .await
        .unwrap()
        .expect("the in-flight call finishes during the drain");
    assert_eq!(slow.into_inner().instance_id, "college-leaving");
    let (calls, failures) = load.finish().await;
    assert_eq!(
        leaving.wait(Duration::from_secs(15)).await,
        Some(0),
        "a drained instance exits 0"
    );
    assert_eq!(failures, 0, "of {calls} calls");
    assert_eq!(ids(&registry.url(), "college").await, ["college-staying"]);
}

#[tokio::test]
async fn a_client_pinging_in_a_loop_sees_no_failure_when_one_of_two_colleges_is_killed() {
    let (_registry, victim, _survivor, balancer) =
        two_colleges("college-victim", "college-survivor").await;

    let load = PingLoad::start(&balancer, 4, Duration::from_secs(3), 5);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before_kill = load.answered_by("college-victim");
    victim.signal(Signal::SIGKILL);
    let (calls, failures) = load.finish().await;
    assert!(before_kill > 0, "the victim served calls before it died");
    assert_eq!(failures, 0, "of {calls} calls");
    assert!(!balancer.view().contains("college-victim"));
}

#[tokio::test]
async fn a_client_never_sees_the_mesh_shrink_when_its_registry_restarts() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let registry = Proc::start("registry", &["registry", "--listen", &listen]).await;
    let url = registry.url();
    let _c1 = Proc::member("college", &url, &["--instance-id", "college-x"]).await;
    let _c2 = Proc::member("college", &url, &["--instance-id", "college-y"]).await;
    let balancer = Balancer::new(vec![url.clone()], "college", BalancerOptions::default());
    assert_eventually(
        Duration::from_secs(5),
        "the client sees both colleges",
        || async { balancer.view().instances.len() == 2 },
    )
    .await;

    // Record every view the client holds from here on.
    let mut views = balancer.subscribe();
    let smallest = tokio::spawn(async move {
        let mut smallest = usize::MAX;
        let mut snapshots = 0;
        while tokio::time::timeout(Duration::from_secs(4), views.changed())
            .await
            .is_ok_and(|r| r.is_ok())
        {
            let view = views.borrow_and_update().clone();
            if view.connected {
                snapshots += 1;
                smallest = smallest.min(view.instances.len());
            }
        }
        (smallest, snapshots)
    });
    registry.signal(Signal::SIGKILL);
    registry.wait(Duration::from_secs(5)).await;
    let _registry = Proc::start("registry", &["registry", "--listen", &listen]).await;

    let (smallest, snapshots) = smallest.await.unwrap();
    assert!(
        snapshots > 0,
        "the client reconnected to the restarted registry"
    );
    assert_eq!(smallest, 2, "the client's view never lost a live college");
}

/// College pings through a balancer from several loops at once, for a while,
/// counting calls, failures and which instance answered.
struct PingLoad {
    calls: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    answered_by: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl PingLoad {
    fn start(balancer: &Balancer, loops: usize, run_for: Duration, delay_ms: u32) -> PingLoad {
        let stop = Instant::now() + run_for;
        let calls = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let answered_by = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let loops = (0..loops)
            .map(|_| {
                let (balancer, calls, failures, answered_by) = (
                    balancer.clone(),
                    calls.clone(),
                    failures.clone(),
                    answered_by.clone(),
                );
                tokio::spawn(async move {
                    while Instant::now() < stop {
                        let request = PingRequest {
                            message: "x".into(),
                            delay_ms,
                        };
                        let result = balancer
                            .call(|ch| {
                                let request = request.clone();
                                async move { CollegeClient::new(ch).ping(request).await }
                            })
                            .await;
                        calls.fetch_add(1, Ordering::Relaxed);
                        match result {
                            Ok(reply) => {
                                *answered_by
                                    .lock()
                                    .unwrap()
                                    .entry(reply.into_inner().instance_id)
                                    .or_insert(0) += 1;
                            }
                            Err(status) => {
                                eprintln!("failed call: {status:?}");
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        PingLoad {
            calls,
            failures,
            answered_by,
            loops,
        }
    }

    fn answered_by(&self, id: &str) -> usize {
        self.answered_by
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// Waits for the loops to end; returns (calls, failures).
    async fn finish(self) -> (usize, usize) {
        for task in self.loops {
            task.await.unwrap();
        }
        (
            self.calls.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }
}

/// A registry, two colleges with these ids, and a client balancer that sees both.
async fn two_colleges(first: &str, second: &str) -> (Proc, Proc, Proc, Balancer) {
    let registry = Proc::registry(&[]).await;
    let a = Proc::member("college", &registry.url(), &["--instance-id", first]).await;
    let b = Proc::member("college", &registry.url(), &["--instance-id", second]).await;
    let balancer = Balancer::new(vec![registry.url()], "college", BalancerOptions::default());
    assert_eventually(
        Duration::from_secs(5),
        "the client sees both colleges",
        || async { balancer.view().instances.len() == 2 },
    )
    .await;
    (registry, a, b, balancer)
}

/// Waits until college `id` holds a keep-alive stream on `registry`, then
/// watches the registry's colleges.
async fn watch_once_streaming(
    registry: &Proc,
    id: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<(Instant, grantmesh_proto::v1::WatchEvent)> {
    assert_eventually(
        Duration::from_secs(5),
        "college registered with a keep-alive stream",
        || async {
            list(&registry.url(), "college")
                .await
                .iter()
                .any(|i| i.id == id && i.keep_alive_stream)
        },
    )
    .await;
    watch(&registry.url(), "college").await
}

/// A server that reads what a client sends, then drops the connection: a
/// call that reached an instance and broke before its answer.
async fn breaker() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::AsyncReadExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                let mut read = 0;
                // The preface, SETTINGS and a call's HEADERS and DATA.
                while read < 100 {
                    match tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buffer))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => read += n,
                        _ => break,
                    }
                }
                if read >= 100 {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, received)
}

/// Which instance answered a Ping through `balancer`, once or with resends.
async fn ping_through(balancer: &Balancer, once: bool) -> Result<String, tonic::Status> {
    let call = |channel| async move {
        grantmesh_proto::RegistryClient::new(channel)
            .ping(PingRequest::default())
            .await
            .map(|reply| reply.into_inner().instance_id)
    };
    if once {
        balancer.call_once(call).await
    } else {
        balancer.call(call).await
    }
}

#[tokio::test]
async fn a_call_without_an_idempotency_key_is_not_sent_again_once_it_may_have_reached_a_server() {
    let registry = Proc::registry(&[]).await;
    let answering = Proc::registry(&["--instance-id", "answering"]).await;
    let (broken, reached) = breaker().await;
    let mut client = grantmesh_proto::RegistryClient::new(
        tonic::transport::Channel::from_shared(registry.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    for (id, address) in [
        ("broken", format!("http://{broken}")),
        ("answering", answering.url()),
    ] {
        let ttl = Some(Duration::from_secs(60));
        client
            .register(registration("flaky", id, &address, ttl))
            .await
            .unwrap();
    }
    // A fresh balancer per call until its pick is the broken instance (a
    // balancer sets an instance aside once it broke a call).
    for once in [false, true] {
        let mut outcome = None;
        for _ in 0..40 {
            let balancer = Balancer::new(vec![registry.url()], "flaky", BalancerOptions::default());
            assert_eventually(Duration::from_secs(5), "both instances seen", || async {
                balancer.view().instances.len() == 2
            })
            .await;
            let before = reached.load(Ordering::SeqCst);
            let answer = ping_through(&balancer, once).await;
            if reached.load(Ordering::SeqCst) > before {
                outcome = Some(answer);
                break;
            }
        }
        let outcome = outcome.expect("the broken instance was picked first at least once");
        if once {
            let refused = outcome.expect_err("not sent again after it reached a server");
            assert_ne!(refused.code(), Code::Ok);
        } else {
            assert_eq!(outcome.expect("sent again elsewhere"), "answering");
        }
    }

    // An instance nobody listens at: the call never left, so even a call
    // without a key goes on to the other instance.
    for (id, address) in [
        ("gone", "http://127.0.0.1:9".to_owned()),
        ("answering", answering.url()),
    ] {
        let ttl = Some(Duration::from_secs(60));
        client
            .register(registration("half-gone", id, &address, ttl))
            .await
            .unwrap();
    }
    for _ in 0..10 {
        let balancer = Balancer::new(
            vec![registry.url()],
            "half-gone",
            BalancerOptions::default(),
        );
        assert_eventually(Duration::from_secs(5), "both instances seen", || async {
            balancer.view().instances.len() == 2
        })
        .await;
        assert_eq!(
            ping_through(&balancer, true)
                .await
                .expect("a call that never left is sent elsewhere"),
            "answering"
        );
    }
}
