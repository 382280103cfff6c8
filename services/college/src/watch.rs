//! `WatchAccount`: the account now, then every change to it, on whichever
//! instance the change was made.
//!
//! Changes arrive as PostgreSQL notifications (see [`crate::store::CHANNEL`]),
//! or on SQLite from the in-process fan-out that carries the same payloads;
//! each one makes the stream re-read what changed. If the listening
//! connection was lost, or this watcher fell behind, it is sent a fresh
//! snapshot instead, so it never silently misses a change. Expiry is a
//! timer on the account's `expires_at`.

use std::collections::HashMap;
use std::sync::Arc;
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

/// `WatchAccount` streams one College instance serves at once. Each change
/// to an account makes each of its watchers re-read it from the store, so
/// without a bound a crowd of watchers starves everyone else's calls of
/// pooled connections.
pub const MAX_WATCHERS: usize = 1024;
/// Streams one researcher may hold open on one instance (a few browser
/// tabs and terminals; not thousands).
pub const MAX_WATCHERS_PER_RESEARCHER: usize = 16;

/// Counts open `WatchAccount` streams, in total and per researcher.
#[derive(Default)]
pub(crate) struct Watchers {
    open: std::sync::Mutex<(usize, HashMap<Uuid, usize>)>,
}

/// One admitted stream; gives its place back when dropped (the stream ended).
pub(crate) struct WatchPermit {
    watchers: Arc<Watchers>,
    researcher: Uuid,
}

impl Watchers {
    pub(crate) fn admit(self: &Arc<Self>, researcher: Uuid) -> Result<WatchPermit, Status> {
        let mut open = self.open.lock().expect("watchers poisoned");
        let (total, per) = &mut *open;
        let mine = per.get(&researcher).copied().unwrap_or(0);
        if *total >= MAX_WATCHERS {
            return Err(Status::resource_exhausted(format!(
                "this college already serves {MAX_WATCHERS} account watches; retry later or on another instance"
            )));
        }
        if mine >= MAX_WATCHERS_PER_RESEARCHER {
            return Err(Status::resource_exhausted(format!(
                "you already have {MAX_WATCHERS_PER_RESEARCHER} account watches open on this college; close one first"
            )));
        }
        *total += 1;
        per.insert(researcher, mine + 1);
        Ok(WatchPermit {
            watchers: Arc::clone(self),
            researcher,
        })
    }
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        let mut open = self.watchers.open.lock().expect("watchers poisoned");
        let (total, per) = &mut *open;
        *total -= 1;
        if let Some(mine) = per.get_mut(&self.researcher) {
            *mine -= 1;
            if *mine == 0 {
                per.remove(&self.researcher);
            }
        }
    }
}

pub(crate) async fn watch(
    permit: WatchPermit,
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
        let _permit = permit;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_researcher_holds_a_bounded_number_of_watches_and_gets_them_back() {
        let watchers = Arc::new(Watchers::default());
        let ada = Uuid::new_v4();
        let mut held: Vec<_> = (0..MAX_WATCHERS_PER_RESEARCHER)
            .map(|_| watchers.admit(ada).unwrap())
            .collect();
        let refused = watchers.admit(ada).err().expect("one too many");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        watchers
            .admit(Uuid::new_v4())
            .expect("someone else still may");
        held.pop();
        watchers.admit(ada).expect("a closed watch makes room");
    }

    #[test]
    fn an_instance_serves_a_bounded_number_of_watches() {
        let watchers = Arc::new(Watchers::default());
        let held: Vec<_> = (0..MAX_WATCHERS)
            .map(|_| watchers.admit(Uuid::new_v4()).unwrap())
            .collect();
        assert!(watchers.admit(Uuid::new_v4()).is_err());
        drop(held);
        assert_eq!(watchers.open.lock().unwrap().0, 0);
        assert!(watchers.open.lock().unwrap().1.is_empty());
    }
}
