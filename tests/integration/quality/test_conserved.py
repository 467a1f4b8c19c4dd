"""The `conserved` check around real migrations (include.pgmaint.migrate), and what "behind the migration's back"
means for it.

A copy-first migration counts, per interval, the rows of the DEFAULT and of their new partitions at the instant
of its swap (the swap's exported snapshot). The check:
* journal - per interval, 'before' = 'moved' (rows and checksums) in the migration journal.
The detached old DEFAULT, kept until then, must still hold exactly the 'before' figures when it is dropped: the swap
makes it read-only, and the DROP re-reads it under its lock when that guard was tampered with, so a row deleted from
it behind the migration's back stops the drop.
Application writes to the new partitions after the swap are legitimate and never fail the gate.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from include.pgmaint.migrate import migrate_table
from include.pgmaint.quality import run_gate
from tests.fixtures.quality import create_parent
from tests.integration.helpers import add_partition, config_for, table_entry, table_exists
from tests.wall_clock import wall_now, wall_today

pytestmark = [pytest.mark.pg, pytest.mark.usefixtures("gx_warm")]  # GX imported once per session
REPO = Path(__file__).resolve().parents[3]
# Migrations plan around the real clock (their window is "now"): data is built around today.
AFTER_MIGRATION = ["conserved", "default_clean", "contiguity"]


def seed(conn, schema: str, rows: int = 3_000) -> None:
    """Partitions stopped 6 days ago; since then rows went to the DEFAULT, plus one expired and one future row."""
    create_parent(conn, schema, "ev", primary_key=True)
    for d in range(-9, -6):
        add_partition(
            conn,
            schema,
            "ev",
            wall_today() + timedelta(days=d),
            wall_today() + timedelta(days=d + 1),
            f"ev_old_{d + 100}",
        )
    start = wall_today() - timedelta(days=6)
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (ts, payload) SELECT %s::timestamptz + (g::float8 / %s) * (%s::timestamptz - %s::timestamptz), "
            "md5(g::text) FROM generate_series(1, %s) g"
        ).format(sql.Identifier(schema, "ev")),
        [start, rows, wall_now() - timedelta(seconds=1), start, rows],
    )
    conn.execute(
        sql.SQL("INSERT INTO {} (ts, payload) VALUES (%s, 'future'), (%s, 'future'), (%s, 'expired')").format(
            sql.Identifier(schema, "ev")
        ),
        [wall_now() + timedelta(days=20), wall_now() + timedelta(days=20), wall_now() - timedelta(days=45)],
    )


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
    # the old DEFAULT is gone after a finished migration: only the journal is checked
    assert [e["key"] for e in result.summary["expectations"]] == ["conserved.journal", "default_clean", "contiguity"]
    # the future and expired rows went back to the (new) DEFAULT, outside the migrated ranges: not a failure
    assert expectation(result, "default_clean")["success"]


@pytest.fixture
def swapped(conn, pg_dsn, scratch_schema):
    seed(conn, scratch_schema)
    cfg = config(scratch_schema)
    result = migrate_table(conn, pg_dsn, cfg, cfg.tables[0], batch_rows=500, finish=False)
    assert result.outcome == "swapped", result.errors
    return cfg, result


def test_application_writes_after_the_swap_never_fail_the_gate(conn, pg_dsn, scratch_schema, swapped):
    cfg, migration = swapped
    today, yesterday = migration.partitions[-1], migration.partitions[-2]
    conn.execute(
        sql.SQL("DELETE FROM {} WHERE ctid = (SELECT min(ctid) FROM {})").format(
            sql.Identifier(scratch_schema, today), sql.Identifier(scratch_schema, today)
        )
    )
    conn.execute(
        sql.SQL("UPDATE {} SET payload = 'changed' WHERE ctid = (SELECT min(ctid) FROM {})").format(
            sql.Identifier(scratch_schema, yesterday), sql.Identifier(scratch_schema, yesterday)
        )
    )

    result = gate(pg_dsn, cfg, migration.migration_id)

    assert result.success, result.failures + result.errors
    assert [e["key"] for e in result.summary["expectations"]] == ["conserved.journal", "default_clean", "contiguity"]


def test_a_journal_that_does_not_balance_fails_conservation(conn, pg_dsn, scratch_schema, migrated):
    cfg, migration = migrated
    bucket = (wall_today() - timedelta(days=3)).strftime("%Y-%m-%d 00:00:00+00")
    conn.execute(
        sql.SQL("UPDATE {}.migration_figures SET rows = rows - 1 WHERE kind = 'moved' AND bucket = %s").format(
            sql.Identifier(scratch_schema)
        ),
        [bucket],
    )
    before = conn.execute(
        sql.SQL("SELECT rows FROM {}.migration_figures WHERE kind = 'before' AND bucket = %s").format(
            sql.Identifier(scratch_schema)
        ),
        [bucket],
    ).fetchone()[0]

    result = gate(pg_dsn, cfg, migration.migration_id)

    [line] = result.failures
    assert line.startswith(
        f"{scratch_schema}.ev: migration {migration.migration_id} lost and duplicated no rows "
        "(per interval, rows and checksum in the DEFAULT = in their new partitions, counted at the "
        f"instant of the swap): expected in all 9 interval(s) of {scratch_schema}.migration_figures for "
        f"migration {migration.migration_id}, the 'before' count and checksum equal the 'moved' ones"
    )
    assert line.endswith(
        f"observed 1 problem(s): interval {bucket}: {before} row(s) in the DEFAULT at the swap, "
        f"{before - 1} in their new partitions (1 lost)"
    )


def test_the_old_default_is_read_only_until_it_is_dropped(conn, pg_dsn, scratch_schema, swapped):
    """The swap makes the detached old DEFAULT refuse every write (so "unchanged since the swap" is a catalog check
    when it is dropped), for replication sessions too."""
    from psycopg import errors

    old = sql.Identifier(scratch_schema, "ev_default_pgmaint_old")
    for statement in (
        sql.SQL("DELETE FROM {} WHERE ctid = (SELECT min(ctid) FROM {})").format(old, old),
        sql.SQL("UPDATE {} SET payload = 'changed'").format(old),
        sql.SQL("INSERT INTO {} (ts, payload) VALUES (now() - interval '45 days', 'sneaked in')").format(old),
        sql.SQL("TRUNCATE {}").format(old),
    ):
        with pytest.raises(errors.ReadOnlySqlTransaction, match="kept read-only"):
            with conn.transaction():
                conn.execute("SET LOCAL session_replication_role = replica")
                conn.execute(statement)


def test_a_row_deleted_from_the_old_default_behind_the_migrations_back_stops_its_drop(
    conn, pg_dsn, scratch_schema, swapped
):
    """The gate proves the figures balance at the swap. Someone who disables the old DEFAULT's read-only trigger to
    delete a row changes its catalog row: the DROP then re-reads the old DEFAULT under its lock and refuses, since it
    no longer holds what was counted."""
    from include.pgmaint.migrate import finish_migration

    cfg, migration = swapped
    old = sql.Identifier(scratch_schema, "ev_default_pgmaint_old")
    conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER pgmaint_read_only").format(old))
    conn.execute(
        sql.SQL(
            "DELETE FROM {} WHERE ctid = (SELECT min(ctid) FROM {} WHERE payload <> 'expired' AND payload <> 'future')"
        ).format(old, old)
    )
    conn.execute(sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER pgmaint_read_only").format(old))

    assert gate(pg_dsn, cfg, migration.migration_id, ["conserved"]).success  # the journal still balances
    indexes = old_default_indexes(conn, scratch_schema)
    with pytest.raises(RuntimeError, match="no longer holds what it held at the swap"):
        finish_migration(conn, cfg, cfg.tables[0])
    assert table_exists(conn, scratch_schema, "ev_default_pgmaint_old")
    assert old_default_indexes(conn, scratch_schema) == indexes  # kept whole for a person to compare
    assert len(indexes) == 2


def old_default_indexes(conn, schema: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = to_regclass(%s) ORDER BY 1",
            [sql.Identifier(schema, "ev_default_pgmaint_old").as_string(conn)],
        ).fetchall()
    ]


def test_the_old_defaults_indexes_are_dropped_one_transaction_each_before_its_table(
    conn, pg_dsn, scratch_schema, swapped, monkeypatch
):
    """DROP frees a relation's files at commit, and a disk that discards freed blocks at once holds every fsync of its
    file system meanwhile: the old DEFAULT's primary key and index are each dropped and committed on their own (the
    guard that it is unchanged checked each time) before the table itself, so no single commit frees all of it."""
    from include.pgmaint import migrate
    from include.pgmaint.migrate import finish_migration

    cfg, migration = swapped
    seen = []
    run = migrate.Executor.run

    def watch(self, step):
        with psycopg.connect(pg_dsn, autocommit=True) as other:  # what another session sees as each step begins
            seen.append((step.action, len(old_default_indexes(other, scratch_schema))))
        return run(self, step)

    monkeypatch.setattr(migrate.Executor, "run", watch)

    finish_migration(conn, cfg, cfg.tables[0])

    assert seen == [("drop_old_default_index", 2), ("drop_old_default_index", 1), ("drop_old_default", 0)]
    assert not table_exists(conn, scratch_schema, "ev_default_pgmaint_old")
    assert gate(pg_dsn, cfg, migration.migration_id).success


def test_a_migration_of_another_table_or_none_at_all_fails_the_gate(conn, pg_dsn, scratch_schema, migrated):
    cfg, migration = migrated

    result = gate(pg_dsn, cfg, migration.migration_id + 100, ["conserved"])

    assert result.failures == [
        f"{scratch_schema}.ev: migration {migration.migration_id + 100} can be verified: expected a "
        "finished or draining migration of this table in the journal, observed migration "
        f"{migration.migration_id + 100} is not in {scratch_schema}.migrations"
    ]


def _verdicts(result) -> tuple:
    return (
        result.success,
        result.failures,
        result.errors,
        [(e["key"], e["success"], e["observed_value"], e["error"]) for e in result.summary["expectations"]],
    )


def test_the_sql_evaluator_reaches_the_verdicts_great_expectations_reaches(conn, pg_dsn, scratch_schema, migrated):
    """The migration's gates run their expectations without importing GX (evaluator "sql"): on the same suites, a
    pass, a data failure (a journal that does not balance, rows left in a migrated range) and an unreachable server
    come out exactly as GX reports them."""
    cfg, migration = migrated
    checks = ["conserved", "default_clean", "contiguity", "not_null_key"]

    def both(dsn=pg_dsn, ranges="migrated"):
        return [
            run_gate(
                dsn,
                cfg,
                cfg.tables[0],
                "after_migration",
                checks,
                migration_id=migration.migration_id,
                ranges=ranges,
                evaluator=e,
            )
            for e in ("gx", "sql")
        ]

    gx, direct = both()
    assert gx.success and _verdicts(gx) == _verdicts(direct)

    bucket = (wall_today() - timedelta(days=3)).strftime("%Y-%m-%d 00:00:00+00")
    conn.execute(
        sql.SQL("UPDATE {}.migration_figures SET rows = rows - 1 WHERE kind = 'moved' AND bucket = %s").format(
            sql.Identifier(scratch_schema)
        ),
        [bucket],
    )
    # the seeded expired row stayed in the DEFAULT
    expired = (
        wall_now() - timedelta(days=50),
        wall_now() - timedelta(days=40),
    )
    gx, direct = both(ranges=[expired])
    assert not gx.success and len(gx.failures) == 2 and _verdicts(gx) == _verdicts(direct)

    gx, direct = both(pg_dsn + " port=1")
    assert gx.errors and not gx.failures and _verdicts(gx)[0:2] == _verdicts(direct)[0:2]
    assert all(
        line.split(": not evaluated: ")[0] == other.split(": not evaluated: ")[0]
        for line, other in zip(gx.errors, direct.errors)
    )
