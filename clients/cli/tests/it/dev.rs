//! `grantmesh dev`, the real binary: the whole mesh in one process on the
//! embedded store, its simulation, and a restart that keeps what was made.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn grantmesh(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_grantmesh"));
    command
        .env_remove("DATABASE_URL")
        .env_remove("GRANTMESH_TOKEN")
        .env_remove("GRANTMESH_TOKEN_KEY")
        .env_remove("GRANTMESH_SERVICE_KEY")
        .env("GRANTMESH_LOG", "error")
        .env("GRANTMESH_DATA_DIR", home.join("data"))
        .env("GRANTMESH_CONFIG_DIR", home.join("config"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Starts `grantmesh dev` on free ports; returns it, its registry URL and
/// the lines it prints after the banner.
async fn dev(home: &Path) -> (Child, String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let mut child = grantmesh(home)
        .args(["dev", "--base-port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut registry = None;
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.trim().strip_prefix("registry") {
                registry = Some(url.trim().to_owned());
            }
            if line == "mesh is up" {
                return;
            }
        }
        panic!("grantmesh dev exited before the mesh was up");
    })
    .await
    .expect("grantmesh dev is up within 60 s");
    let (printed, later) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = printed.send(line);
        }
    });
    (
        child,
        registry.expect("the banner names the registry"),
        later,
    )
}

async fn run(home: &Path, registry: &str, args: &[&str]) -> std::process::Output {
    grantmesh(home)
        .args(args)
        .args(["--registry", registry])
        .output()
        .await
        .unwrap()
}

async fn stop(mut child: Child) -> Option<i32> {
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("grantmesh dev stops within 15 s of SIGTERM")
        .unwrap()
        .code()
}

#[tokio::test]
async fn dev_serves_two_agencies_and_two_colleges_and_a_login_outlives_a_restart() {
    let home = tempfile::tempdir().unwrap();
    let (mesh, registry, mut printed) = dev(home.path()).await;

    let listed = run(home.path(), &registry, &["instances", "--output", "json"]).await;
    let listed = String::from_utf8_lossy(&listed.stdout);
    for expected in ["nsf", "erc", "college-1", "college-2"] {
        assert!(
            listed.contains(expected),
            "{expected} missing from {listed}"
        );
    }
    let signup = run(
        home.path(),
        &registry,
        &[
            "signup",
            "--name",
            "Ada",
            "--email",
            "ada@uni.edu",
            "--password",
            "correct horse battery",
        ],
    )
    .await;
    assert!(signup.status.success(), "{signup:?}");
    // The dev mail catcher: the message is printed, and `grantmesh mail`
    // finds its code in the data directory's outbox.
    tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(line) = printed.recv().await {
            if line.starts_with("mail to ada@uni.edu") {
                return;
            }
        }
    })
    .await
    .expect("grantmesh dev prints the mail it catches");
    let code = grantmesh(home.path())
        .args(["mail", "--to", "ada@uni.edu", "--code"])
        .output()
        .await
        .unwrap();
    assert!(code.status.success(), "{code:?}");
    let code = String::from_utf8(code.stdout).unwrap();
    let verified = run(
        home.path(),
        &registry,
        &[
            "verify-email",
            "--email",
            "ada@uni.edu",
            "--code",
            code.trim(),
            "--password",
            "correct horse battery",
        ],
    )
    .await;
    assert!(verified.status.success(), "{verified:?}");
    let login = run(
        home.path(),
        &registry,
        &[
            "login",
            "--email",
            "ada@uni.edu",
            "--password",
            "correct horse battery",
        ],
    )
    .await;
    assert!(login.status.success(), "{login:?}");
    let proposed = run(
        home.path(),
        &registry,
        &[
            "propose", "--title", "Kept", "--amount", "150000", "--days", "30", "--agency", "erc",
        ],
    )
    .await;
    assert!(proposed.status.success(), "{proposed:?}");
    assert_eq!(stop(mesh).await, Some(0), "SIGTERM drains and exits 0");

    // Same data directory: the store and the signing keys are kept, so the
    // saved session still works and the account is still there.
    let (mesh, registry, _) = dev(home.path()).await;
    let accounts = run(home.path(), &registry, &["accounts", "--output", "json"]).await;
    assert!(accounts.status.success(), "{accounts:?}");
    let accounts: serde_json::Value = serde_json::from_slice(&accounts.stdout).unwrap();
    assert_eq!(accounts["accounts"][0]["title"], "Kept", "{accounts}");
    assert_eq!(
        accounts["accounts"][0]["balanceMinor"], "15000000",
        "{accounts}"
    );
    assert_eq!(stop(mesh).await, Some(0));

    // --fresh starts over: the researcher is gone.
    let mut fresh = grantmesh(home.path())
        .args(["dev", "--base-port", "0", "--fresh"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(fresh.stdout.take().unwrap()).lines();
    let mut registry = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(url) = line.trim().strip_prefix("registry") {
            registry = url.trim().to_owned();
        }
        if line == "mesh is up" {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    // The saved session outlived what it stood for: the CLI says so rather
    // than showing an empty list as if the researcher had no accounts.
    for command in ["accounts", "whoami"] {
        let stale = run(home.path(), &registry, &[command]).await;
        assert_eq!(stale.status.code(), Some(6), "{command}: {stale:?}");
        assert!(
            String::from_utf8_lossy(&stale.stderr).contains("run grantmesh login"),
            "{command}: {stale:?}"
        );
    }
    assert_eq!(stop(fresh).await, Some(0));
}

#[tokio::test]
async fn dev_simulate_passes_its_audit_on_the_embedded_store() {
    let home = tempfile::tempdir().unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        grantmesh(home.path())
            .args([
                "dev",
                "--simulate",
                "--projects",
                "6",
                "--students",
                "2",
                "--seed",
                "11",
                "--json",
            ])
            .output(),
    )
    .await
    .expect("the simulation ends within 120 s")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["audit"]["outcome"], "passed", "{summary:#}");
    let accepted = summary["proposals"]["accepted"].as_u64().unwrap();
    let rejected = summary["proposals"]["rejected"].as_u64().unwrap();
    assert_eq!(
        accepted + rejected,
        6,
        "every proposal was decided: {summary:#}"
    );
    assert_eq!(summary["audit"]["accounts"].as_u64(), Some(accepted));
    if accepted > 0 {
        assert!(
            summary["withdrawals"]["applied"].as_u64().unwrap() > 0,
            "{summary:#}"
        );
    }
}

#[tokio::test]
async fn the_banner_says_how_to_put_a_grantmesh_that_is_not_on_path_there() {
    let home = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_grantmesh"))
        .parent()
        .unwrap()
        .to_owned();
    let banner = |path: &str| {
        let mut command = grantmesh(home.path());
        command
            .args(["dev", "--base-port", "0"])
            .env("PATH", path)
            .stdout(Stdio::piped());
        command
    };
    let read = |mut child: Child| async move {
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut text = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "mesh is up" {
                break;
            }
            text.push_str(&line);
            text.push('\n');
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        assert_eq!(stop(child).await, Some(0));
        text
    };
    // As after `cargo run`: the binary's directory is not on PATH.
    let off_path = read(banner("/usr/bin:/bin").spawn().unwrap()).await;
    let export = format!("export PATH=\"{}:$PATH\"", bin_dir.display());
    assert!(off_path.contains(&export), "{off_path}");
    // On PATH: nothing to say.
    let path = format!("{}:/usr/bin:/bin", bin_dir.display());
    let on_path = read(banner(&path).spawn().unwrap()).await;
    assert!(!on_path.contains("export PATH"), "{on_path}");
}
