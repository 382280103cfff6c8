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
use grantmesh_proto::v1::{AccountEvent, WatchAccountRequest, account_event};
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
#[derive(Serialize)]
struct LiveEvent {
    /// "snapshot", "withdrawal", "membership" or "expired".
    kind: &'static str,
    account: AccountView,
    transaction: Option<TransactionRow>,
}

fn to_json(event: AccountEvent) -> Option<String> {
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
        .map(|t| TransactionRow::new(t, &account.members));
    serde_json::to_string(&LiveEvent {
        kind,
        account,
        transaction,
    })
    .ok()
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
    let stream = futures::stream::once(async move { first })
        .chain(rest)
        .filter_map(|event| async move { to_json(event) })
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
