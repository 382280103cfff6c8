-- Why the account of an accepted proposal can never be opened, as in the
-- PostgreSQL schema (migrations/postgres/V2).
ALTER TABLE proposals ADD COLUMN account_failure TEXT;
DROP INDEX proposals_awaiting_account;
CREATE INDEX proposals_awaiting_account ON proposals (agency, submitted_at)
    WHERE decision = 'accepted' AND account_id IS NULL AND account_failure IS NULL;
