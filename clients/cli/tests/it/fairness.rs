//! Fair limits, attacked as an anonymous client would: real processes on
//! TLS, real floods from one address while a bystander calls from another
//! (loopback answers on all of 127.0.0.0/8, so a test has many addresses).
//!
//! Under each flood a mesh member still registers and lists, a caller from
//! another address is still served, and health still answers.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use grantmesh_discovery::{Balancer, BalancerOptions};
use grantmesh_proto::RegistryClient;
use grantmesh_proto::v1::*;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::*;

/// A TLS channel to `server` from `local`, which must connect.
async fn channel_from(server: SocketAddr, local: IpAddr, identity: Option<&str>) -> Channel {
    tls::channel_from(server, local, identity)
        .await
        .unwrap_or_else(|err| panic!("connect to {server} from {local}: {err}"))
}

/// Whether a fresh connection from `local` is let in and served a call.
async fn served_from(server: SocketAddr, local: IpAddr, identity: Option<&str>) -> bool {
    let call = async {
        let channel = tls::channel_from(server, local, identity).await.ok()?;
        RegistryClient::new(channel)
            .list_instances(ListInstancesRequest::default())
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), call).await,
        Ok(Some(_))
    )
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Keeps `per_connection` pings of `delay_ms` in flight on each of
/// `connections` connections from `local` until the returned handles are
/// aborted: a refused ping is sent again shortly after.
async fn flood(
    server: SocketAddr,
    local: IpAddr,
    connections: usize,
    per_connection: usize,
    delay_ms: u32,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let channel = channel_from(server, local, None).await;
        for _ in 0..per_connection {
            let mut client = RegistryClient::new(channel.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let held = client
                        .ping(PingRequest {
                            message: "flood".into(),
                            delay_ms,
                        })
                        .await;
                    if held.is_err() {
                        // Refused: try again soon, as a flood does.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
    }
    // Every ping is read by the server well within this.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tasks
}

async fn health(channel: Channel) -> Result<ServingStatus, tonic::Status> {
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await?;
    Ok(reply.into_inner().status())
}

#[tokio::test]
async fn a_stranger_holding_pings_on_nine_connections_takes_only_its_own_share() {
    let tls_dir = tls::dir().to_str().unwrap();
    // Pings as long as the attack's (30 s), allowed here so that nothing but
    // the per-address share stands between the flood and everyone else.
    let registry =
        Proc::registry(&["--tls-dir", tls_dir, "--max-anonymous-ping-delay", "30s"]).await;
    // The table's attack: 9 connections × 120 pings, from one address.
    let flood = flood(registry.addr, ip("127.0.0.1"), 9, 120, 30_000).await;

    let mut same_address =
        RegistryClient::new(channel_from(registry.addr, ip("127.0.0.1"), None).await);
    let refused = same_address
        .list_instances(ListInstancesRequest::default())
        .await
        .expect_err("the flooding address is at its share");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("from 127.0.0.1"),
        "the refusal names whose share is used: {refused:?}"
    );

    // A researcher on another address is served at once.
    let mut bystander =
        RegistryClient::new(channel_from(registry.addr, ip("127.0.0.2"), None).await);
    for _ in 0..20 {
        bystander
            .list_instances(ListInstancesRequest::default())
            .await
            .expect("another address still has room");
    }
    // A mesh member on the very address of the flood registers and renews.
    let member = channel_from(registry.addr, ip("127.0.0.1"), Some("college/college-fair")).await;
    let mut member = RegistryClient::new(member);
    member
        .register(college_at("college-fair", "https://127.0.0.1:9"))
        .await
        .expect("a member registers under the flood");
    member
        .heartbeat(HeartbeatRequest {
            service: "college".into(),
            instance_id: "college-fair".into(),
        })
        .await
        .expect("and renews");
    // Health answers from the flooding address itself.
    let health_channel = channel_from(registry.addr, ip("127.0.0.1"), None).await;
    assert_eq!(
        health(health_channel).await.unwrap(),
        ServingStatus::Serving
    );

    for task in flood {
        task.abort();
    }
}

#[tokio::test]
async fn anonymous_addresses_together_cannot_take_the_calls_kept_for_mesh_members() {
    let tls_dir = tls::dir().to_str().unwrap();
    let registry = Proc::registry(&[
        "--tls-dir",
        tls_dir,
        "--max-calls",
        "40",
        "--calls-reserved-for-members",
        "10",
        "--max-calls-per-peer",
        "10",
        "--max-anonymous-ping-delay",
        "30s",
    ])
    .await;
    // Three addresses, ten held calls each: the anonymous share (30) is full.
    let mut floods = Vec::new();
    for last in 1..=3 {
        let local = ip(&format!("127.0.0.{last}"));
        floods.extend(flood(registry.addr, local, 1, 12, 30_000).await);
    }

    let mut fourth = RegistryClient::new(channel_from(registry.addr, ip("127.0.0.4"), None).await);
    let refused = fourth
        .list_instances(ListInstancesRequest::default())
        .await
        .expect_err("the anonymous share is used up");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("without a mesh certificate"),
        "{refused:?}"
    );

    let mut member =
        RegistryClient::new(channel_from(registry.addr, ip("127.0.0.4"), Some("agency/nsf")).await);
    for _ in 0..20 {
        member
            .list_instances(ListInstancesRequest {
                service: "college".into(),
            })
            .await
            .expect("the reserve is there for members");
    }
    let anonymous_health = channel_from(registry.addr, ip("127.0.0.4"), None).await;
    assert_eq!(
        health(anonymous_health).await.unwrap(),
        ServingStatus::Serving,
        "health is outside admission"
    );

    for task in floods {
        task.abort();
    }
}

