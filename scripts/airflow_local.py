#!/usr/bin/env python3
"""A whole Airflow on this machine for pgmaint (`make airflow`), and the same for the e2e tests.

    .venv/bin/python scripts/airflow_local.py [--port 8080] [--parallelism 8]

Starts, through scripts/airflow (so with the project's environment: the embedded demo database
as target, the metadata DB in its own database `airflow` of the embedded PostgreSQL, the pool
and connections of airflow_settings.yaml): the API server with the UI, the scheduler
(LocalExecutor, tasks in parallel), the DAG processor and the triggerer. Prints the URL and the
login once the API server reports every component healthy. Ctrl-C (or SIGTERM) stops everything
it started. Run it again and it reuses what is there: the metadata DB, the login, and a running
instance (it then prints where that one is and exits).

Environment: PGMAINT_AIRFLOW_HOME (default .airflow/), PGMAINT_AIRFLOW_PORT (default 8080; --port
wins), AIRFLOW_CONN_PGMAINT_TARGET (target) and AIRFLOW__DATABASE__SQL_ALCHEMY_CONN (metadata DB)
instead of the embedded databases; the ready message names the databases in use.

Importable (tests/e2e): `Deployment(...)` with `start()`, `wait_healthy()`, `stop()`,
`api(method, path, json=...)` (REST API v2 with a JWT from /auth/token). `executor="CeleryExecutor"`
with `celery_workers=N` and `broker_url` adds N `airflow celery worker`s, each its own hostname.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WRAPPER = REPO / "scripts" / "airflow"
ADMIN = "admin"


class DeploymentError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def worker_hostname() -> str:
    """`[core] hostname_callable` for the workers: $PGMAINT_WORKER_HOSTNAME, else the FQDN.

    Several Celery workers on one machine would all report the same host name; each gets its own.
    """
    return os.environ.get("PGMAINT_WORKER_HOSTNAME") or socket.getfqdn()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Deployment:
    home: Path
    port: int = 8080
    executor: str = "LocalExecutor"
    parallelism: int = 8
    celery_workers: int = 0
    worker_concurrency: int = 2
    broker_url: str | None = None
    env_overrides: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    # --- configuration ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs" / "components"

    @property
    def passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json.generated"

    def admin_password(self) -> str:
        """The admin's password for the UI and the API: generated once, kept in AIRFLOW_HOME (mode 0600)."""
        try:
            return json.loads(self.passwords_file.read_text())[ADMIN]
        except (FileNotFoundError, KeyError, ValueError):
            pass
        self.home.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(12)
        fd = os.open(self.passwords_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({ADMIN: password}) + "\n")
        return password

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "PGMAINT_AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__EXECUTOR": self.executor,
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "scripts.airflow_local.worker_hostname",
                # Unpaused by hand (UI, API): a scheduled DAG must not start before its config is right.
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            }
        )
        if self.executor == "CeleryExecutor":
            if not self.broker_url:
                raise DeploymentError("CeleryExecutor needs a broker_url (redis://...)")
            env["AIRFLOW__CELERY__BROKER_URL"] = self.broker_url
            # Results in the metadata DB: no second service to run.
            env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + _metadata_url(env)
            env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] = str(self.worker_concurrency)
        env.update(self.env_overrides)
        return env

    # --- processes ----------------------------------------------------------------------------
    def components(self) -> dict[str, tuple[list[str], dict[str, str]]]:
        """name -> (scripts/airflow arguments, extra environment)."""
        comps: dict[str, tuple[list[str], dict[str, str]]] = {
            "api-server": (["api-server", "--port", str(self.port)], {}),
            # Each serves task logs on its own port (the defaults 8793/8794 may be taken).
            "scheduler": (["scheduler"], {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}),
            "dag-processor": (["dag-processor"], {}),
            "triggerer": (["triggerer"], {"AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port())}),
        }
        for i in range(1, self.celery_workers + 1):
            name = f"worker{i}"
            comps[name] = (
                ["celery", "worker", "--celery-hostname", f"{name}@%h", "--concurrency", str(self.worker_concurrency)],
                {
                    "PGMAINT_WORKER_HOSTNAME": name,
                    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                    # no shared local disk between tasks: each worker has its own scratch space
                    "TMPDIR": str(self._scratch(name)),
                },
            )
        return comps

    def _scratch(self, name: str) -> Path:
        path = self.home / "scratch" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def prepare(self) -> None:
        """Migrate the metadata DB and import the pools once, before the components start together."""
        self.admin_password()
        out = subprocess.run([str(WRAPPER), "--prepare"], env=self.env(), capture_output=True, text=True)
        if out.returncode != 0:
            raise DeploymentError(f"scripts/airflow --prepare failed:\n{out.stdout}{out.stderr}")

    def start(self) -> None:
        self.prepare()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        base = self.env()
        for name, (args, extra) in self.components().items():
            log = open(self.log_dir / f"{name}.log", "ab")
            # Own session: Ctrl-C reaches only this launcher, which then stops each component in turn.
            self.procs[name] = subprocess.Popen(
                [str(WRAPPER), *args],
                env={**base, **extra},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=REPO,
            )
            log.close()
        self._write_state()

    def dead(self) -> dict[str, int]:
        return {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}

    def log_tail(self, name: str, lines: int = 40) -> str:
        text = self._log_text(name)
        return "(no log)" if text is None else "\n".join(text.splitlines()[-lines:])

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.base_url}/api/v2/monitor/health", timeout=5) as r:
            return json.loads(r.read())

    def workers_not_ready(self) -> list[str]:
        """The Celery workers that have not yet said "<name>@<host> ready." (they consume tasks only after)."""
        return [
            f"worker{i}"
            for i in range(1, self.celery_workers + 1)
            if not re.search(rf"worker{i}@\S+ ready\.", self._log_text(f"worker{i}") or "")
        ]

    def _log_text(self, name: str) -> str | None:
        try:
            return (self.log_dir / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return None

    def wait_healthy(self, timeout: float = 240) -> None:
        """Until the API server reports the metadata DB, scheduler, DAG processor and triggerer healthy, and
        every Celery worker is consuming (the health endpoint does not cover workers)."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            dead = self.dead()
            if dead:
                name, code = next(iter(dead.items()))
                raise DeploymentError(f"{name} exited with {code}; its log ends:\n{self.log_tail(name)}")
            try:
                h = self.health()
                bad = [k for k, v in h.items() if isinstance(v, dict) and v.get("status") != "healthy"]
                bad += self.workers_not_ready()
                if not bad:
                    return
                last = f"not yet healthy: {', '.join(bad)}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(1)
        raise DeploymentError(f"Airflow not healthy after {timeout:.0f} s ({last}); logs in {self.log_dir}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to each component's process group, SIGKILL to what is left after `timeout`."""
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs.values():
            try:  # the group too: task processes the component left behind
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        self._state_file().unlink(missing_ok=True)

    # --- a running instance -------------------------------------------------------------------
    def _state_file(self) -> Path:
        return self.home / "airflow-local.json"

    def _write_state(self) -> None:
        self._state_file().write_text(
            json.dumps({"pid": os.getpid(), "port": self.port, "components": {n: p.pid for n, p in self.procs.items()}})
        )

    def running_instance(self) -> dict | None:
        """The state of another launcher still running on this AIRFLOW_HOME, else None."""
        try:
            state = json.loads(self._state_file().read_text())
        except (FileNotFoundError, ValueError):
            return None
        return state if pid_alive(int(state.get("pid", 0))) and state["pid"] != os.getpid() else None

    def leftovers(self) -> list[int]:
        """Component process groups of a launcher that died without stopping them."""
        try:
            state = json.loads(self._state_file().read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [pid for pid in state.get("components", {}).values() if pid_alive(pid)]

    # --- REST API -----------------------------------------------------------------------------
    _token: str | None = None

    def token(self) -> str:
        if self._token is None:
            status, body = self._request("POST", "/auth/token", {"username": ADMIN, "password": self.admin_password()})
            if status not in (200, 201):
                raise DeploymentError(f"POST /auth/token: {status} {body}")
            self._token = body["access_token"]
        return self._token

    def api(self, method: str, path: str, json_body=None) -> tuple[int, dict]:
        return self._request(method, path, json_body, {"Authorization": f"Bearer {self.token()}"})

    def _request(self, method: str, path: str, json_body=None, headers=None) -> tuple[int, dict]:
        data = json.dumps(json_body).encode() if json_body is not None else None
        req = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, {"detail": raw.decode(errors="replace")}


def _metadata_url(env: dict[str, str]) -> str:
    """The metadata DB URL scripts/airflow will use (asks it: it may start the embedded PostgreSQL)."""
    if env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        return env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    out = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "python"),
            str(REPO / "scripts" / "devdb.py"),
            "env",
            "--start",
            "--metadata-db",
            "airflow",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in out.stdout.splitlines():
        if line.startswith("export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="):
            import shlex

            return shlex.split(line.split("=", 1)[1])[0]
    raise DeploymentError("devdb.py did not report a metadata DB URL")


STARTUP_TIMEOUT = 300  # seconds for every component to report healthy


def not_healthy(d: Deployment, last: str) -> str:
    """Why a launch gave up: the components that exited (with the end of their logs), else the timeout."""
    dead = d.dead()
    if dead:
        return "not healthy: " + "; ".join(f"{n} exited with {c}:\n{d.log_tail(n)}" for n, c in dead.items())
    return f"not healthy after {STARTUP_TIMEOUT} s ({last}); logs in {d.log_dir}"


def _where(raw: str) -> str:
    """'database X on host:port as user' of an Airflow connection in JSON or URI form; never the password."""
    from airflow.sdk import Connection  # Airflow's own reading of AIRFLOW_CONN_* values, both forms

    parse = Connection.from_json if raw.lstrip().startswith("{") else Connection.from_uri
    c = parse(raw, conn_id="pgmaint_target")
    return (
        f"database {c.schema or '(default)'!r} on {c.host or 'localhost'}:{c.port or 5432} "
        f"as {c.login or '(default user)'}"
    )


def databases(env: dict[str, str]) -> str:
    """The target and metadata databases this launch uses, as printed once it is ready (no password)."""
    raw = env.get("AIRFLOW_CONN_PGMAINT_TARGET")
    target = f"{_where(raw)} (AIRFLOW_CONN_PGMAINT_TARGET)" if raw else "the embedded demo database (pgmaint_demo)"
    url = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    if url:
        from sqlalchemy.engine import make_url

        metadata = make_url(url).render_as_string(hide_password=True) + " (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)"
    else:
        metadata = "database 'airflow' of the embedded PostgreSQL"
    return f"target DB: {target}; metadata DB: {metadata}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="airflow_local.py", description="Run a whole Airflow on this machine for pgmaint."
    )
    ap.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PGMAINT_AIRFLOW_PORT", 8080)),
        help="API server and UI port (default: %(default)s)",
    )
    ap.add_argument("--parallelism", type=int, default=8, help="task instances running at once (default: %(default)s)")
    args = ap.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # each line as it is printed, also into a pipe or a file

    home = Path(os.environ.get("PGMAINT_AIRFLOW_HOME") or REPO / ".airflow").resolve()
    d = Deployment(home=home, port=args.port, parallelism=args.parallelism)
    other = d.running_instance()
    if other:
        d.port = other["port"]
        print(
            f"airflow: already running (launcher pid {other['pid']}): {d.base_url}  "
            f"login: {ADMIN} / {d.admin_password()}  (stop it with Ctrl-C in its terminal)"
        )
        return 0
    for pgid in d.leftovers():  # a launcher killed with SIGKILL left its components running
        print(f"airflow: stopping components left by a previous run (process group {pgid})")
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if port_in_use(args.port):
        print(
            f"airflow: port {args.port} is in use by another program; choose another: "
            f"make airflow PORT=8081 (or --port)",
            file=sys.stderr,
        )
        return 1

    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(
        f"airflow: starting api-server, scheduler (LocalExecutor, parallelism {args.parallelism}), dag-processor, "
        f"triggerer; logs in {d.log_dir}"
    )
    try:
        d.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last = "no answer yet"
        while not stopping:
            try:
                h = d.health()
                bad = [k for k, v in h.items() if isinstance(v, dict) and v.get("status") != "healthy"]
                if not bad:
                    break
                last = f"not yet healthy: {', '.join(bad)}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if d.dead() or time.monotonic() > deadline:
                raise DeploymentError(not_healthy(d, last))
            time.sleep(1)
        if not stopping:
            # One write: a reader of the output never sees the login without the lines after it.
            print(
                f"\nairflow: ready: {d.base_url}   login: {ADMIN} / {d.admin_password()}\n"
                f"         {databases(dict(os.environ))}\n"
                "         DAGs are paused until you unpause them; Ctrl-C stops everything\n"
            )
        while not stopping:
            dead = d.dead()
            if dead:
                for name, code in dead.items():
                    print(f"airflow: {name} exited with {code}; its log ends:\n{d.log_tail(name)}", file=sys.stderr)
                return 1
            time.sleep(1)
        return 0
    except DeploymentError as exc:
        print(f"airflow: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if d.procs:
            print("airflow: stopping " + ", ".join(d.procs))
            d.stop()
            print("airflow: stopped")


if __name__ == "__main__":
    sys.exit(main())
