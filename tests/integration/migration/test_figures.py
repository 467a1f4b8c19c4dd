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
