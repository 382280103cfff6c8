//! Who a browser is: a random session id in a cookie, the researcher's
//! grantmesh token kept on the server under that id.
//!
//! The cookie (`grantmesh_session`) is `HttpOnly` (page scripts cannot read
//! it), `SameSite=Strict` (other sites' pages cannot make the browser send
//! it) and `Path=/`; `Secure` when [`crate::WebSettings::secure_cookies`].
//! It carries 256 random bits and nothing else, so it needs no signing: the
//! token itself never reaches the browser. Every visitor gets an id on first
//! contact, before logging in, so that the log-in and sign-up forms carry a
//! CSRF token too; logging in issues a new id (an id planted before login
//! is worth nothing after it), logging out forgets the session.
//!
//! A CSRF token is `HMAC-SHA256(server key, session id)`: bound to the
//! session, checked in constant time, and costing no server memory for
//! visitors who never log in. The key is made at start-up, like the
//! sessions, which live in memory: a restart logs everyone out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::App;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "grantmesh_session";

/// Signed-in sessions held at once. Each is a few hundred bytes; the bound
/// is there so that logging in in a loop cannot grow the server without
/// limit. Expired sessions are dropped first; past the bound, log-ins are
/// refused until some expire or log out.
pub const MAX_SESSIONS: usize = 10_000;

/// Live streams (account pages, dashboards) one session may hold open: a
/// few tabs are normal, hundreds are a browser (or a script) holding the
/// server's College streams hostage.
pub const MAX_STREAMS_PER_SESSION: usize = 4;

/// Sessions one researcher may hold at once: a few browsers and devices.
/// Logging in once more ends that researcher's session nearest its end,
/// so a script logging in in a loop holds this many, not the portal's all.
pub const MAX_SESSIONS_PER_RESEARCHER: usize = 16;

/// Random bytes in a session id: 256 bits, unguessable.
const SID_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// A signed-in researcher.
pub struct Session {
    /// The access token the College issued (at login or at the last
    /// refresh); never sent to the browser.
    pub token: String,
    /// When the College stops accepting `token`: [`Sessions::renew`] gets a
    /// new one before then.
    pub token_expires_at: SystemTime,
    /// Exchanged for the next access token; never sent to the browser.
    pub refresh_token: String,
    pub researcher_id: String,
    pub name: String,
    /// When the College's session ends (it asks for the password again).
    pub expires_at: SystemTime,
    /// Held while the session's tokens are being renewed, so two pages of
    /// one browser do not both spend the refresh token (the second would
    /// look like a stolen copy, and end the session).
    pub renewing: Arc<tokio::sync::Mutex<()>>,
    /// This session's share of live streams ([`MAX_STREAMS_PER_SESSION`]).
    pub streams: Arc<Semaphore>,
    /// Cancelled when the session ends (log-out): its live streams stop.
    pub ended: CancellationToken,
    /// A message for the next page shown (after a redirect), and whether it
    /// reports a failure.
    flash: Mutex<Option<(String, bool)>>,
}

/// How long before its access token expires a session renews it.
pub const RENEW_AHEAD: std::time::Duration = std::time::Duration::from_secs(120);

/// A session's tokens, as the College hands them out.
pub struct Tokens {
    pub token: String,
    pub token_expires_at: SystemTime,
    pub refresh_token: String,
}

impl Session {
    pub fn new(
        tokens: Tokens,
        researcher_id: String,
        name: String,
        expires_at: SystemTime,
    ) -> Self {
        Self {
            token: tokens.token,
            token_expires_at: tokens.token_expires_at,
            refresh_token: tokens.refresh_token,
            researcher_id,
            name,
            expires_at,
            renewing: Arc::new(tokio::sync::Mutex::new(())),
            streams: Arc::new(Semaphore::new(MAX_STREAMS_PER_SESSION)),
            ended: CancellationToken::new(),
            flash: Mutex::new(None),
        }
    }

    /// Whether the access token is due for renewal at `now`.
    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        !self.refresh_token.is_empty() && self.token_expires_at <= now + RENEW_AHEAD
    }

    /// This session with new tokens: the same streams, log-out signal and
    /// pending message.
    fn renewed(&self, tokens: Tokens) -> Self {
        Self {
            token: tokens.token,
            token_expires_at: tokens.token_expires_at,
            refresh_token: tokens.refresh_token,
            researcher_id: self.researcher_id.clone(),
            name: self.name.clone(),
            expires_at: self.expires_at,
            renewing: Arc::clone(&self.renewing),
            streams: Arc::clone(&self.streams),
            ended: self.ended.clone(),
            flash: Mutex::new(self.take_flash()),
        }
    }

    /// Leaves `message` for the next page.
    pub fn flash(&self, message: impl Into<String>) {
        *self.flash.lock().expect("poisoned") = Some((message.into(), false));
    }

    /// Leaves a failure's `message` for the next page.
    pub fn flash_error(&self, message: impl Into<String>) {
        *self.flash.lock().expect("poisoned") = Some((message.into(), true));
    }

    /// The message left for this page, once.
    pub fn take_flash(&self) -> Option<(String, bool)> {
        self.flash.lock().expect("poisoned").take()
    }
}

