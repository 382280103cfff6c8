//! One conformance suite for the central store, run against both backends.
//!
//! Each check is written once, as a function taking a store URL, and the
//! [`conformance!`] macro runs it twice: `postgres::<check>` on a fresh
//! PostgreSQL database made from `GRANTMESH_TEST_DATABASE_URL` (dropped
//! afterwards), and `sqlite::<check>` on a SQLite file in a temporary folder.
//! Whatever PostgreSQL promises the College and the Agency, the embedded
//! SQLite store must promise too: the same answers, the same errors.
//!
//! Without `GRANTMESH_TEST_DATABASE_URL` the PostgreSQL half fails, saying
//! how to set it; it never passes silently.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use grantmesh_agency::store::{NewProposal, ProposalStore};
use grantmesh_college::store::{
    AccountRow, AccountStore, Begun, Credential, Finished, NewAccount, PendingSignup, Refreshed,
    ResearcherRow, StoreError, USED_CREDENTIAL_MARGIN,
};
use grantmesh_store::{Notice, Notifications};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A day as long as a real one, for tests where nothing should expire.
const REAL_DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Connections each test's store may hold: enough for the concurrency tests
/// to contend, few enough that many tests can share one PostgreSQL server.
const POOL_SIZE: usize = 16;

/// How long a test waits for something that settles asynchronously (a
/// notification, an expiry) before failing.
const SETTLE: Duration = Duration::from_secs(10);

/// How often a test client retries a call the store answered with
/// `UNAVAILABLE` (contention), as a real client with the same key would.
const RETRIES: usize = 50;

// ---------------------------------------------------------------------------
// The two stores under test.

/// A store that lives as long as this value: a fresh PostgreSQL database, or
/// a SQLite file in a temporary folder.
struct TestStore {
    url: String,
    kind: Kind,
}

enum Kind {
    Postgres {
        server: String,
        name: String,
    },
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
}

impl TestStore {
    async fn postgres() -> Self {
        let server = std::env::var("GRANTMESH_TEST_DATABASE_URL").unwrap_or_else(|_| {
            panic!(
                "GRANTMESH_TEST_DATABASE_URL is not set, so the PostgreSQL half of the conformance \
                 suite cannot run. Start a throwaway server and point the tests at it:\n    \
                 export GRANTMESH_TEST_DATABASE_URL=$(scripts/postgres start | tail -1)"
            )
        });
        let name = format!("gm_test_conformance_{}", Uuid::new_v4().simple());
        let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
            .await
            .expect("connect to the test PostgreSQL server");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        let (base, _) = server.rsplit_once('/').expect("a URL ending in /database");
        Self {
            url: format!("{base}/{name}"),
            kind: Kind::Postgres { server, name },
        }
    }

    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        // A folder that does not exist yet: the store creates it and the file.
        let path = dir.path().join("dev").join("grantmesh.db");
        Self {
            url: format!("sqlite:{}", path.display()),
            kind: Kind::Sqlite { _dir: dir, path },
        }
    }

    /// Runs `sql` on the store behind the services' back, as an operator or
    /// an attacker with a database shell could.
    async fn execute(&self, sql: &str) -> Result<u64, String> {
        match &self.kind {
            Kind::Postgres { .. } => {
                let (client, connection) =
                    tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                        .await
                        .expect("connect to the test database");
                tokio::spawn(connection);
                client.execute(sql, &[]).await.map_err(|err| {
                    err.as_db_error()
                        .map(|db| db.message().to_owned())
                        .unwrap_or_else(|| err.to_string())
                })
            }
            Kind::Sqlite { path, .. } => {
                let conn = rusqlite::Connection::open(path).expect("open the test file");
                conn.execute(sql, [])
                    .map(|rows| rows as u64)
                    .map_err(|err| err.to_string())
            }
        }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let Kind::Postgres { server, name } = &self.kind else {
            return;
        };
        let (server, name) = (server.clone(), name.clone());
        // Drop runs outside async; use a small runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&server, tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// Runs each check against both stores, as `postgres::<check>` and `sqlite::<check>`.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let store = super::TestStore::postgres().await;
                    super::$check(&store).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let store = super::TestStore::sqlite();
                    super::$check(&store).await;
                }
            )*
        }
    };
}

conformance!(
    a_session_rotates_its_refresh_token_and_a_reused_one_ends_it,
    a_password_change_ends_every_live_session_of_its_researcher_only,
    an_ended_session_is_seen_ended_by_every_instance_and_refreshes_no_more,
    registering_an_email_twice_is_refused_as_already_existing,
    a_sign_up_makes_its_researcher_only_with_the_code_and_only_once,
    a_sign_up_takes_five_wrong_codes_then_none_and_expires,
    a_second_sign_up_within_a_minute_changes_nothing_and_a_later_one_voids_the_first_code,
    a_sign_up_for_a_registered_email_waits_for_no_code_and_leaves_the_researcher_alone,
    opening_an_account_twice_for_one_proposal_returns_the_first,
    only_the_principal_investigator_changes_members_and_never_removes_themself,
    a_withdrawal_is_applied_once_and_replayed_for_the_same_key_and_amount,
    a_key_reused_for_another_amount_is_refused,
    withdrawals_are_refused_without_funds_membership_or_account,
    withdrawals_are_refused_once_the_account_has_expired_by_the_store_clock,
    sixty_four_concurrent_withdrawers_never_overdraw_and_the_journal_adds_up,
    a_thousand_concurrent_retries_of_one_key_apply_it_once,
    the_journal_cannot_be_updated_or_deleted_and_no_balance_goes_negative,
    transactions_are_paged_newest_first_for_members_only,
    accounts_of_lists_every_account_a_researcher_is_a_member_of,
    a_subscriber_hears_of_a_withdrawal_and_a_membership_change,
    a_watch_on_one_college_instance_sees_a_withdrawal_made_through_another,
    agency_proposals_are_recorded_once_per_key_listed_and_awaiting_accounts,
    an_agency_credential_opens_one_account_once_across_instances,
    sixteen_concurrent_uses_of_one_agency_credential_open_one_account,
    used_agency_credentials_are_forgotten_only_well_past_their_expiry,
    withdrawals_in_one_batch_each_get_their_own_answer_and_refusals_fail_no_other,
    one_key_submitted_twice_in_one_batch_applies_once,
    a_batch_whose_database_call_fails_applies_nothing_and_every_caller_gets_unavailable,
    a_watch_sees_every_withdrawal_of_a_batch_in_order_from_another_instance,
    two_members_using_one_key_each_make_their_own_withdrawal,
    a_queued_withdrawal_whose_caller_gave_up_is_dropped_unapplied_and_counted,
);

// ---------------------------------------------------------------------------
// Helpers.

async fn college(store: &TestStore, day_length: Duration) -> (AccountStore, Notifications) {
    AccountStore::start(&store.url, POOL_SIZE, day_length, CancellationToken::new())
        .await
        .expect("the store starts")
}

/// A mail queue into an outbox nobody reads, for services that mail nothing here.
fn unread_mail() -> grantmesh_mail::MailQueue {
    static OUTBOX: std::sync::LazyLock<tempfile::TempDir> =
        std::sync::LazyLock::new(|| tempfile::tempdir().unwrap());
    let mailer =
        grantmesh_mail::Mailer::outbox(OUTBOX.path(), grantmesh_mail::DEFAULT_FROM).unwrap();
    grantmesh_mail::MailQueue::start(mailer, 16, CancellationToken::new())
}

async fn researcher(accounts: &AccountStore, name: &str) -> ResearcherRow {
    let email = format!("{name}-{}@example.org", Uuid::new_v4().simple());
    accounts
        .register_researcher(name, &email, "not-a-real-hash")
        .await
        .expect("register a researcher")
}

async fn open(accounts: &AccountStore, pi: Uuid, award: i64, duration_days: u32) -> AccountRow {
    let proposal = Uuid::new_v4().to_string();
    let (account, created) = accounts
        .open_account(&NewAccount {
            proposal_id: &proposal,
            agency: "nsf",
            title: "Conformance",
            principal_investigator: pi,
            award,
            currency: "USD",
            duration_days,
            credential: credential(),
        })
        .await
        .expect("open an account");
    assert!(created);
    account
}

/// A fresh agency credential, as a College records it, valid for a minute.
fn credential() -> Credential {
    Credential {
        jti: Uuid::new_v4(),
        expires_at: SystemTime::now() + Duration::from_secs(60),
    }
}

/// A withdrawal as a client makes it: retried with the same key while the
/// store answers `UNAVAILABLE`.
async fn withdraw_retrying(
    accounts: &AccountStore,
    account: Uuid,
    caller: Uuid,
    amount: i64,
    key: &str,
) -> Result<grantmesh_college::store::Withdrawal, StoreError> {
    for _ in 0..RETRIES {
        match accounts.withdraw(account, caller, amount, key, "").await {
            Err(StoreError::Contended(_)) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
    panic!("the withdrawal with key {key:?} was still contended after {RETRIES} tries");
}

fn code(err: StoreError) -> tonic::Code {
    err.into_status().code()
}

/// Holds the write lock that withdrawals on `account` need, from outside the
/// services: the account's row on PostgreSQL, the file's write lock on
/// SQLite (which blocks every writer).
enum WriteLock {
    Postgres(tokio_postgres::Client),
    Sqlite(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>),
}

impl TestStore {
    async fn lock_writes(&self, account: Uuid) -> WriteLock {
        self.lock_writes_of(&[account]).await
    }

    /// [`Self::lock_writes`] of several accounts at once.
    async fn lock_writes_of(&self, accounts: &[Uuid]) -> WriteLock {
        match &self.kind {
            Kind::Postgres { .. } => {
                let (client, connection) =
                    tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                        .await
                        .expect("connect to the test database");
                tokio::spawn(connection);
                let ids: Vec<String> = accounts.iter().map(|a| format!("'{a}'")).collect();
                client
                    .batch_execute(&format!(
                        "BEGIN; SELECT 1 FROM accounts WHERE id IN ({}) ORDER BY id FOR UPDATE",
                        ids.join(",")
                    ))
                    .await
                    .expect("lock the account rows");
                WriteLock::Postgres(client)
            }
            Kind::Sqlite { path, .. } => {
                let path = path.clone();
                let (locked_tx, locked_rx) = std::sync::mpsc::channel::<()>();
                let (unlock_tx, unlock_rx) = std::sync::mpsc::channel::<()>();
                let holder = std::thread::spawn(move || {
                    let mut conn = rusqlite::Connection::open(path).unwrap();
                    let tx = conn
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .unwrap();
                    locked_tx.send(()).unwrap();
                    let _ = unlock_rx.recv();
                    drop(tx);
                });
                locked_rx.recv().unwrap();
                WriteLock::Sqlite(unlock_tx, holder)
            }
        }
    }
}

impl WriteLock {
    async fn release(self) {
        match self {
            Self::Postgres(client) => client.batch_execute("COMMIT").await.unwrap(),
            Self::Sqlite(unlock, holder) => {
                unlock.send(()).unwrap();
                holder.join().unwrap();
            }
        }
    }
}

/// Waits (bounded) until `done` holds.
async fn settled(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

type Answer = Result<grantmesh_college::store::Withdrawal, StoreError>;

/// One withdrawal to submit: (account, caller, amount, key).
type Ask = (Uuid, Uuid, i64, &'static str);

/// Applies `asks` as one batch, in this order, and returns their answers.
/// Every batch the store may run at once is first kept busy by a withdrawal
/// of 1 from a blocker account of `blocker_owner` ([`fill_slots`]: accounts of
/// their own, since a College never runs two batches on one account), whose
/// writes are held up from outside; the asks queue behind them meanwhile,
/// one after the other, and go together when the writes are released.
/// (One more blocker withdrawal rides in the batch, first.)
async fn in_one_batch(
    store: &TestStore,
    accounts: &AccountStore,
    blocker_owner: Uuid,
    asks: &[Ask],
) -> Vec<Answer> {
    let (lock, blockers) = fill_slots(store, accounts, blocker_owner).await;
    let submit = |(account, caller, amount, key): (Uuid, Uuid, i64, String)| {
        let accounts = accounts.clone();
        tokio::spawn(async move { accounts.withdraw(account, caller, amount, &key, "").await })
    };
    let mut tasks = Vec::new();
    for (n, &(account, caller, amount, key)) in asks.iter().enumerate() {
        tasks.push(submit((account, caller, amount, key.to_owned())));
        settled("the withdrawal queued", || {
            accounts.withdrawals_queued() == n + 2
        })
        .await;
    }
    let largest = accounts.batch_sizes().largest();
    assert_eq!(largest, 1, "only blockers ran so far");
    lock.release().await;
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    for blocker in blockers {
        blocker
            .await
            .unwrap()
            .expect("a blocker applies once released");
    }
    assert_eq!(
        accounts.batch_sizes().largest(),
        asks.len() + 1,
        "the asks and the last blocker went in one batch"
    );
    answers
}

// ---------------------------------------------------------------------------
// The checks, each written once.

async fn a_password_change_ends_every_live_session_of_its_researcher_only(store: &TestStore) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let ada = researcher(&accounts, "ada").await;
    let grace = researcher(&accounts, "grace").await;
    let week = Duration::from_secs(7 * 86_400);
    let (one, _) = accounts
        .create_session(ada.id, b"ada-1", week)
        .await
        .unwrap();
    let (two, _) = accounts
        .create_session(ada.id, b"ada-2", week)
        .await
        .unwrap();
    let (gone, _) = accounts
        .create_session(ada.id, b"ada-3", week)
        .await
        .unwrap();
    assert!(accounts.end_session(ada.id, gone).await.unwrap());
    let (graces, _) = accounts
        .create_session(grace.id, b"grace-1", week)
        .await
        .unwrap();

    let ended: HashSet<Uuid> = accounts
        .change_password(ada.id, "new-hash")
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        ended,
        HashSet::from([one, two]),
        "her live sessions, not the ended one"
    );
    let found = accounts.researcher(ada.id).await.unwrap().unwrap();
    assert_eq!(found.password_hash, "new-hash");
    for refresh in [&b"ada-1"[..], b"ada-2"] {
        assert_eq!(
            accounts.refresh_session(refresh, b"x").await.unwrap(),
            Refreshed::Unknown
        );
    }
    assert!(
        matches!(
            accounts.refresh_session(b"grace-1", b"grace-2").await.unwrap(),
            Refreshed::Renewed { session, .. } if session == graces
        ),
        "another researcher's session is untouched"
    );
    assert_eq!(
        accounts
            .researcher(grace.id)
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        grace.password_hash
    );
}

async fn a_session_rotates_its_refresh_token_and_a_reused_one_ends_it(store: &TestStore) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let ada = researcher(&accounts, "ada").await;
    let week = Duration::from_secs(7 * 86_400);
    let (session, ends) = accounts
        .create_session(ada.id, b"first", week)
        .await
        .unwrap();
    let lasts = ends.duration_since(SystemTime::now()).unwrap();
    assert!(
        lasts > week - Duration::from_secs(60) && lasts <= week,
        "{lasts:?}"
    );
    assert_eq!(
        accounts.refresh_session(b"first", b"second").await.unwrap(),
        Refreshed::Renewed {
            session,
            researcher: ada.id
        }
    );
    // The rotated-away token again: a copy was taken, the session ends.
    assert_eq!(
        accounts.refresh_session(b"first", b"third").await.unwrap(),
        Refreshed::Reused { session }
    );
    assert_eq!(
        accounts
            .refresh_session(b"second", b"fourth")
            .await
            .unwrap(),
        Refreshed::Unknown,
        "the owner's current token dies with the session"
    );
    assert_eq!(
        accounts.refresh_session(b"never", b"x").await.unwrap(),
        Refreshed::Unknown
    );
    // A session past its end refreshes no more.
    let (_, _) = accounts
        .create_session(ada.id, b"short", Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        accounts.refresh_session(b"short", b"y").await.unwrap(),
        Refreshed::Unknown
    );
}

async fn an_ended_session_is_seen_ended_by_every_instance_and_refreshes_no_more(store: &TestStore) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let (other, _) = college(store, REAL_DAY).await;
    let ada = researcher(&accounts, "ada").await;
    let bo = researcher(&accounts, "bo").await;
    let week = Duration::from_secs(7 * 86_400);
    let before = SystemTime::now() - Duration::from_secs(1);
    let (a, _) = accounts
        .create_session(ada.id, b"ada-1", week)
        .await
        .unwrap();
    let (b, _) = accounts
        .create_session(ada.id, b"ada-2", week)
        .await
        .unwrap();
    assert!(other.sessions_ended_since(before).await.unwrap().is_empty());
    // Another researcher cannot end it; its owner can, once.
    assert!(!accounts.end_session(bo.id, a).await.unwrap());
    assert!(accounts.end_session(ada.id, a).await.unwrap());
    assert!(!accounts.end_session(ada.id, a).await.unwrap());
    assert_eq!(
        accounts.end_session_by_refresh(b"ada-2").await.unwrap(),
        Some(b)
    );
    assert_eq!(
        accounts.end_session_by_refresh(b"ada-2").await.unwrap(),
        None
    );
    let mut ended: Vec<Uuid> = other
        .sessions_ended_since(before)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ended.sort();
    let mut both = vec![a, b];
    both.sort();
    assert_eq!(ended, both, "the other instance reads both as ended");
    assert_eq!(
        other.refresh_session(b"ada-1", b"z").await.unwrap(),
        Refreshed::Unknown
    );
}

