//! The abusive clients of issue 10, each a loop until its stop token: what
//! they try, and what the servers answered them, counted by outcome.
//!
//! Every abuser keeps going whatever it is answered (a refusal is the
//! point), pausing briefly after a refusal so that the flood costs the
//! servers, not this process's own CPU on a 2-core machine.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grantmesh_proto::CollegeClient;
use grantmesh_proto::RegistryClient;
use grantmesh_proto::v1::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::mesh::{ABUSE_IDENTITY, ABUSE_SERVICE};
use crate::support::tls;

/// Outcomes per abuser ("idle tcp → closed by server" …).
#[derive(Default)]
pub struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    pub fn count(&self, what: impl Into<String>) {
        *self.0.lock().unwrap().entry(what.into()).or_default() += 1;
    }

    fn outcome<T>(&self, abuser: &str, result: &Result<T, tonic::Status>) {
        match result {
            Ok(_) => self.count(format!("{abuser}: OK")),
            Err(status) if status.code() == tonic::Code::Unknown => {
                self.count(format!("{abuser}: Unknown ({})", status.message()))
            }
            Err(status) => self.count(format!("{abuser}: {:?}", status.code())),
        }
    }

    pub fn rows(&self) -> Vec<(String, u64)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// A connection to `url` (presenting `identity`'s certificate when given),
/// retried until made: while the idle connections fill a server's backlog,
/// new connections wait behind them, and an abuser waits as anyone would.
pub async fn connect(
    url: &str,
    identity: Option<&str>,
    tally: &Tally,
    stop: &CancellationToken,
) -> Option<Channel> {
    connect_from(url, ABUSER, identity, tally, stop).await
}

/// As [`connect`], from `local` (another attacker than [`ABUSER`]).
pub async fn connect_from(
    url: &str,
    local: IpAddr,
    identity: Option<&str>,
    tally: &Tally,
    stop: &CancellationToken,
) -> Option<Channel> {
    let server: SocketAddr = url
        .strip_prefix("https://")
        .and_then(|addr| addr.parse().ok())
        .expect("the soak's servers are at https://IP:PORT");
    while !stop.is_cancelled() {
        match tls::channel_from(server, local, identity).await {
            Ok(channel) => return Some(channel),
            Err(_) => {
                tally.count("any abuser: a new connection failed (retried)");
                tokio::time::sleep(AFTER_REFUSAL).await;
            }
        }
    }
    None
}

/// The address every abuser calls from: not the well-behaved clients'
/// (127.0.0.1), as an attacker is another machine, so the servers' limits
/// per address keep the abusers to their own share.
pub const ABUSER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// The address the unread watchers call from.
pub const UNREAD_WATCHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

/// A TCP connection to `addr` from [`ABUSER`].
async fn tcp_to(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ABUSER, 0))?;
    socket.connect(addr).await
}

/// How long an abuser pauses after a refusal.
const AFTER_REFUSAL: Duration = Duration::from_millis(100);

/// Registry labels at their limits: 16 labels, 64-byte keys, 128-byte values.
pub fn max_labels() -> std::collections::HashMap<String, String> {
    (0..16)
        .map(|n| (format!("{n:0>64}"), "v".repeat(128)))
        .collect()
}

