#!/usr/bin/env python3
"""What SQLite's `synchronous = FULL` costs the College against `NORMAL`.

The embedded dev store (services/store/src/sqlite.rs, `SYNCHRONOUS`) runs in
WAL mode with `synchronous = FULL`, so every commit syncs the log before it
returns and an acknowledged withdrawal survives a power cut; `NORMAL` syncs
only at checkpoints. This script measures the difference on the College's
own withdrawal transaction, one at a time (as one client sees it):

    BEGIN IMMEDIATE
    SELECT <the store's clock>
    SELECT balance, expires_at FROM accounts WHERE id = ?
    SELECT role FROM members WHERE account_id = ? AND researcher_id = ?
    SELECT ... FROM withdrawals WHERE account_id = ? AND researcher_id = ? AND idempotency_key = ?
    INSERT INTO withdrawals ... RETURNING id
    UPDATE accounts SET balance = ? WHERE id = ?
    COMMIT

(services/college/src/store/sqlite/ledger.rs, a batch of one), against the
College's tables as its migrations leave them (V1 and V5: accounts, members,
the journal with its unique (account, researcher, key) and its triggers).

Each run makes a fresh WAL database in a temporary directory, opens
`--accounts` accounts, warms up, then times `--transactions` sequential
withdrawals (a fresh key each, spread over the accounts), from BEGIN to the
end of COMMIT. Every round runs both settings back to back, the order
alternating between rounds. Prints commits/s, p50 and p99 per round and
setting, then per setting over all rounds, and FULL/NORMAL.

The temporary directory goes under `--dir` (default: the system's temporary
directory); put it on the file system the dev store uses, since what a sync
costs is the file system's and the disk's. `grantmesh dev` keeps its file in
the user's data directory (`$XDG_DATA_HOME/grantmesh`, else
~/.local/share/grantmesh); the script says whether `--dir` is on the same
file system.

Python's sqlite3 module only (it links the system's SQLite, not the one
rusqlite bundles; the sync each commit waits for is the same). Two
differences from the College, neither in the timed path's I/O: the clock is
`julianday('now')` in milliseconds, since `unixepoch('subsec')` needs SQLite
3.42; and the College's code between statements (Rust) is not here.

    python3 clients/cli/bench/sqlite_synchronous.py --transactions 2000 --rounds 3
"""

import argparse
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid

# The College's tables (services/college/migrations/sqlite, V1 then V5),
# without the columns' clock defaults (the script sets every time itself).
SCHEMA = """
CREATE TABLE researchers (
    id            BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    name          TEXT NOT NULL,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE accounts (
    id                     BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    proposal_id            TEXT NOT NULL UNIQUE,
    agency                 TEXT NOT NULL,
    title                  TEXT NOT NULL,
    principal_investigator BLOB NOT NULL REFERENCES researchers (id),
    award                  INTEGER NOT NULL CHECK (award > 0),
    balance                INTEGER NOT NULL CHECK (balance >= 0),
    opened_at              INTEGER NOT NULL,
    expires_at             INTEGER NOT NULL,
    awarded_to             BLOB REFERENCES researchers (id),
    duration_days          INTEGER CHECK (duration_days > 0),
    CHECK (balance <= award),
    CHECK (expires_at > opened_at)
) STRICT;

CREATE TABLE members (
    account_id    BLOB NOT NULL REFERENCES accounts (id),
    researcher_id BLOB NOT NULL REFERENCES researchers (id),
    role          TEXT NOT NULL CHECK (role IN ('principal_investigator', 'member')),
    added_at      INTEGER NOT NULL,
    PRIMARY KEY (account_id, researcher_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX members_by_researcher ON members (researcher_id);

CREATE TABLE withdrawals (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id      BLOB NOT NULL REFERENCES accounts (id),
    researcher_id   BLOB NOT NULL REFERENCES researchers (id),
    amount          INTEGER NOT NULL CHECK (amount > 0),
    idempotency_key TEXT NOT NULL,
    memo            TEXT NOT NULL,
    balance_after   INTEGER NOT NULL CHECK (balance_after >= 0),
    created_at      INTEGER NOT NULL,
    UNIQUE (account_id, researcher_id, idempotency_key)
) STRICT;
CREATE INDEX withdrawals_newest_first ON withdrawals (account_id, id DESC);

CREATE TRIGGER withdrawals_no_update BEFORE UPDATE ON withdrawals
BEGIN
    SELECT RAISE(ABORT, 'the withdrawal journal is append-only');
END;

CREATE TRIGGER withdrawals_no_delete BEFORE DELETE ON withdrawals
BEGIN
    SELECT RAISE(ABORT, 'the withdrawal journal is append-only');
END;
"""

