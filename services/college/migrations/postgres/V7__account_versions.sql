-- Account versions (issue 18): a College may decide a batch of withdrawals
-- from what it last read or wrote of the accounts, and write it in one
-- statement that holds only if every account is still at the version it
-- decided from (services/college/src/store/postgres/guess.rs). So the
-- version moves with everything the money rule reads of an account: its
-- balance and expiry (the withdrawal writes bump it) and its members and
-- their roles (this trigger). A change to another account column the rule
-- comes to read must bump it too.
ALTER TABLE accounts ADD COLUMN version bigint NOT NULL DEFAULT 0;

CREATE FUNCTION members_move_account_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        UPDATE accounts SET version = version + 1 WHERE id = OLD.account_id;
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.account_id <> OLD.account_id) THEN
        UPDATE accounts SET version = version + 1 WHERE id = NEW.account_id;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER members_move_account_version
    AFTER INSERT OR UPDATE OR DELETE ON members
    FOR EACH ROW EXECUTE FUNCTION members_move_account_version();