#[tokio::test]
async fn only_a_mesh_member_may_hold_a_ping_for_longer_than_a_second() {
    let tls_dir = tls::dir().to_str().unwrap();
    let registry = Proc::registry(&["--tls-dir", tls_dir]).await;
    let long = PingRequest {
        message: "hold".into(),
        delay_ms: 30_000,
    };
    let mut stranger =
        RegistryClient::new(channel_from(registry.addr, ip("127.0.0.1"), None).await);
    let refused = stranger
        .ping(long.clone())
        .await
        .expect_err("a stranger may not hold a call for 30 s");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("at most 1000"), "{refused:?}");
    stranger
        .ping(PingRequest {
            message: "short".into(),
            delay_ms: 1_000,
        })
        .await
        .expect("a second is allowed");

    let mut member =
        RegistryClient::new(channel_from(registry.addr, ip("127.0.0.1"), Some("college")).await);
    let held = member
        .ping(PingRequest {
            message: "hold".into(),
            delay_ms: 1_500,
        })
        .await
        .expect("a member may hold a call longer");
    assert_eq!(held.into_inner().message, "hold");
}

#[tokio::test]
async fn connections_held_open_by_one_address_or_by_strangers_leave_room_for_the_rest() {
    let tls_dir = tls::dir().to_str().unwrap();
    let registry = Proc::registry(&[
        "--tls-dir",
        tls_dir,
        "--max-connections",
        "40",
        "--max-connections-per-address",
        "8",
        "--connections-reserved-for-members",
        "16",
    ])
    .await;
    // Connections that answer keepalive pings and send nothing.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(channel_from(registry.addr, ip("127.0.0.1"), None).await);
    }
    assert!(
        !served_from(registry.addr, ip("127.0.0.1"), None).await,
        "a ninth connection from the same address is closed"
    );
    assert!(
        served_from(registry.addr, ip("127.0.0.2"), None).await,
        "another address gets in"
    );
    assert!(
        served_from(registry.addr, ip("127.0.0.1"), Some("college")).await,
        "a member gets in from the very address that is at its share"
    );

    // Strangers on three addresses hold all 24 places that are not kept
    // for members.
    for last in 2..=3 {
        for _ in 0..8 {
            held.push(channel_from(registry.addr, ip(&format!("127.0.0.{last}")), None).await);
        }
    }
    assert!(
        !served_from(registry.addr, ip("127.0.0.4"), None).await,
        "a fourth address finds the anonymous places taken"
    );
    assert!(
        served_from(registry.addr, ip("127.0.0.4"), Some("agency/nsf")).await,
        "a member still gets in"
    );
    drop(held.drain(..8));
    assert_eventually(
        Duration::from_secs(5),
        "places come back when connections close",
        || async { served_from(registry.addr, ip("127.0.0.4"), None).await },
    )
    .await;
}

/// Opens `count` Watch streams of `service` from `local` and keeps them; the
/// refusals, if any, come back as the error of the first one refused.
async fn hold_watches(
    server: SocketAddr,
    local: IpAddr,
    count: usize,
) -> (Vec<tonic::Streaming<WatchEvent>>, Option<tonic::Status>) {
    let mut client = RegistryClient::new(channel_from(server, local, None).await);
    let mut held = Vec::new();
    for _ in 0..count {
        match client
            .watch(WatchRequest {
                service: "college".into(),
            })
            .await
        {
            Ok(stream) => held.push(stream.into_inner()),
            Err(refused) => return (held, Some(refused)),
        }
    }
    (held, None)
}

