//! `WatchAccount`: the account now, then every change to it, on whichever
//! instance the change was made.
//!
//! Changes arrive as PostgreSQL notifications (see [`crate::store::CHANNEL`]),
//! or on SQLite from the in-process fan-out that carries the same payloads;
//! each one makes the stream re-read what changed. If the listening
//! connection was lost, or this watcher fell behind, it is sent a fresh
//! snapshot instead, so it never silently misses a change. Expiry is a
//! timer on the account's `expires_at`.

use std::time::SystemTime;

use grantmesh_proto::v1::{AccountEvent, account_event::Kind};
use grantmesh_store::Notice;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use crate::store::AccountStore;
use crate::{EventStream, account_message, transaction_message};

pub(crate) async fn watch(
    store: AccountStore,
    mut notices: broadcast::Receiver<Notice>,
    account: Uuid,
    caller: Uuid,
    closing: CancellationToken,
) -> Result<EventStream<AccountEvent>, Status> {
    // Subscribed before the snapshot is read, so nothing falls in between.
    let snapshot = store.account(account, Some(caller)).await?;
    let (events, stream) = mpsc::channel(64);
    let account_key = account.to_string();
    tokio::spawn(async move {
        let mut expired = snapshot.expired;
        let mut expires_at = snapshot.expires_at;
        let mut pending = Some(event(Kind::Snapshot, snapshot, None));
        loop {
            if let Some(event) = pending.take()
                && events.send(event).await.is_err()
            {
                return;
            }
            let until_expiry = expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let notice = tokio::select! {
                () = closing.cancelled() => return,
                () = events.closed() => return,
                () = tokio::time::sleep(until_expiry), if !expired => None,
                notice = notices.recv() => Some(notice),
            };
            let (kind, transaction) = match notice {
                None => (Kind::Expired, None),
                Some(Ok(Notice::Payload(payload))) => match parse(&payload, &account_key) {
                    Some(Change::Withdrawal(id)) => (Kind::Withdrawal, Some(id)),
                    Some(Change::Membership) => (Kind::Membership, None),
                    None => continue,
                },
                Some(Ok(Notice::Reconnected))
                | Some(Err(broadcast::error::RecvError::Lagged(_))) => (Kind::Snapshot, None),
                Some(Err(broadcast::error::RecvError::Closed)) => return,
            };
            let now = match store.account(account, Some(caller)).await {
                Ok(now) => now,
                Err(err) => {
                    // Removed from the account, or the store is unreachable.
                    let _ = events.send(Err(err.into_status())).await;
                    return;
                }
            };
            if kind == Kind::Expired && !now.expired {
                // Woke a moment early by this clock; the database decides.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
            expired = now.expired;
            expires_at = now.expires_at;
            let transaction = match transaction {
                Some(id) => store
                    .transaction(account, id)
                    .await
                    .ok()
                    .flatten()
                    .map(transaction_message),
                None => None,
            };
            pending = Some(event(kind, now, transaction));
        }
    });
    Ok(Box::pin(ReceiverStream::new(stream)))
}

fn event(
    kind: Kind,
    account: crate::store::AccountRow,
    transaction: Option<grantmesh_proto::v1::Transaction>,
) -> Result<AccountEvent, Status> {
    Ok(AccountEvent {
        kind: kind as i32,
        account: Some(account_message(account)),
        transaction,
    })
}

enum Change {
    Withdrawal(i64),
    Membership,
}

/// `withdrawal:<account>:<entry id>` or `membership:<account>`, for this account only.
fn parse(payload: &str, account: &str) -> Option<Change> {
    let mut parts = payload.split(':');
    let kind = parts.next()?;
    if parts.next()? != account {
        return None;
    }
    match kind {
        "withdrawal" => parts.next()?.parse().ok().map(Change::Withdrawal),
        "membership" => Some(Change::Membership),
        _ => None,
    }
}
