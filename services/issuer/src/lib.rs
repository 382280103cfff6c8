//! The mesh's certificate issuer: `grantmesh ca serve`.
//!
//! The CA key lives in this one process. A member makes its own key and
//! sends a certificate request; the issuer signs a short-lived leaf
//! ([`IssuerConfig::leaf_validity`], a day by default) when the request
//! comes with a **join token** for the identity it names (the member's
//! first certificate, as SPIRE's join tokens and Kubernetes' bootstrap
//! tokens do), or over the member's **current certificate** naming that
//! very identity (a renewal: no token needed once a member holds a
//! certificate). Members renew well before expiry and reload the files
//! live, so leaves can be short.
//!
//! Join tokens ([`JoinTokens`]) are per role and say whom they admit:
//! `college/*` any college instance, `agency/nsf` that agency only. Only
//! their SHA-256 digests are kept in memory.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use grantmesh_discovery::tls::Identity;
use grantmesh_discovery::tls::ca::{self, Authority};
use grantmesh_proto::v1::{IssueReply, IssueRequest};
use grantmesh_proto::{Issuer, IssuerServer};
use sha2::{Digest as _, Sha256};
use tonic::{Request, Response, Status};

/// A day: long enough that an issuer restart or a short outage does not
/// expire anyone (members renew at two thirds of the lifetime), short
/// enough that a stolen leaf ages out soon.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);

/// Shortest leaf the issuer signs: renewals must have room to happen.
pub const MIN_LEAF_VALIDITY: Duration = Duration::from_secs(5);

/// Longest certificate request read, in bytes: a request is a key and a
/// few names, about a kilobyte.
const MAX_CSR_BYTES: usize = 16 * 1024;

/// Shortest join token accepted: as many characters as 32 random bytes in hex.
pub const MIN_TOKEN_CHARS: usize = 32;

/// Whom a join token admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admits {
    /// Every named member of a service (`college/*`).
    Service(String),
    /// Exactly this identity (`agency/nsf`, `registry`).
    Identity(Identity),
}

impl Admits {
    fn admits(&self, identity: &Identity) -> bool {
        match self {
            Admits::Service(service) => {
                identity.service_name() == service && identity.name().is_some()
            }
            Admits::Identity(only) => only == identity,
        }
    }
}

impl std::fmt::Display for Admits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Admits::Service(service) => write!(f, "{service}/*"),
            Admits::Identity(identity) => write!(f, "{identity}"),
        }
    }
}

/// What can be wrong with a join-token file.
#[derive(Debug, thiserror::Error)]
#[error("join tokens, line {line}: {reason}")]
pub struct TokensError {
    pub line: usize,
    pub reason: String,
}

/// The join tokens an issuer accepts: digest → whom it admits.
#[derive(Clone, Debug, Default)]
pub struct JoinTokens {
    tokens: Vec<([u8; 32], Admits)>,
}

