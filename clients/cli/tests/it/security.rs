//! Identity in the mesh, attacked the way a stranger on the network would:
//! real processes on TLS, real certificates, real rogue peers.
//!
//! Each attack is reproduced and must be refused without changing anything:
//! no certificate, a certificate for another service, one from another CA,
//! an expired one; a rogue listed as a college gets no connection from the
//! agency; rotated certificates are picked up without a restart.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use grantmesh_discovery::tls::ca::{self, LeafRequest};
use grantmesh_discovery::tls::{TlsMaterial, TlsPaths, Transport};
use grantmesh_proto::RegistryClient;
use grantmesh_proto::v1::*;
use tokio::io::AsyncReadExt as _;
use tonic::Code;

use crate::support::*;

/// A client of `url` trusting the CA in `dir`, presenting `identity`'s certificate from `dir`.
async fn registry_as(
    url: &str,
    dir: &Path,
    identity: Option<&str>,
) -> Result<RegistryClient<tonic::transport::Channel>, String> {
    let stem = identity.map(|identity| tls::issue_in(dir, identity));
    let material =
        TlsMaterial::load(TlsPaths::in_dir(dir, stem.as_deref())).map_err(|e| e.to_string())?;
    Transport::Tls(material)
        .channel(url, None)
        .await
        .map(RegistryClient::new)
        .map_err(|err| format!("{err:?}"))
}

