"""The `flag` adapter and the lease rules, against a real PostgreSQL (pg_dsn; state schema = scratch_schema)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from psycopg import sql

from include.pgmaint.services import (
    ServicePauseError,
    live_leases,
    pause_services,
    resume_expired_leases,
    resume_services,
    service_status,
)
from include.pgmaint.state import ensure_state_schema

REPO = Path(__file__).resolve().parents[3]
RUN = {"dag_id": "default_partition_migration", "run_id": "manual__1"}
OTHER = {"dag_id": "default_partition_migration", "run_id": "manual__2"}


def flags(conn, schema: str) -> dict[str, bool]:
    return dict(
        conn.execute(sql.SQL("SELECT name, enabled FROM {}.service_flags").format(sql.Identifier(schema))).fetchall()
    )


def enabled(conn, schema: str, name: str) -> bool:
    return conn.execute(sql.SQL("SELECT {}.service_enabled(%s)").format(sql.Identifier(schema)), [name]).fetchone()[0]


def leases(conn, schema: str) -> list[tuple]:
    return conn.execute(
        sql.SQL("SELECT service, dag_id, run_id, state, resumed_by FROM {}.service_leases ORDER BY lease_id").format(
            sql.Identifier(schema)
        )
    ).fetchall()


def now(conn):
    return conn.execute("SELECT clock_timestamp()").fetchone()[0]


@pytest.fixture
def cfg(make_config, scratch_schema):
    return make_config(
        scratch_schema,
        [
            {"name": "request_logging", "kind": "flag"},
            {
                "name": "sync_pipeline",
                "kind": "flag",
                "flag": "sync",
                "depends_on": ["request_logging"],
                "lease_minutes": 5,
            },
        ],
    )


def test_service_enabled_function_for_applications(target, scratch_schema, cfg):
    ensure_state_schema(target, scratch_schema)
    assert enabled(target, scratch_schema, "request_logging") is True  # no row: enabled
    pause_services(target, cfg, ["request_logging"], **RUN, reason="migrating public.t")
    assert enabled(target, scratch_schema, "request_logging") is False
    # what an application writes: the insert happens only while the flag is on
    target.execute("CREATE TABLE public.flag_demo_log (msg text)")
    try:
        insert = sql.SQL(
            "INSERT INTO public.flag_demo_log SELECT 'hit' WHERE {}.service_enabled('request_logging')"
        ).format(sql.Identifier(scratch_schema))
        target.execute(insert)
        resume_services(target, cfg, **RUN)
        target.execute(insert)
        assert target.execute("SELECT count(*) FROM public.flag_demo_log").fetchone()[0] == 1
    finally:
        target.execute("DROP TABLE public.flag_demo_log")


def test_pause_then_resume_in_order_with_leases(target, scratch_schema, cfg):
    report = pause_services(target, cfg, ["request_logging", "sync_pipeline"], **RUN, reason="migrating public.t")
    assert report.order == ["sync_pipeline", "request_logging"]  # sync needs request_logging running: paused first
    assert report.held == ["sync_pipeline", "request_logging"]
    assert flags(target, scratch_schema) == {"sync": False, "request_logging": False}
    row = target.execute(
        sql.SQL("SELECT changed_by, reason FROM {}.service_flags WHERE name = 'sync'").format(
            sql.Identifier(scratch_schema)
        )
    ).fetchone()
    assert row == ("default_partition_migration/manual__1", "migrating public.t")
    [a, b] = live_leases(target, cfg)
    assert (a["service"], a["state"], a["reason"], a["previous_state"]) == (
        "sync_pipeline",
        "paused",
        "migrating public.t",
        {"enabled": True},
    )
    assert a["lease_until"] - a["paused_at"] == pytest.approx(timedelta(minutes=5), abs=timedelta(seconds=5))
    assert b["lease_until"] - b["paused_at"] == pytest.approx(timedelta(minutes=120), abs=timedelta(seconds=5))

    status = service_status(target, cfg, "sync_pipeline")
    assert status["paused"] is True and status["leases"][0]["held_by"] == "default_partition_migration/manual__1"

    # idempotent: a second pause holds the same leases
    again = pause_services(target, cfg, ["request_logging", "sync_pipeline"], **RUN)
    assert [o.action for o in again.outcomes] == ["already_held", "already_held"]
    assert len(live_leases(target, cfg)) == 2

    outcomes = resume_services(target, cfg, **RUN)
    assert [(o.service, o.action) for o in outcomes] == [("request_logging", "resumed"), ("sync_pipeline", "resumed")]
    assert flags(target, scratch_schema) == {"sync": True, "request_logging": True}
    assert live_leases(target, cfg) == []
    # idempotent, and safe when nothing is paused
    assert resume_services(target, cfg, **RUN) == []
    assert resume_services(target, cfg, dag_id="x", run_id="never-paused") == []


def test_service_paused_by_hand_is_left_alone_and_reported(target, scratch_schema, cfg):
    ensure_state_schema(target, scratch_schema)
    target.execute(
        sql.SQL(
            "INSERT INTO {}.service_flags (name, enabled, changed_by, reason) VALUES "
            "('request_logging', false, 'oncall', 'incident 42')"
        ).format(sql.Identifier(scratch_schema))
    )
    report = pause_services(target, cfg, ["request_logging", "sync_pipeline"], **RUN)
    assert report.held == ["sync_pipeline"]
    [alone] = report.left_alone
    assert alone.service == "request_logging" and "oncall" in alone.detail and "incident 42" in alone.detail
    assert [lease[0] for lease in leases(target, scratch_schema)] == ["sync_pipeline"]
    resume_services(target, cfg, **RUN)
    assert flags(target, scratch_schema) == {"sync": True, "request_logging": False}  # still paused: not ours


def test_two_runs_share_a_pause_the_last_one_resumes(target, scratch_schema, cfg):
    pause_services(target, cfg, ["request_logging"], **RUN)
    report = pause_services(target, cfg, ["request_logging"], **OTHER)
    assert report.outcomes[0].action == "joined" and "manual__1" in report.outcomes[0].detail
    [first] = resume_services(target, cfg, **RUN)
    assert first.action == "released" and "manual__2" in first.detail
    assert flags(target, scratch_schema) == {"request_logging": False}  # the other run still needs it paused
    [second] = resume_services(target, cfg, **OTHER)
    assert second.action == "resumed"
    assert flags(target, scratch_schema) == {"request_logging": True}
    assert [lease[3] for lease in leases(target, scratch_schema)] == ["released", "resumed"]


def test_expired_lease_is_resumed_only_when_no_live_lease_holds_the_service(target, scratch_schema, cfg):
    pause_services(target, cfg, ["sync_pipeline"], **RUN)  # 5-minute lease
    pause_services(target, cfg, ["sync_pipeline"], **OTHER, lease_minutes=60)
    later = now(target) + timedelta(minutes=10)
    [outcome] = resume_expired_leases(target, cfg, now=later)
    assert outcome.action == "released"  # the other run's lease is still live
    assert flags(target, scratch_schema) == {"sync": False}
    [outcome] = resume_expired_leases(target, cfg, now=later + timedelta(hours=1))
    assert outcome.action == "resumed"
    assert flags(target, scratch_schema) == {"sync": True}
    assert leases(target, scratch_schema)[1][4] == "lease expired (held by default_partition_migration/manual__2)"


KILLED_RUN = r"""
import sys, time
sys.path.insert(0, {repo!r})
from include.pgmaint.db import connect
from include.pgmaint.services import pause_services
from tests.fixtures.services import build_config
cfg = build_config({schema!r}, [{{"name": "request_logging", "kind": "flag"}},
                                {{"name": "sync_pipeline", "kind": "flag", "flag": "sync", "depends_on": ["request_logging"]}}])
