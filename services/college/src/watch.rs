//! `WatchAccount`: the account now, then every change to it, on whichever
//! instance the change was made.
//!
//! Changes arrive as PostgreSQL notifications (see [`crate::store::CHANNEL`]),
//! or on SQLite from the in-process fan-out that carries the same payloads:
//! one per batch of withdrawals (the range of its journal entries and the
//! accounts they debited) or per membership change. Each watched account has
//! one feed on this instance, which re-reads what changed once and fans it
//! out to every watcher of the account, whatever their number: a batch
//! becomes one event per withdrawal, in journal order. If the listening
//! connection was lost, or a watcher fell behind, it is sent a fresh snapshot
//! instead, so it never silently misses a change. Expiry is a timer on the
//! account's `expires_at`, in the feed.
//!
//! Every event carries the journal position of the account it shows (the
//! id of its newest entry). A watcher subscribes before it reads its
//! snapshot, so a withdrawal committed in between is in the snapshot and
//! in the feed too: the watcher drops every withdrawal at or below the
//! position it has shown, so nothing is shown twice and a displayed
//! balance never goes back up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use grantmesh_proto::v1::{AccountEvent, account_event::Kind};
use grantmesh_server::peers::{Full, Peer, Share, Shares, Split};
use grantmesh_store::Notice;

use crate::store::change::Change as Notified;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use crate::store::{AccountRow, AccountStore, TransactionRow};
use crate::{EventStream, account_message, transaction_message};

/// `WatchAccount` streams one College instance serves at once. A change is
/// re-read once per watched account, not per watcher, but each watcher
/// still holds a task and a buffer (a few KB), and reads its own snapshot:
/// 4096 hold tens of MB.
pub const MAX_WATCHERS: usize = 4096;
/// Streams one researcher may hold open on one instance: a few browser
/// tabs and terminals. Researchers sign themselves up, so this is what
/// makes filling [`MAX_WATCHERS`] take a thousand of them, not a handful.
pub const MAX_WATCHERS_PER_RESEARCHER: usize = 4;
/// Streams from one address (a mesh member's certificate counts as one):
/// the portal, which carries every browser's live views, keeps its own
/// total of 512 below this; one address of self-made researchers holds
/// this many and no more.
pub const MAX_WATCHERS_PER_PEER: usize = 512;

/// Counts open `WatchAccount` streams, in total, per peer and per
/// researcher, and holds the feed of each watched account.
pub(crate) struct Watchers {
    /// In total and per peer.
    shares: Arc<Shares>,
    /// The most per researcher.
    per_researcher: usize,
    /// Per researcher.
    open: std::sync::Mutex<HashMap<Uuid, usize>>,
    /// The feed of every watched account ([`run_feed`]).
    feeds: std::sync::Mutex<HashMap<Uuid, broadcast::Sender<Update>>>,
}

/// How many `WatchAccount` streams one College serves, and to whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchLimits {
    /// In all ([`MAX_WATCHERS`] by default).
    pub total: usize,
    /// From one address ([`MAX_WATCHERS_PER_PEER`]).
    pub per_peer: usize,
    /// For one researcher ([`MAX_WATCHERS_PER_RESEARCHER`]).
    pub per_researcher: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        Self {
            total: MAX_WATCHERS,
            per_peer: MAX_WATCHERS_PER_PEER,
            per_researcher: MAX_WATCHERS_PER_RESEARCHER,
        }
    }
}

impl Default for Watchers {
    fn default() -> Self {
        Self::new(WatchLimits::default())
    }
}

impl Watchers {
    pub(crate) fn new(limits: WatchLimits) -> Self {
        Self {
            shares: Shares::new(Split {
                total: limits.total,
                per_peer: limits.per_peer,
                reserved_for_members: 0,
            }),
            per_researcher: limits.per_researcher,
            open: Default::default(),
            feeds: Default::default(),
        }
    }
}

/// One admitted stream; gives its place back when dropped (the stream ended).
pub(crate) struct WatchPermit {
    watchers: Arc<Watchers>,
    researcher: Uuid,
    _share: Share,
}

