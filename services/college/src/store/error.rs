//! What the store reports when a call does not succeed, and its one
//! mapping to a gRPC status ([`StoreError::into_status`]) and to the
//! metrics' labels; the refusals' messages are written here once.

use std::sync::Arc;

use grantmesh_store::tokio_postgres;
use tonic::Status;
use uuid::Uuid;

use crate::ledger::Refusal;

/// What the store reports, before it becomes a gRPC status in one place ([`StoreError::into_status`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A bound on what one account or researcher may hold was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Lost too many races with concurrent calls; safe to retry.
    #[error("{0}")]
    Contended(String),
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A SQLite failure other than a busy store (which is [`Self::Contended`]).
    #[error(transparent)]
    Sqlite(rusqlite::Error),
    #[error(transparent)]
    SqlitePool(#[from] deadpool_sqlite::PoolError),
    /// The blocking task running a SQLite call panicked or was cancelled.
    #[error("the sqlite call did not finish: {0}")]
    SqliteCall(String),
    /// Too much work is already waiting (a queue at its bound); retry shortly.
    #[error("{0}")]
    Overloaded(String),
    /// One failure answered to several callers: a withdrawal batch that
    /// failed as a whole fails each of its withdrawals with it.
    #[error(transparent)]
    Shared(Arc<StoreError>),
}

impl From<rusqlite::Error> for StoreError {
    /// A store still locked by other writers after the busy timeout is
    /// contention, safe to retry, as on PostgreSQL.
    fn from(err: rusqlite::Error) -> Self {
        if grantmesh_store::sqlite::is_busy(&err) {
            Self::Contended("the central store is busy right now; retry with the same key".into())
        } else {
            Self::Sqlite(err)
        }
    }
}

impl StoreError {
    pub fn into_status(self) -> Status {
        self.status()
    }

    fn status(&self) -> Status {
        match self {
            Self::NotFound(msg) => Status::not_found(msg),
            Self::PermissionDenied(msg) => Status::permission_denied(msg),
            Self::FailedPrecondition(msg) => Status::failed_precondition(msg),
            Self::AlreadyExists(msg) => Status::already_exists(msg),
            Self::ResourceExhausted(msg) => Status::resource_exhausted(msg),
            Self::Contended(msg) => Status::unavailable(msg),
            Self::Overloaded(msg) => Status::resource_exhausted(msg),
            Self::Database(err) => grantmesh_store::status(err),
            Self::Pool(err) => grantmesh_store::status(err),
            Self::Sqlite(err) => grantmesh_store::status(err),
            Self::SqlitePool(err) => grantmesh_store::status(err),
            Self::SqliteCall(msg) => {
                tracing::error!(error = %msg, "sqlite call failed");
                Status::internal("the central store failed to complete the call")
            }
            Self::Shared(err) => err.status(),
        }
    }
}

/// What the metrics say about a failed call (docs/metrics.md).
impl StoreError {
    /// Why a call was refused, in a word: `insufficient_funds`, `expired`,
    /// `key_reused`, `not_member` (or not allowed), `not_found`,
    /// `overloaded`, `unavailable` (contention or the database), or the
    /// status code's name for anything else.
    pub fn refusal(&self) -> &'static str {
        match self {
            Self::FailedPrecondition(msg) if msg.starts_with(INSUFFICIENT_FUNDS) => {
                "insufficient_funds"
            }
            Self::FailedPrecondition(msg) if msg.contains(EXPIRED) => "expired",
            Self::FailedPrecondition(msg) if msg.contains(KEY_REUSED) => "key_reused",
            Self::FailedPrecondition(_) => "failed_precondition",
            Self::PermissionDenied(_) => "permission_denied",
            Self::NotFound(_) => "not_found",
            Self::AlreadyExists(_) => "already_exists",
            Self::ResourceExhausted(_) => "resource_exhausted",
            Self::Overloaded(_) => "overloaded",
            Self::Shared(err) => err.refusal(),
            Self::Contended(_)
            | Self::Database(_)
            | Self::Pool(_)
            | Self::Sqlite(_)
            | Self::SqlitePool(_)
            | Self::SqliteCall(_) => "unavailable",
        }
    }

    /// The kind of a failure of the database itself, or `None` for a
    /// refusal by the rules (which the database answered correctly):
    /// `connect`, `pool_timeout`, `pool_closed`, `connection_closed`,
    /// `query` (an error the server reported), `contended` (serialization
    /// failures, deadlocks, a busy SQLite file: retried or retryable),
    /// `sqlite`, or `other`.
    pub fn database_error_kind(&self) -> Option<&'static str> {
        Some(match self {
            Self::Database(err) if err.is_closed() => "connection_closed",
            Self::Database(err) if grantmesh_store::is_contention(err) => "contended",
            Self::Database(err) if err.code().is_some() => "query",
            Self::Database(_) => "connection_closed",
            Self::Pool(err) => match err {
                deadpool_postgres::PoolError::Timeout(_) => "pool_timeout",
                deadpool_postgres::PoolError::Closed => "pool_closed",
                _ => "connect",
            },
            Self::SqlitePool(err) => match err {
                deadpool_sqlite::PoolError::Timeout(_) => "pool_timeout",
                deadpool_sqlite::PoolError::Closed => "pool_closed",
                _ => "connect",
            },
            Self::Contended(_) => "contended",
            Self::Sqlite(_) | Self::SqliteCall(_) => "sqlite",
            Self::Shared(err) => return err.database_error_kind(),
            Self::NotFound(_)
            | Self::PermissionDenied(_)
            | Self::FailedPrecondition(_)
            | Self::AlreadyExists(_)
            | Self::ResourceExhausted(_)
            | Self::Overloaded(_) => return None,
        })
    }
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        err.into_status()
    }
}

