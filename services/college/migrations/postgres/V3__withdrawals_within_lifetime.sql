-- The backstop for "no withdrawal after expiry", as CHECK (balance >= 0) is
-- for "never overdrawn": a journal entry is stamped with the moment its debit
-- held the account's row lock (clock_timestamp()), and none may be stamped at
-- or after the account's expiry. A withdrawal statement that waited on the
-- lock across the expiry fails here as a whole, debit included: PostgreSQL
-- does not re-check a waiting UPDATE's conditions when the lock holder only
-- locked the row and let go, so the statement's own check is not enough.

CREATE FUNCTION withdrawals_within_lifetime() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.created_at >= (SELECT expires_at FROM accounts WHERE id = NEW.account_id) THEN
        RAISE EXCEPTION 'account % has expired', NEW.account_id USING ERRCODE = 'GMEXP';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER withdrawals_within_lifetime
    BEFORE INSERT ON withdrawals
    FOR EACH ROW EXECUTE FUNCTION withdrawals_within_lifetime();
