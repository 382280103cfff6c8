//! The commands a researcher types, run as the real `grantmesh` binary
//! against a real mesh (registry, college and agency processes, a real
//! Postgres), each test with its own session directory.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::support::*;
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// Exit codes documented in `grantmesh --help` and `docs/cli.md`.
pub(crate) const REFUSED: i32 = 4;
/// `grantmesh` exits 3 for NOT_FOUND (docs/cli.md).
pub(crate) const NOT_FOUND: i32 = 3;
pub(crate) const UNAVAILABLE: i32 = 5;
pub(crate) const AUTH: i32 = 6;

/// A CLI run: its exit code and what it printed.
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn ok(self, what: &str) -> Self {
        assert_eq!(self.code, 0, "grantmesh {what} failed: {}", self.stderr);
        self
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// The binary with a session directory and (unless `None`) a registry list.
pub(crate) fn cli(config: &Path, registry: Option<&str>, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_grantmesh"));
    command
        .args(args)
        .env("GRANTMESH_CONFIG_DIR", config)
        .env("GRANTMESH_LOG", "error")
        .env_remove("GRANTMESH_TOKEN")
        .env_remove("GRANTMESH_PASSWORD")
        .env_remove("GRANTMESH_REGISTRY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(registry) = registry {
        command.env("GRANTMESH_REGISTRY", registry);
    }
    command
}

pub(crate) async fn run_with(mut command: tokio::process::Command, stdin: Option<&str>) -> Run {
    let mut child = command.spawn().expect("the grantmesh binary starts");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).await.unwrap();
    }
    drop(pipe);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("grantmesh finished within 30 s")
        .unwrap();
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

pub(crate) async fn run(config: &Path, registry: Option<&str>, args: &[&str]) -> Run {
    run_with(cli(config, registry, args), None).await
}

/// A registry with one college and the agency `nsf` (band 300000..500000), all registered.
async fn mesh() -> (Proc, Proc, Proc) {
    let registry = Proc::registry(&[]).await;
    let college = Proc::member("college", &registry.url(), &[]).await;
    let agency = Proc::member("agency", &registry.url(), &["--name", "nsf"]).await;
    let url = registry.url();
    assert_eventually(
        Duration::from_secs(5),
        "college and agency registered",
        || async { list(&url, "").await.len() == 2 },
    )
    .await;
    (registry, college, agency)
}

