//! `grantmesh simulate` as the real binary against a real mesh (registry,
//! college with one-second days, agency) on a real PostgreSQL, and its audit
//! shown to catch a store corrupted on purpose.
//!
//! The audit's checks are included from the binary's source, so the tests
//! run exactly the code the command runs.

#[allow(dead_code)]
#[path = "../../src/simulate/audit.rs"]
mod audit;

use std::time::Duration;

use crate::support::*;
use audit::{Ack, Acknowledged, Check};
use grantmesh_college::store::{AccountAudit, AccountStore};
use uuid::Uuid;

/// Long enough for a simulation whose accounts last at most six one-second
/// days, on a busy two-core machine.
const RUN_WITHIN: Duration = Duration::from_secs(90);

/// A registry, a college whose days last a second, and the default agency.
struct Mesh {
    registry: Proc,
    _college: Proc,
    _agency: Proc,
    /// The central store's URL.
    database: String,
}

impl Mesh {
    /// A mesh on the database shared by this test binary.
    async fn start() -> Mesh {
        Mesh::start_on(&shared_database().await).await
    }

    async fn start_on(database: &str) -> Mesh {
        let registry = Proc::registry(&[]).await;
        let college = Proc::member(
            "college",
            &registry.url(),
            &["--day-length", "1s", "--database-url", database],
        )
        .await;
        let agency = Proc::member(
            "agency",
            &registry.url(),
            &["--name", "nsf", "--database-url", database],
        )
        .await;
        assert_eventually(
            Duration::from_secs(10),
            "college and agency registered",
            || async { list(&registry.url(), "").await.len() == 2 },
        )
        .await;
        Mesh {
            registry,
            _college: college,
            _agency: agency,
            database: database.to_owned(),
        }
    }

    /// Runs `grantmesh simulate --json ARGS…`; returns the exit code, the summary and stderr.
    async fn simulate(&self, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
        let (code, stdout, stderr) = self.run_simulate(&[&["--json"], args].concat()).await;
        let summary = serde_json::from_str(stdout.trim()).unwrap_or_else(|err| {
            panic!("stdout is not one JSON object ({err}): {stdout:?}\nstderr: {stderr}")
        });
        (code, summary, stderr)
    }