conn = connect({dsn!r})
pause_services(conn, cfg, ["request_logging", "sync_pipeline"], dag_id="default_partition_migration",
               run_id="killed", lease_minutes=1)
print("paused", flush=True)
time.sleep(600)  # "migrating" until killed
"""


def test_killed_run_services_come_back_when_the_lease_expires(target, pg_dsn, scratch_schema, cfg):
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN.format(repo=str(REPO), schema=scratch_schema, dsn=pg_dsn)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "paused", proc.stderr.read() if proc.poll() is not None else line
        os.kill(proc.pid, signal.SIGKILL)  # the worker dies: no teardown, no finally
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert flags(target, scratch_schema) == {"sync": False, "request_logging": False}
    assert resume_expired_leases(target, cfg) == []  # not expired yet: nothing happens
    outcomes = resume_expired_leases(target, cfg, now=now(target) + timedelta(minutes=2))
    assert [(o.service, o.action) for o in outcomes] == [("request_logging", "resumed"), ("sync_pipeline", "resumed")]
    assert flags(target, scratch_schema) == {"sync": True, "request_logging": True}
    assert {lease[4] for lease in leases(target, scratch_schema)} == {
        "lease expired (held by default_partition_migration/killed)"
    }


def test_diamond_third_pause_fails_first_two_resumed(target, scratch_schema, make_config, http_service):
    # A->B, A->C, B->D, C->D: paused A, B, C, D; C is an admin endpoint that fails.
    http_service.plan["/c/pause"] = [500]
    cfg = make_config(
        scratch_schema,
        [
            {"name": "A", "kind": "flag", "depends_on": ["B", "C"]},
            {"name": "B", "kind": "flag", "depends_on": ["D"]},
            {
                "name": "C",
                "kind": "http",
                "depends_on": ["D"],
                "pause_url": f"{http_service.base_url}/c/pause",
                "resume_url": f"{http_service.base_url}/c/resume",
                "retries": 1,
                "timeout_seconds": 2,
            },
            {"name": "D", "kind": "flag"},
        ],
    )
    with pytest.raises(ServicePauseError) as info:
        pause_services(target, cfg, ["D", "C", "B", "A"], **RUN)
    message = str(info.value)
    assert "pausing service 'C' (http) failed" in message and "/c/pause failed after 2 attempt(s): HTTP 500" in message
    assert "Resumed what this run had paused, in reverse order: C, B, A" in message
    assert [o.service for o in info.value.report.outcomes] == ["A", "B"]
    assert flags(target, scratch_schema) == {"A": True, "B": True}  # D was never touched
    # C's pause may have half-happened on the other side: its resume URL was called too (after the failures)
    assert http_service.paths() == ["POST /c/pause", "POST /c/pause", "POST /c/resume"]
    assert live_leases(target, cfg) == []
    assert [(lease[0], lease[3]) for lease in leases(target, scratch_schema)] == [
        ("A", "resumed"),
        ("B", "resumed"),
        ("C", "resumed"),
    ]


def test_failed_resume_keeps_the_lease_for_the_watchdog(target, scratch_schema, make_config, http_service):
    cfg = make_config(
        scratch_schema,
        [
            {
                "name": "fn",
                "kind": "http",
                "pause_url": f"{http_service.base_url}/pause",
                "resume_url": f"{http_service.base_url}/resume",
                "retries": 0,
            },
            {"name": "logger", "kind": "flag", "depends_on": ["fn"]},
        ],
    )
    pause_services(target, cfg, ["fn", "logger"], **RUN)
    http_service.plan["/resume"] = [503, 200]
    with pytest.raises(Exception, match=r"could not resume fn \[http\].*HTTP 503") as info:
        resume_services(target, cfg, **RUN)
    assert [(o.service, o.action) for o in info.value.outcomes] == [("fn", "failed"), ("logger", "resumed")]
    [lease] = live_leases(target, cfg)
    assert lease["service"] == "fn" and lease["expired"] and "HTTP 503" in lease["error"]
    [outcome] = resume_expired_leases(target, cfg)  # the watchdog's next run
    assert outcome.action == "resumed"
    assert live_leases(target, cfg) == []


def test_resume_restores_what_was_paused_even_if_the_config_changed(target, scratch_schema, make_config, cfg):
    pause_services(target, cfg, ["request_logging", "sync_pipeline"], **RUN)
    # sync_pipeline gone
    changed = make_config(scratch_schema, [{"name": "request_logging", "kind": "flag", "flag": "renamed"}])
    outcomes = resume_services(target, changed, **RUN)
    assert [(o.service, o.action) for o in outcomes] == [("request_logging", "resumed"), ("sync_pipeline", "resumed")]
    assert flags(target, scratch_schema) == {"sync": True, "request_logging": True}


def test_concurrent_runs_pausing_the_same_service_one_pauses_one_joins(pg_dsn, target, scratch_schema, cfg):
    import threading

    from include.pgmaint.db import connect

    ensure_state_schema(target, scratch_schema)
    barrier, results, errors = threading.Barrier(4), {}, []

    def run(run_id: str) -> None:
        try:
            with connect(pg_dsn) as conn:
                barrier.wait()
                results[run_id] = (
                    pause_services(conn, cfg, ["request_logging"], dag_id="d", run_id=run_id).outcomes[0].action
                )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(results.values()) == ["joined", "joined", "joined", "paused"]
    order = sorted(results, key=lambda r: results[r] != "paused")  # the run that paused it finishes first
    for i, run_id in enumerate(order):
        [outcome] = resume_services(target, cfg, dag_id="d", run_id=run_id)
        last = i == len(order) - 1
        assert outcome.action == ("resumed" if last else "released")
        assert flags(target, scratch_schema) == {"request_logging": last}  # paused until the last holder ends


DIES_MID_PAUSE = r"""
import os, sys
sys.path.insert(0, {repo!r})
from include.pgmaint.db import connect
from include.pgmaint.services import pause_services
from include.pgmaint.services.leases import make_adapter
from tests.fixtures.services import build_config
cfg = build_config({schema!r}, [{{"name": "request_logging", "kind": "flag"}}])
conn = connect({dsn!r})

