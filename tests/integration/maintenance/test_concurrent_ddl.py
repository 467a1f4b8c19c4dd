"""Maintenance reads while another session does DDL on the same table: what two maintenance runs at once (a
backfill beside the scheduled run), or a run beside a migration, do to each other.

An ATTACH or DETACH holds ACCESS EXCLUSIVE on the parent, the partition and the DEFAULT (checked below). The plan
must not fail because of it: the catalog read takes no lock at all, and the DEFAULT probe (for intervals whose rows
wait in the DEFAULT) waits for the lock under the lock budget, as pgmaint's DDL does; past the budget that table
alone fails, naming who held the lock, and the other tables are planned.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

from include.pgmaint.config import LockBudget
from include.pgmaint.db import connect
from include.pgmaint.maintenance import plan_run, run_maintenance
from tests.integration.helpers import NOW, TODAY, config_for, make_table, table_entry

pytestmark = pytest.mark.pg

SHORT_BUDGET = LockBudget(total_seconds=1.5, backoff_base_seconds=0.1, backoff_cap_seconds=0.4)


@contextmanager
def detaching(dsn: str, schema: str, table: str, partition: str, *, hold: float | None):
    """Another session runs `ALTER TABLE … DETACH PARTITION` and keeps its transaction open: for `hold` seconds
    after the block is entered (then rolls back, leaving the table as it was), or until the block ends."""
    locked, entered = threading.Event(), threading.Event()
    pid: list[int] = []

    def other():
        with psycopg.connect(dsn) as conn:
            conn.execute(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                    sql.Identifier(schema, table), sql.Identifier(schema, partition)
                )
            )
            pid.append(conn.info.backend_pid)
            locked.set()
            entered.wait(30)
            if hold is not None:
                time.sleep(hold)
            else:
                done.wait(60)
            conn.rollback()

    done = threading.Event()
    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert locked.wait(10), "the other session could not detach"
        entered.set()
        yield pid[0]
    finally:
        entered.set()
        done.set()
        thread.join()


def _locks(dsn: str, pid: int) -> dict[str, str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relation::regclass::text, mode FROM pg_locks WHERE pid = %s AND locktype = 'relation'", [pid]
        ).fetchall()
    return dict(rows)


def test_the_plan_reads_the_catalog_while_another_session_detaches_a_partition(pg_dsn, scratch_schema):
    with connect(pg_dsn) as conn:
        make_table(conn, scratch_schema, "ev", days=range(-3, 3))
    config = config_for(scratch_schema, [table_entry(scratch_schema, "ev", premake=2, retention="3 days")])
    newest = f"ev_old_{2 + 100}"

    with detaching(pg_dsn, scratch_schema, "ev", newest, hold=None) as pid:
        # What the DETACH holds, on the whole family (so a read that opens any of them waits).
        family = [f"{scratch_schema}.ev", f"{scratch_schema}.{newest}", f"{scratch_schema}.ev_default"]
        held = _locks(pg_dsn, pid)
        assert {name: held.get(name) for name in family} == dict.fromkeys(family, "AccessExclusiveLock"), held
        with connect(pg_dsn, config.lock_budget) as conn:
            planned = plan_run(conn, config, now=NOW)

    # Nothing missing, nothing expired: healthy, read from the catalog as it was before the DETACH (not committed).
    assert planned["tables"][f"{scratch_schema}.ev"]["status"] == "healthy", planned
    assert planned["work"] == []


@pytest.mark.parametrize("how", ["plan", "premake"])
def test_the_default_probe_waits_for_another_sessions_ddl_then_plans(pg_dsn, scratch_schema, how):
    # A gap yesterday: premake would create it, after probing the DEFAULT for rows of that day.
    with connect(pg_dsn) as conn:
        make_table(conn, scratch_schema, "ev", days=[-3, -2, 0, 1, 2])
    config = config_for(scratch_schema, [table_entry(scratch_schema, "ev", premake=2, retention="3 days")])
    gap = f"ev_p{TODAY - timedelta(days=1):%Y%m%d}"

    with detaching(pg_dsn, scratch_schema, "ev", f"ev_old_{2 + 100}", hold=1.0):
        started = time.monotonic()
        with connect(pg_dsn, config.lock_budget) as conn:
            if how == "plan":
                got = plan_run(conn, config, now=NOW)["tables"][f"{scratch_schema}.ev"]
            else:
                [result] = run_maintenance(conn, config, now=NOW, phases=("premake",))
        waited = time.monotonic() - started

    if how == "plan":
        assert got["status"] == "work" and got["create"] == [gap], got
    else:
        assert result.outcome == "success" and result.created == [gap], result.errors
    assert waited >= 0.5, waited  # it met the lock and waited for it to go


def test_a_default_locked_past_the_budget_fails_that_table_only_naming_the_holder(pg_dsn, scratch_schema):
    with connect(pg_dsn) as conn:
        make_table(conn, scratch_schema, "ev", days=[-3, -2, 0, 1, 2])  # a gap: the DEFAULT is probed
        make_table(conn, scratch_schema, "other", days=range(-3, 3))
    config = replace(
        config_for(
            scratch_schema,
            [
                table_entry(scratch_schema, "ev", premake=2, retention="3 days"),
                table_entry(scratch_schema, "other", premake=2, retention="3 days"),
            ],
        ),
        lock_budget=SHORT_BUDGET,
    )

    with detaching(pg_dsn, scratch_schema, "ev", f"ev_old_{2 + 100}", hold=None) as pid:
        with connect(pg_dsn, config.lock_budget) as conn:
            planned = plan_run(conn, config, now=NOW)
            [premade, _] = run_maintenance(conn, config, now=NOW, phases=("premake",))

    ev = planned["tables"][f"{scratch_schema}.ev"]
    assert ev["status"] == "failed", ev
    assert "gave up" in ev["why"] and f"pid {pid} holds AccessExclusiveLock on {scratch_schema}.ev_default" in ev["why"]
    assert f"{scratch_schema}.ev" in planned["work"]  # its premake task runs, and fails naming the table
    assert planned["tables"][f"{scratch_schema}.other"]["status"] == "healthy"
    assert premade.outcome == "failed" and f"pid {pid}" in " ".join(premade.errors), premade.errors
