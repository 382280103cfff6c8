-- Account versions (issue 18): a College may decide a batch of withdrawals
-- from what it last read or wrote of the accounts, and write it in one
-- statement that holds only if every account is still at the version it
-- decided from (services/college/src/store/postgres/guess.rs). So the
-- version moves with everything the money rule reads of an account, by the
-- database itself, whoever writes: every update of the account row (its
-- balance, its expiry, by a College or by anyone else) and every change of
-- its members and their roles.
ALTER TABLE accounts ADD COLUMN version bigint NOT NULL DEFAULT 0;

CREATE FUNCTION accounts_move_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END;
$$;

CREATE TRIGGER accounts_move_version
    BEFORE UPDATE ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_move_version();

CREATE FUNCTION members_move_account_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Any update of the account row moves its version (the trigger above).
    IF TG_OP <> 'INSERT' THEN
        UPDATE accounts SET version = version WHERE id = OLD.account_id;
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.account_id <> OLD.account_id) THEN
        UPDATE accounts SET version = version WHERE id = NEW.account_id;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER members_move_account_version
    AFTER INSERT OR UPDATE OR DELETE ON members
    FOR EACH ROW EXECUTE FUNCTION members_move_account_version();
