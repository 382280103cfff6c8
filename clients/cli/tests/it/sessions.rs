//! Sessions that can end, across College processes of the real binary on
//! TLS sharing one PostgreSQL: a logout at one College is refused at the
//! other within seconds (each College reads the ended sessions from the
//! store; neither shares memory with the other), a refresh token is good
//! once, and a copy used after its owner refreshed ends the session.

use std::time::{Duration, Instant};

use grantmesh_proto::CollegeClient;
use grantmesh_proto::v1::*;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::support::db::TestDb;
use crate::support::{Proc, assert_eventually, authed, tls};

/// How soon another College must refuse an ended session's token: its
/// follower reads the store every second.
const ELSEWHERE_WITHIN: Duration = Duration::from_secs(5);

/// A registry and two College processes on one fresh database; clients of
/// both colleges.
async fn two_colleges() -> (TestDb, Vec<Proc>, Vec<CollegeClient<Channel>>) {
    let db = TestDb::create().await;
    let dir = tls::dir().to_str().unwrap().to_owned();
    let registry = Proc::registry(&["--tls-dir", &dir]).await;
    let mut procs = vec![];
    let mut clients = vec![];
    for id in ["college-1", "college-2"] {
        let college = Proc::member(
            "college",
            &registry.url(),
            &[
                "--tls-dir",
                &dir,
                "--database-url",
                &db.url,
                "--instance-id",
                id,
            ],
        )
        .await;
        clients.push(CollegeClient::new(tls::channel(&college.url()).await));
        procs.push(college);
    }
    procs.push(registry);
    (db, procs, clients)
}

/// Signs up a researcher at `college` and logs in: the reply.
async fn log_in(college: &mut CollegeClient<Channel>) -> LoginReply {
    let email = format!("s-{}@university.edu", Uuid::new_v4().simple());
    crate::support::sign_up(college, "Sam", &email, "orbital kettle lantern").await
}

async fn who(
    college: &mut CollegeClient<Channel>,
    token: &str,
) -> Result<Researcher, tonic::Status> {
    college
        .who_am_i(authed(WhoAmIRequest {}, token))
        .await
        .map(|reply| reply.into_inner())
}

/// Waits (at most [`ELSEWHERE_WITHIN`]) until `college` refuses `token` as
/// UNAUTHENTICATED.
async fn refused_soon(college: &CollegeClient<Channel>, token: &str, what: &str) {
    assert_eventually(ELSEWHERE_WITHIN, what, || {
        let (mut college, token) = (college.clone(), token.to_owned());
        async move {
            who(&mut college, &token)
                .await
                .is_err_and(|status| status.code() == Code::Unauthenticated)
        }
    })
    .await;
}

#[tokio::test]
async fn a_token_used_after_logout_is_refused_at_every_college_within_seconds() {
    let (_db, _procs, mut colleges) = two_colleges().await;
    let login = log_in(&mut colleges[0]).await;
    assert!(!login.refresh_token.is_empty());
    let expires = std::time::SystemTime::try_from(login.expires_at.unwrap()).unwrap();
    let lives = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        lives <= Duration::from_secs(15 * 60),
        "access tokens live 15 minutes at most: {lives:?}"
    );
    for college in &mut colleges {
        who(college, &login.token)
            .await
            .expect("the token works everywhere");
    }

    let logged_out = Instant::now();
    let ended = colleges[0]
        .logout(authed(LogoutRequest::default(), &login.token))
        .await
        .unwrap()
        .into_inner();
    assert!(ended.ended);
    let here = who(&mut colleges[0], &login.token).await.unwrap_err();
    assert_eq!(here.code(), Code::Unauthenticated, "{here:?}");
    assert!(here.message().contains("session has ended"), "{here:?}");
    let mut other = colleges[1].clone();
    let token = login.token.clone();
    assert_eventually(
        ELSEWHERE_WITHIN,
        "the other college refuses the token",
        || {
            let (mut other, token) = (other.clone(), token.clone());
            async move {
                who(&mut other, &token)
                    .await
                    .is_err_and(|status| status.code() == Code::Unauthenticated)
            }
        },
    )
    .await;
    eprintln!(
        "refused at the other college {:?} after the logout",
        logged_out.elapsed()
    );
    // Nor can the session be renewed, at either college.
    let refreshed = other
        .refresh(RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refreshed.code(), Code::Unauthenticated, "{refreshed:?}");
    // A new login is a new session, and works.
    let again = log_in_as(&mut colleges[1], &login).await;
    who(&mut colleges[0], &again.token).await.unwrap();
}

