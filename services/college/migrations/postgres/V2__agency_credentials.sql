-- Agency credentials already used to open an account: each credential is
-- good for one OpenAccount call, at whichever College instance, so its id
-- (the JWT's jti) is recorded in the same transaction that opens the
-- account. A row is needed only while the credential could still be
-- accepted; rows past `expires_at` are deleted when later credentials are
-- recorded.
CREATE TABLE agency_credentials (
    jti         uuid PRIMARY KEY,
    agency      text NOT NULL,
    proposal_id text NOT NULL,
    -- When Colleges stop accepting the credential (its exp plus leeway).
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agency_credentials_by_expiry ON agency_credentials (expires_at);
