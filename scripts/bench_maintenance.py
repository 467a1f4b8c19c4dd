#!/usr/bin/env python3
"""Maintenance benchmark: 1,000 partitioned tables x 60 daily partitions.

    .venv/bin/python scripts/bench_maintenance.py [--tables 1000] [--partitions 60] [--dsn CONNINFO] [--profile]

Prints a markdown table of figures (measured, target, ok/MISSED) and machine
info. It is a benchmark, not a test: it exits 0 when a target is missed, and
non-zero only when it cannot measure (no server, build failed, or the
"no-op" run turned out not to be a no-op).

Database: `--dsn` or `$PGMAINT_BENCH_DSN` (any PostgreSQL >= 14; a role that
may CREATE DATABASE), else a throwaway embedded PostgreSQL (pgserver) in a
temporary pgdata under /tmp, deleted at exit. Either way the database
`pgmaint_bench` is dropped if it exists and created afresh; it is left in place
on an external server (drop it yourself) and deleted with the embedded one.

What is built: `bench.t0000` ... each `(id bigint, ts timestamptz, payload
text, PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts)` with `--partitions` daily
partitions with arbitrary names (`t0000_part_00` ...: pgmaint must adopt them by
their bounds), the newest covering today + `premake` (4) days, and on every
other table an empty DEFAULT partition. Retention is chosen just long enough
that the oldest partition is not expired, so a maintenance run is a genuine
no-op; the script asserts that it created and retired nothing.

When a statement of the engine hits its statement_timeout (the catalog query
did, at this size), the figure is reported as MISSED with the error, and the
measurement is repeated with the timeout raised so the real time is known.
When a no-op run misses its target, one more run is profiled with cProfile
(`--no-profile` to skip).

How round trips are counted: with libpq's own protocol trace (`PQtrace`, via
`conn.pgconn.trace`). Every round trip of a non-pipelined client ends in one
frontend `Query` (simple protocol) or `Sync` (extended protocol) message and is
answered by one `ReadyForQuery`; we count those messages, so statements sent by
`conn.execute`, by cursors, by `conn.transaction()` (BEGIN/COMMIT) and psycopg's
own PREPAREs are all included -- a Python-level `execute` wrapper would miss
the last three. Tracing costs time (libpq formats every message, including the
catalog query's multi-megabyte result), so timings come from untraced runs and
counts from a separate, identical traced run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import platform
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from psycopg import pq, sql  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

from include.pgmaint.catalog import CatalogError, read_catalog  # noqa: E402
from include.pgmaint.config import Config, parse_config  # noqa: E402
from include.pgmaint.db import connect  # noqa: E402
from include.pgmaint.maintenance import plan_run, run_maintenance  # noqa: E402
from include.pgmaint.plan import plan_maintenance  # noqa: E402
from include.pgmaint.state import Journal  # noqa: E402

BENCH_DB = "pgmaint_bench"
BENCH_SCHEMA = "bench"
STATE_SCHEMA = "pgmaint_bench"
PREMAKE = 4
TZ = "UTC"
DEMO_CONFIG = REPO / "include" / "config" / "pgmaint.yaml"

TARGET_PLAN_S = 1.0
TARGET_NOOP_S = 2.0
TARGET_PARSE_S = 0.5


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --- database ----------------------------------------------------------------------


# Build-time settings of the throwaway embedded server only (never applied to --dsn):
# creating ~250k relations is dominated by WAL, checkpoints and fsyncs. All are reset
# (and a CHECKPOINT taken) before anything is measured.
FAST_BUILD_SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
    "autovacuum": "off",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "1h",
}


@contextlib.contextmanager
def server(dsn: str | None):
    """Yield (admin conninfo, description, embedded?) of the given server or a throwaway embedded one."""
    if dsn:
        yield dsn, "external server", False
        return
    import pgserver

    pgdata = tempfile.mkdtemp(prefix="pgmaint-bench-", dir="/tmp")
    log(f"starting embedded PostgreSQL in {pgdata}")
    srv = pgserver.get_server(pgdata, cleanup_mode="delete")
    try:
        yield srv.get_uri(), "embedded pgserver, deleted at exit", True
    finally:
        srv.cleanup()  # stops postgres and deletes pgdata


def server_settings(admin_conninfo: str, settings: dict[str, str] | None) -> None:
    """ALTER SYSTEM SET `settings` (None: RESET them) and reload."""
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        for name in FAST_BUILD_SETTINGS:
            if settings is None:
                conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
            else:
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(settings[name]))
                )
        conn.execute("SELECT pg_reload_conf()")
        if settings is None:
            time.sleep(0.5)  # let the postmaster and its children pick up the reload
            conn.execute("CHECKPOINT")


def with_db(conninfo: str, dbname: str) -> str:
    params = conninfo_to_dict(conninfo)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def fresh_database(admin_conninfo: str) -> str:
    with psycopg.connect(admin_conninfo, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(BENCH_DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
    return with_db(admin_conninfo, BENCH_DB)


def day_floor(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def _table_ddl(i: int, n_parts: int, first: datetime) -> str:
    parent = f"t{i:04d}"
    stmts = [
        f"CREATE TABLE {BENCH_SCHEMA}.{parent} (id bigint NOT NULL, ts timestamptz NOT NULL, "
        f"payload text, PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts)"
    ]
    for j in range(n_parts):
        lo, hi = first + timedelta(days=j), first + timedelta(days=j + 1)
        stmts.append(
            f"CREATE TABLE {BENCH_SCHEMA}.{parent}_part_{j:02d} PARTITION OF {BENCH_SCHEMA}.{parent} "
            f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
        )
    if i % 2 == 0:
        stmts.append(f"CREATE TABLE {BENCH_SCHEMA}.{parent}_default PARTITION OF {BENCH_SCHEMA}.{parent} DEFAULT")
    return ";\n".join(stmts)


def _build_batch(conninfo: str, indexes: range, n_parts: int, first: datetime) -> None:
    # A fresh session per batch: a backend that has created tens of thousands of relations
    # carries them all in its relation/catalog caches and gets slower and slower.
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")  # throwaway data; only the build sessions
        for i in indexes:
            # No parameters: psycopg sends this with the simple-query protocol, which runs the
            # whole string as one implicit transaction (only this table's locks are held).
            conn.execute(_table_ddl(i, n_parts, first))


def build(conninfo: str, n_tables: int, n_parts: int, today: datetime, workers: int) -> dict:
    """Create the tables, one transaction (and one round trip) per table. Returns timings."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    first = today - timedelta(days=n_parts - 1 - PREMAKE)  # partitions [first, today + PREMAKE + 1 day)
    timings = {}
    started = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(BENCH_SCHEMA)))
    batch = 50
    done = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(_build_batch, conninfo, range(lo, min(lo + batch, n_tables)), n_parts, first)
            for lo in range(0, n_tables, batch)
        ]
        for fut in as_completed(futures):
            fut.result()
            done += 1
            if done % 4 == 0 or done == len(futures):
                log(f"  built {min(done * batch, n_tables)}/{n_tables} tables ({time.perf_counter() - started:.1f}s)")
    timings["create"] = time.perf_counter() - started
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # Settle the catalogs as a long-lived database would be: fresh statistics and
        # visibility maps on the catalogs the catalog query reads (otherwise autovacuum
        # would do it in the middle of the measurements).
        t = time.perf_counter()
        conn.execute(
            "VACUUM (ANALYZE) pg_catalog.pg_class, pg_catalog.pg_attribute, pg_catalog.pg_inherits, "
            "pg_catalog.pg_constraint, pg_catalog.pg_namespace, pg_catalog.pg_partitioned_table, "
            "pg_catalog.pg_depend, pg_catalog.pg_type, pg_catalog.pg_index"
        )
        timings["vacuum"] = time.perf_counter() - t
        relations = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
            [BENCH_SCHEMA],
        ).fetchone()[0]
        all_relations = conn.execute("SELECT count(*) FROM pg_class").fetchone()[0]
    timings["total"] = time.perf_counter() - started
    timings["relations"] = relations
    timings["all_relations"] = all_relations
    timings["first"] = first
    return timings


