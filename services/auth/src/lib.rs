//! Who is calling: researcher passwords, signed bearer tokens, and the
//! service credential that only agencies hold.
//!
//! Tokens are HS256 JWTs. Researcher tokens are signed with the token key and
//! carry the researcher's id; every grantmesh service that holds the key
//! verifies them without a database call. Agencies sign their calls to a
//! College with a separate service key, so no researcher token can open an
//! account. Both keys come from configuration.
//!
//! An agency's credential is bound to one call: it is for a College
//! (`aud`), names the proposal and the award of the account it may open,
//! lives [`AGENCY_CREDENTIAL_TTL`], and carries a fresh `jti` that the
//! College records in its store, so a captured credential can neither open
//! another account nor be replayed, at any College instance.
//!
//! Passwords are hashed with Argon2id (the `argon2` crate's defaults); hashing
//! is deliberately slow, so callers run it on the blocking pool
//! ([`hash_password`], [`verify_password`]). New passwords must pass
//! [`strength`]; guessing is slowed by [`attempts`].

mod argon;
pub mod attempts;
pub mod strength;
mod verified;

pub use attempts::Attempts;
pub use strength::check_new_password;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::Status;
use uuid::Uuid;

/// Fewest different byte values a key must contain. A random key of 32
/// bytes has about 30; hex text has up to 16; "aaaa…" or "0000…" has one.
/// A cheap guard against placeholder keys, not a measure of entropy.
pub const MIN_DISTINCT_KEY_BYTES: usize = 8;

fn distinct_bytes(key: &[u8]) -> usize {
    let mut seen = [false; 256];
    key.iter().for_each(|&b| seen[usize::from(b)] = true);
    seen.iter().filter(|&&s| s).count()
}

/// Whether `key` looks made up rather than random: fewer than
/// [`MIN_DISTINCT_KEY_BYTES`] byte values; one of `.env.example`'s
/// `change-me…` placeholders; runs of consecutive characters for half of
/// it or more ("0123456789abcdef…", "abcdefgh…"); or a short pattern
/// repeated ("abcdabcd…"). A random key — 32 bytes of base64, or
/// `openssl rand -hex 32` — is none of these; it is a guard against
/// placeholders, not a measure of entropy.
fn looks_made_up(key: &[u8]) -> bool {
    let lower = key.to_ascii_lowercase();
    let placeholder = lower
        .windows(9)
        .any(|w| w == b"change-me" || w == b"changeme_")
        || lower.windows(8).any(|w| w == b"changeme");
    let consecutive = key
        .windows(2)
        .filter(|pair| pair[1] == pair[0].wrapping_add(1))
        .count();
    let repeated = (1..=8).any(|period| {
        key.len() > 2 * period && key.iter().zip(&key[period..]).all(|(a, b)| a == b)
    });
    distinct_bytes(key) < MIN_DISTINCT_KEY_BYTES
        || placeholder
        || consecutive * 2 >= key.len()
        || repeated
}

