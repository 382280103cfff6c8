//! Clients that are not ours: the real `grpcurl` binary and a Python client
//! generated with `grpcio-tools` from the repository's proto files. Both are
//! set up by `scripts/python-env`, which this test runs (it is quick once the
//! environment exists).

use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;
use tokio::process::Command;

/// Runs a command, asserts it succeeded, and returns its stdout.
async fn run(program: &PathBuf, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .output()
        .await
        .unwrap_or_else(|err| panic!("failed to run {}: {err}", program.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}\n{stdout}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn run_failing(program: &PathBuf, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().await.unwrap();
    assert!(!output.status.success(), "{args:?} was expected to fail");
    String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout)
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls_the_registry_without_proto_files() {
    let bin = python_env_bin().await;
    let grpcurl = bin.join("grpcurl");
    let registry = Proc::registry(&[]).await;
    let college = Proc::member("college", &registry.url(), &["--instance-id", "college-g"]).await;
    let target = registry.addr.to_string();
    assert_eventually(Duration::from_secs(5), "college registered", || async {
        ids(&registry.url(), "college").await == ["college-g"]
    })
    .await;

    let services = run(&grpcurl, &["-plaintext", &target, "list"]).await;
    for name in [
        "grantmesh.v1.Registry",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.contains(name), "{name} missing from:\n{services}");
    }
    let college_services = run(&grpcurl, &["-plaintext", &college.addr.to_string(), "list"]).await;
    assert!(
        college_services.contains("grantmesh.v1.College"),
        "{college_services}"
    );
    for elsewhere in ["grantmesh.v1.Registry", "grantmesh.v1.Agency"] {
        assert!(
            !college_services.contains(elsewhere) && !services.contains("grantmesh.v1.College"),
            "reflection lists a service this port does not serve:\n{college_services}\n{services}"
        );
    }

    let described = run(
        &grpcurl,
        &["-plaintext", &target, "describe", "grantmesh.v1.Registry"],
    )
    .await;
    assert!(described.contains("rpc KeepAlive ( stream .grantmesh.v1.KeepAliveRequest ) returns ( stream .grantmesh.v1.KeepAliveReply )"), "{described}");
    let message = run(
        &grpcurl,
        &[
            "-plaintext",
            &target,
            "describe",
            "grantmesh.v1.WithdrawRequest",
        ],
    )
    .await;
    assert!(message.contains("int64 amount_minor"), "{message}");

    let listed = run(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            r#"{"service":"college"}"#,
            &target,
            "grantmesh.v1.Registry/ListInstances",
        ],
    )
    .await;
    assert!(
        listed.contains("college-g") && listed.contains(&college.url()),
        "{listed}"
    );

    let health = run(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            r#"{"service":"grantmesh.v1.Registry"}"#,
            &target,
            "grpc.health.v1.Health/Check",
        ],
    )
    .await;
    assert!(health.contains("SERVING"), "{health}");

    // Register and renew by hand, as an operator would.
    let register = r#"{"instance":{"id":"manual-1","service":"tools","address":"http://127.0.0.1:9","ttl":"5s"}}"#;
    run(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            register,
            &target,
            "grantmesh.v1.Registry/Register",
        ],
    )
    .await;
    let beat = run(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            r#"{"service":"tools","instance_id":"manual-1"}"#,
            &target,
            "grantmesh.v1.Registry/Heartbeat",
        ],
    )
    .await;
    assert!(beat.contains("5s"), "{beat}");
    let unknown = run_failing(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            r#"{"service":"tools","instance_id":"nobody"}"#,
            &target,
            "grantmesh.v1.Registry/Heartbeat",
        ],
    )
    .await;
    assert!(
        unknown.contains("NotFound") && unknown.contains("register again"),
        "{unknown}"
    );
    let bad = run_failing(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            r#"{"instance":{"id":"x","service":"tools","address":"not a url"}}"#,
            &target,
            "grantmesh.v1.Registry/Register",
        ],
    )
    .await;
    assert!(
        bad.contains("InvalidArgument") && bad.contains("instance.address"),
        "{bad}"
    );
}