impl Watchers {
    pub(crate) fn admit(
        self: &Arc<Self>,
        researcher: Uuid,
        peer: Peer,
    ) -> Result<WatchPermit, Status> {
        let mut open = self.open.lock().expect("watchers poisoned");
        let mine = open.get(&researcher).copied().unwrap_or(0);
        if mine >= self.per_researcher {
            return Err(Status::resource_exhausted(format!(
                "you already have {} account watches open on this college; close one first",
                self.per_researcher
            )));
        }
        let split = self.shares.split();
        let share = self.shares.take(peer).map_err(|full| {
            Status::resource_exhausted(match full {
                Full::Peer => format!(
                    "{} already has {} account watches open on this college, the most one address may; close some first",
                    peer.describe(),
                    split.per_peer
                ),
                Full::Total | Full::Anonymous => format!(
                    "this college already serves {} account watches; retry later or on another instance",
                    split.total
                ),
            })
        })?;
        open.insert(researcher, mine + 1);
        Ok(WatchPermit {
            watchers: Arc::clone(self),
            researcher,
            _share: share,
        })
    }
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        let mut open = self.watchers.open.lock().expect("watchers poisoned");
        if let Some(mine) = open.get_mut(&self.researcher) {
            *mine -= 1;
            if *mine == 0 {
                open.remove(&self.researcher);
            }
        }
    }
}

/// Changes that one account feed broadcasts to the watchers of its account.
#[derive(Clone)]
enum Update {
    /// What changed, re-read once for every watcher of the account, in
    /// order. Each watcher checks its own membership in the account.
    Events(Arc<Vec<Change>>),
    /// The re-read failed (the store is unreachable): every watch ends with it.
    Failed(Status),
}

/// One change as the feed read it.
struct Change {
    kind: Kind,
    account: AccountRow,
    transaction: Option<TransactionRow>,
}

/// Changes one account feed may hold for a watcher that has not taken
/// them yet; a watcher further behind gets a fresh snapshot of its own.
const FEED_CAPACITY: usize = 256;

/// How often an account feed with no change to report checks whether its
/// account still has watchers, and stops if not.
const FEED_IDLE_CHECK: Duration = Duration::from_secs(10);

impl Watchers {
    /// The changes to `account`, from its feed: one task per watched
    /// account, which re-reads each change once for all its watchers
    /// (started here if the account has none yet).
    fn feed(
        self: &Arc<Self>,
        store: &AccountStore,
        notices: &broadcast::Receiver<Notice>,
        account: Uuid,
        closing: &CancellationToken,
    ) -> broadcast::Receiver<Update> {
        let mut feeds = self.feeds.lock().expect("watchers poisoned");
        if let Some(sender) = feeds.get(&account) {
            return sender.subscribe();
        }
        let (sender, receiver) = broadcast::channel(FEED_CAPACITY);
        feeds.insert(account, sender.clone());
        tokio::spawn(run_feed(
            Arc::clone(self),
            store.clone(),
            // Subscribed now, before any watcher of this feed reads its snapshot.
            notices.resubscribe(),
            account,
            sender,
            closing.clone(),
        ));
        receiver
    }

    /// Whether the feed of `account` may stop: it has no watchers left (and
    /// then it is forgotten, under the same lock a new watcher takes).
    fn feed_unwatched(&self, account: Uuid, sender: &broadcast::Sender<Update>) -> bool {
        let mut feeds = self.feeds.lock().expect("watchers poisoned");
        if sender.receiver_count() > 0 {
            return false;
        }
        feeds.remove(&account);
        true
    }
}

