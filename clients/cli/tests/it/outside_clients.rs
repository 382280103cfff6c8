//! Clients that are not ours: the real `grpcurl` binary and a Python client
//! generated with `grpcio-tools` from the repository's proto files. Both are
//! set up by `scripts/python-env`, which this test runs (it is quick once the
//! environment exists).
//!
//! The mesh runs on TLS, as in production: every process gets the test CA's
//! directory ([`tls::dir`]) and the clients trust its `ca.pem`, the way a
//! researcher or an operator would with `grantmesh dev`'s CA. One test keeps
//! an `--insecure` mesh, to show the clients' plaintext switch still works.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;
use grantmesh_discovery::tls::ca;
use tokio::process::Command;

/// Variables the Python client reads; cleared so a developer's shell cannot
/// make a test pass (or fail) by accident.
const CLIENT_ENV: [&str; 3] = ["GRANTMESH_CA", "GRANTMESH_CERT", "GRANTMESH_KEY"];

/// Runs a command, asserts it succeeded, and returns its stdout.
async fn run(program: &PathBuf, args: &[&str]) -> String {
    run_with_env(program, args, &[]).await
}

/// As [`run`], with these environment variables set.
async fn run_with_env(program: &PathBuf, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = command(program, args)
        .envs(env.iter().copied())
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

/// Runs a command that must fail; returns its stderr and stdout.
async fn run_failing(program: &PathBuf, args: &[&str]) -> String {
    let output = command(program, args).output().await.unwrap();
    assert!(!output.status.success(), "{args:?} was expected to fail");
    String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout)
}

fn command(program: &PathBuf, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args).current_dir(repo_root());
    for name in CLIENT_ENV {
        command.env_remove(name);
    }
    command
}

/// The test CA's directory, given to every process as `--tls-dir`.
fn tls_dir() -> &'static str {
    tls::dir().to_str().expect("a UTF-8 temp dir")
}

/// The CA certificate the outside clients trust (`grpcurl -cacert`, `--ca`).
fn ca() -> String {
    tls::dir().join(ca::CA_CERT).display().to_string()
}

/// A member's certificate and key from the test CA (`college/manual`), as
/// `(cert, key)` paths; issued now if need be.
fn identity(member: &str) -> (String, String) {
    let (cert, key) = ca::leaf_files(tls::dir(), &tls::member(member));
    (cert.display().to_string(), key.display().to_string())
}

/// How clients reach a process on a TLS mesh.
fn https(process: &Proc) -> String {
    format!("https://{}", process.addr)
}

async fn tls_registry() -> Proc {
    Proc::registry(&["--tls-dir", tls_dir()]).await
}

/// A college or agency on the TLS mesh of `registry`.
async fn tls_member(role: &str, registry: &Proc, extra: &[&str]) -> Proc {
    let mut args = vec!["--tls-dir", tls_dir()];
    args.extend_from_slice(extra);
    Proc::member(role, &https(registry), &args).await
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls_the_registry_without_proto_files() {
    let bin = python_env_bin().await;
    let grpcurl = bin.join("grpcurl");
    let ca = ca();
    let registry = tls_registry().await;
    let college = tls_member("college", &registry, &["--instance-id", "college-g"]).await;
    let target = registry.addr.to_string();
    assert_eventually(Duration::from_secs(5), "college registered", || async {
        ids(&https(&registry), "college").await == ["college-g"]
    })
    .await;

    let services = run(&grpcurl, &["-cacert", &ca, &target, "list"]).await;
    for name in [
        "grantmesh.v1.Registry",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.contains(name), "{name} missing from:\n{services}");
    }
    let college_services = run(
        &grpcurl,
        &["-cacert", &ca, &college.addr.to_string(), "list"],
    )
    .await;
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
        &["-cacert", &ca, &target, "describe", "grantmesh.v1.Registry"],
    )
    .await;
    assert!(described.contains("rpc KeepAlive ( stream .grantmesh.v1.KeepAliveRequest ) returns ( stream .grantmesh.v1.KeepAliveReply )"), "{described}");
    let message = run(
        &grpcurl,
        &[
            "-cacert",
            &ca,
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
            "-cacert",
            &ca,
            "-d",
            r#"{"service":"college"}"#,
            &target,
            "grantmesh.v1.Registry/ListInstances",
        ],
    )
    .await;
    assert!(
        listed.contains("college-g") && listed.contains(&https(&college)),
        "{listed}"
    );

    let health = run(
        &grpcurl,
        &[
            "-cacert",
            &ca,
            "-d",
            r#"{"service":"grantmesh.v1.Registry"}"#,
            &target,
            "grpc.health.v1.Health/Check",
        ],
    )
    .await;
    assert!(health.contains("SERVING"), "{health}");
}

