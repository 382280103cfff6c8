//! Connecting grantmesh services to their central store: PostgreSQL, or an
//! embedded SQLite file for `grantmesh dev`.
//!
//! Every Agency and College instance shares one database. The URL picks it
//! ([`Database::parse`]): `postgres://…` or `postgresql://…` for PostgreSQL,
//! `sqlite:PATH` for a SQLite file (see [`sqlite`]). This crate holds what
//! the services need from either and nothing domain-specific:
//!
//! - [`connect`]: a `deadpool-postgres` pool, checked once at start-up so a
//!   missing or unreachable database is a clear start-up error;
//! - [`migrate`]: a service's versioned `refinery` migrations, run at
//!   start-up under an advisory lock so instances starting together do not
//!   race, each service with its own history table;
//! - [`Notifications`]: one `LISTEN` connection per instance while anyone
//!   subscribes, reconnecting by itself, fanned out to every local subscriber;
//! - [`status`]: the one mapping from database failures to gRPC statuses —
//!   a database that went away is `UNAVAILABLE` (retryable), never a panic.
//!
//! All three PostgreSQL connections honour the URL's `sslmode` and
//! `sslrootcert` as libpq does (`disable`, `prefer` — the default —,
//! `require`, `verify-ca`, `verify-full`), over rustls; see [`tls`]. For
//! example `postgres://gm@db.internal/grants?sslmode=verify-full&sslrootcert=/etc/grantmesh/db-ca.pem`
//! encrypts and checks that the server's certificate is for
//! `db.internal` and signed by that CA. A server without TLS under
//! `sslmode=require`, a rejected certificate or a missing root file is a
//! start-up error that says so.
//!
//! The [`sqlite`] module has the SQLite counterparts of the pool and the
//! migrations; [`Notifications::start`] serves both.

pub mod sqlite;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use futures::StreamExt as _;
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

pub use deadpool_postgres;
pub use deadpool_sqlite;
pub use refinery;
pub use rusqlite;
pub use tokio_postgres;
pub use tokio_postgres_rustls;

pub use tls::{PgConnect, RootCerts, SslMode};

/// What can go wrong setting up the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database URL is not valid: {0}")]
    BadUrl(#[source] tokio_postgres::Error),
    #[error("unsupported database URL: {0}")]
    UnsupportedUrl(String),
    #[error("failed to reach the database at {target}: {source}")]
    Unreachable {
        target: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("failed to migrate the database schema: {0}")]
    Migration(#[source] refinery::Error),
    #[error("failed to build the connection pool: {0}")]
    Pool(String),
    /// `sslmode`/`sslrootcert` in the URL cannot be honoured (bad value,
    /// missing or unreadable root file).
    #[error("invalid TLS settings in the database URL: {0}")]
    TlsConfig(String),
    /// The URL asks for TLS and the server offers none.
    #[error("the server at {target} does not support TLS (sslmode={ssl_mode})")]
    TlsUnsupported { target: String, ssl_mode: SslMode },
    /// The TLS handshake failed, usually on the server's certificate.
    #[error("certificate verify failed: {reason} (server {target}, sslmode={ssl_mode})")]
    CertificateRejected {
        target: String,
        ssl_mode: SslMode,
        reason: String,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which store a database URL names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// `postgres://…` or `postgresql://…`: the URL as given.
    Postgres(String),
    /// `sqlite:PATH`, `sqlite://PATH` or `sqlite:///abs/path`: the file.
    Sqlite(PathBuf),
}

impl Database {
    /// The store `url` names, or a start-up error naming the scheme.
    pub fn parse(url: &str) -> Result<Self> {
        let url = url.trim();
        let Some((scheme, _)) = url.split_once(':') else {
            return Err(StoreError::UnsupportedUrl(
                "the database URL has no scheme; use postgres://USER@HOST:PORT/DB or sqlite:PATH"
                    .into(),
            ));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Ok(Self::Postgres(url.to_owned())),
            "sqlite" => sqlite::parse_url(url).map(Self::Sqlite),
            other => Err(StoreError::UnsupportedUrl(format!(
                "scheme {other:?} is not supported; use postgres://USER@HOST:PORT/DB or sqlite:PATH"
            ))),
        }
    }
}

/// A pool of at most `max_size` connections, with one connection made and
/// checked before returning.
pub async fn connect(url: &str, max_size: usize) -> Result<Pool> {
    let target = PgConnect::parse(url)?;
    let manager = Manager::from_config(
        target.config.clone(),
        target.tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        // Hand out the most recently used connection: under light load the
        // same few backends stay warm instead of cycling through all of them.
        .queue_mode(deadpool_postgres::QueueMode::Lifo)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|err| StoreError::Pool(err.to_string()))?;
    let client = pool
        .get()
        .await
        .map_err(|err| target.explain(Box::new(err)))?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|err| target.explain(Box::new(err)))?;
    Ok(pool)
}

/// Runs `runner`'s migrations, recording them in `history_table`, while
/// holding a database-wide advisory lock.
pub async fn migrate(url: &str, mut runner: refinery::Runner, history_table: &str) -> Result<()> {
    let (mut client, connection) = PgConnect::parse(url)?.connect().await?;
    let driver = tokio::spawn(connection);
    // Any fixed number works as the lock id; this one spells "grantmsh".
    const LOCK: i64 = 0x6772_616e_746d_7368;
    let result = async {
        client
            .execute("SELECT pg_advisory_lock($1)", &[&LOCK])
            .await
            .map_err(|err| StoreError::Pool(format!("failed to take the migration lock: {err}")))?;
        let report = runner
            .set_migration_table_name(history_table)
            .run_async(&mut client)
            .await
            .map_err(StoreError::Migration)?;
        for migration in report.applied_migrations() {
            tracing::info!(
                version = migration.version(),
                name = migration.name(),
                "applied migration"
            );
        }
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&LOCK])
            .await;
        Ok(())
    }
    .await;
    drop(client);
    let _ = driver.await;
    result
}