/// The feed of one account: hears every notification, re-reads what changed
/// in the account once, and broadcasts it to the account's watchers, until
/// none is left. Expiry is a timer on the account's `expires_at`.
async fn run_feed(
    watchers: Arc<Watchers>,
    store: AccountStore,
    mut notices: broadcast::Receiver<Notice>,
    account: Uuid,
    sender: broadcast::Sender<Update>,
    closing: CancellationToken,
) {
    let (mut expired, mut expires_at) = match store.account(account, None).await {
        Ok(now) => (now.expired, now.expires_at),
        // The watchers read their own snapshots and hear of it there.
        Err(_) => (true, SystemTime::now()),
    };
    // Its own clock: notifications about other accounts, however many, do
    // not put the check off.
    let mut idle_check = tokio::time::interval_at(
        tokio::time::Instant::now() + FEED_IDLE_CHECK,
        FEED_IDLE_CHECK,
    );
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let until_expiry = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let notice = tokio::select! {
            () = closing.cancelled() => return,
            _ = idle_check.tick() => {
                if watchers.feed_unwatched(account, &sender) {
                    return;
                }
                continue;
            }
            () = tokio::time::sleep(until_expiry), if !expired => None,
            notice = notices.recv() => Some(notice),
        };
        let what = match notice {
            None => What::Expired,
            Some(Ok(Notice::Payload(payload))) => match what_for(&payload, account) {
                Some(what) => what,
                None => continue,
            },
            Some(Ok(Notice::Reconnected)) | Some(Err(broadcast::error::RecvError::Lagged(_))) => {
                What::Snapshot
            }
            Some(Err(broadcast::error::RecvError::Closed)) => return,
        };
        let changes = match read_changes(&store, account, &what).await {
            Ok(changes) => changes,
            Err(err) => {
                let _ = sender.send(Update::Failed(err.into_status()));
                watchers
                    .feeds
                    .lock()
                    .expect("watchers poisoned")
                    .remove(&account);
                return;
            }
        };
        let Some(last) = changes.last() else {
            // Woke a moment early for the expiry by this clock; the database decides.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        expired = last.account.expired;
        expires_at = last.account.expires_at;
        if sender.send(Update::Events(Arc::new(changes))).is_err()
            && watchers.feed_unwatched(account, &sender)
        {
            return;
        }
    }
}

/// The account's changes that `what` announced, read once: one event per
/// journal entry of a batch (the account as of that entry), or one event
/// with the account as it is now. None when an expiry timer fired early.
async fn read_changes(
    store: &AccountStore,
    account: Uuid,
    what: &What,
) -> Result<Vec<Change>, crate::store::StoreError> {
    let now = store.account(account, None).await?;
    Ok(match *what {
        What::Withdrawals { first, last } => store
            .entries(account, first, last)
            .await?
            .into_iter()
            .map(|entry| {
                let mut account = now.clone();
                account.balance = entry.balance_after;
                account.journal_position = entry.id;
                Change {
                    kind: Kind::Withdrawal,
                    account,
                    transaction: Some(entry),
                }
            })
            .collect(),
        What::Expired if !now.expired => Vec::new(),
        What::Expired | What::Membership | What::Snapshot => {
            let kind = match what {
                What::Expired => Kind::Expired,
                What::Membership => Kind::Membership,
                _ => Kind::Snapshot,
            };
            vec![Change {
                kind,
                account: now,
                transaction: None,
            }]
        }
    })
}

pub(crate) async fn watch(
    permit: WatchPermit,
    store: AccountStore,
    notices: broadcast::Receiver<Notice>,
    account: Uuid,
    caller: Uuid,
    closing: CancellationToken,
) -> Result<EventStream<AccountEvent>, Status> {
    // The caller is checked before a feed is made, so watches of accounts
    // that are not theirs, or do not exist, hold no feed.
    store.account(account, Some(caller)).await?;
    // Subscribed before the snapshot is read, so nothing falls in between.
    let updates = permit.watchers.feed(&store, &notices, account, &closing);
    drop(notices);
    let snapshot = store.account(account, Some(caller)).await?;
    Ok(relay(
        permit, store, updates, snapshot, account, caller, closing,
    ))
}

