-- Researchers, research accounts, their members, and the withdrawal journal.

CREATE TABLE researchers (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    -- Stored lower-cased; unique.
    email         text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE accounts (
    id                     uuid PRIMARY KEY,
    -- One account per accepted proposal, whichever College instance opens it.
    proposal_id            text NOT NULL UNIQUE,
    agency                 text NOT NULL,
    title                  text NOT NULL,
    principal_investigator uuid NOT NULL REFERENCES researchers (id),
    award                  bigint NOT NULL CHECK (award > 0),
    -- The backstop: whatever the code does, no account goes below zero.
    balance                bigint NOT NULL CHECK (balance >= 0),
    opened_at              timestamptz NOT NULL DEFAULT now(),
    expires_at             timestamptz NOT NULL,
    CHECK (balance <= award),
    CHECK (expires_at > opened_at)
);

CREATE TABLE members (
    account_id    uuid NOT NULL REFERENCES accounts (id),
    researcher_id uuid NOT NULL REFERENCES researchers (id),
    role          text NOT NULL CHECK (role IN ('principal_investigator', 'member')),
    added_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, researcher_id)
);
CREATE INDEX members_by_researcher ON members (researcher_id);

-- The journal: one row per applied withdrawal, never changed or removed.
CREATE TABLE withdrawals (
    id              bigserial PRIMARY KEY,
    account_id      uuid NOT NULL REFERENCES accounts (id),
    researcher_id   uuid NOT NULL REFERENCES researchers (id),
    amount          bigint NOT NULL CHECK (amount > 0),
    idempotency_key text NOT NULL,
    memo            text NOT NULL,
    balance_after   bigint NOT NULL CHECK (balance_after >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- A key is applied at most once per account.
    UNIQUE (account_id, idempotency_key)
);
CREATE INDEX withdrawals_newest_first ON withdrawals (account_id, id DESC);

CREATE FUNCTION withdrawals_are_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the withdrawal journal is append-only';
END;
$$;

CREATE TRIGGER withdrawals_append_only
    BEFORE UPDATE OR DELETE ON withdrawals
    FOR EACH ROW EXECUTE FUNCTION withdrawals_are_append_only();
CREATE TRIGGER withdrawals_no_truncate
    BEFORE TRUNCATE ON withdrawals
    FOR EACH STATEMENT EXECUTE FUNCTION withdrawals_are_append_only();
