-- One ledger (issue 18): the withdrawal rule now lives once, in the
-- College's Rust code (services/college/src/ledger), for both stores.
--
-- 1. The rule's plpgsql copy goes.
DROP FUNCTION withdraw_batch(uuid[], uuid[], bigint[], text[], text[]);

-- 2. An idempotency key is the caller's own on each account: two members
--    using the same key make two withdrawals. At most one entry per
--    (account, caller, key) stays the backstop.
ALTER TABLE withdrawals DROP CONSTRAINT withdrawals_account_id_idempotency_key_key;
ALTER TABLE withdrawals ADD CONSTRAINT withdrawals_one_per_caller_key
    UNIQUE (account_id, researcher_id, idempotency_key);

-- 3. The terms an account was opened with, so that a second OpenAccount for
--    the proposal is a replay only on the same terms: whom it was awarded to
--    (the principal investigator may change hands later) and its duration
--    in days (its expiry may move later). Accounts opened before this are
--    given what they hold now.
ALTER TABLE accounts ADD COLUMN awarded_to uuid REFERENCES researchers (id);
ALTER TABLE accounts ADD COLUMN duration_days integer CHECK (duration_days > 0);
UPDATE accounts SET awarded_to = principal_investigator,
                    duration_days = greatest(1, round(extract(epoch FROM expires_at - opened_at) / 86400))::integer;
ALTER TABLE accounts ALTER COLUMN awarded_to SET NOT NULL;
ALTER TABLE accounts ALTER COLUMN duration_days SET NOT NULL;
