//! PostgreSQL over TLS: the database URL's `sslmode` and `sslrootcert`,
//! honoured as libpq honours them, with rustls (the `ring` provider).
//!
//! tokio-postgres knows `sslmode=disable|prefer|require` but neither
//! `verify-ca`/`verify-full` nor `sslrootcert`, and it leaves certificate
//! checks to the connector. So [`PgConnect::parse`] takes both parameters out
//! of the URL, hands tokio-postgres the rest, and [`connector`] — the one
//! function that builds the TLS connector for the pool, the migrations and
//! the `LISTEN` connection alike — builds the rustls configuration the mode
//! asks for:
//!
//! | `sslmode` | TLS | server certificate |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `prefer` (the default) | if the server offers it, else plaintext | not checked |
//! | `require` | always; refused if the server has none | not checked |
//! | `verify-ca` | always | chain checked against the roots |
//! | `verify-full` | always | chain and host name checked |
//!
//! The roots are the PEM file `sslrootcert=PATH` names in the URL, else the
//! file the `PGSSLROOTCERT` environment variable names, else the system's
//! roots (`sslrootcert=system` asks for them explicitly). As in libpq, a root
//! file given with `prefer` or `require` makes those modes check the chain
//! (as `verify-ca`). `prefer` and `require` without one encrypt but do not
//! authenticate the server, so they stop eavesdroppers and not an active
//! man in the middle; `prefer` also falls back to plaintext when the server
//! has no TLS. Use `verify-full` wherever the network is not trusted.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{Result, StoreError};

/// How long a connection attempt (TCP and the TLS handshake) may take when
/// the URL does not say (`connect_timeout`): long enough for a database
/// across a slow link, short enough that a wrong address is a prompt
/// start-up error rather than a hang.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The environment variable libpq reads for the root certificates when the
/// URL has no `sslrootcert`.
pub const ROOT_CERT_ENV: &str = "PGSSLROOTCERT";

/// Whether and how a connection uses TLS: the URL's `sslmode`, as libpq
/// defines it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS if the server offers it, unverified; plaintext otherwise.
    #[default]
    Prefer,
    /// TLS or no connection; the server's certificate is not checked.
    Require,
    /// TLS, with the server's certificate chain checked against the roots.
    VerifyCa,
    /// TLS, with the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    /// The mode a URL's `sslmode` value names.
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            other => Err(StoreError::TlsConfig(format!(
                "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: it only negotiates, the connector verifies.
    fn negotiation(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Negotiation;
        match self {
            Self::Disable => Negotiation::Disable,
            Self::Prefer => Negotiation::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => Negotiation::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the trusted root certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file (`sslrootcert=PATH` or `PGSSLROOTCERT`).
    File(PathBuf),
    /// The operating system's store (`sslrootcert=system`, or nothing given).
    System,
}

impl fmt::Display for RootCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "sslrootcert {}", path.display()),
            Self::System => f.write_str("the system's root certificates"),
        }
    }
}

/// What a connection checks of the server's certificate, after the libpq
/// rules are applied (a root file upgrades `prefer`/`require`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// A PostgreSQL URL made ready to connect: tokio-postgres's configuration
/// (without `sslmode`/`sslrootcert`) and the TLS connector they ask for.
#[derive(Clone)]
pub struct PgConnect {
    /// What tokio-postgres connects with; its `ssl_mode` says only whether
    /// to negotiate TLS.
    pub config: tokio_postgres::Config,
    /// The connector [`connector`] built for `ssl_mode` and `roots`.
    pub tls: MakeRustlsConnect,
    /// The URL's `sslmode` (`prefer` when it has none).
    pub ssl_mode: SslMode,
    /// The roots the server's chain is checked against, when it is.
    pub roots: RootCerts,
    /// `host:port/db`, without the password, for messages.
    pub target: String,
}

