"""End-to-end through a real Airflow: API server, scheduler, DAG processor, triggerer (and Celery
workers), started by scripts/airflow_local.py on free ports, one deployment per test module.

* Target and metadata DB: two fresh databases on the tests' PostgreSQL (``pg_dsn``'s server).
* Notifications: a loopback webhook server standing in for Slack and PagerDuty.
* Everything goes through the REST API, as the UI does: JWT from /auth/token, then
  ``POST /api/v2/dags/{dag_id}/dagRuns`` with conf.
Skipped (with the reason printed) only when no TCP port can be had on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import airflow_local  # scripts/airflow_local.py (scripts/ is on sys.path, see tests/conftest.py)
import psycopg
import pytest
import yaml
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import REPO, _airflow_conn_json
from tests.fixtures.notify import Recorder, _handler
from tests.support import announce, loopback_http

TERMINAL = {"success", "failed"}


def _port_or_skip() -> int:
    try:
        return airflow_local.free_port()
    except OSError as exc:
        pytest.skip(f"e2e: no TCP port on 127.0.0.1 for the Airflow API server: {exc}")


def sqlalchemy_url(dsn: str) -> str:
    p = conninfo_to_dict(dsn)
    auth = quote(p.get("user") or "postgres", safe="")
    if p.get("password"):
        auth += ":" + quote(p["password"], safe="")
    host = p.get("host") or "localhost"
    query = {"port": p.get("port") or "5432"}
    if host.startswith("/"):
        query["host"] = host
        netloc = f"{auth}@"
    else:
        netloc = f"{auth}@{host}"
    return f"postgresql+psycopg2://{netloc}/{quote(p['dbname'], safe='')}?" + "&".join(
        f"{k}={quote(str(v), safe='/')}" for k, v in query.items()
    )


def fresh_database(admin_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        ident = sql.Identifier(name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    return make_conninfo(admin_dsn, dbname=name)


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class E2E:
    """A running deployment plus what the tests need around it."""

    def __init__(self, deployment: airflow_local.Deployment, target_dsn: str, webhooks: Recorder, config_path: Path):
        self.d = deployment
        self.target_dsn = target_dsn
        self.webhooks = webhooks
        self.config_path = config_path

    def api(self, method: str, path: str, body=None):
        return self.d.api(method, path, body)

    def unpause(self, dag_id: str) -> None:
        status, body = self.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        assert status == 200, body

    def wait_for_dags(self, dag_ids, timeout=120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.api("GET", "/api/v2/dags?limit=100")
            if status == 200 and set(dag_ids) <= {d["dag_id"] for d in body["dags"]}:
                return
            time.sleep(1)
        status, errors = self.api("GET", "/api/v2/importErrors")
        raise AssertionError(f"DAGs not parsed after {timeout} s; import errors: {errors}")

    def trigger(self, dag_id: str, conf: dict) -> str:
        status, body = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        assert status == 200, (status, body)
        return body["dag_run_id"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = self.d.dead()
            assert not dead, f"components died: {dead}\n" + "\n".join(self.d.log_tail(n) for n in dead)
            status, run = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")
            assert status == 200, run
            if run["state"] in TERMINAL:
                return run
            time.sleep(1)
        raise AssertionError(f"{dag_id} {run_id} not finished after {timeout} s: {self.task_states(dag_id, run_id)}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        status, body = self.api(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances?limit=100"
        )
        assert status == 200, body
        return body["task_instances"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        out = {}
        for ti in self.task_instances(dag_id, run_id):
            key = ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")
            out[key] = ti["state"]
        return out

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1):
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/xcomEntries/{key}"
            f"?map_index={map_index}&deserialize=true"
        )
        status, body = self.api("GET", path)
        assert status == 200, (path, body)
        value = body["value"]
        return json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value

    def why_failed(self, dag_id: str, run_id: str, lines: int = 12) -> str:
        """For an assertion message: the run's failed task instances, the last warning/error lines of their logs, and
        what the components logged about the run."""
        out = []
        for ti in self.task_instances(dag_id, run_id):
            if ti["state"] not in ("failed", "upstream_failed"):
                continue
            key = ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")
            out.append(f"{run_id} {key}: {ti['state']}")
            if ti["state"] != "failed":
                continue
            map_dir = f"map_index={ti['map_index']}" if ti["map_index"] >= 0 else ""
            for path in sorted(
                (self.d.home / "logs").glob(f"dag_id={dag_id}/run_id={run_id}/task_id={ti['task_id']}/**/*.log")
            ):
                if map_dir and map_dir not in str(path):
                    continue
                picked = []
                for line in path.read_text(errors="replace").splitlines():
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if str(rec.get("level", "")).lower() in ("warning", "error", "critical") or rec.get("error_detail"):
                        raised = "; ".join(
                            f"{d.get('exc_type')}: {d.get('exc_value')}" for d in rec.get("error_detail") or []
                        )
                        picked.append(
                            f"  {rec.get('timestamp', '')} {rec.get('level', '')} {rec.get('event', '')}"
                            f"{' — ' + raised if raised else ''}"[:2000]
                        )
                out.append(f"  {path.relative_to(self.d.home)}:\n" + "\n".join(picked[-lines:]))
        # A run can also fail with no failed task (e.g. the scheduler's "Task deadlock (no runnable tasks)"):
        # what the components logged about it.
        for log_file in sorted(self.d.log_dir.glob("*.log")):
            said = [
                line[:2000]
                for line in log_file.read_text(errors="replace").splitlines()
                if run_id in line and re.search(r"\[(error|warning|critical) *\]|deadlock|Marking run|Traceback", line)
            ]
            if said:
                out.append(f"  {log_file.name} on {run_id}:\n" + "\n".join(f"    {line}" for line in said[-lines:]))
        return "\n".join(out) or f"{run_id}: no failed task instance and nothing logged about it"

    def run_and_wait(self, dag_id: str, conf: dict, timeout: float = 240) -> tuple[str, dict, dict[str, str]]:
        run_id = self.trigger(dag_id, conf)
        run = self.wait_run(dag_id, run_id, timeout)
        return run_id, run, self.task_states(dag_id, run_id)


def e2e_config(path: Path, webhooks: Recorder, extra_tables=(), **overrides) -> Path:
    """The demo config (its two tables, its services) + escalation to the loopback servers."""
    cfg = yaml.safe_load((REPO / "include" / "config" / "pgmaint.yaml").read_text())
    cfg["tables"] = cfg["tables"] + list(extra_tables)
    cfg["escalation"] = {
        "notify": [{"kind": "slack", "connection_id": "pgmaint_slack"}],
        "page": [{"kind": "pagerduty", "connection_id": "pgmaint_pagerduty"}],
    }
    cfg.update(overrides)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def notifier_env(webhooks: Recorder) -> dict[str, str]:
    return {
        "AIRFLOW_CONN_PGMAINT_SLACK": json.dumps(
            {"conn_type": "slackwebhook", "host": f"{webhooks.url}/services", "password": "T000/B000/XXXXXXXX"}
        ),
        "AIRFLOW_CONN_PGMAINT_PAGERDUTY": json.dumps(
            {"conn_type": "pagerduty_events", "host": webhooks.url, "password": "e2e-routing-key"}
        ),
    }


def start_deployment(request, pg_dsn: str, name: str, *, config_for, **kwargs):
    """Generator body for the module fixtures: databases, config, deployment; torn down after."""
    port = _port_or_skip()
    admin = make_conninfo(pg_dsn, dbname="postgres")
    target_db, meta_db = f"pgmaint_e2e_{name}_{os.getpid()}", f"airflow_e2e_{name}_{os.getpid()}"
    target = fresh_database(admin, target_db)
    meta = fresh_database(admin, meta_db)
    home = Path(tempfile.mkdtemp(prefix=f"e2e-{name}-", dir=REPO / ".pytest-airflow"))
    recorder = Recorder(url="")
    with loopback_http(_handler(recorder)) as recorder.url:
        config_path = config_for(home / "pgmaint.yaml", recorder)
        env = {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(meta),
            "AIRFLOW_CONN_PGMAINT_TARGET": _airflow_conn_json(target),
            "PGMAINT_CONFIG": str(config_path),
            # Faster than the defaults, for a test: pick up runs and finished tasks promptly.
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            **notifier_env(recorder),
        }
        d = airflow_local.Deployment(home=home, port=port, env_overrides=env, **kwargs)
        started = time.monotonic()
        try:
            d.start()
            d.wait_healthy(timeout=300)
            e2e = E2E(d, target, recorder, config_path)
            e2e.wait_for_dags(["partition_maintenance", "default_partition_migration", "partition_watchdog"])
            announce(
                request.config,
                f"e2e[{name}]: Airflow up on {d.base_url} in {time.monotonic() - started:.0f} s "
                f"({kwargs.get('executor', 'LocalExecutor')}; logs {d.log_dir})",
            )
            yield e2e
        except BaseException:
            for comp in d.procs:
                announce(request.config, f"--- {comp} log (tail) ---\n{d.log_tail(comp, 30)}")
            raise
        finally:
            d.stop()
            drop_database(admin, target_db)
            drop_database(admin, meta_db)
            if not os.environ.get("PGMAINT_KEEP_TEST_AIRFLOW_HOME"):
                shutil.rmtree(home, ignore_errors=True)


def utc_today() -> datetime:
    return datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def make_daily_table(
    dsn: str,
    name: str,
    *,
    days: range,
    default_rows_days: range = range(0),
    rows_per_day: int = 100,
    schema: str = "public",
):
    """<schema>.<name>(id, created_at) partitioned by day: partitions for `days` (offsets from today),
    a DEFAULT, and `rows_per_day` rows in the DEFAULT for each day of `default_rows_days`."""
    today = utc_today()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        t = sql.Identifier(schema, name)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(t))
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY, created_at timestamptz NOT NULL,"
                " payload text, PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at)"
            ).format(t)
        )
        for off in days:
            day = today + timedelta(days=off)
            conn.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(schema, f"{name}_p{day:%Y%m%d}"),
                    t,
                    sql.Literal(day),
                    sql.Literal(day + timedelta(days=1)),
                )
            )
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(sql.Identifier(schema, f"{name}_default"), t)
        )
        for off in default_rows_days:
            day = today + timedelta(days=off)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (created_at, payload) SELECT {} + g * interval '1 second', 'row ' || g"
                    " FROM generate_series(1, {}) g"
                ).format(t, sql.Literal(day), sql.Literal(rows_per_day))
            )


def table_entry(name: str, **extra) -> dict:
    return {
        "name": f"public.{name}",
        "partition_key": "created_at",
        "interval": "1 day",
        "premake": 4,
        "retention": "30 days",
        **extra,
    }


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
