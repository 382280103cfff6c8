//! Sign up, verify the email, log in, log out, the sign-up form's password
//! strength hint, and `grantmesh dev`'s mailbox page.
//!
//! Logging in exchanges the email and password for the College's token and
//! keeps it on the server under a new session id (so an id a browser held
//! before is worth nothing after). Signing up always goes on to the
//! verification page, whether or not the email was registered already (the
//! College mails a code, or a notice to the owner); the code entered there
//! makes the researcher and logs them in.
//!
//! The strength hint ([`password_strength`]) runs the College's own check
//! (`grantmesh_auth::check_new_password`, zxcvbn told the name and email)
//! as the researcher types, so what the form says is what the College will
//! decide; the College still checks again on sign-up.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::http::header::SET_COOKIE;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use grantmesh_proto::v1::{
    ChangePasswordRequest, LoginReply, LoginRequest, LogoutRequest, RegisterResearcherRequest,
    VerifyEmailRequest,
};
use serde::{Deserialize, Serialize};
use tonic::Code;

use super::{check_csrf, check_researcher_csrf, nav, researcher_nav};
use crate::App;
use crate::sessions::{Researcher, Session, Sessions, Visitor, safe_next};
use crate::views::{self, DevLetter, DevMail, Login, PasswordChange, PasswordRule, Signup, Verify};
use crate::words;

/// How long a log-in waits before asking a busy College once more.
const LOGIN_RETRY_AFTER: Duration = Duration::from_millis(250);

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
            rule: PasswordRule::COLLEGE,
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
                rule: PasswordRule::COLLEGE,
            },
        )
    };
    if let Some(wait) = too_many_attempts(&app, &visitor) {
        return again(StatusCode::TOO_MANY_REQUESTS, wait);
    }
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
        return again(problem.http, problem.sentence);
    }
    let email: String = percent_encoding::utf8_percent_encode(
        form.email.trim(),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .collect();
    Redirect::to(&format!("/verify?email={email}")).into_response()
}

#[derive(Deserialize)]
pub struct VerifyQuery {
    #[serde(default)]
    email: String,
}

#[derive(Deserialize)]
pub struct VerifyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    password: String,
}

pub async fn verify_form(
    State(app): State<Arc<App>>,
    visitor: Visitor,
    Query(query): Query<VerifyQuery>,
) -> Response {
    views::render(
        StatusCode::OK,
        &Verify {
            nav: nav(&app, &visitor),
            error: None,
            email: query.email,
            dev_mail: app.dev_mail.is_some(),
        },
    )
}

/// The code from the mail comes back: the College makes the researcher,
/// and they are logged in here as by a login.
pub async fn verify(
    State(app): State<Arc<App>>,
    visitor: Visitor,
    Form(form): Form<VerifyForm>,
) -> Response {
    if let Some(refused) = check_csrf(&app, &visitor, &form.csrf) {
        return refused;
    }
    let again = |status: StatusCode, error: String| {
        views::render(
            status,
            &Verify {
                nav: nav(&app, &visitor),
                error: Some(error),
                email: form.email.clone(),
                dev_mail: app.dev_mail.is_some(),
            },
        )
    };
    if let Some(wait) = too_many_attempts(&app, &visitor) {
        return again(StatusCode::TOO_MANY_REQUESTS, wait);
    }
    let verified = app
        .mesh
        .college(
            None,
            VerifyEmailRequest {
                email: form.email.trim().to_owned(),
                code: form.code.clone(),
                password: form.password.clone(),
            },
            |mut c, r| async move { c.verify_email(r).await },
        )
        .await;
    let started = verified.and_then(|reply| start_session(&app, reply));
    match started {
        Ok(sid) => {
            app.sessions.end(&visitor.sid);
            signed_in(
                &app,
                &sid,
                "/accounts",
                "Welcome to grantmesh! Your email is verified and you are logged in.",
            )
        }
        Err(status) => {
            let problem = words::explain(&status);
            let http = if problem.http == StatusCode::UNAUTHORIZED {
                StatusCode::OK
            } else {
                problem.http
            };
            again(http, problem.sentence)
        }
    }
}

/// `grantmesh dev`'s mailbox: what the colleges kept in its outbox, newest
/// first. Not served (404) by a portal without one.
pub async fn dev_mail(State(app): State<Arc<App>>, visitor: Visitor) -> Response {
    let Some(outbox) = app.dev_mail.clone() else {
        return super::not_found(State(app), visitor).await;
    };
    let read = {
        let outbox = outbox.clone();
        tokio::task::spawn_blocking(move || grantmesh_mail::outbox::read(&outbox)).await
    };
    let letters = match read {
        Ok(Ok(letters)) => letters,
        _ => Vec::new(),
    };
    let letters = letters
        .into_iter()
        .rev()
        .take(100)
        .map(|letter| DevLetter {
            code: grantmesh_auth::signup::code_in(&letter.body),
            sent: humantime::format_rfc3339_seconds(letter.written).to_string(),
            to: letter.to,
            subject: letter.subject,
            body: letter.body,
        })
        .collect();
    views::render(
        StatusCode::OK,
        &DevMail {
            nav: nav(&app, &visitor),
            outbox: outbox.display().to_string(),
            letters,
        },
    )
}

