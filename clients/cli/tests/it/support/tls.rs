//! The test mesh's CA: made once per test binary, with the registry's
//! certificate and the token key pair, and a certificate for each member a
//! test starts or speaks as, issued on first use ([`member`]), so meshes run
//! on TLS as production does.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use grantmesh_discovery::tls::ca::{self, LeafRequest};
use grantmesh_discovery::tls::{Identity, TlsMaterial, TlsPaths, Transport};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tonic::transport::{Channel, Endpoint};

/// The members whose certificates every test CA has from the start: the
/// multi-process tests' processes find them in `--tls-dir`.
pub const MEMBERS: [&str; 6] = [
    "registry",
    "agency/nsf",
    "agency/erc",
    "college/college-1",
    "college/college-2",
    "college/college-real",
];

/// A directory with `ca.pem`, `token.key`/`token.pub`, and `STEM.pem` /
/// `STEM.key` for every member issued so far.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir").keep();
        make(&dir);
        dir
    })
}

/// Makes a CA, the token key pair and [`MEMBERS`]' certificates in `dir`.
pub fn make(dir: &Path) {
    ca::init(dir).expect("a test CA");
    for member in MEMBERS {
        issue_in(dir, member);
    }
    let pair = grantmesh_auth::TokenKeyPair::generate();
    std::fs::write(dir.join("token.key"), pair.private_pem).expect("the token key");
    std::fs::write(dir.join("token.pub"), pair.public_pem).expect("the token public key");
}

/// Issues `identity`'s certificate in `dir` unless it is there; its file stem.
pub fn issue_in(dir: &Path, identity: &str) -> String {
    static ISSUING: Mutex<()> = Mutex::new(());
    let request = LeafRequest::loopback(identity);
    let stem = request.identity.file_stem();
    let _one_at_a_time = ISSUING.lock().unwrap_or_else(|e| e.into_inner());
    if !ca::leaf_files(dir, &stem).0.exists() {
        ca::issue(dir, &request, dir).expect("a test certificate");
    }
    stem
}

/// The file stem of `identity`'s certificate in the test CA's directory,
/// issued now if need be (`college/c1` → `college.c1`).
pub fn member(identity: &str) -> String {
    issue_in(dir(), identity)
}

/// The files a server of `identity` (`registry`, `college/college-0`) uses.
pub fn paths(identity: &str) -> TlsPaths {
    TlsPaths::in_dir(dir(), Some(&member(identity)))
}

/// The identity of a college instance.
pub fn college(id: &str) -> String {
    Identity::named("college", id)
        .expect("a valid instance id")
        .to_string()
}

/// How a test client reaches `url`: TLS (trusting the test CA, presenting
/// no certificate) for https://, plaintext for http://.
pub fn transport(url: &str) -> Transport {
    transport_as(url, None)
}

/// As [`transport`], presenting `identity`'s certificate when given.
pub fn transport_as(url: &str, identity: Option<&str>) -> Transport {
    if !url.starts_with("https://") {
        return Transport::Insecure;
    }
    let stem = identity.map(member);
    let paths = TlsPaths::in_dir(dir(), stem.as_deref());
    Transport::Tls(TlsMaterial::load(paths).expect("the test CA loads"))
}

/// A connected channel to `url`.
pub async fn channel(url: &str) -> Channel {
    transport(url)
        .channel(url, None)
        .await
        .unwrap_or_else(|err| panic!("connect to {url}: {err}"))
}

/// A connected channel to `url`, presenting `identity`'s certificate.
pub async fn channel_as(url: &str, identity: &str) -> Channel {
    transport_as(url, Some(identity))
        .channel(url, None)
        .await
        .unwrap_or_else(|err| panic!("connect to {url}: {err}"))
}

/// A TLS channel to `server` that connects from `local` (any 127.x.y.z:
/// loopback answers on all of 127.0.0.0/8, so one test has many client
/// addresses), presenting `identity`'s certificate when given.
pub async fn channel_from(
    server: SocketAddr,
    local: IpAddr,
    identity: Option<&str>,
) -> Result<Channel, tonic::transport::Error> {
    let stem = identity.map(member);
    let material =
        TlsMaterial::load(TlsPaths::in_dir(dir(), stem.as_deref())).expect("the test CA loads");
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let material = Arc::clone(&material);
        async move {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(local, 0))?;
            let tcp = socket.connect(server).await?;
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let tls = tokio_rustls::TlsConnector::from(material.client_config())
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Endpoint::from_shared(format!("http://{server}"))
        .expect("a loopback URL")
        .connect_timeout(std::time::Duration::from_secs(1))
        .connect_with_connector(connector)
        .await
}
