"""The doctor and the watchdog CLI as a non-superuser role (issue 15, items 4 and 7): real
processes against the embedded PostgreSQL, exit statuses as documented in their --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql
from psycopg.conninfo import make_conninfo

from include.pgmaint.db import connect
from include.pgmaint.state import ensure_state_schema, latest_version, state_schema_version
from tests.integration.helpers import make_table, table_entry

REPO = Path(__file__).resolve().parents[3]


def run(module: str, *args: str, config: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if config is not None:
        env["PGMAINT_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", f"include.pgmaint.{module}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ident(*names: str) -> str:
    return sql.Identifier(*names).as_string(None)


@pytest.fixture
def setup(pg_dsn, scratch_schema, tmp_path):
    """A table the role owns nothing of, in a schema it cannot even reach; the state schema exists and is the role's."""
    role, state = f"{scratch_schema}_maint", f"{scratch_schema}_state"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        make_table(conn, scratch_schema, "req", days=range(-2, 1))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(sql.Identifier(state), sql.Identifier(role)))
    with connect(make_conninfo(pg_dsn, user=role)) as conn:
        ensure_state_schema(conn, state)
    config = tmp_path / "pgmaint.yaml"
    config.write_text(yaml.safe_dump({"state_schema": state, "tables": [table_entry(scratch_schema, "req")]}))
    try:
        yield role, state, config, make_conninfo(pg_dsn, user=role)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(state)))
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(scratch_schema)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_watchdog_help_is_a_real_cli():
    out = run("watchdog", "--help")
    assert out.returncode == 0, out
    assert out.stdout.startswith("usage: python -m include.pgmaint.watchdog") and "CRITICAL" not in out.stdout
    assert "3 could not check" in out.stdout and "64 usage error" in out.stdout
    bad = run("watchdog")
    assert bad.returncode == 64 and "required: CONNINFO" in bad.stderr


def test_watchdog_that_cannot_check_says_so_in_one_line_with_its_own_exit_status(setup):
    role, state, config, conninfo = setup
    out = run("watchdog", conninfo, config=config)
    assert out.returncode == 3, out
    assert "Traceback" not in out.stderr
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("pgmaint watchdog: could not check: InsufficientPrivilege: permission denied for schema ")
    assert "include.pgmaint.doctor" in line


def test_doctor_lists_every_missing_privilege_and_its_fixes_make_it_clean(pg_dsn, scratch_schema, setup):
    role, state, config, conninfo = setup
    out = run("doctor", conninfo, config=config)
    assert out.returncode == 1, out
    schema, r = ident(scratch_schema), ident(role)
    for fix in (
        f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {r};",
        f"ALTER TABLE {ident(scratch_schema, 'req')} OWNER TO {r};",
        f"ALTER TABLE {ident(scratch_schema, 'req_default')} OWNER TO {r};",
        *(f"ALTER TABLE {ident(scratch_schema, f'req_old_{d + 100}')} OWNER TO {r};" for d in range(-2, 1)),
        f"GRANT pg_monitor TO {r};",
    ):
        assert fix in out.stdout, fix
    assert "7 privilege(s) missing" in out.stdout  # the schema, the parent, the DEFAULT, 3 partitions, pg_monitor
    assert "GRANT SELECT" not in out.stdout  # the watchdog's reads are covered by ownership

    # An administrator checks the role from its own connection and applies the script --sql prints.
    script = run("doctor", pg_dsn, "--role", role, "--sql", config=config)
    assert script.returncode == 1 and script.stdout.startswith("-- pgmaint doctor: 7 missing privilege(s)")
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(script.stdout)
    clean = run("doctor", conninfo, config=config)
    assert clean.returncode == 0 and "nothing missing" in clean.stdout, clean
    checked = run("watchdog", conninfo, config=config)  # it can check now (and finds the table's runway used up)
    assert (
        checked.returncode == 2 and checked.stderr == "" and f"CRITICAL runway:{scratch_schema}.req" in checked.stdout
    )


def test_doctor_cannot_check_an_unknown_role_or_table(pg_dsn, setup):
    role, state, config, conninfo = setup
    out = run("doctor", pg_dsn, "--role", "no_such_role_xyz", config=config)
    assert (
        out.returncode == 3
        and out.stderr.strip() == "pgmaint doctor: could not check: ValueError: role 'no_such_role_xyz' does not exist"
    )
    out = run("doctor", pg_dsn, "--table", "public.nope", config=config)
    assert out.returncode == 3 and "not configured" in out.stderr


def test_an_up_to_date_state_schema_needs_no_create_privilege_and_issues_no_ddl(pg_dsn, scratch_schema):
    """Every run calls ensure_state_schema: once the schema is current it must only read (a role
    without CREATE on the database or the schema succeeds; the old code ran CREATE SCHEMA IF NOT
    EXISTS every time). An outdated schema is upgraded."""
    role, state = f"{scratch_schema}_reader", f"{scratch_schema}_state"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        ensure_state_schema(admin, state)
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(state), sql.Identifier(role)))
        admin.execute(
            sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(state, "schema_version"), sql.Identifier(role))
        )
        try:
            with connect(make_conninfo(pg_dsn, user=role)) as conn:
                assert ensure_state_schema(conn, state) == latest_version()
            admin.execute(
                sql.SQL("DELETE FROM {} WHERE version = %s").format(sql.Identifier(state, "schema_version")),
                [latest_version()],
            )
            assert state_schema_version(admin, state) == latest_version() - 1
            assert ensure_state_schema(admin, state) == latest_version() == state_schema_version(admin, state)
            assert state_schema_version(admin, state + "_absent") is None
        finally:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(state)))
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
