"""pgmaint on CeleryExecutor with two workers (Redis broker from Debian's redis-server): one
maintenance run's mapped table tasks run on both workers, and two workers racing on one table are
resolved by the runner lock — one does the work, the other skips and says why."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time

import psycopg
import pytest
from psycopg import sql

from tests.e2e.conftest import e2e_config, free_tcp_port, make_daily_table, start_deployment, table_entry

TABLES = [f"public.e2e_celery_{i}" for i in range(4)]
RACE = "public.e2e_race"


@pytest.fixture(scope="module")
def redis_url():
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not shutil.os.path.exists(server):
        pytest.skip("e2e celery: redis-server not installed (Debian package redis-server; .ci/run installs it)")
    port = free_tcp_port()
    workdir = tempfile.mkdtemp(prefix="e2e-redis-")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while (
            subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip()
            != "PONG"
        ):
            assert proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not answer PING"
            time.sleep(0.2)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def e2e(request, pg_dsn, redis_url):
    def config_for(path, webhooks):
        tables = [table_entry(t.split(".")[1]) for t in TABLES + [RACE]]
        # The race below holds a lock on the race table from the test; preflight must not refuse
        # the first runner for it (it would skip instead of racing), and its lock budget outlasts it.
        return e2e_config(
            path,
            webhooks,
            extra_tables=tables,
            schedules={"maintenance": None, "watchdog": None},
            preflight={"long_transaction_seconds": 3600},
            lock_budget={"total_seconds": 120},
        )

    # Concurrency 1 per worker: a busy worker takes no second task, so work spreads over both.
    yield from start_deployment(
        request,
        pg_dsn,
        "celery",
        config_for=config_for,
        executor="CeleryExecutor",
        celery_workers=2,
        worker_concurrency=1,
        broker_url=redis_url,
    )


@pytest.fixture(scope="module")
def ready(e2e):
    for t in TABLES:
        make_daily_table(e2e.target_dsn, t.split(".")[1], days=range(-2, 1))
    # The race table: today's rows sit in the DEFAULT (a migration to do) and no future partitions
    # (maintenance work to do).
    make_daily_table(e2e.target_dsn, "e2e_race", days=range(-3, 0), default_rows_days=range(1), rows_per_day=500)
    for dag_id in ("partition_maintenance", "default_partition_migration"):
        e2e.unpause(dag_id)
    return e2e


def _hosts(e2e, dag_id, run_id, task_id):
    return {ti["map_index"]: ti["hostname"] for ti in e2e.task_instances(dag_id, run_id) if ti["task_id"] == task_id}


def test_one_maintenance_run_uses_both_workers(ready):
    # Short tasks may all run one after another on whichever worker is free first. So two tables'
    # premakes wait (lock budget) behind a SHARE lock held here until both are running: with
    # concurrency 1 per worker, two tasks running at once are on two workers.
    blockers = [psycopg.connect(ready.target_dsn) for _ in range(2)]
    try:
        for conn, table in zip(blockers, TABLES[:2]):
            conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.Identifier(*table.split("."))))
        run_id = ready.trigger("partition_maintenance", {"tables": TABLES})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = [
                ti
                for ti in ready.task_instances("partition_maintenance", run_id)
                if ti["task_id"] == "table.premake" and ti["state"] == "running"
            ]
            if len(running) >= 2:
                break
            time.sleep(0.5)
    finally:
        for conn in blockers:
            conn.rollback()
            conn.close()
    run = ready.wait_run("partition_maintenance", run_id)
    states = ready.task_states("partition_maintenance", run_id)
    assert run["state"] == "success", states
    # request_migration is skipped: no table here has auto_migrate
    assert {s for t, s in states.items() if not t.startswith("table.request_migration")} == {"success"}, states
    summary = ready.xcom("partition_maintenance", run_id, "summarize")
    assert set(summary["created"]) == set(TABLES) and summary["failed"] == {}, summary
    hosts = _hosts(ready, "partition_maintenance", run_id, "table.premake")
    assert len(hosts) == len(TABLES)
    assert set(hosts.values()) == {"worker1", "worker2"}, hosts


def test_two_workers_racing_on_one_table_are_resolved_by_the_runner_lock(ready):
    blocker = psycopg.connect(ready.target_dsn)
    try:
        # An application's open transaction reading the table: the migration's swap waits for it
        # (lock timeouts, backoff) while holding the table's runner lock.
        blocker.execute("SELECT count(*) FROM public.e2e_race")
        migration = ready.trigger("default_partition_migration", {"table": RACE, "pause_services": False})
        deadline = time.monotonic() + 120
        while True:
            with psycopg.connect(ready.target_dsn) as conn:
                held = conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND classid::int = hashtext('pgmaint') AND objid::int = hashtext(%s)",
                    ['"public"."e2e_race"'],
                ).fetchone()[0]
            if held:
                break
            assert time.monotonic() < deadline, ready.task_states("default_partition_migration", migration)
            time.sleep(0.5)
        # Worker 1 holds the runner lock in `migrate`; worker 2 gets the maintenance of the same table.
        run_id, run, states = ready.run_and_wait("partition_maintenance", {"tables": [RACE]})
    finally:
        blocker.rollback()
        blocker.close()
    assert run["state"] == "success", states
    assert states["table.premake[0]"] == "skipped", states
    result = ready.xcom("partition_maintenance", run_id, "table.premake", key="result", map_index=0)
    assert (
        result["outcome"] == "skipped"
        and "another pgmaint run holds this table's runner lock" in result["skipped_reason"]
    )
    summary = ready.xcom("partition_maintenance", run_id, "summarize")
    assert "runner lock" in summary["skipped"][RACE], summary

    migrated = ready.wait_run("default_partition_migration", migration)
    assert migrated["state"] == "success", ready.task_states("default_partition_migration", migration)
    moved = ready.xcom("default_partition_migration", migration, "migrate")
    assert moved["outcome"] == "swapped" and moved["rows_moved"] == 500, moved
    [migrate_host] = _hosts(ready, "default_partition_migration", migration, "migrate").values()
    [premake_host] = _hosts(ready, "partition_maintenance", run_id, "table.premake").values()
    assert {migrate_host, premake_host} == {"worker1", "worker2"}
