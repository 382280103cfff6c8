//! The embedded SQLite store that `grantmesh dev` runs on when no PostgreSQL
//! is given: one file shared by every Agency and College instance in the
//! process.
//!
//! What PostgreSQL does for the services, this module does for a file:
//!
//! - [`connect`]: a `deadpool-sqlite` pool on the file (created if missing),
//!   in WAL mode so readers never wait for the writer, with foreign keys on
//!   and a busy timeout on every connection. Every call runs on tokio's
//!   blocking pool through `interact`, never on a runtime thread.
//! - [`migrate`]: a service's `refinery` migrations, one service at a time
//!   per file in this process (and run again if another process raced it).
//! - live updates: there is no `LISTEN/NOTIFY`, so a process-wide fan-out
//!   keyed by the file's canonical path carries the same payloads from the
//!   instance that committed a change to every subscriber in this process
//!   (see [`crate::Notifications::in_process`]). Across processes the SQLite
//!   store gives no live updates; dev mode runs the whole mesh in one process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_sqlite::{Hook, HookError, Pool, Runtime};
use rusqlite::ErrorCode;
use tokio::sync::broadcast;

use crate::{Notice, Result, StoreError};

pub use deadpool_sqlite;
pub use rusqlite;

/// How long a statement waits for another connection's write lock before it
/// fails with `SQLITE_BUSY`. SQLite has one writer at a time and a write here
/// is a few milliseconds, so five seconds is hundreds of queued writers
/// (a 1,000-call retry storm fits); a call still waiting after that is told
/// to retry (`UNAVAILABLE`) rather than hang.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a call waits for a free pooled connection. Longer than
/// [`BUSY_TIMEOUT`]: the pool is small and every write queues for the one
/// write lock anyway, so waiting here is the same wait, not a hang.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// Set on every new connection. `foreign_keys`, `busy_timeout` and
/// `synchronous` are per-connection in SQLite. `synchronous = FULL`: in WAL
/// mode every commit syncs the log before it returns, so an acknowledged
/// withdrawal survives a power cut. (`NORMAL`, SQLite's usual pairing with
/// WAL, syncs only at checkpoints: a power cut can lose the last commits,
/// which a ledger that has already answered "applied" must not.) What it
/// costs is measured in docs/benchmarks.md.
pub const SYNCHRONOUS: &str = "FULL";

fn connection_pragmas() -> String {
    format!(
        "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {}; PRAGMA synchronous = {SYNCHRONOUS};",
        BUSY_TIMEOUT.as_millis()
    )
}

/// A pool on one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    /// Connections on the file; calls run on tokio's blocking pool.
    pub pool: Pool,
    /// The file's canonical path: the key of its in-process notifications.
    pub path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Where `sqlite:PATH`, `sqlite://PATH` or `sqlite:///abs/path` points.
pub(crate) fn parse_url(url: &str) -> Result<PathBuf> {
    let rest = url
        .strip_prefix("sqlite:")
        .ok_or_else(|| StoreError::UnsupportedUrl(format!("{url:?} is not a sqlite: URL")))?;
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Err(StoreError::UnsupportedUrl(
            "the sqlite: URL names no file; use sqlite:PATH, e.g. sqlite:grantmesh.db".into(),
        ));
    }
    if path == ":memory:" || path.starts_with("file:") || path.contains('?') {
        // Each pooled connection would open its own in-memory database.
        return Err(StoreError::UnsupportedUrl(format!(
            "sqlite URL {url:?} is not supported: name a file, e.g. sqlite:grantmesh.db"
        )));
    }
    Ok(PathBuf::from(path))
}

