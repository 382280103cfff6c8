//! The researcher portal and the mesh dashboard: grantmesh in a browser.
//!
//! A [`Web`] serves server-rendered pages (askama templates compiled into
//! the binary, a little hand-written JavaScript, no CDN, no front-end build)
//! and reaches agencies and colleges through discovery like any client
//! ([`mesh`]). It holds no data of its own: every page is a gRPC call made
//! with the signed-in researcher's own bearer token, so the College and the
//! Agency decide what a researcher may see and do, exactly as for the CLI.
//!
//! - Researchers sign up, log in, submit proposals, see their accounts and
//!   withdraw ([`routes`]). The account page follows the College's
//!   `WatchAccount` stream over Server-Sent Events ([`routes::live`]), opened
//!   with that browser's token, so each browser gets only what it may see.
//! - `/mesh` shows every service and live instance from the registry's
//!   `Watch`, removals with their reason, gRPC health and, where an instance
//!   advertises a `metrics` label, its request rate ([`monitor`]).
//! - The token stays on the server ([`sessions`]): the browser holds a random
//!   session id in an `HttpOnly`, `SameSite=Strict` cookie, and every form
//!   carries a CSRF token bound to that id.
//!
//! [`Web::merge`] is the hook for routes served beside the portal (the
//! `/metrics` endpoint of the web server itself, for one).

mod assets;
mod mesh;
mod money;
mod monitor;
mod routes;
mod scrape;
mod sessions;
mod views;
mod words;

pub use monitor::{Dashboard, REFRESH as DASHBOARD_REFRESH};
pub use routes::live::{RECONNECT_AFTER, STREAM_LIFETIME};
pub use sessions::{COOKIE_NAME, MAX_SESSIONS, MAX_STREAMS_PER_SESSION};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use grantmesh_discovery::tls::Transport;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What a [`Web`] needs to know.
#[derive(Clone, Debug)]
pub struct WebSettings {
    /// Registry replicas agencies and colleges are found through.
    pub registries: Vec<String>,
    /// How the registry and the instances are dialled (TLS with the mesh CA,
    /// or plaintext for an `--insecure` mesh).
    pub transport: Transport,
    /// Mark the session cookie `Secure`, so browsers send it over HTTPS only.
    /// Set it when a TLS proxy fronts the portal; off by default because the
    /// portal itself speaks plain HTTP (on loopback in `grantmesh dev`).
    pub secure_cookies: bool,
    /// A mail catcher's outbox to show at `/dev/mail` (every message the
    /// colleges kept there, codes included): `grantmesh dev` only. `None`
    /// (the default) serves no such page.
    pub dev_mail: Option<std::path::PathBuf>,
}

impl WebSettings {
    /// Settings for these registries and transport, with cookies not marked `Secure`.
    pub fn new(registries: Vec<String>, transport: Transport) -> Self {
        Self {
            registries,
            transport,
            secure_cookies: false,
            dev_mail: None,
        }
    }
}

/// Largest request body accepted: the biggest form (a proposal with its
/// description) is a few kilobytes; anything larger is not from our pages.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long an ordinary page may take, mesh calls included: the balancer
/// retries on another instance within this, and a browser should not be
/// left waiting on a mesh that is gone.
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(15);

/// After shutdown is asked for, how long open pages get to finish before
/// the server stops anyway. Live streams are ended at once.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Connections served at once. Each costs a task and a socket; live
/// streams need one each, so this is above [`MAX_LIVE_STREAMS`] with room
/// for ordinary pages. Further connections wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long a client may take to send a request's headers: a browser sends
/// them at once; a connection trickling them is holding a slot.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed accept (out of file descriptors, say), so the loop
/// does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Live streams (account pages and dashboards) the server holds at once,
/// across every browser: each holds a task and, for accounts, a gRPC stream
/// to a College.
pub const MAX_LIVE_STREAMS: usize = 512;

/// Password strength checks (the sign-up form's hint) run at once, all
/// browsers together: each takes a blocking thread for a few milliseconds,
/// and a hint that is late is simply asked again on the next keystroke.
pub const MAX_STRENGTH_CHECKS: usize = 4;

/// Logins and sign-ups one browser address may send through the portal a
/// minute, after [`VISITOR_ATTEMPT_BURST`]. Every visitor reaches the
/// College from the portal's one address, where the College allows 100 at
/// once and 300 a minute: each visitor is held to a fraction of that, so
/// one guessing passwords cannot use it up for everyone else.
pub const VISITOR_ATTEMPTS_PER_MINUTE: u32 = 30;

/// Attempts a browser address may make at once before the per-minute rate.
pub const VISITOR_ATTEMPT_BURST: u32 = 20;

