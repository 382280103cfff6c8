//! PostgreSQL over TLS against real servers: each test starts its own
//! throwaway PostgreSQL (the machine's binaries, as `scripts/postgres` finds
//! them) in a temporary directory on a free port, with a CA and a server
//! certificate made here by `rcgen`, and stops it when the test ends, also
//! when it panics ([`Server`]'s `Drop`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use grantmesh_store::{Notice, Notifications, SslMode, StoreError};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio_util::sync::CancellationToken;

/// How long a server gets to start (`pg_ctl -w -t`): initdb'd clusters
/// start in well under a second, but the machine is shared by several
/// builds.
const START_TIMEOUT_SECS: u32 = 60;

/// How long a notification may take to arrive over the `LISTEN`
/// connection, which connects in the background after `start` returns.
const NOTIFY_DEADLINE: Duration = Duration::from_secs(20);

/// A CA and a server certificate it signed, for `localhost` and 127.0.0.1.
struct Certs {
    ca_pem: String,
    server_pem: String,
    server_key_pem: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn certs() -> Certs {
    let ca = ca("grantmesh test CA");
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let server = params.signed_by(&key, &*ca).unwrap();
    Certs {
        ca_pem: ca.pem(),
        server_pem: server.pem(),
        server_key_pem: key.serialize_pem(),
    }
}

fn postgres_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("pg_ctl").is_file())
        .collect();
    dirs.sort();
    dirs.pop().expect(
        "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin; \
         `scripts/postgres start` installs them",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// Runs a server binary as the `postgres` user when we are root (initdb and
/// postgres refuse to run as root), with no inherited output: the server
/// pg_ctl starts would otherwise hold our pipes open.
fn run_as_owner(program: &Path, args: &[&str]) {
    let mut command = if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    };
    let status = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{} {args:?} failed", program.display());
}