def bench_config(n_tables: int, n_parts: int, statement_timeout_ms: int | None = None) -> tuple[Config, str]:
    # The oldest partition covers [today - (n_parts - PREMAKE - 1), today - (n_parts - PREMAKE - 2))
    # days; a retention of n_parts - PREMAKE - 1 days puts the cutoff (now - retention) inside
    # it, so nothing is expired and the managed window (from the cutoff's interval to today +
    # PREMAKE) has no gap: nothing to create, nothing to retire.
    retention = f"{n_parts - PREMAKE - 1} days"
    raw = {
        "timezone": TZ,
        "state_schema": STATE_SCHEMA,
        "tables": [
            {
                "name": f"{BENCH_SCHEMA}.t{i:04d}",
                "partition_key": "ts",
                "interval": "1 day",
                "premake": PREMAKE,
                "retention": retention,
            }
            for i in range(n_tables)
        ],
    }
    if statement_timeout_ms:
        raw["lock_budget"] = {"statement_timeout_ms": statement_timeout_ms}
    return parse_config(raw, source="bench"), retention


# --- round trips -------------------------------------------------------------------

_MSG = re.compile(r"^(F|B)\t(\d+)\t(\w+)\t?", re.M)


@contextlib.contextmanager
def traced(conn):
    """Trace the libpq protocol of `conn` into a temporary file; yields a dict filled on exit."""
    out: dict = {}
    # Statements psycopg prepared before the trace began are only referred to by name in it.
    known = dict(conn.execute("SELECT name, statement FROM pg_prepared_statements").fetchall())
    with tempfile.NamedTemporaryFile(prefix="pgmaint-bench-trace-", suffix=".txt") as f:
        conn.pgconn.trace(os.dup(f.fileno()))  # libpq fdopen()s the fd; give it its own copy
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            yield out
        finally:
            conn.pgconn.untrace()  # flushes the stream
            out.update(parse_trace(Path(f.name).read_text(errors="replace"), known))


