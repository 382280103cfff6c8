//! The client side of a TLS connection to one grantmesh server.
//!
//! tonic dials through [`Connector`]: TCP, then a rustls handshake that
//! verifies the chain against the mesh CA and the certificate against the
//! host it dials (as every TLS client does), then — for a call into the mesh —
//! that the certificate names the service the caller meant to reach. A peer
//! that fails any check gets no HTTP/2 connection, so no request, token or
//! credential is ever written to it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{CONNECT_TIMEOUT, TlsMaterial, service_of};

/// A tower service from a URI to a verified TLS stream.
#[derive(Clone)]
pub struct Connector {
    material: Arc<TlsMaterial>,
    /// The service the server's certificate must name, if any.
    service: Option<Arc<str>>,
}

impl Connector {
    pub(super) fn new(material: Arc<TlsMaterial>, service: Option<&str>) -> Self {
        Self {
            material,
            service: service.map(Arc::from),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            tokio::time::timeout(CONNECT_TIMEOUT, this.connect(uri))
                .await
                .map_err(|_| -> BoxError { "timed out connecting".into() })?
        })
    }
}

impl Connector {
    async fn connect(self, uri: Uri) -> Result<TokioIo<TlsStream<TcpStream>>, BoxError> {
        let host = uri.host().ok_or("the URL names no host")?;
        // `[::1]` in a URL is `::1` to TLS.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        // (The URI is the http:// form of the https:// URL: see `Transport::endpoint`.)
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(host.clone())
            .map_err(|err| format!("{host:?} cannot be checked against a certificate: {err}"))?;
        let tls = TlsConnector::from(self.material.client_config())
            .connect(name, tcp)
            .await?;
        if let Some(expected) = &self.service {
            let (_, session) = tls.get_ref();
            let named = session
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(service_of);
            if named.as_deref() != Some(&**expected) {
                tracing::warn!(
                    %uri,
                    expected = &**expected,
                    named = named.as_deref().unwrap_or("nothing"),
                    "refused to talk to a server whose certificate names another service"
                );
                return Err(format!(
                    "{uri} presented a certificate for {}, not for {expected}: refusing to talk to it",
                    named.as_deref().unwrap_or("no grantmesh service")
                )
                .into());
            }
        }
        Ok(TokioIo::new(tls))
    }
}
