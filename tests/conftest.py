"""Root conftest for pgmaint: Airflow test environment and PostgreSQL fixtures.

Fixtures (names are a contract; tests use them as-is):

* ``pg_dsn`` (session) -> str: libpq conninfo of a fresh, empty database. With
  ``$PGMAINT_TEST_DSN`` set (any PostgreSQL >= 14; conninfo or URI of a role that may
  CREATE DATABASE) the database ``pgmaint_test_<pid>`` is created there and dropped at
  the end; otherwise an embedded pgserver (PostgreSQL 16) is started in a temporary
  pgdata under /tmp and deleted at the end.
* ``pg_conn`` (function) -> psycopg.Connection (autocommit=True) to ``pg_dsn``.
* ``scratch_schema`` (function) -> str: name of a new schema ``t_<hex8>``, dropped
  CASCADE afterwards.
* ``airflow_db`` (session) -> None: the session's SQLite metadata DB is migrated, the
  pools of airflow_settings.yaml exist, and ``AIRFLOW_CONN_PGMAINT_TARGET`` points at
  ``pg_dsn``; tests depending on it may call ``dag.test()`` (only for DAGs whose files are
  in $REPO/dags: dag.test() needs the DAG serialized from the dags-folder bundle), and may
  run ``scripts/airflow`` with ``PGMAINT_AIRFLOW_HOME=$AIRFLOW_HOME`` (no re-migration).

Tests that use ``pg_dsn`` (directly or through another fixture) get the ``pg`` marker
automatically, so ``pytest -m 'not pg'`` runs the rest.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# --- Environment: must happen before anything imports airflow (config is read at import).
REPO = Path(__file__).resolve().parent.parent
_HOMES = REPO / ".pytest-airflow"


def _make_airflow_home() -> Path:
    """A per-session AIRFLOW_HOME; removes those left by sessions that are gone."""
    import shutil

    if str(REPO / "scripts") not in sys.path:
        sys.path.append(str(REPO / "scripts"))
    from airflow_local import pid_alive  # stdlib only: imports no Airflow

    _HOMES.mkdir(exist_ok=True)
    for old in _HOMES.glob("home-*-*"):
        try:
            pid = int(old.name.split("-")[1])
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"home-{os.getpid()}-", dir=_HOMES))


if "airflow" in sys.modules:  # pragma: no cover - would make the settings below useless
    raise RuntimeError("tests/conftest.py: airflow was imported before the test environment was set up")

AIRFLOW_HOME = _make_airflow_home()
os.environ["AIRFLOW_HOME"] = str(AIRFLOW_HOME)
# Never touch a metadata DB configured in the developer's shell.
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("PGMAINT_CONFIG", str(REPO / "include" / "config" / "pgmaint.yaml"))
# Subprocesses (airflow CLI, scripts) see the project too.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
_SCRIPTS = str(REPO / "scripts")
if _SCRIPTS not in sys.path:
    sys.path.append(_SCRIPTS)  # devdb, airflow_settings

import json  # noqa: E402
import uuid  # noqa: E402

import devdb  # noqa: E402  (scripts/devdb.py)
import psycopg  # noqa: E402
import pytest  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

from tests.support import announce  # noqa: E402

MIN_SERVER_VERSION = 140000


def pytest_unconfigure(config):
    if os.environ.get("PGMAINT_KEEP_TEST_AIRFLOW_HOME"):
        return
    import shutil

    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselection
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "pg_dsn" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pg)


def _announce(config, message: str) -> None:
    announce(config, message)


def _redact(conninfo: str) -> str:
    params = conninfo_to_dict(conninfo)
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**params)


def _create_database(admin_conninfo: str, dbname: str) -> None:
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        version = conn.info.server_version
        if version < MIN_SERVER_VERSION:
            raise pytest.UsageError(f"PGMAINT_TEST_DSN: PostgreSQL {version} is too old; pgmaint needs >= 14")
        ident = sql.Identifier(dbname)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))


def _drop_database(admin_conninfo: str, dbname: str) -> None:
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


@pytest.fixture(autouse=True)
def _not_across_midnight():
    """Tests build data around the real today and the database reads now(): a test that began in the
    last seconds of a UTC day would see two days. Such a test waits for the new day first."""
    from tests.wall_clock import clear_of_midnight

    clear_of_midnight()


@pytest.fixture(scope="session")
def pg_dsn(request) -> str:
    """libpq conninfo of a fresh database for this test session (see module docstring)."""
    dbname = f"pgmaint_test_{os.getpid()}"
    external = os.environ.get("PGMAINT_TEST_DSN")
    if external:
        _create_database(external, dbname)
        dsn = make_conninfo(external, dbname=dbname)
        _announce(request.config, f"pgmaint tests: PostgreSQL from PGMAINT_TEST_DSN: {_redact(dsn)}")
        try:
            yield dsn
        finally:
            _drop_database(external, dbname)
        return

    base = "/tmp" if os.path.isdir("/tmp") else None  # short path: unix socket lives in pgdata
    pgdata = Path(tempfile.mkdtemp(prefix="pgmaint-pg-", dir=base))
    try:
        info = devdb.start_server(pgdata, cleanup_mode="delete")
        devdb.ensure_database(info.conninfo(), dbname)
    except BaseException:
        devdb.stop_server(pgdata, delete=True)
        raise
    dsn = info.conninfo(dbname)
    _announce(request.config, f"pgmaint tests: embedded pgserver PostgreSQL: {dsn}")
    try:
        yield dsn
    finally:
        devdb.stop_server(pgdata, delete=True)


@pytest.fixture
def pg_conn(pg_dsn):
    """psycopg 3 connection (autocommit=True) to pg_dsn; closed afterwards."""
    conn = psycopg.connect(pg_dsn, autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def scratch_schema(pg_dsn) -> str:
    """A new, uniquely named schema (t_<hex8>); dropped CASCADE after the test."""
    name = f"t_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(name)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
    try:
        yield name
    finally:
        _drop_schema(pg_dsn, ident)


def _drop_schema(dsn: str, ident: sql.Identifier) -> None:
    """DROP SCHEMA ... CASCADE; if a session the test left behind holds locks, end it."""
    drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '5s'")
        try:
            conn.execute(drop)
        except psycopg.errors.LockNotAvailable:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            conn.execute(drop)


def _airflow_conn_json(dsn: str) -> str:
    """Airflow JSON connection (postgres) for a libpq conninfo or URI."""
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    conn: dict = {"conn_type": "postgres"}
    for src, dst in (("host", "host"), ("user", "login"), ("password", "password"), ("dbname", "schema")):
        if src in params:
            conn[dst] = str(params.pop(src))
    if "port" in params:
        port = str(params.pop("port"))
        conn["port"] = int(port) if port.isdigit() else port
    if params:
        conn["extra"] = {k: str(v) for k, v in params.items()}  # e.g. sslmode: passed to libpq
    return json.dumps(conn)


@pytest.fixture(scope="session")
def airflow_db(pg_dsn) -> None:
    """Migrated SQLite metadata DB + pools + AIRFLOW_CONN_PGMAINT_TARGET -> pg_dsn."""
    # In-process equivalent of `airflow db migrate` (what the CLI calls): ~2 s instead of ~5 s
    # for a subprocess, and the airflow imports are needed by the tests anyway.
    from airflow.utils import db

    db.upgradedb()

    import airflow_settings  # scripts/airflow_settings.py
    from airflow.models.pool import Pool

    for name, pool in airflow_settings.pools_json(airflow_settings.load()).items():
        Pool.create_or_update_pool(name, pool["slots"], pool["description"], pool["include_deferred"])
    # Tell scripts/airflow (run with PGMAINT_AIRFLOW_HOME=$AIRFLOW_HOME) that this home is
    # initialised, so it does not migrate and import pools again (~7 s).
    for marker in (".initialised", ".pools-imported"):
        (AIRFLOW_HOME / marker).touch()

    os.environ["AIRFLOW_CONN_PGMAINT_TARGET"] = _airflow_conn_json(pg_dsn)
