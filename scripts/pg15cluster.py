#!/usr/bin/env python3
"""A throwaway PostgreSQL 15 cluster from the system binaries, for benchmarks.

    .venv/bin/python scripts/pg15cluster.py start   # prints the conninfo; the cluster outlives the process
    .venv/bin/python scripts/pg15cluster.py stop PGDATA

Importable::

    with pg15_cluster() as cluster:      # initdb + start; stop + delete at exit
        psycopg.connect(cluster.conninfo)

Why not the embedded pgserver: it ships PostgreSQL 16, and the comparison with
pg_partman 4.7.2 needs the system's PostgreSQL 15 (package
postgresql-15-partman installs the extension for those binaries only).

initdb refuses to run as root, so every server-side command runs as the
`postgres` OS user (`runuser -u postgres --` when we are root). The data
directory is a fresh temporary directory under /tmp owned by that user; the
server listens on a unix socket inside it and on 127.0.0.1:<free port>.
Authentication is `trust` (local, throwaway).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path(os.environ.get("PG15_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"
SUPERUSER = "postgres"

# Benchmark settings: durable commits (fsync, synchronous_commit on: the defaults), room for
# bulk moves without forced checkpoints, and pg_stat_statements for profiling.
BENCH_SETTINGS = {
    "shared_buffers": "512MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "synchronous_commit": "on",
    "fsync": "on",
    "max_connections": "100",
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "log_min_messages": "warning",
    "log_checkpoints": "on",
    "log_lock_waits": "off",
    "timezone": "UTC",
}


class ClusterError(RuntimeError):
    pass


@dataclass(frozen=True)
class Cluster:
    pgdata: Path
    port: int
    user: str = SUPERUSER
    dbname: str = "postgres"

    @property
    def socket_dir(self) -> Path:
        return self.pgdata

    @property
    def conninfo(self) -> str:
        return f"host={self.socket_dir} port={self.port} user={self.user} dbname={self.dbname}"

    @property
    def tcp_conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={self.dbname}"

    def with_db(self, dbname: str) -> str:
        return f"host={self.socket_dir} port={self.port} user={self.user} dbname={dbname}"


def _as_postgres(args: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a server-side binary as the postgres OS user."""
    cmd = [str(a) for a in args]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", OS_USER, "--"] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise ClusterError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binaries_present() -> str | None:
    """None if usable, else the reason."""
    for name in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / name).exists():
            return f"{PG_BIN / name} not found (apt-get install postgresql-15)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            return f"OS user {OS_USER!r} does not exist (it comes with the postgresql-15 package)"
    return None


def server_version() -> str:
    return subprocess.run([str(PG_BIN / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()


def start(settings: dict[str, str] | None = None, *, port: int | None = None, parent_dir: str = "/tmp") -> Cluster:
    """initdb a fresh cluster in a new directory under `parent_dir` and start it."""
    problem = binaries_present()
    if problem:
        raise ClusterError(problem)
    pgdata = Path(tempfile.mkdtemp(prefix="pgmaint-pg15-", dir=parent_dir))
    if os.geteuid() == 0:
        pw = pwd.getpwnam(OS_USER)
        os.chown(pgdata, pw.pw_uid, pw.pw_gid)
    os.chmod(pgdata, 0o700)
    try:
        _as_postgres(
            [
                PG_BIN / "initdb",
                "-D",
                pgdata,
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8" if _has_c_utf8() else "--locale=C",
                "--no-sync",
            ]
        )
        port = port or _free_port()
        conf = {
            **BENCH_SETTINGS,
            **(settings or {}),
            "port": str(port),
            "unix_socket_directories": f"'{pgdata}'",
            "listen_addresses": "'127.0.0.1'",
        }
        with open(pgdata / "postgresql.auto.conf", "a") as f:
            for key, value in conf.items():
                v = value if value.startswith("'") else f"'{value}'"
                f.write(f"{key} = {v}\n")
        _as_postgres([PG_BIN / "pg_ctl", "-D", pgdata, "-l", pgdata / "server.log", "-w", "-t", "60", "start"])
    except Exception:
        shutil.rmtree(pgdata, ignore_errors=True)
        raise
    return Cluster(pgdata, port)


def _has_c_utf8() -> bool:
    out = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout.lower().split()
    return "c.utf8" in out or "c.utf-8" in out


def stop(pgdata: Path | str, *, delete: bool = True) -> None:
    pgdata = Path(pgdata)
    if (pgdata / "postmaster.pid").exists():
        try:
            _as_postgres([PG_BIN / "pg_ctl", "-D", pgdata, "-m", "fast", "-w", "-t", "60", "stop"])
        except ClusterError as exc:
            print(f"pg15cluster: stop failed: {exc}", file=sys.stderr)
    if delete:
        shutil.rmtree(pgdata, ignore_errors=True)


@contextlib.contextmanager
def pg15_cluster(settings: dict[str, str] | None = None, *, keep: bool = False):
    cluster = start(settings)
    try:
        yield cluster
    finally:
        stop(cluster.pgdata, delete=not keep)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("start")
    st = sub.add_parser("stop")
    st.add_argument("pgdata")
    st.add_argument("--keep", action="store_true", help="stop only, keep the data directory")
    args = ap.parse_args()
    if args.cmd == "start":
        c = start()
        print(c.conninfo)
        print(f"# stop with: {sys.executable} {__file__} stop {c.pgdata}", file=sys.stderr)
    else:
        stop(args.pgdata, delete=not args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