def _label(text: str) -> str:
    text = " ".join(text.split())
    text = re.sub(r'"[^"]*"\."(runs|steps)"', r"<state>.\1", text)
    return text[:72]


def parse_trace(trace: str, known: dict[str, str] | None = None) -> dict:
    """Round trips (Query + Sync sent; ReadyForQuery received) and what each one ran."""
    msgs = [(m.group(1), m.group(3), m.start(), m.end()) for m in _MSG.finditer(trace)]
    prepared: dict[str, str] = dict(known or {})
    current = ""
    kinds: Counter[str] = Counter()
    sent = ready = 0
    for idx, (side, kind, _, end) in enumerate(msgs):
        body = trace[end : msgs[idx + 1][2] if idx + 1 < len(msgs) else len(trace)].strip()
        if side == "B":
            ready += kind == "ReadyForQuery"
            continue
        if kind == "Query":
            sent += 1
            kinds[_label(body[1:-1] if body.startswith('"') else body)] += 1
        elif kind == "Parse":
            m = re.match(r'"([^"]*)" "(.*)" \d+', body, re.S)
            if m:
                current = m.group(2)
                if m.group(1):  # psycopg prepares a statement it has seen 5 times: its own round trip
                    prepared[m.group(1)] = current
                    current = "[PREPARE] " + current
        elif kind == "Bind":
            m = re.match(r'"([^"]*)" "([^"]*)"', body)
            if m and m.group(2):
                current = prepared.get(m.group(2), current)
        elif kind == "Sync":
            sent += 1
            kinds[_label(current)] += 1
    return {"round_trips": sent, "ready_for_query": ready, "by_statement": kinds}


# --- measurements ------------------------------------------------------------------


