"""`make airflow` (scripts/airflow_local.py, the Makefile's recipe) as a user runs it, as a subprocess.

On a free port, with a temporary AIRFLOW home and two fresh databases (target, metadata) named by
the environment variables the launcher honours: it prints the login and becomes healthy; a second
launch says the first is running and exits 0; Ctrl-C (SIGINT to its process group, as a terminal
sends it) stops every component (no process left in any of their groups, none anywhere with this
AIRFLOW home, state file gone); a restart reuses the password and does not migrate the metadata
DB again (`airflow db migrate` on a migrated DB leaves a `cli_migratedb` row in its `log` table;
the first one, on an empty DB, cannot).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import REPO, _airflow_conn_json
from tests.e2e.conftest import drop_database, free_tcp_port, fresh_database, sqlalchemy_url

LAUNCHER = [str(REPO / ".venv" / "bin" / "python"), str(REPO / "scripts" / "airflow_local.py")]
# the whole ready message, up to its last line (the databases are named between)
LOGIN = re.compile(r"airflow: ready: (\S+)\s+login: admin / (\S+)\n.*?Ctrl-C stops everything", re.S)


def test_the_makefile_recipe_is_the_launcher():
    recipe = subprocess.run(
        ["make", "-s", "-n", "-o", ".venv/.requirements.stamp", "airflow", "PORT=8123"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert recipe.strip().splitlines()[-1] == ".venv/bin/python scripts/airflow_local.py --port 8123", recipe


class Launch:
    def __init__(self, env: dict[str, str], port: int, out: Path):
        self.out = out
        with open(out, "wb") as f:  # own session: SIGINT to its group is what Ctrl-C in its terminal does
            self.proc = subprocess.Popen(
                [*LAUNCHER, "--port", str(port)], env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for(self, pattern: re.Pattern, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = pattern.search(self.text())
            if found:
                return found
            assert self.proc.poll() is None, f"the launcher exited with {self.proc.returncode}:\n{self.text()[-3000:]}"
            time.sleep(1)
        raise AssertionError(f"no {pattern.pattern!r} after {timeout:.0f} s:\n{self.text()[-3000:]}")

    def interrupt(self, timeout: float = 90) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.interrupt(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def processes_with(marker: bytes) -> list[int]:
    """Processes whose environment holds `marker` (this test's AIRFLOW home), whatever their group."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def migrations_logged(meta_dsn: str) -> int:
    with psycopg.connect(meta_dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM log WHERE event = 'cli_migratedb'").fetchone()[0]


def test_make_airflow_starts_reports_itself_running_stops_everything_and_restarts(pg_dsn):
    admin = make_conninfo(pg_dsn, dbname="postgres")
    target_db, meta_db = f"pgmaint_make_airflow_{os.getpid()}", f"airflow_make_airflow_{os.getpid()}"
    target, meta = fresh_database(admin, target_db), fresh_database(admin, meta_db)
    (REPO / ".pytest-airflow").mkdir(exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="e2e-make-airflow-", dir=REPO / ".pytest-airflow"))
    try:
        port = free_tcp_port()
    except OSError as exc:
        pytest.skip(f"e2e: no TCP port on 127.0.0.1 for the Airflow API server: {exc}")
    env = {
        **os.environ,
        "PGMAINT_AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(meta),
        "AIRFLOW_CONN_PGMAINT_TARGET": _airflow_conn_json(target),
    }
    env.pop("PYTHONUNBUFFERED", None)  # the launcher's lines must reach a file as they are printed
    marker = f"PGMAINT_AIRFLOW_HOME={home}".encode()
    launches: list[Launch] = []
    components: dict[str, int] = {}
    try:
        first = Launch(env, port, home / "first.out")
        launches.append(first)
        url, password = first.wait_for(LOGIN, timeout=360).groups()
        assert url == f"http://localhost:{port}"
        assert f"target DB: database '{target_db}' on " in first.text(), first.text()
        assert f"/{meta_db}?" in first.text() and "(AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)" in first.text()
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=10) as r:
            health = json.loads(r.read())
        assert {k: v["status"] for k, v in health.items()} == {
            "metadatabase": "healthy",
            "scheduler": "healthy",
            "triggerer": "healthy",
            "dag_processor": "healthy",
        }, health
        state_file = home / "airflow-local.json"
        state = json.loads(state_file.read_text())
        components = state["components"]
        assert state["pid"] == first.proc.pid and state["port"] == port
        assert set(components) == {"api-server", "scheduler", "dag-processor", "triggerer"}

        second = subprocess.run(
            [*LAUNCHER, "--port", str(free_tcp_port())], env=env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 0, second.stdout + second.stderr
        assert f"airflow: already running (launcher pid {first.proc.pid}): {url}  login: admin / {password}" in (
            second.stdout
        ), second.stdout
        assert first.proc.poll() is None and json.loads(state_file.read_text()) == state  # left alone

        assert first.interrupt() == 0, first.text()[-3000:]
        assert "airflow: stopped" in first.text()
        assert not state_file.exists()
        left = {name: pgid for name, pgid in components.items() if group_alive(pgid)}
        assert not left and not group_alive(first.proc.pid), f"process groups left: {left}"
        assert processes_with(marker) == []

        migrated_at = (home / ".initialised-postgres").stat().st_mtime_ns
        assert migrations_logged(meta) == 0
        again = Launch(env, port, home / "again.out")
        launches.append(again)
        _, password_again = again.wait_for(LOGIN, timeout=360).groups()
        assert password_again == password
        assert migrations_logged(meta) == 0, "the restart migrated the metadata DB again"
        assert (home / ".initialised-postgres").stat().st_mtime_ns == migrated_at
        components = json.loads(state_file.read_text())["components"]
        assert again.interrupt() == 0, again.text()[-3000:]
    finally:
        for launch in launches:
            launch.kill()
        for pgid in components.values():
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        drop_database(admin, target_db)
        drop_database(admin, meta_db)
        if not os.environ.get("PGMAINT_KEEP_TEST_AIRFLOW_HOME"):
            shutil.rmtree(home, ignore_errors=True)
