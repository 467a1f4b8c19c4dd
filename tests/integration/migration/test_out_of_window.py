"""`move_out_of_window` can create partitions already past retention: the migration's dry run and
its result warn that the next maintenance retires them with their rows (issue 15, item 7)."""

from __future__ import annotations

from datetime import timedelta

from psycopg import sql

from include.pgmaint.db import connect
from include.pgmaint.maintenance import run_maintenance
from include.pgmaint.migrate import migrate_table
from tests.integration.helpers import config_for, table_entry
from tests.integration.migration.test_migration import seed
from tests.wall_clock import wall_now  # the migration's window is around the real clock


def test_moving_expired_rows_is_warned_about_in_the_dry_run_and_the_result(pg_dsn, scratch_schema):
    cfg = config_for(scratch_schema, [table_entry(scratch_schema, "ev")])
    table = cfg.tables[0]
    now = wall_now()
    expired_day = (now - timedelta(days=45)).strftime("%Y%m%d")  # seed() puts one row there
    with connect(pg_dsn) as conn:
        seed(conn, scratch_schema, 500)
        assert migrate_table(conn, pg_dsn, cfg, table, dry_run=True, now=now).warnings == []  # the row stays put

        dry = migrate_table(conn, pg_dsn, cfg, table, dry_run=True, now=now, move_out_of_window=True)
        assert dry.outcome == "dry_run"
        [warning] = dry.warnings
        assert warning.startswith(f"ev_p{expired_day} (")
        assert "1 row(s)) would be created older than the 30 days retention" in warning
        assert "the next partition_maintenance run detaches and DROPS it with those rows" in warning

        done = migrate_table(conn, pg_dsn, cfg, table, now=now, move_out_of_window=True)
        assert done.outcome == "success" and done.as_dict()["warnings"] == [warning]

        # What the warning says happens: the next maintenance drops the partition and the row.
        old = sql.SQL("SELECT count(*) FROM {} WHERE payload = 'old'").format(sql.Identifier(scratch_schema, "ev"))
        assert conn.execute(old).fetchone()[0] == 1
        [result] = run_maintenance(conn, cfg, now=now)
        assert f"ev_p{expired_day}" in result.dropped
        assert conn.execute(old).fetchone()[0] == 0
