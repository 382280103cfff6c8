-- Sign-ups awaiting their email's code, as in
-- migrations/postgres/V9__signups.sql; times in milliseconds since the
-- Unix epoch.
CREATE TABLE signups (
    email         TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL,
    password_hash TEXT,
    code_digest   BLOB,
    mailed_at     INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0)
) STRICT;
CREATE INDEX signups_expiry ON signups (expires_at);
