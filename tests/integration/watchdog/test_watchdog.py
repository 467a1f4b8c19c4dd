"""The watchdog's checks against real PostgreSQL, end to end through the escalation policy to real
notification servers on loopback."""

from __future__ import annotations

import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import devdb  # scripts/devdb.py (on sys.path via tests/conftest.py)
import psycopg
from psycopg import sql

from include.pgmaint.config import parse_config
from include.pgmaint.db import connect
from include.pgmaint.escalation import MemoryStore, settings_for
from include.pgmaint.maintenance import run_maintenance
from include.pgmaint.state import ensure_state_schema
from include.pgmaint.watchdog import check_tables, watch
from tests.fixtures.escalation import escalation_block
from tests.integration.helpers import make_table, table_entry
from tests.wall_clock import wall_today

# The checks run on the real clock: tables are built around the real today.


def _config(schema: str, tables: list[dict], escalation: dict | None = None, **top):
    return parse_config({"state_schema": schema, "tables": tables, "escalation": escalation or {}, **top})


def _healthy(conn, config) -> None:
    """partition_maintenance has just run: runway made, expired partitions retired, success journalled."""
    [result] = run_maintenance(conn, config)
    assert result.outcome == "success", result


def test_a_watchdog_run_on_a_healthy_database_sends_nothing(
    pg_dsn, scratch_schema, notify_connections, webhooks, mailbox, clock
):
    config = _config(scratch_schema, [table_entry(scratch_schema, "events")], escalation_block(notify_connections))
    with connect(pg_dsn) as conn:
        make_table(conn, scratch_schema, "events", days=range(-40, 1), anchor=wall_today())
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (ts, payload) SELECT now() - g * interval '1 hour', 'x' FROM generate_series(0, 48) g"
            ).format(sql.Identifier(scratch_schema, "events"))
        )
        _healthy(conn, config)

    results, ev = watch(pg_dsn, config, settings_for(config), clock=clock, spill=MemoryStore())

    assert results.conditions == [], [c.message for c in results.conditions]
    assert {
        "canary",
        "connections",
        "lock_waits",
        "leases",
        f"runway:{scratch_schema}.events",
        f"cadence:{scratch_schema}.events",
        f"default_rows:{scratch_schema}.events",
    } <= set(results.scope)
    assert ev.persisted and ev.notifications == [] and ev.active == {}
    assert webhooks.requests == [] and list(mailbox) == []


def test_seeded_problems_are_found_per_table(pg_dsn, scratch_schema):
    broken, auto = table_entry(scratch_schema, "broken"), table_entry(scratch_schema, "auto", auto_migrate=True)
    config = _config(scratch_schema, [broken, auto])
    with connect(pg_dsn) as conn:
        ensure_state_schema(conn, scratch_schema)
        for name in ("broken", "auto"):
            # Maintenance stopped: partitions end two days ago, rows piled up in the DEFAULT. (Two days, not
            # one: a gap is reported once its interval ended a cadence grace ago, which yesterday's has
            # not in the first hours of a day.)
            # Day -31 is left out: it ends exactly 30 days before today's midnight, so whether it counts as
            # expired depends on the hour (expiry also waits a cadence grace).
            make_table(conn, scratch_schema, name, days=[*range(-40, -31), *range(-30, -2)], anchor=wall_today())
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (ts, payload) SELECT greatest(now() - g * interval '1 minute', "
                    "date_trunc('day', now(), 'UTC')), 'late' FROM generate_series(0, 9) g"
                ).format(sql.Identifier(scratch_schema, name))
            )
        result = check_tables(conn, config, settings_for(config))

    found = {c.key: c for c in result.conditions}
    t = f"{scratch_schema}.broken"
    assert set(found) == {
        f"runway:{t}",
        f"default_rows:{t}",
        f"expired_attached:{t}",
        f"runway:{scratch_schema}.auto",
        f"default_rows:{scratch_schema}.auto",
        f"expired_attached:{scratch_schema}.auto",
        f"gaps:{t}",
        f"gaps:{scratch_schema}.auto",
    }  # the last two days have no partition either
    runway = found[f"runway:{t}"]
    assert runway.severity == "critical" and "no partition for the current 1 day interval" in runway.message
    rows = found[f"default_rows:{t}"]
    assert rows.severity == "warning" and not rows.quiet and rows.details["rows"] == 10 and rows.details["exact"]
    assert "move them with default_partition_migration for this table" in rows.message
    assert found[f"expired_attached:{t}"].details["count"] == 9  # days -40 .. -32 are past 30 days
    # auto_migrate: an asset event instead of an alert (a quiet condition pages only if the rows stay)
    assert result.migrate == [f"{scratch_schema}.auto"] and found[f"default_rows:{scratch_schema}.auto"].quiet