/// An instance of the abuse service at the registry's size limits.
pub fn max_instance(n: usize) -> Instance {
    let host = "a".repeat(256 - "https://:9".len());
    Instance {
        id: format!("abuse-{n}"),
        service: ABUSE_SERVICE.into(),
        address: format!("https://{host}:9"),
        labels: max_labels(),
        // The longest TTL there is: they stay without a single renewal.
        ttl: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// Keeps `count` TCP connections open to `addr` that never send a byte;
/// when the server closes one, another takes its place. `held` says how
/// many are open right now.
pub async fn idle_connections(
    addr: SocketAddr,
    count: usize,
    held: Arc<AtomicUsize>,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    // Connects in flight at once: the kernel's accept queue fills up
    // anyway, this only keeps the opening pace civil.
    let connecting = Arc::new(tokio::sync::Semaphore::new(64));
    while !stop.is_cancelled() {
        if held.load(Ordering::Relaxed) >= count {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let permit = connecting.clone().acquire_owned().await.unwrap();
        held.fetch_add(1, Ordering::Relaxed);
        let (held, tally, stop) = (held.clone(), tally.clone(), stop.clone());
        tokio::spawn(async move {
            let connected = tokio::time::timeout(Duration::from_secs(5), tcp_to(addr)).await;
            drop(permit);
            match connected {
                Ok(Ok(mut tcp)) => {
                    let opened = Instant::now();
                    let mut byte = [0u8; 1];
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = tcp.read(&mut byte) => {
                            tally.count("idle tcp: closed by the server");
                            if opened.elapsed() > Duration::from_secs(30) {
                                tally.count("idle tcp: held open over 30 s");
                            }
                        }
                    }
                }
                Ok(Err(_)) => tally.count("idle tcp: connect refused"),
                Err(_) => tally.count("idle tcp: connect timed out (backlog full)"),
            }
            held.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// A TLS handshake sent one byte a second: a ClientHello record header, then
/// a trickle that never completes it.
pub async fn slow_loris_tls(
    addr: SocketAddr,
    count: usize,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let mut tasks = Vec::new();
    for _ in 0..count {
        let (tally, stop) = (tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let Ok(Ok(mut tcp)) =
                    tokio::time::timeout(Duration::from_secs(5), tcp_to(addr)).await
                else {
                    tally.count("slow-loris tls: connect failed");
                    tokio::time::sleep(AFTER_REFUSAL).await;
                    continue;
                };
                let opened = Instant::now();
                // Handshake record, TLS 1.0 framing, 512 bytes announced.
                let mut trickle = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]
                    .into_iter()
                    .chain(std::iter::repeat(0u8));
                let mut reply = [0u8; 64];
                let closed = loop {
                    let byte = trickle.next().unwrap();
                    if tcp.write_all(&[byte]).await.is_err() {
                        break true;
                    }
                    tokio::select! {
                        () = stop.cancelled() => break false,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        read = tcp.read(&mut reply) => if matches!(read, Ok(0) | Err(_)) { break true; },
                    }
                };
                if closed {
                    let after = opened.elapsed().as_secs();
                    tally.count(format!(
                        "slow-loris tls: closed by the server after {}",
                        if after <= 12 { "≤12 s" } else { "more than 12 s" }
                    ));
                }
            }
        }));
    }
    futures::future::join_all(tasks).await;
}

/// `streams` Watch calls of `college` on each of `connections` connections,
/// each read to the end (a flood of streams, not of unread data).
pub async fn stream_flood(
    registry: String,
    connections: usize,
    streams: usize,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let Some(channel) = connect(&registry, None, &tally, &stop).await else {
            return;
        };
        for _ in 0..streams {
            let (channel, tally, stop) = (channel.clone(), tally.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut client = RegistryClient::new(channel);
                while !stop.is_cancelled() {
                    let watch = client
                        .watch(WatchRequest {
                            service: "college".into(),
                        })
                        .await;
                    tally.outcome("stream flood: Watch", &watch);
                    let Ok(watch) = watch else {
                        tokio::time::sleep(AFTER_REFUSAL).await;
                        continue;
                    };
                    let mut stream = watch.into_inner();
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            message = stream.message() => if !matches!(message, Ok(Some(_))) { break; },
                        }
                    }
                }
            }));
        }
    }
    futures::future::join_all(tasks).await;
}

/// `callers` concurrent Pings that each hold a call for 100 ms, on each of
/// `connections` connections to a college: more than one connection may
/// have in flight, so the excess is shed.
pub async fn call_flood(
    college: String,
    connections: usize,
    callers: usize,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let Some(channel) = connect(&college, None, &tally, &stop).await else {
            return;
        };
        for _ in 0..callers {
            let (channel, tally, stop) = (channel.clone(), tally.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut client = CollegeClient::new(channel);
                while !stop.is_cancelled() {
                    let pinged = client
                        .ping(PingRequest {
                            message: "flood".into(),
                            delay_ms: 100,
                        })
                        .await;
                    tally.outcome("call flood: Ping", &pinged);
                    if pinged.is_err() {
                        tokio::time::sleep(AFTER_REFUSAL).await;
                    }
                }
            }));
        }
    }
    futures::future::join_all(tasks).await;
}