pub(crate) fn fresh_email(name: &str) -> String {
    format!(
        "{}-{}@uni.edu",
        name.to_lowercase(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Signs up and logs in a researcher, password through stdin both times.
pub(crate) async fn sign_up_and_log_in(config: &Path, registry: &str, name: &str) -> String {
    let email = fresh_email(name);
    let signup = cli(
        config,
        Some(registry),
        &[
            "signup",
            "--name",
            name,
            "--email",
            &email,
            "--password-stdin",
        ],
    );
    let signed_up = run_with(signup, Some("orbital kettle lantern\n"))
        .await
        .ok("signup");
    assert!(
        signed_up.stdout.contains("check") && signed_up.stdout.contains("verify-email"),
        "sign-up says where the code went and what to do with it: {}",
        signed_up.stdout
    );
    verify_email(config, registry, &email, "orbital kettle lantern").await;
    let login = cli(
        config,
        Some(registry),
        &["login", "--email", &email, "--password-stdin"],
    );
    run_with(login, Some("orbital kettle lantern\n"))
        .await
        .ok("login");
    email
}

/// Reads the code mailed to `email` with `grantmesh mail` (from this test
/// binary's outbox) and finishes the sign-up with `grantmesh verify-email`,
/// the password through the environment.
pub(crate) async fn verify_email(config: &Path, registry: &str, email: &str, password: &str) {
    let outbox = crate::support::outbox().to_str().unwrap().to_owned();
    let code = run(
        config,
        None,
        &["mail", "--outbox", &outbox, "--to", email, "--code"],
    )
    .await
    .ok("mail --code");
    let code = code.stdout.trim().to_owned();
    assert_eq!(code.len(), 8, "{code:?}");
    let mut verify = cli(
        config,
        Some(registry),
        &["verify-email", "--email", email, "--code", &code],
    );
    verify.env("GRANTMESH_PASSWORD", password);
    let verified = run_with(verify, None).await.ok("verify-email");
    assert!(
        verified.stdout.contains("logged in as"),
        "{}",
        verified.stdout
    );
}

/// A closed loopback port's URL: bound, then released.
fn closed_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

#[tokio::test]
async fn a_researcher_runs_a_grant_from_the_command_line() {
    let (registry, _college, _agency) = mesh().await;
    let r = registry.url();
    let config = tempfile::tempdir().unwrap();
    let cfg = config.path();

    let email = sign_up_and_log_in(cfg, &r, "Ada").await;
    let session = cfg.join("session.json");
    let mode = std::fs::metadata(&session).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is owner-only");

    // From here on the registry comes from the saved session, not the environment.
    let who = run(cfg, None, &["whoami"]).await.ok("whoami");
    assert!(who.stdout.contains(&email), "{}", who.stdout);

    let propose = [
        "propose", "--title", "Folding", "--amount", "4000", "--days", "30", "--agency", "nsf",
        "--key", "p1",
    ];
    let accepted = run(cfg, None, &propose).await.ok("propose");
    let replayed = run(cfg, None, &[&propose[..], &["--output", "json"]].concat())
        .await
        .ok("propose --output json");
    let proposal = replayed.json();
    assert_eq!(proposal["decision"], "DECISION_ACCEPTED");
    let account = proposal["accountId"].as_str().unwrap().to_owned();
    assert!(accepted.stdout.contains("accepted"), "{}", accepted.stdout);
    assert!(
        accepted.stdout.contains(&account),
        "the table shows the account: {}",
        accepted.stdout
    );

    let rejected = run(
        cfg,
        None,
        &[
            "propose", "--title", "Tiny", "--amount", "100", "--days", "30", "--agency", "nsf",
        ],
    )
    .await;
    assert_eq!(rejected.code, REFUSED, "{}", rejected.stderr);
    assert!(rejected.stderr.contains("band"), "{}", rejected.stderr);

    let accounts = run(cfg, None, &["accounts"]).await.ok("accounts");
    assert!(accounts.stdout.contains(&account), "{}", accounts.stdout);
    assert!(
        accounts.stdout.contains("USD 4,000.00"),
        "{}",
        accounts.stdout
    );

    let bob = fresh_email("bob");
    let bob_config = tempfile::tempdir().unwrap();
    let mut signup = cli(
        bob_config.path(),
        Some(&r),
        &["signup", "--name", "Bob", "--email", &bob],
    );
    signup.env("GRANTMESH_PASSWORD", "quartz heron battery staple");
    run_with(signup, None)
        .await
        .ok("signup with GRANTMESH_PASSWORD");
    let added = run(cfg, None, &["add-member", &account, &bob])
        .await
        .ok("add-member");
    assert!(added.stdout.contains(&bob), "{}", added.stdout);
    assert!(added.stdout.contains("pending"), "{}", added.stdout);
    verify_email(bob_config.path(), &r, &bob, "quartz heron battery staple").await;
    let mut login = cli(bob_config.path(), Some(&r), &["login", "--email", &bob]);
    login.env("GRANTMESH_PASSWORD", "quartz heron battery staple");
    run_with(login, None).await.ok("bob logs in");
    accept_the_invitation(bob_config.path(), &r, &account).await;

    let withdraw = [
        "withdraw", &account, "25", "--memo", "reagents", "--key", "w1",
    ];
    let first = run(cfg, None, &withdraw).await.ok("withdraw");
    assert!(first.stdout.contains("USD 3,975.00"), "{}", first.stdout);
    let again = run(cfg, None, &withdraw).await.ok("withdraw replayed");
    assert!(
        again.stdout.contains("yes"),
        "shown as replayed: {}",
        again.stdout
    );
    assert!(again.stdout.contains("USD 3,975.00"), "{}", again.stdout);

    let broke = run(cfg, None, &["withdraw", &account, "1000000"]).await;
    assert_eq!(broke.code, REFUSED, "{}", broke.stderr);
    assert!(
        broke
            .stderr
            .contains("FAILED_PRECONDITION: insufficient funds"),
        "{}",
        broke.stderr
    );
    assert!(
        !broke.stderr.contains("Status {"),
        "no Rust type names: {}",
        broke.stderr
    );

    let journal = run(cfg, None, &["transactions", &account])
        .await
        .ok("transactions");
    assert_eq!(
        journal.stdout.matches("reagents").count(),
        1,
        "{}",
        journal.stdout
    );

    let shown = run(cfg, None, &["account", &account, "--output", "json"])
        .await
        .ok("account --output json")
        .json();
    assert_eq!(
        shown["balanceMinor"], "397500",
        "int64 as a string: {shown}"
    );
    assert_eq!(shown["awardMinor"], "400000");
    assert_eq!(shown["members"][0]["role"], "ROLE_PRINCIPAL_INVESTIGATOR");
    assert_eq!(shown["members"].as_array().unwrap().len(), 2);
    let journal = run(cfg, None, &["transactions", &account, "--output", "json"])
        .await
        .ok("transactions --output json")
        .json();
    assert_eq!(
        journal["transactions"][0]["amountMinor"], "2500",
        "{journal}"
    );
    assert_eq!(journal["transactions"][0]["memo"], "reagents");

    // The journal and the report for a spreadsheet, and the report read as
    // a person reads it: 25.00 of 4,000.00 spent, 3,975.00 left.
    let csv = run(cfg, None, &["transactions", &account, "--output", "csv"])
        .await
        .ok("transactions --output csv");
    let lines: Vec<&str> = csv.stdout.lines().collect();
    assert!(
        lines[0]
            .starts_with("transaction,when,researcherId,researcher,amount,currency,amountMinor"),
        "{}",
        csv.stdout
    );
    assert_eq!(
        lines.len(),
        2,
        "a header and the one withdrawal: {}",
        csv.stdout
    );
    assert!(
        lines[1].contains(",25.00,USD,2500,397500,reagents,w1"),
        "{}",
        csv.stdout
    );
    let report = run(cfg, None, &["report", &account]).await.ok("report");
    for expected in [
        "USD 4,000.00",
        "USD 25.00 in 1 withdrawal(s)",
        "USD 3,975.00",
        "0.6% of the award spent",
    ] {
        assert!(
            report.stdout.contains(expected),
            "{expected}: {}",
            report.stdout
        );
    }
    let figures = run(cfg, None, &["report", &account, "--output", "json"])
        .await
        .ok("report --output json")
        .json();
    assert_eq!(
        (
            figures["awardedMinor"].as_i64(),
            figures["spentMinor"].as_i64(),
            figures["availableMinor"].as_i64()
        ),
        (Some(400_000), Some(2_500), Some(397_500)),
        "{figures}"
    );
    let as_csv = run(cfg, None, &["report", &account, "--output", "csv"])
        .await
        .ok("report --output csv");
    assert!(
        as_csv
            .stdout
            .starts_with("accountId,title,currency,line,awardedMinor,spentMinor,availableMinor"),
        "{}",
        as_csv.stdout
    );
    let no_csv = run(cfg, None, &["accounts", "--output", "csv"]).await;
    assert_eq!(no_csv.code, 2, "a usage error: {}", no_csv.stderr);
    assert!(
        no_csv.stderr.contains("--output csv is for"),
        "{}",
        no_csv.stderr
    );

    let listed = run(
        cfg,
        None,
        &["instances", "--registry", &format!("{},{r}", closed_url())],
    )
    .await
    .ok("instances");
    assert!(listed.stdout.contains("agency=nsf"), "{}", listed.stdout);
    assert!(
        listed.stdout.contains(&format!("answered by {r}")),
        "{}",
        listed.stdout
    );

    // A token about to expire is renewed with the refresh token before a
    // command uses it, and the session file is replaced.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&session).unwrap()).unwrap();
    let mut due = saved.clone();
    due["expires_at"] = "2000-01-01T00:00:00Z".into();
    std::fs::write(&session, due.to_string()).unwrap();
    run(cfg, None, &["accounts"])
        .await
        .ok("accounts with a renewed token");
    let renewed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&session).unwrap()).unwrap();
    assert_ne!(
        renewed["refresh_token"], saved["refresh_token"],
        "{renewed}"
    );
    assert_ne!(renewed["expires_at"], due["expires_at"]);
    let token = renewed["token"].as_str().unwrap().to_owned();

    run(cfg, None, &["logout"]).await.ok("logout");
    assert!(!session.exists(), "logout removes the session file");
    let after = run(cfg, None, &["accounts", "--registry", &r]).await;
    assert_eq!(after.code, AUTH, "{}", after.stderr);
    assert!(after.stderr.contains("grantmesh login"), "{}", after.stderr);
    // The colleges ended the session: the token is refused even when given by hand.
    let kept = run(
        cfg,
        None,
        &["accounts", "--registry", &r, "--token", &token],
    )
    .await;
    assert_eq!(kept.code, AUTH, "{}", kept.stderr);
    assert!(kept.stderr.contains("session has ended"), "{}", kept.stderr);
}

#[tokio::test]
async fn an_expired_session_asks_for_a_new_login() {
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("session.json"),
        serde_json::json!({
            "token": "stale", "researcher_id": "r", "name": "Ada", "email": "ada@uni.edu",
            "expires_at": "2020-01-01T00:00:00Z", "registry": closed_url(),
        })
        .to_string(),
    )
    .unwrap();
    let run = run(config.path(), None, &["accounts"]).await;
    assert_eq!(run.code, AUTH, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("your session expired; run grantmesh login"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn an_unreachable_registry_is_named_and_exits_unavailable() {
    let config = tempfile::tempdir().unwrap();
    let (a, b) = (closed_url(), closed_url());
    let registries = format!("{a},{b}");
    let call = run(
        config.path(),
        Some(&registries),
        &["accounts", "--token", "whatever"],
    )
    .await;
    assert_eq!(call.code, UNAVAILABLE, "{}", call.stderr);
    assert!(
        call.stderr
            .contains(&format!("no registry answered at {a}, {b}")),
        "{}",
        call.stderr
    );
    let listed = run(config.path(), Some(&registries), &["instances"]).await;
    assert_eq!(listed.code, UNAVAILABLE, "{}", listed.stderr);
    assert!(
        listed.stderr.contains("no registry answered at"),
        "{}",
        listed.stderr
    );
}

#[tokio::test]
async fn completions_print_a_shell_script() {
    let config = tempfile::tempdir().unwrap();
    let bash = run(config.path(), None, &["completions", "bash"])
        .await
        .ok("completions");
    assert!(
        bash.stdout.contains("complete -F _grantmesh"),
        "{}",
        bash.stdout
    );
    assert!(bash.stdout.contains("add-member"), "verbs are completed");
}

async fn registered(registry: &str, college: &Proc) -> bool {
    list(registry, "college")
        .await
        .iter()
        .any(|i| i.address == college.url())
}

/// Waits for a stderr line of the watch that says it moved.
async fn moved(stderr: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>) -> String {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stderr.next_line().await.unwrap() {
                Some(line) if line.contains("moved") => return line,
                Some(_) => continue,
                None => panic!("the watch exited"),
            }
        }
    })
    .await
    .expect("the watch says it moved within 20 s")
}

