-- Invitations to join an account, as in the PostgreSQL schema
-- (migrations/postgres/V5): pending only; accepted and declined ones are
-- deleted. Times are milliseconds since the Unix epoch.
CREATE TABLE invitations (
    id          BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    account_id  BLOB NOT NULL REFERENCES accounts (id),
    -- Lower-cased, as researchers' emails are stored.
    email       TEXT NOT NULL,
    invited_by  BLOB NOT NULL REFERENCES researchers (id),
    invited_at  INTEGER NOT NULL,
    -- One pending invitation per email and account.
    UNIQUE (account_id, email)
) STRICT;
CREATE INDEX invitations_by_email ON invitations (email, invited_at DESC);
