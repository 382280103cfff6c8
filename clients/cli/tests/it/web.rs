//! The web portal over real HTTP, in front of a real TLS mesh: CSRF
//! refusal, cookie flags, access denial (page and live stream) and the
//! limits a browser meets. The same flows in a real browser are in
//! clients/python/tests_browser (scripts/test-browser).

use std::time::Duration;

use grantmesh_web::{MAX_STREAMS_PER_SESSION, Web, WebSettings};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::oneshot;

use crate::support::sandbox::Mesh;
use crate::support::tls;

/// A portal in front of a sandbox mesh.
struct Portal {
    mesh: Mesh,
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    _stop: oneshot::Sender<()>,
}

/// One browser: its session cookie.
struct Browser {
    cookie: String,
}

impl Portal {
    async fn start() -> Portal {
        let mesh = Mesh::start(Duration::from_secs(24 * 60 * 60)).await;
        let registry = mesh.registry.url.clone();
        let web = Web::new(WebSettings::new(
            vec![registry.clone()],
            tls::transport(&registry),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(web.serve(listener, async move {
            let _ = stopped.await;
        }));
        Portal {
            mesh,
            base,
            client: Client::builder(TokioExecutor::new()).build_http(),
            _stop: stop,
        }
    }

    async fn send(
        &self,
        browser: Option<&Browser>,
        method: &str,
        path: &str,
        form: &str,
    ) -> Response<Incoming> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(browser) = browser {
            request = request.header(header::COOKIE, &browser.cookie);
        }
        if method == "POST" {
            request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let request = request
            .body(Full::new(Bytes::from(form.to_owned())))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.client.request(request))
            .await
            .expect("the portal answers within 20 s")
            .expect("the portal answers")
    }

    /// `(status, Location, body)` of a request.
    async fn fetch(
        &self,
        browser: Option<&Browser>,
        method: &str,
        path: &str,
        form: &str,
    ) -> (StatusCode, String, String) {
        let response = self.send(browser, method, path, form).await;
        let status = response.status();
        let location = header_text(&response, header::LOCATION);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            location,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    /// A new browser with a signed-in researcher called `name`.
    async fn signed_up(&self, name: &str) -> Browser {
        let response = self.send(None, "GET", "/signup", "").await;
        let cookie = session_cookie(&response).expect("a first visit gets a session cookie");
        let mut browser = Browser { cookie };
        let body = body_text(response).await;
        let email = format!("{name}-{}@uni.edu", uuid::Uuid::new_v4().simple());
        let form = format!(
            "csrf={}&name={name}&email={email}&password=correct+horse+battery",
            csrf(&body)
        );
        let response = self.send(Some(&browser), "POST", "/signup", &form).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "sign-up succeeds");
        let location = header_text(&response, header::LOCATION);
        assert!(location.starts_with("/verify?email="), "{location}");
        // The code the college mailed, entered on the verification page.
        let token = self.csrf_of(&browser, &location).await;
        let code = crate::support::mailed_code(&email).await;
        let form = format!("csrf={token}&email={email}&code={code}&password=correct+horse+battery");
        let response = self.send(Some(&browser), "POST", "/verify", &form).await;
        assert_eq!(
            response.status(),
            StatusCode::SEE_OTHER,
            "verification succeeds"
        );
        browser.cookie = session_cookie(&response).expect("logging in issues a new session id");
        browser
    }

    /// The CSRF token of the page at `path` for `browser`.
    async fn csrf_of(&self, browser: &Browser, path: &str) -> String {
        let (status, _, body) = self.fetch(Some(browser), "GET", path, "").await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        csrf(&body)
    }

    /// Submits an accepted proposal to `nsf`; returns the new account's id.
    async fn funded_account(&self, browser: &Browser) -> String {
        let token = self.csrf_of(browser, "/proposals/new").await;
        let form = format!(
            "csrf={token}&key={}&agency=nsf&title=Folding&description=&amount=4000&days=30",
            uuid::Uuid::new_v4()
        );
        let (status, location, body) = self.fetch(Some(browser), "POST", "/proposals", &form).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        let (_, _, page) = self.fetch(Some(browser), "GET", &location, "").await;
        assert!(page.contains("Accepted"), "{page}");
        let start = page
            .find("href=\"/accounts/")
            .expect("a link to the account")
            + 16;
        page[start..].split('"').next().unwrap().to_owned()
    }
}

fn header_text(response: &Response<Incoming>, name: header::HeaderName) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The `grantmesh_session=…` pair a response sets, if it sets one.
fn session_cookie(response: &Response<Incoming>) -> Option<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("grantmesh_session="))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