NOW_MS = "SELECT CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
LOAD_ACCOUNT = "SELECT balance, expires_at FROM accounts WHERE id = ?1"
LOAD_ROLE = "SELECT role FROM members WHERE account_id = ?1 AND researcher_id = ?2"
LOAD_USED = """SELECT id, amount, memo, created_at, balance_after FROM withdrawals
                 WHERE account_id = ?1 AND researcher_id = ?2 AND idempotency_key = ?3"""
INSERT = """INSERT INTO withdrawals (account_id, researcher_id, amount, idempotency_key, memo,
                                          balance_after, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id"""
DEBIT = "UPDATE accounts SET balance = ?2 WHERE id = ?1"

# The College's pool sets these on every connection (connection_pragmas);
# journal_mode = WAL is set once, in the file.
BUSY_TIMEOUT_MS = 5000
# An award no run can exhaust.
AWARD = 10**12
DAY_MS = 86_400_000


def default_dev_data_dir():
    """Where `grantmesh dev` keeps its SQLite file by default (the
    `directories` crate's data directory on Linux)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "grantmesh")


def mount_of(path):
    """(device, mount point, file system type) of the nearest existing
    ancestor of `path`: the longest mount point that contains it."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    device = os.stat(path).st_dev
    point, kind = "?", "?"
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                inside = fields[1] == "/" or path == fields[1] or path.startswith(fields[1] + "/")
                if inside and (point == "?" or len(fields[1]) >= len(point)):
                    point, kind = fields[1], fields[2]
    except OSError:
        pass
    return device, point, kind


def open_db(path, synchronous):
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise SystemExit(f"{path}: journal_mode is {mode}, not wal")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    got = conn.execute("PRAGMA synchronous").fetchone()[0]
    expected = {"NORMAL": 1, "FULL": 2}[synchronous]
    if got != expected:
        raise SystemExit(f"PRAGMA synchronous is {got}, expected {expected}")
    return conn


def seed(conn, accounts):
    """One researcher, the principal investigator of `accounts` accounts."""
    now = conn.execute(NOW_MS).fetchone()[0]
    researcher = uuid.uuid4().bytes
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO researchers VALUES (?1, 'bench', 'bench@example.org', 'x', ?2)",
        (researcher, now),
    )
    ids = []
    for n in range(accounts):
        account = uuid.uuid4().bytes
        conn.execute(
            "INSERT INTO accounts VALUES (?1, ?2, 'nsf', 'bench', ?3, ?4, ?4, ?5, ?6, ?3, 3650)",
            (account, f"p-{n}", researcher, AWARD, now, now + 3650 * DAY_MS),
        )
        conn.execute(
            "INSERT INTO members VALUES (?1, ?2, 'principal_investigator', ?3)",
            (account, researcher, now),
        )
        ids.append(account)
    conn.execute("COMMIT")
    return researcher, ids


