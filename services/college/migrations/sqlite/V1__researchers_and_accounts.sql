-- Researchers, research accounts, their members, and the withdrawal journal,
-- in the embedded SQLite store. The same tables and rules as the PostgreSQL
-- schema (migrations/postgres): ids are 16-byte uuid blobs and times are
-- milliseconds since the Unix epoch, by the store's clock.

CREATE TABLE researchers (
    id            BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    name          TEXT NOT NULL,
    -- Stored lower-cased; unique.
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER))
) STRICT;

CREATE TABLE accounts (
    id                     BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    -- One account per accepted proposal, whichever College instance opens it.
    proposal_id            TEXT NOT NULL UNIQUE,
    agency                 TEXT NOT NULL,
    title                  TEXT NOT NULL,
    principal_investigator BLOB NOT NULL REFERENCES researchers (id),
    award                  INTEGER NOT NULL CHECK (award > 0),
    -- The backstop: whatever the code does, no account goes below zero.
    balance                INTEGER NOT NULL CHECK (balance >= 0),
    opened_at              INTEGER NOT NULL,
    expires_at             INTEGER NOT NULL,
    CHECK (balance <= award),
    CHECK (expires_at > opened_at)
) STRICT;

CREATE TABLE members (
    account_id    BLOB NOT NULL REFERENCES accounts (id),
    researcher_id BLOB NOT NULL REFERENCES researchers (id),
    role          TEXT NOT NULL CHECK (role IN ('principal_investigator', 'member')),
    added_at      INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    PRIMARY KEY (account_id, researcher_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX members_by_researcher ON members (researcher_id);

-- The journal: one row per applied withdrawal, never changed or removed.
-- AUTOINCREMENT: ids only grow and are never reused, like a bigserial.
CREATE TABLE withdrawals (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id      BLOB NOT NULL REFERENCES accounts (id),
    researcher_id   BLOB NOT NULL REFERENCES researchers (id),
    amount          INTEGER NOT NULL CHECK (amount > 0),
    idempotency_key TEXT NOT NULL,
    memo            TEXT NOT NULL,
    balance_after   INTEGER NOT NULL CHECK (balance_after >= 0),
    created_at      INTEGER NOT NULL,
    -- A key is applied at most once per account.
    UNIQUE (account_id, idempotency_key)
) STRICT;
CREATE INDEX withdrawals_newest_first ON withdrawals (account_id, id DESC);

CREATE TRIGGER withdrawals_no_update BEFORE UPDATE ON withdrawals
BEGIN
    SELECT RAISE(ABORT, 'the withdrawal journal is append-only');
END;

CREATE TRIGGER withdrawals_no_delete BEFORE DELETE ON withdrawals
BEGIN
    SELECT RAISE(ABORT, 'the withdrawal journal is append-only');
END;
