-- Grant proposals and the agency's decision on each.

CREATE TABLE proposals (
    id                     uuid PRIMARY KEY,
    agency                 text NOT NULL,
    principal_investigator uuid NOT NULL,
    idempotency_key        text NOT NULL,
    title                  text NOT NULL,
    description            text NOT NULL,
    requested_amount       bigint NOT NULL CHECK (requested_amount > 0),
    duration_days          integer NOT NULL CHECK (duration_days > 0),
    decision               text NOT NULL CHECK (decision IN ('accepted', 'rejected')),
    reason                 text NOT NULL DEFAULT '',
    -- Set once the College has opened the account; an accepted proposal
    -- without one is finished by a retry or by the agency's reconciler.
    account_id             text,
    submitted_at           timestamptz NOT NULL DEFAULT now(),
    -- A retried submission returns the first decision.
    UNIQUE (agency, principal_investigator, idempotency_key),
    CHECK (decision = 'accepted' OR account_id IS NULL)
);
CREATE INDEX proposals_by_investigator ON proposals (agency, principal_investigator, submitted_at DESC, id DESC);
CREATE INDEX proposals_awaiting_account ON proposals (agency, submitted_at) WHERE decision = 'accepted' AND account_id IS NULL;
