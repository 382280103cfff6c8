//! Overload, tried against the real binary: a server that is handling all
//! the calls it takes refuses the next one at once with RESOURCE_EXHAUSTED
//! (it never queues it), one connection cannot take every slot, and a
//! client that connects and never speaks is closed without locking real
//! clients out.

use std::time::Duration;

use grantmesh_proto::RegistryClient;
use grantmesh_proto::v1::{ListInstancesRequest, PingRequest};
use tokio::io::AsyncReadExt as _;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::*;

/// A fresh connection to `proc`.
async fn connect(proc: &Proc) -> RegistryClient<Channel> {
    RegistryClient::new(
        Channel::from_shared(proc.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

/// Starts `count` pings that each hold a slot for `hold`, and waits until the server has them.
async fn hold_calls(client: &RegistryClient<Channel>, count: usize, hold: Duration) {
    for _ in 0..count {
        let mut client = client.clone();
        tokio::spawn(async move {
            let _ = client
                .ping(PingRequest {
                    message: "hold".into(),
                    delay_ms: hold.as_millis() as u32,
                })
                .await;
        });
    }
    // The pings are in flight once the server has read them; give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_server_handling_its_most_calls_refuses_the_next_at_once_and_recovers() {
    let registry = Proc::registry(&[
        "--max-calls",
        "4",
        "--calls-reserved-for-members",
        "0",
        "--max-anonymous-ping-delay",
        "3s",
    ])
    .await;
    let holder = connect(&registry).await;
    hold_calls(&holder, 4, Duration::from_secs(3)).await;

    let mut other = connect(&registry).await;
    let started = std::time::Instant::now();
    let refused = other
        .list_instances(ListInstancesRequest::default())
        .await
        .expect_err("the server is full");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("4 calls"),
        "the message says why: {refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once, not queued behind the held calls ({:?})",
        started.elapsed()
    );
    assert_eventually(
        Duration::from_secs(5),
        "calls are taken again once the held ones end",
        || {
            let mut other = other.clone();
            async move {
                other
                    .list_instances(ListInstancesRequest::default())
                    .await
                    .is_ok()
            }
        },
    )
    .await;
}

#[tokio::test]
async fn one_connection_cannot_take_every_call_a_server_handles() {
    let registry = Proc::registry(&[
        "--max-calls-per-connection",
        "2",
        "--max-anonymous-ping-delay",
        "3s",
    ])
    .await;
    let greedy = connect(&registry).await;
    hold_calls(&greedy, 2, Duration::from_secs(3)).await;

    let refused = greedy
        .clone()
        .list_instances(ListInstancesRequest::default())
        .await
        .expect_err("the greedy connection is at its limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Another client, on its own connection, is served.
    connect(&registry)
        .await
        .list_instances(ListInstancesRequest::default())
        .await
        .expect("another connection still has room");
}

#[tokio::test]
async fn a_plaintext_client_that_connects_and_never_speaks_is_closed() {
    let registry = Proc::registry(&[]).await;
    let mut silent = tokio::net::TcpStream::connect(registry.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(15), silent.read(&mut byte))
        .await
        .expect("the server closes a silent connection within its handshake timeout");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed without a word: {read:?}"
    );
}

/// Clients that connect and say nothing, far more of them than the server
/// opens at once, arriving faster than its opening deadline lets them go:
/// the oldest silent opening makes room for each newcomer, so a real
/// client connects and is answered at once instead of waiting behind them.
#[tokio::test]
async fn a_flood_of_silent_connections_does_not_lock_real_clients_out() {
    let registry = Proc::registry(&[]).await;
    let addr = registry.addr;
    let silent = futures::future::join_all(
        (0..3 * grantmesh_discovery::incoming::MAX_PENDING_HANDSHAKES).map(|_| async move {
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                .await
                .ok()
                .and_then(Result::ok)
        }),
    )
    .await;
    let held = silent.iter().flatten().count();
    assert!(
        held > grantmesh_discovery::incoming::MAX_PENDING_HANDSHAKES,
        "only {held} silent connections were made"
    );

    let answered = tokio::time::timeout(Duration::from_secs(3), async {
        connect(&registry)
            .await
            .list_instances(ListInstancesRequest::default())
            .await
    })
    .await
    .expect("a real client is answered while silent connections wait");
    answered.unwrap();
    drop(silent);
}

/// `GET url` over plain HTTP/1.0; the body.
async fn http_get(url: &str) -> String {
    use tokio::io::AsyncWriteExt as _;
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    tcp.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).await.unwrap();
    reply
        .split_once("\r\n\r\n")
        .expect("headers end")
        .1
        .to_owned()
}

/// The value of the sample `name{labels}` in Prometheus text, summed over
/// the series whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            series.split('{').next() == Some(name) && labels.iter().all(|l| series.contains(l))
        })
        .map(|(_, value)| value.parse::<f64>().expect("a number"))
        .sum()
}

