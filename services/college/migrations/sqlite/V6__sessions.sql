-- Login sessions, as in migrations/postgres/V8__sessions.sql: digests of
-- refresh tokens only; times in milliseconds since the Unix epoch.
CREATE TABLE sessions (
    id            BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    researcher    BLOB NOT NULL REFERENCES researchers (id),
    refresh_hash  BLOB NOT NULL UNIQUE,
    previous_hash BLOB UNIQUE,
    created_at    INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    expires_at    INTEGER NOT NULL,
    ended_at      INTEGER
) STRICT;
CREATE INDEX sessions_ended ON sessions (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX sessions_of_researcher ON sessions (researcher);
CREATE INDEX sessions_expiry ON sessions (expires_at);
