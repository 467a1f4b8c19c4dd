"""The interval buckets that figures (counts and checksums per interval) group by are date_trunc's, however computed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from psycopg import sql

from include.pgmaint.figures import bucket_expression
from include.pgmaint.intervals import PartitionInterval

# Every ~7 hours and 13 minutes over 40 years (before and after date_bin's origin), plus the instants around
# interval edges, Europe/Berlin's 2026 clock changes and the turn of a year that starts mid-ISO-week.
SAMPLE = """
    SELECT g FROM generate_series('1988-02-28 23:59:59.999999+00'::timestamptz, '2031-01-01', '7 hours 13 minutes 17.5 seconds') g
    UNION ALL SELECT e + d FROM unnest(ARRAY['2026-03-29 01:00+00', '2026-10-25 01:00+00', '2026-03-29 00:00+00',
        '2026-10-25 00:00+00', '2027-01-01 00:00+00', '2026-12-28 00:00+00', '2000-01-03 00:00+00',
        '1999-12-27 00:00+00', '0001-01-01 00:00+00', '0001-01-08 00:00+00', '0002-01-01 00:00+00']::timestamptz[]) e,
        unnest(ARRAY['-1 hour', '-1 microsecond', '0', '1 microsecond', '59 minutes 59.999999 seconds', '1 hour',
        '23 hours']::interval[]) d
    UNION ALL SELECT unnest(ARRAY['infinity', '-infinity', '0044-03-15 12:00:00 BC', NULL]::timestamptz[])
"""


@pytest.mark.parametrize("unit", ["hour", "day", "week", "month"])
@pytest.mark.parametrize(
    "key_type, tz, fast",
    [
        ("timestamp with time zone", "UTC", True),
        ("timestamp with time zone", "Etc/UTC", True),
        ("timestamp with time zone", "Europe/Berlin", False),
        ("timestamp with time zone", "Asia/Kolkata", False),
        ("timestamp without time zone", "Europe/Berlin", True),
        ("date", "UTC", True),
    ],
)
def test_every_row_falls_in_the_bucket_date_trunc_gives_it(pg_conn, unit, key_type, tz, fast):
    facts = SimpleNamespace(key_column="k", key_type=key_type)
    cfg = SimpleNamespace(interval=PartitionInterval(unit))
    expression = bucket_expression(facts, cfg, tz, alias="m")
    # hours, days and weeks on a clock without offset changes: date_bin; otherwise date_trunc itself
    assert ("date_bin" in expression.as_string(pg_conn)) is (fast and unit != "month")
    if key_type == "timestamp with time zone":
        reference = sql.SQL("date_trunc({}, m.k, {})").format(sql.Literal(unit), sql.Literal(tz))
    else:
        reference = sql.SQL("date_trunc({}, m.k::timestamp)").format(sql.Literal(unit))
    sample = sql.SQL("SELECT g::{} AS k FROM ({}) s(g)").format(sql.SQL(key_type), sql.SQL(SAMPLE))
    for session_zone in ("UTC", "America/St_Johns"):  # the session's zone changes neither
        pg_conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(session_zone)))
        rows, differ, example = pg_conn.execute(
            sql.SQL(
                "SELECT count(*), count(*) FILTER (WHERE {e} IS DISTINCT FROM {r}), "
                "min(m.k::text) FILTER (WHERE {e} IS DISTINCT FROM {r}) FROM ({s}) m"
            ).format(e=expression, r=reference, s=sample)
        ).fetchone()
        assert rows > 48_000 and differ == 0, f"{differ} keys bucketed differently, e.g. {example}"


def test_the_check_of_the_copies_hashes_a_few_groups_in_one_process(pg_dsn, pg_conn, scratch_schema):
    """Left to itself the planner sorts every whole row (spilling to disk) in three processes to find a handful of
    intervals; pgmaint's sessions read with one process and its verifier hashes the groups instead."""
    import psycopg

    from include.pgmaint.backfill import CutVerifier
    from include.pgmaint.config import LockBudget
    from include.pgmaint.db import connect
    from include.pgmaint.figures import figures_query

    table = sql.Identifier(scratch_schema, "ev")
    pg_conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, k timestamptz NOT NULL, body text)").format(table))
    pg_conn.execute(
        sql.SQL(
            "INSERT INTO {} SELECT g, '2026-11-20'::timestamptz + g * interval '1 second', repeat('x', 200) "
            "FROM generate_series(1, 400000) g"
        ).format(table)
    )
    pg_conn.execute(sql.SQL("ANALYZE {}").format(table))
    facts = SimpleNamespace(key_column="k", key_type="timestamp with time zone")
    cfg = SimpleNamespace(interval=PartitionInterval("day"))
    query = figures_query(facts, cfg, "UTC", "record", ["id", "k", "body"], [table])
    explain = sql.SQL("EXPLAIN ") + query

    def plan(conn) -> str:
        return "\n".join(r[0] for r in conn.execute(explain).fetchall())

    with psycopg.connect(pg_dsn, autocommit=True) as plain:  # the server's defaults: the test can tell
        plain.execute("SET max_parallel_workers_per_gather = 2")
        assert "Sort" in plan(plain) and "Gather" in plan(plain)
    with connect(pg_dsn) as conn:
        assert conn.execute("SHOW max_parallel_workers_per_gather").fetchone()[0] == "0"
        # and what its sessions write goes to the disk as they write it, not in one burst 30 s later (db.py)
        assert conn.execute("SHOW backend_flush_after").fetchone()[0] == "256kB"
    verifier = CutVerifier(pg_dsn, LockBudget())
    try:
        chosen = plan(verifier.conn)
        assert "HashAggregate" in chosen and "Sort" not in chosen and "Gather" not in chosen, chosen
        days = verifier.conn.execute(query).fetchall()
        assert sorted(b for b, _, _ in days)[0] == "2026-11-20 00:00:00+00" and sum(n for _, n, _ in days) == 400_000
    finally:
        verifier.close()