/// Shortest key accepted for signing tokens.
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the {0} must be at least {MIN_KEY_BYTES} bytes long")]
    ShortKey(&'static str),
    #[error("the token key and the service key must differ")]
    SameKeys,
    #[error(
        "the {0} is too predictable: use random bytes (e.g. `head -c 32 /dev/urandom | base64`)"
    )]
    WeakKey(&'static str),
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

/// What an agency's credential carries: who signs, which College call it
/// is for, and a fresh id so that a College accepts it once.
#[derive(Debug, Serialize, Deserialize)]
struct AgencyClaims {
    /// The agency's name.
    sub: String,
    /// Always "agency".
    kind: String,
    /// Always [`COLLEGE_AUDIENCE`]: the credential is for a College only.
    aud: String,
    /// The proposal whose account this credential may open.
    proposal: String,
    /// The award, in minor units, that account may be opened with.
    award: i64,
    iat: u64,
    exp: u64,
    /// A fresh id per credential; Colleges record it so it is used once.
    jti: Uuid,
}

const RESEARCHER: &str = "researcher";
const AGENCY: &str = "agency";
/// The audience of agency credentials: the College's `OpenAccount`.
const COLLEGE_AUDIENCE: &str = "college";

/// How long an agency's credential for one `OpenAccount` call stays valid.
///
/// Longer than one attempt to open an account (the agency's `--open-timeout`,
/// 5 s by default, plus clock skew and the verifier's leeway), so an honest
/// call never arrives expired; much shorter than the 300 s credentials
/// before it, so a captured one is useful only briefly, and the Colleges
/// keep the record of used credentials ([`AgencyCall::expires_at`]) small.
/// A credential names one proposal and award and is single use anyway; the
/// short life bounds how long a College must remember it.
pub const AGENCY_CREDENTIAL_TTL: Duration = Duration::from_secs(60);

/// Clock skew tolerated when checking a token's expiry, in seconds.
const LEEWAY_SECS: u64 = 5;

/// An agency's call to open an account, as its verified credential says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgencyCall {
    /// The agency that signed the credential.
    pub agency: String,
    /// The credential's unique id, to be recorded so that it is used once.
    pub jti: Uuid,
    /// When the College stops accepting the credential (its `exp` plus the
    /// verifier's leeway); its record of use may be forgotten after that.
    pub expires_at: SystemTime,
}

