//! Certificates from the mesh's issuer (`grantmesh ca serve`): a member's
//! first one, with a join token ([`join`]), and every later one, asked for
//! over the current certificate before it expires ([`keep_renewed`]).
//!
//! The member makes its own key; only a certificate request leaves it. A
//! renewed key and certificate are written over the old files (key first,
//! each through a rename), and [`super::TlsMaterial`] reloads them within a
//! second, so renewing needs no restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use grantmesh_proto::IssuerClient;
use grantmesh_proto::v1::IssueRequest;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::ca::{self, LeafRequest};
use super::{TlsError, TlsMaterial, TlsPaths, Transport};

/// The service name an issuer's certificate carries.
pub const ISSUER_SERVICE: &str = "issuer";

/// A member renews once this share of its certificate's life has passed:
/// a third of it is left to ride out an issuer that is down for a while.
const RENEW_AT: f64 = 2.0 / 3.0;

/// Most time between two looks at the certificate's age.
const LOOK_EVERY: Duration = Duration::from_secs(60);

/// How long one request to the issuer may take.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong asking the issuer.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the issuer at {url} cannot be reached: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the issuer at {url} refused: {status}")]
    Refused { url: String, status: String },
}

/// Gets a first certificate for `request` from the issuer at `url` (whose
/// certificate must chain to the CA in `ca`), with `join_token`; writes
/// `out_dir/STEM.key`, `out_dir/STEM.pem` and `out_dir/ca.pem`, and returns
/// the certificate's path and expiry.
pub async fn join(
    url: &str,
    ca: &Path,
    join_token: &str,
    request: &LeafRequest,
    out_dir: &Path,
) -> Result<(PathBuf, OffsetDateTime), RenewError> {
    let material = TlsMaterial::load(TlsPaths {
        ca: ca.to_owned(),
        identity: None,
    })?;
    let (key, cert, ca_pem, not_after) =
        ask(&Transport::Tls(material), url, request, join_token).await?;
    let (cert_path, _) = ca::write_leaf(out_dir, &request.identity.file_stem(), &key, &cert)?;
    ca::write_public(&out_dir.join(ca::CA_CERT), &ca_pem)?;
    Ok((cert_path, not_after))
}

/// Asks for a certificate for `request` over `transport`: (key PEM,
/// certificate PEM, CA PEM, expiry).
async fn ask(
    transport: &Transport,
    url: &str,
    request: &LeafRequest,
    join_token: &str,
) -> Result<(String, String, String, OffsetDateTime), RenewError> {
    let (key, csr_pem) = ca::request(request)?;
    let unreachable = |reason: String| RenewError::Unreachable {
        url: url.to_owned(),
        reason,
    };
    let channel = transport
        .channel(url, Some(ISSUER_SERVICE))
        .await
        .map_err(|err| unreachable(err.to_string()))?;
    let mut call = tonic::Request::new(IssueRequest {
        csr_pem,
        join_token: join_token.to_owned(),
    });
    call.set_timeout(ISSUE_TIMEOUT);
    let reply = IssuerClient::new(channel)
        .issue(call)
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                unreachable(status.message().to_owned())
            }
            _ => RenewError::Refused {
                url: url.to_owned(),
                status: format!("{:?}: {}", status.code(), status.message()),
            },
        })?
        .into_inner();
    let (_, not_after) = ca::describe_leaf(&reply.certificate_pem)?;
    Ok((
        key.serialize_pem(),
        reply.certificate_pem,
        reply.ca_pem,
        not_after,
    ))
}

/// Renews this process's certificate from the issuer at `url` whenever
/// two thirds of its life have passed, until `closing`: the same identity,
/// names and addresses, a new key, asked for over the current certificate.
/// A failed attempt is logged and tried again soon after.
pub fn keep_renewed(material: Arc<TlsMaterial>, url: String, closing: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let wait = match renew_if_due(&material, &url).await {
                Ok(wait) => wait,
                Err(err) => {
                    tracing::warn!(error = %err, "could not renew this member's certificate; trying again");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                () = closing.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    });
}

/// Renews the certificate if it is due; how long until the next look.
async fn renew_if_due(material: &Arc<TlsMaterial>, url: &str) -> Result<Duration, RenewError> {
    let Some((cert_path, key_path)) = material.paths().identity.clone() else {
        return Ok(LOOK_EVERY);
    };
    let pem = std::fs::read_to_string(&cert_path).map_err(|err| TlsError::io(&cert_path, err))?;
    let (request, not_after) = ca::describe_leaf(&pem)?;
    let now = OffsetDateTime::now_utc();
    let lifetime = request.validity.max(time::Duration::seconds(1));
    let renew_at = not_after - lifetime + lifetime * (RENEW_AT as f32);
    if now < renew_at {
        let until = Duration::try_from(renew_at - now).unwrap_or(LOOK_EVERY);
        return Ok(until.min(LOOK_EVERY).max(Duration::from_millis(200)));
    }
    let (key, cert, _, renewed_until) =
        ask(&Transport::Tls(Arc::clone(material)), url, &request, "").await?;
    ca::write_pair(&cert_path, &key_path, &key, &cert)?;
    tracing::info!(identity = %request.identity, until = %renewed_until, "renewed this member's certificate");
    Ok(Duration::from_millis(200))
}
