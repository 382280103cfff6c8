//! Identity in the mesh: TLS everywhere, mutual between mesh members.
//!
//! Every grantmesh server speaks TLS (rustls, no OpenSSL) with a certificate
//! from the mesh's own CA ([`ca`]). A certificate names its holder as a
//! SPIFFE-style URI SAN ([`Identity`]): `spiffe://grantmesh/registry`, or
//! `spiffe://grantmesh/<service>/<name>` for one college instance or one
//! agency. Mesh members (registries, agencies, colleges) also present their
//! certificate as a client certificate, so a server knows who is calling
//! ([`peer_identity`]); researchers and `grpcurl` need only the CA, and
//! authenticate with their bearer token.
//!
//! A client that dials an instance it found in the registry checks, beyond
//! the chain and the host name, that the server's certificate names the
//! service it meant to reach ([`Transport::endpoint`]): a rogue address in
//! the registry gets no connection, let alone a credential.
//!
//! Certificates are read from disk and read again when their files change
//! ([`TlsMaterial`]), so rotating them needs no restart. Plaintext is
//! [`Transport::Insecure`], only by explicit choice.

pub mod ca;
mod connect;
mod identity;
mod probe;
pub mod renew;

pub use identity::{Identity, SPIFFE_PREFIX, identity_of, peer_identity};
pub use probe::scheme_mismatch;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// What can go wrong with certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl TlsError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn rcgen(err: rcgen::Error) -> Self {
        Self::Invalid(format!("certificate: {err}"))
    }
}

/// Where one process finds its TLS files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The mesh CA's certificate: what this process trusts.
    pub ca: PathBuf,
    /// This process's certificate and key; `None` for a client with no
    /// identity of its own (a researcher's CLI, a simulation).
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl TlsPaths {
    /// `DIR/ca.pem` and, for a member, `DIR/STEM.pem` + `DIR/STEM.key`
    /// (what `grantmesh ca init` and `grantmesh ca issue` write; the stem is
    /// the service, `registry`, or [`Identity::file_stem`], `college.college-1`).
    pub fn in_dir(dir: &Path, stem: Option<&str>) -> Self {
        Self {
            ca: dir.join(ca::CA_CERT),
            identity: stem.map(|stem| ca::leaf_files(dir, stem)),
        }
    }

    /// The files of `identity` in `dir`: `DIR/<service>.<name>.pem` when it
    /// is there, else `DIR/<service>.pem` (one directory per member, as
    /// compose mounts it).
    pub fn for_identity(dir: &Path, identity: &Identity) -> Self {
        let own = Self::in_dir(dir, Some(&identity.file_stem()));
        match &own.identity {
            Some((cert, _)) if cert.exists() => own,
            _ => Self::in_dir(dir, Some(identity.service_name())),
        }
    }
}

/// How often at most the files are looked at again for changes.
const RELOAD_CHECK_EVERY: Duration = Duration::from_secs(1);

/// This process's TLS configuration, read from [`TlsPaths`] and read again
/// when a file's modification time changes (checked at most once a second,
/// when a connection needs the configuration).
pub struct TlsMaterial {
    paths: TlsPaths,
    state: Mutex<Loaded>,
}

struct Loaded {
    stamps: Vec<Option<SystemTime>>,
    checked_at: Instant,
    server: Option<Arc<ServerConfig>>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("paths", &self.paths)
            .finish()
    }
}

impl TlsMaterial {
    /// Reads the files now; an unreadable or invalid file is an error here,
    /// at start-up.
    pub fn load(paths: TlsPaths) -> Result<Arc<Self>, TlsError> {
        let loaded = build(&paths)?;
        Ok(Arc::new(Self {
            paths,
            state: Mutex::new(loaded),
        }))
    }

    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    /// Who this process's own certificate says it is (`None` without one,
    /// or for a certificate that names no grantmesh identity).
    pub fn identity(&self) -> Option<Identity> {
        let (cert, _) = self.paths.identity.as_ref()?;
        identity_of(read_certs(cert).ok()?.first()?)
    }

    /// The server side: this process's certificate, client certificates
    /// optional but verified against the CA when presented.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        self.current()
            .server
            .ok_or_else(|| TlsError::Invalid("a server needs a certificate and key".into()))
    }

    /// The client side: trusts the CA, presents this process's certificate if it has one.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current().client
    }

    fn current(&self) -> LoadedView {
        let mut state = self.state.lock().expect("tls state poisoned");
        if state.checked_at.elapsed() >= RELOAD_CHECK_EVERY {
            state.checked_at = Instant::now();
            if stamps(&self.paths) != state.stamps {
                match build(&self.paths) {
                    Ok(loaded) => {
                        tracing::info!(ca = %self.paths.ca.display(), "tls files changed on disk: reloaded");
                        *state = loaded;
                    }
                    // Mid-rotation (key written, certificate not yet) or a bad
                    // file: keep serving with what worked, and say so.
                    Err(err) => {
                        tracing::warn!(error = %err, "tls files changed but cannot be used; keeping the previous ones")
                    }
                }
            }
        }
        LoadedView {
            server: state.server.clone(),
            client: state.client.clone(),
        }
    }
}

struct LoadedView {
    server: Option<Arc<ServerConfig>>,
    client: Arc<ClientConfig>,
}

