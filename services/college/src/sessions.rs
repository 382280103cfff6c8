//! Login sessions at a College: what `Login` opens, `Refresh` renews and
//! `Logout` ends, and how every College hears that a session has ended.
//!
//! A session is a row of the central store ([`crate::store::Refreshed`]):
//! its refresh token's digest, its researcher, when it ends. Access tokens
//! name it (`sid`). A College refuses the access tokens of an ended session
//! at once if it ended the session itself, and within [`FOLLOW_EVERY`]
//! otherwise: [`follow_ended_sessions`] reads the sessions ended since it
//! last looked into the token keys' [`grantmesh_auth::tokens::Revoked`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use grantmesh_auth::Keys;
use grantmesh_auth::sessions::{SESSION_TTL, new_refresh_token, refresh_digest};
use grantmesh_auth::tokens::MAX_TOKEN_TTL;
use grantmesh_proto::v1::{LoginReply, Researcher};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use crate::store::{AccountStore, Refreshed, ResearcherRow, StoreError};

/// How often a College reads the sessions ended since it last looked: the
/// most time a logged-out token is still taken by another College.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// How far back each read reaches before the last one: covers a commit
/// that landed just behind the previous read and clocks a little apart.
const OVERLAP: Duration = Duration::from_secs(5);

/// Opens a session for `researcher` and signs its first access token.
pub async fn open(
    store: &AccountStore,
    keys: &Keys,
    researcher: ResearcherRow,
) -> Result<LoginReply, Status> {
    let (refresh_token, digest) = new_refresh_token();
    let (session, ends) = store
        .create_session(researcher.id, &digest, SESSION_TTL)
        .await?;
    reply(keys, researcher, session, refresh_token, Some(ends))
}

/// What `Refresh` answers: a new access token and refresh token for the
/// session `refresh_token` belongs to.
pub async fn refresh(
    store: &AccountStore,
    keys: &Keys,
    refresh_token: &str,
) -> Result<LoginReply, Status> {
    let unknown = || {
        Status::unauthenticated(
            "the refresh token is unknown, or its session has expired or ended; log in again",
        )
    };
    let old = refresh_digest(refresh_token).ok_or_else(unknown)?;
    let (new_token, new) = new_refresh_token();
    match store.refresh_session(&old, &new).await? {
        Refreshed::Renewed {
            session,
            researcher,
        } => {
            let researcher = store.researcher(researcher).await?.ok_or_else(unknown)?;
            reply(keys, researcher, session, new_token, None)
        }
        Refreshed::Reused { session } => {
            keys.revoked().revoke(session, SystemTime::now());
            tracing::warn!(%session, "a refresh token was used twice: its session is ended");
            Err(Status::unauthenticated(
                "this refresh token was used before (a copy of it was taken?): its session is ended; log in again",
            ))
        }
        Refreshed::Unknown => Err(unknown()),
    }
}

/// Ends the session of `bearer` (a verified access token's) and the one of
/// `refresh_token` (the token is proof enough, so a logout works after the
/// access token has expired); whether one was live.
pub async fn end(
    store: &AccountStore,
    keys: &Keys,
    bearer: Option<grantmesh_auth::Bearer>,
    refresh_token: &str,
) -> Result<bool, StoreError> {
    let mut ended = false;
    if let Some(bearer) = bearer {
        ended |= store.end_session(bearer.researcher, bearer.session).await?;
        keys.revoked().revoke(bearer.session, SystemTime::now());
    }
    if let Some(digest) = refresh_digest(refresh_token)
        && let Some(session) = store.end_session_by_refresh(&digest).await?
    {
        keys.revoked().revoke(session, SystemTime::now());
        ended = true;
    }
    Ok(ended)
}

fn reply(
    keys: &Keys,
    researcher: ResearcherRow,
    session: Uuid,
    refresh_token: String,
    ends: Option<SystemTime>,
) -> Result<LoginReply, Status> {
    let (token, expires) = keys
        .researcher_token(researcher.id, session)
        .map_err(|err| Status::internal(err.to_string()))?;
    Ok(LoginReply {
        token,
        expires_at: Some(expires.into()),
        researcher: Some(Researcher {
            researcher_id: researcher.id.to_string(),
            name: researcher.name,
            email: researcher.email,
        }),
        refresh_token,
        refresh_expires_at: ends.map(Into::into),
    })
}

/// Reads, every [`FOLLOW_EVERY`], the sessions ended since the last read
/// into `keys`' revoked sessions, and forgets those whose tokens have all
/// expired, until `closing`.
pub fn follow_ended_sessions(store: AccountStore, keys: Keys, closing: CancellationToken) {
    let revoked = Arc::clone(keys.revoked());
    tokio::spawn(async move {
        // Tokens live at most MAX_TOKEN_TTL: sessions ended before that are
        // worth nothing to anyone now.
        let mut since = SystemTime::now() - MAX_TOKEN_TTL - OVERLAP;
        let mut every = tokio::time::interval(FOLLOW_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = closing.cancelled() => return,
                _ = every.tick() => {}
            }
            let started = SystemTime::now();
            match store.sessions_ended_since(since).await {
                Ok(ended) => {
                    for (session, at) in ended {
                        revoked.revoke(session, at);
                    }
                    since = started - OVERLAP;
                    revoked.forget_before(started - MAX_TOKEN_TTL - OVERLAP * 2);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read ended sessions; trying again");
                }
            }
        }
    });
}