#[tokio::test]
async fn watch_floods_take_their_own_share_and_a_refused_balancer_reads_the_listing_instead() {
    let tls_dir = tls::dir().to_str().unwrap();
    let registry = Proc::registry(&[
        "--tls-dir",
        tls_dir,
        "--max-watches",
        "64",
        "--max-watches-per-peer",
        "16",
        "--watches-reserved-for-members",
        "16",
    ])
    .await;
    let mut member = RegistryClient::new(
        channel_from(
            registry.addr,
            ip("127.0.0.1"),
            Some("college/college-listed"),
        )
        .await,
    );
    member
        .register(college_at("college-listed", "https://127.0.0.1:9"))
        .await
        .unwrap();

    // One address asking for more than its share.
    let (mut held, refused) = hold_watches(registry.addr, ip("127.0.0.2"), 20).await;
    assert_eq!(held.len(), 16);
    let refused = refused.expect("the 17th is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("127.0.0.2 already has 16 Watch streams"),
        "{refused:?}"
    );
    // Two more addresses fill what strangers may hold (64 − 16).
    for last in 3..=4 {
        let (more, refused) = hold_watches(registry.addr, ip(&format!("127.0.0.{last}")), 16).await;
        assert!(refused.is_none(), "{refused:?}");
        held.extend(more);
    }
    let (_, refused) = hold_watches(registry.addr, ip("127.0.0.5"), 1).await;
    let refused = refused.expect("strangers' share is full");
    assert!(
        refused
            .message()
            .contains("callers without a mesh certificate"),
        "{refused:?}"
    );

    // A member's balancer still watches.
    let agency = Balancer::new(
        vec![registry.url()],
        "college",
        BalancerOptions {
            transport: tls::transport_as(&registry.url(), Some("agency/nsf")),
            ..BalancerOptions::default()
        },
    );
    // A stranger's balancer (a researcher's CLI) is refused a Watch and
    // reads the listing instead.
    let researcher = Balancer::new(
        vec![registry.url()],
        "college",
        BalancerOptions {
            transport: tls::transport(&registry.url()),
            ..BalancerOptions::default()
        },
    );
    for (who, balancer) in [("a member", &agency), ("a stranger", &researcher)] {
        assert_eventually(
            Duration::from_secs(5),
            &format!("{who}'s balancer sees the college"),
            || async { balancer.view().contains("college-listed") },
        )
        .await;
    }
    // The polling one follows changes too, within its poll interval.
    member
        .register(college_at("college-listed-2", "https://127.0.0.1:9"))
        .await
        .unwrap();
    assert_eventually(
        Duration::from_secs(5),
        "the stranger's balancer sees a college registered later",
        || async { researcher.view().contains("college-listed-2") },
    )
    .await;
    drop(held);
}

#[tokio::test]
async fn a_connection_without_calls_is_closed_after_its_idle_timeout_even_while_it_answers_pings() {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let tls_dir = tls::dir().to_str().unwrap();
    let registry = Proc::registry(&["--tls-dir", tls_dir, "--idle-connection-timeout", "2s"]).await;

    // A bare HTTP/2 connection that pings every 500 ms and calls nothing.
    let material = grantmesh_discovery::tls::TlsMaterial::load(
        grantmesh_discovery::tls::TlsPaths::in_dir(tls::dir(), None),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(registry.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(material.client_config())
        .connect(name, tcp)
        .await
        .unwrap();
    let (_send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(500))
        .keep_alive_while_idle(true)
        .handshake::<_, http_body_util::Empty<hyper::body::Bytes>>(TokioIo::new(tls))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(closed.is_ok(), "the idle connection was closed");
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "not before its idle timeout ({:?})",
        started.elapsed()
    );

    // A connection holding a Watch stream is not idle, however long it is quiet.
    let mut watcher = RegistryClient::new(channel_from(registry.addr, ip("127.0.0.1"), None).await);
    let mut events = watcher
        .watch(WatchRequest {
            service: "college".into(),
        })
        .await
        .unwrap()
        .into_inner();
    events.message().await.unwrap().expect("the snapshot");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut member = RegistryClient::new(
        channel_from(registry.addr, ip("127.0.0.1"), Some("college/college-late")).await,
    );
    member
        .register(college_at("college-late", "https://127.0.0.1:9"))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .expect("the stream is still open")
        .unwrap()
        .expect("an event");
    assert_eq!(event.instances[0].id, "college-late");
}
