//! Researcher tokens this process has already verified.
//!
//! Checking a token (base64, JSON, the Ed25519 signature and the claims) is most of
//! the CPU a College spends on a call that it answers from memory, and a
//! client sends the same token with every call until it expires. So the
//! researcher and session a token names are remembered, with the token's expiry, once its
//! signature and claims have been checked; a later call carrying the very
//! same string is answered from here, its expiry checked again against the
//! clock. Only verified tokens are remembered (a forged or expired one is
//! verified, and refused, every time), so nobody without the key can fill
//! the cache, and it is bounded ([`CAPACITY`]) all the same.

use std::time::SystemTime;

use quick_cache::sync::Cache;

use crate::tokens::Bearer;

/// Tokens remembered at most; the least used go first.
pub(crate) const CAPACITY: usize = 16_384;

/// Verified researcher tokens: token → (researcher and session, `exp` plus leeway).
pub(crate) struct Verified {
    tokens: Cache<Box<str>, (Bearer, u64)>,
}

impl Verified {
    pub(crate) fn new() -> Self {
        Self {
            tokens: Cache::new(CAPACITY),
        }
    }

    /// The researcher and session `token` names, if it was verified here
    /// and has not expired since.
    pub(crate) fn bearer(&self, token: &str) -> Option<Bearer> {
        let (bearer, valid_until) = self.tokens.get(token)?;
        if crate::unix_secs(SystemTime::now()) > valid_until {
            self.tokens.remove(token);
            return None;
        }
        Some(bearer)
    }

    /// Remembers that `token`, verified, names `bearer` until `valid_until`
    /// (seconds since the epoch, leeway included).
    pub(crate) fn remember(&self, token: &str, bearer: Bearer, valid_until: u64) {
        self.tokens.insert(token.into(), (bearer, valid_until));
    }
}
