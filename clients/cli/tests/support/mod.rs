//! Test support: the real `grantmesh` binary as child processes, registry
//! watchers, and bounded polling.

#![allow(dead_code)]

pub mod db;

use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use grantmesh_proto::RegistryClient;
use grantmesh_proto::v1::{Instance, ListInstancesRequest, WatchEvent, WatchRequest};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A running `grantmesh` process; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub name: String,
}

impl Proc {
    /// Starts `grantmesh ARGS…` and waits for its "listening on" line.
    pub async fn start(name: &str, args: &[&str]) -> Proc {
        let mut command = Command::new(env!("CARGO_BIN_EXE_grantmesh"));
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .env_remove("GRANTMESH_REGISTRY")
            .env_remove("DATABASE_URL")
            .env("GRANTMESH_TOKEN_KEY", db::TOKEN_KEY)
            .env("GRANTMESH_SERVICE_KEY", db::SERVICE_KEY)
            .env(
                "GRANTMESH_LOG",
                std::env::var("GRANTMESH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        if std::env::var_os("GRANTMESH_TEST_LOG").is_none() {
            command.stderr(Stdio::null());
        }
        let mut child = command
            .spawn()
            .expect("failed to start the grantmesh binary");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{name} did not say where it listens within 20 s"))
            .expect("reading stdout")
            .unwrap_or_else(|| panic!("{name} exited before listening"));
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from {name}: {line:?}"))
            .parse()
            .expect("a socket address");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Proc {
            child,
            addr,
            name: name.to_owned(),
        }
    }

    pub async fn registry(extra: &[&str]) -> Proc {
        // No warm-up: these tests watch a registry they have just started.
        let mut args = vec!["registry", "--listen", "127.0.0.1:0", "--warmup", "0s"];
        args.extend_from_slice(extra);
        Proc::start("registry", &args).await
    }

    /// A college or agency registered with `registries` (comma separated
    /// URLs). Unless `extra` names a `--database-url`, it uses a database
    /// shared by every process of this test binary.
    pub async fn member(role: &str, registries: &str, extra: &[&str]) -> Proc {
        let shared = shared_database().await;
        let mut args = vec![role, "--listen", "127.0.0.1:0", "--registry", registries];
        if !extra.contains(&"--database-url") {
            args.extend(["--database-url", shared.as_str()]);
        }
        args.extend_from_slice(extra);
        Proc::start(role, &args).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("process is running") as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("failed to signal the process");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait(mut self, within: Duration) -> Option<i32> {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {within:?}", self.name))
            .expect("waiting for the process");
        status.code()
    }
}

/// The live instances of `service` as the registry at `url` lists them.
pub async fn list(url: &str, service: &str) -> Vec<Instance> {
    let mut client = RegistryClient::connect(url.to_owned())
        .await
        .expect("connect to registry");
    let mut instances = client
        .list_instances(ListInstancesRequest {
            service: service.to_owned(),
        })
        .await
        .expect("ListInstances")
        .into_inner()
        .instances;
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    instances
}

pub async fn ids(url: &str, service: &str) -> Vec<String> {
    list(url, service).await.into_iter().map(|i| i.id).collect()
}

/// Follows `Watch` for a service; every event arrives with the moment it was received.
pub async fn watch(url: &str, service: &str) -> mpsc::UnboundedReceiver<(Instant, WatchEvent)> {
    let mut client = RegistryClient::connect(url.to_owned())
        .await
        .expect("connect to registry");
    let mut stream = client
        .watch(WatchRequest {
            service: service.to_owned(),
        })
        .await
        .expect("Watch")
        .into_inner();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(event)) = stream.message().await {
            if tx.send((Instant::now(), event)).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for the next watch event that satisfies `want`, at most `within`.
pub async fn next_event(
    events: &mut mpsc::UnboundedReceiver<(Instant, WatchEvent)>,
    within: Duration,
    want: impl Fn(&WatchEvent) -> bool,
) -> Option<(Instant, WatchEvent)> {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some((at, event))) if want(&event) => return Some((at, event)),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

/// Polls `check` until it returns true, failing the test after `within`.
pub async fn assert_eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A port that was free a moment ago, for a process that must come back on the same one.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn is_delete_of(id: &str) -> impl Fn(&WatchEvent) -> bool + '_ {
    move |e| {
        e.kind() == grantmesh_proto::v1::watch_event::Kind::Delete
            && e.instances.iter().any(|i| i.id == id)
    }
}

pub fn is_put_of(id: &str) -> impl Fn(&WatchEvent) -> bool + '_ {
    move |e| {
        e.kind() == grantmesh_proto::v1::watch_event::Kind::Put
            && e.instances.iter().any(|i| i.id == id)
    }
}

/// One database for every process this test binary starts without its own.
pub async fn shared_database() -> String {
    static DB: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DB.get_or_init(|| async {
        // Kept for the life of the test binary; the server is a throwaway one.
        let db = Box::leak(Box::new(db::TestDb::create().await));
        db.url.clone()
    })
    .await
    .clone()
}

/// Keys matching the ones test processes get.
pub fn keys() -> grantmesh_auth::Keys {
    grantmesh_auth::Keys::new(
        db::TOKEN_KEY.as_bytes(),
        db::SERVICE_KEY.as_bytes(),
        Duration::from_secs(3600),
    )
    .unwrap()
}

/// A College served in this process on a loopback port; registered with
/// `registry` when one is given.
pub async fn start_college(
    database_url: &str,
    instance_id: &str,
    day_length: Duration,
) -> grantmesh_server::RunningServer {
    start_college_in(database_url, instance_id, day_length, None).await
}

pub async fn start_college_in(
    database_url: &str,
    instance_id: &str,
    day_length: Duration,
    registry: Option<&str>,
) -> grantmesh_server::RunningServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut options = grantmesh_server::ServeOptions::new("grantmesh.v1.College");
    options.registration = registration(
        registry,
        "college",
        instance_id,
        &listener,
        Default::default(),
    );
    let config = grantmesh_college::CollegeConfig {
        instance_id: instance_id.to_owned(),
        day_length,
        keys: keys(),
        pool_size: 16,
    };
    let service = grantmesh_college::CollegeService::start(
        config,
        database_url,
        options.streams_closing.clone(),
    )
    .await
    .expect("the college starts");
    grantmesh_server::spawn(
        listener,
        tonic::service::Routes::new(service.into_server()),
        options,
    )
    .unwrap()
}