#[tokio::test]
async fn each_server_counts_its_calls_on_the_metrics_endpoint_its_registration_names() {
    let registry = Proc::registry(&[]).await;
    let agency = Proc::member(
        "agency",
        &registry.url(),
        &["--metrics-listen", "127.0.0.1:0", "--name", "nsf"],
    )
    .await;
    let mut listed = list(&registry.url(), "agency").await;
    for _ in 0..50 {
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        listed = list(&registry.url(), "agency").await;
    }
    let url = listed[0]
        .labels
        .get("metrics")
        .expect("the agency registers its metrics URL")
        .clone();
    let pings = |text: &str| {
        sample(
            text,
            "grpc_server_requests_total",
            &[
                "service=\"grantmesh.v1.Agency\"",
                "method=\"Ping\"",
                "code=\"Ok\"",
            ],
        )
    };
    let before = pings(&http_get(&url).await);
    let mut client = grantmesh_proto::AgencyClient::new(
        Channel::from_shared(agency.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    for _ in 0..3 {
        client.ping(PingRequest::default()).await.unwrap();
    }
    let after = http_get(&url).await;
    assert_eq!(pings(&after) - before, 3.0, "{after}");
    assert!(
        sample(
            &after,
            "grpc_server_request_duration_seconds_count",
            &["method=\"Ping\""]
        ) >= 3.0
    );
}

/// The table's attack on the admin port (issue 20): far more idle
/// connections to the metrics port than it holds. The extra ones are closed
/// at once, the held ones when idle past the header timeout, so gRPC never
/// runs out of descriptors and scrapes get through again within seconds.
#[tokio::test]
async fn idle_connections_to_the_metrics_port_take_neither_grpc_nor_scrapes_for_long() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let registry = Proc::registry(&["--metrics-listen", &listen]).await;
    let metrics: std::net::SocketAddr = listen.parse().unwrap();
    let pid = registry.child.id().expect("running");
    let before = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    let idle = futures::future::join_all(
        (0..400).map(|_| async move { tokio::net::TcpStream::connect(metrics).await.ok() }),
    )
    .await;
    let idle: Vec<_> = idle.into_iter().flatten().collect();
    // (Some connects may fail while the endpoint closes the others: far
    // more than it holds is what counts.)
    assert!(
        idle.len() > 4 * grantmesh_server::metrics::MAX_METRICS_CONNECTIONS,
        "only {} connections were made",
        idle.len()
    );

    // Whatever the kernel still queues, the registry itself holds no more
    // than the endpoint's cap of them: its descriptors do not run out.
    let pid = registry.child.id().expect("running");
    let descriptors = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    assert_eventually(
        Duration::from_secs(4),
        "the registry holds at most the metrics endpoint's cap of the idle connections",
        || async { descriptors() <= before + grantmesh_server::metrics::MAX_METRICS_CONNECTIONS },
    )
    .await;
    // gRPC is untouched.
    connect(&registry)
        .await
        .list_instances(ListInstancesRequest::default())
        .await
        .expect("gRPC answers while the metrics port is flooded");
    // The held ones are dropped after the header timeout; a scrape gets in.
    assert_eventually(
        grantmesh_server::metrics::METRICS_HEADER_TIMEOUT * 3,
        "a scrape is answered once the idle connections are dropped",
        || async move {
            let scrape = async {
                use tokio::io::AsyncWriteExt as _;
                let mut tcp = tokio::net::TcpStream::connect(metrics).await.ok()?;
                tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                    .await
                    .ok()?;
                let mut reply = String::new();
                tcp.read_to_string(&mut reply).await.ok()?;
                Some(reply)
            };
            tokio::time::timeout(Duration::from_secs(1), scrape)
                .await
                .ok()
                .flatten()
                .is_some_and(|reply| reply.contains("grpc_server_requests_total"))
        },
    )
    .await;
    drop(idle);
}

/// A college out of file descriptors (held by idle clients of its own
/// gRPC port, under a tiny descriptor limit) cannot accept anyone: it
/// leaves the registry instead of staying listed as live, and comes back
/// once it can accept again (issue 20).
#[tokio::test]
async fn a_server_that_cannot_accept_leaves_the_registry_until_it_can() {
    let registry = Proc::registry(&[]).await;
    let database = shared_database().await;
    let registry_url = registry.url();
    let node = grantmesh_node::process::ChildNode::spawn(
        std::path::Path::new("prlimit"),
        "college",
        [
            "--nofile=48:48",
            env!("CARGO_BIN_EXE_grantmesh"),
            "college",
            "--listen",
            "127.0.0.1:0",
            "--instance-id",
            "college-starved",
            "--registry",
            &registry_url,
            "--database-url",
            &database,
            "--agencies",
            "nsf=300000..500000",
            "--pool-size",
            "2",
            // More connections than descriptors: the limit is the kernel's.
            "--max-connections",
            "1000",
            "--max-connections-per-address",
            "1000",
            "--connections-reserved-for-members",
            "0",
        ],
        |command| {
            command
                .env("GRANTMESH_INSECURE", "1")
                .env(
                    "GRANTMESH_TOKEN_KEY_FILE",
                    crate::support::tls::dir().join("token.key"),
                )
                .env("GRANTMESH_MAIL_OUTBOX", crate::support::outbox())
                .env_remove("GRANTMESH_REGISTRY")
                .env_remove("DATABASE_URL")
                .env(
                    "GRANTMESH_LOG",
                    std::env::var("GRANTMESH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stderr(if std::env::var_os("GRANTMESH_TEST_LOG").is_some() {
                    std::process::Stdio::inherit()
                } else {
                    std::process::Stdio::null()
                });
        },
    )
    .await
    .unwrap();
    assert_eventually(Duration::from_secs(10), "the college is listed", || async {
        ids(&registry.url(), "college").await == ["college-starved"]
    })
    .await;

    // Clients that connect and send their preface, then nothing: each
    // holds a descriptor until the college runs out.
    let mut held = Vec::new();
    for _ in 0..60 {
        if let Ok(Ok(mut tcp)) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(node.addr),
        )
        .await
        {
            use tokio::io::AsyncWriteExt as _;
            let _ = tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            held.push(tcp);
        }
    }
    assert_eventually(
        Duration::from_secs(10),
        "the college that cannot accept leaves the registry",
        || async { ids(&registry.url(), "college").await.is_empty() },
    )
    .await;
    drop(held);
    assert_eventually(
        Duration::from_secs(15),
        "it comes back once it can accept again",
        || async { ids(&registry.url(), "college").await == ["college-starved"] },
    )
    .await;
}
