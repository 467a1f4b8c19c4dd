"""The `conserved` check around real migrations (include.pgmaint.migrate), and what "deleted behind the
migration's back" means for it.

Two expectations make up the check:
* journal  - per interval, 'before' = 'moved' + still in the drain table (rows and checksums), from the
             migration journal and the drain table. It sees rows lost or duplicated by the drain, and rows
             deleted from the drain table by someone else while the migration is under way.
* in place - per interval, the table still holds at least the rows moved in. A row deleted from its new
             partition after the move leaves the journal balanced (the journal only knows what the drain
             did): only this expectation can see it, and the tests show exactly that.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from psycopg import sql

from include.pgmaint.migrate import migrate_table
from include.pgmaint.quality import run_gate
from tests.integration.helpers import add_partition, config_for, table_entry, table_exists
from tests.quality.conftest import create_parent

pytestmark = pytest.mark.pg
REPO = Path(__file__).resolve().parents[2]
# Migrations plan around the real clock (their window is "now"): data is built around today.
NOW = datetime.now(timezone.utc)
TODAY = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
AFTER_MIGRATION = ["conserved", "default_clean", "contiguity"]


def seed(conn, schema: str, rows: int = 3_000) -> None:
    """Partitions stopped 6 days ago; since then rows went to the DEFAULT, plus NULL keys and one expired row."""
    create_parent(conn, schema, "ev", nullable=True)
    for d in range(-9, -6):
        add_partition(conn, schema, "ev", TODAY + timedelta(days=d), TODAY + timedelta(days=d + 1), f"ev_old_{d + 100}")
    start = TODAY - timedelta(days=6)
    conn.execute(sql.SQL("INSERT INTO {} (ts, payload) SELECT %s::timestamptz + (g::float8 / %s) * (%s::timestamptz - %s::timestamptz), "
                         "md5(g::text) FROM generate_series(1, %s) g").format(sql.Identifier(schema, "ev")),
                 [start, rows, NOW - timedelta(seconds=1), start, rows])
    conn.execute(sql.SQL("INSERT INTO {} (ts, payload) VALUES (NULL, 'no key'), (NULL, 'no key'), (%s, 'expired')").format(
        sql.Identifier(schema, "ev")), [NOW - timedelta(days=45)])


def config(schema: str):
    return config_for(schema, [table_entry(schema, "ev", premake=2, retention="30 days")])


def gate(dsn, cfg, migration_id, checks=AFTER_MIGRATION):
    return run_gate(dsn, cfg, cfg.tables[0], "after_migration", checks, migration_id=migration_id, ranges="migrated")


def expectation(result, key):
    [found] = [e for e in result.summary["expectations"] if e["key"] == key]
    return found


@pytest.fixture
def migrated(conn, pg_dsn, scratch_schema):
    seed(conn, scratch_schema)
    cfg = config(scratch_schema)
    result = migrate_table(conn, pg_dsn, cfg, cfg.tables[0], batch_rows=500)
    assert result.outcome == "success", result.errors
    assert len(result.partitions) == 7  # six past days and today
    return cfg, result


def test_a_clean_migration_passes_every_after_migration_check(pg_dsn, migrated):
    cfg, migration = migrated

    result = gate(pg_dsn, cfg, migration.migration_id)

    assert result.success, result.failures + result.errors
    assert [e["key"] for e in result.summary["expectations"]] == [
        "conserved.journal", "conserved.in_place", "default_clean", "contiguity"]
    # the NULL-key and expired rows went back to the (new) DEFAULT, outside the migrated ranges: not a failure
    assert expectation(result, "default_clean")["success"]


def test_rows_deleted_from_their_new_partition_after_the_move_fail_in_place_only(conn, pg_dsn, scratch_schema, migrated):
    cfg, migration = migrated
    today = migration.partitions[-1]
    yesterday = migration.partitions[-2]
    conn.execute(sql.SQL("DELETE FROM {} WHERE ctid = (SELECT min(ctid) FROM {})").format(
        sql.Identifier(scratch_schema, today), sql.Identifier(scratch_schema, today)))
    conn.execute(sql.SQL("UPDATE {} SET payload = 'changed' WHERE ctid = (SELECT min(ctid) FROM {})").format(
        sql.Identifier(scratch_schema, yesterday), sql.Identifier(scratch_schema, yesterday)))

    result = gate(pg_dsn, cfg, migration.migration_id)

    # The journal balances: the drain moved every row it took. Only the in-place expectation sees the damage.
    assert expectation(result, "conserved.journal")["success"]
    assert not expectation(result, "conserved.in_place")["success"]
    [line] = result.failures
    day = lambda d: (TODAY + timedelta(days=d)).strftime("%Y-%m-%d 00:00:00+00")  # noqa: E731
    moved = dict(conn.execute(sql.SQL("SELECT bucket, rows FROM {}.migration_figures WHERE kind = 'moved'").format(
        sql.Identifier(scratch_schema))).fetchall())
    assert line == (
        f"{scratch_schema}.ev: the rows migration {migration.migration_id} moved are still in the table (per interval, "
        f"at least the rows moved in): expected at least the moved rows in all 9 interval(s), same checksum where the "
        f"count is unchanged, observed 2 problem(s): "
        f"interval {day(-1)}: {moved[day(-1)]} row(s) moved in, {moved[day(-1)]} there now (same count, checksums differ: "
        f"rows changed after the move); "
        f"interval {day(0)}: {moved[day(0)]} row(s) moved in, {moved[day(0)] - 1} there now (1 missing)")
    assert result.errors == []


def test_a_journal_that_does_not_balance_fails_conservation(conn, pg_dsn, scratch_schema, migrated):
    cfg, migration = migrated
    bucket = (TODAY - timedelta(days=3)).strftime("%Y-%m-%d 00:00:00+00")
    conn.execute(sql.SQL("UPDATE {}.migration_figures SET rows = rows - 1 WHERE kind = 'moved' AND bucket = %s").format(
        sql.Identifier(scratch_schema)), [bucket])
    before = conn.execute(sql.SQL("SELECT rows FROM {}.migration_figures WHERE kind = 'before' AND bucket = %s").format(
        sql.Identifier(scratch_schema)), [bucket]).fetchone()[0]

    result = gate(pg_dsn, cfg, migration.migration_id)

    [line] = result.failures
    assert line.startswith(f"{scratch_schema}.ev: migration {migration.migration_id} lost and duplicated no rows "
                           "(per interval, rows and checksum before = moved + still in the drain table): expected in all 9 "
                           f"interval(s) of {scratch_schema}.migration_figures for migration {migration.migration_id}, "
                           "the 'before' count and checksum equal the 'moved' ones plus no rows left behind")
    assert line.endswith(f"observed 1 problem(s): interval {bucket}: {before} row(s) before, {before - 1} moved + 0 "
                         "still in the drain table (1 lost)")
    assert expectation(result, "conserved.in_place")["success"]  # the table holds more than the journal says moved


def test_killed_mid_drain_balances_until_a_row_is_deleted_from_the_drain_table(conn, pg_dsn, scratch_schema):
    seed(conn, scratch_schema)
    cfg = config(scratch_schema)
    raw = {"state_schema": scratch_schema, "tables": [table_entry(scratch_schema, "ev", premake=2, retention="30 days")]}
    killed = subprocess.run([sys.executable, "-m", "tests.integration.run_migration", pg_dsn, json.dumps(raw),
                             f"{scratch_schema}.ev", "300"], cwd=REPO, env={**os.environ, "PGMAINT_FAILPOINT": "after_batch"},
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    drain = sql.Identifier(scratch_schema, "ev_default_pgmaint_drain")
    assert table_exists(conn, scratch_schema, "ev_default_pgmaint_drain")
    migration_id, moved = conn.execute(sql.SQL("SELECT migration_id, rows_moved FROM {}.migrations").format(
        sql.Identifier(scratch_schema))).fetchone()
    assert moved > 0

    mid_drain = gate(pg_dsn, cfg, migration_id, ["conserved"])
    conn.execute(sql.SQL("DELETE FROM {} WHERE ctid = (SELECT min(ctid) FROM {} WHERE ts IS NOT NULL)").format(drain, drain))
    behind_its_back = gate(pg_dsn, cfg, migration_id, ["conserved"])

    assert mid_drain.success, mid_drain.failures + mid_drain.errors  # before = moved + still in the drain table
    [line] = behind_its_back.failures
    assert f"plus the rows still in the drain table {scratch_schema}.ev_default_pgmaint_drain" in line
    assert line.endswith("still in the drain table (1 lost)")
    assert expectation(behind_its_back, "conserved.in_place")["success"]


def test_a_migration_of_another_table_or_none_at_all_fails_the_gate(conn, pg_dsn, scratch_schema, migrated):
    cfg, migration = migrated

    result = gate(pg_dsn, cfg, migration.migration_id + 100, ["conserved"])

    assert result.failures == [f"{scratch_schema}.ev: migration {migration.migration_id + 100} can be verified: expected a "
                               "finished or draining migration of this table in the journal, observed migration "
                               f"{migration.migration_id + 100} is not in {scratch_schema}.migrations"]
