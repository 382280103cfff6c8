-- pgbench custom script for `grantmesh bench withdraw`, the baseline: the
-- one-statement withdrawal the College ran before it batched withdrawals
-- (the WITHDRAW statement of services/college/src/store/postgres.rs until
-- issue 11). It is a fixed yardstick: the College no longer runs it (since
-- issue 18 it decides each batch in Rust between two pipelined round
-- trips), so nothing checks it against the College's code. Its keys are
-- unique per (account, key), so also per (account, researcher, key), the
-- journal's unique constraint since migration V6. Verbatim but for its
-- parameters:
--   $1 account          -> the :n-th row of bench_accounts (made by the bench)
--   $2 researcher       -> :researcher (-D)
--   $3 amount           -> :amount (-D, 1)
--   $4 idempotency key  -> 'pgb-' || :run || '-' || :client_id || '-' || :seq,
--                          unique per transaction (:seq counts per client)
--   $5 memo             -> :memo (-D)
--
-- By hand, against a database the bench left behind (-D naccounts=1: the hot account):
--   pgbench -n -M prepared -f withdraw.sql -c 16 -j 2 -T 5 -D naccounts=64 \
--     -D researcher=UUID -D amount=1 -D memo=bench -D run=byhand -D seq=0 URL
\set n random(1, :naccounts)
\set seq :seq + 1
WITH target AS (
    SELECT a.id, a.balance, a.expires_at <= clock_timestamp() AS expired,
           EXISTS (SELECT 1 FROM members m WHERE m.account_id = a.id AND m.researcher_id = :researcher) AS is_member
    FROM accounts a WHERE a.id = (SELECT id FROM bench_accounts WHERE n = :n)
),
previous AS (
    SELECT w.id, w.researcher_id, w.amount, w.memo, w.balance_after, w.created_at
    FROM withdrawals w WHERE w.account_id = (SELECT id FROM bench_accounts WHERE n = :n) AND w.idempotency_key = ('pgb-' || :run || '-' || :client_id || '-' || :seq)
),
debit AS (
    UPDATE accounts a SET balance = a.balance - :amount
    WHERE a.id = (SELECT id FROM bench_accounts WHERE n = :n)
      AND a.balance >= :amount
      AND a.expires_at > clock_timestamp()
      AND EXISTS (SELECT 1 FROM members m WHERE m.account_id = (SELECT id FROM bench_accounts WHERE n = :n) AND m.researcher_id = :researcher)
      AND NOT EXISTS (SELECT 1 FROM previous)
    RETURNING a.balance, clock_timestamp() AS at
),
journal AS (
    INSERT INTO withdrawals (account_id, researcher_id, amount, idempotency_key, memo, balance_after, created_at)
    SELECT (SELECT id FROM bench_accounts WHERE n = :n), :researcher, :amount, ('pgb-' || :run || '-' || :client_id || '-' || :seq), :memo, balance, at FROM debit
    RETURNING id, created_at, balance_after
),
notified AS (
    SELECT pg_notify('grantmesh_accounts', 'withdrawal:' || (SELECT id FROM bench_accounts WHERE n = :n)::text || ':' || j.id::text) FROM journal j
)
SELECT (SELECT count(*) FROM notified) AS notified,
       j.id AS new_id, j.created_at AS new_at, j.balance_after AS new_balance,
       t.id IS NOT NULL AS account_exists, t.is_member, t.expired, t.balance,
       p.id AS prev_id, p.researcher_id AS prev_researcher, p.amount AS prev_amount, p.memo AS prev_memo,
       p.balance_after AS prev_balance_after, p.created_at AS prev_at
FROM (SELECT 1) AS one
LEFT JOIN journal j ON true
LEFT JOIN target t ON true
LEFT JOIN previous p ON true;