def measure_catalog(conninfo: str, config: Config) -> dict:
    """One traced call in an engine session (its statement_timeout applies) for the round trips,
    then untraced calls for the time; without statement_timeout if the first call was canceled."""
    tables = list(config.tables)
    out: dict = {"error": None}
    with connect(conninfo, config.lock_budget) as conn:
        t = time.perf_counter()
        try:
            with traced(conn) as trace:
                facts = read_catalog(conn, tables, config.timezone)
        except psycopg.errors.QueryCanceled as exc:
            out["error"] = str(exc).strip().splitlines()[0]
        out["first_s"] = time.perf_counter() - t
        out["round_trips"] = trace["round_trips"]
        out["timeout_ms"] = config.lock_budget.statement_timeout_ms
        if out["error"]:
            log(f"  catalog canceled after {out['first_s']:.1f}s ({out['error']}); timing it without statement_timeout")
            conn.execute("SET statement_timeout = 0")
        times = []
        for _ in range(1 if out["error"] else 3):
            t = time.perf_counter()
            facts = read_catalog(conn, tables, config.timezone)
            times.append(time.perf_counter() - t)
        out["times"] = times
    errors = [str(f) for f in facts.values() if isinstance(f, CatalogError)]
    if errors:
        raise SystemExit("catalog errors on the benchmark tables:\n  " + "\n  ".join(errors[:10]))
    out["facts"] = facts
    out["partitions"] = sum(len(f.partitions) for f in facts.values())
    out["defaults"] = sum(f.default is not None for f in facts.values())
    return out


def measure_plan(config: Config, facts: dict, now: datetime) -> dict:
    times, plans = [], []
    for _ in range(3):
        t = time.perf_counter()
        plans = [plan_maintenance(cfg, facts[cfg.name], now, config.timezone) for cfg in config.tables]
        times.append(time.perf_counter() - t)
    busy = [p for p in plans if not p.is_noop]
    if busy:
        p = busy[0]
        raise SystemExit(
            f"the benchmark tables are not a no-op for the plan: {p.table}: creates "
            f"{[c.name for c in p.creates]}, retires {[r.name for r in p.retires]}"
        )
    return {"times": times}


def check_noop(results) -> None:
    bad = [r for r in results if r.outcome != "success" or r.created or r.detached or r.dropped or r.needs_migration]
    if bad:
        r = bad[0]
        raise SystemExit(
            f"the no-op maintenance run was not a no-op for {len(bad)} table(s); first: {r.table}: outcome "
            f"{r.outcome}, created {r.created}, detached {r.detached}, dropped {r.dropped}, errors {r.errors}, "
            f"skipped {r.skipped_reason}"
        )


def noop_runs(conninfo: str, config: Config, now: datetime, trace_inline: bool) -> dict:
    """Two runs on a fresh state schema, timed untraced; then the same two again traced for their
    round trips -- or, when a run takes many seconds anyway, the timed runs are traced themselves."""
    out: dict = {"trace_inline": trace_inline}
    drop_state = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(STATE_SCHEMA))

    def one(conn, trace: bool) -> dict:
        res: dict = {"error": None}
        t = time.perf_counter()
        try:
            # `now` is pinned to the build's instant so the runs stay a no-op across midnight.
            with traced(conn) if trace else contextlib.nullcontext({}) as tr:
                results = run_maintenance(conn, config, now=now)
        except psycopg.errors.QueryCanceled as exc:
            res["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
        res["s"] = time.perf_counter() - t
        if trace:
            res["trace"] = tr
        if not res["error"]:
            check_noop(results)
        return res

    with connect(conninfo, config.lock_budget) as conn:
        conn.execute(drop_state)
        for run in (1, 2):
            out[run] = one(conn, trace_inline)
            log(f"  no-op run #{run}: {out[run]['s']:.2f}s{'; ' + out[run]['error'] if out[run]['error'] else ''}")
        if not trace_inline:
            conn.execute(drop_state)
            for run in (1, 2):
                traced_run = one(conn, True)
                out[run]["trace"] = traced_run["trace"]
                out[run]["error"] = out[run]["error"] or traced_run["error"]
        out["journal_rows"] = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.runs").format(sql.Identifier(STATE_SCHEMA))
        ).fetchone()[0]
    return out