/// Why a session could not be started.
#[derive(Debug, thiserror::Error)]
#[error("the portal holds {MAX_SESSIONS} sessions already; try again later")]
pub struct Full;

/// Every signed-in session, by id.
pub struct Sessions {
    /// Signs CSRF tokens; made at start-up.
    key: [u8; 32],
    secure: bool,
    map: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    pub fn new(secure: bool) -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self {
            key,
            secure,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh, unguessable session id.
    pub fn new_id() -> String {
        let mut bytes = [0u8; SID_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn mac(&self, sid: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("any key length works");
        mac.update(b"csrf\0");
        mac.update(sid.as_bytes());
        mac
    }

    /// The CSRF token forms of session `sid` carry.
    pub fn csrf_token(&self, sid: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(sid).finalize().into_bytes())
    }

    /// Whether `token` is session `sid`'s CSRF token (compared in constant time).
    pub fn csrf_ok(&self, sid: &str, token: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(token)
            .is_ok_and(|bytes| self.mac(sid).verify_slice(&bytes).is_ok())
    }

    /// The signed-in session `sid`, unless it has expired (then it is dropped).
    pub fn get(&self, sid: &str) -> Option<Arc<Session>> {
        let mut map = self.map.lock().expect("poisoned");
        let session = map.get(sid)?;
        if session.expires_at <= SystemTime::now() {
            if let Some(session) = map.remove(sid) {
                session.ended.cancel();
            }
            return None;
        }
        Some(Arc::clone(session))
    }

    /// Keeps `session` under a new id, which is returned.
    pub fn start(&self, session: Session) -> Result<String, Full> {
        let mut map = self.map.lock().expect("poisoned");
        if map.len() >= MAX_SESSIONS {
            let now = SystemTime::now();
            map.retain(|_, s| s.expires_at > now);
        }
        let mut theirs: Vec<(SystemTime, String)> = map
            .iter()
            .filter(|(_, s)| s.researcher_id == session.researcher_id)
            .map(|(sid, s)| (s.expires_at, sid.clone()))
            .collect();
        if theirs.len() >= MAX_SESSIONS_PER_RESEARCHER {
            theirs.sort();
            for (_, sid) in &theirs[..=theirs.len() - MAX_SESSIONS_PER_RESEARCHER] {
                if let Some(ended) = map.remove(sid) {
                    ended.ended.cancel();
                }
            }
        }
        if map.len() >= MAX_SESSIONS {
            return Err(Full);
        }
        let sid = Self::new_id();
        map.insert(sid.clone(), Arc::new(session));
        Ok(sid)
    }

    /// Puts `tokens` into session `sid` (still signed in as `old`); the
    /// session as it is now.
    pub fn renew(&self, sid: &str, old: &Arc<Session>, tokens: Tokens) -> Option<Arc<Session>> {
        let mut map = self.map.lock().expect("poisoned");
        let current = map.get(sid)?;
        if !Arc::ptr_eq(current, old) {
            return Some(Arc::clone(current));
        }
        let renewed = Arc::new(old.renewed(tokens));
        map.insert(sid.to_owned(), Arc::clone(&renewed));
        Some(renewed)
    }

    /// Forgets session `sid`, and ends its live streams.
    pub fn end(&self, sid: &str) {
        if let Some(session) = self.map.lock().expect("poisoned").remove(sid) {
            session.ended.cancel();
        }
    }

    /// How many sessions are held (for tests and, later, metrics).
    pub fn len(&self) -> usize {
        self.map.lock().expect("poisoned").len()
    }

    /// The `Set-Cookie` value that gives the browser session id `sid`.
    pub fn cookie(&self, sid: &str) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{COOKIE_NAME}={sid}; Path=/; HttpOnly; SameSite=Strict{secure}"
        ))
        .expect("ids are URL-safe base64")
    }
}