pub(crate) fn not_found(account: Uuid) -> StoreError {
    StoreError::NotFound(format!("account {account} does not exist"))
}

pub(crate) fn credential_used() -> StoreError {
    StoreError::PermissionDenied("this agency credential was already used".into())
}

/// A caller who is not a member of `account` is told what a caller of an
/// id that exists nowhere is told, word for word: an account's existence is
/// its members' business only.
pub(crate) fn not_member(account: Uuid) -> StoreError {
    not_found(account)
}

pub(crate) fn not_principal_investigator(account: Uuid) -> StoreError {
    StoreError::PermissionDenied(format!(
        "only the principal investigator of account {account} may change its members"
    ))
}

pub(crate) fn principal_investigator_not_removable() -> StoreError {
    StoreError::FailedPrecondition(
        "the principal investigator cannot be removed from their own account; \
         hand the role to another member first (TransferPrincipal)"
            .into(),
    )
}

pub(crate) fn no_researcher_with(email: &str) -> StoreError {
    StoreError::NotFound(format!(
        "no researcher is registered with email {}",
        grantmesh_proto::errors::quote(email)
    ))
}

pub(crate) fn not_a_member_to_remove(account: Uuid, researcher: Uuid) -> StoreError {
    StoreError::NotFound(format!(
        "researcher {researcher} is not a member of account {account}"
    ))
}

pub(crate) fn email_taken(email: &str) -> StoreError {
    StoreError::AlreadyExists(format!(
        "a researcher with email {} is already registered",
        grantmesh_proto::errors::quote(email)
    ))
}

pub(crate) fn unknown_principal_investigator(researcher: Uuid) -> StoreError {
    StoreError::NotFound(format!(
        "principal investigator {researcher} is not a registered researcher"
    ))
}

/// The words that tell the withdrawal refusals apart, shared by the
/// messages below and [`StoreError::refusal`], so the two cannot drift.
const KEY_REUSED: &str = "was already used by you on this account for a withdrawal of";
const EXPIRED: &str = "has expired; no more withdrawals can be made";
const INSUFFICIENT_FUNDS: &str = "insufficient funds:";

pub(crate) fn key_reused(key: &str, previous_amount: i64, amount: i64) -> StoreError {
    StoreError::FailedPrecondition(format!(
        "idempotency_key {} {KEY_REUSED} {previous_amount}, \
         not {amount}; use a new key for a new withdrawal",
        grantmesh_proto::errors::quote(key)
    ))
}

pub(crate) fn expired(account: Uuid) -> StoreError {
    StoreError::FailedPrecondition(format!("account {account} {EXPIRED}"))
}

pub(crate) fn insufficient_funds(account: Uuid, balance: i64, amount: i64) -> StoreError {
    StoreError::FailedPrecondition(format!(
        "{INSUFFICIENT_FUNDS} account {account} holds {balance}, the withdrawal asks for {amount}"
    ))
}

/// The error a refused withdrawal answers with.
pub(crate) fn refused(request: &crate::ledger::Request, refusal: &Refusal) -> StoreError {
    match *refusal {
        Refusal::NoAccount => not_found(request.account),
        Refusal::NotMember => not_member(request.account),
        Refusal::KeyReused { previous_amount } => {
            key_reused(&request.key, previous_amount, request.amount)
        }
        Refusal::Expired => expired(request.account),
        Refusal::InsufficientFunds { balance } => {
            insufficient_funds(request.account, balance, request.amount)
        }
    }
}

/// A second `OpenAccount` for a proposal on other terms.
pub(crate) fn opened_on_other_terms(difference: String) -> StoreError {
    StoreError::FailedPrecondition(difference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_withdrawal_refusal_is_told_apart_by_its_metric_label() {
        let account = Uuid::nil();
        assert_eq!(
            insufficient_funds(account, 1, 2).refusal(),
            "insufficient_funds"
        );
        assert_eq!(expired(account).refusal(), "expired");
        assert_eq!(key_reused("k", 1, 2).refusal(), "key_reused");
        // Non-members are told, and counted, as for an account that does not exist.
        assert_eq!(not_member(account).refusal(), "not_found");
        assert_eq!(
            not_member(account).into_status().message(),
            not_found(account).into_status().message()
        );
        assert_eq!(not_found(account).refusal(), "not_found");
        let shared = StoreError::Shared(Arc::new(expired(account)));
        assert_eq!(shared.refusal(), "expired");
        assert_eq!(expired(account).database_error_kind(), None);
        assert_eq!(
            StoreError::Contended("busy".into()).database_error_kind(),
            Some("contended")
        );
    }
}
