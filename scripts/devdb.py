#!/usr/bin/env python3
"""Embedded PostgreSQL for pgmaint's demo, development and tests.

Uses the ``pgserver`` wheel (PostgreSQL 16 binaries).  The server listens on a
unix socket only (no TCP); when run as root, pgserver runs postgres as the
system user ``pgserver``, which it creates on first use.

Command line (from the repository root)::

    .venv/bin/python scripts/devdb.py start    # start if needed, create pgmaint_demo, print conninfo
    .venv/bin/python scripts/devdb.py status   # exit 0 if running (prints conninfo), 3 if not
    .venv/bin/python scripts/devdb.py env      # print `export PGMAINT_DEV_*=...` lines
    .venv/bin/python scripts/devdb.py env --start   # start quietly first (used by scripts/airflow)
    .venv/bin/python scripts/devdb.py env --start --metadata-db airflow
        # also create the database `airflow` if missing and print AIRFLOW__DATABASE__SQL_ALCHEMY_CONN
        # for it (plus PGMAINT_METADATA_DB_CREATED=1 when it was just created)
    .venv/bin/python scripts/devdb.py stop

The dev cluster lives in ``$REPO/.pgmaint/pgdata`` (override with ``PGMAINT_DEV_PGDATA``)
and outlives the process that started it (``cleanup_mode=None``).

Importable API (used by tests/conftest.py)::

    info = start_server(pgdata, cleanup_mode="delete")  # -> ServerInfo
    ensure_database(info.conninfo(), "mydb")
    stop_server(pgdata)
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PGDATA = Path(os.environ.get("PGMAINT_DEV_PGDATA") or REPO / ".pgmaint" / "pgdata")
DEMO_DB = "pgmaint_demo"
SUPERUSER = "postgres"
# AF_UNIX paths are limited to 107 bytes on Linux; keep a margin.
MAX_SOCKET_PATH = 100

# pgserver keeps handles/servers per process; keep ours alive so atexit hooks
# and cleanup() work on the same object.
_servers: dict[Path, object] = {}


class DevDBError(RuntimeError):
    pass


@dataclass(frozen=True)
class ServerInfo:
    pgdata: Path
    socket_dir: Path
    port: int
    pid: int
    user: str = SUPERUSER

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / f".s.PGSQL.{self.port}"

    def conninfo(self, dbname: str = "postgres") -> str:
        """libpq keyword/value conninfo for ``dbname``."""
        return f"host={_q(str(self.socket_dir))} port={self.port} user={_q(self.user)} dbname={_q(dbname)}"

    def sqlalchemy_url(self, dbname: str) -> str:
        """SQLAlchemy URL (psycopg2; Airflow derives its asyncpg URL from it) over the unix socket."""
        from urllib.parse import quote

        return (
            f"postgresql+psycopg2://{quote(self.user, safe='')}@/{quote(dbname, safe='')}"
            f"?host={quote(str(self.socket_dir), safe='/')}&port={self.port}"
        )

    def env(self, dbname: str = DEMO_DB) -> dict[str, str]:
        return {
            "PGMAINT_DEV_HOST": str(self.socket_dir),
            "PGMAINT_DEV_PORT": str(self.port),
            "PGMAINT_DEV_USER": self.user,
            "PGMAINT_DEV_DB": dbname,
        }


def _q(value: str) -> str:
    """Quote a value for a libpq keyword/value conninfo when needed."""
    if value and not any(c in value for c in " '\\\t\n"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _import_pgserver():
    """Import pgserver lazily (only needed to start/stop), without its noise.

    platformdirs warns "XDG_RUNTIME_DIR is not set, falling back to /tmp/runtime-0"
    at import time when run as root outside a login session.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver


def _read_postmaster_pid(pgdata: Path) -> ServerInfo | None:
    """ServerInfo of a *running, ready* server in ``pgdata``, else None.

    Reads postmaster.pid directly, so the fast path needs neither pgserver nor
    psycopg (scripts/airflow calls this on every invocation).
    """
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    if len(lines) < 8:
        return None
    try:
        pid = int(lines[0])
        port = int(lines[3])
    except ValueError:
        return None
    socket_dir = lines[4].strip()
    status = lines[7].strip()
    if not socket_dir or status != "ready":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # exists, owned by another user (pgserver)
    info = ServerInfo(pgdata=pgdata, socket_dir=Path(socket_dir), port=port, pid=pid)
    # A stale postmaster.pid (e.g. after a reboot) may name a reused pid.
    if not info.socket_path.is_socket():
        return None
    try:
        if b"postgres" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
    except OSError:
        pass  # no /proc: trust the pid
    return info