/// Logs in once more as the researcher of `earlier`.
async fn log_in_as(college: &mut CollegeClient<Channel>, earlier: &LoginReply) -> LoginReply {
    college
        .login(LoginRequest {
            email: earlier.researcher.clone().unwrap().email,
            password: "orbital kettle lantern".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn a_refresh_token_renews_once_and_a_stolen_copy_used_later_ends_the_session() {
    let (_db, _procs, mut colleges) = two_colleges().await;
    let login = log_in(&mut colleges[0]).await;
    // The owner refreshes at the other college: new tokens, same researcher.
    let renewed = colleges[1]
        .refresh(RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(renewed.refresh_token, login.refresh_token);
    assert_eq!(renewed.researcher, login.researcher);
    who(&mut colleges[0], &renewed.token).await.unwrap();

    // A thief replays the old refresh token: refused, and the session ends
    // for everyone (the owner's fresh tokens too).
    let stolen = colleges[0]
        .refresh(RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(stolen.code(), Code::Unauthenticated);
    assert!(stolen.message().contains("used before"), "{stolen:?}");
    refused_soon(
        &colleges[1],
        &renewed.token,
        "the renewed token is refused too",
    )
    .await;
    let owner = colleges[1]
        .refresh(RefreshRequest {
            refresh_token: renewed.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(owner.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_logout_with_only_the_refresh_token_ends_the_session_and_junk_is_refused() {
    let (_db, _procs, mut colleges) = two_colleges().await;
    let login = log_in(&mut colleges[0]).await;
    let ended = colleges[1]
        .logout(tonic::Request::new(LogoutRequest {
            refresh_token: login.refresh_token.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(ended.ended);
    refused_soon(&colleges[0], &login.token, "the access token is refused").await;
    for junk in ["", "not-a-token", &"x".repeat(10_000)] {
        let refused = colleges[0]
            .refresh(RefreshRequest {
                refresh_token: junk.to_owned(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "{junk:.10}: {refused:?}"
        );
    }
    let nothing = colleges[0]
        .logout(tonic::Request::new(LogoutRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(nothing.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_password_change_ends_every_session_at_every_college() {
    let (_db, _procs, mut colleges) = two_colleges().await;
    let first = log_in(&mut colleges[0]).await;
    let email = first.researcher.clone().unwrap().email;
    let old = "orbital kettle lantern";
    // A second session, elsewhere (another device).
    let second = colleges[1]
        .login(LoginRequest {
            email: email.clone(),
            password: old.into(),
        })
        .await
        .unwrap()
        .into_inner();

    // The current password is checked, and so is the new one's strength;
    // neither refusal ends anything.
    let change = |current: &str, new: &str| {
        authed(
            ChangePasswordRequest {
                current_password: current.into(),
                new_password: new.into(),
            },
            &first.token,
        )
    };
    let wrong = colleges[0]
        .change_password(change("not my password", "quartz heron battery staple"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    let weak = colleges[0]
        .change_password(change(old, "password1234"))
        .await
        .unwrap_err();
    assert_eq!(weak.code(), Code::InvalidArgument, "{weak:?}");
    assert!(weak.message().contains("new_password"), "{weak:?}");
    who(&mut colleges[1], &second.token)
        .await
        .expect("a refused change ends nothing");

    let new = "quartz heron battery staple";
    let fresh = colleges[0]
        .change_password(change(old, new))
        .await
        .expect("the change")
        .into_inner();
    who(&mut colleges[0], &fresh.token)
        .await
        .expect("the new session works");
    let here = who(&mut colleges[0], &first.token).await.unwrap_err();
    assert_eq!(here.code(), Code::Unauthenticated, "{here:?}");
    for token in [first.token.clone(), second.token.clone()] {
        let other = colleges[1].clone();
        assert_eventually(
            ELSEWHERE_WITHIN,
            "the other college refuses the old sessions' tokens",
            || {
                let (mut other, token) = (other.clone(), token.clone());
                async move {
                    who(&mut other, &token)
                        .await
                        .is_err_and(|status| status.code() == Code::Unauthenticated)
                }
            },
        )
        .await;
    }
    let stale = colleges[1]
        .refresh(RefreshRequest {
            refresh_token: second.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Unauthenticated, "{stale:?}");
    let login = |password: &str| LoginRequest {
        email: email.clone(),
        password: password.into(),
    };
    let refused = colleges[1].login(login(old)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    colleges[1]
        .login(login(new))
        .await
        .expect("the new password logs in");
}
