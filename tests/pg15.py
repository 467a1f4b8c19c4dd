"""A throwaway PostgreSQL 15 cluster with pg_partman (and pg_cron when installed), for tests and benchmarks.

The embedded test server (pgserver, PostgreSQL 16) has no extensions; the
machine's PostgreSQL 15 (``/usr/lib/postgresql/15/bin``, override with
``$PGMAINT_PG15_BIN``) gets pg_partman 4.7 from ``apt-get install
postgresql-15-partman`` and pg_cron from ``postgresql-15-cron`` (.ci/run
installs both when apt is available).

Usage::

    from tests import pg15
    server = pg15.start()                 # raises pg15.Unavailable(reason) if the binaries are missing
    conn_str = server.conninfo()          # database `pgmaint` (override with start(dbname=...))
    server.has_partman, server.has_cron   # extensions created in that database
    server.stop()                         # stops the cluster and deletes its directory

or as a context manager: ``with pg15.start() as server: ...``.

Details: the cluster lives in ``/tmp/pgmaint-pg15-XXXX/`` (data in ``data/``, unix socket in the
directory itself, no TCP, log in ``server.log``). As root, initdb and postgres run as the
``postgres`` system user through ``runuser`` (initdb refuses root). ``fsync=off``: test data only.
pg_partman: ``CREATE SCHEMA partman; CREATE EXTENSION pg_partman SCHEMA partman``. pg_cron:
``shared_preload_libraries = 'pg_cron'`` and ``cron.database_name`` = the test database, so
``CREATE EXTENSION pg_cron`` works there (its scheduler is live: give test jobs harmless
commands). Superuser ``postgres``, trust authentication.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

BIN = Path(os.environ.get("PGMAINT_PG15_BIN", "/usr/lib/postgresql/15/bin"))
EXT_DIR = Path("/usr/share/postgresql/15/extension")
LIB_DIR = Path("/usr/lib/postgresql/15/lib")
SUPERUSER = "postgres"


class Unavailable(RuntimeError):
    """PostgreSQL 15 cannot be started here; str() is the reason (tests skip with it)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", SUPERUSER, "--", *cmd]


@dataclass
class Server:
    root: Path
    port: int
    dbname: str
    has_partman: bool = False
    has_cron: bool = False

    @property
    def data(self) -> Path:
        return self.root / "data"

    def conninfo(self, dbname: str | None = None) -> str:
        return f"host={self.root} port={self.port} user={SUPERUSER} dbname={dbname or self.dbname}"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def partman_available() -> bool:
    return (EXT_DIR / "pg_partman.control").exists()


def cron_available() -> bool:
    return (EXT_DIR / "pg_cron.control").exists() and (LIB_DIR / "pg_cron.so").exists()


def start(dbname: str = "pgmaint", *, partman: bool = True, cron: bool = True) -> Server:
    """Start a fresh cluster and create `dbname` with the extensions that are installed."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (BIN / tool).exists():
            raise Unavailable(f"PostgreSQL 15 binaries not found ({BIN / tool} missing; apt-get install postgresql-15)")
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam(SUPERUSER)
        except KeyError:
            raise Unavailable(f"running as root and there is no {SUPERUSER!r} system user to run initdb as") from None
    cron = cron and cron_available()
    root = Path(tempfile.mkdtemp(prefix="pgmaint-pg15-", dir="/tmp"))
    if os.geteuid() == 0:
        os.chown(root, pw.pw_uid, pw.pw_gid)
    server = Server(root=root, port=_free_port(), dbname=dbname)
    try:
        out = subprocess.run(
            _as_postgres(
                [
                    str(BIN / "initdb"),
                    "-D",
                    str(server.data),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise Unavailable(f"initdb failed: {out.stderr.strip()[-500:]}")
        settings = [
            "listen_addresses = ''",
            f"unix_socket_directories = '{root}'",
            f"port = {server.port}",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "max_connections = 60",
            "shared_buffers = '128MB'",
        ]
        if cron:
            settings += ["shared_preload_libraries = 'pg_cron'", f"cron.database_name = '{dbname}'"]
        with open(server.data / "postgresql.conf", "a") as f:
            f.write("\n# pgmaint tests\n" + "\n".join(settings) + "\n")
        out = subprocess.run(
            _as_postgres(
                [str(BIN / "pg_ctl"), "-D", str(server.data), "-l", str(root / "server.log"), "-w", "-t", "60", "start"]
            ),
            capture_output=True,
            text=True,
            timeout=90,
        )
        if out.returncode != 0:
            log = (root / "server.log").read_text()[-1000:] if (root / "server.log").exists() else ""
            raise Unavailable(f"pg_ctl start failed: {out.stderr.strip()[-500:]} {log}")
        with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            if partman and partman_available():
                conn.execute("CREATE SCHEMA partman")
                conn.execute("CREATE EXTENSION pg_partman SCHEMA partman")
                server.has_partman = True
            if cron:
                conn.execute("CREATE EXTENSION pg_cron")
                server.has_cron = True
    except BaseException:
        server.stop()
        raise
    return server
