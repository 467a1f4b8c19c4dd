"""The Partitions view reads the database in a constant number of round trips, whatever the number of
tables: counted from libpq's own protocol trace (every round trip of a non-pipelined client ends in one
ReadyForQuery from the server, whether it came from `execute`, a cursor, BEGIN/COMMIT or a PREPARE).
Not a timing test: the speed itself is measured by scripts/bench_overview.py."""

from __future__ import annotations

import functools
import os
import re
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg import pq, sql
from psycopg.conninfo import make_conninfo

from include.pgmaint.config import parse_config
from include.pgmaint.escalation import settings_for
from include.pgmaint.overview import gather, open_overview_connection
from include.pgmaint.state import ensure_state_schema

PARTITIONS = 6  # daily: 4 past days, today, tomorrow


@pytest.fixture(scope="module")
def many_tables(pg_dsn):
    """A fresh database with 100 partitioned tables `rt.t000` ... : every other one with a DEFAULT, and every
    tenth DEFAULT holding rows (so the set-based count runs); an expired partition and a gap here and there."""
    admin = make_conninfo(pg_dsn, dbname="postgres")
    name = f"pgmaint_round_trips_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(pg_dsn, dbname=name)
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA rt")
        for i in range(100):
            t = f"t{i:03d}"
            stmts = [f"CREATE TABLE rt.{t} (id bigint, ts timestamptz NOT NULL) PARTITION BY RANGE (ts)"]
            for d in range(-4, PARTITIONS - 4):
                if i % 7 == 3 and d == -2:
                    continue  # a gap
                lo = today + timedelta(days=d)
                stmts.append(
                    f"CREATE TABLE rt.{t}_d{d + 4} PARTITION OF rt.{t} "
                    f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{(lo + timedelta(days=1)).isoformat()}')"
                )
            if i % 2 == 0:
                stmts.append(f"CREATE TABLE rt.{t}_default PARTITION OF rt.{t} DEFAULT")
                if i % 10 == 0:  # rows three weeks ahead land in the DEFAULT
                    stmts.append(
                        f"INSERT INTO rt.{t} SELECT g, '{(today + timedelta(days=21)).isoformat()}'::timestamptz "
                        f"+ g * interval '1 minute' FROM generate_series(1, {i + 5}) g"
                    )
            conn.execute(";\n".join(stmts))
    try:
        yield dsn
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _config(n: int):
    return parse_config(
        {
            "timezone": "UTC",
            "state_schema": "pgmaint_rt",
            "tables": [
                {
                    "name": f"rt.t{i:03d}",
                    "partition_key": "ts",
                    "interval": "1 day",
                    "premake": 1,
                    "retention": "3 days",
                }
                for i in range(n)
            ],
        },
        source="test",
    )


def round_trips(conn, fn) -> int:
    """Round trips `fn()` makes on `conn`: ReadyForQuery messages in libpq's protocol trace."""
    with tempfile.NamedTemporaryFile(prefix="pgmaint-trace-", suffix=".txt") as f:
        conn.pgconn.trace(os.dup(f.fileno()))  # libpq fdopen()s the descriptor: give it its own
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            fn()
        finally:
            conn.pgconn.untrace()
        trace = Path(f.name).read_text(errors="replace")
    return len(re.findall(r"^B\t\d+\tReadyForQuery", trace, re.M))


def _load_into(data: dict, conn, config, settings) -> None:
    data.update(gather(conn, config, settings))


def test_round_trips_do_not_grow_with_tables(many_tables):
    counts, shown = {}, {}
    for n in (10, 100):
        config = _config(n)
        settings = settings_for(config)
        with open_overview_connection(many_tables, config) as conn:
            ensure_state_schema(conn, config.state_schema)
            data = {}
            counts[n] = round_trips(conn, functools.partial(_load_into, data, conn, config, settings))
        assert [t["error"] for t in data["tables"]] == [None] * n
        shown[n] = data
    # What was read is real: DEFAULTs found and counted exactly, gaps and expired partitions seen.
    for n, data in shown.items():
        tables = {t["name"]: t for t in data["tables"]}
        assert sum(t["default"] is not None for t in tables.values()) == n // 2
        with_rows = {name: t["default"]["rows"] for name, t in tables.items() if t["default"] and t["default"]["rows"]}
        assert with_rows == {f"rt.t{i:03d}": i + 5 for i in range(0, n, 10)}
        assert all(tables[name]["default"]["exact"] and tables[name]["migrate"] for name in with_rows)
        assert tables["rt.t003"]["gaps"] == 1 and tables["rt.t000"]["expired_attached"] == 1
    assert counts[10] == counts[100], counts  # one set of statements for all tables, not some per table
    assert counts[100] <= 20, counts