impl fmt::Debug for PgConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnect")
            .field("target", &self.target)
            .field("ssl_mode", &self.ssl_mode)
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl PgConnect {
    /// Parses a `postgres://` URL (or a `key=value` connection string),
    /// reading `sslrootcert` from [`ROOT_CERT_ENV`] when the URL has none.
    pub fn parse(url: &str) -> Result<Self> {
        let env_root = std::env::var_os(ROOT_CERT_ENV)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from);
        Self::parse_with_root_cert_default(url, env_root)
    }

    /// [`Self::parse`] with the `PGSSLROOTCERT` fallback passed in, so
    /// tests do not touch the process environment.
    pub fn parse_with_root_cert_default(url: &str, env_root: Option<PathBuf>) -> Result<Self> {
        let split = split_tls_params(url)?;
        let mut config: tokio_postgres::Config = split.rest.parse().map_err(StoreError::BadUrl)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        crate::bound_every_session(&mut config);
        let ssl_mode = split
            .ssl_mode
            .as_deref()
            .map(SslMode::parse)
            .transpose()?
            .unwrap_or_default();
        config.ssl_mode(ssl_mode.negotiation());
        let given = split.root_cert.map(PathBuf::from).or(env_root);
        let roots = match given {
            Some(path) if path.as_os_str() == "system" => {
                if !matches!(ssl_mode, SslMode::VerifyFull) {
                    // As libpq: the system's roots vouch for every public
                    // name, so only a host-name check makes them meaningful.
                    return Err(StoreError::TlsConfig(format!(
                        "sslrootcert=system needs sslmode=verify-full, not sslmode={ssl_mode}"
                    )));
                }
                RootCerts::System
            }
            Some(path) => RootCerts::File(path),
            None => RootCerts::System,
        };
        let tls = connector(ssl_mode, &roots)?;
        let target = describe(&config);
        Ok(Self {
            config,
            tls,
            ssl_mode,
            roots,
            target,
        })
    }

    /// One connection, with a failure explained ([`Self::explain`]).
    pub async fn connect(
        &self,
    ) -> Result<(
        tokio_postgres::Client,
        tokio_postgres::Connection<
            tokio_postgres::Socket,
            <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream,
        >,
    )> {
        self.config
            .connect(self.tls.clone())
            .await
            .map_err(|err| self.explain(Box::new(err)))
    }

    /// The start-up error for a failed connection attempt: TLS refused by
    /// the server or a rejected certificate get their own, clear errors;
    /// anything else is [`StoreError::Unreachable`].
    pub fn explain(&self, err: Box<dyn std::error::Error + Send + Sync>) -> StoreError {
        match tls_failure(&*err) {
            Some(TlsFailure::Unsupported) => StoreError::TlsUnsupported {
                target: self.target.clone(),
                ssl_mode: self.ssl_mode,
            },
            Some(TlsFailure::Rejected(error)) => StoreError::CertificateRejected {
                target: self.target.clone(),
                ssl_mode: self.ssl_mode,
                reason: self.reason(&error),
            },
            None => StoreError::Unreachable {
                target: self.target.clone(),
                source: err,
            },
        }
    }

    fn reason(&self, error: &rustls::Error) -> String {
        let host = self.config.get_hosts().first().map_or_else(
            || "localhost".to_owned(),
            |host| match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            },
        );
        match error {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
                "the server's certificate is not signed by a CA in {}",
                self.roots
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!("the server's certificate is not valid for the host name {host}"),
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => "the server's certificate has expired".to_owned(),
            other => other.to_string(),
        }
    }
}

