-- pgbench custom script for `grantmesh bench withdraw`, third column: the
-- College's batched withdrawal (WITHDRAW_BATCH in
-- services/college/src/store/postgres.rs, a call of the withdraw_batch
-- function of migration V4), verbatim but for its parameters, with :batch
-- withdrawals of :amount per transaction:
--   $1 accounts   -> :batch rows of bench_accounts, spread from a random start
--   $2 researchers -> :researcher, :batch times
--   $3 amounts    -> :amount, :batch times
--   $4 keys       -> 'pgb-' || :run || '-' || :client_id || '-' || :seq || '-' || i, unique
--   $5 memos      -> :memo, :batch times
-- `grantmesh bench withdraw` refuses to run when this file has drifted from
-- the statement in postgres.rs.
--
-- By hand, against a database the bench left behind (-D naccounts=1: the hot account):
--   pgbench -n -M prepared -f withdraw_batch.sql -c 4 -j 2 -T 5 -D naccounts=64 -D batch=16 \
--     -D researcher=UUID -D amount=1 -D memo=bench -D run=byhand -D seq=0 URL
\set r random(0, 1000000000)
\set seq :seq + 1
SELECT r_outcome, r_id, r_researcher, r_amount, r_memo, r_at, r_balance_after, r_balance FROM withdraw_batch((SELECT array_agg(b.id ORDER BY g.i) FROM generate_series(1, :batch::int) AS g(i) JOIN bench_accounts b ON b.n = 1 + ((:r::bigint + g.i * 7919) % :naccounts::int))::uuid[], array_fill(:researcher::uuid, ARRAY[:batch::int])::uuid[], array_fill(:amount::bigint, ARRAY[:batch::int])::bigint[], (SELECT array_agg('pgb-' || :run || '-' || :client_id || '-' || :seq || '-' || g.i ORDER BY g.i) FROM generate_series(1, :batch::int) AS g(i))::text[], array_fill(:memo::text, ARRAY[:batch::int])::text[]);