async fn registering_an_email_twice_is_refused_as_already_existing(store: &TestStore) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let first = accounts
        .register_researcher("Ada", "ada@example.org", "hash")
        .await
        .unwrap();
    let again = accounts
        .register_researcher("Another Ada", "ada@example.org", "hash2")
        .await
        .unwrap_err();
    assert!(
        matches!(again, StoreError::AlreadyExists(ref msg) if msg.contains("ada@example.org")),
        "{again:?}"
    );
    assert_eq!(code(again), tonic::Code::AlreadyExists);
    let found = accounts
        .researcher_by_email("ada@example.org")
        .await
        .unwrap()
        .expect("the first registration");
    assert_eq!(
        (found.id, found.name, found.password_hash),
        (first.id, "Ada".into(), "hash".into())
    );
    assert!(
        accounts
            .researcher_by_email("nobody@example.org")
            .await
            .unwrap()
            .is_none()
    );
}

/// A pending sign-up of `email` whose code has digest `digest`.
fn pending<'a>(email: &'a str, name: &'a str, digest: &'a [u8]) -> PendingSignup<'a> {
    PendingSignup {
        email,
        name,
        password_hash: HASH,
        code_digest: digest,
    }
}

/// The password hash every test sign-up is made with.
const HASH: &str = "argon-hash-of-the-password";
const CODE_TTL: Duration = Duration::from_secs(3600);
const RESEND: Duration = Duration::from_secs(60);

async fn a_sign_up_makes_its_researcher_only_with_the_code_and_only_once(store: &TestStore) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let email = format!("ada-{}@example.org", Uuid::new_v4().simple());
    let signup = pending(&email, "Ada", b"right-digest");
    assert_eq!(
        accounts
            .begin_signup(&signup, CODE_TTL, RESEND)
            .await
            .unwrap(),
        Begun::Mail
    );
    assert!(
        accounts
            .researcher_by_email(&email)
            .await
            .unwrap()
            .is_none(),
        "nobody exists before the code comes back"
    );
    assert!(matches!(
        accounts
            .finish_signup(&email, b"wrong-digest", HASH, 5)
            .await
            .unwrap(),
        Finished::Wrong
    ));
    assert!(matches!(
        accounts
            .finish_signup("someone-else@example.org", b"right-digest", HASH, 5)
            .await
            .unwrap(),
        Finished::Unknown
    ));
    assert_eq!(
        accounts
            .signup_password_hash(&email, 5)
            .await
            .unwrap()
            .as_deref(),
        Some(HASH),
        "the password sent with the code is checked against this"
    );
    assert!(
        matches!(
            accounts
                .finish_signup(&email, b"right-digest", "another-hash", 5)
                .await
                .unwrap(),
            Finished::Wrong
        ),
        "the right code with another password is a wrong try"
    );
    let Finished::Created(made) = accounts
        .finish_signup(&email, b"right-digest", HASH, 5)
        .await
        .unwrap()
    else {
        panic!("the right code makes the researcher");
    };
    assert_eq!(
        (made.name.as_str(), made.email.as_str()),
        ("Ada", email.as_str())
    );
    assert_eq!(made.password_hash, "argon-hash-of-the-password");
    let found = accounts.researcher_by_email(&email).await.unwrap().unwrap();
    assert_eq!(found.id, made.id);
    assert!(
        matches!(
            accounts
                .finish_signup(&email, b"right-digest", HASH, 5)
                .await
                .unwrap(),
            Finished::Unknown
        ),
        "a code makes its researcher once"
    );
    // Sixteen at once with the right code make one researcher.
    let email = format!("grace-{}@example.org", Uuid::new_v4().simple());
    accounts
        .begin_signup(&pending(&email, "Grace", b"g"), CODE_TTL, RESEND)
        .await
        .unwrap();
    let tries = (0..16).map(|_| {
        let (accounts, email) = (accounts.clone(), email.clone());
        tokio::spawn(async move { accounts.finish_signup(&email, b"g", HASH, 5).await })
    });
    let mut created = 0;
    for attempt in futures::future::join_all(tries).await {
        match attempt.unwrap() {
            Ok(Finished::Created(_)) => created += 1,
            Ok(_) => {}
            Err(err) => assert_eq!(code(err), tonic::Code::Unavailable, "only contention"),
        }
    }
    assert_eq!(
        created, 1,
        "one of sixteen concurrent verifications makes the researcher"
    );
}

async fn a_sign_up_takes_five_wrong_codes_then_none_and_expires(store: &TestStore) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let email = format!("ada-{}@example.org", Uuid::new_v4().simple());
    accounts
        .begin_signup(&pending(&email, "Ada", b"right"), CODE_TTL, RESEND)
        .await
        .unwrap();
    for _ in 0..5 {
        assert!(matches!(
            accounts
                .finish_signup(&email, b"guess", HASH, 5)
                .await
                .unwrap(),
            Finished::Wrong
        ));
    }
    assert!(
        matches!(
            accounts
                .finish_signup(&email, b"right", HASH, 5)
                .await
                .unwrap(),
            Finished::Unknown
        ),
        "after five wrong tries even the right code is refused"
    );
    assert!(
        accounts
            .researcher_by_email(&email)
            .await
            .unwrap()
            .is_none()
    );

    let email = format!("brief-{}@example.org", Uuid::new_v4().simple());
    accounts
        .begin_signup(
            &pending(&email, "Brief", b"right"),
            Duration::from_millis(200),
            RESEND,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        matches!(
            accounts
                .finish_signup(&email, b"right", HASH, 5)
                .await
                .unwrap(),
            Finished::Unknown
        ),
        "an expired code makes nobody"
    );
    assert!(
        accounts
            .researcher_by_email(&email)
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_second_sign_up_within_a_minute_changes_nothing_and_a_later_one_voids_the_first_code(
    store: &TestStore,
) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let email = format!("ada-{}@example.org", Uuid::new_v4().simple());
    accounts
        .begin_signup(&pending(&email, "Ada", b"first"), CODE_TTL, RESEND)
        .await
        .unwrap();
    assert_eq!(
        accounts
            .begin_signup(&pending(&email, "Mallory", b"second"), CODE_TTL, RESEND)
            .await
            .unwrap(),
        Begun::TooSoon
    );
    assert!(matches!(
        accounts
            .finish_signup(&email, b"second", HASH, 5)
            .await
            .unwrap(),
        Finished::Wrong
    ));
    // Past the resend interval (here 0), a new sign-up replaces the code
    // and its tries.
    assert_eq!(
        accounts
            .begin_signup(
                &pending(&email, "Ada L.", b"third"),
                CODE_TTL,
                Duration::ZERO
            )
            .await
            .unwrap(),
        Begun::Mail
    );
    assert!(matches!(
        accounts
            .finish_signup(&email, b"first", HASH, 5)
            .await
            .unwrap(),
        Finished::Wrong
    ));
    let Finished::Created(made) = accounts
        .finish_signup(&email, b"third", HASH, 5)
        .await
        .unwrap()
    else {
        panic!("the newest code makes the researcher");
    };
    assert_eq!(made.name, "Ada L.", "with the newest sign-up's name");
}

async fn a_sign_up_for_a_registered_email_waits_for_no_code_and_leaves_the_researcher_alone(
    store: &TestStore,
) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let owner = researcher(&accounts, "owner").await;
    let signup = pending(&owner.email, "Mallory", b"mallory");
    assert_eq!(
        accounts
            .begin_signup(&signup, CODE_TTL, Duration::ZERO)
            .await
            .unwrap(),
        Begun::Registered
    );
    assert_eq!(
        accounts
            .begin_signup(&signup, CODE_TTL, RESEND)
            .await
            .unwrap(),
        Begun::TooSoon,
        "the owner's notices are limited like codes"
    );
    assert!(matches!(
        accounts
            .finish_signup(&owner.email, b"mallory", HASH, 5)
            .await
            .unwrap(),
        Finished::Unknown
    ));
    let found = accounts
        .researcher_by_email(&owner.email)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.id, found.name, found.password_hash),
        (owner.id, owner.name, owner.password_hash),
        "the owner is unchanged"
    );
}

