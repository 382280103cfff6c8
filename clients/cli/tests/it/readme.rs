//! The README's walk-through, run as written against `grantmesh dev`, so the
//! README cannot rot.
//!
//! Every ```` ```sh ```` block that follows a `<!-- walkthrough -->` line in
//! README.md is joined, in order, into one bash script and run with
//! `set -euo pipefail` from the repository root, with `grantmesh` (the
//! binary under test) and `grpcurl` on the PATH and a private config and
//! data directory. The mesh is a real `grantmesh dev` child process on free
//! ports; the script's `127.0.0.1:7000`-style addresses are rewritten to
//! them, which is the only change made to the README's text.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
/// The marker line before each block of the walk-through.
const MARKER: &str = "<!-- walkthrough -->";

/// The walk-through's blocks, in order.
fn walkthrough(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != MARKER {
            continue;
        }
        let fence = lines.next().unwrap_or_default();
        assert_eq!(
            fence.trim(),
            "```sh",
            "a walkthrough marker must precede a ```sh block"
        );
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(block.join("\n"));
    }
    blocks
}

#[test]
fn the_walkthrough_is_found_in_order() {
    let text = "x\n<!-- walkthrough -->\n```sh\na\nb\n```\n```sh\nnot this\n```\n<!-- walkthrough -->\n```sh\nc\n```\n";
    assert_eq!(walkthrough(text), ["a\nb", "c"]);
}

/// Starts `grantmesh dev` on free ports; returns the child and the address
/// each default port stands for.
async fn dev(data_dir: &Path) -> (tokio::process::Child, HashMap<u16, String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_grantmesh"))
        .args(["dev", "--base-port", "0", "--data-dir"])
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .env_remove("GRANTMESH_TOKEN_KEY")
        .env_remove("GRANTMESH_SERVICE_KEY")
        .env("GRANTMESH_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("grantmesh dev starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut urls: HashMap<String, Vec<String>> = HashMap::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "mesh is up" {
                return;
            }
            let mut words = line.split_whitespace();
            if let (Some(role @ ("registry" | "agency" | "college")), Some(url)) =
                (words.next(), words.next())
                && let Some(addr) = url.strip_prefix("https://")
            {
                urls.entry(role.to_owned())
                    .or_default()
                    .push(addr.to_owned());
            }
        }
        panic!("grantmesh dev exited before the mesh was up");
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("grantmesh dev is up within 60 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let mut ports = HashMap::new();
    for (role, base) in [("registry", 7000), ("agency", 7100), ("college", 7200)] {
        for (n, addr) in urls[role].iter().enumerate() {
            ports.insert(base + n as u16, addr.clone());
        }
    }
    (child, ports)
}

#[tokio::test]
async fn the_readme_walkthrough_runs_as_written_against_grantmesh_dev() {
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    let blocks = walkthrough(&readme);
    assert!(blocks.len() >= 3, "README.md has a walk-through");
    let home = tempfile::tempdir().unwrap();
    let (mut mesh, ports) = dev(&home.path().join("data")).await;

    let mut script = blocks.join("\n");
    for (port, addr) in &ports {
        script = script.replace(&format!("127.0.0.1:{port}"), addr);
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_grantmesh")).parent().unwrap();
    let python_bin = crate::support::python_env_bin().await;
    let path = format!(
        "{}:{}:{}",
        bin.display(),
        python_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(REPO)
            .env("PATH", path)
            .env("HOME", home.path())
            .env("GRANTMESH_CONFIG_DIR", home.path().join("config"))
            .env("GRANTMESH_DATA_DIR", home.path().join("data"))
            .env("GRANTMESH_REGISTRY", format!("https://{}", ports[&7000]))
            .env("GRANTMESH_README_TEST", "1")
            .env_remove("GRANTMESH_TOKEN")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the walk-through finishes within 180 s")
    .unwrap();
    let _ = mesh.kill().await;
    assert!(
        output.status.success(),
        "the README walk-through failed ({}):\n--- script ---\n{script}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
