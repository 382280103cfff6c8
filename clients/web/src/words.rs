//! gRPC errors in words a researcher understands.
//!
//! The services already say what went wrong in their status messages (a
//! refused withdrawal names the balance, a taken email says so); what a
//! person also needs is the kind of problem and what to do about it. This
//! is the one place a `tonic::Status` becomes a sentence and an HTTP status.
//!
//! The services name the fields of their messages (`amount_minor must be
//! more than zero`) and count money in minor units; a researcher typed
//! "the amount" in units with two decimals. [`in_words`] says a service's
//! message in the form's words before it reaches a page.

use axum::http::StatusCode;
use tonic::{Code, Status};

/// What a page shows for a failed call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The HTTP status the page is sent with.
    pub http: StatusCode,
    /// One or two sentences for the researcher.
    pub sentence: String,
    /// Whether the researcher must log in again (the token was refused).
    pub log_in_again: bool,
}

impl Problem {
    pub fn new(http: StatusCode, sentence: impl Into<String>) -> Self {
        Self {
            http,
            sentence: sentence.into(),
            log_in_again: false,
        }
    }
}

/// Field names the services use in their messages, and what the portal's
/// forms call them. Amount fields end in `_minor`: their numbers are minor
/// units, said as amounts.
const FIELDS: [(&str, &str); 14] = [
    ("requested_amount_minor", "the amount requested"),
    ("amount_minor", "the amount"),
    ("award_minor", "the award"),
    ("balance_minor", "the balance"),
    ("duration_days", "the duration in days"),
    ("idempotency_key", "the form's key"),
    ("account_id", "the account"),
    ("researcher_id", "the researcher"),
    ("invitation_id", "the invitation"),
    ("proposal_id", "the proposal"),
    ("page_size", "the page size"),
    ("memo", "what it is for"),
    ("description", "the description"),
    ("title", "the title"),
];

/// Words that make a message one about money, so its whole numbers are
/// minor units (`insufficient funds: account … holds 397450`).
const MONEY_WORDS: [&str; 6] = [
    "_minor",
    "amount",
    "band of",
    "funds",
    "holds",
    "withdrawal of",
];