/// The TLS connector for `mode`, checking the server's chain against
/// `roots` where the mode (or a root file, as in libpq) asks for it. The one
/// place a connector is built: the pool, the migrations and the `LISTEN`
/// connection all use it through [`PgConnect`].
pub fn connector(mode: SslMode, roots: &RootCerts) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let check = match (mode, roots) {
        (SslMode::VerifyFull, _) => Check::ChainAndName,
        (SslMode::VerifyCa, _) => Check::Chain,
        // libpq: a root file given with a weaker mode still checks the chain.
        (SslMode::Prefer | SslMode::Require, RootCerts::File(_)) => Check::Chain,
        (SslMode::Prefer | SslMode::Require, RootCerts::System) | (SslMode::Disable, _) => {
            Check::Nothing
        }
    };
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(Unverified {
            provider: provider.clone(),
        }),
        Check::Chain | Check::ChainAndName => {
            let store = Arc::new(load_roots(roots)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                .build()
                .map_err(|err| {
                    StoreError::TlsConfig(format!("failed to use the roots in {roots}: {err}"))
                })?;
            if check == Check::Chain {
                Arc::new(AnyName { inner: webpki })
            } else {
                webpki
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| StoreError::TlsConfig(format!("failed to set up TLS: {err}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn load_roots(roots: &RootCerts) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match roots {
        RootCerts::File(path) => {
            let certs = read_pem_certs(path)?;
            let (added, _ignored) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(StoreError::TlsConfig(format!(
                    "sslrootcert {} holds no usable CA certificate",
                    path.display()
                )));
            }
        }
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "could not read some of the system's root certificates");
            }
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(StoreError::TlsConfig(
                    "the system has no root certificates to verify the server with; \
                     set sslrootcert=PATH in the database URL"
                        .into(),
                ));
            }
        }
    }
    Ok(store)
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    if !path.exists() {
        return Err(StoreError::TlsConfig(format!(
            "sslrootcert {} does not exist",
            path.display()
        )));
    }
    let bad = |err: &dyn fmt::Display| {
        StoreError::TlsConfig(format!(
            "sslrootcert {} is not a PEM certificate file: {err}",
            path.display()
        ))
    };
    CertificateDer::pem_file_iter(path)
        .map_err(|err| bad(&err))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|err| bad(&err))
}

/// `prefer` and `require` without a root file: encrypt, but accept any
/// certificate, as libpq does. The handshake signatures are still checked,
/// so the session is bound to the key of the certificate presented.
#[derive(Debug)]
struct Unverified {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the full webpki check, except that a certificate for
/// another host name is accepted. webpki checks the chain before the name,
/// so a name error means the chain was good.
#[derive(Debug)]
struct AnyName {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A PostgreSQL URL split into what tokio-postgres understands and the two
/// TLS parameters this module handles itself.
#[derive(Debug, PartialEq, Eq)]
struct Split {
    rest: String,
    ssl_mode: Option<String>,
    root_cert: Option<String>,
}

const SSL_MODE: &str = "sslmode";
const ROOT_CERT: &str = "sslrootcert";

fn split_tls_params(url: &str) -> Result<Split> {
    let url = url.trim();
    let mut ssl_mode = None;
    let mut root_cert = None;
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let rest = if is_url {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|pair| !pair.is_empty()) {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    let decode = |text: &str| {
                        percent_decode_str(text)
                            .decode_utf8()
                            .map(|text| text.into_owned())
                            .map_err(|_| {
                                StoreError::TlsConfig(format!(
                                    "the database URL's {text:?} is not valid UTF-8 once decoded"
                                ))
                            })
                    };
                    match decode(key)?.as_str() {
                        SSL_MODE => ssl_mode = Some(decode(value)?),
                        ROOT_CERT => root_cert = Some(decode(value)?),
                        _ => kept.push(pair),
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        // `key=value` form. Quoted values are left to tokio-postgres; these
        // two parameters are taken out only when written unquoted, and a
        // string holding either is re-joined with single spaces.
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some((SSL_MODE, value)) if !value.starts_with('\'') => {
                    ssl_mode = Some(value.to_owned())
                }
                Some((ROOT_CERT, value)) if !value.starts_with('\'') => {
                    root_cert = Some(value.to_owned())
                }
                _ => kept.push(word),
            }
        }
        if ssl_mode.is_none() && root_cert.is_none() {
            // Untouched, so quoted values keep their spacing.
            url.to_owned()
        } else {
            kept.join(" ")
        }
    };
    Ok(Split {
        rest,
        ssl_mode,
        root_cert,
    })
}

/// Where a URL points, without its password, for messages.
pub(crate) fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("(default)");
    format!("{host}:{port}/{db}")
}

enum TlsFailure {
    /// tokio-postgres asked for TLS and the server answered it has none.
    Unsupported,
    /// The handshake failed, usually on the server's certificate.
    Rejected(rustls::Error),
}

/// The words tokio-postgres uses when the server declines `SSLRequest`; it
/// has no error kind of its own for this, so the message is matched.
const NO_TLS_MESSAGE: &str = "server does not support TLS";

fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(deadpool_postgres::PoolError::Backend(inner)) =
            err.downcast_ref::<deadpool_postgres::PoolError>()
        {
            next = Some(inner);
            continue;
        }
        if let Some(rustls) = err.downcast_ref::<rustls::Error>() {
            return Some(TlsFailure::Rejected(rustls.clone()));
        }
        // `io::Error::source` skips the error it wraps, so look inside.
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(rustls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(TlsFailure::Rejected(rustls.clone()));
        }
        if err.to_string().contains(NO_TLS_MESSAGE) {
            return Some(TlsFailure::Unsupported);
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_a_url_and_the_rest_kept() {
        let split = split_tls_params(
            "postgres://u@db:5432/grants?application_name=gm&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            split,
            Split {
                rest: "postgres://u@db:5432/grants?application_name=gm".into(),
                ssl_mode: Some("verify-full".into()),
                root_cert: Some("/etc/ca.pem".into()),
            }
        );
        let split = split_tls_params("postgres://u@db/grants?sslmode=require").unwrap();
        assert_eq!(split.rest, "postgres://u@db/grants");
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_a_key_value_string() {
        let split =
            split_tls_params("host=db user=u sslmode=verify-ca sslrootcert=/ca.pem dbname=g")
                .unwrap();
        assert_eq!(split.rest, "host=db user=u dbname=g");
        assert_eq!(split.ssl_mode.as_deref(), Some("verify-ca"));
        assert_eq!(split.root_cert.as_deref(), Some("/ca.pem"));
    }

    #[test]
    fn a_key_value_string_without_tls_parameters_is_passed_on_untouched() {
        let text = "host=db password='two  spaces'";
        assert_eq!(split_tls_params(text).unwrap().rest, text);
    }

    #[test]
    fn verify_modes_make_tokio_postgres_insist_on_tls() {
        for mode in ["require", "verify-ca", "verify-full"] {
            let parsed = PgConnect::parse_with_root_cert_default(
                &format!("postgres://u@db/g?sslmode={mode}"),
                None,
            )
            .unwrap();
            assert_eq!(parsed.ssl_mode.as_str(), mode);
            assert_eq!(
                parsed.config.get_ssl_mode(),
                tokio_postgres::config::SslMode::Require,
                "{mode}"
            );
        }
    }

    #[test]
    fn a_url_without_sslmode_prefers_tls_and_keeps_its_timeout() {
        let parsed =
            PgConnect::parse_with_root_cert_default("postgres://u@db:5432/grants", None).unwrap();
        assert_eq!(parsed.ssl_mode, SslMode::Prefer);
        assert_eq!(parsed.roots, RootCerts::System);
        assert_eq!(
            parsed.config.get_connect_timeout(),
            Some(&DEFAULT_CONNECT_TIMEOUT)
        );
        assert_eq!(parsed.target, "db:5432/grants");
    }

    #[test]
    fn an_unknown_sslmode_is_named_in_the_error() {
        let err = PgConnect::parse_with_root_cert_default("postgres://u@db/g?sslmode=verify", None)
            .unwrap_err();
        assert!(err.to_string().contains("sslmode \"verify\""), "{err}");
    }

    #[test]
    fn a_missing_sslrootcert_is_named_in_the_error() {
        let err = PgConnect::parse_with_root_cert_default(
            "postgres://u@db/g?sslmode=verify-full&sslrootcert=/x",
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("sslrootcert /x does not exist"),
            "{err}"
        );
    }

    #[test]
    fn pgsslrootcert_is_used_when_the_url_has_no_sslrootcert() {
        let err = PgConnect::parse_with_root_cert_default(
            "postgres://u@db/g?sslmode=verify-ca",
            Some("/nowhere/root.crt".into()),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("sslrootcert /nowhere/root.crt does not exist"),
            "{err}"
        );
    }

    #[test]
    fn sslrootcert_system_needs_verify_full() {
        let err = PgConnect::parse_with_root_cert_default(
            "postgres://u@db/g?sslmode=require&sslrootcert=system",
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("verify-full"), "{err}");
    }
}