/// A pool of at most `max_size` connections on the file at `path`, created
/// (with its folder) if missing, switched to WAL mode and checked once.
pub async fn connect(path: &Path, max_size: usize) -> Result<SqliteStore> {
    let unreachable = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Unreachable {
        target: path.display().to_string(),
        source,
    };
    let opened = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    // Services of this process opening the file together take turns: the
    // switch to WAL needs the file to itself, and SQLite answers BUSY at once
    // (without waiting out the busy timeout) when two connections race for it.
    let lock = file_lock(&opened);
    let _held = lock.lock().await;
    let canonical = tokio::task::spawn_blocking(move || -> Result<PathBuf, rusqlite::Error> {
        if let Some(folder) = opened.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder).map_err(|err| {
                rusqlite::Error::InvalidPath(PathBuf::from(format!("{}: {err}", folder.display())))
            })?;
        }
        // A new file is readable by its owner only (the ledger and the
        // password hashes are in it); SQLite gives its -wal and -shm files
        // the same mode.
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&opened)
            {
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => {
                    return Err(rusqlite::Error::InvalidPath(PathBuf::from(format!(
                        "{}: {err}",
                        opened.display()
                    ))));
                }
            }
        }
        let conn = rusqlite::Connection::open(&opened)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Persistent in the file: set once, every later connection sees it.
        // Another process may hold the file for a moment: try again, within the busy timeout.
        let started = std::time::Instant::now();
        let mode: String = loop {
            match conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)) {
                Err(err) if is_busy(&err) && started.elapsed() < BUSY_TIMEOUT => {
                    std::thread::sleep(WAL_SWITCH_RETRY_AFTER);
                }
                result => break result?,
            }
        };
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %opened.display(), mode, "sqlite store is not in WAL mode");
        }
        Ok(opened.canonicalize().unwrap_or(opened))
    })
    .await
    .map_err(|err| unreachable(Box::new(err)))?
    .map_err(|err| unreachable(Box::new(err)))?;

    let pragmas = connection_pragmas();
    let pool = deadpool_sqlite::Config::new(&canonical)
        .builder(Runtime::Tokio1)
        .map_err(|err| StoreError::Pool(err.to_string()))?
        .max_size(max_size)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(BUSY_TIMEOUT))
        .recycle_timeout(Some(BUSY_TIMEOUT))
        .post_create(Hook::async_fn(move |conn, _| {
            let pragmas = pragmas.clone();
            Box::pin(async move {
                conn.interact(move |conn| conn.execute_batch(&pragmas))
                    .await
                    .map_err(|err| HookError::Message(err.to_string().into()))?
                    .map_err(HookError::Backend)
            })
        }))
        .build()
        .map_err(|err| StoreError::Pool(err.to_string()))?;
    let conn = pool.get().await.map_err(|err| unreachable(Box::new(err)))?;
    conn.interact(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
        .await
        .map_err(|err| StoreError::Pool(err.to_string()))?
        .map_err(|err| unreachable(Box::new(err)))?;
    Ok(SqliteStore {
        pool,
        path: canonical,
    })
}

/// How long to wait before asking again for the file to switch it to WAL.
const WAL_SWITCH_RETRY_AFTER: Duration = Duration::from_millis(20);

/// How often a migration that failed is run again. Within this process
/// services migrate one at a time; another process migrating the same file
/// at the same moment can make one run fail on a table the other just
/// created. Each migration is one transaction (SQLite's DDL is
/// transactional), so the loser rolled back and its next run finds the
/// winner's work recorded and does nothing.
const MIGRATION_ATTEMPTS: usize = 3;

/// How long to wait before running a failed migration again.
const MIGRATION_RETRY_AFTER: Duration = Duration::from_millis(200);

/// Runs `runner`'s migrations on the store, recording them in
/// `history_table`. Services sharing the file in this process migrate one
/// at a time (refinery's first step, creating its table, would race).
pub async fn migrate(
    store: &SqliteStore,
    runner: refinery::Runner,
    history_table: &str,
) -> Result<()> {
    let lock = file_lock(&store.path);
    let _held = lock.lock().await;
    let runner = Arc::new(Mutex::new(runner));
    let mut attempt = 1;
    let report = loop {
        let conn = store
            .pool
            .get()
            .await
            .map_err(|err| StoreError::Pool(err.to_string()))?;
        let history_table = history_table.to_owned();
        let runner = runner.clone();
        let run = conn
            .interact(move |conn| {
                runner
                    .lock()
                    .expect("migration runner poisoned")
                    .set_migration_table_name(history_table)
                    .run(conn)
            })
            .await
            .map_err(|err| StoreError::Pool(err.to_string()))?;
        match run {
            Ok(report) => break report,
            Err(err) if attempt < MIGRATION_ATTEMPTS => {
                tracing::warn!(error = %err, attempt, "sqlite migration failed; running it again");
                attempt += 1;
                tokio::time::sleep(MIGRATION_RETRY_AFTER).await;
            }
            Err(err) => return Err(StoreError::Migration(err)),
        }
    };
    for migration in report.applied_migrations() {
        tracing::info!(
            version = migration.version(),
            name = migration.name(),
            "applied migration"
        );
    }
    Ok(())
}