/// The gRPC status for a failed database call. Connection trouble (the
/// database is down, restarting or out of connections) is `UNAVAILABLE`, so
/// clients retry; anything else is `INTERNAL`, logged with its details.
pub fn status(err: &(dyn std::error::Error + 'static)) -> tonic::Status {
    if let Some(err) = err.downcast_ref::<rusqlite::Error>()
        && sqlite::is_busy(err)
    {
        tracing::warn!(error = %err, "sqlite store busy");
        return tonic::Status::unavailable(
            "the central store is busy; retry shortly (with the same idempotency key)",
        );
    }
    if let Some(PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)) =
        err.downcast_ref::<PoolError>()
    {
        // The database is fine; this instance's connections are all busy.
        tracing::warn!("every store connection of this instance is busy");
        return tonic::Status::resource_exhausted(
            "this instance's store connections are all busy; retry shortly, or on another instance",
        );
    }
    if is_contention(err) {
        tracing::warn!(error = %err, "database contention");
        return tonic::Status::unavailable(
            "the central store could not order this call with concurrent ones; \
             retry shortly (with the same idempotency key)",
        );
    }
    if is_unavailable(err) {
        tracing::warn!(error = %err, "database unavailable");
        tonic::Status::unavailable("the central store is unavailable; retry shortly")
    } else {
        tracing::error!(error = %err, "database call failed");
        tonic::Status::internal("the central store failed to complete the call")
    }
}