def test_missed_cadence_is_reported_from_the_journal(pg_dsn, scratch_schema):
    config = _config(scratch_schema, [table_entry(scratch_schema, "events")])  # maintenance every 15 min
    with connect(pg_dsn) as conn:
        make_table(conn, scratch_schema, "events", days=range(-2, 1), anchor=wall_today())
        _healthy(conn, config)
        s = sql.Identifier(scratch_schema)
        conn.execute(
            sql.SQL(
                "UPDATE {}.runs SET started_at = now() - interval '2 hours', finished_at = now() - interval '2 hours'"
            ).format(s)
        )
        conn.execute(sql.SQL("UPDATE {}.schema_version SET applied_at = now() - interval '1 day'").format(s))
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.runs (job, table_name, outcome, finished_at, error) "
                "VALUES ('maintenance', %s, 'failed', now(), 'LockBudgetExhausted: gave up')"
            ).format(s),
            [f"{scratch_schema}.events"],
        )
        result = check_tables(conn, config, settings_for(config))

    [cadence] = [c for c in result.conditions if c.key.startswith("cadence:")]
    assert "missed its cadence: last successful partition_maintenance 2 h 00 min ago" in cadence.message
    assert (
        "alert after 45 min" in cadence.message
        and "latest run: failed: LockBudgetExhausted: gave up" in cadence.message
    )


def _wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_a_lock_held_on_a_managed_table_is_reported_with_the_blocker_pid_and_query(
    pg_dsn, pg_conn, scratch_schema, notify_connections, webhooks, clock
):
    """The incident: a session holds a lock, DDL queues behind it, and every reader queues behind the DDL."""
    escalation = escalation_block(
        notify_connections, lock_wait_seconds=1, long_transaction_seconds=1, canary_timeout_ms=500
    )
    config = _config(scratch_schema, [table_entry(scratch_schema, "events")], escalation)
    table = f"{scratch_schema}.events"
    with connect(pg_dsn) as conn:
        make_table(conn, scratch_schema, "events", days=range(-2, 1), anchor=wall_today())
        _healthy(conn, config)

    holder = psycopg.connect(pg_dsn, application_name="nightly-report")  # a transaction left open
    ddl = psycopg.connect(pg_dsn, autocommit=True, application_name="manual-fix")
    done = threading.Event()
    try:
        report_query = f"SELECT count(*) FROM {table} /* nightly report */"
        holder.execute(report_query)
        holder_pid, ddl_pid = holder.info.backend_pid, ddl.info.backend_pid

        def alter():
            try:
                ddl.execute("SET lock_timeout = '20s'")
                ddl.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN note text").format(sql.Identifier(scratch_schema, "events"))
                )
            except psycopg.Error:
                pass
            finally:
                done.set()

        threading.Thread(target=alter, daemon=True).start()
        _wait_until(
            lambda: (
                pg_conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted AND waitstart < clock_timestamp() - interval '1.2 s'",
                    [ddl_pid],
                ).fetchone()[0]
                == 1
            )
        )

        results, ev = watch(pg_dsn, config, settings_for(config), clock=clock, spill=MemoryStore())
    finally:
        holder.close()
        done.wait(30)
        ddl.close()

    found = {c.key: c for c in results.conditions}
    assert {"canary", "lock_waits", f"long_transactions:{table}"} <= set(found), list(found)

    canary = found["canary"]
    assert canary.severity == "critical" and f"reading {table} did not finish within 500 ms" in canary.message
    assert f"holder: pid {holder_pid} (idle in transaction" in canary.message and "nightly report" in canary.message
    assert f"queued: pid {ddl_pid}" in canary.message and "ALTER TABLE" in canary.message
    assert canary.details["blocking_pids"] == [holder_pid]

    waits = found["lock_waits"]
    assert f"pid {ddl_pid} has waited" in waits.message and "AccessExclusiveLock" in waits.message
    assert f"blocked by pid {holder_pid} (idle in transaction" in waits.message and "nightly report" in waits.message
    assert waits.details["blocking_pids"] == [holder_pid]

    held = found[f"long_transactions:{table}"]
    assert f"pid {holder_pid} (idle in transaction" in held.message and "nightly-report" in held.message

    # What responders receive: the page for the canary and the chat messages name the blocker and its query.
    [page] = webhooks.pagerduty
    assert page["dedup_key"] == "canary" and page["payload"]["custom_details"]["blocking_pids"] == [holder_pid]
    chat = "\n".join(m["text"] for m in webhooks.slack)
    assert f"pid {holder_pid}" in chat and "nightly report" in chat and f"pid {ddl_pid}" in chat