/// Waits for the watch's next withdrawal event (skipping the snapshot a reopen starts with).
async fn next_withdrawal(
    events: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> serde_json::Value {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let line = events
                .next_line()
                .await
                .unwrap()
                .expect("the watch is still running");
            let event: serde_json::Value = serde_json::from_str(&line).unwrap();
            if event["kind"] == "KIND_WITHDRAWAL" {
                return event;
            }
        }
    })
    .await
    .expect("a withdrawal reaches the watch within 10 s")
}

#[tokio::test]
async fn watch_moves_to_another_college_when_its_college_dies_or_drains() {
    let (registry, first, _agency) = mesh().await;
    let r = registry.url();
    let config = tempfile::tempdir().unwrap();
    let cfg = config.path();
    sign_up_and_log_in(cfg, &r, "Ada").await;
    let proposal = run(
        cfg,
        None,
        &[
            "propose", "--amount", "4000", "--days", "30", "--title", "W", "--output", "json",
        ],
    )
    .await
    .ok("propose")
    .json();
    let account = proposal["accountId"].as_str().unwrap().to_owned();

    // Only `first` is registered, so the watch opens there.
    let mut watch = cli(cfg, None, &["watch", &account, "--output", "json"])
        .spawn()
        .unwrap();
    let mut events = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(watch.stderr.take().unwrap()).lines();
    let snapshot = tokio::time::timeout(Duration::from_secs(10), events.next_line())
        .await
        .expect("a snapshot within 10 s")
        .unwrap()
        .expect("the watch is still running");
    let snapshot: serde_json::Value = serde_json::from_str(&snapshot).unwrap();
    assert_eq!(snapshot["kind"], "KIND_SNAPSHOT");
    assert_eq!(snapshot["account"]["balanceMinor"], "400000");

    // Killed: the connection breaks under the stream.
    let second = Proc::member("college", &r, &[]).await;
    assert_eventually(
        Duration::from_secs(5),
        "second college registered",
        || async { registered(&r, &second).await },
    )
    .await;
    first.signal(Signal::SIGKILL);
    assert!(moved(&mut stderr).await.contains("another college"));
    run(
        cfg,
        None,
        &["withdraw", &account, "7", "--memo", "after the kill"],
    )
    .await
    .ok("withdraw");
    assert_eq!(
        next_withdrawal(&mut events).await["transaction"]["amountMinor"],
        "700"
    );

    // Drained: the college deregisters and closes its streams.
    let third = Proc::member("college", &r, &[]).await;
    assert_eventually(
        Duration::from_secs(5),
        "third college registered",
        || async { registered(&r, &third).await },
    )
    .await;
    second.signal(Signal::SIGTERM);
    assert!(moved(&mut stderr).await.contains("another college"));
    run(
        cfg,
        None,
        &["withdraw", &account, "3", "--memo", "after the drain"],
    )
    .await
    .ok("withdraw");
    let event = next_withdrawal(&mut events).await;
    assert_eq!(event["transaction"]["amountMinor"], "300");
    assert_eq!(event["account"]["balanceMinor"], "399000");
}