/// The signing keys of one deployment.
#[derive(Clone)]
pub struct Keys {
    token: (EncodingKey, DecodingKey),
    service: (EncodingKey, DecodingKey),
    token_ttl: Duration,
    validation: Validation,
    /// Agency credentials: also audience `college` and a `jti`.
    agency_validation: Validation,
    /// Researcher tokens verified with these keys, shared by every clone.
    verified: Arc<verified::Verified>,
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
        for (key, name) in [(token_key, "token key"), (service_key, "service key")] {
            if looks_made_up(key) {
                return Err(AuthError::WeakKey(name));
            }
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let mut agency_validation = validation.clone();
        agency_validation.set_audience(&[COLLEGE_AUDIENCE]);
        agency_validation.set_required_spec_claims(&["exp", "sub", "aud"]);
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
            agency_validation,
            verified: Arc::new(verified::Verified::new()),
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

    /// A credential for one agency call to a College: opening the account of
    /// `proposal_id` with `award_minor`, once, within
    /// [`AGENCY_CREDENTIAL_TTL`]. Sign a new one for every attempt.
    pub fn agency_credential(
        &self,
        agency: &str,
        proposal_id: &str,
        award_minor: i64,
    ) -> Result<String, AuthError> {
        let now = SystemTime::now();
        let claims = AgencyClaims {
            sub: agency.to_owned(),
            kind: AGENCY.to_owned(),
            aud: COLLEGE_AUDIENCE.to_owned(),
            proposal: proposal_id.to_owned(),
            award: award_minor,
            iat: unix_secs(now),
            exp: unix_secs(now + AGENCY_CREDENTIAL_TTL),
            jti: Uuid::new_v4(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.service.0,
        )?)
    }

    /// The researcher calling, from `authorization: Bearer …`.
    /// A token seen before is not verified again ([`verified`]) until it expires.
    pub fn researcher<T>(&self, request: &tonic::Request<T>) -> Result<Uuid, Status> {
        let token = bearer(request)?;
        if let Some(researcher) = self.verified.researcher(token) {
            return Ok(researcher);
        }
        let claims = self.decode(token, &self.token.1).ok_or_else(|| {
            Status::unauthenticated("the bearer token is invalid or has expired; log in again")
        })?;
        if claims.kind != RESEARCHER {
            return Err(Status::unauthenticated(
                "the bearer token is not a researcher token",
            ));
        }
        let researcher = claims
            .sub
            .parse()
            .map_err(|_| Status::unauthenticated("the bearer token names no researcher"))?;
        self.verified
            .remember(token, researcher, claims.exp.saturating_add(LEEWAY_SECS));
        Ok(researcher)
    }

    /// The agency calling and its credential's id, from a credential that
    /// [`Self::agency_credential`] signed for a College, still valid, and for
    /// this very call: `proposal_id` and `award_minor` as the request says.
    ///
    /// A researcher's token here is PERMISSION_DENIED (only agencies may
    /// make this call), as is a credential issued for another proposal or
    /// award; a missing, forged, expired or malformed one is UNAUTHENTICATED.
    /// Whether the credential was used before is for the caller to check,
    /// with [`AgencyCall::jti`], in its store.
    pub fn agency_call<T>(
        &self,
        request: &tonic::Request<T>,
        proposal_id: &str,
        award_minor: i64,
    ) -> Result<AgencyCall, Status> {
        use jsonwebtoken::errors::ErrorKind;
        let token = bearer(request)?;
        let claims = match jsonwebtoken::decode::<AgencyClaims>(
            token,
            &self.service.1,
            &self.agency_validation,
        ) {
            Ok(data) => data.claims,
            Err(err) => {
                if self.decode(token, &self.token.1).is_some() {
                    return Err(Status::permission_denied(
                        "only a funding agency may open research accounts",
                    ));
                }
                return Err(Status::unauthenticated(match err.kind() {
                    ErrorKind::ExpiredSignature => {
                        "the agency's credential has expired; the agency must sign a new one"
                    }
                    ErrorKind::InvalidAudience => {
                        "the agency's credential is not meant for a college"
                    }
                    _ => "the agency's credential is invalid",
                }));
            }
        };
        if claims.kind != AGENCY {
            return Err(Status::unauthenticated(
                "the agency's credential is not an agency credential",
            ));
        }
        if claims.proposal != proposal_id {
            return Err(Status::permission_denied(
                "the agency's credential was issued for another proposal",
            ));
        }
        if claims.award != award_minor {
            return Err(Status::permission_denied(
                "the agency's credential was issued for another award",
            ));
        }
        Ok(AgencyCall {
            agency: claims.sub,
            jti: claims.jti,
            expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp.saturating_add(LEEWAY_SECS)),
        })
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
    let claims = Claims {
        sub,
        kind: kind.to_owned(),
        iat: unix_secs(now),
        exp: unix_secs(expires),
    };
    Ok((
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)?,
        expires,
    ))
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

/// Argon2 hashes running at once: each holds 19 MiB (the crate's default
/// memory cost) and a thread for ~50 ms, so an unbounded number of
/// concurrent logins would take memory and threads without limit.
pub const MAX_CONCURRENT_HASHES: usize = 4;
/// Hashes that may wait for a slot; more are refused with
/// RESOURCE_EXHAUSTED at once rather than queued (a queue of guesses only
/// makes honest logins slower). 256 waiting at ~50 ms each over 4 slots is
/// at most ~3 s of queue.
pub const MAX_WAITING_HASHES: usize = 256;

/// Bounds the password hashing a process does at once, and runs it on
/// threads of its own, one per slot.
///
/// Not on tokio's blocking pool: a fixed set of threads, each of which
/// keeps its Argon2 working memory for the next hash (see [`argon`]), so
/// the memory password checks hold is the number of slots × 19 MiB however
/// many logins come (before: ~700–800 MiB held after a burst of 128).
pub struct HashLimiter {
    slots: tokio::sync::Semaphore,
    waiting: std::sync::atomic::AtomicUsize,
    max_waiting: usize,
    threads: usize,
    workers: std::sync::OnceLock<std::sync::mpsc::SyncSender<Job>>,
}

type Job = Box<dyn FnOnce() + Send>;

impl HashLimiter {
    pub const fn new(concurrent: usize, max_waiting: usize) -> Self {
        Self {
            slots: tokio::sync::Semaphore::const_new(concurrent),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            max_waiting,
            threads: concurrent,
            workers: std::sync::OnceLock::new(),
        }
    }