def factory(service):
    adapter = make_adapter(service, cfg, conn)
    adapter.pause = lambda before, actor: os._exit(9)  # the worker dies after the lease was written, before the pause
    return adapter

pause_services(conn, cfg, ["request_logging"], dag_id="default_partition_migration", run_id="manual__1", factory=factory)
"""


def test_worker_dies_mid_pause_the_retry_finishes_it_and_resume_restores(target, pg_dsn, scratch_schema, make_config):
    out = subprocess.run(
        [sys.executable, "-c", DIES_MID_PAUSE.format(repo=str(REPO), schema=scratch_schema, dsn=pg_dsn)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 9, out.stderr[-2000:]
    cfg = make_config(scratch_schema, [{"name": "request_logging", "kind": "flag"}])
    [lease] = live_leases(target, cfg)
    # intent and snapshot recorded first
    assert (lease["state"], lease["previous_state"]) == (
        "pausing",
        {"enabled": True},
    )
    assert enabled(target, scratch_schema, "request_logging") is True

    report = pause_services(target, cfg, ["request_logging"], **RUN)  # Airflow retries the task
    assert [o.action for o in report.outcomes] == ["already_held"]
    assert live_leases(target, cfg)[0]["state"] == "paused"
    assert enabled(target, scratch_schema, "request_logging") is False
    resume_services(target, cfg, **RUN)
    assert enabled(target, scratch_schema, "request_logging") is True


def test_min_lease_minutes_lengthens_short_leases(target, cfg):
    pause_services(target, cfg, ["request_logging", "sync_pipeline"], **RUN, min_lease_minutes=90)
    lengths = {lease["service"]: lease["lease_until"] - lease["paused_at"] for lease in live_leases(target, cfg)}
    assert lengths["sync_pipeline"] == pytest.approx(timedelta(minutes=90), abs=timedelta(seconds=5))  # configured 5
    # already longer
    assert lengths["request_logging"] == pytest.approx(timedelta(minutes=120), abs=timedelta(seconds=5))
    resume_services(target, cfg, **RUN)
