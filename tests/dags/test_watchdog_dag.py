"""partition_watchdog and the failure callback inside Airflow: dag.test() on a SQLite metadata DB,
PostgreSQL target, notifications to the loopback servers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from psycopg import sql

from include.pgmaint.db import connect
from tests.fixtures.escalation import escalation_block
from tests.integration.helpers import make_table, table_entry
from tests.wall_clock import wall_today

REPO = Path(__file__).resolve().parents[2]


def _dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))  # 3.3.2: no include_examples argument (apache/airflow#70283)


def _states(dag_run) -> dict[str, str]:
    return {
        f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: ti.state
        for ti in dag_run.get_task_instances()
    }


@pytest.fixture
def dag_config(tmp_path, monkeypatch, scratch_schema):
    def write(tables: list[dict], escalation: dict) -> None:
        path = tmp_path / "pgmaint.yaml"
        path.write_text(yaml.safe_dump({"state_schema": scratch_schema, "tables": tables, "escalation": escalation}))
        monkeypatch.setenv("PGMAINT_CONFIG", str(path))

    return write


def test_the_watchdog_dag_parses_with_its_contract():
    bag = _dagbag()
    assert bag.import_errors == {}
    dag = bag.dags["partition_watchdog"]
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.schedule == "*/5 * * * *"
    assert [o.name for o in dag.get_task("request_migration").outlets] == ["pgmaint_default_rows"]
    for task in dag.tasks:
        assert task.on_failure_callback, task.task_id
    maintenance = bag.dags["partition_maintenance"]
    assert all(t.on_failure_callback for t in maintenance.tasks)


def test_the_dag_file_parses_without_database_or_heavy_imports():
    """Parse in a fresh interpreter with the target pointing nowhere: no socket, no psycopg, no notifiers."""
    import os
    import subprocess
    import sys

    probe = f"""
import socket, sys, runpy
def refuse(*a, **k): raise AssertionError("network connection attempted during DAG parse")
socket.socket.connect = refuse
import airflow.sdk
runpy.run_path({str(REPO / "dags" / "partition_watchdog.py")!r})
heavy = [m for m in ("psycopg", "include.pgmaint.db", "include.pgmaint.watchdog",
                     "airflow.providers.slack.notifications.slack_webhook",
                     "airflow.providers.pagerduty.notifications.pagerduty",
                     "airflow.providers.smtp.notifications.smtp") if m in sys.modules]
