//! The `grantmesh grant …` commands a researcher types, run as the real
//! binary against a real mesh.

use std::time::Duration;

use crate::support::*;

async fn grantmesh(registry: &str, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_grantmesh"));
    command
        .arg("grant")
        .args(args)
        .env("GRANTMESH_REGISTRY", registry)
        .env("GRANTMESH_LOG", "error")
        .env_remove("GRANTMESH_TOKEN");
    if let Some(token) = token {
        command.env("GRANTMESH_TOKEN", token);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .unwrap()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

async fn ok(registry: &str, token: Option<&str>, args: &[&str]) -> serde_json::Value {
    let (success, stdout, stderr) = grantmesh(registry, token, args).await;
    assert!(success, "grantmesh grant {args:?} failed: {stderr}");
    serde_json::from_str(stdout.lines().last().unwrap_or("null"))
        .unwrap_or(serde_json::Value::String(stdout))
}

#[tokio::test]
async fn a_researcher_runs_a_grant_from_the_command_line() {
    let registry = Proc::registry(&[]).await;
    let _college = Proc::member("college", &registry.url(), &[]).await;
    let _agency = Proc::member("agency", &registry.url(), &["--name", "nsf"]).await;
    assert_eventually(
        Duration::from_secs(5),
        "college and agency registered",
        || async { list(&registry.url(), "").await.len() == 2 },
    )
    .await;
    let r = registry.url();
    let email = format!("ada-{}@uni.edu", uuid::Uuid::new_v4().simple());

    ok(
        &r,
        None,
        &[
            "register",
            "--name",
            "Ada",
            "--email",
            &email,
            "--password",
            "correct horse",
        ],
    )
    .await;
    let (success, token, _) = grantmesh(
        &r,
        None,
        &["login", "--email", &email, "--password", "correct horse"],
    )
    .await;
    assert!(success);
    let token = token.trim();

    let proposal = ok(
        &r,
        Some(token),
        &[
            "propose", "--title", "Folding", "--amount", "400000", "--days", "30", "--agency",
            "nsf", "--key", "p1",
        ],
    )
    .await;
    assert_eq!(proposal["decision"], "DECISION_ACCEPTED");
    let account = proposal["accountId"].as_str().unwrap().to_owned();

    let withdrawal = ok(
        &r,
        Some(token),
        &[
            "withdraw", &account, "2500", "--memo", "reagents", "--key", "w1",
        ],
    )
    .await;
    assert_eq!(withdrawal["balanceMinor"], 397_500);
    let replay = ok(
        &r,
        Some(token),
        &["withdraw", &account, "2500", "--key", "w1"],
    )
    .await;
    assert_eq!(replay["replayed"], true);
    let shown = ok(&r, Some(token), &["account", &account]).await;
    assert_eq!(shown["balanceMinor"], 397_500);
    assert_eq!(shown["members"][0]["role"], "ROLE_PRINCIPAL_INVESTIGATOR");
    let journal = ok(&r, Some(token), &["transactions", &account]).await;
    assert_eq!(journal["amountMinor"], 2_500);

    let (success, _, stderr) = grantmesh(&r, Some(token), &["withdraw", &account, "1000000"]).await;
    assert!(!success);
    assert!(stderr.contains("insufficient funds"), "{stderr}");
    let (success, _, stderr) = grantmesh(&r, None, &["account", &account]).await;
    assert!(!success);
    assert!(stderr.contains("grantmesh login"), "{stderr}");
}
