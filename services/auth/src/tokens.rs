//! Researcher bearer tokens: EdDSA (Ed25519) JWTs that only colleges sign.
//!
//! A college holds the signing key ([`Keys::signing`]); agencies and the
//! portal hold its public half ([`Keys::verifying`]) and can check a token
//! but never make one, so a compromised agency cannot act as a researcher.
//! `grantmesh ca token-key` makes the pair ([`TokenKeyPair::generate`]).
//!
//! A token names its researcher (`sub`) and the session it belongs to
//! (`sid`), and lives at most [`MAX_TOKEN_TTL`]: a token whose `nbf` is in
//! the future, or whose `exp` lies further ahead than that, is refused even
//! with a good signature. A college also refuses a token whose session has
//! ended ([`Revoked`]): logging out ends it at every college within the
//! time their sessions are re-read.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};
use tonic::Status;
use uuid::Uuid;

use crate::{LEEWAY_SECS, bearer, unix_secs, verified};

/// The longest a researcher's token may live: a stolen one is useful for
/// this long at most; the CLI and portal renew theirs with the session's
/// refresh token before it runs out.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the token signing key is not an Ed25519 private key in PKCS#8 PEM: {0}")]
    BadPrivateKey(String),
    #[error("the token public key is not an Ed25519 public key in PEM: {0}")]
    BadPublicKey(String),
    #[error("a token may live at most {MAX_TOKEN_TTL:?}; {0:?} is too long")]
    LongTtl(Duration),
    #[error("this process verifies tokens but holds no signing key: only colleges sign")]
    CannotSign,
    #[error("failed to sign a token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The researcher's id.
    sub: String,
    /// Always "researcher".
    kind: String,
    /// The session the token belongs to.
    sid: Uuid,
    iat: u64,
    nbf: u64,
    exp: u64,
}

const RESEARCHER: &str = "researcher";

/// An Ed25519 key pair for researcher tokens, as PEM.
pub struct TokenKeyPair {
    /// PKCS#8 `PRIVATE KEY`: for colleges only.
    pub private_pem: String,
    /// SubjectPublicKeyInfo `PUBLIC KEY`: for agencies and the portal.
    pub public_pem: String,
}

impl TokenKeyPair {
    /// A fresh pair.
    pub fn generate() -> Self {
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ring makes Ed25519 keys");
        Self {
            private_pem: key.serialize_pem(),
            public_pem: key.public_key_pem(),
        }
    }
}

/// Sessions that have ended (logged out, password changed), shared by every
/// clone of a [`Keys`]: a college fills it from its store.
#[derive(Default)]
pub struct Revoked {
    /// Session → when it was revoked (tokens of it are refused after that).
    sessions: RwLock<HashMap<Uuid, SystemTime>>,
}

impl Revoked {
    /// Marks `session` ended.
    pub fn revoke(&self, session: Uuid, at: SystemTime) {
        self.sessions
            .write()
            .expect("revoked sessions poisoned")
            .insert(session, at);
    }

    /// Whether `session` has ended.
    pub fn contains(&self, session: Uuid) -> bool {
        self.sessions
            .read()
            .expect("revoked sessions poisoned")
            .contains_key(&session)
    }

    /// Forgets sessions revoked before `before`: their tokens have expired.
    pub fn forget_before(&self, before: SystemTime) {
        self.sessions
            .write()
            .expect("revoked sessions poisoned")
            .retain(|_, at| *at >= before);
    }

    pub fn len(&self) -> usize {
        self.sessions
            .read()
            .expect("revoked sessions poisoned")
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Who a verified token says is calling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bearer {
    pub researcher: Uuid,
    pub session: Uuid,
}

/// The token keys of one process: the public key always, the private key
/// on colleges.
#[derive(Clone)]
pub struct Keys {
    signing: Option<Arc<EncodingKey>>,
    verifying: Arc<DecodingKey>,
    token_ttl: Duration,
    validation: Validation,
    /// Researcher tokens verified with these keys, shared by every clone.
    verified: Arc<verified::Verified>,
    revoked: Arc<Revoked>,
}

impl Keys {
    /// A college's keys: signs tokens valid for `token_ttl` (at most
    /// [`MAX_TOKEN_TTL`]) with `private_pem`, and verifies with its public half.
    pub fn signing(private_pem: &[u8], token_ttl: Duration) -> Result<Self, AuthError> {
        if token_ttl > MAX_TOKEN_TTL || token_ttl.is_zero() {
            return Err(AuthError::LongTtl(token_ttl));
        }
        let der = PrivatePkcs8KeyDer::from_pem_slice(private_pem)
            .map_err(|err| AuthError::BadPrivateKey(err.to_string()))?;
        let pair = rcgen::KeyPair::try_from(&der)
            .map_err(|err| AuthError::BadPrivateKey(err.to_string()))?;
        if !pair.is_compatible(&rcgen::PKCS_ED25519) {
            return Err(AuthError::BadPrivateKey("not an Ed25519 key".into()));
        }
        let public = pair.public_key_raw().to_vec();
        let mut keys = Self::with_public(public)?;
        keys.signing = Some(Arc::new(EncodingKey::from_ed_der(der.secret_pkcs8_der())));
        keys.token_ttl = token_ttl;
        Ok(keys)
    }

    /// An agency's or the portal's keys: verifies tokens with `public_pem`, signs none.
    pub fn verifying(public_pem: &[u8]) -> Result<Self, AuthError> {
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(public_pem)
            .map_err(|err| AuthError::BadPublicKey(err.to_string()))?;
        // An Ed25519 SubjectPublicKeyInfo is a fixed 12-byte header (the
        // algorithm 1.3.101.112) and the 32-byte key.
        const HEADER: [u8; 12] = [
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        let der = spki.as_ref();
        if der.len() != 44 || der[..12] != HEADER {
            return Err(AuthError::BadPublicKey("not an Ed25519 key".into()));
        }
        Self::with_public(der[12..].to_vec())
    }

    fn with_public(public: Vec<u8>) -> Result<Self, AuthError> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "nbf", "sub"]);
        Ok(Self {
            signing: None,
            verifying: Arc::new(DecodingKey::from_ed_der(&public)),
            token_ttl: MAX_TOKEN_TTL,
            validation,
            verified: Arc::new(verified::Verified::new()),
            revoked: Arc::new(Revoked::default()),
        })
    }

