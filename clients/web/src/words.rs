//! gRPC errors in words a researcher understands.
//!
//! The services already say what went wrong in their status messages (a
//! refused withdrawal names the balance, a taken email says so); what a
//! person also needs is the kind of problem and what to do about it. This
//! is the one place a `tonic::Status` becomes a sentence and an HTTP status.

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

/// The status's message with a capital letter and a full stop.
fn said(status: &Status) -> String {
    let message = status.message().trim();
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
    let detail = said(status);
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
            "insufficient funds: balance is 100, asked for 500",
        ));
        assert_eq!(p.http, StatusCode::CONFLICT);
        assert_eq!(
            p.sentence,
            "That cannot be done right now. Insufficient funds: balance is 100, asked for 500."
        );
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
