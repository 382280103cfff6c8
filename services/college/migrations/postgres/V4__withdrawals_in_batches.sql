-- Withdrawals in batches: the College queues concurrent Withdraw calls and
-- applies each batch with one call of withdraw_batch, in one transaction with
-- one commit and at most one NOTIFY (the NOTIFY lock is held through each
-- commit's WAL flush, so one per withdrawal made every commit wait in line).
--
-- The batch's arrays hold one withdrawal per index, in arrival order. The
-- function locks every account of the batch once (FOR NO KEY UPDATE, in id
-- order, so concurrent batches never deadlock), reads the clock at that
-- moment (clock_timestamp(): the expiry is judged by the database's clock
-- when the debit holds the lock, and the journal is stamped with it), reads
-- every membership and earlier use of each key in one statement, then
-- applies the withdrawals in order in memory, each seeing the ones before it:
-- a refused withdrawal changes nothing and never fails the others. It
-- returns one row per withdrawal, in the same order, saying what became of it:
--
--   applied       the new journal entry (r_id ...), r_balance after it
--   replayed      the key was applied before (in the journal, or earlier in
--                 this batch) with the same amount: that entry
--   key_reused    the key was applied before with another amount (r_amount)
--   missing       no such account
--   not_member    the researcher is not a member of the account
--   expired       the account had expired when its lock was taken
--   insufficient  the balance (r_balance) at that point is below the amount
--
-- CHECK (balance >= 0), the append-only triggers and the expiry check below
-- stay behind it as backstops.

CREATE FUNCTION withdraw_batch(
    accounts_in    uuid[],
    researchers_in uuid[],
    amounts_in     bigint[],
    keys_in        text[],
    memos_in       text[]
) RETURNS TABLE (
    r_outcome       text,
    r_id            bigint,
    r_researcher    uuid,
    r_amount        bigint,
    r_memo          text,
    r_at            timestamptz,
    r_balance_after bigint,
    r_balance       bigint
)
LANGUAGE plpgsql
-- The batch's arrays would otherwise be folded into a fresh custom plan of
-- every statement on every call; generic plans are planned once per session.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    n           int := coalesce(cardinality(accounts_in), 0);
    locked_at   timestamptz;
    -- The batch's accounts, in id order, with their running balances.
    locked      uuid[];
    balances    bigint[];
    expiries    timestamptz[];
    -- Per withdrawal: its account's index in `locked` (NULL: no such
    -- account), membership, the key's earlier journal entry, and the
    -- withdrawal before it in this batch with the same account and key.
    slot        int[];
    is_member   bool[];
    prev_id     bigint[];
    prev_by     uuid[];
    prev_amount bigint[];
    prev_memo   text[];
    prev_at     timestamptz[];
    prev_after  bigint[];
    prev_item   int[];
    -- Per withdrawal: the outcome, the withdrawal of this batch whose entry
    -- holds its key (if any), the balance after it, the balance it saw.
    kind        text[]   := array_fill(NULL::text, ARRAY[n]);
    applied_by  int[]    := array_fill(NULL::int, ARRAY[n]);
    debited     bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    seen        bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    new_id      bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    applied     int[]    := '{}';
    ids         bigint[];
    s           int;
    j           int;
    touched     text;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    SELECT array_agg(l.id ORDER BY l.id), array_agg(l.balance ORDER BY l.id),
           array_agg(l.expires_at ORDER BY l.id)
      INTO locked, balances, expiries
      FROM (SELECT a.id, a.balance, a.expires_at FROM accounts a
             WHERE a.id = ANY (accounts_in) ORDER BY a.id FOR NO KEY UPDATE) l;
    locked_at := clock_timestamp();

    -- A fresh snapshot, taken after the locks: it sees every batch that
    -- committed on these accounts before this one.
    SELECT array_agg(array_position(locked, b.account) ORDER BY b.item),
           array_agg(m.researcher_id IS NOT NULL ORDER BY b.item),
           array_agg(w.id ORDER BY b.item), array_agg(w.researcher_id ORDER BY b.item),
           array_agg(w.amount ORDER BY b.item), array_agg(w.memo ORDER BY b.item),
           array_agg(w.created_at ORDER BY b.item), array_agg(w.balance_after ORDER BY b.item),
           array_agg(b.previous ORDER BY b.item)
      INTO slot, is_member, prev_id, prev_by, prev_amount, prev_memo, prev_at, prev_after, prev_item
      FROM (SELECT u.account, u.researcher, u.key, u.item::int AS item,
                   (lag(u.item) OVER (PARTITION BY u.account, u.key ORDER BY u.item))::int AS previous
              FROM unnest(accounts_in, researchers_in, keys_in) WITH ORDINALITY AS u(account, researcher, key, item)) b
      LEFT JOIN members m ON m.account_id = b.account AND m.researcher_id = b.researcher
      LEFT JOIN withdrawals w ON w.account_id = b.account AND w.idempotency_key = b.key;

    FOR i IN 1..n LOOP
        s := slot[i];
        IF s IS NULL THEN
            kind[i] := 'missing';
            CONTINUE;
        END IF;
        IF NOT is_member[i] THEN
            kind[i] := 'not_member';
            CONTINUE;
        END IF;
        seen[i] := balances[s];
        IF prev_id[i] IS NOT NULL THEN
            kind[i] := CASE WHEN prev_amount[i] = amounts_in[i] THEN 'replayed' ELSE 'key_reused' END;
            CONTINUE;
        END IF;
        j := CASE WHEN prev_item[i] IS NULL THEN NULL ELSE applied_by[prev_item[i]] END;
        IF j IS NOT NULL THEN
            applied_by[i] := j;
            kind[i] := CASE WHEN amounts_in[j] = amounts_in[i] THEN 'replayed' ELSE 'key_reused' END;
            CONTINUE;
        END IF;
        IF expiries[s] <= locked_at THEN
            kind[i] := 'expired';
        ELSIF balances[s] < amounts_in[i] THEN
            kind[i] := 'insufficient';
        ELSE
            balances[s] := balances[s] - amounts_in[i];
            seen[i] := balances[s];
            debited[i] := balances[s];
            applied_by[i] := i;
            applied := applied || i;
            kind[i] := 'applied';
        END IF;
    END LOOP;

    IF cardinality(applied) > 0 THEN
        -- Inserted in arrival order, so the entries' ids are too.
        WITH entries AS (
            INSERT INTO withdrawals (account_id, researcher_id, amount, idempotency_key, memo, balance_after, created_at)
            SELECT accounts_in[o], researchers_in[o], amounts_in[o], keys_in[o], memos_in[o], debited[o], locked_at
              FROM unnest(applied) AS o ORDER BY o
            RETURNING id, account_id, idempotency_key
        )
        SELECT array_agg(e.id ORDER BY a.k)
          INTO ids
          FROM unnest(applied) WITH ORDINALITY AS a(o, k)
          JOIN entries e ON e.account_id = accounts_in[a.o] AND e.idempotency_key = keys_in[a.o];
        FOR k IN 1..cardinality(applied) LOOP
            new_id[applied[k]] := ids[k];
        END LOOP;

        UPDATE accounts a SET balance = v.balance
          FROM unnest(locked, balances) AS v(id, balance)
         WHERE a.id = v.id AND a.balance <> v.balance;

        -- One notification for the whole batch: the range of its entries'
        -- ids and the accounts they are on ('*' when the list would not fit
        -- a NOTIFY payload), so a watcher re-reads its account's entries in
        -- that range.
        SELECT string_agg(DISTINCT accounts_in[o]::text, ',') INTO touched FROM unnest(applied) AS o;
        IF length(touched) > 7000 THEN
            touched := '*';
        END IF;
        PERFORM pg_notify('grantmesh_accounts',
            'withdrawals:' || min(x) || ':' || max(x) || ':' || touched) FROM unnest(ids) AS x;
    END IF;

    FOR i IN 1..n LOOP
        j := applied_by[i];
        r_outcome := kind[i];
        r_balance := seen[i];
        IF j IS NOT NULL THEN
            r_id := new_id[j];
            r_researcher := researchers_in[j];
            r_amount := amounts_in[j];
            r_memo := memos_in[j];
            r_at := locked_at;
            r_balance_after := debited[j];
        ELSIF kind[i] IN ('replayed', 'key_reused') THEN
            r_id := prev_id[i];
            r_researcher := prev_by[i];
            r_amount := prev_amount[i];
            r_memo := prev_memo[i];
            r_at := prev_at[i];
            r_balance_after := prev_after[i];
        ELSE
            r_id := NULL;
            r_researcher := NULL;
            r_amount := NULL;
            r_memo := NULL;
            r_at := NULL;
            r_balance_after := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- The expiry backstop of V3, checked once per statement instead of once per
-- row (a batch inserts many rows): no entry may be stamped at or after its
-- account's expiry.
DROP TRIGGER withdrawals_within_lifetime ON withdrawals;
DROP FUNCTION withdrawals_within_lifetime();

CREATE FUNCTION withdrawals_within_lifetime() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    late uuid;
BEGIN
    SELECT e.account_id INTO late FROM added e JOIN accounts a ON a.id = e.account_id
     WHERE e.created_at >= a.expires_at LIMIT 1;
    IF late IS NOT NULL THEN
        RAISE EXCEPTION 'account % has expired', late USING ERRCODE = 'GMEXP';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER withdrawals_within_lifetime
    AFTER INSERT ON withdrawals
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION withdrawals_within_lifetime();
