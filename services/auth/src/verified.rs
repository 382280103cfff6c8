//! Researcher tokens this process has already verified.
//!
//! Checking an HS256 token (base64, JSON, the HMAC and the claims) is most of
//! the CPU a College spends on a call that it answers from memory, and a
//! client sends the same token with every call until it expires. So the
//! researcher a token names is remembered, with the token's expiry, once its
//! signature and claims have been checked; a later call carrying the very
//! same string is answered from here, its expiry checked again against the
//! clock. Only verified tokens are remembered (a forged or expired one is
//! verified, and refused, every time), so nobody without the key can fill
//! the cache, and it is bounded ([`CAPACITY`]) all the same.

use std::time::SystemTime;

use quick_cache::sync::Cache;
use uuid::Uuid;

/// Tokens remembered at most; the least used go first.
pub(crate) const CAPACITY: usize = 16_384;

/// Verified researcher tokens: token → (researcher, `exp` plus leeway).
pub(crate) struct Verified {
    tokens: Cache<Box<str>, (Uuid, u64)>,
}

impl Verified {
    pub(crate) fn new() -> Self {
        Self {
            tokens: Cache::new(CAPACITY),
        }
    }

    /// The researcher `token` names, if it was verified here and has not
    /// expired since.
    pub(crate) fn researcher(&self, token: &str) -> Option<Uuid> {
        let (researcher, valid_until) = self.tokens.get(token)?;
        if crate::unix_secs(SystemTime::now()) > valid_until {
            self.tokens.remove(token);
            return None;
        }
        Some(researcher)
    }

    /// Remembers that `token`, verified, names `researcher` until `valid_until`
    /// (seconds since the epoch, leeway included).
    pub(crate) fn remember(&self, token: &str, researcher: Uuid, valid_until: u64) {
        self.tokens.insert(token.into(), (researcher, valid_until));
    }
}