async fn opening_an_account_twice_for_one_proposal_returns_the_first(store: &TestStore) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let new = NewAccount {
        proposal_id: "proposal-1",
        agency: "nsf",
        title: "Tides",
        principal_investigator: pi.id,
        award: 5_000,
        currency: "EUR",
        duration_days: 30,
        credential: credential(),
    };
    let (first, created) = accounts.open_account(&new).await.unwrap();
    assert!(created);
    assert_eq!((first.award, first.balance), (5_000, 5_000));
    assert_eq!(
        first.currency, "EUR",
        "the account counts in the award's currency"
    );
    assert!(!first.expired);
    let lasts = first.expires_at.duration_since(first.opened_at).unwrap();
    assert!(
        lasts.abs_diff(REAL_DAY * 30) < Duration::from_secs(1),
        "{lasts:?}"
    );
    assert_eq!(first.members.len(), 1);
    assert!(first.members[0].principal_investigator);
    assert_eq!(first.members[0].researcher_id, pi.id);

    // A retry on the same terms (another title is not a term) is a replay.
    let (second, created) = accounts
        .open_account(&NewAccount {
            title: "Tides, again",
            credential: credential(),
            ..new
        })
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(
        (second.id, second.title, second.award),
        (first.id, first.title, 5_000)
    );
    assert_eq!(second.members.len(), 1);

    // Defect 3 of issue 18: a second call on other terms used to get the
    // first account back; now it is refused, naming each difference, and
    // changes nothing (its credential is not spent either).
    let other_pi = researcher(&accounts, "other").await;
    for (asked, names) in [
        (
            NewAccount {
                agency: "erc",
                credential: credential(),
                ..new
            },
            "agency \"nsf\", not \"erc\"",
        ),
        (
            NewAccount {
                principal_investigator: other_pi.id,
                credential: credential(),
                ..new
            },
            "principal investigator",
        ),
        (
            NewAccount {
                award: 9_000,
                credential: credential(),
                ..new
            },
            "award 5000, not 9000",
        ),
        (
            NewAccount {
                duration_days: 31,
                credential: credential(),
                ..new
            },
            "duration 30 days, not 31",
        ),
        (
            NewAccount {
                currency: "USD",
                credential: credential(),
                ..new
            },
            "currency EUR, not USD",
        ),
    ] {
        let credential = asked.credential;
        let refused = accounts.open_account(&asked).await.unwrap_err();
        assert!(
            matches!(&refused, StoreError::FailedPrecondition(msg) if msg.contains(names) && msg.contains("proposal-1")),
            "{refused:?}"
        );
        // The credential was not recorded: the same one opens another proposal.
        let (elsewhere, created) = accounts
            .open_account(&NewAccount {
                proposal_id: &format!("elsewhere-{}", credential.jti),
                credential,
                ..new
            })
            .await
            .unwrap();
        assert!(created && elsewhere.id != first.id);
    }
    let after = accounts.account(first.id, None).await.unwrap();
    assert_eq!((after.award, after.principal_investigator), (5_000, pi.id));
    assert!(
        accounts
            .accounts_of(other_pi.id, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let unknown = accounts
        .open_account(&NewAccount {
            proposal_id: "proposal-2",
            principal_investigator: Uuid::new_v4(),
            credential: credential(),
            ..new
        })
        .await
        .unwrap_err();
    assert_eq!(code(unknown), tonic::Code::NotFound);
}

async fn an_agency_credential_opens_one_account_once_across_instances(store: &TestStore) {
    // Two College instances on one store.
    let (first, _) = college(store, REAL_DAY).await;
    let (second, _) = college(store, REAL_DAY).await;
    let pi = researcher(&first, "pi").await;
    let used = credential();
    let new = NewAccount {
        proposal_id: "proposal-a",
        agency: "nsf",
        title: "Tides",
        principal_investigator: pi.id,
        award: 5_000,
        currency: "USD",
        duration_days: 30,
        credential: used,
    };
    // A call that fails (no such principal investigator) spends nothing.
    let failed = first
        .open_account(&NewAccount {
            principal_investigator: Uuid::new_v4(),
            ..new
        })
        .await
        .unwrap_err();
    assert_eq!(code(failed), tonic::Code::NotFound);
    let (account, created) = first.open_account(&new).await.unwrap();
    assert!(created);

    // The same credential again, at the other instance, for the same
    // proposal or another one: refused, and nothing opened.
    for proposal_id in ["proposal-a", "proposal-b"] {
        let replay = second
            .open_account(&NewAccount { proposal_id, ..new })
            .await
            .unwrap_err();
        assert!(
            matches!(replay, StoreError::PermissionDenied(ref msg) if msg == "this agency credential was already used"),
            "{replay:?}"
        );
        assert_eq!(code(replay), tonic::Code::PermissionDenied);
    }
    assert_eq!(first.accounts_of(pi.id, None, 100).await.unwrap().len(), 1);

    // The agency's retry comes with a new credential and finds the account.
    let (again, created) = second
        .open_account(&NewAccount {
            credential: credential(),
            ..new
        })
        .await
        .unwrap();
    assert!(!created);
    assert_eq!((again.id, again.balance), (account.id, 5_000));
    // proposal-b was never opened by the replay.
    let (other, created) = second
        .open_account(&NewAccount {
            proposal_id: "proposal-b",
            credential: credential(),
            ..new
        })
        .await
        .unwrap();
    assert!(created);
    assert_ne!(other.id, account.id);
}

async fn sixteen_concurrent_uses_of_one_agency_credential_open_one_account(store: &TestStore) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let used = credential();
    let calls = (0..16).map(|n| {
        let accounts = accounts.clone();
        tokio::spawn(async move {
            let proposal_id = format!("concurrent-{n}");
            // Contention (a busy SQLite file) is retried, as the agency would.
            for _ in 0..RETRIES {
                let result = accounts
                    .open_account(&NewAccount {
                        proposal_id: &proposal_id,
                        agency: "nsf",
                        title: "Race",
                        principal_investigator: pi.id,
                        award: 1_000,
                        currency: "USD",
                        duration_days: 30,
                        credential: used,
                    })
                    .await;
                if !matches!(result, Err(StoreError::Contended(_))) {
                    return result;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("still contended after {RETRIES} tries");
        })
    });
    let mut opened = 0;
    for call in futures::future::join_all(calls).await {
        match call.unwrap() {
            Ok((_, created)) => {
                assert!(created);
                opened += 1;
            }
            Err(err) => assert_eq!(code(err), tonic::Code::PermissionDenied),
        }
    }
    assert_eq!(opened, 1);
    assert_eq!(
        accounts.accounts_of(pi.id, None, 100).await.unwrap().len(),
        1
    );
}

async fn used_agency_credentials_are_forgotten_only_well_past_their_expiry(store: &TestStore) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let now = SystemTime::now();
    let long_expired = Credential {
        jti: Uuid::new_v4(),
        expires_at: now - 2 * USED_CREDENTIAL_MARGIN,
    };
    let just_expired = Credential {
        jti: Uuid::new_v4(),
        expires_at: now - Duration::from_secs(1),
    };
    for (n, used) in [long_expired, just_expired, credential()]
        .into_iter()
        .enumerate()
    {
        let proposal_id = format!("cleanup-{n}");
        accounts
            .open_account(&NewAccount {
                proposal_id: &proposal_id,
                agency: "nsf",
                title: "Cleanup",
                principal_investigator: pi.id,
                award: 1_000,
                currency: "USD",
                duration_days: 30,
                credential: used,
            })
            .await
            .unwrap();
    }
    // Recording the later ones deleted the long-expired record only.
    let remaining = store
        .execute("DELETE FROM agency_credentials")
        .await
        .unwrap();
    assert_eq!(remaining, 2);
}

async fn only_the_principal_investigator_changes_members_and_never_removes_themself(
    store: &TestStore,
) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let member = researcher(&accounts, "member").await;
    let outsider = researcher(&accounts, "outsider").await;
    let account = open(&accounts, pi.id, 1_000, 30).await;

    let added = accounts
        .add_member(account.id, pi.id, &member.email)
        .await
        .unwrap();
    let ids: Vec<_> = added.members.iter().map(|m| m.researcher_id).collect();
    assert_eq!(ids, vec![pi.id, member.id], "the PI first, then members");
    assert!(!added.members[1].principal_investigator);
    // Adding again changes nothing.
    let again = accounts
        .add_member(account.id, pi.id, &member.email)
        .await
        .unwrap();
    assert_eq!(again.members.len(), 2);

    let by_member = accounts
        .add_member(account.id, member.id, &outsider.email)
        .await
        .unwrap_err();
    assert_eq!(code(by_member), tonic::Code::PermissionDenied);
    let unknown_email = accounts
        .add_member(account.id, pi.id, "nobody@example.org")
        .await
        .unwrap_err();
    assert_eq!(code(unknown_email), tonic::Code::NotFound);
    let unknown_account = accounts
        .add_member(Uuid::new_v4(), pi.id, &member.email)
        .await
        .unwrap_err();
    assert_eq!(code(unknown_account), tonic::Code::NotFound);

    let themself = accounts
        .remove_member(account.id, pi.id, pi.id)
        .await
        .unwrap_err();
    assert_eq!(code(themself), tonic::Code::FailedPrecondition);
    let by_member = accounts
        .remove_member(account.id, member.id, pi.id)
        .await
        .unwrap_err();
    assert_eq!(code(by_member), tonic::Code::PermissionDenied);
    let not_a_member = accounts
        .remove_member(account.id, pi.id, outsider.id)
        .await
        .unwrap_err();
    assert_eq!(code(not_a_member), tonic::Code::NotFound);

    let removed = accounts
        .remove_member(account.id, pi.id, member.id)
        .await
        .unwrap();
    assert_eq!(removed.members.len(), 1);
    let read = accounts
        .account(account.id, Some(member.id))
        .await
        .unwrap_err();
    assert_eq!(code(read), tonic::Code::NotFound);
    assert_eq!(
        accounts
            .account(account.id, Some(pi.id))
            .await
            .unwrap()
            .members
            .len(),
        1
    );
    let missing = accounts.account(Uuid::new_v4(), None).await.unwrap_err();
    assert_eq!(code(missing), tonic::Code::NotFound);

    // A member may leave on their own; the principal investigator may not.
    accounts
        .add_member(account.id, pi.id, &member.email)
        .await
        .unwrap();
    let left = accounts
        .remove_member(account.id, member.id, member.id)
        .await
        .unwrap();
    assert_eq!(left.members.len(), 1);
    let pi_leaving = accounts
        .remove_member(account.id, pi.id, pi.id)
        .await
        .unwrap_err();
    assert_eq!(code(pi_leaving), tonic::Code::FailedPrecondition);
}

async fn a_withdrawal_is_applied_once_and_replayed_for_the_same_key_and_amount(store: &TestStore) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let account = open(&accounts, pi.id, 1_000, 30).await;

    let applied = accounts
        .withdraw(account.id, pi.id, 300, "key-1", "microscope")
        .await
        .unwrap();
    assert!(!applied.replayed);
    assert_eq!(applied.balance, 700);
    assert_eq!(applied.transaction.balance_after, 700);
    assert_eq!(applied.transaction.memo, "microscope");
    assert_eq!(applied.transaction.researcher_id, pi.id);

    let replayed = accounts
        .withdraw(account.id, pi.id, 300, "key-1", "another memo")
        .await
        .unwrap();
    assert!(replayed.replayed);
    assert_eq!(replayed.transaction.id, applied.transaction.id);
    assert_eq!(
        replayed.transaction.memo, "microscope",
        "the original entry"
    );
    assert_eq!(replayed.balance, 700);
    assert_eq!(
        accounts.account(account.id, None).await.unwrap().balance,
        700
    );
    let audit = accounts.audit(account.id).await.unwrap();
    assert_eq!(audit.journal.len(), 1);
    let read = accounts
        .transaction(account.id, applied.transaction.id)
        .await
        .unwrap()
        .expect("the entry");
    assert_eq!(read.created_at, applied.transaction.created_at);
}

async fn a_key_reused_for_another_amount_is_refused(store: &TestStore) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let account = open(&accounts, pi.id, 1_000, 30).await;
    accounts
        .withdraw(account.id, pi.id, 300, "key-1", "")
        .await
        .unwrap();
    let reused = accounts
        .withdraw(account.id, pi.id, 301, "key-1", "")
        .await
        .unwrap_err();
    assert!(
        matches!(reused, StoreError::FailedPrecondition(ref msg) if msg.contains("key-1")),
        "{reused:?}"
    );
    assert_eq!(
        accounts.account(account.id, None).await.unwrap().balance,
        700
    );
    // The same key on another account is another withdrawal.
    let other = open(&accounts, pi.id, 1_000, 30).await;
    let there = accounts
        .withdraw(other.id, pi.id, 301, "key-1", "")
        .await
        .unwrap();
    assert!(!there.replayed);
}