    /// How long the tokens this process signs live.
    pub fn token_ttl(&self) -> Duration {
        self.token_ttl
    }

    /// Whether this process can sign tokens (a college).
    pub fn can_sign(&self) -> bool {
        self.signing.is_some()
    }

    /// The ended sessions these keys refuse tokens of.
    pub fn revoked(&self) -> &Arc<Revoked> {
        &self.revoked
    }

    /// A bearer token for `researcher` in `session`, and when it expires.
    pub fn researcher_token(
        &self,
        researcher: Uuid,
        session: Uuid,
    ) -> Result<(String, SystemTime), AuthError> {
        let key = self.signing.as_ref().ok_or(AuthError::CannotSign)?;
        let now = SystemTime::now();
        let expires = now + self.token_ttl;
        let claims = Claims {
            sub: researcher.to_string(),
            kind: RESEARCHER.to_owned(),
            sid: session,
            iat: unix_secs(now),
            nbf: unix_secs(now),
            exp: unix_secs(expires),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, key)?;
        Ok((token, expires))
    }

    /// The researcher calling, from `authorization: Bearer …`.
    pub fn researcher<T>(&self, request: &tonic::Request<T>) -> Result<Uuid, Status> {
        self.bearer(request).map(|bearer| bearer.researcher)
    }

    /// The researcher and session calling, from `authorization: Bearer …`.
    /// A token seen before is not verified again ([`verified`]) until it
    /// expires; its session is checked every time.
    pub fn bearer<T>(&self, request: &tonic::Request<T>) -> Result<Bearer, Status> {
        self.check(bearer(request)?)
    }

    /// As [`Self::bearer`], for a token in hand.
    pub fn check(&self, token: &str) -> Result<Bearer, Status> {
        let bearer = match self.verified.bearer(token) {
            Some(bearer) => bearer,
            None => {
                let claims = self.decode(token)?;
                let researcher = claims
                    .sub
                    .parse()
                    .map_err(|_| Status::unauthenticated("the bearer token names no researcher"))?;
                let bearer = Bearer {
                    researcher,
                    session: claims.sid,
                };
                self.verified
                    .remember(token, bearer, claims.exp.saturating_add(LEEWAY_SECS));
                bearer
            }
        };
        if self.revoked.contains(bearer.session) {
            return Err(Status::unauthenticated(
                "this session has ended (logged out, or the password changed); log in again",
            ));
        }
        Ok(bearer)
    }