/// `callers` concurrent wrong-password logins at a college, against
/// `victim` and against made-up emails in turn.
pub async fn login_flood(
    college: String,
    victim: String,
    callers: usize,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let Some(channel) = connect(&college, None, &tally, &stop).await else {
        return;
    };
    let mut tasks = Vec::new();
    for n in 0..callers {
        let (channel, tally, stop, victim) =
            (channel.clone(), tally.clone(), stop.clone(), victim.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = CollegeClient::new(channel);
            let mut attempt = 0u64;
            while !stop.is_cancelled() {
                attempt += 1;
                let email = if (n as u64 + attempt).is_multiple_of(2) {
                    victim.clone()
                } else {
                    format!("nobody-{n}-{attempt}@example.org")
                };
                let login = client
                    .login(LoginRequest {
                        email,
                        password: format!("wrong guess number {attempt}"),
                    })
                    .await;
                tally.outcome("login flood: Login", &login);
                if login.is_err() {
                    tokio::time::sleep(AFTER_REFUSAL).await;
                }
            }
        }));
    }
    futures::future::join_all(tasks).await;
}

/// Registers instances of the abuse service at every size limit, past the
/// per-service limit, then churns: deregisters and registers again, so
/// watchers of the service get a steady stream of changes.
pub async fn max_label_registrations(registry: String, tally: Arc<Tally>, stop: CancellationToken) {
    let Some(channel) = connect(&registry, Some(ABUSE_IDENTITY), &tally, &stop).await else {
        return;
    };
    let mut client = RegistryClient::new(channel);
    // Past the limit of 1,000 per service: the rest must be refused.
    for n in 0..1100 {
        if stop.is_cancelled() {
            return;
        }
        let registered = client
            .register(RegisterRequest {
                instance: Some(max_instance(n)),
            })
            .await;
        tally.outcome("max-label Register (first 1,100)", &registered);
    }
    let mut n = 0usize;
    while !stop.is_cancelled() {
        n = (n + 7) % 1000;
        let removed = client
            .deregister(DeregisterRequest {
                service: ABUSE_SERVICE.into(),
                instance_id: format!("abuse-{n}"),
            })
            .await;
        tally.outcome("max-label churn: Deregister", &removed);
        let registered = client
            .register(RegisterRequest {
                instance: Some(max_instance(n)),
            })
            .await;
        tally.outcome("max-label churn: Register", &registered);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `ListInstances` in a loop, of the abuse service (1,000 instances at
/// their limits, ~3.5 MB) or of every service (`""`).
pub async fn list_loop(
    registry: String,
    service: &'static str,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let Some(channel) = connect(&registry, None, &tally, &stop).await else {
        return;
    };
    let mut client = RegistryClient::new(channel).max_decoding_message_size(16 << 20);
    while !stop.is_cancelled() {
        let listed = client
            .list_instances(ListInstancesRequest {
                service: service.into(),
            })
            .await;
        tally.outcome(
            if service.is_empty() {
                "ListInstances loop (every service)"
            } else {
                "ListInstances loop (abuse)"
            },
            &listed,
        );
        if listed.is_err() {
            tokio::time::sleep(AFTER_REFUSAL).await;
        }
    }
}

/// `per_connection` Watch streams of `service` on each of `connections`
/// connections, opened and never read; held until `stop`.
pub async fn unread_watchers(
    registry: String,
    service: &'static str,
    connections: usize,
    per_connection: usize,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let mut held = Vec::new();
    for _ in 0..connections {
        // Another attacker than the stream flood's, whose own share of the
        // registry's Watch streams it would otherwise be refused.
        let Some(channel) = connect_from(&registry, UNREAD_WATCHER, None, &tally, &stop).await
        else {
            return;
        };
        for _ in 0..per_connection {
            let watch = RegistryClient::new(channel.clone())
                .watch(WatchRequest {
                    service: service.into(),
                })
                .await;
            tally.outcome("unread Watch (abuse service)", &watch);
            if let Ok(watch) = watch {
                held.push(watch.into_inner());
            }
        }
    }
    stop.cancelled().await;
    drop(held);
}

/// Issue 20's abusers: pings held as long as a stranger may (1 s) and
/// longer (refused), `callers` at once on one connection.
pub async fn long_pings(
    college: String,
    callers: usize,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let Some(channel) = connect(&college, None, &tally, &stop).await else {
        return;
    };
    let mut tasks = Vec::new();
    for n in 0..callers {
        let (channel, tally, stop) = (channel.clone(), tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = CollegeClient::new(channel);
            // One in eight asks for the 30 s a stranger may no longer hold.
            let delay_ms = if n % 8 == 0 { 30_000 } else { 1_000 };
            while !stop.is_cancelled() {
                let pinged = client
                    .ping(PingRequest {
                        message: "hold".into(),
                        delay_ms,
                    })
                    .await;
                tally.outcome(&format!("long pings: Ping({delay_ms} ms)"), &pinged);
                if pinged.is_err() {
                    tokio::time::sleep(AFTER_REFUSAL).await;
                }
            }
        }));
    }
    futures::future::join_all(tasks).await;
}