/// Whether a database failure is PostgreSQL giving up on ordering
/// concurrent transactions (a serialization failure or a deadlock, SQLSTATE
/// 40001 and 40P01): nothing was applied, and the same call again succeeds.
pub fn is_contention(err: &(dyn std::error::Error + 'static)) -> bool {
    let err = match err.downcast_ref::<PoolError>() {
        Some(PoolError::Backend(err)) => err,
        Some(_) => return false,
        None => match err.downcast_ref::<tokio_postgres::Error>() {
            Some(err) => err,
            None => return false,
        },
    };
    err.code().is_some_and(|code| {
        *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// Whether a database failure is about reaching the database rather than
/// about the statement.
pub fn is_unavailable(err: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(pool) = err.downcast_ref::<PoolError>() {
        return match pool {
            PoolError::Backend(err) => is_unavailable(err),
            _ => true,
        };
    }
    if let Some(err) = err.downcast_ref::<rusqlite::Error>() {
        return sqlite::is_busy(err);
    }
    if err.downcast_ref::<deadpool_sqlite::PoolError>().is_some() {
        // No connection could be had or opened on the file in time.
        return true;
    }
    if let Some(err) = err.downcast_ref::<tokio_postgres::Error>() {
        return match err.code() {
            None => true, // I/O, closed connection, timeout: nothing the server said
            Some(code) => {
                code.code().starts_with("08") // connection exception
                    || *code == SqlState::ADMIN_SHUTDOWN
                    || *code == SqlState::CRASH_SHUTDOWN
                    || *code == SqlState::CANNOT_CONNECT_NOW
                    || *code == SqlState::TOO_MANY_CONNECTIONS
                    // The session bounds above: the statement waited or ran too long.
                    || *code == SqlState::QUERY_CANCELED
                    || *code == SqlState::LOCK_NOT_AVAILABLE
            }
        };
    }
    false
}

/// Longest a statement may run, and longest it may wait for a row lock,
/// unless the URL's `options` say otherwise. A statement stuck behind a
/// lock held elsewhere (or a caller that gave up) would otherwise hold a
/// pooled connection indefinitely, and unrelated calls would queue behind
/// it; bounded, it fails as UNAVAILABLE and the client retries with its
/// idempotency key. Far above any statement grantmesh runs (milliseconds).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(3);
/// TCP keepalives notice a database host that froze or vanished without
/// closing the connection.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// Applies the session bounds above to a connection's settings, and READ
/// COMMITTED as the session's isolation whatever the server's default (the
/// College's transactions also ask for it by name): the stores' lock-then-
/// read order relies on each statement seeing what committed before it.
pub(crate) fn bound_every_session(config: &mut tokio_postgres::Config) {
    if config.get_options().is_none() {
        config.options(format!(
            "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={} \
             -c default_transaction_isolation=read\\ committed",
            STATEMENT_TIMEOUT.as_millis(),
            LOCK_TIMEOUT.as_millis(),
            STATEMENT_TIMEOUT.as_millis() * 3
        ));
    }
    config.keepalives(true).keepalives_idle(KEEPALIVE_IDLE);
}

/// Whether a failure is a unique-constraint violation (for idempotent inserts).
pub fn is_unique_violation(err: &tokio_postgres::Error) -> bool {
    err.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// What a [`Notifications`] subscriber receives.
#[derive(Clone, Debug)]
pub enum Notice {
    /// A `NOTIFY` payload on the channel.
    Payload(String),
    /// The listening connection was lost and made again; notifications in
    /// between may have been missed, so subscribers should re-read.
    Reconnected,
}

/// Changes on a channel, fanned out to every subscriber in this process:
/// from one `LISTEN` connection on PostgreSQL, or from the instances in this
/// process that share a SQLite file (which [`publish`](Self::publish)).
///
/// On PostgreSQL the `LISTEN` connection is held only while someone
/// subscribes: a listening backend is woken, and this process too, for every
/// `NOTIFY` in the database (one per batch of withdrawals), which is wasted
/// work on an instance nobody watches through. It is made on the first
/// [`subscribe`](Self::subscribe) and closed once no subscriber has been
/// left for [`LISTEN_IDLE`].
#[derive(Clone)]
pub struct Notifications {
    sender: broadcast::Sender<Notice>,
    /// On PostgreSQL: the wish for a `LISTEN` connection and whether it is up.
    listener: Option<Arc<Listener>>,
}

/// Between [`Notifications::subscribe`] and the task holding the `LISTEN`
/// connection ([`listen`]).
struct Listener {
    /// Wakes the task when a subscriber arrives.
    wanted: tokio::sync::Notify,
    /// Whether `LISTEN` is in effect: a subscriber that saw `true` after it
    /// subscribed hears every notification committed from then on.
    up: tokio::sync::watch::Sender<bool>,
}

/// How long the `LISTEN` connection is kept with no subscriber.
pub const LISTEN_IDLE: Duration = Duration::from_secs(30);

/// How long [`Notifications::subscribe`] waits for the `LISTEN` connection.
pub const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// The `LISTEN` connection could not be made in [`LISTEN_WAIT`].
#[derive(Debug, thiserror::Error)]
#[error("the central store's change notifications are not available right now; retry shortly")]
pub struct NotListening;

impl Notifications {
    /// Notifications on `channel` of the store at `url`. On PostgreSQL this
    /// listens while anyone subscribes, until `stop` is cancelled,
    /// reconnecting as needed; on SQLite it joins the file's in-process
    /// fan-out ([`Self::in_process`]).
    pub fn start(url: &str, channel: &'static str, stop: CancellationToken) -> Result<Self> {
        match Database::parse(url)? {
            Database::Postgres(url) => {
                // Parsed here, so a bad URL or root file fails the start-up.
                let target = PgConnect::parse(&url)?;
                let (sender, _) = broadcast::channel(4096);
                let listener = Arc::new(Listener {
                    wanted: tokio::sync::Notify::new(),
                    up: tokio::sync::watch::Sender::new(false),
                });
                tokio::spawn(listen(
                    target,
                    channel,
                    sender.clone(),
                    Arc::clone(&listener),
                    stop,
                ));
                Ok(Self {
                    sender,
                    listener: Some(listener),
                })
            }
            Database::Sqlite(path) => {
                let path = path.canonicalize().unwrap_or(path);
                Ok(Self::in_process(&path, channel))
            }
        }
    }

    /// The process-wide fan-out of `channel` for the SQLite file at the
    /// canonical `path`: every instance in this process on that file shares
    /// it. Nothing crosses to other processes.
    pub fn in_process(path: &Path, channel: &str) -> Self {
        Self {
            sender: sqlite::fan_out(path, channel),
            listener: None,
        }
    }

    /// Sends `payload` to every subscriber in this process, as a
    /// PostgreSQL `NOTIFY` would; call it after the change committed.
    pub fn publish(&self, payload: String) {
        // No subscriber is not an error: nobody is watching.
        let _ = self.sender.send(Notice::Payload(payload));
    }

    /// A subscription that hears every change committed after this returns.
    /// On PostgreSQL it waits (at most [`LISTEN_WAIT`]) until the `LISTEN`
    /// connection is up.
    pub async fn subscribe(
        &self,
    ) -> std::result::Result<broadcast::Receiver<Notice>, NotListening> {
        let receiver = self.sender.subscribe();
        let Some(listener) = &self.listener else {
            return Ok(receiver);
        };
        listener.wanted.notify_one();
        let mut up = listener.up.subscribe();
        match tokio::time::timeout(LISTEN_WAIT, up.wait_for(|up| *up)).await {
            Ok(Ok(_)) => Ok(receiver),
            _ => Err(NotListening),
        }
    }
}

/// Holds the `LISTEN` connection of a [`Notifications`] while it has
/// subscribers, reconnecting when it is lost (and then telling subscribers
/// they may have missed something).
async fn listen(
    target: PgConnect,
    channel: &'static str,
    sender: broadcast::Sender<Notice>,
    listener: Arc<Listener>,
    stop: CancellationToken,
) {
    // Whether the last session ended for want of subscribers (nothing was
    // missed by anyone) rather than by a lost connection.
    let mut idle = true;
    loop {
        while sender.receiver_count() == 0 {
            tokio::select! {
                () = stop.cancelled() => return,
                () = listener.wanted.notified() => {}
                // A subscriber's wish may come before this task waits.
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let session = listen_session(&target, channel, &sender, &listener, idle);
        let ended = tokio::select! {
            () = stop.cancelled() => return,
            ended = session => ended,
        };
        listener.up.send_replace(false);
        match ended {
            Ok(true) => {
                idle = true;
                continue;
            }
            Ok(false) => idle = false,
            Err(err) => {
                idle = false;
                tracing::warn!(channel, error = %err, "notification connection lost; reconnecting");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One `LISTEN` connection, until it is lost (`Ok(false)` or an error) or
/// has had no subscriber for [`LISTEN_IDLE`] (`Ok(true)`). `idle`: the
/// previous one ended for want of subscribers, so nobody missed anything.
async fn listen_session(
    target: &PgConnect,
    channel: &'static str,
    sender: &broadcast::Sender<Notice>,
    listener: &Listener,
    idle: bool,
) -> std::result::Result<bool, BoxError> {
    let (client, mut connection) = target.connect().await?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {channel}");
    {
        let listen = client.batch_execute(&statement);
        let mut listen = std::pin::pin!(listen);
        // Drive the connection while LISTEN runs.
        loop {
            tokio::select! {
                result = &mut listen => { result?; break; }
                message = messages.next() => match message {
                    Some(Ok(_)) => {}
                    Some(Err(err)) => return Err(err.into()),
                    None => return Ok(false),
                },
            }
        }
    }
    listener.up.send_replace(true);
    if !idle {
        let _ = sender.send(Notice::Reconnected);
    }
    tracing::debug!(channel, "listening for notifications");
    let mut check = tokio::time::interval(LISTEN_IDLE);
    check.reset();
    let mut unwatched = false;
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(message) => {
                    if let AsyncMessage::Notification(note) = message? {
                        let _ = sender.send(Notice::Payload(note.payload().to_owned()));
                    }
                }
                None => return Ok(false),
            },
            _ = check.tick() => {
                // Down first, then counted: a subscriber that comes
                // after the count waits for the next connection.
                listener.up.send_replace(false);
                if sender.receiver_count() == 0 && unwatched {
                    tracing::debug!(channel, "no subscriber left; closing the listening connection");
                    return Ok(true);
                }
                unwatched = sender.receiver_count() == 0;
                listener.up.send_replace(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls_of_either_spelling_pick_postgresql() {
        for url in [
            "postgres://grantmesh@127.0.0.1:55432/grants",
            "postgresql://grantmesh@127.0.0.1/grants",
        ] {
            assert_eq!(
                Database::parse(url).unwrap(),
                Database::Postgres(url.into())
            );
        }
    }

    #[test]
    fn sqlite_urls_with_none_two_or_three_slashes_name_a_file() {
        for (url, path) in [
            ("sqlite:grantmesh.db", "grantmesh.db"),
            ("sqlite:dev/grantmesh.db", "dev/grantmesh.db"),
            ("sqlite://dev/grantmesh.db", "dev/grantmesh.db"),
            ("sqlite:///var/lib/grantmesh.db", "/var/lib/grantmesh.db"),
            ("sqlite:/var/lib/grantmesh.db", "/var/lib/grantmesh.db"),
        ] {
            assert_eq!(
                Database::parse(url).unwrap(),
                Database::Sqlite(PathBuf::from(path)),
                "{url}"
            );
        }
    }

    #[test]
    fn an_unsupported_scheme_is_named_in_the_error() {
        let err = Database::parse("mysql://root@localhost/grants").unwrap_err();
        assert!(err.to_string().contains("\"mysql\""), "{err}");
        let err = Database::parse("grantmesh.db").unwrap_err();
        assert!(err.to_string().contains("no scheme"), "{err}");
    }

    #[test]
    fn a_sqlite_url_without_a_file_or_in_memory_is_refused() {
        for url in [
            "sqlite:",
            "sqlite://",
            "sqlite::memory:",
            "sqlite:file:x.db?mode=ro",
        ] {
            let err = Database::parse(url).unwrap_err();
            assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{url}: {err}");
        }
    }
}

#[cfg(test)]
mod status_tests {
    use super::*;

    #[test]
    fn a_pool_with_every_connection_busy_is_resource_exhausted_not_unavailable() {
        let busy = PoolError::Timeout(deadpool_postgres::TimeoutType::Wait);
        assert_eq!(status(&busy).code(), tonic::Code::ResourceExhausted);
        let unreachable = PoolError::Timeout(deadpool_postgres::TimeoutType::Create);
        assert_eq!(status(&unreachable).code(), tonic::Code::Unavailable);
    }
}
