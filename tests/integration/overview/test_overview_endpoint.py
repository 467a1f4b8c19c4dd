"""The Partitions view's JSON endpoint (plugins/pgmaint_partitions.py, include/pgmaint/overview.py) against a
real PostgreSQL holding the demo's incident state, then after the repair the demo does."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from fastapi.testclient import TestClient

from include.pgmaint.catalog import Partition, Range, TableFacts
from include.pgmaint.config import load_config
from include.pgmaint.db import connect
from include.pgmaint.escalation import settings_for
from include.pgmaint.overview import timeline

UTC = timezone.utc


def client_for(dsn: str) -> TestClient:
    import pgmaint_partitions  # plugins/

    return TestClient(pgmaint_partitions.create_app(authorize=None, conninfo=lambda config: dsn, ui_base=lambda: ""))


def table(data: dict, name: str) -> dict:
    return next(t for t in data["tables"] if t["name"] == name)


def kinds(t: dict) -> list[str]:
    return [s["kind"] for s in t["timeline"]["segments"]]


# --- the pure timeline ----------------------------------------------------------------------------


def _day(d: datetime, off: int) -> Range:
    return Range(d + timedelta(days=off), d + timedelta(days=off + 1))


def test_timeline_classifies_partitions_gaps_and_missing_runway():
    config = load_config()
    cfg = config.table("public.inbound_requests")  # daily, premake 4, retention 30 days
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    today = datetime(2026, 3, 10, tzinfo=UTC)
    offsets = [-32, -31, -20, -19, -1, 0, 1]  # expired, expired; a gap after -31 and after -19; current; one ahead
    parts = tuple(Partition("public", f"p{o}", _day(today, o)) for o in offsets)
    facts = TableFacts(cfg.name, "public", "inbound_requests", "created_at", "timestamp with time zone", parts, None)
    tl = timeline(cfg, facts, now, "UTC")
    got = [(s.kind, (s.lower - today).days, (s.upper - today).days) for s in tl["segments"]]
    assert got == [
        ("expired", -32, -31),
        ("expired", -31, -30),
        ("gap", -30, -20),
        ("retained", -20, -19),
        ("retained", -19, -18),
        ("gap", -18, -1),
        ("retained", -1, 0),
        ("current", 0, 1),
        ("ahead", 1, 2),
        ("missing", 2, 5),
    ]
    assert [(r.lower - today).days for r in tl["missing"]] == [2, 3, 4]
    assert tl["horizon"] == today + timedelta(days=5)


# --- the endpoint on the incident's state -----------------------------------------------------------


def _journal_run(conn, schema: str, job: str, table_name: str, dag_id: str, run_id: str, outcome: str, error=None):
    from include.pgmaint.state import Journal

    j = Journal(conn, schema)
    rid = j.start_run(job, table_name, dag_id=dag_id, dag_run_id=run_id, task_id="t")
    j.finish_run(rid, outcome, {}, error)


def test_endpoint_shows_the_incident_then_the_repair(demo_dsn):
    from include.pgmaint.maintenance import RunContext, run_maintenance
    from include.pgmaint.migrate import migrate_table
    from include.pgmaint.services.leases import pause_services, resume_services
    from include.pgmaint.watchdog import watch

    config = load_config()
    settings = settings_for(config)
    client = client_for(demo_dsn)

    # Before any pgmaint run: no state schema. The view says so and creates nothing.
    r = client.get("/api/overview")
    assert r.status_code == 200, r.text
    data = r.json()
    assert "does not exist yet" in data["state"]["note"]
    with psycopg.connect(demo_dsn) as c:
        assert c.execute("SELECT to_regnamespace('pgmaint')").fetchone()[0] is None

    # The watchdog records its conditions; a migration run pauses request_logging; a maintenance run failed.
    watch(demo_dsn, config, settings)
    with connect(demo_dsn, config.lock_budget) as conn:
        pause_services(
            conn,
            config,
            ["request_logging"],
            dag_id="default_partition_migration",
            run_id="manual__incident",
            reason="moving DEFAULT rows",
        )
        _journal_run(
            conn,
            "pgmaint",
            "maintenance",
            "public.inbound_requests",
            "partition_maintenance",
            "scheduled__2026-01-01T00:00:00+00:00",
            "failed",
            "lock timeout on public.inbound_requests",
        )
        exact_rows, first, last = conn.execute(
            "SELECT count(*), min(created_at)::text, max(created_at)::text FROM ONLY public.inbound_requests_default"
        ).fetchone()

    data = client.get("/api/overview").json()
    assert data["state"]["note"] is None
    inbound = table(data, "public.inbound_requests")
    # Missing runway: no partition for today nor the 4 days ahead; the last days are a gap.
    assert inbound["runway"] == {
        "current": False,
        "ahead": 0,
        "premake": 4,
        "missing_intervals": 5,
        "covered_until": inbound["runway"]["covered_until"],
    }
    assert kinds(inbound)[-2:] == ["gap", "missing"]
    # By default adjacent partitions of one kind are one segment (a expired_run): the six expired ones first.
    expired_run = inbound["timeline"]["segments"][0]
    assert inbound["expired_attached"] == 6 and expired_run["kind"] == "expired" and expired_run["partitions"] == 6
    assert expired_run["name"] != expired_run["last"] and expired_run["rows"] >= 0
    # One segment per partition on request: the same classification, partition by partition.
    detail = table(client.get("/api/overview", params={"segments": "partitions"}).json(), "public.inbound_requests")
    assert kinds(detail)[:6] == ["expired"] * 6 and kinds(detail)[-2:] == ["gap", "missing"]
    assert [k for s in inbound["timeline"]["segments"] for k in [s["kind"]] * max(s["partitions"], 1)] == kinds(detail)
    assert [s["name"] for s in detail["timeline"]["segments"][:6]][::5] == [expired_run["name"], expired_run["last"]]
    assert sum(s["rows"] or 0 for s in detail["timeline"]["segments"]) == sum(
        s["rows"] or 0 for s in inbound["timeline"]["segments"]
    )
    assert client.get("/api/overview", params={"segments": "all"}).status_code == 422
    # The DEFAULT's rows, counted exactly, with their range.
    assert inbound["default"]["rows"] == exact_rows >= 2 * 24 * 60  # two whole days and today so far
    assert (inbound["default"]["min"], inbound["default"]["max"]) == (first, last)
    assert inbound["migrate"]["conf"] == {"table": "public.inbound_requests"}
    assert inbound["migrate"]["trigger_url"].startswith("/pgmaint/trigger/default_partition_migration?conf=")
    # Conditions with severity, age and the runbook served by the plugin.
    runway = next(c for c in inbound["conditions"] if c["key"] == "runway:public.inbound_requests")
    assert runway["severity"] == "critical" and runway["age_seconds"] >= 0
    assert runway["runbook"] == "/pgmaint/runbook#runway"
    assert {c["key"].split(":")[0] for c in inbound["conditions"]} >= {"runway", "default_rows", "expired_attached"}
    # The lease: request_logging writes to both tables.
    for name in ("public.inbound_requests", "public.event_deltas"):
        (lease,) = table(data, name)["leases"]
        assert (
            lease["service"] == "request_logging"
            and lease["paused_by"] == "default_partition_migration/manual__incident"
        )
        assert lease["run_url"] == "/dags/default_partition_migration/runs/manual__incident" and not lease["expired"]
    run = inbound["runs"]["maintenance"]
    assert run["outcome"] == "failed" and "lock timeout" in run["error"]
    assert run["url"] == "/dags/partition_maintenance/runs/scheduled__2026-01-01T00%3A00%3A00%2B00%3A00"
    events = table(data, "public.event_deltas")
    assert events["runway"]["current"] and events["runway"]["ahead"] == 1
    assert events["gaps"] == 1
    with psycopg.connect(demo_dsn) as c:
        assert (
            events["default"]["rows"]
            == c.execute("SELECT count(*) FROM ONLY public.event_deltas_default").fetchone()[0]
        )

    # The page shows what a person checks.
    page = client.get("/partitions").text
    assert "missing runway: no partition for the current interval" in page
    assert f"DEFAULT: {exact_rows:,} rows waiting" in page
    assert "paused by" in page and "default_partition_migration/manual__incident" in page

    # Repair as the demo does: migrate both tables, maintenance, resume, watchdog.
    ctx_m = RunContext("default_partition_migration", "manual__repair", "migrate")
    with connect(demo_dsn, config.lock_budget) as conn:
        for name in ("public.inbound_requests", "public.event_deltas"):
            assert migrate_table(conn, demo_dsn, config, config.table(name), context=ctx_m).outcome == "success"
        run_maintenance(conn, config, context=RunContext("partition_maintenance", "manual__repair", "premake"))
        resume_services(conn, config, dag_id="default_partition_migration", run_id="manual__incident")
    watch(demo_dsn, config, settings)

    data = client.get("/api/overview").json()
    for name in ("public.inbound_requests", "public.event_deltas"):
        t = table(data, name)
        assert t["runway"]["current"] and t["runway"]["ahead"] == 4 and t["runway"]["missing_intervals"] == 0
        assert t["default"]["rows"] == 0 and t["migrate"] is None
        assert t["expired_attached"] == 0 and t["gaps"] == 0 and "missing" not in kinds(t)
        assert t["conditions"] == [] and t["leases"] == []
        assert t["runs"]["maintenance"]["outcome"] == "success"
        assert t["runs"]["maintenance"]["url"] == "/dags/partition_maintenance/runs/manual__repair"
        assert t["runs"]["migration"]["url"] == "/dags/default_partition_migration/runs/manual__repair"
    page = client.get("/partitions").text
    assert "DEFAULT: empty" in page and "runway: 4 of 4 partitions ahead" in page


@pytest.mark.parametrize("relation", ["public.inbound_requests", "public.inbound_requests_default"])
def test_endpoint_never_waits_for_a_locked_table(demo_dsn, relation):
    """A session holding ACCESS EXCLUSIVE on a parent (and so its partitions), or on its DEFAULT alone: the view
    answers within its lock budget and says what it skipped."""
    client = client_for(demo_dsn)
    locked, release = threading.Event(), threading.Event()

    def hold():
        with psycopg.connect(demo_dsn) as c:
            c.execute(f"LOCK TABLE {relation} IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(30)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert locked.wait(10)
    try:
        started = time.monotonic()
        r = client.get("/api/overview")
        elapsed = time.monotonic() - started
    finally:
        release.set()
        t.join()
    assert r.status_code == 200, r.text
    assert elapsed < 3, elapsed
    data = r.json()
    inbound = table(data, "public.inbound_requests")
    assert "locked" in inbound["error"] and "ACCESS EXCLUSIVE" in inbound["error"] and "LOCK TABLE" in inbound["error"]
    events = table(data, "public.event_deltas")  # the other table is still shown
    assert events["error"] is None and events["runway"]["current"] and events["default"]["rows"] > 0


def test_endpoint_reports_an_unreachable_database():
    r = client_for("host=127.0.0.1 port=1 dbname=nothing connect_timeout=2").get("/api/overview")
    assert r.status_code == 503 and "cannot read the target database" in r.json()["detail"]


def test_trigger_form_is_prefilled_and_refuses_other_dags(demo_dsn):
    client = client_for(demo_dsn)
    r = client.get("/trigger/default_partition_migration", params={"conf": '{"table": "public.inbound_requests"}'})
    assert r.status_code == 200 and "&quot;table&quot;: &quot;public.inbound_requests&quot;" in r.text
    assert client.get("/trigger/some_other_dag").status_code == 404
    assert client.get("/trigger/default_partition_migration", params={"conf": "[1]"}).status_code == 422


@pytest.mark.parametrize("path", ["/runbook"])
def test_runbook_is_served_with_its_anchors(path, demo_dsn):
    body = client_for(demo_dsn).get(path).text
    assert '<a id="runway"></a>' in body and '<a id="default-rows"></a>' in body


def test_tables_filter_and_attention_order(demo_dsn):
    client = client_for(demo_dsn)
    one = client.get("/api/overview", params={"table": "public.event_deltas"}).json()
    assert [t["name"] for t in one["tables"]] == ["public.event_deltas"]
    r = client.get("/api/overview", params={"table": "public.nope"})
    assert r.status_code == 404 and "public.nope" in r.json()["detail"]
    # inbound_requests (no partition for today) needs attention first; the other gets a summary line.
    page = client.get("/partitions", params={"limit": 1}).text
    assert page.index("data-table='public.inbound_requests'".replace("'", '"')) < page.index("1 more table(s)")
    assert 'href="?table=public.event_deltas"' in page and 'data-table="public.event_deltas"' not in page
