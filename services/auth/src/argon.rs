//! Argon2id hashing whose working memory is kept by the hashing thread and
//! reused by its next hash.
//!
//! Each hash needs 19 MiB (the crate's default memory cost). Allocated
//! afresh per hash, as `argon2`'s `PasswordHasher` does, glibc's adaptive
//! mmap threshold soon serves those blocks from the heap, where they stay:
//! 128 concurrent wrong-password logins through four hashing threads left
//! a process at ~800 MiB for good. Here each of the process's hashing
//! threads ([`crate::HashLimiter`]) holds one buffer for its life, so the
//! memory password checks take is the number of threads × 19 MiB, however
//! many logins come. The strings are the standard PHC format, the same
//! `PasswordHasher` writes and reads.

use std::cell::RefCell;

use argon2::password_hash::{
    self, Output, ParamsString, PasswordHash, SaltString, rand_core::OsRng,
};
use argon2::{Algorithm, Argon2, Block, Params, Version};

thread_local! {
    /// This thread's Argon2 working memory.
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Runs `hash` over `count` blocks of this thread's working memory.
fn with_blocks<T>(count: usize, hash: impl FnOnce(&mut [Block]) -> T) -> T {
    BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        if blocks.len() < count {
            blocks.resize(count, Block::default());
        }
        hash(&mut blocks[..count])
    })
}

/// `password` hashed with Argon2id, the default parameters and a fresh
/// salt, as a PHC string.
pub(crate) fn hash(password: &[u8]) -> password_hash::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let params = Params::default();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_bytes)?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    with_blocks(params.block_count(), |blocks| {
        argon.hash_password_into_with_memory(password, salt_bytes, &mut out, blocks)
    })?;
    Ok(PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out)?),
    }
    .to_string())
}

/// Whether `password` matches the PHC string `stored` (compared in
/// constant time); a string that cannot be read matches nothing.
pub(crate) fn verify(password: &[u8], stored: &str) -> bool {
    let check = || -> password_hash::Result<bool> {
        let parsed = PasswordHash::new(stored)?;
        let params = Params::try_from(&parsed)?;
        let algorithm = Algorithm::try_from(parsed.algorithm)?;
        let version = parsed
            .version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return Ok(false);
        };
        let mut salt_bytes = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
        let mut out = vec![0u8; expected.len()];
        let argon = Argon2::new(algorithm, version, params.clone());
        with_blocks(params.block_count(), |blocks| {
            argon.hash_password_into_with_memory(password, salt_bytes, &mut out, blocks)
        })?;
        // `Output`'s equality is constant-time.
        Ok(Output::new(&out)? == expected)
    };
    check().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    use super::*;

    #[test]
    fn hashes_read_and_written_here_and_by_the_argon2_crate_are_the_same_format() {
        let ours = hash(b"correct horse battery").unwrap();
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse battery", &parsed)
                .is_ok()
        );
        let theirs = Argon2::default()
            .hash_password(b"correct horse battery", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(verify(b"correct horse battery", &theirs));
        assert!(!verify(b"correct horse battery!", &theirs));
        assert!(!verify(b"correct horse battery", "not a hash"));
    }
}