/// Calls to made-up 2 KB method paths, which must add no metric series.
pub async fn made_up_methods(college: String, tally: Arc<Tally>, stop: CancellationToken) {
    let Some(channel) = connect(&college, None, &tally, &stop).await else {
        return;
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut n = 0u64;
    while !stop.is_cancelled() {
        n += 1;
        let path = format!("/grantmesh.v1.Made{n}/{}", "x".repeat(2_000));
        let path = tonic::codegen::http::uri::PathAndQuery::try_from(path).expect("a path");
        let answer = async {
            grpc.ready()
                .await
                .map_err(|err| tonic::Status::unavailable(err.to_string()))?;
            grpc.unary::<PingRequest, PingReply, _>(
                tonic::Request::new(PingRequest::default()),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await
        }
        .await;
        tally.outcome("made-up methods", &answer);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// WatchAccount on random account ids, as a signed-in stranger: each is
/// refused before any feed is made.
pub async fn random_account_watches(
    college: String,
    token: String,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let Some(channel) = connect(&college, None, &tally, &stop).await else {
        return;
    };
    let mut client = CollegeClient::new(channel);
    while !stop.is_cancelled() {
        let mut request = tonic::Request::new(WatchAccountRequest {
            account_id: uuid::Uuid::new_v4().to_string(),
        });
        grantmesh_auth::authorize(&mut request, &token).expect("a token is valid metadata");
        let watched = client.watch_account(request).await.map(|_| ());
        tally.outcome("random-id WatchAccount", &watched);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `count` TLS connections that answer keepalive pings and call nothing.
pub async fn held_tls(
    server: SocketAddr,
    count: usize,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let mut held = Vec::new();
    for _ in 0..count {
        if stop.is_cancelled() {
            break;
        }
        match tls::channel_from(server, ABUSER, None).await {
            Ok(channel) => {
                tally.count("held TLS connections: opened");
                held.push(channel);
            }
            Err(_) => {
                tally.count("held TLS connections: refused");
                tokio::time::sleep(AFTER_REFUSAL).await;
            }
        }
    }
    stop.cancelled().await;
}

/// `count` idle TCP connections to a metrics endpoint from [`ABUSER`],
/// opened again as the endpoint closes them, and a scrape every 5 s from
/// the well-behaved address, counted by whether it was answered.
pub async fn metrics_port(
    metrics: SocketAddr,
    count: usize,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let mut tasks = Vec::new();
    for _ in 0..count {
        let (tally, stop) = (tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let Ok(Ok(mut tcp)) = tokio::time::timeout(Duration::from_secs(2), tcp_to(metrics)).await
                else {
                    tally.count("metrics port: connect failed");
                    tokio::time::sleep(AFTER_REFUSAL).await;
                    continue;
                };
                let mut byte = [0u8; 1];
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tcp.read(&mut byte) => tally.count("metrics port: idle connection closed by the server"),
                }
                tokio::time::sleep(AFTER_REFUSAL).await;
            }
        }));
    }
    let (scrape_tally, scrape_stop) = (tally.clone(), stop.clone());
    tasks.push(tokio::spawn(async move {
        while !scrape_stop.is_cancelled() {
            let scrape = async {
                let mut tcp = TcpStream::connect(metrics).await.ok()?;
                tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: soak\r\n\r\n")
                    .await
                    .ok()?;
                let mut reply = Vec::new();
                tcp.read_to_end(&mut reply).await.ok()?;
                Some(reply.starts_with(b"HTTP/1.0 200") || reply.starts_with(b"HTTP/1.1 200"))
            };
            match tokio::time::timeout(Duration::from_secs(5), scrape).await {
                Ok(Some(true)) => scrape_tally.count("metrics port: a scrape answered"),
                _ => scrape_tally.count("metrics port: a scrape not answered within 5 s"),
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }));
    futures::future::join_all(tasks).await;
}

/// A browser's form post to the portal at `portal` from `local`, with its
/// cookie: the status and the body.
async fn portal_post(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<hyper::body::Bytes>,
    >,
    portal: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    form: Option<String>,
) -> Option<(hyper::StatusCode, Option<String>, String)> {
    use http_body_util::BodyExt as _;
    let mut request = hyper::Request::builder()
        .method(if form.is_some() { "POST" } else { "GET" })
        .uri(format!("http://{portal}{path}"));
    if let Some(cookie) = cookie {
        request = request.header(hyper::header::COOKIE, cookie);
    }
    if form.is_some() {
        request = request.header(
            hyper::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
    }
    let request = request
        .body(http_body_util::Full::new(hyper::body::Bytes::from(
            form.unwrap_or_default(),
        )))
        .ok()?;
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .ok()?
        .ok()?;
    let status = response.status();
    let cookie = response
        .headers()
        .get_all(hyper::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("grantmesh_session="))
        .map(|v| v.split(';').next().unwrap_or(v).to_owned());
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, cookie, String::from_utf8_lossy(&body).into_owned()))
}

/// The CSRF token of a portal page.
fn csrf_of(page: &str) -> Option<String> {
    let start = page.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(page[start..].split('"').next()?.to_owned())
}

/// An HTTP client of the portal that calls from `local`.
fn portal_client(
    local: IpAddr,
) -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<hyper::body::Bytes>,
> {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_local_address(Some(local));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

/// `callers` browsers from [`ABUSER`] posting wrong passwords to the
/// portal's log-in form, each with a session and CSRF token of its own.
pub async fn portal_login_flood(
    portal: SocketAddr,
    callers: usize,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let client = portal_client(ABUSER);
    let mut tasks = Vec::new();
    for n in 0..callers {
        let (client, tally, stop) = (client.clone(), tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let Some((_, Some(cookie), page)) = portal_post(&client, portal, "/login", None, None).await
            else {
                tally.count("portal login flood: no login page");
                return;
            };
            let Some(csrf) = csrf_of(&page) else {
                tally.count("portal login flood: no CSRF token");
                return;
            };
            let mut guess = 0u64;
            while !stop.is_cancelled() {
                guess += 1;
                let form = format!(
                    "csrf={csrf}&email=guess-{n}-{guess}%40uni.edu&password=wrong+horse+battery&next=%2F"
                );
                match portal_post(&client, portal, "/login", Some(&cookie), Some(form)).await {
                    Some((status, _, _)) => tally.count(format!("portal login flood: HTTP {}", status.as_u16())),
                    None => tally.count("portal login flood: no answer"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    futures::future::join_all(tasks).await;
}

/// A bystander logging in through the portal every 10 s from the
/// well-behaved address, as `email` with `password`: counted by outcome.
pub async fn portal_bystander(
    portal: SocketAddr,
    email: String,
    password: String,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let client = portal_client(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    while !stop.is_cancelled() {
        let logged_in = async {
            let (_, cookie, page) = portal_post(&client, portal, "/login", None, None).await?;
            let csrf = csrf_of(&page)?;
            let form = format!(
                "csrf={csrf}&email={}&password={}&next=%2F",
                email.replace('@', "%40"),
                password.replace(' ', "+")
            );
            let (status, _, _) =
                portal_post(&client, portal, "/login", cookie.as_deref(), Some(form)).await?;
            Some(status == hyper::StatusCode::SEE_OTHER)
        }
        .await;
        tally.count(match logged_in {
            Some(true) => "portal bystander: logged in",
            _ => "portal bystander: login failed",
        });
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}
