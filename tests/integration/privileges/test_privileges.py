"""Dry runs as a role that lacks privileges: every missing privilege is reported at once, with
the statement that grants it, and the database is left exactly as it was (issue 15, item 3).

The role is a real non-superuser LOGIN role created in the test; every session it opens is
read-only (ALTER ROLE … SET default_transaction_read_only), and the catalog and every table's
rows are compared before and after, as the superuser.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql
from psycopg.conninfo import make_conninfo

from include.pgmaint import privileges
from include.pgmaint.db import connect
from include.pgmaint.maintenance import run_maintenance
from include.pgmaint.migrate import migrate_table
from include.pgmaint.state import ensure_state_schema
from tests.integration.helpers import NOW, TODAY, config_for, make_table, table_entry

REPO = Path(__file__).resolve().parents[3]


def ident(*names: str) -> str:
    return sql.Identifier(*names).as_string(None)


@pytest.fixture
def maint(pg_dsn, scratch_schema):
    """A non-superuser role `<schema>_maint` (LOGIN, read-only sessions); dropped afterwards."""
    role = f"{scratch_schema}_maint"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(scratch_schema)))
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))  # also revokes its grants
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def snapshot(conn) -> dict:
    """Everything a write could change: schemas, relations (owner, ACL), constraints, inheritance, and every user table's rows."""
    user_rel = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp%%'"
    rels = conn.execute(f"""
        SELECT n.nspname, c.relname, c.relkind, c.relowner::regrole::text, c.relacl::text
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {user_rel} ORDER BY 1, 2""").fetchall()
    counts = {}
    for schema, name, kind, _, _ in rels:
        if kind in ("r", "p"):
            counts[(schema, name)] = conn.execute(
                sql.SQL("SELECT count(*), coalesce(sum(hashtext(t::text)), 0) FROM {} t").format(
                    sql.Identifier(schema, name)
                )
            ).fetchone()
    return {
        "schemas": conn.execute(
            "SELECT nspname, nspowner::regrole::text, nspacl::text FROM pg_namespace ORDER BY 1"
        ).fetchall(),
        "relations": rels,
        "constraints": conn.execute(
            "SELECT conrelid::regclass::text, conname, convalidated FROM pg_constraint "
            "WHERE connamespace <> 'pg_catalog'::regnamespace ORDER BY 1, 2"
        ).fetchall(),
        "inherits": conn.execute(
            "SELECT inhrelid::regclass::text, inhparent::regclass::text, inhdetachpending FROM pg_inherits ORDER BY 1"
        ).fetchall(),
        "database_acl": conn.execute(
            "SELECT datacl::text FROM pg_database WHERE datname = current_database()"
        ).fetchone(),
        "rows": counts,
    }


def seed(conn, schema: str, role: str) -> None:
    """`req`: daily partitions for the last 40 days (some past the 30-day retention), rows in the
    DEFAULT for tomorrow; the role owns the parent only (ALTER TABLE parent OWNER does not cascade)."""
    make_table(conn, schema, "req", days=range(-40, 1))
    conn.execute(
        sql.SQL("INSERT INTO {} (ts, payload) VALUES (%s, 'in the DEFAULT')").format(sql.Identifier(schema, "req")),
        [TODAY + timedelta(days=1, hours=3)],
    )
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
    conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(schema, "req"), sql.Identifier(role)))
    conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(sql.Identifier(role)))


def partition_names(conn, schema: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s) "
            "ORDER BY 1",
            [ident(schema, "req")],
        ).fetchall()
    ]


def expected_fixes(conn, schema: str, role: str, state: str, *, create_on_database: bool) -> set[str]:
    db = conn.execute("SELECT current_database()").fetchone()[0]
    fixes = {f"GRANT CREATE ON SCHEMA {ident(schema)} TO {ident(role)};"}
    fixes |= {f"ALTER TABLE {ident(schema, p)} OWNER TO {ident(role)};" for p in partition_names(conn, schema)}
    fixes.add(f"GRANT pg_monitor TO {ident(role)};")  # to see other roles' sessions (preflight, old snapshots)
    if create_on_database:
        fixes.add(
            f"CREATE SCHEMA {ident(state)} AUTHORIZATION {ident(role)};  -- or: GRANT CREATE ON DATABASE {ident(db)} TO {ident(role)};"
        )
    return fixes


def fixes_in(errors: list[str]) -> set[str]:
    return {e.split("; fix: ", 1)[1] for e in errors if "; fix: " in e}