/// The session id a request's cookie names, when it looks like one of ours.
fn cookie_sid(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())
        .filter(|value| {
            URL_SAFE_NO_PAD
                .decode(value)
                .is_ok_and(|b| b.len() == SID_BYTES)
        })
}

/// Whoever sent this request: their session id, and their session when signed in.
#[derive(Clone)]
pub struct Visitor {
    pub sid: String,
    pub session: Option<Arc<Session>>,
    /// The browser's address, when the portal's own server accepted it.
    pub address: Option<std::net::IpAddr>,
}

/// Middleware: gives every request a [`Visitor`], and a browser without a
/// session cookie its id (unless the page set a cookie itself, as login does).
pub async fn visitor(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let (sid, new) = match cookie_sid(request.headers()) {
        Some(sid) => (sid, false),
        None => (Sessions::new_id(), true),
    };
    let session = match app.sessions.get(&sid) {
        Some(session) if session.needs_renewal(SystemTime::now()) => {
            renew(&app, &sid, session).await
        }
        session => session,
    };
    let address = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    request.extensions_mut().insert(Visitor {
        sid: sid.clone(),
        session,
        address,
    });
    let mut response = next.run(request).await;
    let page_set_cookie = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .any(|v| v.as_bytes().starts_with(COOKIE_NAME.as_bytes()));
    if new && !page_set_cookie {
        response
            .headers_mut()
            .append(SET_COOKIE, app.sessions.cookie(&sid));
    }
    response
}

