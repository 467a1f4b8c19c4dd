"""pgmaint through the real scheduler (LocalExecutor): the demo's flow, triggered through the REST
API as the UI's trigger form does, on the demo's broken state; a failed task's callback and the
watchdog's escalation run in the worker processes and reach a loopback Slack/PagerDuty."""

from __future__ import annotations

import time
from datetime import datetime

import psycopg
import pytest
from demo_seed import seed  # scripts/demo_seed.py

from tests.e2e.conftest import e2e_config, make_daily_table, start_deployment, table_entry

DEMO_TABLES = ["public.inbound_requests", "public.event_deltas"]
DOOMED = "public.e2e_doomed"


@pytest.fixture(scope="module")
def e2e(request, pg_dsn):
    def config_for(path, webhooks):
        return e2e_config(
            path,
            webhooks,
            extra_tables=[table_entry("e2e_doomed")],
            schedules={"maintenance": None, "watchdog": "* * * * *"},
        )

    yield from start_deployment(request, pg_dsn, "local", config_for=config_for, parallelism=8)


@pytest.fixture(scope="module")
def seeded(e2e):
    seed(e2e.target_dsn)  # the incident's state: no runway, rows in the DEFAULTs, expired partitions attached
    make_daily_table(e2e.target_dsn, "e2e_doomed", days=range(-1, 5))
    for dag_id in ("partition_maintenance", "default_partition_migration", "partition_watchdog"):
        e2e.unpause(dag_id)
    return e2e


def _window(ti) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(ti["start_date"]), datetime.fromisoformat(ti["end_date"])


def test_a_bad_conf_is_rejected_by_the_api_with_the_params_message(e2e):
    status, body = e2e.api(
        "POST",
        "/api/v2/dags/default_partition_migration/dagRuns",
        {"logical_date": None, "conf": {"table": "public.nope"}},
    )
    assert status == 400, body
    assert "Invalid input for param table: 'public.nope' is not one of" in body["detail"]
    status, body = e2e.api(
        "POST",
        "/api/v2/dags/partition_maintenance/dagRuns",
        {"logical_date": None, "conf": {"tables": ["public.inbound_requests", "public.inbound_requests"]}},
    )
    assert status == 400 and "Invalid input for param tables" in body["detail"] and "non-unique" in body["detail"], body
    status, body = e2e.api(
        "POST",
        "/api/v2/dags/default_partition_migration/dagRuns",
        {"logical_date": None, "conf": {"table": "public.event_deltas", "batch_rows": 5}},
    )
    assert (
        status == 400 and "Invalid input for param batch_rows: 5 is less than the minimum of 100" in body["detail"]
    ), body
    for dag_id in ("default_partition_migration", "partition_maintenance"):
        status, runs = e2e.api("GET", f"/api/v2/dags/{dag_id}/dagRuns")
        assert runs["total_entries"] == 0, runs  # nothing ran


def test_the_watchdog_finds_the_seeded_incident_and_pages_from_the_worker(seeded):
    run_id, run, states = seeded.run_and_wait("partition_watchdog", {})
    assert run["state"] == "success", states
    assert states == {
        "check_database": "success",
        "check_tables": "success",
        "check_services": "success",
        "request_migration": "skipped",
        "escalate": "success",
    }
    tables = seeded.xcom("partition_watchdog", run_id, "check_tables", key="result")
    assert tables["migrate"] == []  # no auto_migrate table in the demo config
    escalated = seeded.xcom("partition_watchdog", run_id, "escalate")
    active = escalated["active"]
    assert (
        active["runway:public.inbound_requests"]["severity"] == "critical"
        and active["runway:public.inbound_requests"]["paged"]
    )
    for key in (
        "default_rows:public.inbound_requests",
        "default_rows:public.event_deltas",
        "expired_attached:public.inbound_requests",
        "expired_attached:public.event_deltas",
    ):
        assert active[key]["severity"] == "warning", key
    pages = {(e["dedup_key"], e["event_action"]) for e in seeded.webhooks.pagerduty}
    assert ("runway:public.inbound_requests", "trigger") in pages
    told = {m["text"].split(":")[0] for m in seeded.webhooks.slack}
    assert "[pgmaint] WARNING default_rows" in told


@pytest.mark.parametrize("table", DEMO_TABLES)
def test_migration_moves_the_default_rows_with_writers_paused_and_resumed(seeded, table):
    run_id, run, states = seeded.run_and_wait("default_partition_migration", {"table": table})
    assert run["state"] == "success", states
    assert states == {
        "open_window": "success",
        "migrate": "success",
        "gate_before_cleanup": "success",
        "finish": "success",
        "gate_after_cleanup": "success",
        "resume_writers": "success",
    }
    moved = seeded.xcom("default_partition_migration", run_id, "migrate")
    assert moved["table"] == table and moved["outcome"] == "swapped" and moved["rows_moved"] > 0, moved
    assert moved["partitions"]
    gate = seeded.xcom("default_partition_migration", run_id, "gate_before_cleanup")
    assert gate["success"] is True, gate
    paused = moved["paused"]
    resumed = seeded.xcom("default_partition_migration", run_id, "resume_writers")
    assert paused and sorted(resumed) == sorted(paused)
    with psycopg.connect(seeded.target_dsn) as conn:
        schema, name = table.split(".")
        left = conn.execute(f'SELECT count(*) FROM "{schema}"."{name}_default"').fetchone()[0]
    assert left == 0 or any(r["reason"] for r in moved["left_in_default"])