/// The state every handler shares.
pub(crate) struct App {
    pub mesh: mesh::MeshClient,
    pub sessions: sessions::Sessions,
    pub monitor: monitor::Monitor,
    /// Permits for live streams, all browsers together ([`MAX_LIVE_STREAMS`]).
    pub live_streams: Arc<Semaphore>,
    /// Permits for dashboards of browsers that are not signed in
    /// ([`routes::dashboard::MAX_ANONYMOUS_DASHBOARDS`]).
    pub anonymous_dashboards: Arc<Semaphore>,
    /// Permits for the sign-up form's strength hint ([`MAX_STRENGTH_CHECKS`]).
    pub strength_checks: Arc<Semaphore>,
    /// Logins and sign-ups per browser address ([`VISITOR_ATTEMPTS_PER_MINUTE`]).
    pub visitor_attempts: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    /// Cancelled on shutdown: live streams end so the server can stop.
    pub closing: CancellationToken,
    /// The outbox `/dev/mail` shows, in `grantmesh dev`.
    pub dev_mail: Option<std::path::PathBuf>,
}

/// The portal and dashboard, ready to serve.
pub struct Web {
    app: Arc<App>,
    extra: Router,
}

impl Web {
    /// Starts following the mesh (the dashboard's registry watch) and
    /// prepares the routes. Must be called inside a Tokio runtime.
    pub fn new(settings: WebSettings) -> Self {
        let closing = CancellationToken::new();
        let mesh = mesh::MeshClient::new(&settings);
        let monitor = monitor::Monitor::start(
            settings.registries.clone(),
            settings.transport.clone(),
            closing.clone(),
        );
        let app = Arc::new(App {
            sessions: sessions::Sessions::new(settings.secure_cookies),
            mesh,
            monitor,
            live_streams: Arc::new(Semaphore::new(MAX_LIVE_STREAMS)),
            anonymous_dashboards: Arc::new(Semaphore::new(
                routes::dashboard::MAX_ANONYMOUS_DASHBOARDS,
            )),
            strength_checks: Arc::new(Semaphore::new(MAX_STRENGTH_CHECKS)),
            visitor_attempts: governor::RateLimiter::keyed(
                governor::Quota::per_minute(
                    std::num::NonZeroU32::new(VISITOR_ATTEMPTS_PER_MINUTE).expect("not zero"),
                )
                .allow_burst(std::num::NonZeroU32::new(VISITOR_ATTEMPT_BURST).expect("not zero")),
            ),
            closing,
            dev_mail: settings.dev_mail.clone(),
        });
        Self {
            app,
            extra: Router::new(),
        }
    }

    /// Adds routes served beside the portal's, outside its sessions and
    /// page timeout (for example `/metrics` for Prometheus).
    pub fn merge(mut self, routes: Router) -> Self {
        self.extra = self.extra.merge(routes);
        self
    }

    /// How many signed-in sessions the portal holds (for a metrics gauge).
    pub fn sessions_held(&self) -> usize {
        self.app.sessions.len()
    }

    /// Every route: the portal's and the merged ones.
    pub fn router(&self) -> Router {
        routes::router(Arc::clone(&self.app)).merge(self.extra.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then ends live
    /// streams and gives open requests [`SHUTDOWN_GRACE`] to finish.
    ///
    /// Connections are HTTP/1.1, at most [`MAX_CONNECTIONS`] at once, and a
    /// client gets [`HEADER_READ_TIMEOUT`] to send a request's headers, so
    /// idle or trickling connections cannot pile up.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use hyper_util::rt::{TokioIo, TokioTimer};
        use hyper_util::server::graceful::GracefulShutdown;
        use hyper_util::service::TowerToHyperService;

        let router = self.router();
        let graceful = GracefulShutdown::new();
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&connections).acquire_owned() => permit.expect("the semaphore is never closed"),
                () = &mut shutdown => break,
            };
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        // Out of file descriptors, say: wait a moment rather than spin.
                        tracing::warn!(error = %err, "web portal failed to accept a connection");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            // Each request knows its browser's address (per-visitor limits).
            let peer = stream.peer_addr().ok();
            let service = TowerToHyperService::new(tower::ServiceExt::map_request(
                router.clone(),
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    if let Some(peer) = peer {
                        request
                            .extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                    }
                    request
                },
            ));
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                let _ = connection.await;
                drop(permit);
            });
        }
        self.app.closing.cancel();
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(SHUTDOWN_GRACE) => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "web requests still open after the grace period; stopping anyway");
            }
        }
        Ok(())
    }
}