/// Renews session `sid`'s access token with its refresh token (one page at
/// a time); the session as it is then, or `None` when the College has ended
/// it (logged out elsewhere, expired, or its refresh token copied).
async fn renew(app: &App, sid: &str, session: Arc<Session>) -> Option<Arc<Session>> {
    let _one_at_a_time = session.renewing.lock().await;
    // Another page of this browser may have renewed it meanwhile.
    let current = app.sessions.get(sid)?;
    if !current.needs_renewal(SystemTime::now()) {
        return Some(current);
    }
    let reply = app
        .mesh
        .college(
            None,
            grantmesh_proto::v1::RefreshRequest {
                refresh_token: current.refresh_token.clone(),
            },
            |mut c, r| async move { c.refresh(r).await },
        )
        .await;
    match reply {
        Ok(reply) => {
            let tokens = Tokens {
                token: reply.token,
                token_expires_at: reply
                    .expires_at
                    .and_then(|t| SystemTime::try_from(t).ok())
                    .unwrap_or_else(SystemTime::now),
                refresh_token: reply.refresh_token,
            };
            app.sessions.renew(sid, &current, tokens)
        }
        Err(status) if status.code() == tonic::Code::Unauthenticated => {
            tracing::info!(
                reason = status.message(),
                "the college ended a portal session"
            );
            app.sessions.end(sid);
            None
        }
        // No college answers now: keep the session; its pages will say so.
        Err(_) => Some(current),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = StatusCode;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Visitor>()
            .cloned()
            .ok_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// A signed-in researcher; pages that need one send others to log in.
#[derive(Clone)]
pub struct Researcher {
    pub sid: String,
    pub session: Arc<Session>,
}

/// Sends a browser that is not signed in to the log-in page, to come back after.
pub struct LogInFirst(String);

impl IntoResponse for LogInFirst {
    fn into_response(self) -> Response {
        Redirect::to(&format!("/login?next={}", self.0)).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Researcher {
    type Rejection = LogInFirst;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let visitor = Visitor::from_request_parts(parts, state)
            .await
            .map_err(|_| LogInFirst(String::from("/")))?;
        match visitor.session {
            Some(session) => Ok(Researcher {
                sid: visitor.sid,
                session,
            }),
            None => Err(LogInFirst(safe_next(parts.uri.path()))),
        }
    }
}

/// `path` when it is a path on this site, else `/`: `next=` must not
/// become a redirect to another site.
pub fn safe_next(path: &str) -> String {
    let ok = path.starts_with('/')
        && !path.starts_with("//")
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c));
    if ok { path.to_owned() } else { "/".to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tokens() -> Tokens {
        Tokens {
            token: "t".into(),
            token_expires_at: SystemTime::now() + Duration::from_secs(900),
            refresh_token: "r".into(),
        }
    }

    fn session(expires_in: Duration) -> Session {
        Session::new(
            tokens(),
            "r".into(),
            "Ada".into(),
            SystemTime::now() + expires_in,
        )
    }

    #[test]
    fn logging_in_past_the_per_researcher_limit_ends_that_researchers_oldest_session() {
        let sessions = Sessions::new(false);
        let first = sessions.start(session(Duration::from_secs(60))).unwrap();
        let first_ended = sessions.get(&first).unwrap().ended.clone();
        let rest: Vec<_> = (1..MAX_SESSIONS_PER_RESEARCHER)
            .map(|n| {
                sessions
                    .start(session(Duration::from_secs(60 + n as u64)))
                    .unwrap()
            })
            .collect();
        let other = Session::new(
            tokens(),
            "someone-else".into(),
            "Bo".into(),
            SystemTime::now() + Duration::from_secs(1),
        );
        let other = sessions.start(other).unwrap();
        assert_eq!(sessions.len(), MAX_SESSIONS_PER_RESEARCHER + 1);

        let newest = sessions.start(session(Duration::from_secs(3600))).unwrap();
        assert_eq!(sessions.len(), MAX_SESSIONS_PER_RESEARCHER + 1);
        assert!(
            sessions.get(&first).is_none(),
            "the one nearest its end went"
        );
        assert!(first_ended.is_cancelled(), "and its live streams were told");
        assert!(sessions.get(&newest).is_some());
        assert!(sessions.get(&rest[0]).is_some());
        assert!(sessions.get(&other).is_some(), "another researcher's stays");
    }

    #[test]
    fn a_renewed_session_keeps_its_streams_and_log_out_signal_and_a_stale_renewal_loses() {
        let sessions = Sessions::new(false);
        let sid = sessions.start(session(Duration::from_secs(3600))).unwrap();
        let old = sessions.get(&sid).unwrap();
        let fresh = Tokens {
            token: "t2".into(),
            token_expires_at: SystemTime::now() + Duration::from_secs(900),
            refresh_token: "r2".into(),
        };
        let renewed = sessions.renew(&sid, &old, fresh).unwrap();
        assert_eq!(renewed.token, "t2");
        assert!(Arc::ptr_eq(&renewed.streams, &old.streams));
        // A renewal from the session as it was before is not applied twice.
        let again = sessions.renew(&sid, &old, tokens()).unwrap();
        assert_eq!(again.token, "t2");
        sessions.end(&sid);
        assert!(
            old.ended.is_cancelled(),
            "the old handle hears of the log-out"
        );
    }

    #[test]
    fn a_csrf_token_is_accepted_for_its_own_session_only() {
        let sessions = Sessions::new(false);
        let (a, b) = (Sessions::new_id(), Sessions::new_id());
        let token = sessions.csrf_token(&a);
        assert!(sessions.csrf_ok(&a, &token));
        assert!(!sessions.csrf_ok(&b, &token));
        assert!(!sessions.csrf_ok(&a, ""));
        assert!(!sessions.csrf_ok(&a, "not base64 !"));
        assert!(
            !Sessions::new(false).csrf_ok(&a, &token),
            "another server's key"
        );
    }

    #[test]
    fn an_expired_session_is_gone() {
        let sessions = Sessions::new(false);
        let live = sessions.start(session(Duration::from_secs(60))).unwrap();
        let dead = sessions.start(session(Duration::ZERO)).unwrap();
        assert!(sessions.get(&live).is_some());
        assert!(sessions.get(&dead).is_none());
        let ended = sessions.get(&live).unwrap().ended.clone();
        sessions.end(&live);
        assert!(sessions.get(&live).is_none());
        assert!(ended.is_cancelled(), "its live streams are told");
    }

    #[test]
    fn the_cookie_is_http_only_and_same_site_strict() {
        let cookie = Sessions::new(true).cookie("abc");
        let text = cookie.to_str().unwrap();
        assert!(text.starts_with("grantmesh_session=abc;"));
        for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(text.contains(flag), "{text}");
        }
        assert!(
            !Sessions::new(false)
                .cookie("abc")
                .to_str()
                .unwrap()
                .contains("Secure")
        );
    }

    #[test]
    fn only_well_formed_ids_are_read_from_the_cookie_header() {
        let id = Sessions::new_id();
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE_NAME}={id}")).unwrap(),
        );
        assert_eq!(cookie_sid(&headers), Some(id));
        headers.insert(COOKIE, HeaderValue::from_static("grantmesh_session=short"));
        assert_eq!(cookie_sid(&headers), None);
    }

    #[test]
    fn next_paths_stay_on_this_site() {
        assert_eq!(safe_next("/accounts/abc-1"), "/accounts/abc-1");
        assert_eq!(safe_next("//evil.example/x"), "/");
        assert_eq!(safe_next("https://evil.example"), "/");
        assert_eq!(safe_next("/a?b=<script>"), "/");
    }
}