def test_dry_runs_report_every_missing_privilege_at_once_and_write_nothing(pg_dsn, pg_conn, scratch_schema, maint):
    state = f"{scratch_schema}_state"  # does not exist: the real run would create it (CREATE on the database)
    seed(pg_conn, scratch_schema, maint)
    cfg = config_for(state, [table_entry(scratch_schema, "req")])
    expected = expected_fixes(pg_conn, scratch_schema, maint, state, create_on_database=True)
    # CREATE on the schema, 41 partitions + the DEFAULT, the state schema, pg_monitor
    assert len(expected) == 1 + 42 + 1 + 1
    before = snapshot(pg_conn)

    with connect(make_conninfo(pg_dsn, user=maint)) as conn:
        assert conn.execute("SELECT current_user, current_setting('transaction_read_only')").fetchone() == (maint, "on")
        results = [
            run_maintenance(conn, cfg, dry_run=True, now=NOW, phases=(phase,))[0] for phase in ("premake", "retire")
        ]
        migrated = migrate_table(conn, pg_dsn, cfg, cfg.tables[0], dry_run=True, now=NOW)

    for r in results + [migrated]:
        assert r.outcome == "failed", r
        assert r.errors[0].startswith(f"role '{maint}' lacks {len(expected)} privilege(s) the real ")
        assert fixes_in(r.errors) == expected
        assert len(r.errors) == 1 + len(expected)  # every one at once, nothing else
        assert r.statements == []
    assert any("ALTER TABLE parent OWNER does not cascade" in e for e in results[0].errors)
    assert snapshot(pg_conn) == before


def test_an_existing_state_schema_needs_usage_and_its_table_privileges_not_create_on_the_database(
    pg_dsn, pg_conn, scratch_schema, maint
):
    state = f"{scratch_schema}_state"
    seed(pg_conn, scratch_schema, maint)
    ensure_state_schema(pg_conn, state)  # created by an administrator; the role has no privilege on it
    cfg = config_for(state, [table_entry(scratch_schema, "req")])
    with connect(make_conninfo(pg_dsn, user=maint)) as conn:
        found = privileges.check(conn, cfg, jobs=("maintenance",))
        assert not any("DATABASE" in m.fix for m in found)
        state_fixes = {m.fix for m in found if m.target.startswith(("schema " + ident(state), "table " + ident(state)))}
        assert f"GRANT USAGE ON SCHEMA {ident(state)} TO {ident(maint)};" in state_fixes
        assert f"GRANT SELECT, INSERT, UPDATE ON TABLE {ident(state, 'runs')} TO {ident(maint)};" in state_fixes
        assert f"GRANT SELECT, INSERT ON TABLE {ident(state, 'steps')} TO {ident(maint)};" in state_fixes
        assert len(state_fixes) == 1 + len(privileges.STATE_TABLES)

    # Apply every fix the check printed: then nothing is missing, and the dry run plans.
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        for m in found:
            admin.execute(m.fix)
    with connect(make_conninfo(pg_dsn, user=maint)) as conn:
        assert privileges.check(conn, cfg) == []
        [result] = run_maintenance(conn, cfg, dry_run=True, now=NOW)
    assert result.outcome == "dry_run" and result.errors == []
    assert {s["step"] for s in result.statements} >= {"create_table", "detach", "drop"}


def test_the_migration_dry_run_dag_as_a_role_lacking_privileges_writes_nothing(
    airflow_db, pg_dsn, pg_conn, scratch_schema, maint, tmp_path, monkeypatch
):
    """Through Airflow: the migrate task fails listing the privileges; the failure callback and the
    resume teardown write nothing (on the old code they created the state schema and a condition)."""
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import _airflow_conn_json

    state = f"{scratch_schema}_state"
    seed(pg_conn, scratch_schema, maint)
    # as the newcomer's role had
    pg_conn.execute(
        sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(pg_conn.info.dbname), sql.Identifier(maint))
    )
    pg_conn.execute(sql.SQL("ALTER ROLE {} RESET default_transaction_read_only").format(sql.Identifier(maint)))
    path = tmp_path / "pgmaint.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "state_schema": state,
                "tables": [table_entry(scratch_schema, "req", writers=["logger"])],
                "services": [{"name": "logger", "kind": "flag"}],
            }
        )
    )
    monkeypatch.setenv("PGMAINT_CONFIG", str(path))
    monkeypatch.setenv("AIRFLOW_CONN_PGMAINT_TARGET", _airflow_conn_json(make_conninfo(pg_dsn, user=maint)))
    before = snapshot(pg_conn)

    dag = DagBag(dag_folder=str(REPO / "dags" / "default_partition_migration.py")).dags["default_partition_migration"]
    run = dag.test(run_conf={"table": f"{scratch_schema}.req", "dry_run": True})

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed" and states["migrate"] == "failed" and states["resume_writers"] == "success", states
    assert snapshot(pg_conn) == before  # no state schema, no condition, no lease
