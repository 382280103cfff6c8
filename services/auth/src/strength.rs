//! How strong a new password must be: long enough, and hard enough to guess
//! by zxcvbn's estimate (Dropbox's estimator, which knows common passwords,
//! words, names, keyboard walks, dates and l33t substitutions, and is told
//! the researcher's own name and email so that "ada@uni.edu2024" counts as
//! weak for Ada).
//!
//! Only sign-up checks strength; a login compares with the stored hash and
//! never says anything about the password beyond right or wrong. A refusal
//! names what is wrong in zxcvbn's words and never echoes the password.

use tonic::Status;

/// Fewest characters a new password may have. Length is most of a
/// password's strength; zxcvbn then rules out long but guessable ones
/// ("password1234").
pub const MIN_PASSWORD_CHARS: usize = 10;

/// Most characters a password may have: far beyond any passphrase, and a
/// bound on what Argon2 is handed. zxcvbn itself looks at the first 100.
pub const MAX_PASSWORD_CHARS: usize = 256;

/// The lowest zxcvbn score (0–4) accepted: 3 is "safely unguessable:
/// moderate protection from offline slow-hash scenarios" (under 10^10
/// guesses is 2 or less), which zxcvbn's own documentation names as the
/// bar. Online guessing is held back by the login limits; this bar is for a
/// stolen table of Argon2 hashes.
pub const MIN_PASSWORD_SCORE: zxcvbn::Score = zxcvbn::Score::Three;

/// Checks a new password: [`MIN_PASSWORD_CHARS`] to [`MAX_PASSWORD_CHARS`]
/// long, and scored at least [`MIN_PASSWORD_SCORE`] by zxcvbn, knowing the
/// researcher's own `user_inputs` (name, email). INVALID_ARGUMENT naming
/// why, in zxcvbn's words, otherwise.
pub fn check_new_password(field: &str, password: &str, user_inputs: &[&str]) -> Result<(), Status> {
    let chars = password.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
        return Err(Status::invalid_argument(format!(
            "{field} must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters long"
        )));
    }
    // Each word of them too: "ada" and "lovelace" in "Ada Lovelace" and
    // "ada.lovelace@uni.edu", so "adalovelace1" counts as guessable.
    let mut inputs: Vec<&str> = user_inputs.to_vec();
    inputs.extend(
        user_inputs
            .iter()
            .flat_map(|input| input.split(|c: char| !c.is_alphanumeric()))
            .filter(|word| word.chars().count() >= 3),
    );
    let estimate = zxcvbn::zxcvbn(password, &inputs);
    if estimate.score() >= MIN_PASSWORD_SCORE {
        return Ok(());
    }
    let mut why = Vec::new();
    if let Some(feedback) = estimate.feedback() {
        if let Some(warning) = feedback.warning() {
            why.push(warning.to_string());
        }
        why.extend(feedback.suggestions().iter().map(ToString::to_string));
    }
    if why.is_empty() {
        why.push("Add another word or two. Uncommon words are better.".to_owned());
    }
    Err(Status::invalid_argument(format!(
        "{field} is too easy to guess (strength {} of 4, at least {} needed): {}",
        estimate.score() as u8,
        MIN_PASSWORD_SCORE as u8,
        why.join(" ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(password: &str, inputs: &[&str]) -> String {
        check_new_password("password", password, inputs)
            .expect_err(password)
            .message()
            .to_owned()
    }

    #[test]
    fn common_or_short_passwords_are_refused_with_the_reason_and_without_the_password() {
        for weak in ["password123", "qwertyuiop", "1234567890", "iloveyou2024"] {
            let message = refusal(weak, &[]);
            assert!(message.contains("too easy to guess"), "{weak}: {message}");
            assert!(!message.contains(weak), "{message} echoes the password");
        }
        assert!(refusal("Tr0ub4!", &[]).contains("10 to 256 characters"));
        assert!(refusal(&"x".repeat(257), &[]).contains("10 to 256 characters"));
    }

    #[test]
    fn a_password_made_of_the_researchers_own_name_and_email_is_refused() {
        let inputs = ["Adalinda Lovelace", "adalinda@uni.edu"];
        assert!(check_new_password("password", "zebra quantum marmalade", &inputs).is_ok());
        for weak in ["adalinda2024", "lovelaceadalinda"] {
            let message = refusal(weak, &inputs);
            assert!(message.contains("too easy to guess"), "{weak}: {message}");
        }
    }

    #[test]
    fn passphrases_are_accepted() {
        for strong in [
            "correct horse battery staple",
            "zebra quantum marmalade",
            "8f2c1e9a7b3d4c6e",
        ] {
            check_new_password("password", strong, &[]).expect(strong);
        }
    }
}
