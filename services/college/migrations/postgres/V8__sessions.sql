-- Login sessions (issue 19): a login opens one, each refresh rotates its
-- refresh token, a logout ends it. Only the SHA-256 digests of refresh
-- tokens are kept; `previous_hash` is the one rotated away, so that a copy
-- used after its owner refreshed is recognised and ends the session.
-- Colleges read `ended_at` every second and refuse the access tokens of
-- ended sessions.
CREATE TABLE sessions (
    id            uuid PRIMARY KEY,
    researcher    uuid NOT NULL REFERENCES researchers (id),
    refresh_hash  bytea NOT NULL UNIQUE,
    previous_hash bytea UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    ended_at      timestamptz
);
CREATE INDEX sessions_ended ON sessions (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX sessions_of_researcher ON sessions (researcher);
CREATE INDEX sessions_expiry ON sessions (expires_at);
