//! Who is calling: researcher passwords, signed bearer tokens, and the
//! service credential that only agencies hold.
//!
//! Tokens are HS256 JWTs. Researcher tokens are signed with the token key and
//! carry the researcher's id; every grantmesh service that holds the key
//! verifies them without a database call. Agencies sign their calls to a
//! College with a separate service key, so no researcher token can open an
//! account. Both keys come from configuration.
//!
//! Passwords are hashed with Argon2id (the `argon2` crate's defaults); hashing
//! is deliberately slow, so callers run it on the blocking pool
//! ([`hash_password`], [`verify_password`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::Status;
use uuid::Uuid;

/// Shortest key accepted for signing tokens.
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the {0} must be at least {MIN_KEY_BYTES} bytes long")]
    ShortKey(&'static str),
    #[error("the token key and the service key must differ")]
    SameKeys,
    #[error("failed to sign a token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// Researcher id, or agency name.
    sub: String,
    /// "researcher" or "agency".
    kind: String,
    iat: u64,
    exp: u64,
}

const RESEARCHER: &str = "researcher";
const AGENCY: &str = "agency";
/// How long an agency's signed call stays valid.
const SERVICE_TOKEN_TTL: Duration = Duration::from_secs(300);

/// The signing keys of one deployment.
#[derive(Clone)]
pub struct Keys {
    token: (EncodingKey, DecodingKey),
    service: (EncodingKey, DecodingKey),
    token_ttl: Duration,
    validation: Validation,
}

impl Keys {
    /// `token_key` signs researcher tokens, valid for `token_ttl`;
    /// `service_key` signs agency calls.
    pub fn new(
        token_key: &[u8],
        service_key: &[u8],
        token_ttl: Duration,
    ) -> Result<Self, AuthError> {
        if token_key.len() < MIN_KEY_BYTES {
            return Err(AuthError::ShortKey("token key"));
        }
        if service_key.len() < MIN_KEY_BYTES {
            return Err(AuthError::ShortKey("service key"));
        }
        if token_key == service_key {
            return Err(AuthError::SameKeys);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self {
            token: (
                EncodingKey::from_secret(token_key),
                DecodingKey::from_secret(token_key),
            ),
            service: (
                EncodingKey::from_secret(service_key),
                DecodingKey::from_secret(service_key),
            ),
            token_ttl,
            validation,
        })
    }

    /// A bearer token for a researcher, and when it expires.
    pub fn researcher_token(&self, researcher: Uuid) -> Result<(String, SystemTime), AuthError> {
        let (token, expires) = sign(
            &self.token.0,
            researcher.to_string(),
            RESEARCHER,
            self.token_ttl,
        )?;
        Ok((token, expires))
    }

    /// A short-lived credential for an agency's call to a College.
    pub fn agency_token(&self, agency: &str) -> Result<String, AuthError> {
        Ok(sign(
            &self.service.0,
            agency.to_owned(),
            AGENCY,
            SERVICE_TOKEN_TTL,
        )?
        .0)
    }

    /// The researcher calling, from `authorization: Bearer …`.
    pub fn researcher<T>(&self, request: &tonic::Request<T>) -> Result<Uuid, Status> {
        let token = bearer(request)?;
        let claims = self.decode(token, &self.token.1).ok_or_else(|| {
            Status::unauthenticated("the bearer token is invalid or has expired; log in again")
        })?;
        if claims.kind != RESEARCHER {
            return Err(Status::unauthenticated(
                "the bearer token is not a researcher token",
            ));
        }
        claims
            .sub
            .parse()
            .map_err(|_| Status::unauthenticated("the bearer token names no researcher"))
    }

    /// The agency calling, from its service credential. A researcher's token
    /// here is PERMISSION_DENIED: only agencies may make this call.
    pub fn agency<T>(&self, request: &tonic::Request<T>) -> Result<String, Status> {
        let token = bearer(request)?;
        if let Some(claims) = self.decode(token, &self.service.1)
            && claims.kind == AGENCY
        {
            return Ok(claims.sub);
        }
        if self.decode(token, &self.token.1).is_some() {
            return Err(Status::permission_denied(
                "only a funding agency may open research accounts",
            ));
        }
        Err(Status::unauthenticated(
            "the service credential is invalid or has expired",
        ))
    }

