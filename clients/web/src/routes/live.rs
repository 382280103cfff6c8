//! The account page's live updates: the College's `WatchAccount` stream,
//! relayed to the browser as Server-Sent Events.
//!
//! The stream is opened with the browser's own token, so the College's
//! rule applies unchanged: a researcher who is not a member is refused,
//! and the refusal reaches the browser as an HTTP error before any event
//! (an `EventSource` then stops trying). Each event is the account as it is
//! now (balance, members, state, expiry) plus the withdrawal that changed
//! it, as JSON, under the SSE event name `account`.
//!
//! The College's events do not carry the invitations not yet answered
//! (only `GetAccount` does, and only for the principal investigator). So
//! on the principal investigator's page, when the members change (an
//! invitation accepted) or the stream starts, the portal reads the account
//! once more with that browser's token and sends the pending invitations
//! along, and the page's "Invited, not yet answered" line follows.
//!
//! What a browser can make the server hold is bounded: a few streams per
//! session ([`crate::sessions::MAX_STREAMS_PER_SESSION`]), a global cap
//! ([`crate::MAX_LIVE_STREAMS`]) and a lifetime ([`STREAM_LIFETIME`]), after
//! which the browser reconnects, and is checked again; logging out ends the
//! session's streams at once. When the College
//! serving a stream goes away, the stream ends and the browser reconnects
//! (after [`RECONNECT_AFTER`]) to another one.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt as _};
use grantmesh_proto::v1::{AccountEvent, GetAccountRequest, WatchAccountRequest, account_event};
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::App;
use crate::sessions::Visitor;
use crate::views::{AccountView, TransactionRow};
use crate::words;

/// How long one live stream lasts before the server ends it; the browser
/// reconnects at once, with its session checked again (a logged-out or
/// expired session gets no more events).
pub const STREAM_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// How soon a browser reconnects after a stream ends (sent as SSE `retry`).
pub const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// A comment line this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One event as the page's script reads it.
#[derive(Debug, Serialize)]
struct LiveEvent {
    /// "snapshot", "withdrawal", "membership" or "expired".
    kind: &'static str,
    account: AccountView,
    transaction: Option<TransactionRow>,
    /// Emails invited and not yet answered, when they were read for this
    /// event; `None` leaves the page's list as it is.
    invited: Option<Vec<String>>,
}

impl LiveEvent {
    fn new(event: AccountEvent) -> Option<Self> {
        let kind = match event.kind() {
            account_event::Kind::Snapshot => "snapshot",
            account_event::Kind::Withdrawal => "withdrawal",
            account_event::Kind::Membership => "membership",
            account_event::Kind::Expired => "expired",
            account_event::Kind::Unspecified => return None,
        };
        let account = AccountView::from(event.account?);
        let transaction = event
            .transaction
            .map(|t| TransactionRow::new(t, &account.members, &account.currency));
        Some(Self {
            kind,
            account,
            transaction,
            invited: None,
        })
    }

    /// Whether the page of researcher `me` shows invitations that this
    /// event may have changed: the principal investigator's, when the
    /// stream starts or the members change.
    fn changes_invitations_of(&self, me: &str) -> bool {
        matches!(self.kind, "snapshot" | "membership")
            && self.account.members.iter().any(|m| m.is_pi && m.id == me)
    }

    fn to_json(&self) -> Option<String> {
        serde_json::to_string(self).ok()
    }
}

/// The invitations not yet answered, read with the browser's own token
/// (`None` when the College does not answer: the page keeps its list).
async fn pending_invitations(app: &App, token: &str, account: &str) -> Option<Vec<String>> {
    let account = app
        .mesh
        .college(
            Some(token),
            GetAccountRequest {
                account_id: account.to_owned(),
            },
            |mut c, r| async move { c.get_account(r).await },
        )
        .await
        .ok()?;
    Some(account.invitations.into_iter().map(|i| i.email).collect())
}

/// A refusal in plain text (the page's script shows its own words).
fn refuse(status: StatusCode, text: impl Into<String>) -> Response {
    (status, text.into()).into_response()
}

