"""What the writers' service adapters need, found by the doctor and the migration's dry run (issue 15, P2).

PostgreSQL 15 with pg_partman 4.7 and pg_cron (tests/pg15.py). A non-superuser role owns its
table, its state schema and pg_monitor, so everything the doctor lists is the services': USAGE
on pg_partman's schema, SELECT on part_config and UPDATE of its automatic_maintenance; USAGE on
schema cron, EXECUTE on cron.alter_job and the ownership of the job. Once the administrator has
run the fixes the doctor printed, the doctor is clean and the role really pauses and resumes
both services.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
import yaml
from psycopg import sql
from psycopg.conninfo import make_conninfo

from include.pgmaint import privileges
from include.pgmaint.config import load_config, parse_config
from include.pgmaint.db import connect
from include.pgmaint.services import ServicePauseError, pause_services, resume_services
from include.pgmaint.state import ensure_state_schema
from tests.integration.helpers import make_table, table_entry
from tests.integration.privileges.test_cli_privileges import ident, run

NEVER = "0 0 31 2 *"  # 31 February: pg_cron's scheduler never runs the job
RUN = {"dag_id": "default_partition_migration", "run_id": "manual__privileges"}


@pytest.fixture
def setup(pg15_server, tmp_path):
    """(role, its conninfo, the admin's conninfo, config path, job name, partman parent) on the PG15 cluster."""
    if not (pg15_server.has_partman and pg15_server.has_cron):
        pytest.skip("pg_partman and pg_cron for PostgreSQL 15 are needed (postgresql-15-partman, postgresql-15-cron)")
    tag = uuid.uuid4().hex[:8]
    role, schema, state, job = f"maint_{tag}", f"app_{tag}", f"state_{tag}", f"rollup_{tag}"
    admin = pg15_server.conninfo()
    mine = make_conninfo(admin, user=role)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        c.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(role)))
        for name in (schema, state):
            c.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(sql.Identifier(name), sql.Identifier(role)))
        # pg_partman knows the table (its background worker is not loaded here); the job belongs to the superuser
        c.execute(
            "INSERT INTO partman.part_config (parent_table, control, partition_type, partition_interval) "
            "VALUES (%s, 'ts', 'native', '1 day')",
            [f"{schema}.req"],
        )
        c.execute("SELECT cron.schedule(%s, %s, 'SELECT 1')", [job, NEVER])
    with connect(mine) as c:
        make_table(c, schema, "req", days=range(-1, 3))
        ensure_state_schema(c, state)
    path = tmp_path / "pgmaint.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "state_schema": state,
                "tables": [table_entry(schema, "req", writers=["partman", "nightly"])],
                "services": [
                    {"name": "partman", "kind": "pg_partman"},
                    {"name": "nightly", "kind": "pg_cron", "jobs": [job]},
                ],
            }
        )
    )
    try:
        yield role, mine, admin, path, job, f"{schema}.req"
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute("DELETE FROM cron.job WHERE jobname = %s", [job])
            c.execute("DELETE FROM partman.part_config WHERE parent_table = %s", [f"{schema}.req"])
            for name in (schema, state):
                c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
            c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))  # also revokes its grants
            c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def states(admin: str, job: str, parent: str) -> tuple[bool, str]:
    with psycopg.connect(admin, autocommit=True) as c:
        active = c.execute("SELECT active FROM cron.job WHERE jobname = %s", [job]).fetchone()[0]
        automatic = c.execute(
            "SELECT automatic_maintenance FROM partman.part_config WHERE parent_table = %s", [parent]
        ).fetchone()[0]
    return active, automatic