    /// Runs `grantmesh simulate ARGS…` as a user would (the client's log
    /// level left to the binary); returns the exit code, stdout and stderr.
    async fn run_simulate(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_grantmesh"));
        command.arg("simulate");
        if !args.contains(&"--max-duration") {
            command.args(["--max-duration", "60s"]);
        }
        // Requests straddling the test agency's band (300000..500000 minor units).
        if !args.contains(&"--min-request") {
            command.args(["--min-request", "200000", "--max-request", "600000"]);
        }
        let output = command
            .args(["--registry", &self.registry.url()])
            .args(["--database-url", &self.database])
            .args(["--outbox", crate::support::outbox().to_str().unwrap()])
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("GRANTMESH_REGISTRY")
            .env_remove("GRANTMESH_LOG")
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(RUN_WITHIN, output)
            .await
            .expect("the simulation ends within its bound")
            .expect("the binary runs");
        (
            output.status.code(),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    }
}

fn count(value: &serde_json::Value) -> u64 {
    value.as_u64().unwrap_or_else(|| panic!("a count: {value}"))
}

#[tokio::test]
async fn the_simulation_passes_its_invariant_checks_against_a_live_mesh() {
    let mesh = Mesh::start().await;
    let (code, summary, stderr) = mesh
        .simulate(&["--projects", "4", "--students", "2", "--seed", "7"])
        .await;
    assert_eq!(code, Some(0), "{summary:#}\n{stderr}");
    assert_eq!(summary["seed"], 7);
    assert!(stderr.contains("--seed 7"), "the seed is printed: {stderr}");
    let proposals = &summary["proposals"];
    assert!(count(&proposals["accepted"]) > 0, "{summary:#}");
    assert!(count(&proposals["rejected"]) > 0, "{summary:#}");
    let reasons = proposals["rejected_by_reason"].as_object().unwrap();
    assert!(
        reasons.keys().all(|r| r.contains("outside nsf's band")),
        "rejections carry the agency's reason: {reasons:?}"
    );
    let withdrawals = &summary["withdrawals"];
    assert!(count(&withdrawals["applied"]) > 0, "{summary:#}");
    assert!(count(&withdrawals["replayed"]) > 0, "{summary:#}");
    assert!(summary["money_moved_minor"].as_i64().unwrap() > 0);
    assert_eq!(summary["audit"]["outcome"], "passed", "{summary:#}");
    assert_eq!(
        summary["audit"]["accounts"].as_u64(),
        Some(count(&proposals["accepted"])),
        "every accepted account was audited and passed: {summary:#}"
    );
    assert_eq!(summary["stopped_by_max_duration"], false);
}

/// Runs a small simulation whose proposals are all accepted and returns one
/// of its accounts that has a journal, as the store holds it, with a ledger
/// acknowledging exactly that journal.
async fn a_spent_account(mesh: &Mesh) -> (AccountStore, AccountAudit, Acknowledged) {
    let (code, summary, stderr) = mesh
        .simulate(&[
            "--projects",
            "2",
            "--students",
            "1",
            "--min-request",
            "300000",
            "--max-request",
            "500000",
            "--days",
            "2",
        ])
        .await;
    assert_eq!(code, Some(0), "{summary:#}\n{stderr}");
    let store = AccountStore::connect(&mesh.database, 2, Duration::from_secs(1))
        .await
        .unwrap();
    for account in summary["accounts"].as_array().unwrap() {
        let id: Uuid = account.as_str().unwrap().parse().unwrap();
        let audit = store.audit(id).await.unwrap();
        if audit.journal.is_empty() {
            continue;
        }
        let mut acknowledged = Acknowledged::default();
        for row in &audit.journal {
            acknowledged.acknowledged(
                &row.idempotency_key,
                Ack {
                    transaction_id: row.id,
                    amount: row.amount,
                },
            );
        }
        assert_eq!(
            audit::check(&audit, &acknowledged),
            [],
            "the store as the simulation left it passes"
        );
        return (store, audit, acknowledged);
    }
    panic!("no account was spent from: {summary:#}");
}

async fn sql(mesh: &Mesh, statement: &str, account: Uuid) {
    let (client, connection) = tokio_postgres::connect(&mesh.database, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let changed = client.execute(statement, &[&account]).await.unwrap();
    assert_eq!(changed, 1, "{statement}");
}

fn checks(breaches: &[audit::Breach]) -> Vec<Check> {
    let mut checks: Vec<_> = breaches.iter().map(|b| b.check).collect();
    checks.sort();
    checks.dedup();
    checks
}

#[tokio::test]
async fn a_corrupted_balance_fails_the_audit() {
    let mesh = Mesh::start().await;
    let (store, before, acknowledged) = a_spent_account(&mesh).await;
    // Off by one either way, whichever the balance >= 0 constraint allows.
    sql(
        &mesh,
        "UPDATE accounts SET balance = CASE WHEN balance > 0 THEN balance - 1 ELSE balance + 1 END
         WHERE id = $1",
        before.account.id,
    )
    .await;
    let after = store.audit(before.account.id).await.unwrap();
    let breaches = audit::check(&after, &acknowledged);
    assert_eq!(
        checks(&breaches),
        [Check::BalanceMatchesJournal],
        "{breaches:#?}"
    );
    assert_eq!(breaches[0].account, before.account.id);
}

#[tokio::test]
async fn a_duplicated_journal_row_fails_the_audit() {
    let mesh = Mesh::start().await;
    let (store, before, acknowledged) = a_spent_account(&mesh).await;
    sql(
        &mesh,
        "INSERT INTO withdrawals (account_id, researcher_id, amount, idempotency_key, memo, balance_after, created_at)
         SELECT account_id, researcher_id, amount, idempotency_key || '-duplicate', memo, balance_after, created_at
         FROM withdrawals WHERE account_id = $1 ORDER BY id LIMIT 1",
        before.account.id,
    )
    .await;
    let after = store.audit(before.account.id).await.unwrap();
    assert_eq!(after.journal.len(), before.journal.len() + 1);
    let breaches = audit::check(&after, &acknowledged);
    assert_eq!(
        checks(&breaches),
        [
            Check::BalanceMatchesJournal,
            Check::JournalRunningBalance,
            Check::NoUnacknowledgedRows
        ],
        "{breaches:#?}"
    );
}

#[tokio::test]
async fn a_run_cut_short_by_its_max_duration_still_passes_its_audit() {
    let mesh = Mesh::start().await;
    // Accounts that outlive the run, each with one researcher spending: with
    // this seed's choices it takes a lone researcher more than twelve
    // seconds to empty one (a unit test of the plan checks it), so the run
    // ends mid-spending, possibly with calls unanswered.
    let (code, summary, stderr) = mesh
        .simulate(&[
            "--seed",
            "19",
            "--projects",
            "2",
            "--students",
            "0",
            "--min-request",
            "300000",
            "--max-request",
            "500000",
            "--days",
            "60",
            "--max-duration",
            "4s",
        ])
        .await;
    assert_eq!(code, Some(0), "{summary:#}\n{stderr}");
    assert_eq!(summary["stopped_by_max_duration"], true, "{summary:#}");
    assert!(count(&summary["withdrawals"]["applied"]) > 0, "{summary:#}");
    assert_eq!(summary["audit"]["outcome"], "passed", "{summary:#}");
    assert_eq!(summary["audit"]["accounts"], 2, "{summary:#}");
}

#[tokio::test]
async fn a_withdrawal_nobody_made_fails_the_run_with_exit_code_7() {
    let db = crate::support::db::TestDb::create().await;
    let mesh = Mesh::start_on(&db.url).await;
    let client = db.client().await;
    let run = mesh.simulate(&[
        "--projects",
        "1",
        "--students",
        "1",
        "--min-request",
        "400000",
        "--max-request",
        "400000",
        "--days",
        "4",
    ]);
    let ghost = async {
        assert_eventually(Duration::from_secs(20), "an account is opened", || async {
            client
                .query_opt("SELECT 1 FROM accounts", &[])
                .await
                .unwrap()
                .is_some()
        })
        .await;
        // A journal entry behind the service's back, under a key no simulated
        // researcher ever sent.
        let inserted = client
            .execute(
                "INSERT INTO withdrawals (account_id, researcher_id, amount, idempotency_key, memo, balance_after)
                 SELECT id, principal_investigator, 1, 'ghost', 'not made by anyone', balance FROM accounts",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(inserted, 1);
    };
    let ((code, summary, stderr), ()) = tokio::join!(run, ghost);
    assert_eq!(code, Some(7), "{summary:#}\n{stderr}");
    assert_eq!(summary["audit"]["outcome"], "breached", "{summary:#}");
    let breaches = summary["audit"]["breaches"].as_array().unwrap();
    assert!(
        breaches
            .iter()
            .any(|b| b["check"] == "no_unacknowledged_rows"
                && b["detail"].as_str().unwrap().contains("ghost")),
        "{breaches:#?}"
    );
    assert!(stderr.contains("invariant breached"), "{stderr}");
}

#[tokio::test]
async fn the_summary_table_names_its_columns_separates_thousands_and_lists_what_the_audit_checked()
{
    let mesh = Mesh::start().await;
    let (code, table, stderr) = mesh
        .run_simulate(&["--projects", "6", "--students", "1", "--seed", "3"])
        .await;
    assert_eq!(code, Some(0), "{table}\n{stderr}");
    // The first header cell names the table; no placeholder is left in a
    // reason; amounts have thousands separators; the audit lists its checks.
    let header = table.lines().nth(1).unwrap_or_default();
    assert!(
        header.contains("simulation") && header.contains("result"),
        "{table}"
    );
    assert!(!table.contains('<'), "{table}");
    assert!(table.contains("USD 3,000.00 to 5,000.00"), "{table}");
    for check in [
        "✓ balance = award − journal",
        "✓ never negative",
        "✓ nothing at or after expiry",
        "✓ every acknowledged withdrawal journaled exactly once",
    ] {
        assert!(table.contains(check), "{check}: {table}");
    }
    // No log lines of the client's own amid the summary.
    assert!(!stderr.contains(" WARN "), "{stderr}");
}

#[tokio::test]
async fn a_run_in_which_projects_failed_exits_5_and_each_proposal_stays_with_one_agency() {
    // A second agency, `erc`, that the college does not know and that funds
    // any amount: the projects sent to it end without an account, while
    // `nsf`'s run to their end. Retries of an erc proposal must stay at erc:
    // another agency deciding the same proposal would hide the failure.
    let mesh = Mesh::start().await;
    let _erc = Proc::member(
        "agency",
        &mesh.registry.url(),
        &[
            "--name",
            "erc",
            "--min-award",
            "1",
            "--max-award",
            "1000000000",
            "--database-url",
            &mesh.database,
        ],
    )
    .await;
    assert_eventually(
        Duration::from_secs(10),
        "both agencies registered",
        || async { list(&mesh.registry.url(), "agency").await.len() == 2 },
    )
    .await;
    let (code, summary, stderr) = mesh
        .simulate(&["--projects", "4", "--students", "1", "--seed", "5"])
        .await;
    assert_eq!(code, Some(5), "{summary:#}\n{stderr}");
    assert_eq!(
        summary["proposals"]["failed_by_error"]["propose: Unavailable"], 2,
        "{summary:#}"
    );
    assert!(
        summary["proposals"]["first_failure"]
            .as_str()
            .is_some_and(|f| f.contains("unknown agency \"erc\"")),
        "{summary:#}"
    );
    assert!(stderr.contains("2 of 4 project(s) failed"), "{stderr}");
}