pub async fn account_events(
    State(app): State<Arc<App>>,
    visitor: Visitor,
    Path(id): Path<String>,
) -> Response {
    let Some(session) = visitor.session else {
        return refuse(StatusCode::UNAUTHORIZED, "log in to follow an account");
    };
    let Ok(own) = Arc::clone(&session.streams).try_acquire_owned() else {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too many live pages are open in this session; close some tabs",
        );
    };
    let Ok(global) = Arc::clone(&app.live_streams).try_acquire_owned() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the portal is following too many accounts right now; try again soon",
        );
    };
    let opened = app
        .mesh
        .college(
            Some(&session.token),
            WatchAccountRequest { account_id: id },
            |mut c, r| async move { c.watch_account(r).await },
        )
        .await;
    let mut events = match opened {
        Ok(events) => events,
        Err(status) => {
            let problem = words::explain(&status);
            return refuse(problem.http, problem.sentence);
        }
    };
    // The College may refuse on the first message rather than at open:
    // wait for it, so a refusal is an HTTP error, not an empty stream.
    let first = match events.message().await {
        Ok(Some(first)) => first,
        Ok(None) => return refuse(StatusCode::BAD_GATEWAY, "the college ended the stream"),
        Err(status) => {
            let problem = words::explain(&status);
            return refuse(problem.http, problem.sentence);
        }
    };
    let rest = futures::stream::unfold(events, |mut events| async move {
        match events.message().await {
            Ok(Some(event)) => Some((event, events)),
            _ => None,
        }
    });
    let (me, token) = (session.researcher_id.clone(), session.token.clone());
    let follower = Arc::clone(&app);
    let stream = futures::stream::once(async move { first })
        .chain(rest)
        .filter_map(move |event| {
            let (app, me, token) = (Arc::clone(&follower), me.clone(), token.clone());
            async move {
                let mut live = LiveEvent::new(event)?;
                if live.changes_invitations_of(&me) {
                    live.invited = pending_invitations(&app, &token, &live.account.id).await;
                }
                live.to_json()
            }
        })
        .map(|json| Event::default().event("account").data(json));
    relay(
        stream,
        app.closing.clone(),
        Some(session.ended.clone()),
        (own, global),
    )
}

/// Sends `events` as SSE until they end, the lifetime passes, the server
/// stops or the session (when there is one) ends; holds `permits` for as
/// long as the stream is open.
pub(crate) fn relay(
    events: impl Stream<Item = Event> + Send + 'static,
    closing: CancellationToken,
    session_ended: Option<CancellationToken>,
    permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
) -> Response {
    let session_ended = session_ended.unwrap_or_default();
    let retry = futures::stream::once(async { Event::default().retry(RECONNECT_AFTER) });
    let deadline = tokio::time::sleep(STREAM_LIFETIME);
    let stream = retry
        .chain(events)
        .take_until(async move {
            tokio::select! {
                () = deadline => {}
                () = closing.cancelled() => {}
                () = session_ended.cancelled() => {}
            }
        })
        .map(move |event| {
            let _held = &permits;
            Ok::<_, Infallible>(event)
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use grantmesh_proto::v1::{Account, Member, member};

    fn event(kind: account_event::Kind) -> AccountEvent {
        let member = |id: &str, role: member::Role| Member {
            researcher_id: id.into(),
            role: role as i32,
            ..Member::default()
        };
        AccountEvent {
            kind: kind as i32,
            account: Some(Account {
                account_id: "a1".into(),
                members: vec![
                    member("ada", member::Role::PrincipalInvestigator),
                    member("bob", member::Role::Member),
                ],
                ..Account::default()
            }),
            ..AccountEvent::default()
        }
    }

    #[test]
    fn the_principal_investigators_page_rereads_invitations_when_the_members_change() {
        let membership = LiveEvent::new(event(account_event::Kind::Membership)).unwrap();
        assert!(membership.changes_invitations_of("ada"));
        assert!(
            !membership.changes_invitations_of("bob"),
            "a member's page shows no invitations"
        );
        let snapshot = LiveEvent::new(event(account_event::Kind::Snapshot)).unwrap();
        assert!(
            snapshot.changes_invitations_of("ada"),
            "a reconnect catches up"
        );
        let withdrawal = LiveEvent::new(event(account_event::Kind::Withdrawal)).unwrap();
        assert!(!withdrawal.changes_invitations_of("ada"));
    }

    #[test]
    fn an_event_without_invitations_read_leaves_the_pages_list_alone() {
        let mut live = LiveEvent::new(event(account_event::Kind::Membership)).unwrap();
        let json: serde_json::Value = serde_json::from_str(&live.to_json().unwrap()).unwrap();
        assert_eq!(json["invited"], serde_json::Value::Null);
        live.invited = Some(vec![]);
        let json: serde_json::Value = serde_json::from_str(&live.to_json().unwrap()).unwrap();
        assert_eq!(json["invited"], serde_json::json!([]));
    }
}