/// An Agency served in this process, registered with `registry`, calling the colleges registered there.
pub async fn start_agency(
    database_url: &str,
    registry: &str,
    name: &str,
    band: (i64, i64),
) -> grantmesh_server::RunningServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut options = grantmesh_server::ServeOptions::new("grantmesh.v1.Agency");
    let labels = [("agency".to_owned(), name.to_owned())].into();
    let instance_id = format!("agency-{name}");
    options.registration = registration(Some(registry), "agency", &instance_id, &listener, labels);
    let colleges = grantmesh_discovery::Balancer::new(
        vec![registry.to_owned()],
        "college",
        Default::default(),
    );
    let config = grantmesh_agency::AgencyConfig {
        instance_id,
        name: name.to_owned(),
        band,
        keys: keys(),
        pool_size: 8,
        open_timeout: Duration::from_secs(2),
        reconcile_every: Duration::from_millis(500),
    };
    let service = grantmesh_agency::AgencyService::start(
        config,
        database_url,
        colleges,
        options.streams_closing.clone(),
    )
    .await
    .expect("the agency starts");
    grantmesh_server::spawn(
        listener,
        tonic::service::Routes::new(service.into_server()),
        options,
    )
    .unwrap()
}

fn registration(
    registry: Option<&str>,
    service: &str,
    id: &str,
    listener: &tokio::net::TcpListener,
    labels: std::collections::HashMap<String, String>,
) -> Option<grantmesh_discovery::RegistrarOptions> {
    let registry = registry?;
    Some(grantmesh_discovery::RegistrarOptions {
        registries: vec![registry.to_owned()],
        instance: grantmesh_proto::v1::Instance {
            id: id.to_owned(),
            service: service.to_owned(),
            address: format!("http://{}", listener.local_addr().unwrap()),
            labels,
            ..Default::default()
        },
        heartbeat_interval: Duration::from_millis(500),
        ttl: Duration::from_secs(3),
    })
}

/// A request with `authorization: Bearer <token>`.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    grantmesh_auth::authorize(&mut request, token).unwrap();
    request
}
