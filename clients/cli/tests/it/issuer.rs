//! `grantmesh ca serve` and `ca join` as real processes: the CA key stays in
//! the issuer, a member gets a first certificate only with a join token for
//! its identity, renews over its current certificate (for itself only), and
//! a college started with `--issuer` renews a short-lived leaf before it
//! expires and keeps serving on it, without a restart.

use std::path::Path;
use std::time::{Duration, Instant};

use grantmesh_discovery::tls::ca::{self, LeafRequest};
use grantmesh_discovery::tls::{Identity, TlsMaterial, TlsPaths, Transport};
use grantmesh_proto::IssuerClient;
use grantmesh_proto::v1::IssueRequest;
use tonic::Code;

use crate::support::db::TestDb;
use crate::support::{Proc, assert_eventually};

/// The colleges the registry at `url` lists, trusting the CA in `ca_dir`.
async fn colleges(url: &str, ca_dir: &Path) -> Vec<grantmesh_proto::v1::Instance> {
    let material = TlsMaterial::load(TlsPaths::in_dir(ca_dir, None)).unwrap();
    let Ok(channel) = Transport::Tls(material)
        .channel(url, Some("registry"))
        .await
    else {
        return Vec::new();
    };
    grantmesh_proto::RegistryClient::new(channel)
        .list_instances(grantmesh_proto::v1::ListInstancesRequest {
            service: "college".into(),
        })
        .await
        .map(|reply| reply.into_inner().instances)
        .unwrap_or_default()
}

const COLLEGE_TOKEN: &str = "5d0c1f8e2b7a4c9d6e3f0a1b8c7d2e4f";
const NSF_TOKEN: &str = "a3e9c4f1b8d2e7a0c5f6b1d9e4a8c2f7";

/// A CA in `dir` with its join-token file; the issuer serving it, whose
/// leaves live `validity`.
async fn issuer(dir: &Path, validity: &str) -> (Proc, String) {
    ca::init(dir).unwrap();
    let tokens = dir.join("join-tokens");
    std::fs::write(
        &tokens,
        format!("# per role\ncollege/* {COLLEGE_TOKEN}\nagency/nsf {NSF_TOKEN}\n"),
    )
    .unwrap();
    let issuer = Proc::start(
        "issuer",
        &[
            "ca",
            "serve",
            "--dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--join-tokens",
            tokens.to_str().unwrap(),
            "--leaf-validity",
            validity,
        ],
    )
    .await;
    let url = format!("https://{}", issuer.addr);
    (issuer, url)
}