/// What the sign-up form's script sends as the researcher types.
#[derive(Deserialize)]
pub struct StrengthForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

/// The hint for one password, as the form's script reads it (JSON).
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Strength {
    /// Whether the College will accept the password.
    pub ok: bool,
    /// zxcvbn's score (0–4) of a password refused as too easy to guess.
    pub score: Option<u8>,
    /// What to tell the researcher, in a sentence.
    pub message: String,
}

/// The College's check of `password` for a researcher with this name and
/// email, as a hint. Called with the same inputs the College uses on
/// sign-up (the name and email as typed, trimmed), so the two agree.
pub fn strength(password: &str, name: &str, email: &str) -> Strength {
    let inputs = [name.trim(), email.trim()];
    match grantmesh_auth::check_new_password("this password", password, &inputs) {
        Ok(()) => Strength {
            ok: true,
            score: None,
            message: "Strong enough: the College will accept this password.".to_owned(),
        },
        Err(refused) => Strength {
            ok: false,
            score: refused_score(refused.message()),
            message: words::sentence(refused.message()),
        },
    }
}

/// The score in a refusal's "(strength 2 of 4, …)", when it has one (a
/// password of the wrong length is refused before it is scored).
fn refused_score(message: &str) -> Option<u8> {
    let (_, after) = message.split_once("(strength ")?;
    let score = after.chars().next()?.to_digit(10)?;
    u8::try_from(score).ok()
}

/// The strength hint: the College's verdict on a password being typed.
/// A form of our own page (CSRF-checked, so no other site can use the
/// portal as a password oracle), sent by POST so the password stays out of
/// URLs and logs; at most [`crate::MAX_STRENGTH_CHECKS`] run at once.
pub async fn password_strength(
    State(app): State<Arc<App>>,
    visitor: Visitor,
    Form(form): Form<StrengthForm>,
) -> Response {
    if !app.sessions.csrf_ok(&visitor.sid, &form.csrf) {
        return (StatusCode::FORBIDDEN, "reload the page to check a password").into_response();
    }
    let Ok(_permit) = Arc::clone(&app.strength_checks).try_acquire_owned() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "busy; the next keystroke asks again",
        )
            .into_response();
    };
    // zxcvbn takes up to a few milliseconds: off the async threads, as at the College.
    let judged =
        tokio::task::spawn_blocking(move || strength(&form.password, &form.name, &form.email))
            .await;
    match judged {
        Ok(strength) => Json(strength).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the check was interrupted",
        )
            .into_response(),
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
    if let Some(wait) = too_many_attempts(&app, &visitor) {
        return views::render(
            StatusCode::TOO_MANY_REQUESTS,
            &Login {
                nav: nav(&app, &visitor),
                error: Some(wait),
                email: form.email,
                next: safe_next(&form.next),
            },
        );
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
pub struct PasswordForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
}

pub async fn password_form(State(app): State<Arc<App>>, researcher: Researcher) -> Response {
    views::render(
        StatusCode::OK,
        &PasswordChange {
            nav: researcher_nav(&app, &researcher),
            error: None,
            rule: PasswordRule::COLLEGE,
        },
    )
}

