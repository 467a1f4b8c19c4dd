"""The pgmaint role of include/sql/roles/pgmaint_role.sql (docs/security.md) on a real PostgreSQL.

With every grant the script gives, the incident's repair works as that role (maintenance,
migration with a `flag` writer, watchdog; through the DAGs in test_secrets.py). Each grant is
then taken away in turn: the job that needs it fails with an error naming the missing privilege,
and the catalog is exactly as before (no table created, attached, detached, fenced or dropped).
The application's `service_enabled()` works for a role with only USAGE on the state schema.

The migration DAG with a privilege taken away (dag.test(), a `flag` writer): the run fails naming
it before any writer is paused.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from include.pgmaint.config import parse_config
from include.pgmaint.db import connect
from include.pgmaint.escalation import parse_escalation
from include.pgmaint.maintenance import run_maintenance
from include.pgmaint.migrate import migrate_table
from include.pgmaint.services.leases import pause_services, resume_services
from include.pgmaint.watchdog import run_checks
from tests.fixtures.security import ident, run_role_script


def config_of(setup):
    return parse_config(raw_config(setup))


def raw_config(setup) -> dict:
    return {
        "state_schema": setup.state,
        "services": [{"name": "api_logging", "kind": "flag"}],
        "tables": [
            {
                "name": setup.table,
                "partition_key": "ts",
                "interval": "1 day",
                "premake": 2,
                "retention": "30 days",
                "writers": ["api_logging"],
            }
        ],
    }


def catalog(setup) -> dict:
    """The managed schema's DDL state (relations, owners, partition bounds, constraints)."""
    with psycopg.connect(setup.admin_dsn, autocommit=True) as conn:
        return {
            "relations": conn.execute(
                "SELECT c.relname, c.relkind, c.relowner::regrole::text, pg_get_expr(c.relpartbound, c.oid), "
                "(SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = c.oid) "
                "FROM pg_class c WHERE c.relnamespace = %s::regnamespace ORDER BY 1",
                [ident(setup.schema)],
            ).fetchall(),
            "constraints": conn.execute(
                "SELECT conrelid::regclass::text, conname, convalidated FROM pg_constraint "
                "WHERE connamespace = %s::regnamespace ORDER BY 1, 2",
                [ident(setup.schema)],
            ).fetchall(),
            "state_schema": conn.execute(
                "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s", [setup.state]
            ).fetchall(),
            "rows": conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(setup.schema, "req"))
            ).fetchone(),
        }


def maintain(setup):
    with connect(setup.dsn()) as conn:
        [result] = run_maintenance(conn, config_of(setup))
    return result


def migrate(setup):
    config = config_of(setup)
    with connect(setup.dsn()) as conn:
        return migrate_table(conn, setup.dsn(), config, config.tables[0])


def test_the_script_makes_a_role_that_is_no_superuser_and_is_idempotent(least_privilege):
    s = least_privilege
    again = run_role_script(s.admin_dsn, owner=s.owner, table_schema=s.schema, role=s.role, state_schema=s.state)
    assert again.returncode == 0, again.stderr
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        attrs = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin, "
            "rolconnlimit FROM pg_roles WHERE rolname = %s",
            [s.role],
        ).fetchone()
        member_of = {
            r[0]
            for r in conn.execute(
                "SELECT roleid::regrole::text FROM pg_auth_members WHERE member = %s::regrole", [ident(s.role)]
            ).fetchall()
        }
        db_create = conn.execute(
            "SELECT has_database_privilege(%s, current_database(), 'CREATE')", [s.role]
        ).fetchone()[0]
        state_owner = conn.execute(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s", [s.state]
        ).fetchone()[0]
    assert attrs == (False, False, False, False, False, True, 16)
    assert member_of == {s.owner, "pg_monitor"}
    assert not db_create
    assert state_owner == s.role
    missing = run_role_script(s.admin_dsn, table_schema=s.schema)
    assert missing.returncode != 0 and "set -v owner=" in missing.stderr


