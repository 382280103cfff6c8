//! How a command ends: every failure becomes one line on stderr that names
//! the gRPC status the way the README does (`FAILED_PRECONDITION: insufficient
//! funds: …`) and an exit code that says which class of failure it was, so
//! scripts can tell "try again later" from "this will never work".
//!
//! This is the one place where errors are turned into messages and codes.

use std::process::ExitCode;

use tonic::{Code, Status};

/// The command did what was asked.
pub const OK: u8 = 0;
/// Anything not covered below (a bug, a local I/O failure, an INTERNAL error).
pub const OTHER: u8 = 1;
/// The command line was wrong; clap uses this code for its own errors too.
pub const USAGE: u8 = 2;
/// What was named does not exist (NOT_FOUND).
pub const NOT_FOUND: u8 = 3;
/// The mesh understood and said no: PERMISSION_DENIED, FAILED_PRECONDITION,
/// INVALID_ARGUMENT, ALREADY_EXISTS, OUT_OF_RANGE, RESOURCE_EXHAUSTED, or an
/// agency that rejected a proposal. Retrying the same thing will not help.
pub const REFUSED: u8 = 4;
/// Nobody could answer: UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, no registry
/// reachable, a server that is not SERVING. Retrying later may help.
pub const UNAVAILABLE: u8 = 5;
/// Not logged in, the session expired, or the token was refused (UNAUTHENTICATED).
pub const AUTH: u8 = 6;
/// `grantmesh simulate` (and `dev --simulate`): the audit of the store found
/// a broken invariant. Defined here so that every code lives in one list.
pub const INVARIANT_BREACHED: u8 = 7;

/// The exit codes as `grantmesh --help` lists them; keep in step with `docs/cli.md`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  any other failure (INTERNAL, UNKNOWN, local I/O)
  2  usage error (bad flags or arguments)
  3  not found (NOT_FOUND)
  4  refused (PERMISSION_DENIED, FAILED_PRECONDITION, INVALID_ARGUMENT, ALREADY_EXISTS,
     OUT_OF_RANGE, RESOURCE_EXHAUSTED, or a rejected proposal)
  5  unavailable (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, no registry answered, not SERVING;
     simulate: projects failed to run to their end)
  6  authentication (not logged in, session expired, UNAUTHENTICATED)
  7  simulate: the audit of the store found a broken invariant

The login session is kept in $GRANTMESH_CONFIG_DIR/session.json
(default: the user's config dir, e.g. ~/.config/grantmesh/session.json).";

/// Failures the CLI itself decides on, before or after talking to the mesh.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("not logged in; run grantmesh login")]
    NotLoggedIn,
    #[error("your session expired; run grantmesh login")]
    SessionExpired,
    /// The token names nobody the mesh knows (its store was reset) or is
    /// refused: the session file outlived what it stood for.
    #[error("your session is no longer valid ({0}); run grantmesh login")]
    StaleSession(String),
    #[error("the agency rejected the proposal: {reason}")]
    Rejected { reason: String },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Unavailable(String),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            Self::NotLoggedIn | Self::SessionExpired | Self::StaleSession(_) => AUTH,
            Self::Rejected { .. } => REFUSED,
            Self::Usage(_) => USAGE,
            Self::Unavailable(_) => UNAVAILABLE,
        }
    }
}

/// Prints `err` as one `error: …` line and returns its exit code.
pub fn report(err: &anyhow::Error) -> ExitCode {
    let (message, code) = describe(err);
    eprintln!("error: {message}");
    ExitCode::from(code)
}

/// The message and exit code for an error: the first `CliError`, gRPC
/// `Status` or transport error in its chain decides; anything else is
/// printed with its whole context chain.
pub fn describe(err: &anyhow::Error) -> (String, u8) {
    for cause in err.chain() {
        if let Some(cli) = cause.downcast_ref::<CliError>() {
            return (cli.to_string(), cli.exit_code());
        }
        if let Some(status) = cause.downcast_ref::<Status>() {
            return describe_status(status);
        }
        if let Some(transport) = cause.downcast_ref::<tonic::transport::Error>() {
            return (format!("UNAVAILABLE: {}", chain(transport)), UNAVAILABLE);
        }
    }
    (format!("{err:#}"), OTHER)
}

fn describe_status(status: &Status) -> (String, u8) {
    let mut message = format!("{}: {}", code_name(status.code()), status.message());
    if let Some(source) = std::error::Error::source(status) {
        message = format!("{message}: {}", chain(source));
    }
    (message, exit_code(status.code()))
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        source = cause.source();
    }
    text
}

/// The exit code for a gRPC status code.
pub fn exit_code(code: Code) -> u8 {
    match code {
        Code::Ok => OK,
        Code::NotFound => NOT_FOUND,
        Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::InvalidArgument
        | Code::AlreadyExists
        | Code::OutOfRange
        | Code::ResourceExhausted => REFUSED,
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted => UNAVAILABLE,
        Code::Unauthenticated => AUTH,
        Code::Cancelled | Code::Unknown | Code::Unimplemented | Code::Internal | Code::DataLoss => {
            OTHER
        }
    }
}

/// The status code's name as gRPC documents it (`FAILED_PRECONDITION`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_printed_with_its_code_name_and_message() {
        let err = anyhow::Error::new(Status::failed_precondition(
            "insufficient funds: balance 10",
        ))
        .context("withdraw failed");
        let (message, code) = describe(&err);
        assert_eq!(
            message,
            "FAILED_PRECONDITION: insufficient funds: balance 10"
        );
        assert_eq!(code, REFUSED);
    }

    #[test]
    fn each_class_of_status_has_its_own_exit_code() {
        assert_eq!(exit_code(Code::NotFound), NOT_FOUND);
        assert_eq!(exit_code(Code::PermissionDenied), REFUSED);
        assert_eq!(exit_code(Code::Unavailable), UNAVAILABLE);
        assert_eq!(exit_code(Code::DeadlineExceeded), UNAVAILABLE);
        assert_eq!(exit_code(Code::Unauthenticated), AUTH);
        assert_eq!(exit_code(Code::Internal), OTHER);
    }

    #[test]
    fn an_expired_session_asks_for_a_new_login() {
        let (message, code) = describe(&CliError::SessionExpired.into());
        assert_eq!(message, "your session expired; run grantmesh login");
        assert_eq!(code, AUTH);
    }

    #[test]
    fn an_error_without_a_status_keeps_its_context() {
        let err = anyhow::anyhow!("disk full").context("failed to save the session");
        assert_eq!(
            describe(&err),
            ("failed to save the session: disk full".to_owned(), OTHER)
        );
    }
}
