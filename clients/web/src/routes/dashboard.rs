//! The mesh dashboard: a page whose script renders the monitor's view
//! ([`crate::monitor`]), sent over Server-Sent Events on every change.
//!
//! The dashboard shows addresses and labels, which the registry hands to
//! any client anyway, so it needs no login; its streams count against the
//! global cap and, for a signed-in browser, against the session's.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use tokio_stream::wrappers::WatchStream;

use super::nav;
use crate::App;
use crate::sessions::Visitor;
use crate::views::{self, MeshPage};

/// Dashboards open at once by browsers that are not signed in (all of
/// them together): operators, not the public, watch the mesh.
pub const MAX_ANONYMOUS_DASHBOARDS: usize = 32;

pub async fn page(State(app): State<Arc<App>>, visitor: Visitor) -> Response {
    views::render(
        StatusCode::OK,
        &MeshPage {
            nav: nav(&app, &visitor),
        },
    )
}

pub async fn json(State(app): State<Arc<App>>) -> Response {
    Json(app.monitor.now().as_ref().clone()).into_response()
}

pub async fn events(State(app): State<Arc<App>>, visitor: Visitor) -> Response {
    let own = match &visitor.session {
        Some(session) => Arc::clone(&session.streams).try_acquire_owned(),
        None => Arc::clone(&app.anonymous_dashboards).try_acquire_owned(),
    };
    let Ok(own) = own else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many dashboards are open; close some",
        )
            .into_response();
    };
    let Ok(global) = Arc::clone(&app.live_streams).try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live pages are open",
        )
            .into_response();
    };
    let views = WatchStream::new(app.monitor.subscribe()).filter_map(|view| async move {
        serde_json::to_string(view.as_ref())
            .ok()
            .map(|json| Event::default().event("mesh").data(json))
    });
    let ended = visitor.session.as_ref().map(|s| s.ended.clone());
    super::live::relay(views, app.closing.clone(), ended, (own, global))
}