def test_the_incident_repair_works_as_the_role_and_service_enabled_needs_only_usage(least_privilege):
    s = least_privilege
    config = config_of(s)
    settings = parse_escalation({})
    checks = run_checks(s.dsn(), config, settings)
    keys = {c.key for c in checks.conditions}
    assert {f"runway:{s.table}", f"default_rows:{s.table}", f"expired_attached:{s.table}"} <= keys, keys
    assert "session_visibility" not in keys

    # the application: only USAGE on the state schema (and EXECUTE, which PUBLIC has)
    s.admin(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(s.state), sql.Identifier(s.app)))
    enabled = sql.SQL("SELECT {}.service_enabled('api_logging')").format(sql.Identifier(s.state))
    with psycopg.connect(s.dsn(s.app), autocommit=True) as app:
        assert app.execute(enabled).fetchone()[0] is True
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(sql.SQL("SELECT * FROM {}.service_flags").format(sql.Identifier(s.state)))
        with connect(s.dsn()) as conn:
            pause_services(conn, config, ["api_logging"], dag_id="test", run_id="r1", reason="migration")
            assert app.execute(enabled).fetchone()[0] is False
            result = migrate_table(conn, s.dsn(), config, config.tables[0])
            resume_services(conn, config, dag_id="test", run_id="r1")
        assert app.execute(enabled).fetchone()[0] is True
    assert result.outcome == "success", result
    after = maintain(s)
    assert after.outcome == "success", after
    assert after.created and after.detached
    keys = {c.key for c in run_checks(s.dsn(), config, settings).conditions}
    assert not {k for k in keys if k.endswith(s.table)}, keys


def revoke_owner(s):
    s.admin(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(s.owner), sql.Identifier(s.role)))


def revoke_schema_create(s):
    s.admin(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(sql.Identifier(s.schema), sql.Identifier(s.role)))


def revoke_pg_monitor(s):
    s.admin(sql.SQL("REVOKE pg_monitor FROM {}").format(sql.Identifier(s.role)))


@pytest.mark.parametrize(
    ("revoke", "job", "names"),
    [
        (revoke_owner, "maintenance", ["ownership (owner: {owner})", "ALTER TABLE"]),
        (revoke_owner, "migration", ["ownership (owner: {owner})"]),
        (revoke_schema_create, "maintenance", ["missing CREATE on schema", "GRANT CREATE ON SCHEMA"]),
        (revoke_schema_create, "migration", ["missing CREATE on schema"]),
        (revoke_pg_monitor, "maintenance", ["pg_read_all_stats", "GRANT pg_monitor TO"]),
        (revoke_pg_monitor, "migration", ["pg_read_all_stats", "GRANT pg_monitor TO"]),
    ],
    ids=lambda v: getattr(v, "__name__", v if isinstance(v, str) else ""),
)
def test_each_grant_is_needed_and_its_absence_is_named_before_anything_is_done(least_privilege, revoke, job, names):
    s = least_privilege
    revoke(s)
    before = catalog(s)

    result = maintain(s) if job == "maintenance" else migrate(s)

    assert result.outcome == "failed", result
    error = "\n".join(result.errors)
    # the up-front check (MissingPrivileges), or the first read it could not do, followed by the full list
    assert ("MissingPrivileges" in error and "nothing was done" in error) or error.startswith(
        "InsufficientPrivilege: "
    ), error
    assert f"role '{s.role}' lacks " in error
    for name in names:
        assert name.format(owner=s.owner) in error, (name, error)
    assert catalog(s) == before


def test_without_pg_monitor_the_watchdog_says_it_is_blind_and_preflight_refuses(least_privilege):
    s = least_privilege
    revoke_pg_monitor(s)
    checks = run_checks(s.dsn(), config_of(s), parse_escalation({}))
    [blind] = [c for c in checks.conditions if c.key == "session_visibility"]
    assert "GRANT pg_monitor TO" in blind.message and "pg_read_all_stats" in blind.message

    from include.pgmaint.config import Preflight
    from include.pgmaint.guards import CannotSeeSessions, preflight

    with connect(s.dsn()) as conn, pytest.raises(CannotSeeSessions, match="pg_read_all_stats"):
        preflight(conn, ident(s.schema, "req"), Preflight())


def test_what_it_sees_without_pg_monitor_is_why_it_is_needed(least_privilege):
    """Another role's open transaction: with pg_monitor its start is visible, without it NULL
    (so a long transaction would look like none at all)."""
    s = least_privilege
    age = "SELECT xact_start IS NOT NULL FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()"
    with psycopg.connect(s.dsn(s.app)) as app:
        app.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(s.schema, "req")))  # transaction open
        with connect(s.dsn()) as conn:
            assert conn.execute(age, [s.app]).fetchone() == (True,)
        revoke_pg_monitor(s)
        with connect(s.dsn()) as conn:
            assert conn.execute(age, [s.app]).fetchone() == (False,)
        app.rollback()