async fn withdrawals_are_refused_without_funds_membership_or_account(store: &TestStore) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let outsider = researcher(&accounts, "outsider").await;
    let account = open(&accounts, pi.id, 1_000, 30).await;

    let too_much = accounts
        .withdraw(account.id, pi.id, 1_001, "k1", "")
        .await
        .unwrap_err();
    assert!(
        matches!(too_much, StoreError::FailedPrecondition(ref msg) if msg.contains("insufficient funds")),
        "{too_much:?}"
    );
    let outsider = accounts
        .withdraw(account.id, outsider.id, 1, "k2", "")
        .await
        .unwrap_err();
    let missing_id = Uuid::new_v4();
    let missing = accounts
        .withdraw(missing_id, pi.id, 1, "k3", "")
        .await
        .unwrap_err();
    // An outsider learns no more than of an id that exists nowhere.
    let (outsider, missing) = (outsider.into_status(), missing.into_status());
    assert_eq!(outsider.code(), tonic::Code::NotFound);
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert_eq!(
        outsider.message().replace(&account.id.to_string(), "ID"),
        missing.message().replace(&missing_id.to_string(), "ID")
    );
    // Exactly everything is allowed; then nothing more.
    let all = accounts
        .withdraw(account.id, pi.id, 1_000, "k4", "")
        .await
        .unwrap();
    assert_eq!(all.balance, 0);
    let empty = accounts
        .withdraw(account.id, pi.id, 1, "k5", "")
        .await
        .unwrap_err();
    assert_eq!(code(empty), tonic::Code::FailedPrecondition);
    assert!(accounts.audit(account.id).await.unwrap().journal.len() == 1);
}

async fn withdrawals_are_refused_once_the_account_has_expired_by_the_store_clock(
    store: &TestStore,
) {
    let day = Duration::from_millis(300);
    let (accounts, _) = college(store, day).await;
    let pi = researcher(&accounts, "pi").await;
    let account = open(&accounts, pi.id, 1_000, 1).await;
    let before = accounts
        .withdraw(account.id, pi.id, 100, "before", "")
        .await
        .unwrap();
    assert!(!before.replayed);

    let deadline = Instant::now() + SETTLE;
    loop {
        let now = accounts.account(account.id, None).await.unwrap();
        if now.expired {
            break;
        }
        assert!(Instant::now() < deadline, "the account never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = accounts
        .withdraw(account.id, pi.id, 100, "after", "")
        .await
        .unwrap_err();
    assert!(
        matches!(after, StoreError::FailedPrecondition(ref msg) if msg.contains("expired")),
        "{after:?}"
    );
    // A retry of a withdrawal made before expiry still gets its answer.
    let replayed = accounts
        .withdraw(account.id, pi.id, 100, "before", "")
        .await
        .unwrap();
    assert!(replayed.replayed);
    assert_eq!(
        accounts.account(account.id, None).await.unwrap().balance,
        900
    );
}

async fn sixty_four_concurrent_withdrawers_never_overdraw_and_the_journal_adds_up(
    store: &TestStore,
) {
    const WITHDRAWERS: usize = 64;
    const AWARD: i64 = 1_000;
    const AMOUNT: i64 = 30;
    let (accounts, _) = college(store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let account = open(&accounts, pi.id, AWARD, 30).await;
    let mut members = vec![pi.id];
    for i in 1..8 {
        let member = researcher(&accounts, &format!("member{i}")).await;
        accounts
            .add_member(account.id, pi.id, &member.email)
            .await
            .unwrap();
        members.push(member.id);
    }

    let start = Arc::new(tokio::sync::Barrier::new(WITHDRAWERS));
    let tasks: Vec<_> = (0..WITHDRAWERS)
        .map(|i| {
            let accounts = accounts.clone();
            let start = start.clone();
            let caller = members[i % members.len()];
            tokio::spawn(async move {
                start.wait().await;
                withdraw_retrying(&accounts, account.id, caller, AMOUNT, &format!("w-{i}")).await
            })
        })
        .collect();
    let mut applied = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(withdrawal) => {
                assert!(!withdrawal.replayed);
                assert!(withdrawal.balance >= 0);
                applied += 1;
            }
            Err(StoreError::FailedPrecondition(msg)) => {
                assert!(msg.contains("insufficient funds"), "{msg}")
            }
            Err(err) => panic!("unexpected failure: {err:?}"),
        }
    }
    assert_eq!(
        applied,
        AWARD / AMOUNT,
        "every affordable withdrawal applied"
    );

    let audit = accounts.audit(account.id).await.unwrap();
    let spent: i64 = audit.journal.iter().map(|t| t.amount).sum();
    assert_eq!(audit.journal.len() as i64, applied);
    assert_eq!(audit.account.balance, AWARD - spent);
    assert_eq!(audit.account.balance, AWARD % AMOUNT);
    // Each entry's balance_after follows from the one before it.
    let mut balance = AWARD;
    for entry in &audit.journal {
        balance -= entry.amount;
        assert_eq!(entry.balance_after, balance);
    }
}

async fn a_thousand_concurrent_retries_of_one_key_apply_it_once(store: &TestStore) {
    const RETRIERS: usize = 1_000;
    let (accounts, _) = college(store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let account = open(&accounts, pi.id, 10_000, 30).await;

    let start = Arc::new(tokio::sync::Barrier::new(RETRIERS));
    let tasks: Vec<_> = (0..RETRIERS)
        .map(|_| {
            let accounts = accounts.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                withdraw_retrying(&accounts, account.id, pi.id, 250, "the-one-key").await
            })
        })
        .collect();
    let mut applied = 0;
    let mut ids = HashSet::new();
    for task in tasks {
        let withdrawal = task.await.unwrap().expect("every retry succeeds");
        if !withdrawal.replayed {
            applied += 1;
        }
        ids.insert(withdrawal.transaction.id);
        assert_eq!(withdrawal.transaction.balance_after, 9_750);
    }
    assert_eq!(applied, 1, "the key applied exactly once");
    assert_eq!(ids.len(), 1, "every retry saw the same entry");
    let audit = accounts.audit(account.id).await.unwrap();
    assert_eq!(audit.journal.len(), 1);
    assert_eq!(audit.account.balance, 9_750);
}

async fn the_journal_cannot_be_updated_or_deleted_and_no_balance_goes_negative(store: &TestStore) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let account = open(&accounts, pi.id, 1_000, 30).await;
    accounts
        .withdraw(account.id, pi.id, 400, "k", "")
        .await
        .unwrap();

    let update = store
        .execute("UPDATE withdrawals SET amount = 1")
        .await
        .unwrap_err();
    assert!(update.contains("append-only"), "{update}");
    let delete = store.execute("DELETE FROM withdrawals").await.unwrap_err();
    assert!(delete.contains("append-only"), "{delete}");
    let negative = store
        .execute("UPDATE accounts SET balance = -1")
        .await
        .unwrap_err();
    assert!(negative.to_lowercase().contains("check"), "{negative}");

    let audit = accounts.audit(account.id).await.unwrap();
    assert_eq!(audit.journal.len(), 1);
    assert_eq!(audit.journal[0].amount, 400);
    assert_eq!(audit.account.balance, 600);
}

async fn transactions_are_paged_newest_first_for_members_only(store: &TestStore) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let outsider = researcher(&accounts, "outsider").await;
    let account = open(&accounts, pi.id, 1_000, 30).await;
    let mut made = Vec::new();
    for i in 1..=7 {
        let withdrawal = accounts
            .withdraw(account.id, pi.id, i, &format!("k{i}"), &format!("#{i}"))
            .await
            .unwrap();
        made.push(withdrawal.transaction.id);
    }
    made.reverse();

    let mut seen = Vec::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        let page = accounts
            .transactions(account.id, pi.id, before, 3)
            .await
            .unwrap();
        pages += 1;
        seen.extend(page.iter().map(|t| t.id));
        if page.len() < 3 {
            break;
        }
        before = page.last().map(|t| t.id);
    }
    assert_eq!(seen, made, "every entry once, newest first");
    assert_eq!(pages, 3);
    let first = accounts
        .transactions(account.id, pi.id, None, 1)
        .await
        .unwrap();
    assert_eq!(first[0].memo, "#7");
    assert_eq!(first[0].balance_after, 1_000 - (1..=7).sum::<i64>());

    let outsider = accounts
        .transactions(account.id, outsider.id, None, 10)
        .await
        .unwrap_err();
    assert_eq!(code(outsider), tonic::Code::NotFound);
    let missing = accounts
        .transactions(Uuid::new_v4(), pi.id, None, 10)
        .await
        .unwrap_err();
    assert_eq!(code(missing), tonic::Code::NotFound);
    assert!(
        accounts
            .transaction(account.id, -1)
            .await
            .unwrap()
            .is_none()
    );
}

async fn accounts_of_lists_every_account_a_researcher_is_a_member_of(store: &TestStore) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let member = researcher(&accounts, "member").await;
    let first = open(&accounts, pi.id, 1_000, 30).await;
    tokio::time::sleep(Duration::from_millis(5)).await; // distinct opening times
    let second = open(&accounts, pi.id, 2_000, 30).await;
    accounts
        .add_member(first.id, pi.id, &member.email)
        .await
        .unwrap();

    let of_pi: Vec<_> = accounts
        .accounts_of(pi.id, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(of_pi, vec![second.id, first.id], "newest first");
    let of_member = accounts.accounts_of(member.id, None, 100).await.unwrap();
    assert_eq!(of_member.len(), 1);
    assert_eq!(of_member[0].id, first.id);
    assert_eq!(of_member[0].members.len(), 2);
    assert!(
        accounts
            .accounts_of(Uuid::new_v4(), None, 100)
            .await
            .unwrap()
            .is_empty()
    );
    // Pages of one, by the (opened_at, id) cursor of the last account seen.
    let page_one = accounts.accounts_of(pi.id, None, 1).await.unwrap();
    assert_eq!(page_one.len(), 1);
    assert_eq!(page_one[0].id, second.id);
    assert_eq!(page_one[0].members.len(), 1);
    let cursor = Some((page_one[0].opened_at, page_one[0].id));
    let page_two = accounts.accounts_of(pi.id, cursor, 1).await.unwrap();
    assert_eq!(page_two.len(), 1);
    assert_eq!(page_two[0].id, first.id);
    assert_eq!(
        page_two[0].members.len(),
        2,
        "members of every account on the page"
    );
    let cursor = Some((page_two[0].opened_at, page_two[0].id));
    assert!(
        accounts
            .accounts_of(pi.id, cursor, 1)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_subscriber_hears_of_a_withdrawal_and_a_membership_change(store: &TestStore) {
    // Two College instances on one store: the change is made on one and
    // heard on the other.
    let (writer, _) = college(store, REAL_DAY).await;
    let (_, notifications) = college(store, REAL_DAY).await;
    let mut notices = notifications.subscribe().await.unwrap();
    let pi = researcher(&writer, "pi").await;
    let member = researcher(&writer, "member").await;
    let account = open(&writer, pi.id, 1_000, 30).await;

    // PostgreSQL's listener connects in the background: withdraw until it
    // hears one, then every later change must arrive.
    let deadline = Instant::now() + SETTLE;
    let mut made = HashSet::new();
    let heard = 'heard: loop {
        assert!(
            Instant::now() < deadline,
            "no withdrawal notice arrived in {SETTLE:?}"
        );
        let withdrawal = writer
            .withdraw(account.id, pi.id, 1, &format!("k{}", made.len()), "")
            .await
            .unwrap();
        made.insert(withdrawal.transaction.id);
        let wait = Instant::now() + Duration::from_millis(500);
        while let Some(payload) = next_payload(&mut notices, wait).await {
            // `withdrawals:<first>:<last>:<accounts>`
            let parts: Vec<&str> = payload.splitn(4, ':').collect();
            if let ["withdrawals", first, last, accounts] = parts[..]
                && accounts.split(',').any(|a| a == account.id.to_string())
            {
                assert_eq!(first, last, "one withdrawal, one entry");
                break 'heard first.parse::<i64>().unwrap();
            }
        }
    };
    assert!(made.contains(&heard), "the notice names a journal entry");

    writer
        .add_member(account.id, pi.id, &member.email)
        .await
        .unwrap();
    let expected = format!("membership:{}", account.id);
    let wait = Instant::now() + SETTLE;
    loop {
        match next_payload(&mut notices, wait).await {
            Some(payload) if payload == expected => break,
            Some(_) => continue,
            None => panic!("no membership notice arrived in {SETTLE:?}"),
        }
    }
}

/// The next notification payload before `deadline`, if any.
async fn withdrawals_in_one_batch_each_get_their_own_answer_and_refusals_fail_no_other(
    store: &TestStore,
) {
    let (accounts, _) = college(store, Duration::from_secs(1)).await;
    let pi = researcher(&accounts, "pi").await;
    let outsider = researcher(&accounts, "outsider").await;
    let account = open(&accounts, pi.id, 1_000, 10_000).await;
    let short = open(&accounts, pi.id, 1_000, 1).await;
    settled("the short account expired", || {
        SystemTime::now() > short.expires_at + Duration::from_millis(100)
    })
    .await;
    let missing = Uuid::new_v4();
    let a = account.id;
    let answers = in_one_batch(
        store,
        &accounts,
        pi.id,
        &[
            (a, pi.id, 600, "first"),        // applied: 400 left
            (a, pi.id, 500, "too-much"),     // insufficient funds
            (a, outsider.id, 1, "outsider"), // not a member
            (short.id, pi.id, 1, "late"),    // expired
            (missing, pi.id, 1, "nowhere"),  // no such account
            (a, pi.id, 400, "rest"),         // applied: 0 left
            (a, pi.id, 1, "first"),          // key reused with another amount
            (a, pi.id, 600, "first"),        // replayed
            (a, pi.id, 1, "empty"),          // insufficient funds
        ],
    )
    .await;
    let mut answers = answers.into_iter();
    let mut next = || answers.next().unwrap();
    let first = next().unwrap();
    assert!(!first.replayed);
    assert_eq!((first.balance, first.transaction.balance_after), (400, 400));
    let too_much = next().unwrap_err();
    assert!(
        matches!(too_much, StoreError::FailedPrecondition(ref msg) if msg.contains("insufficient funds") && msg.contains("holds 400")),
        "{too_much:?}"
    );
    assert_eq!(code(next().unwrap_err()), tonic::Code::NotFound);
    let late = next().unwrap_err();
    assert!(
        matches!(late, StoreError::FailedPrecondition(ref msg) if msg.contains("expired")),
        "{late:?}"
    );
    assert_eq!(code(next().unwrap_err()), tonic::Code::NotFound);
    let rest = next().unwrap();
    assert_eq!(rest.balance, 0);
    assert!(rest.transaction.id > first.transaction.id, "arrival order");
    let reused = next().unwrap_err();
    assert!(
        matches!(reused, StoreError::FailedPrecondition(ref msg) if msg.contains("first") && msg.contains("600")),
        "{reused:?}"
    );
    let replayed = next().unwrap();
    assert!(replayed.replayed);
    assert_eq!(replayed.transaction.id, first.transaction.id);
    let empty = next().unwrap_err();
    assert!(
        matches!(empty, StoreError::FailedPrecondition(ref msg) if msg.contains("insufficient funds")),
        "{empty:?}"
    );

    let audit = accounts.audit(a).await.unwrap();
    let amounts: Vec<i64> = audit.journal.iter().map(|t| t.amount).collect();
    assert_eq!(amounts, [600, 400]);
    assert_eq!(audit.account.balance, 0);
    assert_eq!(audit.journal[1].balance_after, 0);
    assert!(accounts.audit(short.id).await.unwrap().journal.is_empty());
}

async fn one_key_submitted_twice_in_one_batch_applies_once(store: &TestStore) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let account = open(&accounts, pi.id, 1_000, 30).await;
    let other = open(&accounts, pi.id, 1_000, 30).await;
    let answers = in_one_batch(
        store,
        &accounts,
        pi.id,
        &[
            (account.id, pi.id, 100, "twice"),
            (account.id, pi.id, 100, "twice"),
            (other.id, pi.id, 100, "twice"), // another account: another withdrawal
            (account.id, pi.id, 50, "twice"),
        ],
    )
    .await;
    let (first, second) = (answers[0].as_ref().unwrap(), answers[1].as_ref().unwrap());
    assert!(!first.replayed && second.replayed);
    assert_eq!(first.transaction.id, second.transaction.id);
    assert_eq!(second.balance, 900);
    let elsewhere = answers[2].as_ref().unwrap();
    assert!(!elsewhere.replayed);
    assert!(
        matches!(&answers[3], Err(StoreError::FailedPrecondition(msg)) if msg.contains("twice")),
        "{:?}",
        answers[3]
    );
    let audit = accounts.audit(account.id).await.unwrap();
    assert_eq!(audit.journal.len(), 1);
    assert_eq!(audit.account.balance, 900);
}

