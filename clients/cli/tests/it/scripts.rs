//! The repository's own test scripts, run as a user runs them.

use std::path::Path;
use std::process::Command;

/// Runs `script` in bash at the top of the repository; returns its stdout.
fn bash_at_repo(script: &str) -> String {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let output = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .current_dir(repo)
        // The server each run makes is its own: the caller's settings must not leak in.
        .env_remove("GRANTMESH_PGDATA")
        .env_remove("GRANTMESH_PGPORT")
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn two_test_runs_on_one_machine_get_postgres_servers_of_their_own_and_leave_none_behind() {
    // Each run sources the script, as scripts/test does, and reports where
    // its server lives and that it answers.
    let run = r#". scripts/own-postgres
        psql "$GRANTMESH_TEST_DATABASE_URL" -Atqc 'SELECT 1' >/dev/null
        echo "$GRANTMESH_PGDATA $GRANTMESH_PGPORT $GRANTMESH_TEST_DATABASE_URL""#;
    let first = bash_at_repo(run);
    let second = bash_at_repo(run);
    let fields = |line: &str| -> (String, String, String) {
        let mut parts = line.split_whitespace().map(str::to_owned);
        (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        )
    };
    let (dir_a, port_a, url_a) = fields(first.lines().last().unwrap());
    let (dir_b, port_b, url_b) = fields(second.lines().last().unwrap());
    assert_ne!(dir_a, dir_b, "each run has its own data directory");
    assert_ne!(url_a, url_b, "each run has its own server");
    for (dir, port) in [(dir_a, port_a), (dir_b, port_b)] {
        assert!(
            !Path::new(&dir).exists(),
            "the run removed its data directory {dir}"
        );
        assert_ne!(port, "55432", "no run uses the machine-wide default port");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_err(),
            "the run stopped its server on port {port}"
        );
    }
}