    fn decode(&self, token: &str, key: &DecodingKey) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .ok()
            .map(|data| data.claims)
    }
}

fn sign(
    key: &EncodingKey,
    sub: String,
    kind: &str,
    ttl: Duration,
) -> Result<(String, SystemTime), AuthError> {
    let now = SystemTime::now();
    let expires = now + ttl;
    let secs = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let claims = Claims {
        sub,
        kind: kind.to_owned(),
        iat: secs(now),
        exp: secs(expires),
    };
    Ok((
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)?,
        expires,
    ))
}

/// The token from `authorization: Bearer <token>` metadata.
pub fn bearer<T>(request: &tonic::Request<T>) -> Result<&str, Status> {
    let value = request.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated("missing `authorization: Bearer <token>` metadata; log in first")
    })?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization metadata is not text"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| {
            Status::unauthenticated("the authorization metadata must be `Bearer <token>`")
        })?;
    Ok(token.trim())
}

/// Puts `authorization: Bearer <token>` on an outgoing request.
pub fn authorize<T>(request: &mut tonic::Request<T>, token: &str) -> Result<(), Status> {
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| Status::internal("a token that cannot be sent as metadata"))?;
    request.metadata_mut().insert("authorization", value);
    Ok(())
}

/// Hashes a password with Argon2id, on the blocking pool.
pub async fn hash_password(password: String) -> Result<String, Status> {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
        let salt = SaltString::generate(&mut OsRng);
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|err| Status::internal(format!("failed to hash the password: {err}")))
    })
    .await
    .map_err(|_| Status::internal("password hashing was interrupted"))?
}

/// Checks a password against a stored Argon2 hash, on the blocking pool.
pub async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        PasswordHash::new(&hash)
            .map(|parsed| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(&[1; 32], &[2; 32], Duration::from_secs(60)).unwrap()
    }

    fn with_token(token: &str) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        authorize(&mut request, token).unwrap();
        request
    }

    #[test]
    fn a_researcher_token_names_its_researcher() {
        let keys = keys();
        let id = Uuid::new_v4();
        let (token, _) = keys.researcher_token(id).unwrap();
        assert_eq!(keys.researcher(&with_token(&token)).unwrap(), id);
    }

    #[test]
    fn a_missing_or_forged_token_is_unauthenticated() {
        let keys = keys();
        assert_eq!(
            keys.researcher(&tonic::Request::new(()))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        let other = Keys::new(&[9; 32], &[8; 32], Duration::from_secs(60)).unwrap();
        let (forged, _) = other.researcher_token(Uuid::new_v4()).unwrap();
        assert_eq!(
            keys.researcher(&with_token(&forged)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn an_expired_token_is_unauthenticated() {
        let keys = keys();
        let expired = sign(
            &keys.token.0,
            Uuid::new_v4().to_string(),
            RESEARCHER,
            Duration::ZERO,
        )
        .unwrap()
        .0;
        // Past the 5 s leeway.
        let claims = Claims {
            sub: Uuid::new_v4().to_string(),
            kind: RESEARCHER.into(),
            iat: 0,
            exp: 1,
        };
        let ancient =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.token.0).unwrap();
        assert!(
            keys.researcher(&with_token(&expired)).is_ok(),
            "within the leeway"
        );
        assert_eq!(
            keys.researcher(&with_token(&ancient)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn a_researcher_token_cannot_act_as_an_agency() {
        let keys = keys();
        let (token, _) = keys.researcher_token(Uuid::new_v4()).unwrap();
        assert_eq!(
            keys.agency(&with_token(&token)).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let agency = keys.agency_token("nsf").unwrap();
        assert_eq!(keys.agency(&with_token(&agency)).unwrap(), "nsf");
        assert_eq!(
            keys.researcher(&with_token(&agency)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn short_or_equal_keys_are_refused() {
        assert!(Keys::new(&[1; 31], &[2; 32], Duration::from_secs(1)).is_err());
        assert!(Keys::new(&[1; 32], &[1; 32], Duration::from_secs(1)).is_err());
    }

    #[tokio::test]
    async fn a_password_verifies_against_its_hash_only() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(verify_password("correct horse".into(), hash.clone()).await);
        assert!(!verify_password("wrong horse".into(), hash).await);
    }
}
