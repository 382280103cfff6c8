-- One ledger (issue 18); see the PostgreSQL migration V6 of the same name.
--
-- 1. An idempotency key is the caller's own on each account. SQLite cannot
--    drop a table constraint, so the journal is rebuilt with the new one
--    (ids kept; AUTOINCREMENT carries on from the highest).
CREATE TABLE withdrawals_scoped (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id      BLOB NOT NULL REFERENCES accounts (id),
    researcher_id   BLOB NOT NULL REFERENCES researchers (id),
    amount          INTEGER NOT NULL CHECK (amount > 0),
    idempotency_key TEXT NOT NULL,
    memo            TEXT NOT NULL,
    balance_after   INTEGER NOT NULL CHECK (balance_after >= 0),
    created_at      INTEGER NOT NULL,
    -- A key is applied at most once per account and caller.
    UNIQUE (account_id, researcher_id, idempotency_key)
) STRICT;
INSERT INTO withdrawals_scoped SELECT * FROM withdrawals;
DROP TABLE withdrawals;
ALTER TABLE withdrawals_scoped RENAME TO withdrawals;
CREATE INDEX withdrawals_newest_first ON withdrawals (account_id, id DESC);

CREATE TRIGGER withdrawals_no_update BEFORE UPDATE ON withdrawals
BEGIN
    SELECT RAISE(ABORT, 'the withdrawal journal is append-only');
END;

CREATE TRIGGER withdrawals_no_delete BEFORE DELETE ON withdrawals
BEGIN
    SELECT RAISE(ABORT, 'the withdrawal journal is append-only');
END;

-- 2. The terms an account was opened with (see V6 on PostgreSQL).
ALTER TABLE accounts ADD COLUMN awarded_to BLOB REFERENCES researchers (id);
ALTER TABLE accounts ADD COLUMN duration_days INTEGER CHECK (duration_days > 0);
UPDATE accounts SET awarded_to = principal_investigator,
                    duration_days = max(1, CAST(round((expires_at - opened_at) / 86400000.0) AS INTEGER));