    /// The hashing threads' queue, started on first use: one thread per
    /// slot, so a job never waits there (the slots are taken first).
    fn workers(&self) -> &std::sync::mpsc::SyncSender<Job> {
        self.workers.get_or_init(|| {
            let threads = self.threads.max(1);
            let (sender, receiver) = std::sync::mpsc::sync_channel::<Job>(threads);
            let receiver = std::sync::Arc::new(std::sync::Mutex::new(receiver));
            for n in 0..threads {
                let receiver = std::sync::Arc::clone(&receiver);
                std::thread::Builder::new()
                    .name(format!("password-{n}"))
                    .spawn(move || {
                        loop {
                            let job = receiver.lock().map(|jobs| jobs.recv());
                            match job {
                                Ok(Ok(job)) => job(),
                                _ => return,
                            }
                        }
                    })
                    .expect("failed to start a password hashing thread");
            }
            sender
        })
    }

    /// Runs `work` on a hashing thread once a slot is free.
    ///
    /// A caller that gives up while waiting gives its place in the queue
    /// back (a guard, not a count after the wait); one that gives up while
    /// its hash runs leaves the slot taken until the hash ends, so no more
    /// hashes run than there are slots and threads, and handing a job to
    /// the threads never blocks a tokio worker.
    pub async fn run<T: Send + 'static>(
        &'static self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        let permit = {
            let _place = Waiting::take(self)?;
            self.slots.acquire().await
        };
        let permit = permit.map_err(|_| Status::unavailable("shutting down"))?;
        let (done, result) = tokio::sync::oneshot::channel();
        self.workers()
            .try_send(Box::new(move || {
                let _ = done.send(work());
                drop(permit);
            }))
            .map_err(|err| match err {
                std::sync::mpsc::TrySendError::Full(_) => Status::resource_exhausted(
                    "too many password checks are in progress; retry in a moment",
                ),
                std::sync::mpsc::TrySendError::Disconnected(_) => {
                    Status::internal("password hashing has stopped")
                }
            })?;
        result
            .await
            .map_err(|_| Status::internal("password hashing was interrupted"))
    }

    /// Callers waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A caller's place among those waiting for a hashing slot, given back