async fn body_text(response: Response<Incoming>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

fn csrf(page: &str) -> String {
    let start = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[start..].split('"').next().unwrap().to_owned()
}

/// Reads a live stream until `needle` arrives (bounded).
async fn stream_until(response: Response<Incoming>, needle: &str) -> String {
    let mut body = response.into_body();
    let mut seen = String::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
                if seen.contains(needle) {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} on the stream within 10 s; saw {seen:?}"));
    seen
}

#[tokio::test]
async fn the_session_cookie_is_http_only_same_site_strict_and_carries_no_token() {
    let portal = Portal::start().await;
    let response = portal.send(None, "GET", "/login", "").await;
    let set = header_text(&response, header::SET_COOKIE);
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(flag), "{set}");
    }
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, "script-src 'self'"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        assert!(
            header_text(&response, name.clone()).contains(value),
            "{name}"
        );
    }
    let ada = portal.signed_up("ada").await;
    let id = ada.cookie.split_once('=').unwrap().1;
    // 256 random bits, URL-safe base64: an id, not a (much longer) signed token.
    assert_eq!(id.len(), 43, "{id}");
    let (status, _, page) = portal.fetch(Some(&ada), "GET", "/accounts", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("ada"), "signed in: {page}");
}

#[tokio::test]
async fn a_password_changed_in_the_portal_ends_the_other_sessions_and_keeps_this_one() {
    let portal = Portal::start().await;
    let ada = portal.signed_up("ada").await;
    let (status, _, page) = portal.fetch(Some(&ada), "GET", "/accounts", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("href=\"/password\""),
        "linked from the accounts page"
    );
    let change =
        |current: &str, new: &str, token: &str| format!("csrf={token}&current={current}&new={new}");
    // A wrong current password, or a weak new one, changes nothing.
    let token = portal.csrf_of(&ada, "/password").await;
    let (status, _, page) = portal
        .fetch(
            Some(&ada),
            "POST",
            "/password",
            &change("not+mine", "quartz+heron+battery+staple", &token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("current password is not right"), "{page}");
    let (status, _, page) = portal
        .fetch(
            Some(&ada),
            "POST",
            "/password",
            &change("correct+horse+battery", "password1234", &token),
        )
        .await;
    assert_ne!(status, StatusCode::SEE_OTHER, "{page}");
    assert!(page.contains("Nothing was changed"), "{page}");
    // The change: this browser goes on in a new session, with a new id.
    let response = portal
        .send(
            Some(&ada),
            "POST",
            "/password",
            &change(
                "correct+horse+battery",
                "quartz+heron+battery+staple",
                &token,
            ),
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let after = Browser {
        cookie: session_cookie(&response).expect("a new session id"),
    };
    assert_ne!(after.cookie, ada.cookie);
    let (status, _, _) = portal.fetch(Some(&after), "GET", "/accounts", "").await;
    assert_eq!(status, StatusCode::OK, "the new session works");
    let (status, location, _) = portal.fetch(Some(&ada), "GET", "/accounts", "").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "the old session id is gone");
    assert!(location.starts_with("/login"), "{location}");
}

#[tokio::test]
async fn a_form_without_the_sessions_csrf_token_is_refused_and_changes_nothing() {
    let portal = Portal::start().await;
    let ada = portal.signed_up("ada").await;
    let bob = portal.signed_up("bob").await;
    let account = portal.funded_account(&ada).await;
    let page = format!("/accounts/{account}");
    let withdraw = format!("{page}/withdraw");
    let bobs_token = portal.csrf_of(&bob, "/accounts").await;
    for token in ["", "forged", bobs_token.as_str()] {
        let form = format!(
            "csrf={token}&key=k-{}&amount=10&memo=x",
            uuid::Uuid::new_v4()
        );
        let (status, _, body) = portal.fetch(Some(&ada), "POST", &withdraw, &form).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "token {token:?}: {body}");
        assert!(body.contains("nothing was done"), "{body}");
    }
    let (_, _, shown) = portal.fetch(Some(&ada), "GET", &page, "").await;
    assert!(
        shown.contains("id=\"balance\">USD 4,000.00<"),
        "balance unchanged"
    );

    // The same form with its token, sent twice (one key), withdraws once.
    let token = csrf(&shown);
    let form = format!(
        "csrf={token}&key=k-{}&amount=10&memo=x",
        uuid::Uuid::new_v4()
    );
    for _ in 0..2 {
        let (status, location, _) = portal.fetch(Some(&ada), "POST", &withdraw, &form).await;
        assert_eq!(
            (status, location.as_str()),
            (StatusCode::SEE_OTHER, page.as_str())
        );
    }
    let (_, _, shown) = portal.fetch(Some(&ada), "GET", &page, "").await;
    assert!(
        shown.contains("id=\"balance\">USD 3,990.00<"),
        "withdrawn once: {shown}"
    );
    assert!(shown.contains("applied once"), "the second submit says so");

    let oversized = format!(
        "csrf={token}&memo={}",
        "x".repeat(grantmesh_web::MAX_BODY_BYTES)
    );
    let (status, _, _) = portal
        .fetch(Some(&ada), "POST", &withdraw, &oversized)
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn another_researcher_is_refused_the_account_page_and_its_live_stream() {
    let portal = Portal::start().await;
    let ada = portal.signed_up("ada").await;
    let bob = portal.signed_up("bob").await;
    let account = portal.funded_account(&ada).await;
    let events = format!("/accounts/{account}/events");

    let (status, _, body) = portal
        .fetch(Some(&bob), "GET", &format!("/accounts/{account}"), "")
        .await;
    assert!(
        matches!(status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND),
        "{status}: {body}"
    );
    assert!(
        !body.contains("4,000.00"),
        "nothing of the account is shown"
    );
    let refused = portal.send(Some(&bob), "GET", &events, "").await;
    assert!(
        matches!(
            refused.status(),
            StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
        ),
        "{}",
        refused.status()
    );
    assert!(!header_text(&refused, header::CONTENT_TYPE).contains("event-stream"));
    let anonymous = portal.send(None, "GET", &events, "").await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // Ada follows it; her session may hold a few streams, not more.
    let mut open = Vec::new();
    for _ in 0..MAX_STREAMS_PER_SESSION {
        let stream = portal.send(Some(&ada), "GET", &events, "").await;
        assert_eq!(stream.status(), StatusCode::OK);
        assert!(header_text(&stream, header::CONTENT_TYPE).contains("text/event-stream"));
        open.push(stream);
    }
    let over = portal.send(Some(&ada), "GET", &events, "").await;
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    let first = open.pop().unwrap();
    let seen = stream_until(first, "\"kind\":\"snapshot\"").await;
    assert!(seen.contains("event: account"), "{seen}");
    assert!(seen.contains("\"balance\":\"USD 4,000.00\""), "{seen}");
    // Its stream closed, the session may open another (once the college,
    // which counts a researcher's streams too, has seen the old one end).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let again = loop {
        let again = portal.send(Some(&ada), "GET", &events, "").await;
        if again.status() == StatusCode::OK || tokio::time::Instant::now() > deadline {
            break again;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(again.status(), StatusCode::OK);

    // Logging out ends the session's live streams at once.
    let live_sessions = || async {
        let client = portal.mesh.db.client().await;
        let live: i64 = client
            .query_one("SELECT count(*) FROM sessions WHERE ended_at IS NULL", &[])
            .await
            .unwrap()
            .get(0);
        live
    };
    let live_before = live_sessions().await;
    let token = portal.csrf_of(&ada, "/accounts").await;
    let (status, _, _) = portal
        .fetch(Some(&ada), "POST", "/logout", &format!("csrf={token}"))
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let ended = tokio::time::timeout(Duration::from_secs(5), again.into_body().collect()).await;
    assert!(ended.is_ok(), "the stream outlived the session");
    // The portal ended the session at the colleges too, not only its own
    // record of it.
    assert_eq!(
        live_sessions().await,
        live_before - 1,
        "the log-out reached the colleges"
    );
}

#[tokio::test]
async fn the_dashboard_shows_request_rates_from_an_instances_metrics_label() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use grantmesh_proto::RegistryClient;
    use grantmesh_proto::v1::{Instance, RegisterRequest};

    let portal = Portal::start().await;
    // A metrics page whose request counter grows by 10 per scrape.
    let calls = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&calls);
    let page = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let n = counter.fetch_add(10, Ordering::SeqCst) + 10;
            async move {
                format!(
                    "# TYPE grpc_server_requests_total counter\n\
                     grpc_server_requests_total{{service=\"grantmesh.v1.Agency\",method=\"Ping\",code=\"OK\"}} {n}\n"
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = format!("http://{}/metrics", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, page).await });
    // An agency instance (it only has to be listed) advertising that page.
    let registry = &portal.mesh.registry.url;
    let channel = tls::transport_as(registry, Some("agency/metered"))
        .channel(registry, None)
        .await
        .unwrap();
    RegistryClient::new(channel)
        .register(RegisterRequest {
            instance: Some(Instance {
                id: "metered".into(),
                service: "agency".into(),
                address: "https://127.0.0.1:9".into(),
                labels: [
                    ("agency".to_owned(), "metered".to_owned()),
                    ("metrics".to_owned(), metrics),
                ]
                .into(),
                ttl: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let rate = |json: &serde_json::Value, id: &str| {
        json["services"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["instances"].as_array().cloned().unwrap_or_default())
            .find(|i| i["id"] == id)
            .map(|i| i["requests_per_second"].clone())
    };
    crate::support::assert_eventually(
        Duration::from_secs(15),
        "the metered agency shows a request rate; the others none",
        || async {
            let (_, _, body) = portal.fetch(None, "GET", "/mesh.json", "").await;
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            rate(&json, "metered")
                .and_then(|r| r.as_f64())
                .is_some_and(|r| r > 0.0)
                && rate(&json, "nsf") == Some(serde_json::Value::Null)
        },
    )
    .await;
    assert!(calls.load(Ordering::SeqCst) >= 20, "scraped at least twice");
}

#[tokio::test]
async fn a_connection_that_sends_no_request_is_closed_after_the_header_timeout() {
    use tokio::io::AsyncReadExt as _;
    use tokio::io::AsyncWriteExt as _;

    let portal = Portal::start().await;
    let addr = portal.base.trim_start_matches("http://");
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Half a request line, then nothing: a slow-loris client.
    idle.write_all(b"GET / HT").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        grantmesh_web::HEADER_READ_TIMEOUT + Duration::from_secs(5),
        idle.read_to_end(&mut rest),
    )
    .await;
    assert!(
        closed.is_ok(),
        "the portal still holds a connection that sent no headers"
    );
    // Meanwhile and after, ordinary requests are served.
    let (status, _, _) = portal.fetch(None, "GET", "/healthz", "").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn transactions_are_shown_ten_to_a_page_newest_first() {
    let portal = Portal::start().await;
    let ada = portal.signed_up("ada").await;
    let account = portal.funded_account(&ada).await;
    let page = format!("/accounts/{account}");
    let token = portal.csrf_of(&ada, &page).await;
    for n in 1..=12 {
        let form = format!(
            "csrf={token}&key=k-{}&amount={n}&memo=item-{n}-",
            uuid::Uuid::new_v4()
        );
        let (status, _, _) = portal
            .fetch(Some(&ada), "POST", &format!("{page}/withdraw"), &form)
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
    }
    let rows = |body: &str| body.matches("\">item-").count();
    let (_, _, first) = portal.fetch(Some(&ada), "GET", &page, "").await;
    assert_eq!(rows(&first), 10);
    assert!(
        first.find("item-12-").unwrap() < first.find("item-3-").unwrap(),
        "newest first"
    );
    assert!(!first.contains("item-2-"));
    let start = first.find("?after=").expect("a link to older transactions");
    let older = first[start..].split('"').next().unwrap();
    let (_, _, second) = portal
        .fetch(Some(&ada), "GET", &format!("{page}{older}"), "")
        .await;
    assert_eq!(rows(&second), 2, "{second}");
    assert!(second.contains("item-2-") && second.contains("item-1-"));
    assert!(
        !second.contains("?after="),
        "the last page links no further"
    );
}

/// The table's portal attack (issue 20): one visitor sending bad logins
/// through the portal used to spend the College's allowance for the
/// portal's one address, and every other visitor's login was refused. Now
/// each browser address has its own, far smaller, allowance at the portal.
#[tokio::test]
async fn a_visitor_guessing_passwords_through_the_portal_does_not_lock_the_others_out() {
    let portal = Portal::start().await;
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some("127.0.0.2".parse().unwrap()));
    let attacker: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let send = |request: Request<Full<Bytes>>| {
        let attacker = attacker.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(20), attacker.request(request))
                .await
                .expect("the portal answers within 20 s")
                .expect("the portal answers")
        }
    };
    let first = send(
        Request::get(format!("{}/login", portal.base))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let cookie = session_cookie(&first).expect("a session cookie");
    let token = csrf(&body_text(first).await);
    let mut held_back = 0;
    for n in 0..120 {
        let form =
            format!("csrf={token}&email=guess-{n}%40uni.edu&password=wrong+horse+battery&next=%2F");
        let response = send(
            Request::post(format!("{}/login", portal.base))
                .header(header::COOKIE, &cookie)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(form)))
                .unwrap(),
        )
        .await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            held_back += 1;
            let page = body_text(response).await;
            assert!(page.contains("Too many logins"), "{page}");
        }
    }
    assert!(
        held_back >= 90,
        "the portal held back the guesser itself ({held_back} of 120)"
    );
    // Another visitor signs up and logs in at once.
    portal.signed_up("bystander").await;
}