impl JoinTokens {
    /// Parses lines of `WHOM TOKEN` (`college/* 6f1c…`, `agency/nsf 9b2e…`);
    /// blank lines and `#` comments are skipped. A token must be at least
    /// [`MIN_TOKEN_CHARS`] long and look random.
    pub fn parse(text: &str) -> Result<Self, TokensError> {
        let mut tokens = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |reason: String| TokensError {
                line: n + 1,
                reason,
            };
            let (whom, token) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| error("expected WHOM TOKEN, e.g. `college/* 6f1c…`".into()))?;
            let token = token.trim();
            let admits = match whom.strip_suffix("/*") {
                Some(service) => {
                    Identity::service(service).map_err(|err| error(err.to_string()))?;
                    Admits::Service(service.to_owned())
                }
                None => {
                    Admits::Identity(Identity::parse(whom).map_err(|err| error(err.to_string()))?)
                }
            };
            if token.len() < MIN_TOKEN_CHARS || grantmesh_auth::looks_made_up(token.as_bytes()) {
                return Err(error(format!(
                    "the token for {admits} is too short or too predictable: use {MIN_TOKEN_CHARS} or more random characters (`openssl rand -hex 32`)"
                )));
            }
            tokens.push((digest(token), admits));
        }
        Ok(Self { tokens })
    }

    /// Whom `token` admits, if it is one of these.
    fn admits(&self, token: &str) -> Option<&Admits> {
        let digest = digest(token);
        self.tokens
            .iter()
            .find(|(known, _)| *known == digest)
            .map(|(_, admits)| admits)
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// How an issuer signs.
pub struct IssuerConfig {
    /// The CA, read once at start.
    pub authority: Authority,
    pub tokens: JoinTokens,
    /// How long the leaves it signs live.
    pub leaf_validity: Duration,
}

/// The `grantmesh.v1.Issuer` implementation.
#[derive(Clone)]
pub struct IssuerService {
    config: Arc<IssuerConfig>,
}

impl IssuerService {
    pub fn new(config: IssuerConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    pub fn into_server(self) -> IssuerServer<Self> {
        IssuerServer::new(self)
    }
}

#[tonic::async_trait]
impl Issuer for IssuerService {
    #[tracing::instrument(skip_all)]
    async fn issue(&self, request: Request<IssueRequest>) -> Result<Response<IssueReply>, Status> {
        let caller = grantmesh_discovery::tls::peer_identity(&request);
        let request = request.into_inner();
        if request.csr_pem.len() > MAX_CSR_BYTES {
            return Err(Status::invalid_argument(format!(
                "csr_pem is longer than {MAX_CSR_BYTES} bytes"
            )));
        }
        let validity = time::Duration::try_from(self.config.leaf_validity)
            .map_err(|_| Status::internal("the leaf validity does not fit"))?;
        let (leaf, public_key) = ca::read_request(&request.csr_pem, validity)
            .map_err(|err| Status::invalid_argument(format!("csr_pem: {err}")))?;
        let wanted = &leaf.identity;
        let how = if !request.join_token.is_empty() {
            match self.config.tokens.admits(&request.join_token) {
                Some(admits) if admits.admits(wanted) => format!("join token for {admits}"),
                Some(admits) => {
                    return Err(Status::permission_denied(format!(
                        "this join token is for {admits}, not for {wanted}"
                    )));
                }
                None => {
                    return Err(Status::unauthenticated(
                        "the join token is not one this issuer knows",
                    ));
                }
            }
        } else {
            match &caller {
                Some(current) if current == wanted => format!("renewal by {current}"),
                Some(current) => {
                    return Err(Status::permission_denied(format!(
                        "your certificate names {current}: it renews {current} only, not {wanted}"
                    )));
                }
                None => {
                    return Err(Status::unauthenticated(
                        "a first certificate needs a join token; a renewal, the member's current certificate",
                    ));
                }
            }
        };
        let (certificate_pem, not_after) = self
            .config
            .authority
            .sign(&leaf, &public_key)
            .map_err(|err| Status::internal(err.to_string()))?;
        tracing::info!(identity = %wanted, %how, %not_after, "issued a certificate");
        let not_after = SystemTime::from(not_after);
        Ok(Response::new(IssueReply {
            certificate_pem,
            ca_pem: self.config.authority.ca_pem().to_owned(),
            not_after: Some(prost_types::Timestamp::from(not_after)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "9f3b1c6e0d8a4f7b2e5c9a1d3f6b8e0c";

    #[test]
    fn a_token_file_names_whom_each_token_admits() {
        let tokens = JoinTokens::parse(&format!(
            "# colleges\ncollege/* {TOKEN}\n\nagency/nsf 4a7d2f9b1e6c3a8d5f0b2e7c9a4d1f6b\n"
        ))
        .unwrap();
        assert_eq!(tokens.len(), 2);
        let college = tokens.admits(TOKEN).unwrap();
        assert!(college.admits(&Identity::named("college", "college-9").unwrap()));
        assert!(!college.admits(&Identity::service("college").unwrap()));
        assert!(!college.admits(&Identity::named("agency", "nsf").unwrap()));
        let nsf = tokens.admits("4a7d2f9b1e6c3a8d5f0b2e7c9a4d1f6b").unwrap();
        assert!(nsf.admits(&Identity::named("agency", "nsf").unwrap()));
        assert!(!nsf.admits(&Identity::named("agency", "erc").unwrap()));
        assert!(
            tokens
                .admits("something-else-entirely-0123456789")
                .is_none()
        );
    }

    #[test]
    fn short_placeholder_or_malformed_tokens_are_refused_with_their_line() {
        for (text, line) in [
            ("college/* short", 1),
            ("\ncollege/* change-me-join-token-for-the-colleges-0000", 2),
            ("college/*", 1),
            (&format!("College/* {TOKEN}"), 1),
        ] {
            let err = JoinTokens::parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text}: {err}");
        }
    }
}
