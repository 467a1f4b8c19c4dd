"""Fixtures for the least-privilege and secrets tests.

* ``least_privilege`` -> Setup: in a scratch schema, a daily-partitioned table owned by a NOLOGIN
  owner role, in the incident's broken state (expired partitions attached, none ahead, rows in the
  DEFAULT); the pgmaint role made by include/sql/roles/pgmaint_role.sql run with psql (as
  docs/security.md says); an application role with only USAGE on the state schema. All roles are
  dropped afterwards.
* the loopback notifier servers of tests/watchdog and the HTTP service of tests/services.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.integration.helpers import make_table
from tests.services.conftest import http_service  # noqa: F401  (fixture)
from tests.watchdog.conftest import mailbox, notify_connections, webhooks  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]
ROLE_SCRIPT = REPO / "include" / "sql" / "roles" / "pgmaint_role.sql"


def psql_binary() -> str:
    import pgserver

    bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"
    return str(bundled) if bundled.exists() else (shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql")


def run_role_script(admin_dsn: str, **variables: str) -> subprocess.CompletedProcess:
    args = [psql_binary(), admin_dsn, "-X", "-q", "-f", str(ROLE_SCRIPT)]
    for name, value in variables.items():
        args += ["-v", f"{name}={value}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env={**os.environ, "PGOPTIONS": ""})


def ident(*names: str) -> str:
    return sql.Identifier(*names).as_string(None)


@dataclass
class Setup:
    admin_dsn: str
    schema: str
    table: str  # schema-qualified, as in the config
    owner: str
    role: str
    app: str
    state: str

    def dsn(self, role: str | None = None, **extra) -> str:
        return make_conninfo(self.admin_dsn, user=role or self.role, **extra)

    def admin(self, statement: str, params=None) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(statement, params)


def today() -> datetime:
    return datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


@pytest.fixture
def least_privilege(pg_dsn, scratch_schema) -> Setup:
    s = scratch_schema
    setup = Setup(pg_dsn, s, f"{s}.req", f"{s}_owner", f"{s}_pgmaint", f"{s}_app", f"{s}_state")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(setup.owner)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(setup.app)))
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(sql.Identifier(s), sql.Identifier(setup.owner)))
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(setup.owner)))
        # maintenance stopped two days ago: partitions up to yesterday, expired ones still attached
        make_table(conn, s, "req", days=range(-40, -1), anchor=today())
        conn.execute(sql.SQL("INSERT INTO {} (ts, payload) SELECT now() - g * interval '10 minutes', 'late row' "
                             "FROM generate_series(0, 29) g").format(sql.Identifier(s, "req")))
        conn.execute(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(sql.Identifier(s, "req"), sql.Identifier(setup.app)))
        conn.execute("RESET ROLE")
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(s), sql.Identifier(setup.app)))
        # The owner created its tables; it keeps USAGE only (else pgmaint would get CREATE through membership,
        # and the script's own GRANT CREATE could not be shown to matter).
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(sql.Identifier(s), sql.Identifier(setup.owner)))
    out = run_role_script(pg_dsn, owner=setup.owner, table_schema=s, role=setup.role, state_schema=setup.state)
    assert out.returncode == 0, out.stderr
    try:
        yield setup
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(setup.state)))
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(s)))
            for role in (setup.role, setup.app, setup.owner):
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