assert not heavy, heavy
print("ok")
"""
    env = {**os.environ, "AIRFLOW_CONN_PGMAINT_TARGET": '{"conn_type": "postgres", "host": "192.0.2.1"}'}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.mark.parametrize(
    ("escalation", "expected"),
    [
        ({"page_after": "1 fortnight"}, "escalation.page_after: '1 fortnight' does not match"),
        ({"notify": [{"kind": "slack"}]}, "escalation.notify[0]: 'connection_id' is a required property"),
        (
            {"connections_warning_percent": 99, "connections_critical_percent": 90},
            "escalation.connections_warning_percent: 99 is above connections_critical_percent (90)",
        ),
    ],
)
def test_an_invalid_escalation_block_is_an_import_error_naming_the_field(tmp_path, monkeypatch, escalation, expected):
    raw = yaml.safe_load((REPO / "include" / "config" / "pgmaint.yaml").read_text())
    raw["escalation"] = escalation
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PGMAINT_CONFIG", str(path))
    bag = _dagbag()
    assert "partition_watchdog" not in bag.dags
    assert any(expected in message for message in bag.import_errors.values()), bag.import_errors


def test_the_watchdog_dag_reports_seeded_problems_and_requests_migration(
    airflow_db, pg_dsn, scratch_schema, dag_config, notify_connections, webhooks, mailbox
):
    with connect(pg_dsn) as conn:
        # Maintenance stopped: partitions end two days ago (a whole day past the gap's grace), rows in the DEFAULT.
        for name in ("broken", "auto"):
            make_table(conn, scratch_schema, name, days=range(-40, -2), anchor=wall_today())
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (ts, payload) SELECT greatest(now() - g * interval '1 minute', "
                    "date_trunc('day', now(), 'UTC')), 'late' FROM generate_series(0, 9) g"
                ).format(sql.Identifier(scratch_schema, name))
            )
    broken, auto = f"{scratch_schema}.broken", f"{scratch_schema}.auto"
    dag_config(
        [table_entry(scratch_schema, "broken"), table_entry(scratch_schema, "auto", auto_migrate=True)],
        escalation_block(notify_connections),
    )

    run = _dagbag().dags["partition_watchdog"].test()

    assert run.state == "success", _states(run)
    assert _states(run) == {
        "check_database": "success",
        "check_tables": "success",
        "check_services": "success",
        "request_migration[0]": "success",
        "escalate": "success",
    }
    with connect(pg_dsn) as conn:
        active = dict(
            conn.execute(
                sql.SQL(
                    "SELECT key, severity || CASE WHEN paged_at IS NULL THEN '' ELSE ' paged' END FROM {}.conditions "
                    "WHERE resolved_at IS NULL"
                ).format(sql.Identifier(scratch_schema))
            ).fetchall()
        )
    assert active == {
        f"runway:{broken}": "critical paged",
        f"default_rows:{broken}": "warning",
        f"expired_attached:{broken}": "warning",
        f"runway:{auto}": "critical paged",
        f"default_rows:{auto}": "warning",  # quiet: the migration is asked for
        f"expired_attached:{auto}": "warning",
        f"gaps:{broken}": "warning",
        f"gaps:{auto}": "warning",  # the missed days behind today
    }

    # The asset event that triggers default_partition_migration for the auto_migrate table.
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.execute(
            select(AssetModel.name, AssetEvent.extra, AssetEvent.source_task_id)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetEvent.source_dag_id == "partition_watchdog", AssetEvent.source_run_id == run.run_id)
        ).all()
    assert [tuple(e) for e in events] == [("pgmaint_default_rows", {"table": auto}, "request_migration")]

    pages = {e["dedup_key"]: e["event_action"] for e in webhooks.pagerduty}
    assert pages == {f"runway:{broken}": "trigger", f"runway:{auto}": "trigger"}
    told = sorted(m["text"].splitlines()[0].split(": ")[0] for m in webhooks.slack)
    assert told == sorted(
        [
            f"[pgmaint] CRITICAL -> PAGED runway:{broken}",
            f"[pgmaint] CRITICAL -> PAGED runway:{auto}",
            f"[pgmaint] WARNING default_rows:{broken}",
            f"[pgmaint] WARNING expired_attached:{broken}",
            f"[pgmaint] WARNING expired_attached:{auto}",
            f"[pgmaint] WARNING gaps:{broken}",
            f"[pgmaint] WARNING gaps:{auto}",
        ]
    )
    assert len(mailbox) == 7

    # Five minutes later, nothing has changed: nobody is told again.
    webhooks.clear()
    run = _dagbag().dags["partition_watchdog"].test()
    assert run.state == "success" and webhooks.requests == []


def test_a_failed_maintenance_task_notifies_once_through_the_callback(
    airflow_db, pg_dsn, scratch_schema, dag_config, notify_connections, webhooks, mailbox
):
    with connect(pg_dsn) as conn:
        make_table(conn, scratch_schema, "good", days=range(-2, 0), anchor=wall_today())
    dag_config(
        [table_entry(scratch_schema, "missing"), table_entry(scratch_schema, "good")],
        escalation_block(notify_connections),
    )

    run = _dagbag().dags["partition_maintenance"].test()

    assert run.state == "failed"
    states = _states(run)
    assert states["table.premake[0]"] == "failed" and states["summarize"] == "failed"
    key = f"task:partition_maintenance.table.premake:{scratch_schema}.missing"
    [message] = webhooks.slack  # the summary's failure restates it: not a second alert
    text = message["text"]
    assert text.startswith(
        f"[pgmaint] WARNING {key}: partition_maintenance.table.premake [{scratch_schema}.missing] failed"
    )
    assert "table does not exist" in text
    assert "log: http" in text and "/dags/partition_maintenance/runs/" in text and "/mapped/0" in text
    assert len(mailbox) == 1 and webhooks.pagerduty == []
    with connect(pg_dsn) as conn:
        [(streak, details)] = conn.execute(
            sql.SQL("SELECT streak, details FROM {}.conditions WHERE key = %s").format(sql.Identifier(scratch_schema)),
            [key],
        ).fetchall()
    assert streak == 1 and details["dag_id"] == "partition_maintenance" and details["map_index"] == 0


def test_the_watchdog_dag_pages_when_the_database_is_down_and_remembers_it_in_a_variable(
    airflow_db, tmp_path, monkeypatch, notify_connections, webhooks, mailbox
):
    import json
    import uuid

    schema = f"down_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_PGMAINT_TARGET",
        json.dumps(
            {"conn_type": "postgres", "host": "/tmp/pgmaint-no-server-here", "login": "postgres", "schema": "app"}
        ),
    )
    path = tmp_path / "pgmaint.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "state_schema": schema,
                "tables": [table_entry("public", "events")],
                "escalation": escalation_block(notify_connections),
            }
        )
    )
    monkeypatch.setenv("PGMAINT_CONFIG", str(path))

    run = _dagbag().dags["partition_watchdog"].test()

    assert run.state == "success", _states(run)  # the watchdog worked: it is the database that is down
    [event] = webhooks.pagerduty
    assert event["event_action"] == "trigger" and event["dedup_key"] == "canary"
    assert "cannot connect" in event["payload"]["custom_details"]["message"]
    [chat] = webhooks.slack
    assert chat["text"].startswith("[pgmaint] CRITICAL -> PAGED canary") and len(mailbox) == 1

    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        [var] = session.scalars(select(Variable).where(Variable.key == f"pgmaint_escalation_spill_{schema}")).all()
        spilled = json.loads(var.val)
    assert list(spilled) == ["canary"] and spilled["canary"]["paged_at"]

    run = _dagbag().dags["partition_watchdog"].test()  # still down: the Variable remembers the page
    assert run.state == "success" and len(webhooks.pagerduty) == 1 and len(webhooks.slack) == 1


def test_two_targets_one_down_each_is_watched_on_its_own(
    airflow_db, pg_dsn, scratch_schema, tmp_path, monkeypatch, notify_connections, webhooks, mailbox
):
    """Fleet mode (issue 16): the down target pages its canary under its own name; the other target is still
    checked, its conditions kept in its own state schema and sent with its name."""
    import json

    with connect(pg_dsn) as conn:
        make_table(conn, scratch_schema, "events", days=range(-3, 0), anchor=wall_today())  # no runway: critical
    monkeypatch.setenv(
        "AIRFLOW_CONN_PGMAINT_DOWN",
        json.dumps(
            {"conn_type": "postgres", "host": "/tmp/pgmaint-no-server-here", "login": "postgres", "schema": "app"}
        ),
    )
    same = [table_entry(scratch_schema, "events")]
    path = tmp_path / "fleet.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "state_schema": scratch_schema,
                "escalation": escalation_block(notify_connections),
                "targets": [
                    {"name": "up", "connection_id": "pgmaint_target", "tables": same},
                    {"name": "down", "connection_id": "pgmaint_down", "tables": same},
                ],
            }
        )
    )
    monkeypatch.setenv("PGMAINT_CONFIG", str(path))

    run = _dagbag().dags["partition_watchdog"].test()

    assert run.state == "success", _states(run)
    keys = {(e["dedup_key"], e["event_action"]) for e in webhooks.pagerduty}
    assert ("down/canary", "trigger") in keys and (f"up/runway:{scratch_schema}.events", "trigger") in keys, keys
    assert "up/canary" not in {k for k, _ in keys}
    with connect(pg_dsn) as conn:
        active = {
            k
            for (k,) in conn.execute(
                sql.SQL("SELECT key FROM {}.conditions WHERE resolved_at IS NULL").format(
                    sql.Identifier(scratch_schema)
                )
            ).fetchall()
        }
    assert f"runway:{scratch_schema}.events" in active and "canary" not in active  # the down target's is not here
    assert any(m["text"].startswith("[up] ") for m in webhooks.slack), [m["text"][:60] for m in webhooks.slack]
