"""The maintenance plan task's database round trips do not grow with the number of tables: the plan of 100
tables costs the same statements as the plan of 10 when the same tables have work (counted from libpq's
protocol trace, as for the Partitions view). Not a timing test: `make bench-maintenance` measures the speed."""

from __future__ import annotations

import functools
from datetime import timedelta

import pytest
from psycopg import sql

from include.pgmaint.db import connect
from include.pgmaint.maintenance import plan_run
from include.pgmaint.state import ensure_state_schema
from tests.integration.helpers import config_for, make_table, table_entry
from tests.integration.overview.test_round_trips import round_trips
from tests.wall_clock import wall_today

pytestmark = pytest.mark.pg

WINDOW = range(-3, 2)  # retention 3 days, premake 1: the whole managed window


def _plan_into(out: dict, conn, config) -> None:
    out.update(plan_run(conn, config))


def test_plan_round_trips_do_not_grow_with_tables(pg_dsn, scratch_schema):
    today = wall_today()
    with connect(pg_dsn) as conn:
        make_table(conn, scratch_schema, "t000", days=range(-3, 1), anchor=today)  # tomorrow missing: create
        make_table(conn, scratch_schema, "t001", days=range(-5, 2), anchor=today)  # two days expired: retire
        make_table(conn, scratch_schema, "t002", days=[d for d in WINDOW if d != 0], anchor=today)
        conn.execute(  # today's rows sit in the DEFAULT: needs migration (the DEFAULT is probed)
            sql.SQL("INSERT INTO {} (ts, payload) VALUES (%s, 'late')").format(sql.Identifier(scratch_schema, "t002")),
            [today],
        )
        for i in range(3, 100):
            make_table(conn, scratch_schema, f"t{i:03d}", days=WINDOW, anchor=today)
        ensure_state_schema(conn, scratch_schema)  # made once; each plan only reads its version

    counts, plans = {}, {}
    for n in (10, 100):
        config = config_for(
            scratch_schema,
            [table_entry(scratch_schema, f"t{i:03d}", premake=1, retention="3 days") for i in range(n)],
        )
        with connect(pg_dsn, config.lock_budget) as conn:
            plans[n] = {}
            counts[n] = round_trips(conn, functools.partial(_plan_into, plans[n], conn, config))

    for n, planned in plans.items():  # what was planned is real, for every table
        assert planned["work"] == [f"{scratch_schema}.t000", f"{scratch_schema}.t001"], planned["work"]
        tables = planned["tables"]
        assert len(tables) == n and tables[f"{scratch_schema}.t002"]["status"] == "needs_migration"
        assert tables[f"{scratch_schema}.t000"]["create"] == [f"t000_p{today + timedelta(days=1):%Y%m%d}"]
        assert len(tables[f"{scratch_schema}.t001"]["retire"]) == 2
        assert planned["healthy"] == n - 3 and planned["journalled"] == n - 2  # all but the mapped two, in one write
    assert counts[10] == counts[100], counts  # one set of statements for all tables, not some per table
    assert counts[100] <= 12, counts
