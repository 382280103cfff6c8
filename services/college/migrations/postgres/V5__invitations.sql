-- Invitations to join an account: the principal investigator invites an
-- email, and the researcher with that email becomes a member only when they
-- accept. Accepted and declined invitations are deleted; what is here is
-- pending. An email that belongs to no researcher may be invited (so that
-- inviting does not tell which emails exist); the invitation waits for it.
CREATE TABLE invitations (
    id          uuid PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts (id),
    -- Lower-cased, as researchers' emails are stored.
    email       text NOT NULL,
    invited_by  uuid NOT NULL REFERENCES researchers (id),
    invited_at  timestamptz NOT NULL DEFAULT now(),
    -- One pending invitation per email and account.
    UNIQUE (account_id, email)
);
CREATE INDEX invitations_by_email ON invitations (email, invited_at DESC);
