//! Refresh tokens: what keeps a login session alive past its short-lived
//! access tokens, and what logging out ends.
//!
//! A refresh token is 256 random bits (URL-safe base64), handed to the
//! client once; the store keeps only its SHA-256 digest, so a copy of the
//! store opens no session. It is replaced at every use (rotation): a token
//! used a second time was copied, and its session is ended then.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// How long a session lasts from its login, however often it is refreshed:
/// a working week, after which the password is asked for again.
pub const SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Longest refresh token accepted on the wire (43 characters are made).
const MAX_REFRESH_TOKEN: usize = 128;

/// A fresh refresh token and the digest the store keeps of it.
pub fn new_refresh_token() -> (String, [u8; 32]) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let digest = digest(&token);
    (token, digest)
}

/// The digest of `token` as the store keeps it; `None` for something that
/// cannot be a refresh token (empty or overlong).
pub fn refresh_digest(token: &str) -> Option<[u8; 32]> {
    let token = token.trim();
    (!token.is_empty() && token.len() <= MAX_REFRESH_TOKEN).then(|| digest(token))
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_token_is_random_and_its_digest_is_what_the_store_matches() {
        let (a, digest_a) = new_refresh_token();
        let (b, _) = new_refresh_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(refresh_digest(&a), Some(digest_a));
        assert_ne!(refresh_digest(&b), Some(digest_a));
        assert_eq!(refresh_digest(""), None);
        assert_eq!(refresh_digest(&"x".repeat(200)), None);
    }
}