/// when dropped, whether the wait ended or the caller gave up.
struct Waiting(&'static HashLimiter);

impl Waiting {
    fn take(limiter: &'static HashLimiter) -> Result<Self, Status> {
        use std::sync::atomic::Ordering;
        let waiting = limiter.waiting.fetch_add(1, Ordering::SeqCst);
        let place = Self(limiter);
        if waiting >= limiter.max_waiting {
            return Err(Status::resource_exhausted(
                "too many password checks are in progress; retry in a moment",
            ));
        }
        Ok(place)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0
            .waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

static HASHING: HashLimiter = HashLimiter::new(MAX_CONCURRENT_HASHES, MAX_WAITING_HASHES);

/// Hashes a password with Argon2id, on the blocking pool, within the
/// process's hashing bound.
pub async fn hash_password(password: String) -> Result<String, Status> {
    HASHING
        .run(move || {
            argon::hash(password.as_bytes())
                .map_err(|err| Status::internal(format!("failed to hash the password: {err}")))
        })
        .await?
}

/// A hash of no one's password, checked when the email is unknown so that
/// an unknown email costs as much time as a wrong password (no enumeration
/// by timing).
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| argon::hash(b"no one's password").expect("hashing a constant succeeds"))
}

/// Checks a password against a stored Argon2 hash (`None` for an unknown
/// email: checked against a decoy, always false), on the blocking pool,
/// within the process's hashing bound.
pub async fn verify_password(password: String, hash: Option<String>) -> Result<bool, Status> {
    let known = hash.is_some();
    let ok = HASHING
        .run(move || {
            let hash = hash.unwrap_or_else(|| decoy_hash().to_owned());
            argon::verify(password.as_bytes(), &hash)
        })
        .await?;
    Ok(ok && known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn password_work_runs_on_as_many_threads_as_slots_however_many_ask() {
        let limiter: &'static HashLimiter = Box::leak(Box::new(HashLimiter::new(2, 64)));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..48 {
            tasks.spawn(limiter.run(|| {
                std::thread::sleep(std::time::Duration::from_millis(2));
                std::thread::current().id()
            }));
        }
        let distinct: std::collections::HashSet<_> = tasks
            .join_all()
            .await
            .into_iter()
            .map(|id| id.unwrap())
            .collect();
        assert_eq!(distinct.len(), 2, "{distinct:?}");
    }

    #[tokio::test]
    async fn an_unknown_email_is_checked_against_a_decoy_and_never_passes() {
        assert!(
            !verify_password("no one's password".into(), None)
                .await
                .unwrap()
        );
        let hash = hash_password("correct horse battery".into()).await.unwrap();
        assert!(
            verify_password("correct horse battery".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(!verify_password("wrong".into(), Some(hash)).await.unwrap());
    }

    #[tokio::test]
    async fn hashing_beyond_the_waiting_bound_is_refused_at_once() {
        let limiter: &'static HashLimiter = Box::leak(Box::new(HashLimiter::new(1, 2)));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let hold = std::sync::Arc::new(std::sync::Mutex::new(hold));
        let mut running = Vec::new();
        // One runs (and blocks until released), two wait: the bound is full.
        for _ in 0..3 {
            let hold = hold.clone();
            running.push(tokio::spawn(async move {
                limiter
                    .run(move || {
                        let _ = hold.lock().unwrap().recv();
                    })
                    .await
            }));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = limiter.run(|| ()).await.unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        for _ in 0..3 {
            release.send(()).unwrap();
        }
        for task in running {
            task.await.unwrap().expect("the queued ones ran");
        }
        limiter
            .run(|| ())
            .await
            .expect("room again once they finished");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_that_give_up_while_waiting_give_their_places_back() {
        let limiter: &'static HashLimiter = Box::leak(Box::new(HashLimiter::new(1, 2)));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let running = tokio::spawn(limiter.run(move || {
            let _ = hold.recv();
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Ten rounds of two waiters who give up: with the places kept, the
        // second round would already be refused.
        for _ in 0..10 {
            let waiters: Vec<_> = (0..2).map(|_| tokio::spawn(limiter.run(|| ()))).collect();
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(limiter.waiting(), 2, "both wait for the one slot");
            for waiter in waiters {
                waiter.abort();
                assert!(waiter.await.unwrap_err().is_cancelled());
            }
            assert_eq!(limiter.waiting(), 0, "their places were given back");
        }
        release.send(()).unwrap();
        running.await.unwrap().unwrap();
        limiter.run(|| ()).await.expect("the slot is free again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_gives_up_while_its_hash_runs_keeps_the_slot_until_it_ends() {
        let limiter: &'static HashLimiter = Box::leak(Box::new(HashLimiter::new(1, 8)));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn(limiter.run(move || {
            started.send(()).unwrap();
            let _ = hold.recv();
        }));
        tokio::task::spawn_blocking(move || running.recv().unwrap())
            .await
            .unwrap();
        first.abort();
        let _ = first.await;
        // The hash still runs on its thread: the next caller waits for it.
        let next = tokio::spawn(limiter.run(|| ()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!next.is_finished(), "no second hash beside the running one");
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("runs once the first hash ends")
            .unwrap()
            .unwrap();
    }

    fn keys() -> Keys {
        Keys::new(
            b"token-key-qbCbioWyiPpj3TBVjZqCYw",
            b"service-key-GcDal8TEEvjR1wcslGjP",
            Duration::from_secs(60),
        )
        .unwrap()
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
        let other = Keys::new(
            b"other-token-key-tOSUwxNfPtzb4V3Z",
            b"other-service-key-YhFmY2jbqGqNqT",
            Duration::from_secs(60),
        )
        .unwrap();
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
    fn a_token_verified_once_is_refused_when_it_expires_later() {
        let keys = keys();
        let researcher = Uuid::new_v4();
        let now = unix_secs(SystemTime::now());
        // Valid for about one more second, leeway included.
        let claims = Claims {
            sub: researcher.to_string(),
            kind: RESEARCHER.into(),
            iat: now,
            exp: now + 1 - LEEWAY_SECS,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.token.0).unwrap();
        assert_eq!(keys.researcher(&with_token(&token)).unwrap(), researcher);
        assert_eq!(
            keys.researcher(&with_token(&token)).unwrap(),
            researcher,
            "the second call is answered from the verified tokens"
        );
        while unix_secs(SystemTime::now()) <= now + 1 {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            keys.researcher(&with_token(&token)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn a_verified_token_altered_by_one_character_is_refused() {
        let keys = keys();
        let (token, _) = keys.researcher_token(Uuid::new_v4()).unwrap();
        keys.researcher(&with_token(&token)).unwrap();
        let (payload_end, _) = token.rsplit_once('.').unwrap();
        let signature = &token[payload_end.len() + 1..];
        let flipped = if signature.starts_with('A') { "B" } else { "A" };
        let altered = format!("{payload_end}.{flipped}{}", &signature[1..]);
        assert_eq!(
            keys.researcher(&with_token(&altered)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    /// An agency credential with these claims, signed with `keys`' service key.
    fn agency_claims_signed(keys: &Keys, edit: impl FnOnce(&mut AgencyClaims)) -> String {
        let now = unix_secs(SystemTime::now());
        let mut claims = AgencyClaims {
            sub: "nsf".into(),
            kind: AGENCY.into(),
            aud: COLLEGE_AUDIENCE.into(),
            proposal: "p-1".into(),
            award: 400_000,
            iat: now,
            exp: now + 60,
            jti: Uuid::new_v4(),
        };
        edit(&mut claims);
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.service.0).unwrap()
    }

    fn refusal(keys: &Keys, token: &str) -> Status {
        keys.agency_call(&with_token(token), "p-1", 400_000)
            .unwrap_err()
    }

    #[test]
    fn an_agency_credential_names_its_agency_and_a_fresh_id_for_its_call() {
        let keys = keys();
        let before = SystemTime::now();
        let first = keys.agency_credential("nsf", "p-1", 400_000).unwrap();
        let second = keys.agency_credential("nsf", "p-1", 400_000).unwrap();
        let call = keys
            .agency_call(&with_token(&first), "p-1", 400_000)
            .unwrap();
        assert_eq!(call.agency, "nsf");
        let lasts = call.expires_at.duration_since(before).unwrap();
        assert!(
            lasts > AGENCY_CREDENTIAL_TTL - Duration::from_secs(1)
                && lasts <= AGENCY_CREDENTIAL_TTL + Duration::from_secs(LEEWAY_SECS + 1),
            "{lasts:?}"
        );
        let again = keys
            .agency_call(&with_token(&second), "p-1", 400_000)
            .unwrap();
        assert_ne!(call.jti, again.jti, "every credential has its own id");
    }

    #[test]
    fn an_agency_credential_for_another_proposal_or_award_is_permission_denied() {
        let keys = keys();
        let token = keys.agency_credential("nsf", "p-1", 400_000).unwrap();
        let other_proposal = keys
            .agency_call(&with_token(&token), "p-2", 400_000)
            .unwrap_err();
        assert_eq!(other_proposal.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            other_proposal.message(),
            "the agency's credential was issued for another proposal"
        );
        let other_award = keys
            .agency_call(&with_token(&token), "p-1", 1_000_000_000_000_000)
            .unwrap_err();
        assert_eq!(other_award.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            other_award.message(),
            "the agency's credential was issued for another award"
        );
    }

    #[test]
    fn an_expired_agency_credential_is_unauthenticated() {
        let keys = keys();
        let now = unix_secs(SystemTime::now());
        // Past the leeway.
        let expired = agency_claims_signed(&keys, |c| c.exp = now - LEEWAY_SECS - 5);
        let status = refusal(&keys, &expired);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("expired"), "{status:?}");
        let fresh = agency_claims_signed(&keys, |_| {});
        assert!(
            keys.agency_call(&with_token(&fresh), "p-1", 400_000)
                .is_ok()
        );
    }

    #[test]
    fn an_agency_credential_for_another_audience_is_unauthenticated() {
        let keys = keys();
        let token = agency_claims_signed(&keys, |c| c.aud = "agency".into());
        let status = refusal(&keys, &token);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(
            status.message().contains("not meant for a college"),
            "{status:?}"
        );
    }

    #[test]
    fn a_service_signed_token_of_another_kind_is_unauthenticated() {
        let keys = keys();
        let token = agency_claims_signed(&keys, |c| c.kind = RESEARCHER.into());
        assert_eq!(refusal(&keys, &token).code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_forged_or_unbound_agency_credential_is_unauthenticated() {
        let keys = keys();
        let other = Keys::new(
            b"other-token-key-tOSUwxNfPtzb4V3Z",
            b"other-service-key-YhFmY2jbqGqNqT",
            Duration::from_secs(60),
        )
        .unwrap();
        let forged = other.agency_credential("nsf", "p-1", 400_000).unwrap();
        assert_eq!(refusal(&keys, &forged).code(), tonic::Code::Unauthenticated);
        // The old unbound service credential: names only the agency.
        let unbound = sign(
            &keys.service.0,
            "nsf".into(),
            AGENCY,
            Duration::from_secs(60),
        )
        .unwrap()
        .0;
        assert_eq!(
            refusal(&keys, &unbound).code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            keys.agency_call(&tonic::Request::new(()), "p-1", 400_000)
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn a_researcher_token_cannot_act_as_an_agency() {
        let keys = keys();
        let (token, _) = keys.researcher_token(Uuid::new_v4()).unwrap();
        let status = refusal(&keys, &token);
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            status.message(),
            "only a funding agency may open research accounts"
        );
        let agency = keys.agency_credential("nsf", "p-1", 400_000).unwrap();
        assert_eq!(
            keys.researcher(&with_token(&agency)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn placeholder_sequential_and_repeated_keys_are_refused_and_random_ones_taken() {
        for made_up in [
            "change-me-token-key-at-least-32-bytes-long",
            "change-me-service-key-at-least-32-bytes-long",
            "CHANGEME_token_key_for_production_only_x",
            "0123456789abcdef0123456789abcdef",
            "abcdefghijklmnopqrstuvwxyz012345",
            "secretsecretsecretsecretsecretse",
        ] {
            assert!(looks_made_up(made_up.as_bytes()), "{made_up}");
        }
        for random in [
            // `openssl rand -hex 32`, as .env.example says.
            "9f3b1c6e0d8a4f7b2e5c9a1d3f6b8e0c4a7d2f9b1e6c3a8d5f0b2e7c9a4d1f6b",
            // `head -c 32 /dev/urandom | base64`.
            "q3Vx9Lk2mW8rT1pZ6yB4nH7cJ0eG5aUfDsQiOtEv+Rw=",
        ] {
            assert!(!looks_made_up(random.as_bytes()), "{random}");
        }
    }

    #[test]
    fn short_or_equal_keys_are_refused() {
        assert!(Keys::new(&[1; 31], &[2; 32], Duration::from_secs(1)).is_err());
        assert!(Keys::new(&[1; 32], &[1; 32], Duration::from_secs(1)).is_err());
        let weak = Keys::new(
            &[b'a'; 32],
            b"service-key-GcDal8TEEvjR1wcslGjP",
            Duration::from_secs(1),
        );
        assert!(matches!(weak, Err(AuthError::WeakKey("token key"))));
    }

    #[tokio::test]
    async fn a_password_verifies_against_its_hash_only() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(
            verify_password("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !verify_password("wrong horse".into(), Some(hash))
                .await
                .unwrap()
        );
    }
}