/// The colleges the registry at `url` lists, read over TLS with the CA in `dir`.
async fn colleges(url: &str, dir: &Path) -> Vec<Instance> {
    let mut client = registry_as(url, dir, None).await.unwrap();
    client
        .list_instances(ListInstancesRequest {
            service: "college".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .instances
}

/// A registry and a college on TLS with the CA in `dir`; the college's id and address.
async fn tls_mesh(dir: &Path) -> (Proc, Proc) {
    let tls = dir.to_str().unwrap();
    let registry = Proc::registry(&["--tls-dir", tls]).await;
    let college = Proc::member(
        "college",
        &registry.url(),
        &["--tls-dir", tls, "--instance-id", "college-real"],
    )
    .await;
    let url = registry.url();
    assert_eventually(
        Duration::from_secs(10),
        "the college registered over TLS",
        || {
            let url = url.clone();
            async move {
                let listed = colleges(&url, dir).await;
                listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>() == ["college-real"]
            }
        },
    )
    .await;
    (registry, college)
}

/// The college as the registry lists it, checked unchanged.
async fn assert_untouched(registry: &Proc, college: &Proc, dir: &Path) {
    let listed = colleges(&registry.url(), dir).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, "college-real");
    assert_eq!(
        listed[0].address,
        college.url(),
        "the real lease is untouched"
    );
}

#[tokio::test]
async fn a_stranger_without_a_certificate_cannot_register_renew_close_or_remove_a_college() {
    let dir = tempfile::tempdir().unwrap();
    tls::make(dir.path());
    let (registry, college) = tls_mesh(dir.path()).await;
    let mut stranger = registry_as(&registry.url(), dir.path(), None)
        .await
        .unwrap();

    let hijack = stranger
        .register(college_at("college-real", "https://127.0.0.1:9"))
        .await
        .unwrap_err();
    assert_eq!(hijack.code(), Code::Unauthenticated, "{hijack:?}");
    let beat = stranger
        .heartbeat(HeartbeatRequest {
            service: "college".into(),
            instance_id: "college-real".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(beat.code(), Code::Unauthenticated, "{beat:?}");
    for _ in 0..20 {
        let removed = stranger
            .deregister(DeregisterRequest {
                service: "college".into(),
                instance_id: "college-real".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(removed.code(), Code::Unauthenticated, "{removed:?}");
    }
    // A KeepAlive stream for the college's id, opened and then dropped.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(KeepAliveRequest {
        service: "college".into(),
        instance_id: "college-real".into(),
    })
    .await
    .unwrap();
    let mut replies = stranger
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let refused = replies.message().await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    drop(tx);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_untouched(&registry, &college, dir.path()).await;
}

#[tokio::test]
async fn a_certificate_for_another_service_another_ca_or_past_its_expiry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    tls::make(dir.path());
    let (registry, college) = tls_mesh(dir.path()).await;

    // An agency's certificate, from the right CA, for the wrong service.
    let mut agency = registry_as(&registry.url(), dir.path(), Some("agency/nsf"))
        .await
        .unwrap();
    let hijack = agency
        .register(college_at("college-real", "https://127.0.0.1:9"))
        .await
        .unwrap_err();
    assert_eq!(hijack.code(), Code::PermissionDenied, "{hijack:?}");
    assert!(hijack.message().contains("\"agency\""), "{hijack:?}");
    let removed = agency
        .deregister(DeregisterRequest {
            service: "college".into(),
            instance_id: "college-real".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(removed.code(), Code::PermissionDenied, "{removed:?}");

    // A college certificate from another CA: no TLS connection at all.
    let other = tempfile::tempdir().unwrap();
    tls::make(other.path());
    std::fs::copy(dir.path().join("ca.pem"), other.path().join("trusted.pem")).unwrap();
    let material = TlsMaterial::load(TlsPaths {
        ca: other.path().join("trusted.pem"),
        identity: Some(ca::leaf_files(
            other.path(),
            &tls::issue_in(other.path(), "college/college-real"),
        )),
    })
    .unwrap();
    let mut foreign = RegistryClient::new(
        Transport::Tls(material)
            .channel_lazy(&registry.url(), None)
            .unwrap(),
    );
    let refused = foreign
        .register(college_at("college-real", "https://127.0.0.1:9"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "a certificate from another CA gets no connection: {refused:?}"
    );

    // A college certificate from the right CA that has expired.
    let expired = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("ca.pem"), expired.path().join("ca.pem")).unwrap();
    let mut request = LeafRequest::loopback("college/college-real");
    request.validity = time::Duration::minutes(-1);
    ca::issue(dir.path(), &request, expired.path()).unwrap();
    let material = TlsMaterial::load(TlsPaths::in_dir(
        expired.path(),
        Some("college.college-real"),
    ))
    .unwrap();
    let mut stale = RegistryClient::new(
        Transport::Tls(material)
            .channel_lazy(&registry.url(), None)
            .unwrap(),
    );
    let refused = stale
        .register(college_at("college-real", "https://127.0.0.1:9"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "an expired certificate gets no connection: {refused:?}"
    );
    assert_untouched(&registry, &college, dir.path()).await;
}

/// A TLS server that completes handshakes with `service`'s certificate and
/// counts the bytes any client then sends it.
async fn rogue(
    dir: &Path,
    service: &str,
) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let stem = tls::issue_in(dir, service);
    let material = TlsMaterial::load(TlsPaths::in_dir(dir, Some(&stem))).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(material.server_config().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (handshakes, bytes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (h, b) = (handshakes.clone(), bytes.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, h, b) = (acceptor.clone(), h.clone(), b.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    h.fetch_add(1, Ordering::SeqCst);
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        b.fetch_add(n, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    (addr, handshakes, bytes)
}

#[tokio::test]
async fn the_agency_sends_nothing_to_a_rogue_listed_as_a_college() {
    let dir = tempfile::tempdir().unwrap();
    tls::make(dir.path());
    let tls_dir = dir.path().to_str().unwrap();
    let registry = Proc::registry(&["--tls-dir", tls_dir]).await;
    let agency = Proc::member(
        "agency",
        &registry.url(),
        &[
            "--tls-dir",
            tls_dir,
            "--name",
            "nsf",
            "--open-timeout",
            "1s",
        ],
    )
    .await;
    // A rogue with a valid certificate — but for `agency`, not `college` —
    // listed as the only college by a misconfigured registrant.
    let (addr, handshakes, bytes) = rogue(dir.path(), "agency/nsf").await;
    let mut registrant = registry_as(&registry.url(), dir.path(), Some("college/college-rogue"))
        .await
        .unwrap();
    registrant
        .register(college_at("college-rogue", &format!("https://{addr}")))
        .await
        .unwrap();

    // A researcher needs a college to sign up, so the proposal names a made-up investigator:
    // the agency accepts it and tries to have the listed "college" open the account.
    let researcher = uuid::Uuid::new_v4();
    let bearer = token_of(researcher);
    let mut client = grantmesh_proto::AgencyClient::new(
        Transport::Tls(TlsMaterial::load(TlsPaths::in_dir(dir.path(), None)).unwrap())
            .channel(&agency.url(), None)
            .await
            .unwrap(),
    );
    let _ = client
        .submit_proposal(authed(
            SubmitProposalRequest {
                title: "Rogue bait".into(),
                requested_amount_minor: 400_000,
                duration_days: 30,
                idempotency_key: "bait-1".into(),
                ..Default::default()
            },
            &bearer,
        ))
        .await;
    assert_eventually(
        Duration::from_secs(10),
        "the agency dialled the rogue",
        || async { handshakes.load(Ordering::SeqCst) > 0 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        bytes.load(Ordering::SeqCst),
        0,
        "not one byte — no HTTP/2 preface, no request, no credential — reached the rogue"
    );
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    tls::make(dir.path());
    let registry = Proc::registry(&["--tls-dir", dir.path().to_str().unwrap()]).await;
    let served = || async {
        let material = TlsMaterial::load(TlsPaths::in_dir(dir.path(), None)).unwrap();
        let tcp = tokio::net::TcpStream::connect(registry.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tls = tokio_rustls::TlsConnector::from(material.client_config())
            .connect(name, tcp)
            .await
            .expect("a verified handshake");
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    let before = served().await;
    ca::issue(dir.path(), &LeafRequest::loopback("registry"), dir.path()).unwrap();
    assert_eventually(
        Duration::from_secs(5),
        "the new certificate is served",
        || async { served().await != before },
    )
    .await;
    // And the registry still works on it.
    let mut client = registry_as(&registry.url(), dir.path(), None)
        .await
        .unwrap();
    client
        .list_instances(ListInstancesRequest::default())
        .await
        .expect("calls work on the rotated certificate");
}

#[tokio::test]
async fn certificates_of_a_ca_removed_from_trust_are_refused_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    tls::make(dir.path());
    let registry = Proc::registry(&["--tls-dir", dir.path().to_str().unwrap()]).await;
    // A college certificate of the CA in use today, kept aside.
    let old = tempfile::tempdir().unwrap();
    tls::issue_in(dir.path(), "college/college-old");
    for file in [
        "ca.pem",
        "college.college-old.pem",
        "college.college-old.key",
    ] {
        std::fs::copy(dir.path().join(file), old.path().join(file)).unwrap();
    }
    let register = |dir: std::path::PathBuf| {
        let url = registry.url();
        async move {
            let mut client = registry_as(&url, &dir, Some("college/college-old")).await?;
            client
                .register(college_at("college-old", "https://127.0.0.1:9"))
                .await
                .map(|_| ())
                .map_err(|status| format!("{status:?}"))
        }
    };
    register(old.path().to_owned())
        .await
        .expect("the old CA's college is accepted at first");

    // The operator replaces the CA (and the registry's certificate) on disk.
    let new = tempfile::tempdir().unwrap();
    tls::make(new.path());
    for file in ["registry.pem", "registry.key", "ca.pem"] {
        std::fs::copy(new.path().join(file), dir.path().join(file)).unwrap();
    }
    // The old college now trusts the new CA too (so only the server's
    // verdict on its certificate is tested), but still presents the old one.
    let mixed = tempfile::tempdir().unwrap();
    std::fs::copy(new.path().join("ca.pem"), mixed.path().join("ca.pem")).unwrap();
    for file in ["college.college-old.pem", "college.college-old.key"] {
        std::fs::copy(old.path().join(file), mixed.path().join(file)).unwrap();
    }
    // Once the registry serves its new certificate, it trusts only the new CA.
    assert_eventually(
        Duration::from_secs(5),
        "the new CA's college is accepted",
        || {
            let new = new.path().to_owned();
            async move { register(new).await.is_ok() }
        },
    )
    .await;
    let refused = register(mixed.path().to_owned())
        .await
        .expect_err("the old CA's certificate is refused");
    assert!(
        !refused.contains("BadSignature"),
        "refused by the server, not the client: {refused}"
    );
}

#[tokio::test]
async fn a_server_at_its_connection_limit_closes_new_connections_at_once_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    tls::make(dir.path());
    // 64 descriptors: the registry holds at most 48 connections. (All come
    // from this one address and without a certificate: the shares per
    // address and for strangers are lifted, so the total is what they
    // meet; fairness.rs tests the shares.)
    let node = grantmesh_node::process::ChildNode::spawn(
        Path::new("prlimit"),
        "registry",
        [
            "--nofile=64:64",
            env!("CARGO_BIN_EXE_grantmesh"),
            "registry",
            "--listen",
            "127.0.0.1:0",
            "--tls-dir",
            dir.path().to_str().unwrap(),
            "--max-connections-per-address",
            "1000",
            "--connections-reserved-for-members",
            "0",
        ],
        |command| {
            command.stderr(std::process::Stdio::null());
        },
    )
    .await
    .unwrap();
    let url = format!("https://{}", node.addr);
    let material = TlsMaterial::load(TlsPaths::in_dir(dir.path(), None)).unwrap();
    let handshake = || {
        let config = material.client_config();
        let addr = node.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
        }
    };
    // Idle clients that complete the handshake and then say nothing.
    let mut idle = Vec::new();
    for _ in 0..80 {
        if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(2), handshake()).await {
            idle.push(tls);
        }
    }
    assert!(
        idle.len() < 80,
        "the registry stopped taking connections at its limit"
    );
    let started = std::time::Instant::now();
    let mut client = RegistryClient::new(
        Transport::Tls(TlsMaterial::load(TlsPaths::in_dir(dir.path(), None)).unwrap())
            .channel_lazy(&url, None)
            .unwrap(),
    );
    let refused = client
        .list_instances(ListInstancesRequest::default())
        .await
        .expect_err("no room for another connection");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused at once, not left hanging ({:?}): {refused:?}",
        started.elapsed()
    );
    drop(idle);
    assert_eventually(
        Duration::from_secs(5),
        "calls work again once idle clients left",
        || {
            let url = url.clone();
            let dir = dir.path().to_owned();
            async move {
                let mut client = match registry_as(&url, &dir, None).await {
                    Ok(client) => client,
                    Err(_) => return false,
                };
                client
                    .list_instances(ListInstancesRequest::default())
                    .await
                    .is_ok()
            }
        },
    )
    .await;
}