#[tokio::test]
async fn grpcurl_registers_by_hand_only_with_a_certificate_naming_the_instance() {
    let grpcurl = python_env_bin().await.join("grpcurl");
    let ca = ca();
    let (cert, key) = identity("college/manual");
    let (rogue_cert, rogue_key) = identity("college/rogue");
    let registry = tls_registry().await;
    let target = registry.addr.to_string();
    let as_college = |body: &'static str, method: &'static str| -> Vec<String> {
        [
            "-cacert", &ca, "-cert", &cert, "-key", &key, "-d", body, &target, method,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let anonymous = |body: &'static str, method: &'static str| -> Vec<String> {
        ["-cacert", &ca, "-d", body, &target, method]
            .map(str::to_owned)
            .to_vec()
    };
    let as_rogue = |body: &'static str, method: &'static str| -> Vec<String> {
        [
            "-cacert",
            &ca,
            "-cert",
            &rogue_cert,
            "-key",
            &rogue_key,
            "-d",
            body,
            &target,
            method,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    fn strs(args: &[String]) -> Vec<&str> {
        args.iter().map(String::as_str).collect()
    }

    // Register and renew by hand, as an operator would, with the college's certificate.
    let register = r#"{"instance":{"id":"manual-1","service":"college","address":"https://127.0.0.1:9","ttl":"5s"}}"#;
    let args = as_college(register, "grantmesh.v1.Registry/Register");
    let registered = run(&grpcurl, &strs(&args)).await;
    assert!(registered.contains("5s"), "{registered}");
    assert_eq!(ids(&https(&registry), "college").await, ["manual-1"]);
    let heartbeat = r#"{"service":"college","instance_id":"manual-1"}"#;
    let args = as_college(heartbeat, "grantmesh.v1.Registry/Heartbeat");
    let beat = run(&grpcurl, &strs(&args)).await;
    assert!(beat.contains("5s"), "{beat}");

    // Another college's certificate can neither take the instance over (its
    // own address), renew it nor remove it: the lease is untouched.
    let hijack = r#"{"instance":{"id":"manual-1","service":"college","address":"https://127.0.0.1:6","ttl":"30s"}}"#;
    let deregister = r#"{"service":"college","instance_id":"manual-1"}"#;
    for (body, method) in [
        (hijack, "grantmesh.v1.Registry/Register"),
        (heartbeat, "grantmesh.v1.Registry/Heartbeat"),
        (deregister, "grantmesh.v1.Registry/Deregister"),
    ] {
        let denied = run_failing(&grpcurl, &strs(&as_rogue(body, method))).await;
        assert!(
            denied.contains("PermissionDenied") && denied.contains("college/rogue"),
            "{method}: {denied}"
        );
    }
    let listed = crate::support::list(&https(&registry), "college").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].address, "https://127.0.0.1:9",
        "the lease is untouched"
    );

    // Without a client certificate the same calls are refused.
    let args = anonymous(register, "grantmesh.v1.Registry/Register");
    let refused = run_failing(&grpcurl, &strs(&args)).await;
    assert!(
        refused.contains("Unauthenticated") && refused.contains("mesh certificate"),
        "{refused}"
    );
    let args = anonymous(heartbeat, "grantmesh.v1.Registry/Heartbeat");
    let refused = run_failing(&grpcurl, &strs(&args)).await;
    assert!(refused.contains("Unauthenticated"), "{refused}");
    // A college's certificate registers colleges, nothing else.
    let other =
        r#"{"instance":{"id":"manual-2","service":"agency","address":"https://127.0.0.1:9"}}"#;
    let args = as_college(other, "grantmesh.v1.Registry/Register");
    let denied = run_failing(&grpcurl, &strs(&args)).await;
    assert!(denied.contains("PermissionDenied"), "{denied}");
    assert!(ids(&https(&registry), "agency").await.is_empty());

    let unknown = r#"{"service":"college","instance_id":"manual-9"}"#;
    let args = as_college(unknown, "grantmesh.v1.Registry/Heartbeat");
    let unknown = run_failing(&grpcurl, &strs(&args)).await;
    assert!(
        unknown.contains("NotFound") && unknown.contains("register again"),
        "{unknown}"
    );
    let bad = r#"{"instance":{"id":"x","service":"college","address":"not a url"}}"#;
    let args = as_college(bad, "grantmesh.v1.Registry/Register");
    let bad = run_failing(&grpcurl, &strs(&args)).await;
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

    let registry = tls_registry().await;
    let mut client = ServerReflectionClient::new(tls::channel(&https(&registry)).await);
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
    let ca = ca();
    let registry = tls_registry().await;
    let target = registry.addr.to_string();
    let college = tls_member("college", &registry, &["--instance-id", "college-py"]).await;
    assert_eventually(Duration::from_secs(5), "college registered", || async {
        ids(&https(&registry), "college").await == ["college-py"]
    })
    .await;

    let listed = run(
        &python,
        &[
            client,
            "--ca",
            &ca,
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
    assert_eq!(first["address"], https(&college));

    let watched = run(
        &python,
        &[
            client,
            "--ca",
            &ca,
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
            "--ca",
            &ca,
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
        &[
            client,
            "ping",
            "--target",
            &https(&registry),
            "--service",
            "registry",
            // The connection options are accepted after the command too.
            "--ca",
            &ca,
        ],
    )
    .await;
    assert!(pinged.contains("\"service\": \"registry\""), "{pinged}");
}

/// Runs `program PREFIX… --ca CA flow …` (the Python client's grant flow)
/// against a fresh TLS mesh of a registry, a college and the agency `nsf`;
/// returns its JSON summary, checked to be ok.
async fn python_flow(program: &PathBuf, prefix: &[&str]) -> serde_json::Value {
    let registry = tls_registry().await;
    let college = tls_member("college", &registry, &["--instance-id", "college-1"]).await;
    // `nsf`: the agency the test colleges know.
    let agency = tls_member("agency", &registry, &["--name", "nsf"]).await;
    assert_eventually(
        Duration::from_secs(5),
        "the agency can find the college",
        || async { ids(&https(&registry), "college").await.len() == 1 },
    )
    .await;
    let (ca, agency, college) = (ca(), agency.addr.to_string(), college.addr.to_string());
    let flow = [
        "--ca",
        &ca,
        "flow",
        "--agency",
        &agency,
        "--college",
        &college,
        "--outbox",
        crate::support::outbox().to_str().unwrap(),
        // The test agency's band, 300000..500000 minor units.
        "--amount",
        "400000",
    ];
    let output = run(program, &[prefix, &flow].concat()).await;
    let summary: serde_json::Value =
        serde_json::from_str(output.lines().last().expect("a summary line")).unwrap();
    assert_eq!(summary["ok"], true, "{output}");
    summary
}

#[tokio::test]
async fn a_generated_python_client_runs_the_whole_grant_flow() {
    let python = python_env_bin().await.join("python");
    let client = repo_root().join("clients/python/grantmesh_client.py");
    let summary = python_flow(&python, &[client.to_str().unwrap()]).await;
    assert_eq!(summary["decision"], "DECISION_ACCEPTED", "{summary}");
    assert_eq!(summary["journal_count"], 1, "{summary}");
}

/// Copies what building the Python package reads (its directory and the
/// protos) into `into`, as the repository lays them out.
fn copy_python_package(into: &std::path::Path) {
    let root = repo_root();
    let files = [
        "clients/python/pyproject.toml",
        "clients/python/setup.py",
        "clients/python/README.md",
        "clients/python/grantmesh_client.py",
        "clients/python/grantmesh/__init__.py",
        "clients/python/grantmesh/v1/__init__.py",
    ];
    let protos = std::fs::read_dir(root.join("proto/proto/grantmesh/v1"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "proto"))
        .map(|path| path.strip_prefix(&root).unwrap().to_owned());
    for file in files.iter().map(std::path::PathBuf::from).chain(protos) {
        let to = into.join(&file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root.join(&file), &to).unwrap();
    }
}

#[tokio::test]
async fn the_python_package_installs_into_a_fresh_venv_and_runs_the_grant_flow() {
    // A copy of the sources, so the build writes nothing into the repository.
    let work = tempfile::tempdir().unwrap();
    copy_python_package(work.path());
    let venv = work.path().join("venv");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .await
        .expect("python3 runs");
    assert!(made.status.success(), "{made:?}");
    let pip = venv.join("bin/pip");
    let package = work.path().join("clients/python");
    let installed = tokio::time::timeout(
        Duration::from_secs(600),
        Command::new(&pip)
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(&package)
            .output(),
    )
    .await
    .expect("pip install finishes within 10 minutes")
    .unwrap();
    assert!(
        installed.status.success(),
        "pip install ./clients/python: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    // The stubs were generated at build time, with type stubs.
    let python = venv.join("bin/python");
    let checked = run(
        &python,
        &[
            "-c",
            "import pathlib, grantmesh.v1.college_pb2 as c, grantmesh.v1.agency_pb2_grpc as a; \
             assert c.VerifyEmailRequest(code='1').code == '1'; assert a.AgencyStub; \
             assert (pathlib.Path(c.__file__).with_suffix('.pyi')).exists(); print('ok')",
        ],
    )
    .await;
    assert_eq!(checked.trim(), "ok");

    // Its command line runs the whole flow against a real mesh.
    python_flow(&venv.join("bin/grantmesh-client"), &[]).await;
}

#[tokio::test]
async fn grpcurl_drives_the_college_with_a_bearer_token() {
    let grpcurl = python_env_bin().await.join("grpcurl");
    let ca = ca();
    let registry = tls_registry().await;
    let college = tls_member("college", &registry, &["--instance-id", "college-1"]).await;
    let target = college.addr.to_string();
    let email = format!("g-{}@university.edu", uuid::Uuid::new_v4().simple());
    let register =
        format!(r#"{{"name":"Grace","email":"{email}","password":"orbital kettle lantern"}}"#);
    run(
        &grpcurl,
        &[
            "-cacert",
            &ca,
            "-d",
            &register,
            &target,
            "grantmesh.v1.College/RegisterResearcher",
        ],
    )
    .await;
    // The code the college mailed (to this test binary's outbox), sent
    // back with the password: the researcher is made and logged in.
    let code = crate::support::mailed_code(&email).await;
    let verify =
        format!(r#"{{"email":"{email}","code":"{code}","password":"orbital kettle lantern"}}"#);
    let reply: serde_json::Value = serde_json::from_str(
        &run(
            &grpcurl,
            &[
                "-cacert",
                &ca,
                "-d",
                &verify,
                &target,
                "grantmesh.v1.College/VerifyEmail",
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
            "-cacert",
            &ca,
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
            "-cacert",
            &ca,
            "-d",
            "{}",
            &target,
            "grantmesh.v1.College/ListAccounts",
        ],
    )
    .await;
    assert!(refused.contains("Unauthenticated"), "{refused}");
}

#[tokio::test]
async fn the_python_client_registers_by_hand_only_with_a_mesh_members_certificate() {
    let python = python_env_bin().await.join("python");
    let client = repo_root().join("clients/python/grantmesh_client.py");
    let client = client.to_str().unwrap();
    let ca = ca();
    let (cert, key) = identity("college/py-manual");
    let registry = tls_registry().await;
    let target = registry.addr.to_string();
    let register = |id: &'static str| -> [&str; 11] {
        [
            "register",
            "--registry",
            &target,
            "--service",
            "college",
            "--id",
            id,
            "--address",
            "https://127.0.0.1:9",
            "--ttl",
            "5",
        ]
    };
    let with_cert = [
        [client, "--cert", &cert, "--key", &key].as_slice(),
        &register("py-manual"),
    ]
    .concat();
    // The CA from the environment, as `grantmesh dev` suggests exporting it.
    let registered = run_with_env(&python, &with_cert, &[("GRANTMESH_CA", &ca)]).await;
    let reply: serde_json::Value = serde_json::from_str(registered.trim()).unwrap();
    assert_eq!(reply["ttl_seconds"], 5.0, "{registered}");
    assert_eq!(ids(&https(&registry), "college").await, ["py-manual"]);

    let without = [[client, "--ca", &ca].as_slice(), &register("py-anonymous")].concat();
    let refused = run_failing(&python, &without).await;
    assert!(
        refused.contains("UNAUTHENTICATED") && refused.contains("mesh certificate"),
        "{refused}"
    );
    assert_eq!(ids(&https(&registry), "college").await, ["py-manual"]);
}

#[tokio::test]
async fn the_python_client_says_what_is_missing_without_the_mesh_ca() {
    let python = python_env_bin().await.join("python");
    let client = repo_root().join("clients/python/grantmesh_client.py");
    let client = client.to_str().unwrap();
    let registry = tls_registry().await;
    let target = registry.addr.to_string();

    let missing = run_failing(&python, &[client, "list-instances", "--registry", &target]).await;
    assert!(
        missing.contains("no mesh CA")
            && missing.contains("--ca PATH")
            && missing.contains("GRANTMESH_CA")
            && missing.contains("--plaintext"),
        "{missing}"
    );
    // Plaintext to a TLS server gets no answer, and a hint at the cause.
    let plaintext = run_failing(
        &python,
        &[
            client,
            "--plaintext",
            "list-instances",
            "--registry",
            &target,
        ],
    )
    .await;
    assert!(
        plaintext.contains("UNAVAILABLE") && plaintext.contains("--ca instead of --plaintext"),
        "{plaintext}"
    );
    // An https:// address and --plaintext contradict each other.
    let contradiction = run_failing(
        &python,
        &[
            client,
            "--plaintext",
            "list-instances",
            "--registry",
            &https(&registry),
        ],
    )
    .await;
    assert!(
        contradiction.contains("is a TLS address"),
        "{contradiction}"
    );
}

#[tokio::test]
async fn an_insecure_mesh_is_reached_only_with_the_plaintext_switches() {
    let bin = python_env_bin().await;
    let (grpcurl, python) = (bin.join("grpcurl"), bin.join("python"));
    let client = repo_root().join("clients/python/grantmesh_client.py");
    let client = client.to_str().unwrap();
    // Without --tls-dir, `Proc` starts the registry with --insecure.
    let registry = Proc::registry(&[]).await;
    let target = registry.addr.to_string();

    let services = run(&grpcurl, &["-plaintext", &target, "list"]).await;
    assert!(services.contains("grantmesh.v1.Registry"), "{services}");
    let health = run(
        &python,
        &[client, "--plaintext", "health", "--target", &registry.url()],
    )
    .await;
    assert_eq!(health.trim(), "SERVING");

    let ca = ca();
    let refused = run_failing(&grpcurl, &["-cacert", &ca, &target, "list"]).await;
    assert!(!refused.contains("grantmesh.v1.Registry"), "{refused}");
    let refused = run_failing(
        &python,
        &[client, "--ca", &ca, "health", "--target", &target],
    )
    .await;
    assert!(refused.contains("UNAVAILABLE"), "{refused}");
}

/// A real grpcio client sends bytes that are no protobuf message (a field
/// tag with wire type 7): the caller's mistake, INVALID_ARGUMENT, with a
/// message saying so, not INTERNAL; then a call with 20 KB of metadata
/// (issue 20).
#[tokio::test]
async fn a_body_that_is_no_protobuf_message_or_oversized_metadata_gets_a_clear_status() {
    let python = python_env_bin().await.join("python");
    let registry = tls_registry().await;
    let script = format!(
        r#"
import grpc
with open({ca:?}, "rb") as f:
    credentials = grpc.ssl_channel_credentials(f.read())
channel = grpc.secure_channel("{addr}", credentials)
call = channel.unary_unary("/grantmesh.v1.Registry/ListInstances")
try:
    call(b"\x0f\xff\xff", timeout=10)
    print("OK")
except grpc.RpcError as err:
    print(err.code().name, err.details())
try:
    call(b"", metadata=[("x-padding", "a" * 20000)], timeout=10)
    print("OK")
except grpc.RpcError as err:
    print(err.code().name, err.details())
"#,
        ca = ca(),
        addr = registry.addr,
    );
    let answer = run(&python, &["-c", &script]).await;
    let lines: Vec<&str> = answer.lines().collect();
    assert!(
        lines[0].starts_with("INVALID_ARGUMENT the request body is not a valid protobuf message"),
        "{answer}"
    );
    // 20 KB of metadata: over the 16 KB a call may carry, under what HTTP/2
    // takes, so the caller hears why instead of "http2 status 431".
    assert!(
        lines[1].starts_with("RESOURCE_EXHAUSTED the call's metadata is"),
        "{answer}"
    );
}
