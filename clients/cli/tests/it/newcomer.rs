//! What a newcomer meets at the command line, run as the real binary
//! against real processes: the funding calls (`agencies`), proposals from
//! every agency, a mistyped agency, the mesh's status, a session whose store
//! was reset, the wrong URL scheme, and output that reads well in a file.

use std::time::Duration;

use crate::cli::{AUTH, UNAVAILABLE, cli, run, run_with, sign_up_and_log_in};
use crate::support::*;

const NOT_FOUND: i32 = 3;
const USAGE: i32 = 2;

/// A registry, one college that knows both agencies, and the agencies `nsf`
/// (300000..500000) and `erc` (100000..250000), all registered.
async fn two_agency_mesh() -> (Proc, Vec<Proc>) {
    let registry = Proc::registry(&[]).await;
    let r = registry.url();
    let college = Proc::member(
        "college",
        &r,
        &["--agencies", "nsf=300000..500000,erc=100000..250000"],
    )
    .await;
    let nsf = Proc::member("agency", &r, &["--name", "nsf"]).await;
    let erc = Proc::member(
        "agency",
        &r,
        &[
            "--name",
            "erc",
            "--currency",
            "EUR",
            "--min-award",
            "100000",
            "--max-award",
            "250000",
        ],
    )
    .await;
    assert_eventually(Duration::from_secs(5), "everyone registered", || async {
        list(&r, "").await.len() == 3
    })
    .await;
    (registry, vec![college, nsf, erc])
}