    fn decode(&self, token: &str) -> Result<Claims, Status> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.verifying, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| {
                Status::unauthenticated(match err.kind() {
                    jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                        "the bearer token is not valid yet (nbf); check this machine's clock"
                    }
                    _ => "the bearer token is invalid or has expired; log in again",
                })
            })?;
        if claims.kind != RESEARCHER {
            return Err(Status::unauthenticated(
                "the bearer token is not a researcher token",
            ));
        }
        let now = unix_secs(SystemTime::now());
        if claims.exp > now + MAX_TOKEN_TTL.as_secs() + LEEWAY_SECS {
            return Err(Status::unauthenticated(
                "the bearer token lives longer than tokens may (15 minutes); log in again",
            ));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorize;

    fn keys() -> Keys {
        let pair = TokenKeyPair::generate();
        Keys::signing(pair.private_pem.as_bytes(), Duration::from_secs(60)).unwrap()
    }

    fn with_token(token: &str) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        authorize(&mut request, token).unwrap();
        request
    }

    fn signed(keys: &Keys, edit: impl FnOnce(&mut Claims)) -> String {
        let now = unix_secs(SystemTime::now());
        let mut claims = Claims {
            sub: Uuid::new_v4().to_string(),
            kind: RESEARCHER.into(),
            sid: Uuid::new_v4(),
            iat: now,
            nbf: now,
            exp: now + 60,
        };
        edit(&mut claims);
        jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &claims,
            keys.signing.as_ref().unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_researcher_token_names_its_researcher_and_session() {
        let keys = keys();
        let (id, session) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, _) = keys.researcher_token(id, session).unwrap();
        let bearer = keys.bearer(&with_token(&token)).unwrap();
        assert_eq!(
            bearer,
            Bearer {
                researcher: id,
                session
            }
        );
    }

    #[test]
    fn the_public_key_verifies_tokens_but_cannot_sign_them() {
        let pair = TokenKeyPair::generate();
        let college = Keys::signing(pair.private_pem.as_bytes(), Duration::from_secs(60)).unwrap();
        let agency = Keys::verifying(pair.public_pem.as_bytes()).unwrap();
        let id = Uuid::new_v4();
        let (token, _) = college.researcher_token(id, Uuid::new_v4()).unwrap();
        assert_eq!(agency.researcher(&with_token(&token)).unwrap(), id);
        assert!(matches!(
            agency.researcher_token(id, Uuid::new_v4()),
            Err(AuthError::CannotSign)
        ));
    }

    #[test]
    fn a_token_of_another_key_or_algorithm_is_unauthenticated() {
        let keys = keys();
        let (forged, _) = self::keys()
            .researcher_token(Uuid::new_v4(), Uuid::new_v4())
            .unwrap();
        assert_eq!(
            keys.researcher(&with_token(&forged)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        // HS256 signed with the public key as the secret (algorithm confusion).
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": Uuid::new_v4().to_string(), "kind": "researcher",
                "sid": Uuid::new_v4(), "nbf": 0, "exp": u64::MAX / 2}),
            &EncodingKey::from_secret(b"anything"),
        )
        .unwrap();
        assert!(keys.researcher(&with_token(&hs)).is_err());
        assert_eq!(
            keys.researcher(&tonic::Request::new(()))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn a_token_not_yet_valid_or_living_beyond_the_policy_is_refused() {
        let keys = keys();
        let now = unix_secs(SystemTime::now());
        let future = signed(&keys, |c| c.nbf = now + 600);
        let status = keys.researcher(&with_token(&future)).unwrap_err();
        assert!(status.message().contains("not valid yet"), "{status:?}");
        let long = signed(&keys, |c| c.exp = now + 24 * 3600);
        let status = keys.researcher(&with_token(&long)).unwrap_err();
        assert!(status.message().contains("longer than"), "{status:?}");
        let expired = signed(&keys, |c| c.exp = now - LEEWAY_SECS - 5);
        assert!(keys.researcher(&with_token(&expired)).is_err());
        assert!(keys.researcher(&with_token(&signed(&keys, |_| {}))).is_ok());
    }

    #[test]
    fn a_token_of_an_ended_session_is_refused_even_once_verified() {
        let keys = keys();
        let session = Uuid::new_v4();
        let (token, _) = keys.researcher_token(Uuid::new_v4(), session).unwrap();
        assert!(keys.researcher(&with_token(&token)).is_ok());
        keys.clone().revoked().revoke(session, SystemTime::now());
        let status = keys.researcher(&with_token(&token)).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("session has ended"), "{status:?}");
    }

    #[test]
    fn a_token_verified_once_is_refused_when_it_expires_later() {
        let keys = keys();
        let now = unix_secs(SystemTime::now());
        // Valid for about one more second, leeway included.
        let token = signed(&keys, |c| c.exp = now + 1 - LEEWAY_SECS);
        assert!(keys.researcher(&with_token(&token)).is_ok());
        assert!(
            keys.researcher(&with_token(&token)).is_ok(),
            "from the cache"
        );
        while unix_secs(SystemTime::now()) <= now + 1 {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(keys.researcher(&with_token(&token)).is_err());
    }

    #[test]
    fn a_verified_token_altered_by_one_character_is_refused() {
        let keys = keys();
        let (token, _) = keys
            .researcher_token(Uuid::new_v4(), Uuid::new_v4())
            .unwrap();
        keys.researcher(&with_token(&token)).unwrap();
        let (payload_end, _) = token.rsplit_once('.').unwrap();
        let signature = &token[payload_end.len() + 1..];
        let flipped = if signature.starts_with('A') { "B" } else { "A" };
        let altered = format!("{payload_end}.{flipped}{}", &signature[1..]);
        assert!(keys.researcher(&with_token(&altered)).is_err());
    }

    #[test]
    fn keys_that_are_not_ed25519_pem_or_ttls_beyond_the_policy_are_refused() {
        assert!(Keys::signing(b"change-me-token-key", Duration::from_secs(60)).is_err());
        let pair = TokenKeyPair::generate();
        assert!(matches!(
            Keys::signing(pair.private_pem.as_bytes(), Duration::from_secs(12 * 3600)),
            Err(AuthError::LongTtl(_))
        ));
        assert!(Keys::verifying(pair.private_pem.as_bytes()).is_err());
        let p256 = rcgen::KeyPair::generate().unwrap();
        assert!(Keys::signing(p256.serialize_pem().as_bytes(), Duration::from_secs(60)).is_err());
        assert!(Keys::verifying(p256.public_key_pem().as_bytes()).is_err());
    }
}
