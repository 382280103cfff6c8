//! Sign up, log in, log out.
//!
//! Logging in exchanges the email and password for the College's token and
//! keeps it on the server under a new session id (so an id a browser held
//! before is worth nothing after). Signing up logs the new researcher in.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::http::header::SET_COOKIE;
use axum::response::{IntoResponse, Redirect, Response};
use grantmesh_proto::v1::{LoginReply, LoginRequest, RegisterResearcherRequest};
use serde::Deserialize;
use tonic::Code;

use super::{check_csrf, nav};
use crate::App;
use crate::sessions::{Session, Sessions, Visitor, safe_next};
use crate::views::{self, Login, Signup};
use crate::words;

/// How long a session lasts when the College does not say when its token expires.
const FALLBACK_SESSION: Duration = Duration::from_secs(60 * 60);

#[derive(Deserialize)]
pub struct SignupForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

#[derive(Deserialize)]
pub struct Next {
    next: Option<String>,
}

pub async fn signup_form(State(app): State<Arc<App>>, visitor: Visitor) -> Response {
    views::render(
        StatusCode::OK,
        &Signup {
            nav: nav(&app, &visitor),
            error: None,
            name: String::new(),
            email: String::new(),
        },
    )
}

pub async fn signup(
    State(app): State<Arc<App>>,
    visitor: Visitor,
    Form(form): Form<SignupForm>,
) -> Response {
    if let Some(refused) = check_csrf(&app, &visitor, &form.csrf) {
        return refused;
    }
    let again = |status: StatusCode, error: String| {
        views::render(
            status,
            &Signup {
                nav: nav(&app, &visitor),
                error: Some(error),
                name: form.name.clone(),
                email: form.email.clone(),
            },
        )
    };
    let registered = app
        .mesh
        .college(
            None,
            RegisterResearcherRequest {
                name: form.name.trim().to_owned(),
                email: form.email.trim().to_owned(),
                password: form.password.clone(),
            },
            |mut c, r| async move { c.register_researcher(r).await },
        )
        .await;
    if let Err(status) = registered {
        let problem = words::explain(&status);
        let sentence = if status.code() == Code::AlreadyExists {
            format!(
                "{} If it is yours, log in instead.",
                problem.sentence.trim_end()
            )
        } else {
            problem.sentence
        };
        return again(problem.http, sentence);
    }
    match log_in(&app, &form.email, &form.password).await {
        Ok(sid) => signed_in(
            &app,
            &sid,
            "/accounts",
            "Welcome to grantmesh! You are signed up and logged in.",
        ),
        Err(status) => again(
            words::explain(&status).http,
            format!(
                "You are signed up, but logging in failed: {}",
                words::explain(&status).sentence
            ),
        ),
    }
}

pub async fn login_form(
    State(app): State<Arc<App>>,
    visitor: Visitor,
    Query(next): Query<Next>,
) -> Response {
    if visitor.session.is_some() {
        return Redirect::to("/accounts").into_response();
    }
    views::render(
        StatusCode::OK,
        &Login {
            nav: nav(&app, &visitor),
            error: None,
            email: String::new(),
            next: safe_next(next.next.as_deref().unwrap_or("/accounts")),
        },
    )
}

pub async fn login(
    State(app): State<Arc<App>>,
    visitor: Visitor,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Some(refused) = check_csrf(&app, &visitor, &form.csrf) {
        return refused;
    }
    match log_in(&app, &form.email, &form.password).await {
        Ok(sid) => {
            app.sessions.end(&visitor.sid);
            let next = match safe_next(&form.next).as_str() {
                "/" => "/accounts".to_owned(),
                next => next.to_owned(),
            };
            signed_in(&app, &sid, &next, "")
        }
        Err(status) => {
            let problem = words::explain(&status);
            let error = match status.code() {
                Code::Unauthenticated | Code::NotFound | Code::PermissionDenied => {
                    "That email and password do not match a researcher. Check them and try again."
                        .to_owned()
                }
                _ => problem.sentence,
            };
            let http = if problem.http == StatusCode::UNAUTHORIZED {
                StatusCode::OK
            } else {
                problem.http
            };
            views::render(
                http,
                &Login {
                    nav: nav(&app, &visitor),
                    error: Some(error),
                    email: form.email,
                    next: safe_next(&form.next),
                },
            )
        }
    }
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(
    State(app): State<Arc<App>>,
    visitor: Visitor,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(refused) = check_csrf(&app, &visitor, &form.csrf) {
        return refused;
    }
    app.sessions.end(&visitor.sid);
    let fresh = Sessions::new_id();
    (
        [(SET_COOKIE, app.sessions.cookie(&fresh))],
        Redirect::to("/"),
    )
        .into_response()
}

/// Logs in at the College and keeps the session; returns its new id.
async fn log_in(app: &App, email: &str, password: &str) -> Result<String, tonic::Status> {
    let reply: LoginReply = app
        .mesh
        .college(
            None,
            LoginRequest {
                email: email.trim().to_owned(),
                password: password.to_owned(),
            },
            |mut c, r| async move { c.login(r).await },
        )
        .await?;
    let researcher = reply.researcher.unwrap_or_default();
    let expires_at = reply
        .expires_at
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or_else(|| SystemTime::now() + FALLBACK_SESSION);
    let session = Session::new(
        reply.token,
        researcher.researcher_id,
        researcher.name,
        expires_at,
    );
    app.sessions
        .start(session)
        .map_err(|full| tonic::Status::resource_exhausted(full.to_string()))
}

/// Gives the browser session `sid` and sends it on to `next`.
fn signed_in(app: &App, sid: &str, next: &str, message: &str) -> Response {
    if !message.is_empty()
        && let Some(session) = app.sessions.get(sid)
    {
        session.flash(message);
    }
    ([(SET_COOKIE, app.sessions.cookie(sid))], Redirect::to(next)).into_response()
}