def plan_once(conninfo: str, config: Config, now: datetime) -> dict:
    """What the DAG's plan task does (plan_run: plan all, journal the no-op tables in one write), and the
    journal alone: one batched insert for every table vs. the per-table start + finish it replaces."""
    out: dict = {}
    with connect(conninfo, config.lock_budget) as conn:
        plan_run(conn, config, now=now)  # warm (and the state schema exists)
        t = time.perf_counter()
        result = plan_run(conn, config, now=now)
        out["s"] = time.perf_counter() - t
        if result["work"]:
            raise SystemExit(f"plan_run found work on a no-op data set: {result['work'][:5]}")
        with traced(conn) as trace:
            plan_run(conn, config, now=now)
        out["round_trips"] = trace["round_trips"]
        journal = Journal(conn, config.state_schema)
        rows = [(t.name, "success", {"table": t.name, "outcome": "success"}, None) for t in config.tables]
        t = time.perf_counter()
        journal.record_runs("bench_journal", rows)
        out["batched_s"] = time.perf_counter() - t
        t = time.perf_counter()
        for name, outcome, summary, _ in rows:
            journal.finish_run(journal.start_run("bench_journal", name), outcome, summary)
        out["per_table_s"] = time.perf_counter() - t
        t = time.perf_counter()
        for c in config.tables:
            journal.last_success(c.name)
        out["last_success_s"] = time.perf_counter() - t
    return out


def profile_noop(conninfo: str, config: Config, now: datetime) -> dict:
    with connect(conninfo, config.lock_budget) as conn:
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        check_noop(run_maintenance(conn, config, now=now))
        prof.disable()
        elapsed = time.perf_counter() - t
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(15)
    text = (
        buf.getvalue()
        .replace(str(REPO) + "/", "")
        .replace(str(Path(psycopg.__file__).resolve().parent.parent) + "/", "")
    )
    return {"s": elapsed, "text": text}


_PARSE_CHILD = textwrap.dedent(
    r"""
    # Two guards, because they catch different things: this socket patch sees every connect made
    # from Python (pure-Python drivers, HTTP clients, ...), but libpq (psycopg) connects from C, so
    # the parent also checks that no PostgreSQL driver module got imported at all.
    import json, socket, sys, time
    attempts = []
    def _refuse(self, address, *a, **k):
        attempts.append(repr(address))
        raise OSError("bench: socket connect during DAG parse: %r" % (address,))
    socket.socket.connect = _refuse
    socket.socket.connect_ex = _refuse

    t0 = time.perf_counter()
    import airflow.sdk  # the DAG processor has Airflow loaded already: baseline, not counted
    baseline = time.perf_counter() - t0
    before = len(attempts)
    db_modules_before = sorted(m for m in ("psycopg", "psycopg2", "asyncpg") if m in sys.modules)

    import importlib.util
    path = sys.argv[1]
    spec = importlib.util.spec_from_file_location("bench_dag_module", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:  # as the DagBag does, so that @dag functions called at module level register their DAG
        from airflow.sdk.definitions._internal.contextmanager import DagContext
        DagContext.current_autoregister_module_name = spec.name
    except Exception:
        DagContext = None
    t1 = time.perf_counter()
    error = None
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        error = "%s: %s" % (type(exc).__name__, exc)
    parse = time.perf_counter() - t1

    from airflow.sdk import DAG
    dags = [v.dag_id for v in vars(module).values() if isinstance(v, DAG)]
    if DagContext is not None:
        dags += [d.dag_id for d, mod in DagContext.autoregistered_dags if mod is module]
    dags = sorted(set(dags))
    print(json.dumps({
        "baseline_s": baseline,
        "parse_s": parse,
        "error": error,
        "dags": dags,
        "connects_during_parse": attempts[before:],
        "connects_before": attempts[:before],
        "db_modules_before": db_modules_before,
        "db_modules_after": sorted(m for m in ("psycopg", "psycopg2", "asyncpg") if m in sys.modules),
    }))
    """
)


