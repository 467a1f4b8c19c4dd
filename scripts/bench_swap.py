#!/usr/bin/env python3
"""How long the migration's swap holds the parent, by the number of intervals it attaches.

    .venv/bin/python scripts/bench_swap.py [--dsn CONNINFO] [--repeat 3] [--cases 60x1,60x10,60x30,300x30]

The swap is the one moment a copy-first migration holds ACCESS EXCLUSIVE on the parent: every
ATTACH of a shadow partition happens inside it, so its cost grows with the intervals moved.
For each case "EXISTINGxMOVED" (partitions already attached x intervals whose rows sit in the
DEFAULT, a few thousand rows each) a fresh table is migrated with
`include.pgmaint.migrate.migrate_table` while a reader loops `SELECT … WHERE id = … AND ts = …`
through the parent. Printed per case (median of --repeat runs): the swap step's wall time
(`Executor.run`: lock, statements, commit; the circuit breaker's connection excluded), the
longest reader stall, and the sessions that queued behind the swap. Figures, not a test.

Database: `--dsn` (a role that may CREATE DATABASE; `pgmaint_bench_swap` is recreated there),
else the embedded dev PostgreSQL (`make devdb`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402

from include.pgmaint import execute, migrate  # noqa: E402
from include.pgmaint.config import parse_config  # noqa: E402
from include.pgmaint.db import connect  # noqa: E402

DB = "pgmaint_bench_swap"


def build(dsn: str, existing: int, moved: int, now: datetime) -> None:
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP SCHEMA IF EXISTS s CASCADE; DROP SCHEMA IF EXISTS st CASCADE; CREATE SCHEMA s")
        c.execute(
            "CREATE TABLE s.t (id bigint GENERATED ALWAYS AS IDENTITY, ts timestamptz NOT NULL, v text, "
            "PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts)"
        )
        c.execute("CREATE INDEX ON s.t (ts)")
        c.execute("CREATE TABLE s.t_default PARTITION OF s.t DEFAULT")
        for d in range(existing):
            lo = today - timedelta(days=moved + existing - 1 - d)
            c.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF s.t FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier("s", f"t_old{d}"),
                    sql.Literal(lo.isoformat()),
                    sql.Literal((lo + timedelta(days=1)).isoformat()),
                )
            )
        first = today - timedelta(days=moved - 1)
        minutes = int((now - first).total_seconds() // 60)
        c.execute(
            "INSERT INTO s.t (ts, v) SELECT %s::timestamptz + g * interval '1 minute', 'x' FROM generate_series(0, %s) g",
            [first, minutes - 1],
        )
        c.execute("VACUUM ANALYZE s.t")


def one(dsn: str, existing: int, moved: int) -> tuple[float, float, int]:
    now = datetime.now(timezone.utc)
    build(dsn, existing, moved, now)
    cfg = parse_config(
        {
            "state_schema": "st",
            "tables": [
                {
                    "name": "s.t",
                    "partition_key": "ts",
                    "interval": "1 day",
                    "premake": 2,
                    "retention": f"{existing + moved + 5} days",
                }
            ],
        }
    )
    keys = (
        psycopg.connect(dsn, autocommit=True).execute("SELECT id, ts FROM s.t ORDER BY random() LIMIT 500").fetchall()
    )
    stalls: list[float] = []
    stop = threading.Event()

    def reader():
        with psycopg.connect(dsn, autocommit=True) as c:
            i = 0
            while not stop.is_set():
                t0 = time.monotonic()
                c.execute("SELECT v FROM s.t WHERE id = %s AND ts = %s", keys[i % len(keys)]).fetchall()
                stalls.append(time.monotonic() - t0)
                i += 1

    swap: list[float] = []
    original = execute.Executor._attempt

    def timed(self, step, lock_ms):
        t0 = time.monotonic()
        try:
            return original(self, step, lock_ms)
        finally:
            if step.action == "swap":
                swap.append(time.monotonic() - t0)

    execute.Executor._attempt = timed
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        with connect(dsn, cfg.lock_budget) as conn:
            result = migrate.migrate_table(conn, dsn, cfg, cfg.tables[0], progress=lambda m: None)
    finally:
        execute.Executor._attempt = original
        stop.set()
        thread.join()
    if result.outcome != "success" or len(result.partitions) != moved:
        raise SystemExit(f"migration {result.outcome}: {result.errors} {result.skipped_reason}")
    return swap[-1], max(stalls), len(swap)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", help="admin conninfo (default: the embedded dev PostgreSQL)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cases", default="60x1,60x10,60x30,300x30")
    args = ap.parse_args()
    admin = args.dsn
    if admin is None:
        import devdb  # scripts/devdb.py

        admin = devdb.start_server(devdb.DEFAULT_PGDATA).conninfo("postgres")
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
        version = c.execute("SHOW server_version").fetchone()[0]
    dsn = make_conninfo(admin, dbname=DB)
    print(f"PostgreSQL {version}; median of {args.repeat} run(s) per case\n")
    print("| partitions attached | intervals moved | swap (lock to commit) ms | longest reader stall ms | swap tries |")
    print("|---:|---:|---:|---:|---:|")
    for case in args.cases.split(","):
        existing, moved = (int(x) for x in case.split("x"))
        runs = [one(dsn, existing, moved) for _ in range(args.repeat)]
        print(
            f"| {existing} | {moved} | {1000 * statistics.median(r[0] for r in runs):.1f} | "
            f"{1000 * statistics.median(r[1] for r in runs):.1f} | {max(r[2] for r in runs)} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