/// The College changes the password and ends every session of the
/// researcher (other browsers are logged out within a second); this
/// browser goes on in the new session the College opened.
pub async fn change_password(
    State(app): State<Arc<App>>,
    researcher: Researcher,
    Form(form): Form<PasswordForm>,
) -> Response {
    if let Some(refused) = check_researcher_csrf(&app, &researcher, &form.csrf) {
        return refused;
    }
    let changed = app
        .mesh
        .college(
            Some(&researcher.session.token),
            ChangePasswordRequest {
                current_password: form.current.clone(),
                new_password: form.new.clone(),
            },
            |mut c, r| async move { c.change_password(r).await },
        )
        .await;
    match changed.and_then(|reply| start_session(&app, reply)) {
        Ok(sid) => {
            app.sessions.end(&researcher.sid);
            signed_in(
                &app,
                &sid,
                "/accounts",
                "Your password is changed; every other session of yours has ended.",
            )
        }
        Err(status) => {
            let problem = words::explain(&status);
            let wrong = status.code() == Code::Unauthenticated
                && status.message().contains("current password");
            if problem.log_in_again && !wrong {
                return super::researcher_problem(&app, &researcher, "Password", problem);
            }
            let error = if wrong {
                "The current password is not right; nothing was changed.".to_owned()
            } else {
                format!("Nothing was changed. {}", problem.sentence)
            };
            let http = if problem.http == StatusCode::UNAUTHORIZED {
                StatusCode::OK
            } else {
                problem.http
            };
            views::render(
                http,
                &PasswordChange {
                    nav: researcher_nav(&app, &researcher),
                    error: Some(error),
                    rule: PasswordRule::COLLEGE,
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
    // The College ends the session (its tokens are refused at every
    // College within seconds), then the portal forgets it.
    if let Some(session) = &visitor.session {
        let ended = app
            .mesh
            .college(
                Some(&session.token),
                LogoutRequest {
                    refresh_token: session.refresh_token.clone(),
                },
                |mut c, r| async move { c.logout(r).await },
            )
            .await;
        if let Err(status) = ended {
            tracing::warn!(error = %status.message(), "the colleges could not be told of a log-out");
        }
    }
    app.sessions.end(&visitor.sid);
    let fresh = Sessions::new_id();
    (
        [(SET_COOKIE, app.sessions.cookie(&fresh))],
        Redirect::to("/"),
    )
        .into_response()
}

/// Counts a login or sign-up from the visitor's address: what to tell them
/// when it has used up its rate ([`crate::VISITOR_ATTEMPTS_PER_MINUTE`]),
/// before anything reaches the College.
fn too_many_attempts(app: &App, visitor: &Visitor) -> Option<String> {
    use governor::clock::{Clock as _, DefaultClock};
    let address = visitor.address?;
    let limiter = &app.visitor_attempts;
    if limiter.len() > 10_000 {
        // Addresses whose buckets are full again are as good as new.
        limiter.retain_recent();
    }
    let wait = limiter.check_key(&address).err()?;
    let seconds = wait
        .wait_time_from(DefaultClock::default().now())
        .as_secs()
        .max(1);
    Some(format!(
        "Too many logins and sign-ups from your address (at most {} a minute). Try again in {seconds} s.",
        crate::VISITOR_ATTEMPTS_PER_MINUTE
    ))
}

/// Logs in at the College and keeps the session; returns its new id.
async fn log_in(app: &App, email: &str, password: &str) -> Result<String, tonic::Status> {
    let request = LoginRequest {
        email: email.trim().to_owned(),
        password: password.to_owned(),
    };
    let login = || {
        app.mesh.college(
            None,
            request.clone(),
            |mut c, r| async move { c.login(r).await },
        )
    };
    // A college busy at this instant (every caller's share taken, its
    // password checks queued up) is asked once more, shortly after: the
    // person at the browser should not see a flood's refusal. The retry
    // counts against the College's attempt limits like any other.
    let reply: LoginReply = match login().await {
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::ResourceExhausted | tonic::Code::Unavailable
            ) =>
        {
            tracing::info!(error = %status.message(), "a college was busy with a log-in; asking once more");
            tokio::time::sleep(LOGIN_RETRY_AFTER).await;
            login().await?
        }
        answer => answer?,
    };
    start_session(app, reply)
}

/// Keeps the session a College opened (a login, a verified sign-up);
/// returns its new id.
fn start_session(app: &App, reply: LoginReply) -> Result<String, tonic::Status> {
    let researcher = reply.researcher.unwrap_or_default();
    let time = |t: Option<prost_types::Timestamp>| {
        t.and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or_else(|| SystemTime::now() + FALLBACK_SESSION)
    };
    let token_expires_at = time(reply.expires_at);
    let session = Session::new(
        crate::sessions::Tokens {
            token: reply.token,
            token_expires_at,
            refresh_token: reply.refresh_token,
        },
        researcher.researcher_id,
        researcher.name,
        time(reply.refresh_expires_at).max(token_expires_at),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_refuses_what_the_college_refuses_and_says_why() {
        let short = strength("Tr0ub4!", "Ada Lovelace", "ada@uni.edu");
        assert!(!short.ok);
        assert_eq!(short.score, None);
        assert!(
            short.message.contains("10 to 256 characters"),
            "{}",
            short.message
        );

        let common = strength("password1234", "Ada Lovelace", "ada@uni.edu");
        assert!(!common.ok);
        assert!(common.score.is_some_and(|s| s < 3), "{common:?}");
        assert!(
            common
                .message
                .starts_with("This password is too easy to guess"),
            "{}",
            common.message
        );
        assert!(!common.message.contains("password1234"));
    }

    #[test]
    fn the_researchers_own_name_counts_against_a_password_as_at_the_college() {
        let own = strength("adalinda2024", "Adalinda Lovelace", "adalinda@uni.edu");
        assert!(!own.ok, "{own:?}");
        for password in [
            "adalinda2024",
            "correct horse battery",
            "zebra quantum marmalade",
            "qwertyuiop12",
        ] {
            let inputs = ["Adalinda Lovelace", "adalinda@uni.edu"];
            assert_eq!(
                strength(password, inputs[0], inputs[1]).ok,
                grantmesh_auth::check_new_password("password", password, &inputs).is_ok(),
                "{password}"
            );
        }
    }

    #[test]
    fn a_passphrase_is_strong_enough() {
        let good = strength("correct horse battery", "Ada Lovelace", "ada@uni.edu");
        assert_eq!((good.ok, good.score), (true, None), "{good:?}");
    }
}