/// `grantmesh ca join …` with `token`: (exit ok, stderr).
fn join(
    url: &str,
    dir: &Path,
    token: &str,
    service: &str,
    name: &str,
    out: &Path,
) -> (bool, String) {
    let token_file = out.with_extension("token");
    std::fs::write(&token_file, token).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_grantmesh"))
        .args(["ca", "join", "--issuer", url, "--ca"])
        .arg(dir.join("ca.pem"))
        .arg("--join-token-file")
        .arg(&token_file)
        .args(["--service", service, "--name", name, "--out"])
        .arg(out)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_member_joins_only_with_a_token_for_its_identity_and_renews_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_dir, out) = (dir.path().join("ca"), dir.path().join("member"));
    let (_issuer, url) = issuer(&ca_dir, "1h").await;

    let (ok, err) = join(&url, &ca_dir, COLLEGE_TOKEN, "college", "college-7", &out);
    assert!(ok, "{err}");
    let pem = std::fs::read_to_string(out.join("college.college-7.pem")).unwrap();
    let (leaf, until) = ca::describe_leaf(&pem).unwrap();
    assert_eq!(
        leaf.identity,
        Identity::named("college", "college-7").unwrap()
    );
    let lives = until - time::OffsetDateTime::now_utc();
    assert!(
        lives <= time::Duration::hours(1),
        "a short-lived leaf: {lives}"
    );
    assert!(out.join("ca.pem").exists() && out.join("college.college-7.key").exists());

    // The colleges' token is no agency's; nsf's is not erc's; a made-up one is nobody's.
    for (token, service, name, refusal) in [
        (COLLEGE_TOKEN, "agency", "nsf", "PermissionDenied"),
        (NSF_TOKEN, "agency", "erc", "PermissionDenied"),
        (NSF_TOKEN, "college", "college-9", "PermissionDenied"),
        (
            "0f9e8d7c6b5a49382716f5e4d3c2b1a0",
            "college",
            "college-9",
            "Unauthenticated",
        ),
    ] {
        let (ok, err) = join(&url, &ca_dir, token, service, name, &dir.path().join(name));
        assert!(!ok && err.contains(refusal), "{service}/{name}: {err}");
    }
    assert!(
        join(
            &url,
            &ca_dir,
            NSF_TOKEN,
            "agency",
            "nsf",
            &dir.path().join("nsf")
        )
        .0
    );

    // Over its certificate, college-7 renews college-7, and nothing else;
    // a caller without one gets nothing without a token.
    let material = TlsMaterial::load(TlsPaths::in_dir(&out, Some("college.college-7"))).unwrap();
    let mut as_member = IssuerClient::new(
        Transport::Tls(material)
            .channel(&url, Some("issuer"))
            .await
            .unwrap(),
    );
    let ask = |identity: &str| IssueRequest {
        csr_pem: ca::request(&LeafRequest::loopback(identity)).unwrap().1,
        join_token: String::new(),
    };
    let renewed = as_member
        .issue(ask("college/college-7"))
        .await
        .unwrap()
        .into_inner();
    assert!(renewed.certificate_pem.contains("BEGIN CERTIFICATE"));
    let other = as_member.issue(ask("college/college-8")).await.unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied, "{other:?}");
    let anonymous = TlsMaterial::load(TlsPaths::in_dir(&out, None)).unwrap();
    let mut stranger = IssuerClient::new(
        Transport::Tls(anonymous)
            .channel(&url, Some("issuer"))
            .await
            .unwrap(),
    );
    let refused = stranger.issue(ask("college/college-7")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let junk = stranger
        .issue(IssueRequest {
            csr_pem: "not a request".into(),
            join_token: COLLEGE_TOKEN.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(junk.code(), Code::InvalidArgument, "{junk:?}");
    // The issuer holds the CA key; a member's directory never had it.
    assert!(!out.join("ca.key").exists());
}

#[tokio::test]
async fn a_college_renews_its_short_lived_certificate_before_it_expires_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_dir, out) = (dir.path().join("ca"), dir.path().join("college"));
    let (_issuer, url) = issuer(&ca_dir, "12s").await;
    // The registry's certificate from the same CA (an operator's `ca issue`).
    ca::issue(&ca_dir, &LeafRequest::loopback("registry"), &ca_dir).unwrap();
    let registry = Proc::registry(&["--tls-dir", ca_dir.to_str().unwrap()]).await;
    let (ok, err) = join(&url, &ca_dir, COLLEGE_TOKEN, "college", "college-r", &out);
    assert!(ok, "{err}");
    let first = std::fs::read_to_string(out.join("college.college-r.pem")).unwrap();
    let (_, expires) = ca::describe_leaf(&first).unwrap();

    let db = TestDb::create().await;
    let _college = Proc::member(
        "college",
        &registry.url(),
        &[
            "--tls-dir",
            out.to_str().unwrap(),
            "--database-url",
            &db.url,
            "--instance-id",
            "college-r",
            "--issuer",
            &url,
        ],
    )
    .await;
    let listed = || async {
        let listed = colleges(&registry.url(), &ca_dir).await;
        listed.len() == 1 && listed[0].id == "college-r"
    };
    assert_eventually(Duration::from_secs(10), "the college registered", listed).await;

    // Renewed at two thirds of its 12 s, well before it expires.
    let started = Instant::now();
    assert_eventually(
        Duration::from_secs(20),
        "the certificate was renewed",
        || async { std::fs::read_to_string(out.join("college.college-r.pem")).unwrap() != first },
    )
    .await;
    let renewed = std::fs::read_to_string(out.join("college.college-r.pem")).unwrap();
    let (_, renewed_until) = ca::describe_leaf(&renewed).unwrap();
    assert!(renewed_until > expires, "a later expiry");
    assert!(
        time::OffsetDateTime::now_utc() < expires,
        "renewed before the old one expired ({:?} after the college started watching)",
        started.elapsed()
    );
    // Past the first certificate's expiry the college still registers and
    // answers new TLS connections: it serves the renewed one.
    while time::OffsetDateTime::now_utc() < expires + time::Duration::seconds(2) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        listed().await,
        "still listed after its first certificate expired"
    );
    let college_url = colleges(&registry.url(), &ca_dir).await[0].address.clone();
    let trusted = TlsMaterial::load(TlsPaths::in_dir(&ca_dir, None)).unwrap();
    let channel = Transport::Tls(trusted)
        .channel(&college_url, Some("college"))
        .await
        .expect("a new connection verifies the renewed certificate");
    grantmesh_proto::CollegeClient::new(channel)
        .ping(grantmesh_proto::v1::PingRequest::default())
        .await
        .unwrap();
}