def measure_parse(repeats: int = 3) -> list[dict]:
    import json

    out = []
    files = sorted((REPO / "dags").glob("*.py"))
    with tempfile.TemporaryDirectory(prefix="pgmaint-bench-airflow-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PGMAINT_"))}
        env.update(
            {
                "PYTHONPATH": str(REPO),
                "AIRFLOW_HOME": home,
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "PGMAINT_CONFIG": str(DEMO_CONFIG),
                # An unreachable target (TEST-NET-1, RFC 5737): parse must not try it.
                "AIRFLOW_CONN_PGMAINT_TARGET": "postgresql://bench:bench@192.0.2.1:5432/nowhere?connect_timeout=1",
            }
        )
        for path in files:
            runs = []
            for _ in range(repeats):
                proc = subprocess.run(
                    [sys.executable, "-c", _PARSE_CHILD, str(path)],
                    env=env,
                    cwd=str(REPO),
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                if proc.returncode != 0 or not proc.stdout.strip():
                    runs.append({"error": f"child exited {proc.returncode}: {proc.stderr.strip()[-800:]}"})
                    continue
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            out.append({"file": path.relative_to(REPO).as_posix(), "runs": runs})
    return out


# --- report --------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("ok" if ok else "**MISSED**")


def machine_info(conninfo: str, kind: str) -> list[str]:
    with psycopg.connect(conninfo) as conn:
        version = conn.execute("SELECT version()").fetchone()[0]
        settings = dict(
            conn.execute(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name IN "
                "('shared_buffers', 'max_locks_per_transaction', 'synchronous_commit', 'fsync', 'max_connections')"
            ).fetchall()
        )
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return [
        f"- machine: {os.cpu_count()} cores ({cpu or platform.processor() or 'unknown cpu'}), {platform.system()} {platform.release()}",
        f"- PostgreSQL: {version} ({kind}); " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())),
        f"- Python {platform.python_version()}, psycopg {psycopg.__version__} (libpq {pq.version()}, {pq.__impl__})",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tables", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=60)
    ap.add_argument(
        "--dsn",
        default=os.environ.get("PGMAINT_BENCH_DSN"),
        help="conninfo/URI of a server to use (default: $PGMAINT_BENCH_DSN, else embedded pgserver)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="cProfile one more no-op run and print the top entries (always done when a run misses its target)",
    )
    ap.add_argument("--no-profile", action="store_true", help="never profile")
    ap.add_argument("--parse-repeats", type=int, default=3)
    ap.add_argument("--build-workers", type=int, default=2, help="parallel sessions creating the tables")
    args = ap.parse_args()
    if args.partitions < PREMAKE + 2:
        ap.error(f"--partitions must be at least {PREMAKE + 2}")

    now = datetime.now(timezone.utc)
    today = day_floor(now)
    config, retention = bench_config(args.tables, args.partitions)
    long_timeout_ms = 600_000
    config_long, _ = bench_config(args.tables, args.partitions, statement_timeout_ms=long_timeout_ms)
    n = args.tables

    with server(args.dsn) as (admin_conninfo, kind, embedded):
        conninfo = fresh_database(admin_conninfo)
        log(f"building {n} tables x {args.partitions} partitions in {BENCH_DB} ...")
        if embedded:
            server_settings(admin_conninfo, FAST_BUILD_SETTINGS)
        built = build(conninfo, n, args.partitions, today, args.build_workers)
        if embedded:
            t = time.perf_counter()
            server_settings(admin_conninfo, None)
            built["reset"] = time.perf_counter() - t
            built["total"] += built["reset"]
        log(f"built in {built['total']:.1f}s")

        log("catalog ...")
        cat = measure_catalog(conninfo, config)
        log("plan ...")
        plan = measure_plan(config, cat["facts"], now)
        log("no-op maintenance runs ...")
        trace_inline = min(cat["times"]) > 5.0
        noop = {"default": noop_runs(conninfo, config, now, trace_inline)}
        if any(noop["default"][r]["error"] for r in (1, 2)):
            log(f"  the runs failed with the default statement_timeout; again with {long_timeout_ms // 1000} s")
            noop["long"] = noop_runs(conninfo, config_long, now, trace_inline)
        measured_runs = noop.get("long", noop["default"])
        missed_noop = any(measured_runs[r]["s"] > TARGET_NOOP_S or measured_runs[r]["error"] for r in (1, 2))
        log("plan once (the DAG's plan task) and the journal ...")
        once = plan_once(conninfo, config_long if "long" in noop else config, now)
        prof = None
        if args.profile or (missed_noop and not args.no_profile):
            log("profiling one more no-op run ...")
            prof = profile_noop(conninfo, config_long if "long" in noop else config, now)
        log("DAG parse ...")
        parses = measure_parse(args.parse_repeats)
        info = machine_info(conninfo, kind)

    rows: list[tuple[str, str, str, bool | None]] = []
    rows.append(
        ("catalog: round trips (`read_catalog`, all tables)", str(cat["round_trips"]), "1", cat["round_trips"] == 1)
    )
    timeout_s = cat["timeout_ms"] / 1000
    if cat["error"]:
        rows.append(
            (
                f"catalog: seconds in an engine session (statement_timeout {timeout_s:g} s)",
                f"canceled after {cat['first_s']:.1f} s: {cat['error']}",
                f"< {timeout_s:g} s",
                False,
            )
        )
        rows.append(("catalog: seconds without statement_timeout", f"{cat['times'][0]:.1f}", "—", None))
    else:
        rows.append(
            (
                "catalog: seconds (median of 3)",
                f"{statistics.median(cat['times']):.2f}",
                f"< {timeout_s:g} s",
                statistics.median(cat["times"]) < timeout_s,
            )
        )
    plan_s = statistics.median(plan["times"])
    rows.append(
        (
            f"plan: seconds for {n} tables (pure, median of 3)",
            f"{plan_s:.3f}",
            f"≤ {TARGET_PLAN_S:g} s",
            plan_s <= TARGET_PLAN_S,
        )
    )
    for key, label in (
        ("default", f"statement_timeout {timeout_s:g} s, as configured"),
        ("long", f"statement_timeout raised to {long_timeout_ms // 1000} s"),
    ):
        if key not in noop:
            continue
        for run, what in ((1, "1st, creates state schema"), (2, "2nd")):
            r = noop[key][run]
            measured = f"{r['s']:.2f}" if not r["error"] else f"FAILED after {r['s']:.1f} s: {r['error']}"
            rows.append(
                (
                    f"no-op run #{run} ({what}; {label}): wall seconds",
                    measured,
                    f"≤ {TARGET_NOOP_S:g} s",
                    not r["error"] and r["s"] <= TARGET_NOOP_S,
                )
            )
            if not r["error"] and r.get("trace"):
                rt = r["trace"]["round_trips"]
                rows.append((f"no-op run #{run}: round trips (per table)", f"{rt} ({rt / n:.1f})", "—", None))
    rows.append((f"plan task (`plan_run`, all {n} tables, no-op): wall seconds", f"{once['s']:.2f}", "—", None))
    rows.append(("plan task: round trips", str(once["round_trips"]), "a handful", once["round_trips"] <= 10))
    rows.append(
        (
            f"journal of {n} no-op tables: one batched insert, seconds",
            f"{once['batched_s']:.3f}",
            "≤ 0.5 s",
            once["batched_s"] <= 0.5,
        )
    )
    rows.append(
        (
            f"journal of {n} no-op tables the per-table way (start + finish: {2 * n} round trips), seconds",
            f"{once['per_table_s']:.3f}",
            "—",
            None,
        )
    )
    rows.append(
        (
            f"watchdog cadence reads (`last_success`) for {n} tables after it, seconds",
            f"{once['last_success_s']:.3f}",
            "—",
            None,
        )
    )
    for p in parses:
        good = [r for r in p["runs"] if "parse_s" in r]
        errors = [r.get("error") for r in p["runs"] if r.get("error")]
        connects = sorted({c for r in good for c in r["connects_during_parse"]})
        db_mods = sorted({m for r in good for m in r["db_modules_after"]})
        if good:
            times = [r["parse_s"] for r in good]
            measured = (
                f"{statistics.median(times):.3f} s (max {max(times):.3f} of {len(times)}; "
                f"`import airflow.sdk` before it: {statistics.median(r['baseline_s'] for r in good):.2f} s)"
            )
        else:
            measured = "n/a"
        clean = not connects and not db_mods and not errors
        dags = sorted({d for r in good for d in r.get("dags", [])})
        measured += "; " + (
            "no DB connection" if clean else f"connects {connects}, DB modules {db_mods}, errors {errors}"
        )
        measured += f"; DAGs: {', '.join(dags) or 'none found'}"
        ok = bool(good) and clean and statistics.median(r["parse_s"] for r in good) <= TARGET_PARSE_S
        rows.append((f"DAG parse: `{p['file']}`", measured, f"≤ {TARGET_PARSE_S:g} s, no DB connection", ok))

    print()
    print(f"## pgmaint maintenance benchmark — {n} tables × {args.partitions} daily partitions")
    print()
    print(
        f"{cat['partitions']} partitions and {cat['defaults']} (empty) DEFAULT partitions found by the catalog; "
        f"interval 1 day, premake {PREMAKE}, retention {retention}: every run must create and retire nothing "
        f"(asserted for every table)."
    )
    print()
    print("| figure | measured | target | ok? |")
    print("|---|---|---|---|")
    for figure, measured, target, ok in rows:
        print(f"| {figure} | {measured.replace('|', '/')} | {target} | {verdict(ok)} |")
    print()
    settle = f"; {built['reset']:.1f} s restoring server settings + CHECKPOINT" if "reset" in built else ""
    print(
        f"- build: {built['total']:.1f} s ({built['create']:.1f} s CREATE with {args.build_workers} sessions, one "
        f"transaction per table; {built['vacuum']:.1f} s VACUUM ANALYZE of the catalogs{settle}); "
        f"{built['relations']} tables and indexes in schema `{BENCH_SCHEMA}`, {built['all_relations']} rows in "
        f"pg_class (with TOAST); partitions from {built['first']:%Y-%m-%d} to "
        f"{(today + timedelta(days=PREMAKE + 1)):%Y-%m-%d} (exclusive)"
    )
    if embedded:
        print(
            f"- build used {', '.join(f'{k}={v}' for k, v in FAST_BUILD_SETTINGS.items())} on the throwaway "
            "server; all were reset before measuring"
        )
    measured_runs = noop.get("long", noop["default"])
    print(
        f"- no-op runs: {measured_runs['journal_rows']} rows in `{STATE_SCHEMA}.runs` after the last pair "
        "(one journal row per table and run)"
    )
    if noop["default"]["trace_inline"]:
        print(
            "- round trips: libpq protocol messages (Query + Sync) counted from the timed runs themselves "
            "(runs this slow make the tracing cost negligible)"
        )
    else:
        print(
            "- round trips: libpq protocol messages (Query + Sync) counted from identical traced runs; "
            "timings come from untraced runs"
        )
    for line in info:
        print(line)
    missed = [r[0] for r in rows if r[3] is False]
    print()
    print(f"**MISSED: {len(missed)} target(s)**: " + "; ".join(missed) if missed else "All targets met.")

    trace = measured_runs[2].get("trace")
    if trace:
        print()
        print("### no-op run #2: round trips by statement")
        print()
        print("| statement (first 72 chars) | round trips | per table |")
        print("|---|---|---|")
        for label, count in trace["by_statement"].most_common(15):
            print(f"| `{label.replace('|', '/')}` | {count} | {count / n:.2f} |")
    if prof:
        print()
        print(f"### cProfile of one more no-op run ({prof['s']:.2f} s under the profiler)")
        print()
        print("```")
        print(prof["text"].strip())
        print("```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
