//! The test mesh's CA: made once per test binary, with a certificate for
//! each service, so in-process meshes run on TLS as production does.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use grantmesh_discovery::tls::ca::{self, LeafRequest};
use grantmesh_discovery::tls::{TlsMaterial, TlsPaths, Transport};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tonic::transport::{Channel, Endpoint};

/// The services the test CA has certificates for.
pub const SERVICES: [&str; 3] = ["registry", "agency", "college"];

/// A directory with `ca.pem` and `SERVICE.pem`/`SERVICE.key` for every service.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir").keep();
        make(&dir);
        dir
    })
}

/// Makes a CA and every service's certificate in `dir`.
pub fn make(dir: &Path) {
    ca::init(dir).expect("a test CA");
    for service in SERVICES {
        ca::issue(dir, &LeafRequest::loopback(service), dir).expect("a test certificate");
    }
}

/// The files a server of `service` uses.
pub fn paths(service: &str) -> TlsPaths {
    TlsPaths::in_dir(dir(), Some(service))
}

/// How a test client reaches `url`: TLS (trusting the test CA, presenting
/// no certificate) for https://, plaintext for http://.
pub fn transport(url: &str) -> Transport {
    transport_as(url, None)
}

/// As [`transport`], presenting `service`'s certificate when given.
pub fn transport_as(url: &str, service: Option<&str>) -> Transport {
    if !url.starts_with("https://") {
        return Transport::Insecure;
    }
    let paths = TlsPaths::in_dir(dir(), service);
    Transport::Tls(TlsMaterial::load(paths).expect("the test CA loads"))
}

/// A connected channel to `url`.
pub async fn channel(url: &str) -> Channel {
    transport(url)
        .channel(url, None)
        .await
        .unwrap_or_else(|err| panic!("connect to {url}: {err}"))
}

/// A connected channel to `url`, presenting `service`'s certificate.
pub async fn channel_as(url: &str, service: &str) -> Channel {
    transport_as(url, Some(service))
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
    let material = TlsMaterial::load(TlsPaths::in_dir(dir(), identity)).expect("the test CA loads");
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
