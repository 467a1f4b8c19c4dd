"""Run summaries say what was done, what remains and why (issue 15, item 6), against a real PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from psycopg import sql

from include.pgmaint.airflow.tasks import summarize_tables
from include.pgmaint.maintenance import run_maintenance
from include.pgmaint.migrate import migrate_table
from tests.integration.helpers import NOW, config_for, make_table, table_entry

pytestmark = pytest.mark.pg


def _phases(conn, cfg, **kwargs) -> tuple[dict, dict]:
    [premade] = run_maintenance(conn, cfg, now=NOW, phases=("premake",), **kwargs)
    [retired] = run_maintenance(conn, cfg, now=NOW, phases=("retire",), **kwargs)
    return premade.as_dict(), retired.as_dict()


def test_maintenance_dry_run_summary_says_what_would_be_created_and_retired(conn, scratch_schema):
    make_table(conn, scratch_schema, "ev", days=range(-33, 0))
    cfg = config_for(scratch_schema, [table_entry(scratch_schema, "ev")])
    name = f"{scratch_schema}.ev"

    premade, retired = _phases(conn, cfg, dry_run=True)
    summary, lines = summarize_tables([name], [premade], [retired], {})

    assert any(s["sql"].startswith("ALTER TABLE") and "DETACH" in s["sql"] for s in retired["statements"])
    assert summary["would_create"] == {name: ["ev_p20261126", "ev_p20261127", "ev_p20261128"]}
    assert summary["would_retire"] == {name: ["ev_old_67", "ev_old_68", "ev_old_69"]}
    assert summary["created"] == {} and summary["retired"] == {}
    text = "\n".join(lines)
    assert "would retire" in text and "ev_old_67" in text and "dry run" in text
    assert "nothing to do" not in text and "healthy" not in text


def test_maintenance_summary_names_what_stays_attached_when_the_gate_stopped_retire(conn, scratch_schema):
    make_table(conn, scratch_schema, "ev", days=range(-33, 3))
    cfg = config_for(scratch_schema, [table_entry(scratch_schema, "ev")])
    name = f"{scratch_schema}.ev"
    [premade] = run_maintenance(conn, cfg, now=NOW, phases=("premake",))  # nothing to premake: the fast path

    summary, lines = summarize_tables(
        [name],
        [premade.as_dict()],
        [None],
        {"table.premake_0": "success", "table.gate_before_retire_0": "failed", "table.retire_0": "upstream_failed"},
    )

    assert summary["not_retired"] == {name: ["ev_old_67", "ev_old_68", "ev_old_69"]}
    [line] = [line for line in lines if line.startswith("not retired")]
    assert "still attached past retention" in line and "gate_before_retire failed" in line


def test_healthy_summary_only_when_nothing_was_or_would_be_done(conn, scratch_schema):
    make_table(conn, scratch_schema, "ev", days=range(-30, 3))
    cfg = config_for(scratch_schema, [table_entry(scratch_schema, "ev")])
    name = f"{scratch_schema}.ev"
    for dry_run in (True, False):
        premade, retired = _phases(conn, cfg, dry_run=dry_run)
        summary, lines = summarize_tables([name], [premade], [retired], {})
        assert not any(summary[k] for k in ("created", "would_create", "retired", "would_retire", "not_retired"))
        [line] = lines
        assert line.startswith("all 1 table(s) healthy") and ("dry run" in line) == dry_run


def test_migration_summary_says_which_rows_stay_in_the_default_and_why(conn, pg_dsn, scratch_schema):
    """The issue's case: `0 rows moved ... rows_remaining: 0` while rows stayed in the DEFAULT, outside the window."""
    now = datetime.now(timezone.utc)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    make_table(conn, scratch_schema, "ev", days=range(-2, 3), anchor=today)
    conn.execute(
        sql.SQL("INSERT INTO {} (ts, payload) VALUES (%s, 'old'), (%s, 'old too')").format(
            sql.Identifier(scratch_schema, "ev")
        ),
        [now - timedelta(days=45), now - timedelta(days=44)],
    )
    cfg = config_for(scratch_schema, [table_entry(scratch_schema, "ev")])
    messages: list[str] = []

    dry = migrate_table(conn, pg_dsn, cfg, cfg.tables[0], dry_run=True, progress=messages.append)
    real = migrate_table(conn, pg_dsn, cfg, cfg.tables[0], progress=messages.append)

    assert dry.outcome == "dry_run" and real.outcome == "success" and real.rows_moved == 0
    would, done = messages[-2], messages[-1]
    assert "would move 0 rows" in would and "2 row(s) would stay in the DEFAULT" in would
    assert "0 rows moved" in done and "2 row(s) stay in the DEFAULT" in done
    assert "older than the retention window (30 days)" in done