async fn a_batch_whose_database_call_fails_applies_nothing_and_every_caller_gets_unavailable(
    store: &TestStore,
) {
    const CALLERS: usize = 24;
    let (accounts, _) = college(store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let account = open(&accounts, pi.id, 1_000, 30).await;
    let lock = store.lock_writes(account.id).await;
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let accounts = accounts.clone();
            tokio::spawn(async move {
                accounts
                    .withdraw(account.id, pi.id, 1, &format!("k{i}"), "")
                    .await
            })
        })
        .collect();
    settled("every withdrawal is in a batch or queued", || {
        accounts.batch_sizes().withdrawals() as usize + accounts.withdrawals_queued() == CALLERS
    })
    .await;
    // The batches' database calls fail: on PostgreSQL their backends are
    // terminated while they wait for the row lock; on SQLite the write lock
    // outlasts the busy timeout.
    if let Kind::Postgres { .. } = store.kind {
        let deadline = Instant::now() + SETTLE;
        while !tasks.iter().all(|t| t.is_finished()) {
            assert!(Instant::now() < deadline, "the batches never failed");
            store
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()
                       AND query LIKE '%FOR NO KEY UPDATE%'",
                )
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    lock.release().await;
    assert!(
        accounts.batch_sizes().largest() > 1,
        "the failures were batches"
    );
    for answer in answers {
        let status = answer.unwrap_err().into_status();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }
    let audit = accounts.audit(account.id).await.unwrap();
    assert!(audit.journal.is_empty());
    assert_eq!(audit.account.balance, 1_000);
    // The store is fine afterwards, and a retry with a key applies.
    let retried = accounts
        .withdraw(account.id, pi.id, 1, "k0", "")
        .await
        .unwrap();
    assert!(!retried.replayed);
}

async fn next_payload(
    notices: &mut broadcast::Receiver<Notice>,
    deadline: Instant,
) -> Option<String> {
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, notices.recv()).await {
            Ok(Ok(Notice::Payload(payload))) => return Some(payload),
            Ok(Ok(Notice::Reconnected)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                continue;
            }
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return None,
        }
    }
}

