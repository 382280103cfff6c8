//! Who is calling: researcher passwords, signed bearer tokens, and the
//! credential an agency signs for each account it has opened.
//!
//! Researcher tokens are EdDSA (Ed25519) JWTs ([`tokens`]): only colleges
//! hold the signing key; agencies and the portal verify with its public
//! half, so nothing but a college can mint a token.
//!
//! An agency authenticates to a college by its mesh certificate
//! (`spiffe://grantmesh/agency/<name>`), and signs each `OpenAccount` with
//! that certificate's own key ([`agency`]): the credential binds the
//! proposal, award, principal investigator and duration, lives
//! [`AGENCY_CREDENTIAL_TTL`], and carries a fresh `jti` that the college
//! records, so it opens one account once. No key is shared between roles.
//!
//! Passwords are hashed with Argon2id (the `argon2` crate's defaults); hashing
//! is deliberately slow, so callers run it on the blocking pool
//! ([`hash_password`], [`verify_password`]). New passwords must pass
//! [`strength`]; guessing is slowed by [`attempts`]. A researcher proves
//! they own their email with a mailed code ([`signup`]).

pub mod agency;
mod argon;
pub mod attempts;
pub mod sessions;
pub mod signup;
pub mod strength;
pub mod tokens;
mod verified;

pub use agency::{AGENCY_CREDENTIAL_TTL, AccountTerms, AgencyCall, AgencySigner};
pub use attempts::Attempts;
pub use strength::check_new_password;
pub use tokens::{AuthError, Bearer, Keys, TokenKeyPair};

use std::time::{SystemTime, UNIX_EPOCH};

use tonic::Status;

/// Clock skew tolerated when checking a token's times, in seconds.
const LEEWAY_SECS: u64 = 5;

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

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
pub fn looks_made_up(key: &[u8]) -> bool {
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
    use std::time::Duration;

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
