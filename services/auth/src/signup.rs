//! Proving a researcher owns the email they sign up with.
//!
//! Sign-up keeps the request *pending* and mails a code of [`CODE_DIGITS`]
//! random digits to the address; the researcher exists only once the code
//! comes back (`VerifyEmail`). A code lasts [`CODE_TTL`] and takes
//! [`CODE_ATTEMPTS`] wrong tries; a new sign-up for the same email mails a
//! new code, at most one per [`RESEND_AFTER`] (sooner, nothing changes and
//! nothing is sent). So a stranger who signs up with someone else's email
//! can neither become them (the code goes to their mailbox) nor flood it.
//!
//! Only a digest of each code is stored ([`code_digest`]), bound to its
//! email. [`code_mail`] writes the message; [`code_in`] finds the code in
//! one again (for the dev mail catcher and tests).

use std::time::Duration;

use rand::Rng;
use sha2::{Digest, Sha256};

/// Digits in a code: 10⁸ values against 5 tries per code and one code a
/// minute per email.
pub const CODE_DIGITS: usize = 8;
/// How long a mailed code can be used.
pub const CODE_TTL: Duration = Duration::from_secs(60 * 60);
/// Wrong codes a pending sign-up takes before it is dead.
pub const CODE_ATTEMPTS: u32 = 5;
/// The least time between two codes mailed to one address.
pub const RESEND_AFTER: Duration = Duration::from_secs(60);

/// The words [`code_mail`] puts in front of the code.
const CODE_LABEL: &str = "Your verification code:";

/// A fresh code, uniformly random.
pub fn new_code() -> String {
    let mut rng = rand::rng();
    (0..CODE_DIGITS)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

/// The code as typed, without the spaces and dashes people add; `None`
/// unless it is then [`CODE_DIGITS`] digits.
pub fn normalize_code(typed: &str) -> Option<String> {
    let code: String = typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    (code.len() == CODE_DIGITS && code.bytes().all(|b| b.is_ascii_digit())).then_some(code)
}

/// What the store keeps of `code`: bound to `email` (lower-cased already),
/// so a digest is worth nothing for another address.
pub fn code_digest(email: &str, code: &str) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(b"grantmesh sign-up code\0");
    hasher.update(email.as_bytes());
    hasher.update(b"\0");
    hasher.update(code.as_bytes());
    hasher.finalize().to_vec()
}

/// The message that carries a code: (subject, plain-text body).
pub fn code_mail(name: &str, code: &str) -> (String, String) {
    let minutes = CODE_TTL.as_secs() / 60;
    (
        "Your grantmesh verification code".to_owned(),
        format!(
            "Hello {name},\n\n\
             {CODE_LABEL} {code}\n\n\
             Enter it to finish signing up (grantmesh verify-email, or the portal's\n\
             verification page). It works for {minutes} minutes.\n\n\
             If you did not sign up for grantmesh, ignore this message: nothing is\n\
             made with your address until the code is entered.\n"
        ),
    )
}

/// The message sent instead when the email already belongs to a
/// researcher: (subject, body). It carries no code.
pub fn registered_mail() -> (String, String) {
    (
        "Someone asked to sign up for grantmesh with your email".to_owned(),
        "Hello,\n\n\
         Someone asked to sign up for grantmesh with this address, which already\n\
         has an account. Nothing was changed. If it was you, log in instead.\n\
         If it was not, you can ignore this message.\n"
            .to_owned(),
    )
}

/// The code in a message [`code_mail`] wrote, if it is one.
pub fn code_in(body: &str) -> Option<String> {
    body.lines()
        .find_map(|line| line.trim().strip_prefix(CODE_LABEL))
        .and_then(normalize_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_eight_random_digits() {
        let codes: Vec<String> = (0..64).map(|_| new_code()).collect();
        assert!(
            codes
                .iter()
                .all(|c| normalize_code(c).as_deref() == Some(c.as_str()))
        );
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert!(distinct.len() > 60, "64 codes are (almost) all different");
    }

    #[test]
    fn a_code_as_people_type_it_is_accepted_and_anything_else_is_not() {
        assert_eq!(normalize_code(" 1234-5678 ").as_deref(), Some("12345678"));
        assert_eq!(normalize_code("1234 5678").as_deref(), Some("12345678"));
        for wrong in ["", "1234567", "123456789", "1234567a", "１２３４５６７８"] {
            assert_eq!(normalize_code(wrong), None, "{wrong:?}");
        }
    }

    #[test]
    fn a_digest_is_bound_to_its_email() {
        let code = "12345678";
        assert_eq!(code_digest("a@b.edu", code), code_digest("a@b.edu", code));
        assert_ne!(code_digest("a@b.edu", code), code_digest("c@b.edu", code));
        assert_ne!(
            code_digest("a@b.edu", code),
            code_digest("a@b.edu", "12345679")
        );
    }

    #[test]
    fn the_code_is_found_again_in_its_mail_and_in_no_other() {
        let (_, body) = code_mail("Ada", "87654321");
        assert_eq!(code_in(&body).as_deref(), Some("87654321"));
        assert_eq!(code_in(&registered_mail().1), None);
    }
}