fn chown_to_postgres(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A throwaway PostgreSQL server, stopped when dropped.
struct Server {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// Holds the CA file and the other CA's file for the tests' URLs.
    dir: tempfile::TempDir,
    _cluster: tempfile::TempDir,
}

impl Server {
    /// A server with `ssl = on` and `certs`, or `ssl = off` without.
    fn start(certs: Option<&Certs>) -> Self {
        let bin = postgres_bin();
        let cluster = tempfile::Builder::new()
            .prefix("grantmesh-pgtls-")
            .tempdir()
            .unwrap();
        chown_to_postgres(cluster.path());
        let data = cluster.path().join("data");
        run_as_owner(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "grantmesh",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        let port = free_port();
        let mut conf = format!(
            "listen_addresses = '127.0.0.1,127.0.0.2'\n\
             port = {port}\n\
             unix_socket_directories = '{}'\n\
             max_connections = 20\n\
             shared_buffers = 16MB\n\
             fsync = off\n",
            data.display()
        );
        if let Some(certs) = certs {
            std::fs::write(data.join("server.crt"), &certs.server_pem).unwrap();
            std::fs::write(data.join("server.key"), &certs.server_key_pem).unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        } else {
            conf.push_str("ssl = off\n");
        }
        append(&data.join("postgresql.conf"), &conf);
        // 127.0.0.2 is a second loopback name the certificate does not list.
        append(
            &data.join("pg_hba.conf"),
            "host all all 127.0.0.0/8 trust\n",
        );
        chown_to_postgres(&data);
        let server = Self {
            bin,
            data,
            port,
            dir: tempfile::tempdir().unwrap(),
            _cluster: cluster,
        };
        run_as_owner(
            &server.bin.join("pg_ctl"),
            &[
                "-D",
                server.data.to_str().unwrap(),
                "-l",
                server.data.join("server.log").to_str().unwrap(),
                "-w",
                "-t",
                &START_TIMEOUT_SECS.to_string(),
                "start",
            ],
        );
        if let Some(certs) = certs {
            std::fs::write(server.ca_file(), &certs.ca_pem).unwrap();
        }
        server
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A CA that did not sign the server's certificate.
    fn other_ca_file(&self) -> PathBuf {
        let path = self.dir.path().join("other-ca.pem");
        std::fs::write(&path, ca("some other CA").pem()).unwrap();
        path
    }

    fn url(&self, host: &str, params: &str) -> String {
        format!(
            "postgres://grantmesh@{host}:{}/postgres?{params}",
            self.port
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new(if is_root() { "runuser" } else { "env" })
            .args(if is_root() {
                vec!["-u", "postgres", "--"]
            } else {
                vec![]
            })
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "-w"])
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// Whether the pool's connection to `url` is encrypted, as the server sees it.
async fn connection_is_encrypted(url: &str) -> bool {
    let pool = grantmesh_store::connect(url, 1).await.unwrap();
    let client = pool.get().await.unwrap();
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn require_encrypts_the_connection_without_checking_the_certificate() {
    let server = Server::start(Some(&certs()));
    // No root file: like libpq, `require` accepts any certificate.
    assert!(connection_is_encrypted(&server.url("127.0.0.1", "sslmode=require")).await);
}

#[tokio::test]
async fn verify_full_with_the_servers_ca_connects_by_name_and_by_address() {
    let server = Server::start(Some(&certs()));
    for host in ["localhost", "127.0.0.1"] {
        let url = server.url(
            host,
            &format!(
                "sslmode=verify-full&sslrootcert={}",
                server.ca_file().display()
            ),
        );
        assert!(connection_is_encrypted(&url).await, "{host}");
    }
}

#[tokio::test]
async fn verify_full_with_another_ca_is_refused_with_a_clear_error() {
    let server = Server::start(Some(&certs()));
    let url = server.url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            server.other_ca_file().display()
        ),
    );
    let err = grantmesh_store::connect(&url, 1).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::CertificateRejected {
                ssl_mode: SslMode::VerifyFull,
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with("certificate verify failed: the server's certificate is not signed by a CA in sslrootcert "),
        "{message}"
    );
}

#[tokio::test]
async fn verify_full_refuses_a_host_name_the_certificate_does_not_list_and_verify_ca_accepts_it() {
    let server = Server::start(Some(&certs()));
    let ca = server.ca_file();
    let full = server.url(
        "127.0.0.2",
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let err = grantmesh_store::connect(&full, 1).await.unwrap_err();
    assert!(
        err.to_string().contains(
            "certificate verify failed: the server's certificate is not valid for the host name 127.0.0.2"
        ),
        "{err}"
    );
    let chain_only = server.url(
        "127.0.0.2",
        &format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
    );
    assert!(connection_is_encrypted(&chain_only).await);
}

#[tokio::test]
async fn require_with_a_root_file_checks_the_chain_as_libpq_does() {
    let server = Server::start(Some(&certs()));
    let url = server.url(
        "localhost",
        &format!(
            "sslmode=require&sslrootcert={}",
            server.other_ca_file().display()
        ),
    );
    let err = grantmesh_store::connect(&url, 1).await.unwrap_err();
    assert!(
        matches!(err, StoreError::CertificateRejected { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn disable_still_connects_in_plaintext() {
    let server = Server::start(Some(&certs()));
    assert!(!connection_is_encrypted(&server.url("127.0.0.1", "sslmode=disable")).await);
}

#[tokio::test]
async fn without_sslmode_tls_is_used_when_offered_and_plaintext_otherwise() {
    let tls = Server::start(Some(&certs()));
    let plain = Server::start(None);
    assert!(connection_is_encrypted(&tls.url("127.0.0.1", "application_name=gm")).await);
    assert!(!connection_is_encrypted(&plain.url("127.0.0.1", "application_name=gm")).await);
}

#[tokio::test]
async fn require_against_a_server_without_tls_fails_clearly() {
    let server = Server::start(None);
    let err = grantmesh_store::connect(&server.url("127.0.0.1", "sslmode=require"), 1)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TlsUnsupported {
                ssl_mode: SslMode::Require,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with("does not support TLS (sslmode=require)"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_sslrootcert_is_a_start_up_error_naming_the_file() {
    let server = Server::start(Some(&certs()));
    let url = server.url(
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    );
    let err = grantmesh_store::connect(&url, 1).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("sslrootcert /nonexistent/ca.pem does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn migrations_run_over_verified_tls() {
    let server = Server::start(Some(&certs()));
    let url = server.url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            server.ca_file().display()
        ),
    );
    let runner = refinery::Runner::new(&[refinery::Migration::unapplied(
        "V1__grants",
        "CREATE TABLE grants (id bigint PRIMARY KEY)",
    )
    .unwrap()]);
    grantmesh_store::migrate(&url, runner, "tls_test_history")
        .await
        .unwrap();
    let pool = grantmesh_store::connect(&url, 1).await.unwrap();
    let client = pool.get().await.unwrap();
    let applied: i64 = client
        .query_one("SELECT count(*) FROM tls_test_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 1);
}

#[tokio::test]
async fn notifications_arrive_over_a_verified_tls_connection() {
    let server = Server::start(Some(&certs()));
    let url = server.url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            server.ca_file().display()
        ),
    );
    let stop = CancellationToken::new();
    let notifications = Notifications::start(&url, "tls_test", stop.clone()).unwrap();
    let mut received = notifications.subscribe().await.unwrap();
    let pool = grantmesh_store::connect(&url, 1).await.unwrap();
    let client = pool.get().await.unwrap();
    // The LISTEN connection is made in the background: notify until it hears.
    let deadline = tokio::time::Instant::now() + NOTIFY_DEADLINE;
    let payload = loop {
        client
            .batch_execute("NOTIFY tls_test, 'grant-42'")
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_millis(200), received.recv()).await {
            Ok(Ok(Notice::Payload(payload))) => break payload,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "no notification within {NOTIFY_DEADLINE:?}"
            ),
        }
    };
    assert_eq!(payload, "grant-42");
    let (listeners, all_encrypted): (i64, Option<bool>) = {
        let row = client
            .query_one(
                "SELECT count(*), bool_and(s.ssl) FROM pg_stat_activity a \
                 JOIN pg_stat_ssl s USING (pid) WHERE a.query = 'LISTEN tls_test'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(listeners, 1);
    assert_eq!(all_encrypted, Some(true));
    stop.cancel();
}
