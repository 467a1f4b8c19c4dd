"""Fixtures for the service adapters and leases.

* ``pg15_server`` (session): a throwaway PostgreSQL 15 cluster with pg_partman and pg_cron
  (tests/pg15.py). Skipped, with the reason printed, when the binaries are missing.
* ``partman_conn`` / ``cron_conn`` (function): pgmaint-style connection (db.connect: autocommit,
  timeouts) to that cluster; skipped when the extension is not installed.
* ``pg15_state_schema`` (function): a fresh state schema name in the PG15 database, dropped after.
* ``target`` (function): pgmaint-style connection to ``pg_dsn`` (embedded PG16 or $PGMAINT_TEST_DSN).
* ``make_config(state_schema, services, tables=None)``: a parsed Config; by default one table
  ``public.t`` whose writers are all the services.
* ``http_service`` (function): a real HTTP server on loopback (see ``Recorder``).
* ``airflow_api`` (module): a real ``airflow api-server`` on loopback (see ``ApiServer``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from include.pgmaint.config import parse_config
from include.pgmaint.db import connect
from tests import pg15
from tests.support import announce, loopback_http


@pytest.fixture(scope="session")
def pg15_server(request):
    try:
        server = pg15.start()
    except pg15.Unavailable as exc:
        reason = f"PostgreSQL 15 with pg_partman/pg_cron unavailable: {exc}"
        announce(request.config, f"pgmaint service tests: SKIPPING pg_partman/pg_cron tests: {reason}")
        pytest.skip(reason)
    missing = [name for name, ok in (("pg_partman (apt-get install postgresql-15-partman)", server.has_partman),
                                     ("pg_cron (apt-get install postgresql-15-cron)", server.has_cron)) if not ok]
    announce(request.config, f"pgmaint service tests: PostgreSQL 15 at {server.conninfo()}"
         + (f"; not installed, those tests skip: {', '.join(missing)}" if missing else "; pg_partman and pg_cron installed"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def partman_conn(pg15_server):
    if not pg15_server.has_partman:
        pytest.skip("pg_partman is not installed for PostgreSQL 15 (apt-get install postgresql-15-partman)")
    with connect(pg15_server.conninfo()) as conn:
        yield conn


@pytest.fixture
def cron_conn(pg15_server):
    if not pg15_server.has_cron:
        pytest.skip("pg_cron is not installed for PostgreSQL 15 (apt-get install postgresql-15-cron)")
    with connect(pg15_server.conninfo()) as conn:
        yield conn


@pytest.fixture
def pg15_state_schema(pg15_server):
    name = f"s_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(pg15_server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def target(pg_dsn):
    with connect(pg_dsn) as conn:
        yield conn


def build_config(state_schema: str, services: list[dict], tables: list[dict] | None = None, **top):
    if tables is None:
        tables = [{"name": "public.t", "partition_key": "ts", "interval": "1 day", "premake": 2,
                   "writers": [s["name"] for s in services]}]
    return parse_config({"state_schema": state_schema, "tables": tables, "services": services, **top})


@pytest.fixture
def make_config() -> Callable[..., Any]:
    return build_config


# --- a real HTTP server ----------------------------------------------------------------


@dataclass
class Recorder:
    """What the HTTP server saw, and how it answers.

    ``plan[path]`` is a list of answers used in turn (the last one repeats): an int status,
    ``"hang"`` (sleep ``hang_seconds`` before answering 200), or ``(status, json_body)``.
    Unplanned paths answer 200 ``{"ok": true}``.
    """

    calls: list[dict] = field(default_factory=list)
    plan: dict[str, list] = field(default_factory=dict)
    hang_seconds: float = 5.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    base_url: str = ""

    def answer(self, path: str):
        with self.lock:
            answers = self.plan.get(path)
            if not answers:
                return 200, {"ok": True}
            return answers.pop(0) if len(answers) > 1 else answers[0]

    def paths(self) -> list[str]:
        return [f"{c['method']} {c['path']}" for c in self.calls]


@pytest.fixture
def http_service():
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with recorder.lock:
                recorder.calls.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                       "body": json.loads(body) if body else None, "at": time.monotonic()})
            answer = recorder.answer(self.path)
            if answer == "hang":
                time.sleep(recorder.hang_seconds)
                answer = 200
            status, payload = answer if isinstance(answer, tuple) else (answer, {"ok": answer < 400})
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                pass

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def log_message(self, *args):  # quiet
            pass

    with loopback_http(Handler) as recorder.base_url:
        yield recorder


# --- a real Airflow API server ---------------------------------------------------------


@dataclass
class ApiServer:
    base_url: str
    login: str
    password: str
    log_path: Path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def airflow_api(airflow_db, tmp_path_factory):
    """`airflow api-server` on loopback (SimpleAuthManager, user admin with a known password) over the
    session's metadata DB, with the DAGs of dags/ serialized. Stopped after the module."""
    import httpx

    home = Path(os.environ["AIRFLOW_HOME"])
    work = tmp_path_factory.mktemp("airflow-api")
    password = uuid.uuid4().hex
    (work / "passwords.json").write_text(json.dumps({"admin": password}))
    env = {
        **os.environ,
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(work / "passwords.json"),
        "PYTHONWARNINGS": "ignore",
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    out = subprocess.run([airflow, "dags", "reserialize"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    port = _free_port()
    log_path = work / "api-server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([airflow, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=home)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"airflow api-server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base_url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"airflow api-server not healthy after 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield ApiServer(base_url, "admin", password, log_path)
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group we started (api-server and its workers), SIGKILL after 30 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
