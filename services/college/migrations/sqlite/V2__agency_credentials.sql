-- Agency credentials already used to open an account, as in the PostgreSQL
-- schema (migrations/postgres/V2): recorded in the transaction that opens
-- the account, deleted once past `expires_at` (milliseconds since the Unix
-- epoch) when later credentials are recorded.
CREATE TABLE agency_credentials (
    jti         BLOB PRIMARY KEY NOT NULL CHECK (length(jti) = 16),
    agency      TEXT NOT NULL,
    proposal_id TEXT NOT NULL,
    -- When Colleges stop accepting the credential (its exp plus leeway).
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX agency_credentials_by_expiry ON agency_credentials (expires_at);