#[tokio::test]
async fn reflection_v1_is_served_beside_v1alpha() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let registry = Proc::registry(&[]).await;
    let channel = tonic::transport::Endpoint::from_shared(registry.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reply {reply:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"grantmesh.v1.Registry".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.reflection.v1.ServerReflection".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_generated_python_client_lists_watches_and_health_checks_the_registry() {
    let bin = python_env_bin().await;
    let python = bin.join("python");
    let client = repo_root().join("clients/python/grantmesh_client.py");
    let client = client.to_str().unwrap();
    let registry = Proc::registry(&[]).await;
    let target = registry.addr.to_string();
    let _college = Proc::member("college", &registry.url(), &["--instance-id", "college-py"]).await;
    assert_eventually(Duration::from_secs(5), "college registered", || async {
        ids(&registry.url(), "college").await == ["college-py"]
    })
    .await;

    let listed = run(
        &python,
        &[
            client,
            "list-instances",
            "--registry",
            &target,
            "--service",
            "college",
        ],
    )
    .await;
    let first: serde_json::Value =
        serde_json::from_str(listed.lines().next().expect("one instance")).unwrap();
    assert_eq!(first["id"], "college-py");
    assert_eq!(first["service"], "college");

    let watched = run(
        &python,
        &[
            client,
            "watch",
            "--registry",
            &target,
            "--service",
            "college",
            "--events",
            "1",
        ],
    )
    .await;
    let snapshot: serde_json::Value =
        serde_json::from_str(watched.lines().next().unwrap()).unwrap();
    assert_eq!(
        snapshot["instance_ids"],
        serde_json::json!(["college-py"]),
        "{watched}"
    );

    let health = run(
        &python,
        &[
            client,
            "health",
            "--target",
            &target,
            "--service",
            "grantmesh.v1.Registry",
        ],
    )
    .await;
    assert_eq!(health.trim(), "SERVING");
    let pinged = run(
        &python,
        &[client, "ping", "--target", &target, "--service", "registry"],
    )
    .await;
    assert!(pinged.contains("\"service\": \"registry\""), "{pinged}");
}

#[tokio::test]
async fn a_generated_python_client_runs_the_whole_grant_flow() {
    let bin = python_env_bin().await;
    let python = bin.join("python");
    let client = repo_root().join("clients/python/grantmesh_client.py");
    let registry = Proc::registry(&[]).await;
    let college = Proc::member("college", &registry.url(), &[]).await;
    // `nsf`: the agency the test colleges know.
    let agency = Proc::member("agency", &registry.url(), &["--name", "nsf"]).await;
    assert_eventually(
        Duration::from_secs(5),
        "the agency can find the college",
        || async { ids(&registry.url(), "college").await.len() == 1 },
    )
    .await;

    let output = run(
        &python,
        &[
            client.to_str().unwrap(),
            "flow",
            "--agency",
            &agency.addr.to_string(),
            "--college",
            &college.addr.to_string(),
        ],
    )
    .await;
    let summary: serde_json::Value =
        serde_json::from_str(output.lines().last().expect("a summary line")).unwrap();
    assert_eq!(summary["ok"], true, "{output}");
    assert_eq!(summary["decision"], "DECISION_ACCEPTED", "{output}");
    assert_eq!(summary["journal_count"], 1, "{output}");
}

#[tokio::test]
async fn grpcurl_drives_the_college_with_a_bearer_token() {
    let grpcurl = python_env_bin().await.join("grpcurl");
    let registry = Proc::registry(&[]).await;
    let college = Proc::member("college", &registry.url(), &[]).await;
    let target = college.addr.to_string();
    let email = format!("g-{}@university.edu", uuid::Uuid::new_v4().simple());
    let register = format!(r#"{{"name":"Grace","email":"{email}","password":"long enough"}}"#);
    run(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            &register,
            &target,
            "grantmesh.v1.College/RegisterResearcher",
        ],
    )
    .await;
    let login = format!(r#"{{"email":"{email}","password":"long enough"}}"#);
    let reply: serde_json::Value = serde_json::from_str(
        &run(
            &grpcurl,
            &[
                "-plaintext",
                "-d",
                &login,
                &target,
                "grantmesh.v1.College/Login",
            ],
        )
        .await,
    )
    .unwrap();
    let token = reply["token"].as_str().expect("a token");
    let header = format!("authorization: Bearer {token}");
    let accounts = run(
        &grpcurl,
        &[
            "-plaintext",
            "-H",
            &header,
            "-d",
            "{}",
            &target,
            "grantmesh.v1.College/ListAccounts",
        ],
    )
    .await;
    let accounts: serde_json::Value = serde_json::from_str(&accounts).unwrap();
    assert_eq!(
        accounts,
        serde_json::json!({}),
        "a new researcher has no accounts"
    );
    let refused = run_failing(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            "{}",
            &target,
            "grantmesh.v1.College/ListAccounts",
        ],
    )
    .await;
    assert!(refused.contains("Unauthenticated"), "{refused}");
}