def test_the_canary_fails_against_a_stopped_database_and_pages(notify_connections, webhooks, mailbox, clock):
    pgdata = Path(tempfile.mkdtemp(prefix="pgw-", dir="/tmp"))  # short: the unix socket lives here
    try:
        info = devdb.start_server(pgdata, cleanup_mode="delete")
        devdb.ensure_database(info.conninfo(), "app")
        dsn = info.conninfo("app")
        config = _config("pgmaint", [table_entry("public", "events")], escalation_block(notify_connections))
        with connect(dsn) as conn:
            make_table(conn, "public", "events", days=range(-30, 4), anchor=wall_today())  # the whole 30-day window
        spill = MemoryStore()  # in Airflow: a Variable, where state goes while the database is down
        devdb.stop_server(pgdata)

        results, ev = watch(dsn, config, settings_for(config), clock=clock, spill=spill)

        [canary] = results.conditions
        assert canary.key == "canary" and canary.severity == "critical" and "cannot connect" in canary.message
        assert not ev.persisted
        [event] = webhooks.pagerduty
        assert event["event_action"] == "trigger" and event["dedup_key"] == "canary"
        assert event["payload"]["severity"] == "critical" and "not answering" in event["payload"]["summary"]
        [chat] = webhooks.slack
        assert chat["text"].startswith("[pgmaint] CRITICAL -> PAGED canary")
        assert "state database unreachable" in chat["text"] and len(mailbox) == 1

        clock.advance(minutes=5)  # still down: the spilled state remembers the page
        _, ev = watch(dsn, config, settings_for(config), clock=clock, spill=spill)
        assert ev.notifications == [] and len(webhooks.pagerduty) == 1

        devdb.start_server(pgdata, cleanup_mode="delete")  # back: the state is folded in, the page resolved
        clock.advance(minutes=5)
        results, ev = watch(dsn, config, settings_for(config), clock=clock, spill=spill)
        assert results.conditions == [] and ev.persisted
        assert [(n.channel, n.action) for n in ev.notifications] == [("page", "resolve"), ("notify", "resolve")]
        assert webhooks.pagerduty[-1]["event_action"] == "resolve" and webhooks.pagerduty[-1]["dedup_key"] == "canary"
        assert spill.load() == {}
        with connect(dsn) as conn:
            [(first_seen, resolved_at)] = conn.execute(
                "SELECT first_seen, resolved_at FROM pgmaint.conditions WHERE key = 'canary'"
            ).fetchall()
        assert resolved_at - first_seen == timedelta(minutes=10)
    finally:
        devdb.stop_server(pgdata, delete=True)


def test_expired_service_leases_are_resumed_and_reported(pg_dsn, scratch_schema):
    from include.pgmaint.services import pause_services
    from include.pgmaint.watchdog import check_leases

    config = parse_config(
        {
            "state_schema": scratch_schema,
            "tables": [table_entry(scratch_schema, "events", writers=["request_logging"])],
            "services": [{"name": "request_logging", "kind": "flag", "lease_minutes": 1}],
        }
    )
    with connect(pg_dsn) as conn:
        ensure_state_schema(conn, scratch_schema)
        assert check_leases(conn, config).conditions == []
        pause_services(conn, config, ["request_logging"], dag_id="default_partition_migration", run_id="manual__dead")
        # the run died; its lease ran out
        conn.execute(
            sql.SQL("UPDATE {}.service_leases SET lease_until = now() - interval '1 minute'").format(
                sql.Identifier(scratch_schema)
            )
        )

        [cond] = check_leases(conn, config).conditions
        assert cond.key == "leases" and cond.severity == "warning"
        assert (
            "request_logging [flag]: resumed" in cond.message
            and "default_partition_migration/manual__dead" in cond.message
        )
        assert check_leases(conn, config).conditions == []  # given back: the condition clears
