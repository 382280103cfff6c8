//! The portal's pages and streams, and what every one of them shares:
//! sessions, CSRF checks, limits and security headers.
//!
//! Every `POST` is a form from one of our pages and carries the session's
//! CSRF token; a form without it (or with another session's) is refused
//! with 403 before anything is called. Successful posts redirect (303) to
//! the page that shows the result, with a one-time message.

pub mod accounts;
pub mod auth;
pub mod dashboard;
pub mod invitations;
pub mod live;
pub mod proposals;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderValue};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

use crate::sessions::{Researcher, Visitor};
use crate::views::{self, ErrorPage, Home, Nav};
use crate::words::Problem;
use crate::{App, MAX_BODY_BYTES, PAGE_TIMEOUT, assets};

/// Scripts and styles only from this site (no inline script, so an
/// injected `<script>` does not run), no framing, forms post only here.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

pub(crate) fn router(app: Arc<App>) -> Router {
    let pages = Router::new()
        .route("/", get(home))
        .route("/signup", get(auth::signup_form).post(auth::signup))
        .route("/signup/strength", post(auth::password_strength))
        .route("/verify", get(auth::verify_form).post(auth::verify))
        .route("/dev/mail", get(auth::dev_mail))
        .route("/login", get(auth::login_form).post(auth::login))
        .route(
            "/password",
            get(auth::password_form).post(auth::change_password),
        )
        .route("/logout", post(auth::logout))
        .route("/proposals", get(proposals::list).post(proposals::submit))
        .route("/proposals/new", get(proposals::new_form))
        .route("/proposals/{agency}/{id}", get(proposals::show))
        .route("/accounts", get(accounts::list))
        .route("/accounts/{id}", get(accounts::show))
        .route("/accounts/{id}/withdraw", post(accounts::withdraw))
        .route("/accounts/{id}/members", post(accounts::add_member))
        .route(
            "/accounts/{id}/members/{researcher}/remove",
            post(accounts::remove_member),
        )
        .route("/invitations", get(invitations::list))
        .route("/invitations/{id}/accept", post(invitations::accept))
        .route("/invitations/{id}/decline", post(invitations::decline))
        .route("/mesh", get(dashboard::page))
        .route("/mesh.json", get(dashboard::json))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            PAGE_TIMEOUT,
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    // Live streams last long by design; each is bounded by its own limits
    // (per-session and global caps, a lifetime) instead of the page timeout.
    let streams = Router::new()
        .route("/accounts/{id}/events", get(live::account_events))
        .route("/mesh/events", get(dashboard::events));
    Router::new()
        .merge(pages)
        .merge(streams)
        .route("/static/style.css", get(assets::style))
        .route("/static/app.js", get(assets::script))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(not_found)
        .layer(from_fn_with_state(
            Arc::clone(&app),
            crate::sessions::visitor,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .with_state(app)
}

async fn home(State(app): State<Arc<App>>, visitor: Visitor) -> Response {
    if visitor.session.is_some() {
        return Redirect::to("/accounts").into_response();
    }
    views::render(
        StatusCode::OK,
        &Home {
            nav: nav(&app, &visitor),
        },
    )
}

pub(crate) async fn not_found(State(app): State<Arc<App>>, visitor: Visitor) -> Response {
    problem_page(
        &app,
        &visitor,
        "Page not found",
        Problem::new(StatusCode::NOT_FOUND, "There is no page at this address."),
    )
}

/// The header of a page for `visitor` (taking the session's one-time message).
pub(crate) fn nav(app: &App, visitor: &Visitor) -> Nav {
    let flash = visitor.session.as_ref().and_then(|s| s.take_flash());
    Nav {
        user: visitor.session.as_ref().map(|s| s.name.clone()),
        csrf: app.sessions.csrf_token(&visitor.sid),
        flash_error: flash.as_ref().is_some_and(|(_, error)| *error),
        flash: flash.map(|(text, _)| text),
    }
}

/// The header for a signed-in researcher's page.
pub(crate) fn researcher_nav(app: &App, researcher: &Researcher) -> Nav {
    nav(
        app,
        &Visitor {
            sid: researcher.sid.clone(),
            session: Some(Arc::clone(&researcher.session)),
            address: None,
        },
    )
}

/// A page that says what went wrong. A refused token ends the session.
pub(crate) fn problem_page(
    app: &App,
    visitor: &Visitor,
    title: &str,
    problem: Problem,
) -> Response {
    let visitor = if problem.log_in_again {
        app.sessions.end(&visitor.sid);
        Visitor {
            sid: visitor.sid.clone(),
            session: None,
            address: visitor.address,
        }
    } else {
        visitor.clone()
    };
    views::render(
        problem.http,
        &ErrorPage {
            nav: nav(app, &visitor),
            title: title.to_owned(),
            sentence: problem.sentence,
            log_in_again: problem.log_in_again,
        },
    )
}

/// The same for a signed-in researcher.
pub(crate) fn researcher_problem(
    app: &App,
    researcher: &Researcher,
    title: &str,
    problem: Problem,
) -> Response {
    problem_page(
        app,
        &Visitor {
            sid: researcher.sid.clone(),
            session: Some(Arc::clone(&researcher.session)),
            address: None,
        },
        title,
        problem,
    )
}

/// The 403 page for a form whose `token` is not the CSRF token of the
/// visitor's session; `None` when it is.
pub(crate) fn check_csrf(app: &App, visitor: &Visitor, token: &str) -> Option<Response> {
    if app.sessions.csrf_ok(&visitor.sid, token) {
        return None;
    }
    tracing::info!("form refused: missing or wrong CSRF token");
    Some(problem_page(
        app,
        visitor,
        "Form refused",
        Problem::new(
            StatusCode::FORBIDDEN,
            "This form has expired or was not sent from this site, so nothing was done. Reload the page and try again.",
        ),
    ))
}

/// [`check_csrf`] for a signed-in researcher.
pub(crate) fn check_researcher_csrf(
    app: &App,
    researcher: &Researcher,
    token: &str,
) -> Option<Response> {
    check_csrf(
        app,
        &Visitor {
            sid: researcher.sid.clone(),
            session: Some(Arc::clone(&researcher.session)),
            address: None,
        },
        token,
    )
}

/// A fresh idempotency key for a form.
pub(crate) fn fresh_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Whether a form's idempotency key looks like one we made.
pub(crate) fn key_ok(key: &str) -> bool {
    !key.is_empty() && key.len() <= 64 && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}
