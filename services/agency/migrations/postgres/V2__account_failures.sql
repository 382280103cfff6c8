-- Why the account of an accepted proposal can never be opened (a College
-- refused it for good: its principal investigator unknown there, say). Set
-- once; the reconciler stops retrying such a proposal and the researcher
-- sees the reason.
ALTER TABLE proposals ADD COLUMN account_failure text;
DROP INDEX proposals_awaiting_account;
CREATE INDEX proposals_awaiting_account ON proposals (agency, submitted_at)
    WHERE decision = 'accepted' AND account_id IS NULL AND account_failure IS NULL;
