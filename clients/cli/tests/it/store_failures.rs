//! The central store failing under the services: a PostgreSQL server
//! restarted mid-run, a database that is not there at start-up, and a
//! College that hangs while an Agency waits on it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::db::TestDb;
use crate::support::sandbox;
use crate::support::*;
use grantmesh_proto::v1::*;
use grantmesh_proto::{AgencyClient, CollegeClient};
use nix::sys::signal::Signal;
use tokio::process::Command;
use tokio::time::Instant;
use tonic::Code;
use uuid::Uuid;

/// A PostgreSQL server of this test's own (a fresh directory, a free port),
/// so restarting it disturbs no other test or checkout; stopped and removed
/// when the value is dropped.
struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnPostgres {
    async fn start() -> (OwnPostgres, String) {
        let server = OwnPostgres {
            dir: tempfile::Builder::new()
                .prefix("grantmesh-pg-restart-")
                .tempdir()
                .unwrap(),
            port: free_port(),
        };
        let url = server.run("start").await;
        (server, url)
    }

    fn command(&self, action: &str) -> std::process::Command {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/postgres");
        let mut command = std::process::Command::new(script);
        command
            .arg(action)
            .env("GRANTMESH_PGDATA", self.dir.path())
            .env("GRANTMESH_PGPORT", self.port.to_string());
        command
    }

    async fn run(&self, action: &str) -> String {
        let output = Command::from(self.command(action)).output().await.unwrap();
        assert!(
            output.status.success(),
            "scripts/postgres {action}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self.command("stop").output();
    }
}

async fn researcher(college: &mut CollegeClient<tonic::transport::Channel>) -> (String, String) {
    let email = format!("r-{}@university.edu", Uuid::new_v4().simple());
    // Sign-up names no id; the verified sign-up's session does.
    let login = crate::support::sign_up(college, "Ada", &email, "orbital kettle lantern").await;
    (login.researcher.unwrap().researcher_id, login.token)
}

#[tokio::test]
async fn a_postgres_restart_mid_run_loses_no_acknowledged_withdrawal() {
    let (postgres, server) = OwnPostgres::start().await;
    let database = format!(
        "{}/gm_restart_{}",
        server.rsplit_once('/').unwrap().0,
        Uuid::new_v4().simple()
    );
    {
        let (admin, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {}",
                database.rsplit_once('/').unwrap().1
            ))
            .await
            .unwrap();
    }
    // The college registers with a registry that is not running: this test calls it directly.
    let college_server = sandbox::college(
        &database,
        "college-r",
        sandbox::DAY,
        &["https://127.0.0.1:9"],
    )
    .await;
    let mut college = CollegeClient::new(crate::support::tls::channel(&college_server.url).await);
    let (pi, token) = researcher(&mut college).await;
    // The largest award the sandbox colleges let nsf grant.
    let award = sandbox::nsf_band().max();
    let open = OpenAccountRequest {
        proposal_id: Uuid::new_v4().to_string(),
        agency: "nsf".into(),
        principal_investigator_id: pi,
        title: "Restart".into(),
        award_minor: award,
        duration_days: 30,
        currency: "USD".into(),
    };
    let credential = crate::support::agency_credential("nsf", &open);
    let account = CollegeClient::new(
        crate::support::tls::channel_as(&college_server.url, "agency/nsf").await,
    )
    .open_account(authed(open, &credential))
    .await
    .unwrap()
    .into_inner()
    .account_id;

    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let unavailable = Arc::new(Mutex::new(0usize));
    let mut writers = Vec::new();
    for writer in 0..8 {
        let (mut college, account, token) = (college.clone(), account.clone(), token.clone());
        let (acknowledged, unavailable) = (acknowledged.clone(), unavailable.clone());
        writers.push(tokio::spawn(async move {
            for n in 0..40 {
                let key = format!("w{writer}-{n}");
                let deadline = Instant::now() + Duration::from_secs(60);
                // Retry with the same key until the store acknowledges it.
                loop {
                    let request = authed(
                        WithdrawRequest {
                            account_id: account.clone(),
                            amount_minor: 7,
                            idempotency_key: key.clone(),
                            memo: String::new(),
                        },
                        &token,
                    );
                    match college.withdraw(request).await {
                        Ok(_) => {
                            acknowledged.lock().unwrap().insert(key.clone());
                            break;
                        }
                        Err(status) => {
                            assert_eq!(
                                status.code(),
                                Code::Unavailable,
                                "a store outage is UNAVAILABLE: {status:?}"
                            );
                            *unavailable.lock().unwrap() += 1;
                            assert!(Instant::now() < deadline, "the store never came back");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    postgres.run("restart").await;
    for writer in writers {
        writer.await.unwrap();
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_eq!(acknowledged.len(), 320);
    let (client, connection) = tokio_postgres::connect(&database, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let id: Uuid = account.parse().unwrap();
    let rows = client
        .query(
            "SELECT idempotency_key FROM withdrawals WHERE account_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let journal: BTreeSet<String> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(rows.len(), journal.len(), "no key twice");
    assert_eq!(
        journal, acknowledged,
        "every acknowledged withdrawal is in the journal, and nothing else"
    );
    let balance: i64 = client
        .query_one("SELECT balance FROM accounts WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, award - 7 * 320);
    eprintln!(
        "{} calls were refused as UNAVAILABLE during the restart",
        unavailable.lock().unwrap()
    );
    college_server.stop().await.unwrap();
}

async fn run_binary(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_grantmesh"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env("GRANTMESH_INSECURE", "1")
        .kill_on_drop(true);
    if args.first() == Some(&"college") {
        command.env("GRANTMESH_MAIL_OUTBOX", crate::support::outbox());
    }
    for (key, value) in env {
        command.env(key, value);
    }
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the binary exits")
        .unwrap()
}

#[tokio::test]
async fn a_missing_or_unreachable_database_is_a_clear_start_up_error() {
    let token_key = crate::support::tls::dir().join("token.key");
    let token_pub = crate::support::tls::dir().join("token.pub");
    let keys = [("GRANTMESH_TOKEN_KEY_FILE", token_key.to_str().unwrap())];
    let agency_keys = [(
        "GRANTMESH_TOKEN_PUBLIC_KEY_FILE",
        token_pub.to_str().unwrap(),
    )];
    let missing = run_binary(&["college", "--listen", "127.0.0.1:0"], &keys).await;
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--database-url"));
    // Nowhere to mail sign-up codes: a usage error naming both ways.
    let mut no_mail = Command::new(env!("CARGO_BIN_EXE_grantmesh"));
    let no_mail = no_mail
        .args(["college", "--listen", "127.0.0.1:0"])
        .args(["--database-url", "postgres://x@127.0.0.1:1/y"])
        .env("GRANTMESH_INSECURE", "1")
        .env("GRANTMESH_TOKEN_KEY_FILE", &token_key)
        .env_remove("GRANTMESH_MAIL_OUTBOX")
        .env_remove("GRANTMESH_SMTP_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(no_mail.status.code(), Some(2), "{no_mail:?}");
    let said = String::from_utf8_lossy(&no_mail.stderr);
    assert!(
        said.contains("--smtp-url") && said.contains("--mail-outbox"),
        "{said}"
    );

    let unreachable = run_binary(
        &[
            "agency",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "postgres://grantmesh@127.0.0.1:1/nothing",
        ],
        &agency_keys,
    )
    .await;
    assert_eq!(unreachable.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(
        stderr.contains("failed to reach the database at 127.0.0.1:1/nothing"),
        "{stderr}"
    );

    // A made-up key, or the private key given to an agency.
    let placeholder = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(placeholder.path(), "change-me-token-key").unwrap();
    let bad_key = run_binary(
        &[
            "college",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "postgres://x@127.0.0.1:1/y",
            "--token-key-file",
            placeholder.path().to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(bad_key.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_key.stderr).contains("not an Ed25519 private key"));
    let agency_with_the_private_key = run_binary(
        &[
            "agency",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "postgres://x@127.0.0.1:1/y",
        ],
        &keys,
    )
    .await;
    assert_eq!(agency_with_the_private_key.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&agency_with_the_private_key.stderr)
            .contains("an agency verifies tokens with the public half only")
    );
}

#[tokio::test]
async fn a_college_that_hangs_mid_call_leaves_the_accepted_proposal_with_exactly_one_account() {
    let db = TestDb::create().await;
    let registry = Proc::registry(&[]).await;
    let college = Proc::member(
        "college",
        &registry.url(),
        &["--database-url", &db.url, "--instance-id", "college-h"],
    )
    .await;
    let agency = Proc::member(
        "agency",
        &registry.url(),
        &[
            "--database-url",
            &db.url,
            "--open-timeout",
            "1s",
            "--reconcile-every",
            "300ms",
            "--name",
            "nsf",
        ],
    )
    .await;
    let mut college_client = CollegeClient::connect(college.url()).await.unwrap();
    let (_, token) = researcher(&mut college_client).await;
    let mut agency_client = AgencyClient::connect(agency.url()).await.unwrap();
    assert_eventually(
        Duration::from_secs(5),
        "the agency sees the college",
        || async { ids(&registry.url(), "college").await == ["college-h"] },
    )
    .await;

    let submit = || {
        authed(
            SubmitProposalRequest {
                title: "Patience".into(),
                description: String::new(),
                requested_amount_minor: 450_000,
                duration_days: 30,
                idempotency_key: "hang-1".into(),
            },
            &token,
        )
    };
    college.signal(Signal::SIGSTOP);
    let refused = agency_client
        .submit_proposal(submit())
        .await
        .expect_err("the college is frozen");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("accepted"), "{refused:?}");
    college.signal(Signal::SIGCONT);

    // The reconciler (or a retry) finishes the job; the account is opened once.
    let proposal_id: String = db
        .client()
        .await
        .query_one("SELECT id::text FROM proposals", &[])
        .await
        .unwrap()
        .get(0);
    assert_eventually(
        Duration::from_secs(15),
        "the proposal gets its account",
        || async {
            let proposal = agency_client
                .clone()
                .get_proposal(authed(
                    GetProposalRequest {
                        proposal_id: proposal_id.clone(),
                    },
                    &token,
                ))
                .await
                .unwrap()
                .into_inner();
            !proposal.account_id.is_empty()
        },
    )
    .await;
    let retried = agency_client
        .submit_proposal(submit())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.proposal_id, proposal_id);
    assert_eq!(retried.decision(), proposal::Decision::Accepted);
    let accounts: i64 = db
        .client()
        .await
        .query_one(
            "SELECT COUNT(*) FROM accounts WHERE proposal_id = $1",
            &[&proposal_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(accounts, 1);
    let account_id: String = db
        .client()
        .await
        .query_one("SELECT id::text FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(retried.account_id, account_id);
}
