-- Sign-ups awaiting their email's code (issue 19): a researcher is made
-- only when the code mailed to the address comes back, so every researcher
-- has shown they read that mailbox. One row per email; a new sign-up
-- replaces it, at most once a minute (`mailed_at`). Only a digest of the
-- code is kept (bound to the email). A sign-up for an email that already
-- belongs to a researcher keeps a row with no code and no password, so
-- that its notice mail is limited like a code.
CREATE TABLE signups (
    email         text PRIMARY KEY,
    name          text NOT NULL,
    password_hash text,
    code_digest   bytea,
    mailed_at     timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    attempts      integer NOT NULL DEFAULT 0 CHECK (attempts >= 0)
);
CREATE INDEX signups_expiry ON signups (expires_at);