/// The stream of one watch: its snapshot, then what its feed hears, less
/// what the snapshot (or an event before) already showed.
fn relay(
    permit: WatchPermit,
    store: AccountStore,
    mut updates: broadcast::Receiver<Update>,
    snapshot: AccountRow,
    account: Uuid,
    caller: Uuid,
    closing: CancellationToken,
) -> EventStream<AccountEvent> {
    let (events, stream) = mpsc::channel(64);
    tokio::spawn(async move {
        let _permit = permit;
        let mut shown = snapshot.journal_position;
        if events
            .send(event(Kind::Snapshot, snapshot, None))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let update = tokio::select! {
                () = closing.cancelled() => return,
                () = events.closed() => return,
                update = updates.recv() => update,
            };
            let changes = match update {
                Ok(Update::Events(changes)) => changes,
                Ok(Update::Failed(status)) => {
                    let _ = events.send(Err(status)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind the feed: a fresh snapshot of its own.
                    match store.account(account, Some(caller)).await {
                        Ok(now) => Arc::new(vec![Change {
                            kind: Kind::Snapshot,
                            account: now,
                            transaction: None,
                        }]),
                        Err(err) => {
                            let _ = events.send(Err(err.into_status())).await;
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            for change in changes.iter() {
                if !change
                    .account
                    .members
                    .iter()
                    .any(|m| m.researcher_id == caller)
                {
                    // Removed from the account: the watch ends, as a read would.
                    let _ = events
                        .send(Err(crate::store::not_member(account).into_status()))
                        .await;
                    return;
                }
                if change.kind == Kind::Withdrawal && change.account.journal_position <= shown {
                    continue; // already shown
                }
                shown = shown.max(change.account.journal_position);
                let transaction = change.transaction.clone().map(transaction_message);
                if events
                    .send(event(change.kind, change.account.clone(), transaction))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(stream))
}

fn event(
    kind: Kind,
    account: AccountRow,
    transaction: Option<grantmesh_proto::v1::Transaction>,
) -> Result<AccountEvent, Status> {
    Ok(AccountEvent {
        kind: kind as i32,
        journal_position: account.journal_position,
        account: Some(account_message(account)),
        transaction,
    })
}

/// What a notification announced about one account.
enum What {
    /// A batch of withdrawals; the account's entries among `first..=last`.
    Withdrawals {
        first: i64,
        last: i64,
    },
    Membership,
    /// The expiry timer fired.
    Expired,
    /// Notifications may have been missed: the account as it is now.
    Snapshot,
}

/// What a notification's payload announces about `account`, if anything.
fn what_for(payload: &str, account: Uuid) -> Option<What> {
    let change = Notified::parse(payload)?;
    if !change.concerns(account) {
        return None;
    }
    Some(match change {
        Notified::Withdrawals { first, last, .. } => What::Withdrawals { first, last },
        Notified::Membership(_) => What::Membership,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Credential, NewAccount};

    /// An embedded store of its own with one researcher and their account.
    async fn one_account() -> (
        tempfile::TempDir,
        AccountStore,
        grantmesh_store::Notifications,
        CancellationToken,
        crate::store::ResearcherRow,
        AccountRow,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("watch.db").display());
        let closing = CancellationToken::new();
        let day = Duration::from_secs(24 * 60 * 60);
        let (store, notifications) = AccountStore::start(&url, 4, day, closing.clone())
            .await
            .unwrap();
        let pi = store
            .register_researcher("Ada", "ada@example.org", "not-a-hash")
            .await
            .unwrap();
        let (account, _) = store
            .open_account(&NewAccount {
                proposal_id: "p-1",
                agency: "nsf",
                title: "Tides",
                principal_investigator: pi.id,
                award: 1_000,
                currency: "USD",
                duration_days: 30,
                credential: Credential {
                    jti: Uuid::new_v4(),
                    expires_at: SystemTime::now() + Duration::from_secs(60),
                },
            })
            .await
            .unwrap();
        (dir, store, notifications, closing, pi, account)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_of_an_account_that_is_not_the_callers_holds_no_feed() {
        let (_dir, store, notifications, closing, pi, account) = one_account().await;
        let stranger = store
            .register_researcher("Eve", "eve@example.org", "not-a-hash")
            .await
            .unwrap();
        let watchers = Arc::new(Watchers::default());
        for (on, caller, code) in [
            (Uuid::new_v4(), pi.id, tonic::Code::NotFound),
            (account.id, stranger.id, tonic::Code::NotFound),
        ] {
            let refused = watch(
                watchers.admit(caller, Peer::Unknown).unwrap(),
                store.clone(),
                notifications.subscribe().await.unwrap(),
                on,
                caller,
                closing.clone(),
            )
            .await
            .err()
            .expect("refused");
            assert_eq!(refused.code(), code, "{refused:?}");
        }
        assert!(
            watchers.feeds.lock().unwrap().is_empty(),
            "no feed was made for them"
        );
        closing.cancel();
    }

    /// Defect 5 of issue 18: a watcher subscribes, then reads its snapshot;
    /// a withdrawal committed in between is in both, and was sent again
    /// after the snapshot, with an older balance than one already shown.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_withdrawal_the_snapshot_already_shows_is_not_sent_again() {
        use futures::StreamExt as _;

        let (_dir, store, notifications, closing, pi, account) = one_account().await;
        let watchers = Arc::new(Watchers::default());
        let permit = watchers.admit(pi.id, Peer::Unknown).unwrap();
        let notices = notifications.subscribe().await.unwrap();
        // As `watch` does: subscribed first…
        let updates = watchers.feed(&store, &notices, account.id, &closing);
        // …then a withdrawal commits and the feed hears of it…
        store
            .withdraw(account.id, pi.id, 100, "between", "")
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while updates.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the feed never heard it"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // …before the snapshot is read: the snapshot already shows it.
        let snapshot = store.account(account.id, Some(pi.id)).await.unwrap();
        assert_eq!(snapshot.balance, 900);
        let mut stream = relay(
            permit,
            store.clone(),
            updates,
            snapshot,
            account.id,
            pi.id,
            closing.clone(),
        );
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.kind, Kind::Snapshot as i32);
        assert_eq!(first.account.unwrap().balance_minor, 900);
        // The next event is the next withdrawal, not "between" again.
        let after = store
            .withdraw(account.id, pi.id, 100, "after", "")
            .await
            .unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the next withdrawal is sent")
            .unwrap()
            .unwrap();
        assert_eq!(next.kind, Kind::Withdrawal as i32);
        assert_eq!(
            next.transaction.unwrap().transaction_id,
            after.transaction.id.to_string()
        );
        assert_eq!(next.account.unwrap().balance_minor, 800);
        assert_eq!(next.journal_position, after.transaction.id);
        closing.cancel();
    }

    #[test]
    fn a_researcher_holds_a_bounded_number_of_watches_and_gets_them_back() {
        let watchers = Arc::new(Watchers::default());
        let ada = Uuid::new_v4();
        let mut held: Vec<_> = (0..MAX_WATCHERS_PER_RESEARCHER)
            .map(|_| watchers.admit(ada, Peer::Unknown).unwrap())
            .collect();
        let refused = watchers
            .admit(ada, Peer::Unknown)
            .err()
            .expect("one too many");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        watchers
            .admit(Uuid::new_v4(), Peer::Unknown)
            .expect("someone else still may");
        held.pop();
        watchers
            .admit(ada, Peer::Unknown)
            .expect("a closed watch makes room");
    }

    #[test]
    fn researchers_made_up_on_one_address_hold_that_address_s_share_and_no_more() {
        let watchers = Arc::new(Watchers::default());
        let attacker = Peer::Address([127, 0, 0, 2].into());
        let held: Vec<_> = (0..MAX_WATCHERS_PER_PEER)
            .map(|_| watchers.admit(Uuid::new_v4(), attacker).unwrap())
            .collect();
        let refused = watchers
            .admit(Uuid::new_v4(), attacker)
            .err()
            .expect("the address's share is used");
        assert!(refused.message().contains("127.0.0.2"), "{refused:?}");
        watchers
            .admit(Uuid::new_v4(), Peer::Address([127, 0, 0, 1].into()))
            .expect("a researcher elsewhere still watches");
        drop(held);
    }

    #[test]
    fn an_instance_serves_a_bounded_number_of_watches() {
        let watchers = Arc::new(Watchers::default());
        let held: Vec<_> = (0..MAX_WATCHERS)
            .map(|_| watchers.admit(Uuid::new_v4(), Peer::Unknown).unwrap())
            .collect();
        assert!(watchers.admit(Uuid::new_v4(), Peer::Unknown).is_err());
        drop(held);
        assert_eq!(watchers.shares.held(), 0);
        assert!(watchers.open.lock().unwrap().is_empty());
    }
}
