//! Which server connections are doing anything: calls open on each, and
//! when its last call ended, so that a connection that holds no call for
//! [`ConnectionLimits::idle_timeout`](crate::incoming::ConnectionLimits)
//! is closed even while it answers HTTP/2 keepalive pings.
//!
//! The accept loop ([`crate::incoming`]) enters every opened connection
//! under its peer's socket address (unique among a server's live
//! connections); the server's admission layer counts each call against the
//! connection it came on ([`Activities::call_started`]) until its response
//! ends; the connection's reads close it once it has been idle too long.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// One connection's calls.
#[derive(Debug)]
pub struct Activity {
    /// Calls whose responses have not ended.
    open: AtomicUsize,
    /// When a call last started or ended, in milliseconds after `epoch`.
    last: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// When the connection may be closed as idle after `idle`, if no call
    /// is open on it by then; `None` while one is.
    pub fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.open.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        Some(self.epoch + last + idle)
    }
}

/// The live connections of one server, by peer address, and whether its
/// accept loop is taking new ones.
#[derive(Debug)]
pub struct Activities {
    by_peer: Mutex<HashMap<SocketAddr, Arc<Activity>>>,
    /// `false` while `accept` has been failing for over [`ACCEPT_FAILING`]
    /// (out of file descriptors): the server is up but takes no one new.
    accepting: tokio::sync::watch::Sender<bool>,
}

impl Default for Activities {
    fn default() -> Self {
        Self {
            by_peer: Mutex::default(),
            accepting: tokio::sync::watch::Sender::new(true),
        }
    }
}

/// How long `accept` must keep failing before the server says it is not
/// serving: a passing shortage of descriptors should not delist it.
pub const ACCEPT_FAILING: Duration = Duration::from_secs(2);

/// A connection's entry, removed when the connection closes.
#[derive(Debug)]
pub struct Entered {
    activities: Arc<Activities>,
    peer: SocketAddr,
    pub activity: Arc<Activity>,
}

/// One call counted against its connection until dropped (its response ended).
#[derive(Debug)]
pub struct CallOpen {
    activity: Arc<Activity>,
}

impl Activities {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Enters a newly opened connection from `peer`.
    pub fn enter(self: &Arc<Self>, peer: SocketAddr) -> Entered {
        let activity = Arc::new(Activity::new());
        self.by_peer
            .lock()
            .expect("activities poisoned")
            .insert(peer, Arc::clone(&activity));
        Entered {
            activities: Arc::clone(self),
            peer,
            activity,
        }
    }

    /// Counts a call on the connection from `peer`, if it is one of ours.
    pub fn call_started(&self, peer: SocketAddr) -> Option<CallOpen> {
        let activity = Arc::clone(
            self.by_peer
                .lock()
                .expect("activities poisoned")
                .get(&peer)?,
        );
        activity.open.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        Some(CallOpen { activity })
    }

    /// Records whether the accept loop is taking connections.
    pub fn set_accepting(&self, accepting: bool) {
        self.accepting.send_if_modified(|now| {
            let changed = *now != accepting;
            *now = accepting;
            changed
        });
    }

    /// Follows whether the accept loop is taking connections.
    pub fn accepting(&self) -> tokio::sync::watch::Receiver<bool> {
        self.accepting.subscribe()
    }

    /// How many connections are entered.
    pub fn len(&self) -> usize {
        self.by_peer.lock().expect("activities poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let mut by_peer = self.activities.by_peer.lock().expect("activities poisoned");
        if by_peer
            .get(&self.peer)
            .is_some_and(|entered| Arc::ptr_eq(entered, &self.activity))
        {
            by_peer.remove(&self.peer);
        }
    }
}

impl Drop for CallOpen {
    fn drop(&mut self) {
        self.activity.touch();
        self.activity.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_while_no_call_is_open_and_from_when_the_last_ended() {
        let activities = Activities::new();
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let entered = activities.enter(peer);
        let idle = Duration::from_secs(300);
        let opened = Instant::now();
        assert_eq!(entered.activity.idle_deadline(idle), Some(opened + idle));

        tokio::time::advance(Duration::from_secs(10)).await;
        let call = activities
            .call_started(peer)
            .expect("the connection is entered");
        assert_eq!(entered.activity.idle_deadline(idle), None, "a call is open");
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(
            entered.activity.idle_deadline(idle),
            None,
            "however long it runs"
        );
        drop(call);
        let deadline = entered.activity.idle_deadline(idle).unwrap();
        assert!(deadline >= Instant::now() + idle - Duration::from_millis(1));

        drop(entered);
        assert!(activities.is_empty());
        assert!(activities.call_started(peer).is_none());
    }
}