def _check_socket_path(info: ServerInfo) -> None:
    n = len(str(info.socket_path))
    if n >= MAX_SOCKET_PATH:
        raise DevDBError(
            f"unix socket path {info.socket_path} is {n} characters long "
            f"(limit {MAX_SOCKET_PATH}); use a shorter pgdata path (PGMAINT_DEV_PGDATA)"
        )


def status(pgdata: Path | str = DEFAULT_PGDATA) -> ServerInfo | None:
    """ServerInfo if a server is running and ready in ``pgdata``, else None."""
    return _read_postmaster_pid(Path(pgdata).resolve())


def start_server(pgdata: Path | str = DEFAULT_PGDATA, cleanup_mode: str | None = None) -> ServerInfo:
    """Start (or attach to) the pgserver cluster in ``pgdata``; init it if new.

    ``cleanup_mode``: None keeps the server running after this process exits;
    "stop"/"delete" stop it (and delete pgdata) when this process exits or
    ``stop_server`` is called.
    """
    pgdata = Path(pgdata).resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    pgserver = _import_pgserver()

    try:
        server = pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)
    except Exception as exc:  # pgserver logs the server log on failure
        log = pgdata / "log"
        tail = log.read_text()[-2000:] if log.exists() else "(no log)"
        raise DevDBError(f"could not start embedded PostgreSQL in {pgdata}: {exc}\n{tail}") from exc
    _servers[pgdata] = server
    pm = server.get_postmaster_info()
    info = ServerInfo(pgdata=pgdata, socket_dir=Path(pm.socket_dir), port=int(pm.port), pid=int(pm.pid))
    _check_socket_path(info)
    return info


def ensure_database(conninfo: str, dbname: str) -> bool:
    """Create ``dbname`` through the server of ``conninfo`` if missing. True if created."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return True


def stop_server(pgdata: Path | str = DEFAULT_PGDATA, delete: bool = False) -> bool:
    """Stop the server in ``pgdata`` (fast shutdown). True if one was running."""
    pgdata = Path(pgdata).resolve()
    server = _servers.pop(pgdata, None)
    was_running = status(pgdata) is not None
    if was_running:
        pgserver = _import_pgserver()
        user = "pgserver" if os.geteuid() == 0 else None
        pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    if server is not None:
        # Drop pgserver's per-process handle (its atexit hook becomes a no-op).
        import atexit

        server.cleanup_mode = None  # type: ignore[attr-defined]
        server.cleanup()  # type: ignore[attr-defined]
        atexit.unregister(server._cleanup)  # type: ignore[attr-defined]
    if delete and pgdata.exists():
        import shutil

        shutil.rmtree(pgdata)
    return was_running


def _export_lines(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="devdb.py", description="pgmaint's embedded dev PostgreSQL")
    ap.add_argument("--pgdata", type=Path, default=DEFAULT_PGDATA, help="data directory (default: %(default)s)")
    ap.add_argument("--db", default=DEMO_DB, help="database to create/report (default: %(default)s)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_start = sub.add_parser("start", help="start if needed, create the database, print its conninfo")
    p_start.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    sub.add_parser("stop", help="stop the server")
    sub.add_parser("status", help="print conninfo if running (exit 0), else exit 3")
    p_env = sub.add_parser("env", help="print shell export lines for PGMAINT_DEV_*")
    p_env.add_argument("--start", action="store_true", help="start the server (quietly) if it is not running")
    p_env.add_argument(
        "--metadata-db",
        metavar="NAME",
        help="also create database NAME if missing and export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN for it",
    )
    args = ap.parse_args(argv)

    try:
        if args.cmd in ("start", "env"):
            info = status(args.pgdata)
            if info is None and (args.cmd == "start" or args.start):
                info = start_server(args.pgdata, cleanup_mode=None)
                ensure_database(info.conninfo(), args.db)
            elif info is not None and args.cmd == "start":
                ensure_database(info.conninfo(), args.db)
            if info is None:
                print(f"devdb: no server running in {args.pgdata} (run: make devdb)", file=sys.stderr)
                return 3
            if args.cmd == "env":
                env = info.env(args.db)
                if args.metadata_db:
                    if ensure_database(info.conninfo(), args.metadata_db):
                        env["PGMAINT_METADATA_DB_CREATED"] = "1"
                    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = info.sqlalchemy_url(args.metadata_db)
                sys.stdout.write(_export_lines(env))
            elif not args.quiet:
                print(info.conninfo(args.db))
            return 0
        if args.cmd == "status":
            info = status(args.pgdata)
            if info is None:
                print(f"devdb: not running ({args.pgdata})")
                return 3
            print(f"devdb: running, pid {info.pid}: {info.conninfo(args.db)}")
            return 0
        if args.cmd == "stop":
            if stop_server(args.pgdata):
                print(f"devdb: stopped ({args.pgdata})")
            else:
                print(f"devdb: not running ({args.pgdata})")
            return 0
    except DevDBError as exc:
        print(f"devdb: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