fn stamps(paths: &TlsPaths) -> Vec<Option<SystemTime>> {
    let mut files = vec![paths.ca.clone()];
    if let Some((cert, key)) = &paths.identity {
        files.push(cert.clone());
        files.push(key.clone());
    }
    files
        .iter()
        .map(|file| std::fs::metadata(file).and_then(|m| m.modified()).ok())
        .collect()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(paths: &TlsPaths) -> Result<Loaded, TlsError> {
    let stamps = stamps(paths);
    let mut roots = RootCertStore::empty();
    let ca = read_certs(&paths.ca)?;
    for cert in ca {
        roots
            .add(cert)
            .map_err(|err| TlsError::Invalid(format!("{}: {err}", paths.ca.display())))?;
    }
    let roots = Arc::new(roots);
    let identity = match &paths.identity {
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|err| TlsError::Invalid(format!("{}: {err}", key.display())))?;
            Some((chain, key))
        }
        None => None,
    };
    let versions = rustls::DEFAULT_VERSIONS;
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|err| TlsError::Invalid(err.to_string()))?
        .with_root_certificates(roots.clone());
    let mut client = match &identity {
        Some((chain, key)) => client
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|err| {
                TlsError::Invalid(format!("the certificate and key do not fit: {err}"))
            })?,
        None => client.with_no_client_auth(),
    };
    client.alpn_protocols = vec![b"h2".to_vec()];
    let server = match identity {
        Some((chain, key)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                // Researchers and grpcurl come without a client certificate
                // and authenticate with a token; a presented one must verify.
                .allow_unauthenticated()
                .build()
                .map_err(|err| TlsError::Invalid(err.to_string()))?;
            let mut server = ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(versions)
                .map_err(|err| TlsError::Invalid(err.to_string()))?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .map_err(|err| {
                    TlsError::Invalid(format!("the certificate and key do not fit: {err}"))
                })?;
            server.alpn_protocols = vec![b"h2".to_vec()];
            Some(Arc::new(server))
        }
        None => None,
    };
    Ok(Loaded {
        stamps,
        checked_at: Instant::now(),
        server,
        client: Arc::new(client),
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| TlsError::Invalid(format!("{}: {err}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Invalid(format!("{}: {err}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid(format!(
            "{}: no certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The grantmesh service a certificate names (the service part of its
/// [`Identity`]).
pub fn service_of(cert: &CertificateDer<'_>) -> Option<String> {
    identity_of(cert).map(|identity| identity.service_name().to_owned())
}

/// How a process talks to the mesh.
#[derive(Clone, Debug)]
pub enum Transport {
    /// Plaintext, chosen explicitly (`--insecure`).
    Insecure,
    /// TLS with this process's files.
    Tls(Arc<TlsMaterial>),
}

impl Transport {
    /// `https` with TLS, `http` without: the scheme of this process's URLs.
    pub fn scheme(&self) -> &'static str {
        match self {
            Transport::Insecure => "http",
            Transport::Tls(_) => "https",
        }
    }

    /// `SCHEME://ADDR`.
    pub fn url(&self, addr: std::net::SocketAddr) -> String {
        format!("{}://{addr}", self.scheme())
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// An endpoint for `url`. With TLS the connection verifies the server's
    /// chain and host name and, when `service` is given, that its
    /// certificate names that service; an `http://` URL is refused rather
    /// than dialled in plaintext. Without TLS, an `https://` URL is refused.
    pub fn endpoint(
        &self,
        url: &str,
        service: Option<&str>,
    ) -> Result<(tonic::transport::Endpoint, Option<connect::Connector>), TlsError> {
        let endpoint = |url: &str| {
            Ok::<_, TlsError>(
                tonic::transport::Endpoint::from_shared(url.to_owned())
                    .map_err(|err| {
                        TlsError::Invalid(format!("{url:?} is not a usable URL: {err}"))
                    })?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5)),
            )
        };
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        match (self, scheme) {
            (Transport::Insecure, Some("http")) => Ok((endpoint(url)?, None)),
            // tonic dials an https:// URL only with its own TLS; this
            // connector does the TLS, so tonic is handed the same address
            // as http:// (the port it names, or 443, is kept).
            (Transport::Tls(material), Some("https")) => {
                let rest = &url["https://".len()..];
                let authority = rest.split('/').next().unwrap_or(rest);
                let with_port = if authority
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                    && !authority.ends_with(']')
                {
                    format!("http://{rest}")
                } else {
                    format!("http://{authority}:443{}", &rest[authority.len()..])
                };
                Ok((
                    endpoint(&with_port)?,
                    Some(connect::Connector::new(material.clone(), service)),
                ))
            }
            (Transport::Insecure, _) => Err(TlsError::Invalid(format!(
                "{url} needs TLS, but this process runs without it (--insecure); use an http:// URL or give it the mesh CA"
            ))),
            (Transport::Tls(_), _) => Err(TlsError::Invalid(format!(
                "{url} is not an https:// URL: grantmesh does not send calls in plaintext unless told to (--insecure)"
            ))),
        }
    }

    /// A channel to `url` that connects on first use (see [`Transport::endpoint`]).
    pub fn channel_lazy(
        &self,
        url: &str,
        service: Option<&str>,
    ) -> Result<tonic::transport::Channel, TlsError> {
        Ok(match self.endpoint(url, service)? {
            (endpoint, None) => endpoint.connect_lazy(),
            (endpoint, Some(connector)) => endpoint.connect_with_connector_lazy(connector),
        })
    }

    /// A channel to `url`, connected now.
    pub async fn channel(
        &self,
        url: &str,
        service: Option<&str>,
    ) -> Result<tonic::transport::Channel, ChannelError> {
        Ok(match self.endpoint(url, service)? {
            (endpoint, None) => endpoint.connect().await?,
            (endpoint, Some(connector)) => endpoint.connect_with_connector(connector).await?,
        })
    }
}

/// Why a channel could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// How long one connection attempt may take: the registry and the balancer
/// retry elsewhere soon after.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Parses an IP address or host for a certificate's SAN list.
pub fn split_names(names: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for name in names {
        match name.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(name.clone()),
        }
    }
    (dns, ips)
}