#[tokio::test]
async fn instances_watch_prints_instances_as_they_come_and_go() {
    let registry = Proc::registry(&[]).await;
    let config = tempfile::tempdir().unwrap();
    let mut watch = cli(
        config.path(),
        Some(&registry.url()),
        &["instances", "college", "--watch", "--output", "json"],
    )
    .spawn()
    .unwrap();
    let mut events = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut next_kind = async || -> serde_json::Value {
        let line = tokio::time::timeout(Duration::from_secs(10), events.next_line())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the watch is still running");
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(next_kind().await["kind"], "KIND_SNAPSHOT");
    let college = Proc::member("college", &registry.url(), &[]).await;
    let put = next_kind().await;
    assert_eq!(put["kind"], "KIND_PUT");
    assert_eq!(put["instances"][0]["address"], college.url());
    college.signal(Signal::SIGKILL);
    let delete = next_kind().await;
    assert_eq!(delete["kind"], "KIND_DELETE");
    assert_eq!(delete["instances"][0]["address"], college.url());
}

/// Accepts the one pending invitation to `account` in the session at `config`.
async fn accept_the_invitation(config: &Path, registry: &str, account: &str) {
    let listed = run(config, Some(registry), &["invitations"])
        .await
        .ok("invitations");
    assert!(listed.stdout.contains(account), "{}", listed.stdout);
    let listed = run(config, Some(registry), &["invitations", "--output", "json"])
        .await
        .ok("invitations --output json")
        .json();
    let invitation = listed["invitations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["accountId"] == account)
        .unwrap_or_else(|| panic!("no invitation to {account}: {listed}"));
    let id = invitation["invitationId"].as_str().unwrap();
    let accepted = run(config, Some(registry), &["accept", id])
        .await
        .ok("accept");
    assert!(accepted.stdout.contains(account), "{}", accepted.stdout);
}

#[tokio::test]
async fn a_member_joins_by_invitation_and_leaves_and_the_principal_investigator_hands_over_first() {
    let (registry, _college, _agency) = mesh().await;
    let url = registry.url();
    let (pi_dir, student_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    sign_up_and_log_in(pi_dir.path(), &url, "Ada").await;
    let student = sign_up_and_log_in(student_dir.path(), &url, "Grace").await;
    let proposed = run(
        pi_dir.path(),
        Some(&url),
        &[
            "propose", "--title", "Leaving", "--amount", "4000", "--days", "30", "--output", "json",
        ],
    )
    .await
    .ok("propose")
    .json();
    let account = proposed["accountId"].as_str().unwrap().to_owned();
    let (pi, grace) = (pi_dir.path(), student_dir.path());

    // Invited is not a member yet; accepting makes one.
    run(pi, Some(&url), &["add-member", &account, &student])
        .await
        .ok("add-member");
    let not_yet = run(grace, Some(&url), &["account", &account]).await;
    assert_eq!(
        not_yet.code, NOT_FOUND,
        "hidden from non-members: {}",
        not_yet.stderr
    );
    accept_the_invitation(grace, &url, &account).await;

    // An email that is no one's is invited all the same, then withdrawn.
    let nobody = fresh_email("nobody");
    let invited = run(
        pi,
        Some(&url),
        &["add-member", &account, &nobody, "--output", "json"],
    )
    .await
    .ok("add-member of an unregistered email")
    .json();
    let pending = invited["invitations"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{invited}");
    assert_eq!(pending[0]["email"], nobody.as_str());
    let id = pending[0]["invitationId"].as_str().unwrap();
    run(pi, Some(&url), &["decline", id])
        .await
        .ok("the PI withdraws it");
    let shown = run(pi, Some(&url), &["account", &account])
        .await
        .ok("account");
    assert!(!shown.stdout.contains(&nobody), "{}", shown.stdout);

    let left = run(grace, Some(&url), &["leave", &account, "--output", "json"])
        .await
        .ok("leave")
        .json();
    assert_eq!(left["members"].as_array().unwrap().len(), 1, "{left}");
    let gone = run(grace, Some(&url), &["account", &account]).await;
    assert_eq!(gone.code, NOT_FOUND, "no longer a member: {}", gone.stderr);
    let pi_leaving = run(pi, Some(&url), &["leave", &account]).await;
    assert_eq!(pi_leaving.code, REFUSED, "{}", pi_leaving.stderr);
    assert!(
        pi_leaving.stderr.contains("FAILED_PRECONDITION")
            && pi_leaving.stderr.contains("hand the role"),
        "{}",
        pi_leaving.stderr
    );
    let not_member = run(pi, Some(&url), &["hand-over", &account, &student]).await;
    assert_eq!(not_member.code, REFUSED, "{}", not_member.stderr);

    // Back in, handed the role; then the old principal investigator may leave.
    run(pi, Some(&url), &["add-member", &account, &student])
        .await
        .ok("add-member again");
    accept_the_invitation(grace, &url, &account).await;
    let handed = run(
        pi,
        Some(&url),
        &["hand-over", &account, &student, "--output", "json"],
    )
    .await
    .ok("hand-over")
    .json();
    let members = handed["members"].as_array().unwrap();
    let role_of = |email: &str| {
        members
            .iter()
            .find(|m| m["email"] == email)
            .map(|m| m["role"].clone())
    };
    assert_eq!(
        role_of(&student),
        Some("ROLE_PRINCIPAL_INVESTIGATOR".into()),
        "{handed}"
    );
    run(pi, Some(&url), &["leave", &account])
        .await
        .ok("the old PI leaves");
    let now = run(
        grace,
        Some(&url),
        &["account", &account, "--output", "json"],
    )
    .await
    .ok("account")
    .json();
    assert_eq!(now["members"].as_array().unwrap().len(), 1, "{now}");
    assert_eq!(now["members"][0]["email"], student.as_str());
    assert_eq!(now["members"][0]["role"], "ROLE_PRINCIPAL_INVESTIGATOR");
}

#[tokio::test]
async fn proposals_show_why_an_accepted_proposal_never_got_its_account() {
    let (registry, _college, _agency) = mesh().await;
    let url = registry.url();
    // An accepted proposal without an account, for a researcher no college
    // knows, as one accepted before agencies asked first.
    let stranger = uuid::Uuid::new_v4();
    let (client, connection) =
        tokio_postgres::connect(&shared_database().await, tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            "INSERT INTO proposals (id, agency, principal_investigator, idempotency_key, title, description,
                                    requested_amount, duration_days, decision, reason, submitted_at)
             VALUES ($1, 'nsf', $2, 'orphan', 'Orphan', '', 400000, 30, 'accepted', '', now() - interval '1 minute')",
            &[&uuid::Uuid::new_v4(), &stranger],
        )
        .await
        .unwrap();
    let token = token_of(stranger);
    let config = tempfile::tempdir().unwrap();
    let args = ["proposals", "--token", token.as_str()];
    let proposals = || run(config.path(), Some(&url), &args);
    assert_eventually(
        Duration::from_secs(20),
        "the agency gives up and says why",
        || async {
            proposals()
                .await
                .ok("proposals")
                .stdout
                .contains("account_failed")
        },
    )
    .await;
    let shown = proposals().await.ok("proposals").stdout;
    assert!(
        shown.contains("not a registered researcher"),
        "the college's reason: {shown}"
    );
}