def test_without_the_state_schema_the_first_run_names_the_missing_privilege_and_creates_nothing(least_privilege):
    s = least_privilege
    s.admin(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(s.state)))  # as if step 4 had been skipped
    before = catalog(s)

    with connect(s.dsn()) as conn, pytest.raises(PermissionError) as raised:
        run_maintenance(conn, config_of(s))

    message = str(raised.value)
    assert f"CREATE SCHEMA {ident(s.state)} AUTHORIZATION {ident(s.role)}" in message, message
    assert "missing CREATE on database" in message and "nothing was applied" in message
    assert catalog(s) == before


def test_an_upgrade_without_ownership_of_the_state_schema_names_it_and_applies_nothing(least_privilege):
    """A pending state-schema upgrade needs CREATE on the schema (and ownership of its tables)."""
    from include.pgmaint.state import ensure_state_schema, latest_version, state_schema_version

    s = least_privilege
    with connect(s.dsn()) as conn:
        ensure_state_schema(conn, s.state)
    with psycopg.connect(s.admin_dsn, autocommit=True) as admin:  # an older pgmaint's schema, owned by an administrator
        for (name,) in admin.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace AND relkind IN ('r', 'p')",
            [ident(s.state)],
        ).fetchall():
            admin.execute(sql.SQL("ALTER TABLE {} OWNER TO CURRENT_USER").format(sql.Identifier(s.state, name)))
        admin.execute(sql.SQL("ALTER SCHEMA {} OWNER TO CURRENT_USER").format(sql.Identifier(s.state)))
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(s.state), sql.Identifier(s.role)))
        admin.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.Identifier(s.state), sql.Identifier(s.role)
            )
        )
        admin.execute(
            sql.SQL("DELETE FROM {} WHERE version = %s").format(sql.Identifier(s.state, "schema_version")),
            [latest_version()],
        )
    with connect(s.dsn()) as conn, pytest.raises(PermissionError) as raised:
        ensure_state_schema(conn, s.state)
    assert f"GRANT CREATE ON SCHEMA {ident(s.state)} TO {ident(s.role)}" in str(raised.value)
    assert "nothing was applied" in str(raised.value)
    with psycopg.connect(s.admin_dsn, autocommit=True) as admin:
        assert state_schema_version(admin, s.state) == latest_version() - 1
    # the script repairs it: the role owns the schema and its tables again, and the upgrade runs
    assert (
        run_role_script(s.admin_dsn, owner=s.owner, table_schema=s.schema, role=s.role, state_schema=s.state).returncode
        == 0
    )
    with connect(s.dsn()) as conn:
        assert ensure_state_schema(conn, s.state) == latest_version()


def test_the_migration_dag_names_a_missing_privilege_before_pausing_any_writer(
    airflow_db, least_privilege, tmp_path, monkeypatch, caplog, capfd
):
    """migrate checks every privilege the move needs before it pauses anything: a role that
    is no longer a member of the tables' owner fails the run, the flag was never switched off, no
    lease was written, no migration journalled and the catalog is as it was."""
    from airflow.dag_processing.dagbag import DagBag

    s = least_privilege
    revoke_owner(s)
    before = catalog(s)
    monkeypatch.setenv("AIRFLOW_CONN_PGMAINT_TARGET", json.dumps(s.airflow_connection()))
    config_path = tmp_path / "pgmaint.yaml"
    config_path.write_text(yaml.safe_dump(raw_config(s)))
    monkeypatch.setenv("PGMAINT_CONFIG", str(config_path))
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[3] / "dags" / "default_partition_migration.py"))
    assert bag.import_errors == {}

    run = bag.dags["default_partition_migration"].test(run_conf={"table": s.table})

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed", states
    assert states["migrate"] == "failed" and states["gate_before_cleanup"] == "upstream_failed", states
    assert states["resume_writers"] == "success", states  # the teardown ran and found nothing to resume
    out, err = capfd.readouterr()
    logs = "\n".join([caplog.text, out, err])
    assert "MissingPrivileges" in logs and "nothing was done" in logs
    assert f"missing ownership (owner: {s.owner}) on partitioned table" in logs, logs[-3000:]
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        state = sql.Identifier(s.state)
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}.service_leases").format(state)).fetchone() == (0,)
        assert conn.execute(
            sql.SQL("SELECT count(*) FROM {}.service_flags WHERE NOT enabled").format(state)
        ).fetchone() == (0,)
        assert conn.execute(sql.SQL("SELECT {}.service_enabled('api_logging')").format(state)).fetchone() == (True,)
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}.migrations").format(state)).fetchone() == (0,)
    assert catalog(s) == before