/// `message` in the words of the portal's forms: field names replaced by
/// what the forms call them, `account <uuid>` said as "the account" (the
/// page already shows which), and, when the message is about money
/// ([`MONEY_WORDS`]), whole numbers said as amounts (`9000000` →
/// `90,000.00`). Numbers already written as amounts (`90,000.00`) stay.
pub fn in_words(message: &str) -> String {
    let lower = message.to_lowercase();
    let about_money = MONEY_WORDS.iter().any(|w| lower.contains(w));
    let mut out = String::with_capacity(message.len() + 16);
    let mut rest = message;
    while let Some(c) = rest.chars().next() {
        if !(c.is_ascii_alphanumeric() || c == '_') {
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        // A word, a number or an id: letters, digits and underscores, and a
        // `,` `.` or `-` between two of them (`90,000.00`, a UUID).
        let end = rest
            .char_indices()
            .find(|&(i, c)| {
                let joins = matches!(c, ',' | '.' | '-')
                    && rest[..i].ends_with(|p: char| p.is_ascii_alphanumeric())
                    && rest[i + 1..].starts_with(|n: char| n.is_ascii_alphanumeric());
                !(c.is_ascii_alphanumeric() || c == '_' || joins)
            })
            .map_or(rest.len(), |(i, _)| i);
        let token = &rest[..end];
        rest = &rest[end..];
        if let Some((_, words)) = FIELDS.iter().find(|(field, _)| *field == token) {
            // "the title" for `title`, but not "the the title".
            let words = match words.strip_prefix("the ") {
                Some(bare) if out.to_lowercase().ends_with("the ") => bare,
                _ => words,
            };
            out.push_str(words);
        } else if uuid::Uuid::parse_str(token).is_ok() && out.ends_with("account ") {
            out.pop();
            if !out.ends_with("the account") {
                out.insert_str(out.len() - "account".len(), "the ");
            }
        } else if about_money
            && token.chars().all(|c| c.is_ascii_digit())
            && let Ok(minor) = token.parse::<i64>()
        {
            out.push_str(&crate::money::format(minor));
        } else {
            out.push_str(token);
        }
    }
    out
}

/// `text` with a capital letter and a full stop.
pub fn sentence(text: &str) -> String {
    let message = text.trim();
    let mut chars = message.chars();
    let Some(first) = chars.next() else {
        return String::new();
    };
    let mut out: String = first.to_uppercase().chain(chars).collect();
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

/// `status` as a [`Problem`].
pub fn explain(status: &Status) -> Problem {
    let detail = sentence(&in_words(status.message()));
    let (http, sentence) = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => (
            StatusCode::BAD_REQUEST,
            format!("Please check what you entered: {detail}"),
        ),
        Code::FailedPrecondition => (
            StatusCode::CONFLICT,
            format!("That cannot be done right now. {detail}"),
        ),
        Code::NotFound => (
            StatusCode::NOT_FOUND,
            format!("We could not find that. {detail}"),
        ),
        Code::AlreadyExists => (StatusCode::CONFLICT, detail),
        Code::PermissionDenied => (
            StatusCode::FORBIDDEN,
            format!("You are not allowed to do that. {detail}"),
        ),
        Code::Unauthenticated => {
            return Problem {
                http: StatusCode::UNAUTHORIZED,
                sentence: "Your session has ended or was not accepted. Please log in again."
                    .to_owned(),
                log_in_again: true,
            };
        }
        Code::ResourceExhausted => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("The service is busy. Please try again in a moment. {detail}"),
        ),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The grant service cannot be reached right now. Please try again in a moment; nothing was changed unless the page says so."
                .to_owned(),
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            format!("Something went wrong on our side. {detail}"),
        ),
    };
    Problem::new(http, sentence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_withdrawal_keeps_the_services_reason_in_a_sentence() {
        let p = explain(&Status::failed_precondition(
            "insufficient funds: account 6f1c2a4e-1234-4c3b-9a7d-0e5f6a7b8c9d holds 397450, the withdrawal asks for 1000000",
        ));
        assert_eq!(p.http, StatusCode::CONFLICT);
        assert_eq!(
            p.sentence,
            "That cannot be done right now. Insufficient funds: the account holds 3,974.50, the withdrawal asks for 10,000.00."
        );
        let p = explain(&Status::failed_precondition(
            "account 6f1c2a4e-1234-4c3b-9a7d-0e5f6a7b8c9d has expired; no more withdrawals can be made",
        ));
        assert_eq!(
            p.sentence,
            "That cannot be done right now. The account has expired; no more withdrawals can be made."
        );
    }

    #[test]
    fn a_refused_amount_is_said_without_field_names_or_minor_units() {
        let p = explain(&Status::invalid_argument(
            "amount_minor must be more than zero (got 0)",
        ));
        assert_eq!(
            p.sentence,
            "Please check what you entered: The amount must be more than zero (got 0.00)."
        );
        let p = explain(&Status::invalid_argument(
            "requested_amount_minor 123456 is more than the largest amount accepted, 100000000000",
        ));
        assert_eq!(
            p.sentence,
            "Please check what you entered: The amount requested 1,234.56 is more than the largest amount accepted, 1,000,000,000.00."
        );
        let p = explain(&Status::invalid_argument("duration_days must be 1 to 3650"));
        assert_eq!(
            p.sentence,
            "Please check what you entered: The duration in days must be 1 to 3650."
        );
    }

    #[test]
    fn an_agencys_reason_names_amounts_as_the_researcher_typed_them() {
        assert_eq!(
            sentence(&in_words(
                "the requested amount 9000000 is outside erc's band of 100000 to 250000"
            )),
            "The requested amount 90,000.00 is outside erc's band of 1,000.00 to 2,500.00."
        );
        // Already in units: left as it is.
        let typed = "the requested amount 90,000.00 is outside erc's band of 1,000.00 to 2,500.00";
        assert_eq!(in_words(typed), typed);
        // Not about money: numbers are numbers, and ordinary words stay.
        assert_eq!(
            in_words("page_size must be at most 100"),
            "the page size must be at most 100"
        );
        assert_eq!(in_words("titles and memos"), "titles and memos");
        assert_eq!(in_words("the title is required"), "the title is required");
    }

    #[test]
    fn a_refused_token_asks_to_log_in_again_without_the_technical_message() {
        let p = explain(&Status::unauthenticated("token signature invalid"));
        assert!(p.log_in_again);
        assert!(!p.sentence.contains("signature"));
    }

    #[test]
    fn an_unreachable_mesh_is_said_plainly() {
        let p = explain(&Status::unavailable(
            "no live instance of service \"college\"",
        ));
        assert_eq!(p.http, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            p.sentence
                .starts_with("The grant service cannot be reached")
        );
    }
}