def withdraw(conn, account, researcher, key):
    """The College's SQLite withdrawal, a batch of one; returns the journal id."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        now = conn.execute(NOW_MS).fetchone()[0]
        balance, expires_at = conn.execute(LOAD_ACCOUNT, (account,)).fetchone()
        (role,) = conn.execute(LOAD_ROLE, (account, researcher)).fetchone()
        used = conn.execute(LOAD_USED, (account, researcher, key)).fetchone()
        # The rule (ledger::decide), reduced to what the bench exercises.
        if used is not None or role is None or expires_at <= now or balance < 1:
            raise RuntimeError(f"the bench's withdrawal was refused: {key}")
        (entry,) = conn.execute(
            INSERT, (account, researcher, 1, key, "bench", balance - 1, now)
        ).fetchone()
        conn.execute(DEBIT, (account, balance - 1))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return entry


def run(directory, synchronous, args, tag):
    """One measured run on a fresh database: (commits/s, latencies in µs)."""
    path = os.path.join(directory, f"{tag}-{synchronous.lower()}.sqlite")
    conn = open_db(path, synchronous)
    conn.executescript(SCHEMA)
    researcher, accounts = seed(conn, args.accounts)
    seq = 0

    def one():
        nonlocal seq
        seq += 1
        account = accounts[seq % len(accounts)]
        return withdraw(conn, account, researcher, f"py-{tag}-{seq}")

    for _ in range(args.warmup):
        one()
    latencies = []
    started = time.perf_counter()
    for _ in range(args.transactions):
        t0 = time.perf_counter()
        one()
        latencies.append((time.perf_counter() - t0) * 1e6)
    elapsed = time.perf_counter() - started
    # The books: every account's balance is its award less its journal.
    wrong = conn.execute(
        """SELECT count(*) FROM accounts a
             LEFT JOIN (SELECT account_id, sum(amount) AS spent FROM withdrawals GROUP BY account_id) w
               ON w.account_id = a.id
            WHERE a.balance <> a.award - coalesce(w.spent, 0)"""
    ).fetchone()[0]
    journal = conn.execute("SELECT count(*) FROM withdrawals").fetchone()[0]
    conn.close()
    if wrong or journal != args.warmup + args.transactions:
        raise SystemExit(f"books do not balance: {wrong} accounts off, journal {journal}")
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass
    return args.transactions / elapsed, latencies


def quantile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round((len(ordered) - 1) * q))]


def ms(micros):
    return f"{micros / 1000:.2f} ms"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=2000, help="measured withdrawals per run")
    parser.add_argument("--warmup", type=int, default=100, help="unmeasured withdrawals before each run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs both settings")
    parser.add_argument("--accounts", type=int, default=64, help="accounts the withdrawals spread over")
    parser.add_argument(
        "--dir", default=tempfile.gettempdir(), help="where the temporary directory goes"
    )
    args = parser.parse_args()
    if args.transactions < 1 or args.rounds < 1 or args.accounts < 1 or args.warmup < 0:
        parser.error("--transactions, --rounds and --accounts must be at least 1, --warmup at least 0")

    directory = tempfile.mkdtemp(prefix="gm-sqlite-sync-", dir=args.dir)
    here = mount_of(directory)
    dev_dir = default_dev_data_dir()
    dev = mount_of(dev_dir)
    print(
        f"SQLite {sqlite3.sqlite_version} (Python's); databases in {directory} "
        f"({here[2]} on {here[1]}); the dev store's default directory {dev_dir} is "
        f"{'on the same' if here[0] == dev[0] else 'on another'} file system ({dev[2]} on {dev[1]})"
    )
    try:
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    except OSError:
        pass
    print()

    settings = ("NORMAL", "FULL")
    rates = {s: [] for s in settings}
    latencies = {s: [] for s in settings}
    print("| round | synchronous | commits/s | p50 | p99 |")
    print("| --: | --- | --: | --: | --: |")
    try:
        for r in range(args.rounds):
            order = settings if r % 2 == 0 else settings[::-1]
            for setting in order:
                rate, lat = run(directory, setting, args, f"r{r}")
                rates[setting].append(rate)
                latencies[setting].extend(lat)
                print(
                    f"| {r + 1} | {setting} | {rate:.0f} | {ms(quantile(lat, 0.5))} | {ms(quantile(lat, 0.99))} |",
                    flush=True,
                )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print()

    print(f"| synchronous | commits/s (mean of {args.rounds}) | per round | p50 | p99 |")
    print("| --- | --: | --: | --: | --: |")
    summary = {}
    for setting in settings:
        lat = latencies[setting]
        summary[setting] = (
            statistics.mean(rates[setting]),
            quantile(lat, 0.5),
            quantile(lat, 0.99),
        )
        print(
            f"| {setting} | {summary[setting][0]:.0f} | {min(rates[setting]):.0f}–{max(rates[setting]):.0f} "
            f"| {ms(summary[setting][1])} | {ms(summary[setting][2])} |"
        )
    per_round = [f / n for f, n in zip(rates["FULL"], rates["NORMAL"])]
    print()
    print(
        f"FULL/NORMAL: commits/s {summary['FULL'][0] / summary['NORMAL'][0]:.2f} "
        f"(per round {min(per_round):.2f}–{max(per_round):.2f}), "
        f"p50 {summary['FULL'][1] / summary['NORMAL'][1]:.2f}, "
        f"p99 {summary['FULL'][2] / summary['NORMAL'][2]:.2f}"
    )
    try:
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    except OSError:
        pass


if __name__ == "__main__":
    main()