/// One migration lock per file in this process.
fn file_lock(path: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    LOCKS
        .get_or_init(Default::default)
        .lock()
        .expect("migration lock table poisoned")
        .entry(path.to_owned())
        .or_default()
        .clone()
}

/// How many notices a slow subscriber may fall behind before it is told it
/// lagged (and re-reads a snapshot): the same as the PostgreSQL listener.
const FAN_OUT_CAPACITY: usize = 4096;

/// The process-wide fan-out of one file's notices on one channel.
pub(crate) fn fan_out(path: &Path, channel: &str) -> broadcast::Sender<Notice> {
    type Senders = HashMap<(PathBuf, String), broadcast::Sender<Notice>>;
    static SENDERS: OnceLock<Mutex<Senders>> = OnceLock::new();
    SENDERS
        .get_or_init(Default::default)
        .lock()
        .expect("notification table poisoned")
        .entry((path.to_owned(), channel.to_owned()))
        .or_insert_with(|| broadcast::channel(FAN_OUT_CAPACITY).0)
        .clone()
}

/// Whether SQLite refused for lack of the lock (after the busy timeout):
/// safe to retry.
pub fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Whether a failure is a unique-constraint violation.
pub fn is_unique_violation(err: &rusqlite::Error) -> bool {
    extended_code(err) == Some(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

/// Whether a failure is a foreign-key violation.
pub fn is_foreign_key_violation(err: &rusqlite::Error) -> bool {
    extended_code(err) == Some(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
}

fn extended_code(err: &rusqlite::Error) -> Option<i32> {
    err.sqlite_error().map(|err| err.extended_code)
}

/// Milliseconds since the Unix epoch: how the SQLite stores write times.
pub fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A time an SQLite store wrote, in milliseconds since the Unix epoch.
pub fn time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The store's clock in SQL, in milliseconds since the Unix epoch: the one
/// clock every SQLite statement that stamps or compares times reads (SQLite
/// reads it once per statement). A macro so it can stand inside `concat!`.
#[macro_export]
macro_rules! sqlite_now_ms {
    () => {
        "CAST(unixepoch('subsec') * 1000 AS INTEGER)"
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_store_file_and_its_journal_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let store = connect(&path, 1).await.unwrap();
        let conn = store.pool.get().await.unwrap();
        conn.interact(|conn| conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);"))
            .await
            .unwrap()
            .unwrap();
        for file in ["ledger.db", "ledger.db-wal"] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap_or_else(|err| panic!("{file}: {err}"))
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}: {mode:o}");
        }
    }

    /// Defect 7 of issue 18: the embedded store ran `synchronous = NORMAL`,
    /// under which an acknowledged commit can be lost to a power cut. Every
    /// connection the pool hands out must sync each commit (FULL, 2) in WAL.
    #[tokio::test]
    async fn every_pooled_connection_syncs_each_commit_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store = connect(&dir.path().join("durable.db"), 3).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(store.pool.get().await.unwrap());
        }
        for conn in &held {
            let (synchronous, journal): (i64, String) = conn
                .interact(|conn| {
                    Ok::<_, rusqlite::Error>((
                        conn.query_row("PRAGMA synchronous", [], |row| row.get(0))?,
                        conn.query_row("PRAGMA journal_mode", [], |row| row.get(0))?,
                    ))
                })
                .await
                .unwrap()
                .unwrap();
            assert_eq!((synchronous, journal.as_str()), (2, "wal"));
        }
    }
}
