//! Test support: meshes started in this process ([`sandbox`]) or as child
//! processes of the real `grantmesh` binary ([`Proc`]), registry watchers,
//! and bounded polling.

#![allow(dead_code)]

pub mod db;
pub mod sandbox;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use grantmesh_node::process::ChildNode;
use grantmesh_proto::RegistryClient;
use grantmesh_proto::v1::{
    Instance, ListInstancesRequest, RegisterRequest, WatchEvent, WatchRequest,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A running `grantmesh` process; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub name: String,
    /// Whether it serves TLS (it was given `--tls-dir`).
    pub tls: bool,
}

impl Proc {
    /// Starts `grantmesh ARGS…` and waits for its "listening on" line. A
    /// college or agency given `--tls-dir` of a test CA gets the certificate
    /// naming it there first (`college/<--instance-id>`, `agency/<--name>`).
    pub async fn start(name: &str, args: &[&str]) -> Proc {
        let flag = |flag: &str| {
            args.iter()
                .position(|arg| *arg == flag)
                .and_then(|at| args.get(at + 1))
                .copied()
        };
        if let Some(dir) = flag("--tls-dir")
            && Path::new(dir).join("ca.key").exists()
        {
            let member = match args.first() {
                Some(&"college") => flag("--instance-id").map(|id| format!("college/{id}")),
                Some(&"agency") => Some(format!(
                    "agency/{}",
                    flag("--name").unwrap_or("grantmesh-agency")
                )),
                _ => None,
            };
            if let Some(member) = member {
                tls::issue_in(Path::new(dir), &member);
            }
        }
        let node = ChildNode::spawn(
            Path::new(env!("CARGO_BIN_EXE_grantmesh")),
            name,
            args,
            |command| {
                // Plaintext where TLS is not the point; the security tests
                // give their processes --tls-dir.
                if !args.contains(&"--tls-dir") {
                    command.env("GRANTMESH_INSECURE", "1");
                }
                // Colleges sign with the test token key, agencies verify
                // with its public half. Colleges mail into the test binary's
                // outbox unless told otherwise.
                match args.first() {
                    Some(&"college") => {
                        command.env("GRANTMESH_TOKEN_KEY_FILE", tls::dir().join("token.key"));
                        if !args.contains(&"--smtp-url") && !args.contains(&"--mail-outbox") {
                            command.env("GRANTMESH_MAIL_OUTBOX", outbox());
                        }
                    }
                    Some(&"agency") => {
                        command.env(
                            "GRANTMESH_TOKEN_PUBLIC_KEY_FILE",
                            tls::dir().join("token.pub"),
                        );
                    }
                    _ => {}
                }
                command
                    .env_remove("GRANTMESH_REGISTRY")
                    .env_remove("DATABASE_URL")
                    .env(
                        "GRANTMESH_LOG",
                        std::env::var("GRANTMESH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
                    );
                if std::env::var_os("GRANTMESH_TEST_LOG").is_none() {
                    command.stderr(Stdio::null());
                }
            },
        )
        .await
        .unwrap_or_else(|err| panic!("{err:#}"));
        Proc {
            child: node.child,
            addr: node.addr,
            name: node.name,
            tls: args.contains(&"--tls-dir"),
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
        // Colleges know the agency the multi-process tests start, `nsf`,
        // whose band is 3,000.00 to 5,000.00 (minor units 300000..500000)
        // unless a test says otherwise.
        if role == "college" && !extra.contains(&"--agencies") {
            args.extend(["--agencies", "nsf=300000..500000"]);
        }
        if role == "agency" && !extra.contains(&"--min-award") {
            args.extend(["--min-award", "300000", "--max-award", "500000"]);
        }
        args.extend_from_slice(extra);
        Proc::start(role, &args).await
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
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

/// The outbox every college of this test binary mails into (in-process
/// ones and child processes alike), unless a test gives another.
pub fn outbox() -> &'static Path {
    static OUTBOX: std::sync::LazyLock<tempfile::TempDir> = std::sync::LazyLock::new(|| {
        tempfile::Builder::new()
            .prefix("grantmesh-test-mail-")
            .tempdir()
            .unwrap()
    });
    OUTBOX.path()
}

/// The newest code mailed to `email` in `outbox`, waited for (a college
/// mails a moment after it answers).
pub async fn mailed_code_in(outbox: &Path, email: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let letter = grantmesh_mail::outbox::latest_to(outbox, email).unwrap();
        if let Some(code) = letter.and_then(|l| grantmesh_auth::signup::code_in(&l.body)) {
            return code;
        }
        assert!(
            Instant::now() < deadline,
            "no code for {email} reached {} within 15 s",
            outbox.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The newest code mailed to `email` in this test binary's [`outbox`].
pub async fn mailed_code(email: &str) -> String {
    mailed_code_in(outbox(), email).await
}

/// Signs `name <email>` up at `college` with `password` and verifies the
/// email with the code mailed to it: the session VerifyEmail opened.
pub async fn sign_up(
    college: &mut grantmesh_proto::CollegeClient<tonic::transport::Channel>,
    name: &str,
    email: &str,
    password: &str,
) -> grantmesh_proto::v1::LoginReply {
    let signed_up = college
        .register_researcher(grantmesh_proto::v1::RegisterResearcherRequest {
            name: name.into(),
            email: email.into(),
            password: password.into(),
        })
        .await
        .unwrap_or_else(|status| panic!("sign-up of {email}: {status:?}"))
        .into_inner();
    assert!(signed_up.researcher_id.is_empty(), "sign-up names no id");
    let code = mailed_code(email).await;
    college
        .verify_email(grantmesh_proto::v1::VerifyEmailRequest {
            email: email.into(),
            code,
            password: password.into(),
        })
        .await
        .unwrap_or_else(|status| panic!("verifying {email}: {status:?}"))
        .into_inner()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The bin directory of the Python tool environment (python, grpcurl).
/// Prepared once per test binary: preparing it regenerates the stubs, which
/// must not happen under a test that is using them.
pub async fn python_env_bin() -> PathBuf {
    static BIN: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    BIN.get_or_init(|| async {
        let output = tokio::process::Command::new(repo_root().join("scripts/python-env"))
            .output()
            .await
            .expect("scripts/python-env runs");
        assert!(
            output.status.success(),
            "scripts/python-env failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        PathBuf::from(stdout.lines().last().expect("a bin directory").trim())
    })
    .await
    .clone()
}

/// The live instances of `service` as the registry at `url` lists them.
pub async fn list(url: &str, service: &str) -> Vec<Instance> {
    let mut client = RegistryClient::new(tls::channel(url).await);
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
    let mut client = RegistryClient::new(tls::channel(url).await);
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

/// The colleges' token keys: test processes and in-process colleges sign with them.
pub fn keys() -> grantmesh_auth::Keys {
    static KEYS: std::sync::OnceLock<grantmesh_auth::Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let pem = std::fs::read(tls::dir().join("token.key")).expect("the test token key");
        grantmesh_auth::Keys::signing(&pem, grantmesh_auth::tokens::MAX_TOKEN_TTL).unwrap()
    })
    .clone()
}

/// The agencies' token keys: the public half of [`keys`].
pub fn agency_keys() -> grantmesh_auth::Keys {
    let pem = std::fs::read(tls::dir().join("token.pub")).expect("the test token public key");
    grantmesh_auth::Keys::verifying(&pem).unwrap()
}

/// A token of `researcher` in a session of its own, signed with the test colleges' key.
pub fn token_of(researcher: uuid::Uuid) -> String {
    keys()
        .researcher_token(researcher, uuid::Uuid::new_v4())
        .unwrap()
        .0
}

/// A credential of agency `agency` for `open`, signed with the key of its
/// test certificate (issued now if need be), as that agency signs one.
pub fn agency_credential(agency: &str, open: &grantmesh_proto::v1::OpenAccountRequest) -> String {
    let stem = tls::member(&format!("agency/{agency}"));
    let (_, key) = grantmesh_discovery::tls::ca::leaf_files(tls::dir(), &stem);
    grantmesh_auth::AgencySigner::new(key)
        .credential(
            agency,
            &grantmesh_auth::AccountTerms {
                proposal: &open.proposal_id,
                award: open.award_minor,
                principal_investigator: &open.principal_investigator_id,
                duration_days: open.duration_days,
                // As the college reads an OpenAccount that names none.
                currency: if open.currency.is_empty() {
                    "USD"
                } else {
                    &open.currency
                },
            },
        )
        .unwrap()
}

/// A request with `authorization: Bearer <token>`.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    grantmesh_auth::authorize(&mut request, token).unwrap();
    request
}

/// A registration of `service` instance `id` at `address`, as one registers
/// by hand; `ttl` when given.
pub fn registration(
    service: &str,
    id: &str,
    address: &str,
    ttl: Option<Duration>,
) -> RegisterRequest {
    RegisterRequest {
        instance: Some(Instance {
            id: id.into(),
            service: service.into(),
            address: address.into(),
            ttl: ttl.and_then(|ttl| prost_types::Duration::try_from(ttl).ok()),
            ..Default::default()
        }),
    }
}

/// A college `id` at `address`, registered by hand.
pub fn college_at(id: &str, address: &str) -> RegisterRequest {
    registration("college", id, address, None)
}