async fn a_watch_on_one_college_instance_sees_a_withdrawal_made_through_another(store: &TestStore) {
    use futures::StreamExt as _;
    use grantmesh_college::{CollegeConfig, CollegeService};
    use grantmesh_proto::College as _;
    use grantmesh_proto::v1::{AccountEvent, WatchAccountRequest, WithdrawRequest, account_event};

    let keys = grantmesh_auth::Keys::signing(
        grantmesh_auth::TokenKeyPair::generate()
            .private_pem
            .as_bytes(),
        Duration::from_secs(600),
    )
    .unwrap();
    let config = |instance: &str| CollegeConfig {
        instance_id: instance.into(),
        day_length: REAL_DAY,
        keys: keys.clone(),
        require_identity: false,
        pool_size: 4,
        agencies: [("nsf".to_owned(), (1, 1_000_000))].into(),
        watches: grantmesh_college::WatchLimits::default(),
        mail: unread_mail(),
        signup_resend: Duration::from_secs(60),
    };
    let closing = CancellationToken::new();
    let writer = CollegeService::start(config("college-a"), &store.url, closing.clone())
        .await
        .unwrap();
    let watcher = CollegeService::start(config("college-b"), &store.url, closing.clone())
        .await
        .unwrap();
    let pi = researcher(writer.store(), "pi").await;
    let account = open(writer.store(), pi.id, 1_000, 30).await;
    let (token, _) = keys.researcher_token(pi.id, uuid::Uuid::new_v4()).unwrap();
    fn signed<T>(token: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        grantmesh_auth::authorize(&mut request, token).unwrap();
        request
    }

    let mut events = watcher
        .watch_account(signed(
            &token,
            WatchAccountRequest {
                account_id: account.id.to_string(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    async fn next(
        events: &mut (impl futures::Stream<Item = Result<AccountEvent, tonic::Status>> + Unpin),
    ) -> Option<AccountEvent> {
        tokio::time::timeout(Duration::from_millis(500), events.next())
            .await
            .ok()
            .flatten()
            .map(|event| event.unwrap())
    }
    let first = next(&mut events).await.expect("a snapshot first");
    assert_eq!(first.kind(), account_event::Kind::Snapshot);
    assert_eq!(first.account.unwrap().balance_minor, 1_000);

    // PostgreSQL's listener connects in the background: withdraw until the
    // watch reports one, then check it is the one made.
    let deadline = Instant::now() + SETTLE;
    let mut made = HashSet::new();
    let event = loop {
        assert!(
            Instant::now() < deadline,
            "no withdrawal event in {SETTLE:?}"
        );
        let reply = writer
            .withdraw(signed(
                &token,
                WithdrawRequest {
                    account_id: account.id.to_string(),
                    amount_minor: 10,
                    idempotency_key: format!("k{}", made.len()),
                    memo: "sensor".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        made.insert(reply.transaction.unwrap().transaction_id);
        if let Some(event) = next(&mut events).await {
            break event;
        }
    };
    assert_eq!(event.kind(), account_event::Kind::Withdrawal);
    let transaction = event.transaction.expect("the entry");
    assert!(made.contains(&transaction.transaction_id));
    assert_eq!(transaction.memo, "sensor");
    let balance = event.account.unwrap().balance_minor;
    assert!(balance < 1_000 && balance % 10 == 0, "{balance}");
    closing.cancel();
}

async fn agency_proposals_are_recorded_once_per_key_listed_and_awaiting_accounts(
    store: &TestStore,
) {
    let proposals = ProposalStore::start(&store.url, POOL_SIZE)
        .await
        .expect("the agency's store starts");
    let investigator = Uuid::new_v4();
    let new = NewProposal {
        agency: "nsf",
        principal_investigator: investigator,
        idempotency_key: "p1",
        title: "Tides",
        description: "Why the sea comes and goes",
        requested_amount: 5_000,
        duration_days: 30,
        accepted: true,
        reason: "",
    };
    let (first, created) = proposals.insert(&new).await.unwrap();
    assert!(created);
    assert!(first.accepted);
    assert_eq!(first.account_id, None);
    let (again, created) = proposals
        .insert(&NewProposal {
            title: "Tides, resubmitted",
            requested_amount: 9_000,
            ..new
        })
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(
        (again.id, again.title.as_str(), again.requested_amount),
        (first.id, "Tides", 5_000)
    );
    tokio::time::sleep(Duration::from_millis(5)).await; // distinct submission times
    let (rejected, _) = proposals
        .insert(&NewProposal {
            idempotency_key: "p2",
            accepted: false,
            reason: "out of band",
            ..new
        })
        .await
        .unwrap();
    assert_eq!(rejected.reason, "out of band");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (third, _) = proposals
        .insert(&NewProposal {
            idempotency_key: "p3",
            ..new
        })
        .await
        .unwrap();
    // Another agency's proposal with the same key is its own.
    let (elsewhere, created) = proposals
        .insert(&NewProposal {
            agency: "erc",
            ..new
        })
        .await
        .unwrap();
    assert!(created);
    assert_ne!(elsewhere.id, first.id);

    let all: Vec<_> = proposals
        .list("nsf", investigator, None, 10)
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(all, vec![third.id, rejected.id, first.id], "newest first");
    let page = proposals.list("nsf", investigator, None, 2).await.unwrap();
    let last = page.last().unwrap();
    let rest = proposals
        .list("nsf", investigator, Some((last.submitted_at, last.id)), 2)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![first.id]
    );
    assert!(
        proposals
            .list("nsf", Uuid::new_v4(), None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    tokio::time::sleep(Duration::from_millis(20)).await; // older than "now"
    let waiting: Vec<_> = proposals
        .awaiting_account("nsf", 0.0, 10)
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(
        waiting,
        vec![first.id, third.id],
        "accepted only, oldest first"
    );
    assert!(
        proposals
            .awaiting_account("nsf", 3_600.0, 10)
            .await
            .unwrap()
            .is_empty(),
        "none is an hour old"
    );
    proposals.set_account(first.id, "account-1").await.unwrap();
    proposals.set_account(first.id, "account-2").await.unwrap();
    let got = proposals.get("nsf", first.id).await.unwrap().unwrap();
    assert_eq!(got.account_id.as_deref(), Some("account-1"), "set once");
    assert!(proposals.get("erc", first.id).await.unwrap().is_none());
    let waiting: Vec<_> = proposals
        .awaiting_account("nsf", 0.0, 10)
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(waiting, vec![third.id]);
}

// ---------------------------------------------------------------------------
// Checks that belong to one backend or to neither.

#[tokio::test]
async fn an_unsupported_database_url_is_a_start_up_error_naming_the_scheme() {
    for (url, named) in [
        ("mysql://root@localhost/grants", "\"mysql\""),
        ("grantmesh.db", "no scheme"),
        ("sqlite:", "names no file"),
        ("sqlite::memory:", ":memory:"),
    ] {
        let err = AccountStore::start(url, 1, REAL_DAY, CancellationToken::new())
            .await
            .err()
            .unwrap_or_else(|| panic!("{url:?} was accepted"));
        assert!(err.to_string().contains(named), "{url:?}: {err}");
        let err = ProposalStore::start(url, 1)
            .await
            .err()
            .unwrap_or_else(|| panic!("{url:?} was accepted"));
        assert!(err.to_string().contains(named), "{url:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_urls_with_two_and_three_slashes_name_the_same_kind_of_file() {
    let dir = tempfile::tempdir().unwrap();
    let absolute = dir.path().join("abs.db");
    let url = format!("sqlite://{}", absolute.display()); // sqlite:///abs/path
    assert!(url.starts_with("sqlite:///"));
    let (accounts, _) = AccountStore::start(&url, 2, REAL_DAY, CancellationToken::new())
        .await
        .unwrap();
    researcher(&accounts, "ada").await;
    assert!(absolute.exists());
    // The audit tool connects to the existing file without migrating.
    let reader = AccountStore::connect(&format!("sqlite:{}", absolute.display()), 2, REAL_DAY)
        .await
        .unwrap();
    let missing = reader.audit(Uuid::new_v4()).await.unwrap_err();
    assert_eq!(code(missing), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_locked_past_the_busy_timeout_answers_unavailable_retry_with_the_same_key() {
    let store = TestStore::sqlite();
    let (accounts, _) = college(&store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let account = open(&accounts, pi.id, 1_000, 30).await;
    let Kind::Sqlite { path, .. } = &store.kind else {
        unreachable!()
    };
    // Another process holds the write lock longer than the busy timeout.
    let path = path.clone();
    let (locked, unlock) = (
        std::sync::mpsc::channel::<()>(),
        std::sync::mpsc::channel::<()>(),
    );
    let (locked_tx, locked_rx) = locked;
    let (unlock_tx, unlock_rx) = unlock;
    let holder = std::thread::spawn(move || {
        let mut conn = rusqlite::Connection::open(path).unwrap();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        locked_tx.send(()).unwrap();
        unlock_rx.recv().unwrap();
        drop(tx);
    });
    locked_rx.recv().unwrap();
    let started = Instant::now();
    let busy = accounts
        .withdraw(account.id, pi.id, 1, "k", "")
        .await
        .unwrap_err();
    unlock_tx.send(()).unwrap();
    holder.join().unwrap();
    assert!(started.elapsed() >= grantmesh_store::sqlite::BUSY_TIMEOUT);
    let status = busy.into_status();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("same key"),
        "{}",
        status.message()
    );
    // Retried with the same key once the lock is gone, it applies.
    let applied = accounts
        .withdraw(account.id, pi.id, 1, "k", "")
        .await
        .unwrap();
    assert!(!applied.replayed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn college_and_agency_instances_starting_together_on_one_sqlite_file_all_migrate() {
    let store = TestStore::sqlite();
    let start = |_| AccountStore::start(&store.url, 2, REAL_DAY, CancellationToken::new());
    let (a, b, c, agency) = tokio::join!(
        start(0),
        start(1),
        start(2),
        ProposalStore::start(&store.url, 2)
    );
    let (a, b, c) = (a.unwrap().0, b.unwrap().0, c.unwrap().0);
    agency.unwrap();
    let ada = researcher(&a, "ada").await;
    let account = open(&b, ada.id, 100, 1).await;
    assert_eq!(
        c.account(account.id, Some(ada.id)).await.unwrap().balance,
        100
    );
}

// ---------------------------------------------------------------------------
// Invitations and handing over the principal investigator's role, on both
// stores (their own module, so the list above stays as it is).

mod invitations {
    use super::*;
    use grantmesh_college::store::MAX_PENDING_INVITATIONS;

    conformance!(
        an_invitation_makes_a_member_only_when_the_invited_researcher_accepts,
        an_invitation_is_declined_by_the_invited_or_withdrawn_by_the_principal_investigator,
        inviting_an_unregistered_email_waits_for_it_to_sign_up,
        pending_invitations_are_bounded_per_account_and_per_email,
        the_principal_investigator_hands_the_role_to_a_member_and_may_then_leave,
    );

    async fn an_invitation_makes_a_member_only_when_the_invited_researcher_accepts(
        store: &TestStore,
    ) {
        let (accounts, _) = college(store, REAL_DAY).await;
        let pi = researcher(&accounts, "ada").await;
        let grace = researcher(&accounts, "grace").await;
        let mallory = researcher(&accounts, "mallory").await;
        let account = open(&accounts, pi.id, 1_000, 30).await;

        let refused = accounts
            .invite(account.id, grace.id, &mallory.email)
            .await
            .unwrap_err();
        assert_eq!(code(refused), tonic::Code::NotFound);
        let (row, pending) = accounts
            .invite(account.id, pi.id, &grace.email)
            .await
            .unwrap();
        assert_eq!(row.members.len(), 1, "not a member yet");
        assert_eq!(pending.len(), 1);
        assert_eq!(
            (
                pending[0].email.as_str(),
                pending[0].invited_by_email.as_str()
            ),
            (grace.email.as_str(), pi.email.as_str())
        );
        let (_, again) = accounts
            .invite(account.id, pi.id, &grace.email)
            .await
            .unwrap();
        assert_eq!(again.len(), 1, "inviting twice changes nothing");
        assert!(
            accounts.account(account.id, Some(grace.id)).await.is_err(),
            "not a member before accepting"
        );

        let hers = accounts.invitations_for(grace.id).await.unwrap();
        assert_eq!(hers.len(), 1);
        assert_eq!(hers[0].account_title, "Conformance");
        assert!(
            accounts
                .invitations_for(mallory.id)
                .await
                .unwrap()
                .is_empty()
        );
        let stolen = accounts
            .accept_invitation(mallory.id, hers[0].id)
            .await
            .unwrap_err();
        assert_eq!(code(stolen), tonic::Code::NotFound);

        let joined = accounts
            .accept_invitation(grace.id, hers[0].id)
            .await
            .unwrap();
        assert_eq!(joined.members.len(), 2);
        assert!(accounts.invitations_for(grace.id).await.unwrap().is_empty());
        let twice = accounts
            .accept_invitation(grace.id, hers[0].id)
            .await
            .unwrap_err();
        assert_eq!(code(twice), tonic::Code::NotFound);
        // Inviting a member changes nothing.
        let (_, none) = accounts
            .invite(account.id, pi.id, &grace.email)
            .await
            .unwrap();
        assert!(none.is_empty());
    }

    async fn an_invitation_is_declined_by_the_invited_or_withdrawn_by_the_principal_investigator(
        store: &TestStore,
    ) {
        let (accounts, _) = college(store, REAL_DAY).await;
        let pi = researcher(&accounts, "ada").await;
        let grace = researcher(&accounts, "grace").await;
        let mallory = researcher(&accounts, "mallory").await;
        let account = open(&accounts, pi.id, 1_000, 30).await;

        let (_, pending) = accounts
            .invite(account.id, pi.id, &grace.email)
            .await
            .unwrap();
        let id = pending[0].id;
        let refused = accounts
            .decline_invitation(mallory.id, id)
            .await
            .unwrap_err();
        assert_eq!(code(refused), tonic::Code::NotFound);
        accounts.decline_invitation(grace.id, id).await.unwrap();
        assert!(
            accounts
                .account_invitations(account.id)
                .await
                .unwrap()
                .is_empty()
        );
        let gone = accounts.accept_invitation(grace.id, id).await.unwrap_err();
        assert_eq!(code(gone), tonic::Code::NotFound);

        let (_, pending) = accounts
            .invite(account.id, pi.id, &grace.email)
            .await
            .unwrap();
        accounts
            .decline_invitation(pi.id, pending[0].id)
            .await
            .unwrap();
        assert!(accounts.invitations_for(grace.id).await.unwrap().is_empty());
        let row = accounts.account(account.id, None).await.unwrap();
        assert_eq!(row.members.len(), 1, "declining adds no one");
    }

    async fn inviting_an_unregistered_email_waits_for_it_to_sign_up(store: &TestStore) {
        let (accounts, _) = college(store, REAL_DAY).await;
        let pi = researcher(&accounts, "ada").await;
        let account = open(&accounts, pi.id, 1_000, 30).await;
        let email = format!("later-{}@example.org", Uuid::new_v4().simple());
        let (_, pending) = accounts.invite(account.id, pi.id, &email).await.unwrap();
        assert_eq!(pending[0].email, email);

        let later = accounts
            .register_researcher("Later", &email, "not-a-real-hash")
            .await
            .unwrap();
        let theirs = accounts.invitations_for(later.id).await.unwrap();
        assert_eq!(theirs.len(), 1);
        let joined = accounts
            .accept_invitation(later.id, theirs[0].id)
            .await
            .unwrap();
        assert!(joined.members.iter().any(|m| m.researcher_id == later.id));
    }

    async fn pending_invitations_are_bounded_per_account_and_per_email(store: &TestStore) {
        let (accounts, _) = college(store, REAL_DAY).await;
        let pi = researcher(&accounts, "ada").await;
        let account = open(&accounts, pi.id, 1_000, 30).await;
        for n in 0..MAX_PENDING_INVITATIONS {
            accounts
                .invite(account.id, pi.id, &format!("invitee-{n}@example.org"))
                .await
                .unwrap();
        }
        let full = accounts
            .invite(account.id, pi.id, "one-more@example.org")
            .await
            .unwrap_err();
        assert_eq!(code(full), tonic::Code::ResourceExhausted);

        // One email invited by as many accounts as it may hold.
        let target = "popular@example.org";
        for _ in 0..MAX_PENDING_INVITATIONS {
            let other = open(&accounts, pi.id, 1_000, 30).await;
            accounts.invite(other.id, pi.id, target).await.unwrap();
        }
        let other = open(&accounts, pi.id, 1_000, 30).await;
        let full = accounts.invite(other.id, pi.id, target).await.unwrap_err();
        assert!(
            matches!(full, StoreError::ResourceExhausted(ref msg) if msg.contains("this email")),
            "{full:?}"
        );
        assert!(
            accounts
                .account_invitations(other.id)
                .await
                .unwrap()
                .is_empty()
        );
    }

    async fn the_principal_investigator_hands_the_role_to_a_member_and_may_then_leave(
        store: &TestStore,
    ) {
        let (accounts, _) = college(store, REAL_DAY).await;
        let pi = researcher(&accounts, "ada").await;
        let grace = researcher(&accounts, "grace").await;
        let outsider = researcher(&accounts, "mallory").await;
        let account = open(&accounts, pi.id, 1_000, 30).await;
        accounts
            .add_member(account.id, pi.id, &grace.email)
            .await
            .unwrap();

        let refused = accounts
            .transfer_principal(account.id, pi.id, outsider.id)
            .await
            .unwrap_err();
        assert_eq!(code(refused), tonic::Code::FailedPrecondition);
        let refused = accounts
            .transfer_principal(account.id, grace.id, grace.id)
            .await
            .unwrap_err();
        assert_eq!(
            code(refused),
            tonic::Code::PermissionDenied,
            "only the PI hands over"
        );
        let stays = accounts
            .transfer_principal(account.id, pi.id, pi.id)
            .await
            .unwrap();
        assert_eq!(stays.principal_investigator, pi.id);

        let handed = accounts
            .transfer_principal(account.id, pi.id, grace.id)
            .await
            .unwrap();
        assert_eq!(handed.principal_investigator, grace.id);
        let role = |row: &AccountRow, id: Uuid| {
            row.members
                .iter()
                .find(|m| m.researcher_id == id)
                .map(|m| m.principal_investigator)
        };
        assert_eq!(role(&handed, grace.id), Some(true));
        assert_eq!(role(&handed, pi.id), Some(false));
        // The old PI now manages nothing and may leave; the new one may not.
        let refused = accounts
            .invite(account.id, pi.id, &outsider.email)
            .await
            .unwrap_err();
        assert_eq!(code(refused), tonic::Code::PermissionDenied);
        let refused = accounts
            .remove_member(account.id, grace.id, grace.id)
            .await
            .unwrap_err();
        assert_eq!(code(refused), tonic::Code::FailedPrecondition);
        let left = accounts
            .remove_member(account.id, pi.id, pi.id)
            .await
            .unwrap();
        assert_eq!(left.members.len(), 1);
        assert_eq!(left.members[0].researcher_id, grace.id);
        assert!(left.members[0].principal_investigator);
    }
}

mod proposals_given_up {
    use super::*;

    conformance!(an_accepted_proposal_given_up_on_keeps_its_reason_and_is_no_longer_awaited);

    async fn an_accepted_proposal_given_up_on_keeps_its_reason_and_is_no_longer_awaited(
        store: &TestStore,
    ) {
        let proposals = ProposalStore::start(&store.url, POOL_SIZE)
            .await
            .expect("the agency's store starts");
        let new = NewProposal {
            agency: "nsf",
            principal_investigator: Uuid::new_v4(),
            idempotency_key: "p1",
            title: "Orphan",
            description: "",
            requested_amount: 5_000,
            duration_days: 30,
            accepted: true,
            reason: "",
        };
        let (orphan, _) = proposals.insert(&new).await.unwrap();
        assert_eq!(orphan.account_failure, None);
        let (other, _) = proposals
            .insert(&NewProposal {
                idempotency_key: "p2",
                ..new
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        proposals
            .set_account_failure(orphan.id, "unknown investigator")
            .await
            .unwrap();
        proposals
            .set_account_failure(orphan.id, "a later reason")
            .await
            .unwrap();
        let got = proposals.get("nsf", orphan.id).await.unwrap().unwrap();
        assert_eq!(
            got.account_failure.as_deref(),
            Some("unknown investigator"),
            "the first stays"
        );
        let waiting: Vec<_> = proposals
            .awaiting_account("nsf", 0.0, 10)
            .await
            .unwrap()
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(waiting, vec![other.id]);
        // A proposal with its account is never marked.
        proposals.set_account(other.id, "account-1").await.unwrap();
        proposals
            .set_account_failure(other.id, "late")
            .await
            .unwrap();
        let got = proposals.get("nsf", other.id).await.unwrap().unwrap();
        assert_eq!(got.account_failure, None);
    }
}

async fn a_watch_sees_every_withdrawal_of_a_batch_in_order_from_another_instance(
    store: &TestStore,
) {
    use futures::StreamExt as _;
    use grantmesh_college::{CollegeConfig, CollegeService};
    use grantmesh_proto::College as _;
    use grantmesh_proto::v1::{WatchAccountRequest, account_event};

    let keys = grantmesh_auth::Keys::signing(
        grantmesh_auth::TokenKeyPair::generate()
            .private_pem
            .as_bytes(),
        Duration::from_secs(600),
    )
    .unwrap();
    let config = |instance: &str| CollegeConfig {
        instance_id: instance.into(),
        day_length: REAL_DAY,
        keys: keys.clone(),
        require_identity: false,
        pool_size: 8,
        agencies: [("nsf".to_owned(), (1, 1_000_000))].into(),
        watches: grantmesh_college::WatchLimits::default(),
        mail: unread_mail(),
        signup_resend: Duration::from_secs(60),
    };
    let closing = CancellationToken::new();
    let writer = CollegeService::start(config("college-a"), &store.url, closing.clone())
        .await
        .unwrap();
    let watcher = CollegeService::start(config("college-b"), &store.url, closing.clone())
        .await
        .unwrap();
    let accounts = writer.store();
    let pi = researcher(accounts, "pi").await;
    let account = open(accounts, pi.id, 100_000, 30).await;
    let (token, _) = keys.researcher_token(pi.id, uuid::Uuid::new_v4()).unwrap();
    // Two watchers of the account on the other instance: both see it all.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut request = tonic::Request::new(WatchAccountRequest {
            account_id: account.id.to_string(),
        });
        grantmesh_auth::authorize(&mut request, &token).unwrap();
        let mut events = watcher.watch_account(request).await.unwrap().into_inner();
        let first = events.next().await.unwrap().unwrap();
        assert_eq!(first.kind(), account_event::Kind::Snapshot);
        streams.push(events);
    }
    // PostgreSQL's listener connects in the background: withdraw until both
    // watches have caught up with the last one.
    let deadline = Instant::now() + SETTLE;
    let mut last = vec![100_000; streams.len()];
    for warm in 0.. {
        assert!(
            Instant::now() < deadline,
            "no withdrawal event in {SETTLE:?}"
        );
        let balance = accounts
            .withdraw(account.id, pi.id, 1, &format!("warm-{warm}"), "")
            .await
            .unwrap()
            .balance;
        for (events, last) in streams.iter_mut().zip(&mut last) {
            while *last != balance {
                match tokio::time::timeout(Duration::from_millis(300), events.next()).await {
                    Ok(Some(Ok(event))) => *last = event.account.unwrap().balance_minor,
                    _ => break,
                }
            }
        }
        if last.iter().all(|&b| b == balance) {
            break;
        }
    }

    let asks: Vec<Ask> = [
        "b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "b9", "b10", "b11",
    ]
    .iter()
    .enumerate()
    .map(|(i, key)| (account.id, pi.id, i as i64 + 1, *key))
    .collect();
    let answers = in_one_batch(store, accounts, pi.id, &asks).await;
    let made: Vec<(String, i64)> = answers
        .iter()
        .map(|a| {
            let w = a.as_ref().unwrap();
            (w.transaction.id.to_string(), w.transaction.balance_after)
        })
        .collect();
    for events in &mut streams {
        let mut seen = Vec::new();
        while seen.len() < made.len() {
            let event = tokio::time::timeout(SETTLE, events.next())
                .await
                .expect("every withdrawal of the batch is reported")
                .unwrap()
                .unwrap();
            assert_eq!(event.kind(), account_event::Kind::Withdrawal);
            let transaction = event.transaction.unwrap();
            assert_eq!(
                event.account.unwrap().balance_minor,
                transaction.balance_after_minor,
                "the account as of that withdrawal"
            );
            seen.push((transaction.transaction_id, transaction.balance_after_minor));
        }
        assert_eq!(seen, made, "every withdrawal, in order");
    }
    closing.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_whose_caller_gave_up_is_cancelled_and_its_connection_not_handed_out() {
    let store = TestStore::postgres().await;
    // One connection: were it handed out again mid-statement, the next call
    // would wait behind the abandoned one.
    let (accounts, _) = AccountStore::start(&store.url, 1, REAL_DAY, CancellationToken::new())
        .await
        .unwrap();
    let pi = researcher(&accounts, "pi").await;
    let account = open(&accounts, pi.id, 1_000, 30).await;
    let (holder, connection) = tokio_postgres::connect(&store.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    holder
        .batch_execute("BEGIN; LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // The client gives up on a read stuck behind the lock.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        accounts.account(account.id, None),
    )
    .await;
    assert!(gave_up.is_err(), "the read waited on the lock");
    // Its statement is cancelled on the server, well before the lock timeout.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let left = store
            .execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()
                 AND state = 'active' AND query LIKE '%FROM accounts a WHERE a.id%'
                 AND pid <> pg_backend_pid()",
            )
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned statement still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An unrelated call gets a clean connection at once, the lock still held.
    let found = tokio::time::timeout(
        Duration::from_secs(2),
        accounts.researcher_by_email(&pi.email),
    )
    .await
    .expect("an unrelated call does not wait behind the abandoned one")
    .unwrap();
    assert_eq!(found.unwrap().id, pi.id);
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        accounts.account(account.id, None).await.unwrap().balance,
        1_000
    );
}

/// A lone withdrawal reads the account only once it holds the account's
/// lock. Here another writer's debit holds the lock and empties most of
/// the account while the lone withdrawal waits: it must answer from what
/// the account holds once the lock is its own, not from before the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_withdrawal_that_waited_on_another_debit_is_answered_from_after_the_wait() {
    let store = TestStore::postgres().await;
    let (accounts, _) = college(&store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let account = open(&accounts, pi.id, 10_000, 30).await;

    let (holder, connection) = tokio_postgres::connect(&store.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // Another writer (as another College would) debits 9000 and holds the lock.
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM accounts WHERE id = '{a}' FOR NO KEY UPDATE;
             INSERT INTO withdrawals (account_id, researcher_id, amount, idempotency_key, memo, balance_after, created_at)
             VALUES ('{a}', '{pi}', 9000, 'holder', '', 1000, clock_timestamp());
             UPDATE accounts SET balance = 1000 WHERE id = '{a}'",
            a = account.id,
            pi = pi.id
        ))
        .await
        .unwrap();

    let lone = {
        let accounts = accounts.clone();
        tokio::spawn(async move {
            accounts
                .withdraw(account.id, pi.id, 5_000, "lone", "")
                .await
        })
    };
    wait_for_a_lock_wait(&holder).await;
    holder.batch_execute("COMMIT").await.unwrap();

    let refused = lone.await.unwrap().unwrap_err();
    assert!(
        matches!(&refused, StoreError::FailedPrecondition(msg)
            if msg.contains("insufficient funds") && msg.contains("holds 1000")),
        "answered from the account as it is after the other debit: {refused:?}"
    );
    let audit = accounts.audit(account.id).await.unwrap();
    assert_eq!(
        audit.journal.len(),
        1,
        "only the other debit is in the journal"
    );
    assert_eq!(
        accounts.account(account.id, None).await.unwrap().balance,
        1_000
    );
}

/// A withdrawal that finds the batcher idle runs on its caller's task. A
/// caller that gives up mid-statement (its client went away) abandons the
/// statement, which is cancelled on the server, applied or not as a whole;
/// its slot comes back, and a withdrawal that queued behind it meanwhile is
/// handed on and applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_withdrawal_whose_caller_gave_up_frees_its_slot_for_the_queue_behind_it() {
    let store = TestStore::postgres().await;
    // Four connections: two batches in flight at most.
    let (accounts, _) = AccountStore::start(&store.url, 4, REAL_DAY, CancellationToken::new())
        .await
        .unwrap();
    let pi = researcher(&accounts, "pi").await;
    let account = open(&accounts, pi.id, 10_000, 30).await;
    let other = open(&accounts, pi.id, 10_000, 30).await;
    let lock = store.lock_writes_of(&[account.id, other.id]).await;
    let withdraw = |on: Uuid, key: &'static str| {
        let accounts = accounts.clone();
        tokio::spawn(async move { accounts.withdraw(on, pi.id, 100, key, "").await })
    };
    let waiting_on_the_lock = || async {
        store
            .execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
            )
            .await
            .unwrap()
    };
    // One lone withdrawal per slot, on two accounts (a College never runs
    // two batches on one account).
    let given_up = [
        withdraw(account.id, "given-up-1"),
        withdraw(other.id, "given-up-2"),
    ];
    let deadline = Instant::now() + SETTLE;
    while waiting_on_the_lock().await < 2 {
        assert!(
            Instant::now() < deadline,
            "the lone withdrawals never waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let queued = withdraw(account.id, "queued");
    settled("the third withdrawal queued", || {
        accounts.withdrawals_queued() == 1
    })
    .await;

    for call in &given_up {
        call.abort();
    }
    // Both abandoned statements are cancelled; the queued withdrawal now
    // runs in a batch of its own and is the one waiting.
    let deadline = Instant::now() + SETTLE;
    while accounts.withdrawals_queued() > 0 || waiting_on_the_lock().await != 1 {
        assert!(
            Instant::now() < deadline,
            "the abandoned withdrawals did not make way for the queued one"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lock.release().await;
    let applied = tokio::time::timeout(SETTLE, queued)
        .await
        .expect("the queued withdrawal is answered")
        .unwrap()
        .unwrap();
    assert_eq!(applied.balance, 9_900);
    // Both slots are free again: two more lone withdrawals go at once.
    for (on, key) in [(account.id, "after-1"), (other.id, "after-2")] {
        tokio::time::timeout(SETTLE, accounts.withdraw(on, pi.id, 100, key, ""))
            .await
            .expect("a slot is free")
            .unwrap();
    }
    let keys = |audit: grantmesh_college::store::AccountAudit| -> Vec<String> {
        audit
            .journal
            .into_iter()
            .map(|t| t.idempotency_key)
            .collect()
    };
    assert_eq!(
        keys(accounts.audit(account.id).await.unwrap()),
        ["queued", "after-1"],
        "the given-up ones applied nothing"
    );
    assert_eq!(keys(accounts.audit(other.id).await.unwrap()), ["after-2"]);
}

/// A College instance that nobody watches through holds no `LISTEN`
/// connection (every `NOTIFY` in the database would wake it and its
/// backend); the first subscriber makes one and hears every change after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_listens_for_changes_only_while_someone_subscribes() {
    let store = TestStore::postgres().await;
    let (accounts, notifications) = college(&store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let account = open(&accounts, pi.id, 1_000, 30).await;
    accounts
        .withdraw(account.id, pi.id, 1, "before", "")
        .await
        .unwrap();
    let listeners = || async {
        let (client, connection) = tokio_postgres::connect(&store.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND query LIKE 'LISTEN %'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(
        listeners().await,
        0,
        "nobody subscribed, so nothing listens"
    );

    let mut notices = notifications.subscribe().await.unwrap();
    assert_eq!(
        listeners().await,
        1,
        "the first subscriber made one connection"
    );
    let second = notifications.subscribe().await.unwrap();
    assert_eq!(listeners().await, 1, "and every other subscriber shares it");
    drop(second);

    accounts
        .withdraw(account.id, pi.id, 1, "after", "")
        .await
        .unwrap();
    let notice = tokio::time::timeout(SETTLE, notices.recv())
        .await
        .expect("the withdrawal is heard")
        .unwrap();
    assert!(
        matches!(&notice, Notice::Payload(p) if p.contains(&account.id.to_string())),
        "{notice:?}"
    );
}

// ---------------------------------------------------------------------------
// The defects issue 18 fixed, each checked where it showed.

/// Defect 2: keys were scoped to the account, so a member reusing a key
/// another member had used got that member's transaction back as
/// "replayed" and their own withdrawal never happened.
async fn two_members_using_one_key_each_make_their_own_withdrawal(store: &TestStore) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let student = researcher(&accounts, "student").await;
    let account = open(&accounts, pi.id, 1_000, 30).await;
    accounts
        .add_member(account.id, pi.id, &student.email)
        .await
        .unwrap();
    let ada = accounts
        .withdraw(account.id, pi.id, 300, "shared-key", "")
        .await
        .unwrap();
    let bob = accounts
        .withdraw(account.id, student.id, 200, "shared-key", "")
        .await
        .unwrap();
    assert!(!bob.replayed, "the student's withdrawal is their own");
    assert_ne!(bob.transaction.id, ada.transaction.id);
    assert_eq!(
        (bob.transaction.researcher_id, bob.balance),
        (student.id, 500)
    );
    // Each retry replays its own caller's entry.
    let again = accounts
        .withdraw(account.id, pi.id, 300, "shared-key", "")
        .await
        .unwrap();
    assert!(again.replayed && again.transaction.id == ada.transaction.id);
    let again = accounts
        .withdraw(account.id, student.id, 200, "shared-key", "")
        .await
        .unwrap();
    assert!(again.replayed && again.transaction.id == bob.transaction.id);
    let audit = accounts.audit(account.id).await.unwrap();
    assert_eq!(audit.journal.len(), 2);
    assert_eq!(audit.account.balance, 500);
    // One row per (account, caller, key) stays the store's own backstop.
    let duplicate = store
        .execute(&format!(
            "INSERT INTO withdrawals (account_id, researcher_id, amount, idempotency_key, memo, balance_after, created_at)
             SELECT account_id, researcher_id, 1, idempotency_key, '', 0, created_at FROM withdrawals WHERE id = {}",
            bob.transaction.id
        ))
        .await;
    assert!(duplicate.is_err(), "a second row for one caller's key");
}

/// A withdrawal still queued when its caller goes away (the client gave
/// up) is not applied by the batch that later takes the queue, and is
/// counted.
async fn a_queued_withdrawal_whose_caller_gave_up_is_dropped_unapplied_and_counted(
    store: &TestStore,
) {
    let (accounts, _) = college(store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let account = open(&accounts, pi.id, 1_000, 30).await;
    let (lock, blockers) = fill_slots(store, &accounts, pi.id).await;
    let submit = |on: Uuid, key: String| {
        let accounts = accounts.clone();
        tokio::spawn(async move { accounts.withdraw(on, pi.id, 100, &key, "").await })
    };
    let queued_before = accounts.withdrawals_queued();
    let gone = submit(account.id, "gone".into());
    settled("the withdrawal queued", || {
        accounts.withdrawals_queued() == queued_before + 1
    })
    .await;
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    lock.release().await;
    for blocker in blockers {
        blocker
            .await
            .unwrap()
            .expect("a blocker applies once released");
    }
    settled("the queue was taken", || accounts.withdrawals_queued() == 0).await;
    assert_eq!(accounts.batch_sizes().abandoned(), 1);
    assert!(accounts.audit(account.id).await.unwrap().journal.is_empty());
    assert_eq!(
        accounts.account(account.id, None).await.unwrap().balance,
        1_000
    );
}

/// Defect 1: a lone withdrawal judged membership from a snapshot taken
/// before it waited for the account's lock, so a member removed while it
/// waited still got it applied. Here a side session locks the account and
/// removes the member (and commits) while the withdrawal waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_removed_while_their_withdrawal_waited_on_the_lock_is_refused() {
    let store = TestStore::postgres().await;
    let (accounts, _) = college(&store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let student = researcher(&accounts, "student").await;
    let account = open(&accounts, pi.id, 10_000, 30).await;
    accounts
        .add_member(account.id, pi.id, &student.email)
        .await
        .unwrap();
    let (side, connection) = tokio_postgres::connect(&store.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    side.batch_execute(&format!(
        "BEGIN; SELECT 1 FROM accounts WHERE id = '{}' FOR UPDATE",
        account.id
    ))
    .await
    .unwrap();
    let waiting = {
        let accounts = accounts.clone();
        tokio::spawn(async move {
            accounts
                .withdraw(account.id, student.id, 5_000, "while-removed", "")
                .await
        })
    };
    wait_for_a_lock_wait(&side).await;
    side.batch_execute(&format!(
        "DELETE FROM members WHERE account_id = '{}' AND researcher_id = '{}'; COMMIT",
        account.id, student.id
    ))
    .await
    .unwrap();
    let refused = tokio::time::timeout(SETTLE, waiting)
        .await
        .expect("answered once the lock is free")
        .unwrap()
        .unwrap_err();
    assert_eq!(code(refused), tonic::Code::NotFound);
    let audit = accounts.audit(account.id).await.unwrap();
    assert!(
        audit.journal.is_empty(),
        "nothing journaled: {:?}",
        audit.journal
    );
    assert_eq!(audit.account.balance, 10_000);
}

/// Defect 4: one account locked elsewhere (another College's open
/// transaction, a stopped process) stalled every withdrawal in its batch,
/// and after the lock timeout failed them all. Now the others are answered
/// at once and the locked account's withdrawal waits on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_account_locked_elsewhere_does_not_hold_up_or_fail_the_rest_of_its_batch() {
    let store = TestStore::postgres().await;
    let (accounts, _) = college(&store, REAL_DAY).await;
    let pi = researcher(&accounts, "pi").await;
    let hot = open(&accounts, pi.id, 10_000, 30).await;
    let free = open(&accounts, pi.id, 10_000, 30).await;
    let also_free = open(&accounts, pi.id, 10_000, 30).await;
    let (lock, blockers) = fill_slots(&store, &accounts, pi.id).await;
    let submit = |on: Uuid, key: &'static str| {
        let accounts = accounts.clone();
        tokio::spawn(async move { accounts.withdraw(on, pi.id, 100, key, "").await })
    };
    let queued = accounts.withdrawals_queued();
    let mut asks = Vec::new();
    for (n, (on, key)) in [
        (free.id, "free"),
        (hot.id, "hot"),
        (also_free.id, "also-free"),
    ]
    .into_iter()
    .enumerate()
    {
        asks.push(submit(on, key));
        settled("the withdrawal queued", || {
            accounts.withdrawals_queued() == queued + n + 1
        })
        .await;
    }
    // Before their batch runs, another writer takes the hot account and
    // holds it (past the lock timeout, if nothing else gave way).
    let outside = store.lock_writes(hot.id).await;
    lock.release().await;
    for blocker in blockers {
        blocker
            .await
            .unwrap()
            .expect("a blocker applies once released");
    }
    let hot_answer = asks.remove(1);
    for ask in asks {
        let applied = ask
            .await
            .unwrap()
            .expect("applied while the hot account is locked");
        assert_eq!(applied.balance, 9_900);
    }
    assert!(
        !hot_answer.is_finished(),
        "the hot account's withdrawal waits"
    );
    assert!(accounts.batch_sizes().deferred() >= 1);
    outside.release().await;
    let hot_done = tokio::time::timeout(SETTLE, hot_answer)
        .await
        .expect("answered once the lock is free")
        .unwrap()
        .unwrap();
    assert_eq!(hot_done.balance, 9_900);
}

/// A College decides a withdrawal on an account it wrote a moment ago from
/// what it knew of it, in one round trip, and the write holds only if
/// nothing changed meanwhile: another College's withdrawal, a key used
/// before, a debit by a writer outside the Colleges, a member removed
/// elsewhere each send it the locked way, whose answer is the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_withdrawal_decided_from_what_this_college_knew_is_written_only_if_nothing_changed() {
    let store = TestStore::postgres().await;
    let (here, _) = college(&store, REAL_DAY).await;
    let (elsewhere, _) = college(&store, REAL_DAY).await;
    let pi = researcher(&here, "pi").await;
    let student = researcher(&here, "student").await;
    let account = open(&here, pi.id, 10_000, 30).await;
    here.add_member(account.id, pi.id, &student.email)
        .await
        .unwrap();
    let sizes = here.batch_sizes();
    let withdraw = |on: &AccountStore, key: &str| {
        let on = on.clone();
        let key = key.to_owned();
        async move { on.withdraw(account.id, student.id, 100, &key, "").await }
    };
    // Skips the pause after a guess that did not hold.
    let after_a_miss = || tokio::time::sleep(Duration::from_millis(1_100));

    withdraw(&here, "k1").await.unwrap();
    assert_eq!((sizes.guesses_held(), sizes.guesses_missed()), (0, 0));
    let second = withdraw(&here, "k2").await.unwrap();
    assert_eq!(second.balance, 9_800);
    assert_eq!(sizes.guesses_held(), 1, "the second went in one trip");

    withdraw(&elsewhere, "k3").await.unwrap();
    let fourth = withdraw(&here, "k4").await.unwrap();
    assert_eq!(fourth.balance, 9_600, "judged by the balance after k3");
    assert_eq!((sizes.guesses_held(), sizes.guesses_missed()), (1, 1));

    after_a_miss().await;
    let fifth = withdraw(&here, "k5").await.unwrap();
    assert_eq!((sizes.guesses_held(), sizes.guesses_missed()), (2, 1));
    let again = withdraw(&here, "k5").await.unwrap();
    assert!(again.replayed, "a key used before is a replay");
    assert_eq!(again.transaction, fifth.transaction);
    assert_eq!(
        sizes.guesses_missed(),
        2,
        "the key's index refused the guess"
    );

    // A writer that knows nothing of versions (an operator's session, a
    // script) takes 1,000 off the row: the database moves the version.
    after_a_miss().await;
    withdraw(&here, "k6").await.unwrap();
    assert_eq!(sizes.guesses_held(), 3);
    let (side, connection) = tokio_postgres::connect(&store.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    side.execute(
        "UPDATE accounts SET balance = balance - 1000 WHERE id = $1",
        &[&account.id],
    )
    .await
    .unwrap();
    let seventh = withdraw(&here, "k7").await.unwrap();
    assert_eq!(
        seventh.balance, 8_300,
        "judged by the balance the row holds"
    );
    assert_eq!(sizes.guesses_missed(), 3);

    after_a_miss().await;
    elsewhere
        .remove_member(account.id, pi.id, student.id)
        .await
        .unwrap();
    let refused = withdraw(&here, "k8").await.unwrap_err();
    assert_eq!(code(refused), tonic::Code::NotFound);
    assert_eq!(sizes.guesses_missed(), 4, "the removal moved the version");

    let audit = here.audit(account.id).await.unwrap();
    let keys: Vec<&str> = audit
        .journal
        .iter()
        .map(|entry| entry.idempotency_key.as_str())
        .collect();
    assert_eq!(keys.len(), 7, "k1..k7 once each: {keys:?}");
    assert!(!keys.contains(&"k8"));
    assert_eq!(audit.account.balance, 8_300);
    assert_eq!(
        audit.account.balance,
        10_000 - 1_000 - audit.journal.iter().map(|e| e.amount).sum::<i64>()
    );
}

/// Defect 6: the READ COMMITTED the withdrawal path relies on was not set
/// on the session, so on a server whose default isolation is SERIALIZABLE
/// concurrent withdrawals failed with INTERNAL (serialization failures).
/// The URL's own `options` make this session's default SERIALIZABLE here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn withdrawals_on_a_server_whose_default_isolation_is_serializable_are_never_internal() {
    let base = TestStore::postgres().await;
    let url = format!(
        "{}?options=-c%20default_transaction_isolation%3Dserializable",
        base.url
    );
    let (accounts, _) = AccountStore::start(&url, POOL_SIZE, REAL_DAY, CancellationToken::new())
        .await
        .expect("the store starts");
    let pi = researcher(&accounts, "pi").await;
    let spread: Vec<Uuid> = {
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(open(&accounts, pi.id, 1_000_000, 30).await.id);
        }
        ids
    };
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let accounts = accounts.clone();
            let account = spread[i % spread.len()];
            tokio::spawn(async move {
                let mut applied = 0;
                for n in 0..10 {
                    let key = format!("w-{i}-{n}");
                    match withdraw_retrying(&accounts, account, pi.id, 1, &key).await {
                        Ok(_) => applied += 1,
                        Err(err) => panic!("withdrawal {key}: {:?}", err.into_status()),
                    }
                }
                applied
            })
        })
        .collect();
    let mut applied = 0;
    for task in tasks {
        applied += task.await.unwrap();
    }
    assert_eq!(applied, 640);
    let mut journaled = 0;
    for account in &spread {
        let audit = accounts.audit(*account).await.unwrap();
        let sum: i64 = audit.journal.iter().map(|t| t.amount).sum();
        assert_eq!(audit.account.balance, 1_000_000 - sum);
        journaled += audit.journal.len();
    }
    assert_eq!(journaled, 640);
}

/// Keeps every batch slot of `accounts` busy: a withdrawal of 1 on each of
/// fresh accounts of `pi` whose writes are held up from outside, until one
/// more has to queue. Released, they apply and the queue goes next.
async fn fill_slots(
    store: &TestStore,
    accounts: &AccountStore,
    pi: Uuid,
) -> (WriteLock, Vec<tokio::task::JoinHandle<Answer>>) {
    let mut blocking = Vec::new();
    for _ in 0..=grantmesh_college::store::MAX_BATCHES_IN_FLIGHT {
        blocking.push(open(accounts, pi, 1_000, 30).await.id);
    }
    let lock = store.lock_writes_of(&blocking).await;
    let mut blockers = Vec::new();
    let mut next = blocking.iter();
    while accounts.withdrawals_queued() == 0 {
        let started = accounts.batch_sizes().batches();
        let on = *next.next().expect("a blocker account for every slot");
        let submitter = accounts.clone();
        blockers.push(tokio::spawn(async move {
            submitter
                .withdraw(on, pi, 1, &format!("blocker-{on}"), "")
                .await
        }));
        settled("a blocker started a batch or queued", || {
            accounts.batch_sizes().batches() > started || accounts.withdrawals_queued() > 0
        })
        .await;
    }
    (lock, blockers)
}

/// Waits until some session of the test database waits on a lock.
async fn wait_for_a_lock_wait(side: &tokio_postgres::Client) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let waiting = side
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if waiting > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "nothing waited on the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