#[tokio::test]
async fn agencies_are_listed_with_their_bands_and_proposals_come_from_every_agency_newest_first() {
    let (registry, _members) = two_agency_mesh().await;
    let r = registry.url();
    let config = tempfile::tempdir().unwrap();
    let cfg = config.path();
    sign_up_and_log_in(cfg, &r, "Ada").await;

    let agencies = run(cfg, None, &["agencies"]).await.ok("agencies");
    let lines: Vec<&str> = agencies.stdout.lines().map(str::trim).collect();
    assert!(lines[0].starts_with("AGENCY"), "{}", agencies.stdout);
    assert!(
        lines[1].starts_with("erc")
            && lines[1].contains("EUR")
            && lines[1].contains("1,000.00")
            && lines[1].contains("2,500.00"),
        "{}",
        agencies.stdout
    );
    assert!(
        lines[2].starts_with("nsf")
            && lines[2].contains("USD")
            && lines[2].contains("3,000.00")
            && lines[2].contains("5,000.00"),
        "{}",
        agencies.stdout
    );
    let json = run(cfg, None, &["agencies", "--output", "json"])
        .await
        .ok("agencies --output json")
        .json();
    assert_eq!(json["agencies"][0]["name"], "erc");
    assert_eq!(json["agencies"][1]["maxAmountMinor"], "500000");
    assert_eq!(json["agencies"][0]["currency"], "EUR");

    // Typed in each agency's currency: USD 4,000.00 and EUR 1,500.00.
    for (title, amount, agency) in [("First", "4000", "nsf"), ("Second", "1,500.00", "erc")] {
        run(
            cfg,
            None,
            &[
                "propose", "--title", title, "--amount", amount, "--days", "30", "--agency", agency,
            ],
        )
        .await
        .ok("propose");
    }
    // Without --agency: both, from both agencies, the newest first — every time.
    for _ in 0..3 {
        let listed = run(cfg, None, &["proposals", "--output", "json"])
            .await
            .ok("proposals")
            .json();
        let titles: Vec<&str> = listed["proposals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["title"].as_str().unwrap())
            .collect();
        assert_eq!(titles, ["Second", "First"]);
    }
    let only_nsf = run(
        cfg,
        None,
        &["proposals", "--agency", "nsf", "--output", "json"],
    )
    .await
    .ok("proposals --agency nsf")
    .json();
    assert_eq!(only_nsf["proposals"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_mistyped_agency_is_not_found_and_the_answer_names_the_agencies_there_are() {
    let (registry, _members) = two_agency_mesh().await;
    let config = tempfile::tempdir().unwrap();
    let cfg = config.path();
    sign_up_and_log_in(cfg, &registry.url(), "Ada").await;
    // No --agency: one agency is chosen, said, and keeps the proposal.
    let any = run(
        cfg,
        None,
        &[
            "propose", "--title", "y", "--amount", "4000", "--days", "30", "--output", "json",
        ],
    )
    .await;
    // The bands do not overlap: accepted by one, rejected (exit 4) by the other.
    assert!(matches!(any.code, 0 | 4), "{}", any.stderr);
    let chosen = any.json()["agency"].as_str().unwrap().to_owned();
    assert!(
        any.stderr
            .contains(&format!("proposing to {chosen}, one of: erc, nsf")),
        "{}",
        any.stderr
    );
    for args in [
        &[
            "propose", "--title", "x", "--amount", "4000", "--days", "30", "--agency", "nih",
        ][..],
        &["proposals", "--agency", "nih"][..],
    ] {
        let mistyped = run(cfg, None, args).await;
        assert_eq!(mistyped.code, NOT_FOUND, "{}", mistyped.stderr);
        assert!(
            mistyped
                .stderr
                .contains("NOT_FOUND: no agency named \"nih\"; the agencies are: erc, nsf"),
            "{}",
            mistyped.stderr
        );
    }
}

#[tokio::test]
async fn status_shows_every_registry_replica_and_exits_5_when_one_does_not_answer() {
    let registry = Proc::registry(&[]).await;
    let second = Proc::registry(&[]).await;
    let both = format!("{},{}", registry.url(), second.url());
    let _college = Proc::member("college", &both, &[]).await;
    assert_eventually(
        Duration::from_secs(5),
        "the college registered twice",
        || async {
            list(&registry.url(), "college").await.len() == 1
                && list(&second.url(), "college").await.len() == 1
        },
    )
    .await;
    let config = tempfile::tempdir().unwrap();
    let status = run(config.path(), Some(&both), &["status"])
        .await
        .ok("status");
    let rows: Vec<&str> = status.stdout.lines().collect();
    assert_eq!(rows.len(), 3, "{}", status.stdout);
    for (row, url) in rows[1..].iter().zip([registry.url(), second.url()]) {
        assert!(row.contains(&url), "{row}");
        assert!(row.contains("SERVING"), "{row}");
        assert!(row.contains("college 1"), "{row}");
        assert!(row.contains(" ms"), "a latency: {row}");
    }
    let json = run(config.path(), Some(&both), &["status", "--output", "json"])
        .await
        .ok("status --output json")
        .json();
    assert_eq!(
        json["registries"][0]["status"]["services"][0]["service"],
        "college"
    );
    assert_eq!(json["registries"][0]["health"], "SERVING");

    second.signal(nix::sys::signal::Signal::SIGKILL);
    let one_down = run(config.path(), Some(&both), &["status"]).await;
    assert_eq!(one_down.code, UNAVAILABLE, "{}", one_down.stdout);
    assert!(
        one_down.stdout.contains("unreachable"),
        "{}",
        one_down.stdout
    );
    assert!(
        one_down
            .stderr
            .contains("1 of 2 registry replica(s) SERVING")
    );
}

#[tokio::test]
async fn a_session_from_a_store_that_was_reset_is_told_to_log_in_again() {
    // Two colleges on two databases stand for one store before and after a reset.
    let registry = Proc::registry(&[]).await;
    let r = registry.url();
    let before = crate::support::db::TestDb::create().await;
    let college = Proc::member("college", &r, &["--database-url", &before.url]).await;
    assert_eventually(Duration::from_secs(5), "college registered", || async {
        list(&r, "college").await.len() == 1
    })
    .await;
    let config = tempfile::tempdir().unwrap();
    let cfg = config.path();
    sign_up_and_log_in(cfg, &r, "Ada").await;
    run(cfg, None, &["whoami"])
        .await
        .ok("whoami before the reset");
    drop(college);
    assert_eventually(
        Duration::from_secs(10),
        "the old college is gone",
        || async { list(&r, "college").await.is_empty() },
    )
    .await;

    let after = crate::support::db::TestDb::create().await;
    let _fresh = Proc::member("college", &r, &["--database-url", &after.url]).await;
    assert_eventually(Duration::from_secs(10), "the fresh college", || async {
        list(&r, "college").await.len() == 1
    })
    .await;
    for command in ["whoami", "accounts"] {
        let stale = run(cfg, None, &[command]).await;
        assert_eq!(stale.code, AUTH, "{command}: {}", stale.stdout);
        assert!(
            stale.stderr.contains("your session is no longer valid")
                && stale.stderr.contains("run grantmesh login"),
            "{command}: {}",
            stale.stderr
        );
    }
}

#[tokio::test]
async fn an_http_url_to_a_tls_registry_is_told_to_use_https() {
    let registry = Proc::registry(&["--tls-dir", tls::dir().to_str().unwrap()]).await;
    let plain = format!("http://{}", registry.addr);
    let config = tempfile::tempdir().unwrap();
    let expected = format!(
        "{} speaks TLS: use https://{}",
        registry.addr, registry.addr
    );
    for args in [
        &["instances"][..],
        &["status"][..],
        &["ping", "college"][..],
    ] {
        let wrong = run(config.path(), Some(&plain), args).await;
        assert_eq!(wrong.code, UNAVAILABLE, "{args:?}: {}", wrong.stderr);
        assert!(
            wrong.stderr.contains(&expected) || wrong.stdout.contains(&expected),
            "{args:?}: {}{}",
            wrong.stdout,
            wrong.stderr
        );
    }
    let health = run(config.path(), None, &["health", &plain]).await;
    assert!(health.stderr.contains(&expected), "{}", health.stderr);
}

#[tokio::test]
async fn tables_have_no_trailing_spaces_pings_show_latency_and_the_journal_names_people() {
    let registry = Proc::registry(&[]).await;
    let r = registry.url();
    let _college = Proc::member("college", &r, &[]).await;
    let _agency = Proc::member("agency", &r, &["--name", "nsf"]).await;
    assert_eventually(Duration::from_secs(5), "registered", || async {
        list(&r, "").await.len() == 2
    })
    .await;
    let config = tempfile::tempdir().unwrap();
    let cfg = config.path();
    let email = sign_up_and_log_in(cfg, &r, "Ada").await;
    let proposal = run(
        cfg,
        None,
        &[
            "propose", "--title", "Folding", "--amount", "4000", "--days", "30", "--agency", "nsf",
            "--output", "json",
        ],
    )
    .await
    .ok("propose")
    .json();
    let account = proposal["accountId"].as_str().unwrap().to_owned();
    run(
        cfg,
        None,
        &["withdraw", &account, "12.50", "--memo", "gloves"],
    )
    .await
    .ok("withdraw");

    let journal = run(cfg, None, &["transactions", &account])
        .await
        .ok("transactions");
    assert!(
        journal.stdout.contains(&format!("Ada <{email}>")),
        "the journal names the researcher: {}",
        journal.stdout
    );
    for command in [
        &["whoami"][..],
        &["accounts"][..],
        &["transactions", &account][..],
    ] {
        let printed = run(cfg, None, command).await.ok("a table");
        for line in printed.stdout.lines() {
            assert_eq!(line, line.trim_end(), "{command:?} printed trailing spaces");
        }
    }
    let ping = run(cfg, Some(&r), &["ping", "college", "--count", "2"])
        .await
        .ok("ping");
    assert_eq!(ping.stdout.lines().count(), 2, "{}", ping.stdout);
    assert!(
        ping.stdout
            .lines()
            .all(|l| l.contains("time=") && l.ends_with(" ms")),
        "{}",
        ping.stdout
    );

    let cents = run(cfg, None, &["withdraw", &account, "12.505"]).await;
    assert_eq!(cents.code, USAGE);
    assert!(
        cents.stderr.contains("with at most 2 after the point") && cents.stderr.contains("USD"),
        "{}",
        cents.stderr
    );
}

#[tokio::test]
async fn client_commands_print_no_log_lines_unless_asked_with_v() {
    // Nothing listens here: the balancer's warnings are what -v shows.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let config = tempfile::tempdir().unwrap();
    let mut quiet = cli(config.path(), Some(&closed), &["ping", "college"]);
    quiet.env_remove("GRANTMESH_LOG");
    let quiet = run_with(quiet, None).await;
    assert_eq!(quiet.code, UNAVAILABLE);
    assert_eq!(
        quiet.stderr.lines().count(),
        1,
        "only the error line: {}",
        quiet.stderr
    );
    assert!(quiet.stderr.starts_with("error: "), "{}", quiet.stderr);

    let mut verbose = cli(config.path(), Some(&closed), &["-vv", "ping", "college"]);
    verbose.env_remove("GRANTMESH_LOG");
    let verbose = run_with(verbose, None).await;
    assert!(
        verbose.stderr.lines().count() > 1,
        "-vv shows the client's log: {}",
        verbose.stderr
    );
}

#[tokio::test]
async fn a_tls_directory_serves_both_client_commands_and_servers_and_a_second_ca_is_explained() {
    let dir = tls::dir().to_str().unwrap().to_owned();
    let registry = Proc::registry(&["--tls-dir", &dir]).await;
    let url = registry.url();
    let config = tempfile::tempdir().unwrap();

    // GRANTMESH_TLS_DIR alone is enough for a client command.
    let mut listed = cli(config.path(), Some(&url), &["instances"]);
    listed
        .env("GRANTMESH_TLS_DIR", &dir)
        .env_remove("GRANTMESH_CA");
    run_with(listed, None)
        .await
        .ok("instances with GRANTMESH_TLS_DIR");

    // Both set, naming one CA: a server starts.
    let ca = format!("{dir}/ca.pem");
    let mut both = cli(
        config.path(),
        None,
        &["registry", "--listen", "127.0.0.1:0", "--warmup", "0s"],
    );
    both.env("GRANTMESH_TLS_DIR", &dir).env("GRANTMESH_CA", &ca);
    let mut child = both.spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "a registry with GRANTMESH_TLS_DIR and the same GRANTMESH_CA keeps running"
    );
    child.kill().await.unwrap();

    // Both set, naming different CAs: refused with the reason.
    let other = tempfile::tempdir().unwrap();
    let mut conflict = cli(
        config.path(),
        None,
        &["registry", "--listen", "127.0.0.1:0"],
    );
    conflict
        .env("GRANTMESH_TLS_DIR", &dir)
        .env("GRANTMESH_CA", other.path().join("ca.pem"));
    let refused = run_with(conflict, None).await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("a server has one CA"),
        "{}",
        refused.stderr
    );
}
