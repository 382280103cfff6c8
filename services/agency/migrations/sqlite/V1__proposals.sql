-- Grant proposals and the agency's decision on each, in the embedded SQLite
-- store: the same table as migrations/postgres, with 16-byte uuid blobs and
-- times in milliseconds since the Unix epoch.

CREATE TABLE proposals (
    id                     BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    agency                 TEXT NOT NULL,
    principal_investigator BLOB NOT NULL CHECK (length(principal_investigator) = 16),
    idempotency_key        TEXT NOT NULL,
    title                  TEXT NOT NULL,
    description            TEXT NOT NULL,
    requested_amount       INTEGER NOT NULL CHECK (requested_amount > 0),
    duration_days          INTEGER NOT NULL CHECK (duration_days > 0),
    decision               TEXT NOT NULL CHECK (decision IN ('accepted', 'rejected')),
    reason                 TEXT NOT NULL DEFAULT '',
    -- Set once the College has opened the account; an accepted proposal
    -- without one is finished by a retry or by the agency's reconciler.
    account_id             TEXT,
    submitted_at           INTEGER NOT NULL,
    -- A retried submission returns the first decision.
    UNIQUE (agency, principal_investigator, idempotency_key),
    CHECK (decision = 'accepted' OR account_id IS NULL)
) STRICT;
CREATE INDEX proposals_by_investigator ON proposals (agency, principal_investigator, submitted_at DESC, id DESC);
CREATE INDEX proposals_awaiting_account ON proposals (agency, submitted_at) WHERE decision = 'accepted' AND account_id IS NULL;