def test_the_doctor_lists_what_the_writer_services_need_and_its_fixes_make_them_work(setup):
    role, mine, admin, path, job, parent = setup
    r = ident(role)
    alter_job = (
        'GRANT EXECUTE ON FUNCTION "cron"."alter_job"(job_id bigint, schedule text, command text, '
        f"database text, username text, active boolean) TO {r};"
    )
    fixes = [
        f'GRANT USAGE ON SCHEMA "partman" TO {r};',
        f'GRANT SELECT ON TABLE "partman"."part_config" TO {r};',
        f'GRANT UPDATE (automatic_maintenance) ON TABLE "partman"."part_config" TO {r};',
        f'GRANT USAGE ON SCHEMA "cron" TO {r};',
        alter_job,
    ]
    out = run("doctor", mine, config=path)
    assert out.returncode == 1, out
    for fix in fixes:
        assert fix in out.stdout, (fix, out.stdout)
    assert "5 privilege(s) missing" in out.stdout  # the role cannot read cron.job yet: its jobs are checked later
    assert "needed by migration, watchdog: the writer service 'partman' (pg_partman)" in out.stdout

    only_maintenance = run("doctor", mine, "--job", "maintenance", config=path)  # maintenance pauses no writer
    assert only_maintenance.returncode == 0 and "nothing missing" in only_maintenance.stdout, only_maintenance

    # the migration's dry run lists them (a real run pauses the writers); the real run's own check does not
    config = load_config(str(path))
    with connect(mine) as c:
        dry = privileges.problems(c, config, config.tables[0], "migration")
        assert [line for line in fixes if any(line in p for p in dry)] == fixes
        assert privileges.check(c, config, jobs=("migration",), services=False) == []

    # the administrator sees every job: the job's owner is listed too, with the call that hands it over
    script = run("doctor", admin, "--role", role, "--sql", config=path)
    assert script.returncode == 1 and script.stdout.startswith("-- pgmaint doctor: 6 missing privilege(s)"), script
    assert f"-- ownership ({job}: owned by postgres) on pg_cron job {job}" in script.stdout
    assert (
        f'SELECT "cron"."alter_job"(jobid, username := \'{role}\') FROM "cron"."job" WHERE jobname IN (\'{job}\');'
        in script.stdout
    )
    with connect(mine) as c:  # without the fixes, the pause fails (and changes nothing)
        with pytest.raises(ServicePauseError, match="permission denied for schema partman"):
            pause_services(c, config, ["partman", "nightly"], **RUN)
    assert states(admin, job, parent) == (True, "on")

    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(script.stdout)
    clean = run("doctor", mine, config=path)
    assert clean.returncode == 0 and "nothing missing" in clean.stdout, clean

    # and the grants are enough: the role pauses and resumes both services itself
    with connect(mine) as c:
        report = pause_services(c, config, ["partman", "nightly"], **RUN)
        assert sorted(report.held) == ["nightly", "partman"]
        assert states(admin, job, parent) == (False, "off")
        resume_services(c, config, **RUN)
    assert states(admin, job, parent) == (True, "on")


def test_a_missing_extension_is_listed_with_what_to_do(pg_conn, scratch_schema):
    """The embedded PostgreSQL 16 has neither extension. A pg_cron service with a connection_id keeps its jobs in
    another database, so it is not checked from this one."""
    make_table(pg_conn, scratch_schema, "req")
    raw = {
        "state_schema": f"{scratch_schema}_state",
        "tables": [table_entry(scratch_schema, "req", writers=["partman", "nightly"])],
        "services": [{"name": "partman", "kind": "pg_partman"}, {"name": "nightly", "kind": "pg_cron", "jobs": ["j"]}],
    }
    found = privileges.check(pg_conn, parse_config(raw), jobs=("migration", "watchdog"))
    assert [(m.privilege, m.target, m.needed_by, m.fix) for m in found] == [
        (
            "existence",
            'extension "pg_partman"',
            ("migration", "watchdog"),
            "-- install pg_partman in this database, or remove partman from the tables' writers",
        ),
        (
            "existence",
            'extension "pg_cron"',
            ("migration", "watchdog"),
            "-- install pg_cron in this database, or remove nightly from the tables' writers",
        ),
    ]
    raw["services"][1]["connection_id"] = "cron_db"
    assert [m.target for m in privileges.check(pg_conn, parse_config(raw), jobs=("migration",))] == [
        'extension "pg_partman"'
    ]
    assert privileges.check(pg_conn, parse_config(raw), jobs=("maintenance",)) == []
