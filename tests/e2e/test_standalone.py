"""`scripts/airflow standalone` starts its components as `airflow …` from PATH: the wrapper must
put the venv's `airflow` there (it died with FileNotFoundError: 'airflow' before). Started, the
API server reports every component healthy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from psycopg.conninfo import make_conninfo

from tests.conftest import REPO
from tests.e2e.conftest import drop_database, free_tcp_port, fresh_database, sqlalchemy_url


def test_standalone_starts_its_components_from_the_wrapper(pg_dsn):
    admin = make_conninfo(pg_dsn, dbname="postgres")
    meta_db = f"airflow_standalone_{os.getpid()}"
    meta = fresh_database(admin, meta_db)
    home = Path(tempfile.mkdtemp(prefix="e2e-standalone-", dir=REPO / ".pytest-airflow"))
    port = free_tcp_port()
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if ".venv" not in p)
    env = {
        **os.environ,
        "PATH": path,
        "PGMAINT_AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(meta),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_tcp_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_tcp_port()),
    }
    log = home / "standalone.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(REPO / "scripts" / "airflow"), "standalone"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        started = set()
        while time.monotonic() < deadline and proc.poll() is None:
            text = log.read_text(errors="replace")
            assert "No such file or directory: 'airflow'" not in text, text[-3000:]
            started = {
                name for name in ("scheduler", "dag-processor", "api-server", "triggerer") if f"\n{name:10} | " in text
            }
            if len(started) == 4:
                break
            time.sleep(1)
        assert len(started) == 4, f"components seen: {started}; log ends:\n{log.read_text(errors='replace')[-3000:]}"
        health = {}
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://localhost:{port}/api/v2/monitor/health", timeout=5) as r:
                    health = {k: v.get("status") for k, v in json.loads(r.read()).items() if isinstance(v, dict)}
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if len(health) == 4 and set(health.values()) == {"healthy"}:
                break
            time.sleep(1)
        assert health == dict.fromkeys(("metadatabase", "scheduler", "triggerer", "dag_processor"), "healthy"), (
            f"health: {health}; log ends:\n{log.read_text(errors='replace')[-3000:]}"
        )
    finally:
        try:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal does: the whole group
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        drop_database(admin, meta_db)
        if not os.environ.get("PGMAINT_KEEP_TEST_AIRFLOW_HOME"):
            shutil.rmtree(home, ignore_errors=True)
