#!/usr/bin/env python3
"""Cost of one data-quality gate (include.pgmaint.quality.run_gate): seconds and peak memory.

    .venv/bin/python scripts/bench_quality.py [--dsn CONNINFO] [--rows 10000000] [--repeat 3] [--quick]

Figures, not a timed test. Server: a throwaway embedded pgserver (PostgreSQL 16) in a temp
dir, deleted at exit; or `--dsn` / $PGMAINT_BENCH_DSN (a role that may CREATE DATABASE;
the database `pgmaint_bench_quality` is recreated there and dropped at exit).

Data sets
* demo   - scripts/demo_seed.py's incident state (public.inbound_requests, ~53k rows, 34
           daily partitions, the last ~2.5 days in the DEFAULT), then what the demo does:
           include.pgmaint.migrate.migrate_table moves those rows out (migration journal) and
           run_maintenance premakes the runway and retires expired partitions.
* 10M    - bench.big_events, daily: 30 partitions x 300k rows (days -26..+3) and a DEFAULT
           holding 1M rows for days -29..-27 (10M rows in all; index on the key). Checks are
           measured there, then the DEFAULT is migrated (1M rows moved) and the
           after-migration checks are measured.
* 1000p  - bench.many_parts: 1,000 empty daily partitions, no DEFAULT, retention 3000 days
           (every junction inside the window): how the catalog checks grow with partitions.

Per row of the table: `gate s` = median wall time of `run_gate` over --repeat runs (the
catalog read, building the checks, the GX ephemeral context, the validation; GX already
imported); `SQL ms` = median time of the checks' own SQL run directly by psycopg (the
database's share); `peak MB` = peak Python heap allocated during one run, measured by
**tracemalloc** in a separate run (tracemalloc slows Python down, so it is not timed).
Process-wide figures (GX import seconds, max RSS from resource.getrusage) are printed below
the table: RSS is a high-water mark for the whole process, so it cannot be split per gate.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402

from include.pgmaint.config import load_config, parse_config  # noqa: E402
from include.pgmaint.quality import CHECKS, run_gate  # noqa: E402
from include.pgmaint.quality.facts import migrated_ranges, read_facts  # noqa: E402
from include.pgmaint.quality.suites import build_suite  # noqa: E402

DBNAME = "pgmaint_bench_quality"
ALL_CHECKS = list(CHECKS)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Server:
    def __init__(self, dsn: str | None):
        self.external, self.pgdata, self.admin = dsn, None, dsn

    def __enter__(self) -> str:
        if self.external:
            with psycopg.connect(self.external, autocommit=True) as c:
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DBNAME)))
                c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DBNAME)))
            return make_conninfo(self.external, dbname=DBNAME)
        import devdb

        self.pgdata = Path(tempfile.mkdtemp(prefix="pgmaint-bq-", dir="/tmp"))
        info = devdb.start_server(self.pgdata, cleanup_mode="delete")
        devdb.ensure_database(info.conninfo(), DBNAME)
        self.admin = info.conninfo()
        with psycopg.connect(self.admin, autocommit=True) as c:
            version = c.execute("SHOW server_version").fetchone()[0]
        log(f"embedded pgserver PostgreSQL {version} in {self.pgdata}")
        return info.conninfo(DBNAME)

    def __exit__(self, *exc) -> None:
        if self.external:
            with psycopg.connect(self.external, autocommit=True) as c:
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DBNAME)))
        else:
            import devdb

            devdb.stop_server(self.pgdata, delete=True)


# --- data sets ----------------------------------------------------------------------------------


def seed_demo(dsn: str):
    import demo_seed

    from include.pgmaint.db import connect
    from include.pgmaint.migrate import migrate_table

    demo_seed.seed(dsn)
    config = load_config(REPO / "include" / "config" / "pgmaint.yaml")
    cfg = config.table("public.inbound_requests")
    from include.pgmaint.maintenance import run_maintenance

    with connect(dsn) as conn:
        result = migrate_table(conn, dsn, config, cfg, progress=lambda m: None)
        assert result.outcome == "success", result.errors
        [maintained] = run_maintenance(conn, config, [cfg])  # premake the runway, retire expired partitions
        assert maintained.outcome == "success", maintained.errors
    return config, cfg, result.migration_id


def seed_big(dsn: str, rows: int):
    now = datetime.now(timezone.utc)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    per_day = (rows * 9 // 10) // 30
    default_rows = rows - per_day * 30
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET synchronous_commit = off")
        c.execute("DROP SCHEMA IF EXISTS bench CASCADE")
        c.execute("CREATE SCHEMA bench")
        c.execute(
            "CREATE TABLE bench.big_events (id bigint NOT NULL, ts timestamptz NOT NULL, client_id int NOT NULL, "
            "payload text NOT NULL) PARTITION BY RANGE (ts)"
        )
        c.execute("CREATE TABLE bench.big_events_default PARTITION OF bench.big_events DEFAULT")
        for d in range(-26, 4):
            lo = today + timedelta(days=d)
            c.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF bench.big_events FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier("bench", f"big_events_p{lo:%Y%m%d}"),
                    sql.Literal(lo.isoformat()),
                    sql.Literal((lo + timedelta(days=1)).isoformat()),
                )
            )
        t0 = time.monotonic()
        # 30 days x per_day rows into the partitions; default_rows over days -29..-27 into the DEFAULT
        for d in range(-26, 4):
            c.execute(
                "INSERT INTO bench.big_events SELECT g, %s::timestamptz + (g - 1) * (interval '1 day' / %s), g %% 1000, "
                "'p' || (g %% 977) FROM generate_series(1, %s) g",
                [today + timedelta(days=d), per_day, per_day],
            )
        c.execute(
            "INSERT INTO bench.big_events SELECT g, %s::timestamptz + (g - 1) * (interval '3 days' / %s), g %% 1000, "
            "'d' || (g %% 977) FROM generate_series(1, %s) g",
            [today - timedelta(days=29), default_rows, default_rows],
        )
        log(
            f"10M: {per_day * 30:,} rows in 30 partitions + {default_rows:,} in the DEFAULT loaded in {time.monotonic() - t0:.0f}s"
        )
        c.execute("CREATE INDEX ON bench.big_events (ts)")
        c.execute("VACUUM ANALYZE bench.big_events")
        log(f"10M: indexed and analyzed after {time.monotonic() - t0:.0f}s")
    config = parse_config(
        {
            "state_schema": "pgmaint",
            "tables": [
                {
                    "name": "bench.big_events",
                    "partition_key": "ts",
                    "interval": "1 day",
                    "premake": 3,
                    "retention": "30 days",
                }
            ],
        }
    )
    return config, config.tables[0]


def migrate_big(dsn: str, config, cfg) -> int:
    from include.pgmaint.db import connect
    from include.pgmaint.migrate import migrate_table

    t0 = time.monotonic()
    with connect(dsn) as conn:
        result = migrate_table(conn, dsn, config, cfg, batch_rows=100_000, progress=lambda m: None)
    assert result.outcome == "success", result.errors
    log(
        f"10M: migrated {result.rows_moved:,} DEFAULT rows into {len(result.partitions)} partitions in {time.monotonic() - t0:.0f}s"
    )
    return result.migration_id


def seed_many(dsn: str, count: int):
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS bench.many_parts")
        c.execute("CREATE SCHEMA IF NOT EXISTS bench")
        c.execute("CREATE TABLE bench.many_parts (id bigint, ts timestamptz NOT NULL) PARTITION BY RANGE (ts)")
        with c.transaction():
            for d in range(-(count - 5), 5):
                lo = today + timedelta(days=d)
                c.execute(
                    sql.SQL("CREATE TABLE {} PARTITION OF bench.many_parts FOR VALUES FROM ({}) TO ({})").format(
                        sql.Identifier("bench", f"many_parts_p{lo:%Y%m%d}"),
                        sql.Literal(lo.isoformat()),
                        sql.Literal((lo + timedelta(days=1)).isoformat()),
                    )
                )
    config = parse_config(
        {
            "state_schema": "pgmaint",
            "tables": [
                {
                    "name": "bench.many_parts",
                    "partition_key": "ts",
                    "interval": "1 day",
                    "premake": 4,
                    "retention": "3000 days",
                }
            ],
        }
    )
    return config, config.tables[0]


def table_size(dsn: str, cfg) -> tuple[int, int]:
    with psycopg.connect(dsn) as c:
        parts = c.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = to_regclass(%s)", [cfg.name]).fetchone()[
            0
        ]
        rows = c.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(cfg.schema, cfg.table))).fetchone()[0]
    return rows, parts


# --- measuring ----------------------------------------------------------------------------------


def sql_ms(dsn: str, config, cfg, checks, *, migration_id=None, ranges=None, repeat: int = 3) -> float:
    """Median time of the checks' own SQL (the asset substituted for {batch}), run by psycopg."""
    facts, migration, _ = read_facts(dsn, config, cfg, migration_id)
    if ranges == "migrated":
        ranges = migrated_ranges(facts, migration)
    suite = build_suite(config, cfg, facts, checks, now=datetime.now(timezone.utc), ranges=ranges, migration=migration)
    times = []
    with psycopg.connect(dsn, autocommit=True, options="-c TimeZone=UTC") as c:
        for _ in range(repeat):
            t0 = time.perf_counter()
            for spec in suite.checks:
                c.execute(spec.query.format(batch=f"({suite.assets[spec.asset]}) AS subselect")).fetchall()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(dsn, config, cfg, label, checks, *, repeat, migration_id=None, ranges=None) -> dict:
    kwargs = {"migration_id": migration_id, "ranges": ranges}
    seconds, last = [], None
    for _ in range(repeat):
        last = run_gate(dsn, config, cfg, "bench", checks, **kwargs)
        seconds.append(last.seconds)
    tracemalloc.start()
    tracemalloc.reset_peak()
    run_gate(dsn, config, cfg, "bench", checks, **kwargs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    verdict = "pass" if last.success else ("error" if last.errors and not last.failures else "fail")
    return {
        "label": label,
        "seconds": statistics.median(seconds),
        "sql_ms": sql_ms(dsn, config, cfg, checks, repeat=repeat, **kwargs),
        "peak_mb": peak / 2**20,
        "verdict": verdict,
        "errors": last.errors,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn", default=os.environ.get("PGMAINT_BENCH_DSN"))
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="100k rows, 200 partitions, 1 repeat (a smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.partitions, args.repeat = 100_000, 200, 1

    from include.pgmaint.quality.runner import import_gx

    rss0, t0 = rss_mb(), time.monotonic()
    import_gx()
    gx_import_s, rss_gx = time.monotonic() - t0, rss_mb()
    log(f"great_expectations imported in {gx_import_s:.1f}s (max RSS {rss0:.0f} -> {rss_gx:.0f} MB)")

    results: list[tuple[str, int, int, dict]] = []
    with Server(args.dsn) as dsn:
        # demo
        config, cfg, mid = seed_demo(dsn)
        rows, parts = table_size(dsn, cfg)
        log(f"demo: {cfg.name}: {rows:,} rows, {parts} partitions, migration {mid}")
        for check in ALL_CHECKS:
            kw = {"migration_id": mid} if check == "conserved" else {}
            if check == "default_clean":
                kw = {"migration_id": mid, "ranges": "migrated"}
            results.append(("demo", rows, parts, measure(dsn, config, cfg, check, [check], repeat=args.repeat, **kw)))
        results.append(
            (
                "demo",
                rows,
                parts,
                measure(
                    dsn,
                    config,
                    cfg,
                    "full gate (all 6)",
                    ALL_CHECKS,
                    repeat=args.repeat,
                    migration_id=mid,
                    ranges="migrated",
                ),
            )
        )

        # 10M, before and after migrating its DEFAULT
        config, cfg = seed_big(dsn, args.rows)
        rows, parts = table_size(dsn, cfg)
        label = f"{rows / 1e6:.0f}M" if rows >= 1e6 else f"{rows / 1e3:.0f}k"
        in_default = f"{label} ({args.rows - (args.rows * 9 // 10) // 30 * 30:,} rows in DEFAULT)"
        for check in ("runway", "retention", "contiguity", "not_null_key"):
            results.append((in_default, rows, parts, measure(dsn, config, cfg, check, [check], repeat=args.repeat)))
        results.append(
            (
                in_default,
                rows,
                parts,
                measure(dsn, config, cfg, "default_clean (DEFAULT empty?)", ["default_clean"], repeat=args.repeat),
            )
        )
        mid = migrate_big(dsn, config, cfg)
        rows, parts = table_size(dsn, cfg)
        moved = f"{label} (after migration)"
        results.append(
            (
                moved,
                rows,
                parts,
                measure(
                    dsn,
                    config,
                    cfg,
                    "default_clean (migrated ranges)",
                    ["default_clean"],
                    repeat=args.repeat,
                    migration_id=mid,
                    ranges="migrated",
                ),
            )
        )
        results.append(
            (
                moved,
                rows,
                parts,
                measure(
                    dsn,
                    config,
                    cfg,
                    "conserved (moved rows re-read)",
                    ["conserved"],
                    repeat=args.repeat,
                    migration_id=mid,
                ),
            )
        )
        results.append(
            (
                moved,
                rows,
                parts,
                measure(
                    dsn,
                    config,
                    cfg,
                    "full gate (all 6)",
                    ALL_CHECKS,
                    repeat=args.repeat,
                    migration_id=mid,
                    ranges="migrated",
                ),
            )
        )
        results.append(
            (
                moved,
                rows,
                parts,
                measure(
                    dsn,
                    config,
                    cfg,
                    "full gate without conserved",
                    [c for c in ALL_CHECKS if c != "conserved"],
                    repeat=args.repeat,
                    migration_id=mid,
                    ranges="migrated",
                ),
            )
        )

        # many partitions
        config, cfg = seed_many(dsn, args.partitions)
        rows, parts = table_size(dsn, cfg)
        for check in ("runway", "retention", "contiguity"):
            results.append(
                (f"{parts}p (empty)", rows, parts, measure(dsn, config, cfg, check, [check], repeat=args.repeat))
            )

    print("\n| data set | rows | partitions | check | gate s | SQL ms | peak MB (tracemalloc) | verdict |")
    print("|---|---:|---:|---|---:|---:|---:|---|")
    for dataset, rows, parts, r in results:
        print(
            f"| {dataset} | {rows:,} | {parts} | {r['label']} | {r['seconds']:.3f} | {r['sql_ms']:.1f} | "
            f"{r['peak_mb']:.1f} | {r['verdict']} |"
        )
    print(
        f"\nGX import: {gx_import_s:.1f} s, max RSS {rss0:.0f} MB before -> {rss_gx:.0f} MB after; "
        f"max RSS at the end: {rss_mb():.0f} MB (resource.getrusage ru_maxrss, whole process)."
    )
    print(f"Repeat: {args.repeat} (median). `gate s` is run_gate's own `seconds` (GX imported beforehand).")
    errors = [r for *_, r in results if r["errors"]]
    for r in errors:
        print(f"errors in {r['label']}: {r['errors']}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