def _leases_of(dsn: str, run_id: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT service, state FROM pgmaint.service_leases WHERE run_id = %s ORDER BY service", [run_id]
        ).fetchall()


def test_writers_keep_running_while_the_move_waits_for_a_pool_slot(seeded):
    """The writers are paused inside `migrate`, once it holds a slot of the target's pool: while no slot is free the
    run waits with every writer running (no lease written), and pauses them only when a slot frees up."""
    status, pool = seeded.api("GET", "/api/v2/pools/pgmaint_target")
    assert status == 200, pool
    fields = {k: pool[k] for k in ("name", "slots", "description", "include_deferred")}
    status, body = seeded.api("PATCH", "/api/v2/pools/pgmaint_target?update_mask=slots", {**fields, "slots": 0})
    assert status == 200, body
    try:
        run_id = seeded.trigger("default_partition_migration", {"table": "public.event_deltas"})
        deadline = time.monotonic() + 120
        while seeded.task_states("default_partition_migration", run_id).get("open_window") != "success":
            assert time.monotonic() < deadline, seeded.task_states("default_partition_migration", run_id)
            time.sleep(0.5)
        time.sleep(5)  # several scheduler passes (0.5 s idle sleep here): the move stays waiting for a slot
        states = seeded.task_states("default_partition_migration", run_id)
        assert states["migrate"] in (None, "scheduled"), states
        assert _leases_of(seeded.target_dsn, run_id) == []  # nothing paused while waiting
    finally:
        status, body = seeded.api(
            "PATCH", "/api/v2/pools/pgmaint_target?update_mask=slots", {**fields, "slots": pool["slots"]}
        )
        assert status == 200, body
    run = seeded.wait_run("default_partition_migration", run_id)
    assert run["state"] == "success", seeded.task_states("default_partition_migration", run_id)
    moved = seeded.xcom("default_partition_migration", run_id, "migrate")
    assert sorted(moved["paused"]) == ["request_logging", "sync_pipeline"], moved  # paused once it had its slot
    assert _leases_of(seeded.target_dsn, run_id) == [("request_logging", "resumed"), ("sync_pipeline", "resumed")]


def test_maintenance_premakes_and_retires_every_table_in_parallel(seeded):
    run_id, run, states = seeded.run_and_wait("partition_maintenance", {"tables": DEMO_TABLES})
    assert run["state"] == "success", states
    # plan, summarize, and per table with work (both have some): premake, the two gates, retire, request_migration
    # (skipped: no table of the demo has auto_migrate)
    assert {t: s for t, s in states.items() if s != "success"} == {
        "table.request_migration[0]": "skipped",
        "table.request_migration[1]": "skipped",
    }, states
    assert len(states) == 2 + 2 * 5
    summary = seeded.xcom("partition_maintenance", run_id, "summarize")
    assert summary["tables"] == 2 and summary["failed"] == {} and summary["skipped"] == {}, summary
    assert set(summary["created"]) == set(DEMO_TABLES) and set(summary["retired"]) == set(DEMO_TABLES), summary
    for i in range(2):
        result = seeded.xcom("partition_maintenance", run_id, "table.premake", key="result", map_index=i)
        assert result["outcome"] == "success" and result["created"], result
    # LocalExecutor ran the two tables' premake at the same time.
    premakes = [ti for ti in seeded.task_instances("partition_maintenance", run_id) if ti["task_id"] == "table.premake"]
    (s0, e0), (s1, e1) = (_window(ti) for ti in premakes)
    assert s0 < e1 and s1 < e0, "the mapped premake tasks did not overlap"


def test_a_scheduled_watchdog_run_fires_by_itself_and_resolves_the_page(seeded):
    after = time.time()
    deadline = time.monotonic() + 150
    found = None
    while time.monotonic() < deadline and found is None:
        status, body = seeded.api(
            "GET",
            "/api/v2/dags/partition_watchdog/dagRuns?run_type=scheduled&state=success&order_by=-start_date&limit=5",
        )
        for r in body["dag_runs"]:
            if datetime.fromisoformat(r["start_date"]).timestamp() > after:
                found = r
                break
        time.sleep(2)
    assert found, "no scheduled partition_watchdog run started and succeeded within 150 s"
    escalated = seeded.xcom("partition_watchdog", found["dag_run_id"], "escalate")
    assert not [k for k in escalated["active"] if k.split(":")[0] in ("runway", "default_rows", "expired_attached")], (
        escalated
    )
    assert ("runway:public.inbound_requests", "resolve") in {
        (e["dedup_key"], e["event_action"]) for e in seeded.webhooks.pagerduty
    }


def test_a_failed_task_runs_its_callback_in_the_worker(seeded):
    with psycopg.connect(seeded.target_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE public.e2e_doomed CASCADE")
    seeded.webhooks.clear()
    run_id, run, states = seeded.run_and_wait("partition_maintenance", {"tables": [DOOMED]})
    assert run["state"] == "failed"
    assert states["table.premake[0]"] == "failed" and states["summarize"] == "failed", states
    key = f"task:partition_maintenance.table.premake:{DOOMED}"
    texts = [m["text"] for m in seeded.webhooks.slack]
    [text] = [t for t in texts if key in t]
    assert "table does not exist" in text and "/dags/partition_maintenance/runs/" in text, text
    with psycopg.connect(seeded.target_dsn) as conn:
        [(streak, details)] = conn.execute(
            "SELECT streak, details FROM pgmaint.conditions WHERE key = %s", [key]
        ).fetchall()
    assert streak == 1 and details["run_id"] == run_id and details["map_index"] == 0
