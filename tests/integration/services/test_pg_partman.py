"""The `pg_partman` adapter against PostgreSQL 15 with pg_partman 4.7 (skips with the reason when not installed)."""

from __future__ import annotations

import pytest
from psycopg import sql

from include.pgmaint.services import ServiceError, ServicePauseError, pause_services, resume_services, service_status
from include.pgmaint.services.leases import make_adapter

RUN = {"dag_id": "default_partition_migration", "run_id": "manual__1"}


@pytest.fixture
def parents(partman_conn):
    """Two pg_partman-managed daily parents in a fresh schema."""
    schema = "pm_" + partman_conn.execute("SELECT substr(md5(random()::text), 1, 8)").fetchone()[0]
    partman_conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    names = []
    for table in ("events", "deltas"):
        parent = sql.Identifier(schema, table)
        partman_conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint, ts timestamptz NOT NULL) PARTITION BY RANGE (ts)").format(parent)
        )
        partman_conn.execute(
            "SELECT partman.create_parent(%s, 'ts', 'native', 'daily', p_premake := 2)", [f"{schema}.{table}"]
        )
        names.append(f"{schema}.{table}")
    yield names
    partman_conn.execute("DELETE FROM partman.part_config WHERE parent_table = ANY(%s)", [names])
    partman_conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def automatic(conn, names: list[str]) -> dict[str, str]:
    return dict(
        conn.execute(
            "SELECT parent_table, automatic_maintenance FROM partman.part_config WHERE parent_table = ANY(%s)", [names]
        ).fetchall()
    )


def config_for(make_config, state_schema: str, tables_: list[str], **service):
    tables = [
        {"name": p, "partition_key": "ts", "interval": "1 day", "premake": 2, "writers": ["partman"]} for p in tables_
    ]
    return make_config(state_schema, [{"name": "partman", "kind": "pg_partman", **service}], tables)


def partitions(conn, parent: str) -> int:
    return conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = %s::regclass", [parent]).fetchone()[0]


def test_pause_switches_off_maintenance_for_the_writers_tables_and_resume_restores(
    partman_conn, parents, pg15_state_schema, make_config
):
    cfg = config_for(make_config, pg15_state_schema, parents)  # parents: the tables naming the service in writers
    report = pause_services(partman_conn, cfg, ["partman"], **RUN)
    assert report.held == ["partman"]
    assert automatic(partman_conn, parents) == dict.fromkeys(parents, "off")

    # pg_partman itself now leaves these parents alone
    partman_conn.execute("UPDATE partman.part_config SET premake = 6 WHERE parent_table = ANY(%s)", [parents])
    for parent in parents:  # pg_partman 4.7 premakes ahead of the newest row
        partman_conn.execute(sql.SQL("INSERT INTO {} VALUES (1, now())").format(sql.Identifier(*parent.split("."))))
    before = {p: partitions(partman_conn, p) for p in parents}
    partman_conn.execute("SELECT partman.run_maintenance()")
    assert {p: partitions(partman_conn, p) for p in parents} == before

    status = service_status(partman_conn, cfg, "partman")
    assert status["paused"] is True and "automatic_maintenance" in status["detail"]

    resume_services(partman_conn, cfg, **RUN)
    assert automatic(partman_conn, parents) == dict.fromkeys(parents, "on")
    partman_conn.execute("SELECT partman.run_maintenance()")
    assert all(partitions(partman_conn, p) > before[p] for p in parents)


def test_parent_switched_off_by_hand_stays_off(partman_conn, parents, pg15_state_schema, make_config):
    events, deltas = parents
    partman_conn.execute(
        "UPDATE partman.part_config SET automatic_maintenance = 'off' WHERE parent_table = %s", [deltas]
    )
    cfg = config_for(make_config, pg15_state_schema, parents)
    pause_services(partman_conn, cfg, ["partman"], **RUN)
    assert automatic(partman_conn, parents) == {events: "off", deltas: "off"}
    resume_services(partman_conn, cfg, **RUN)
    assert automatic(partman_conn, parents) == {events: "on", deltas: "off"}  # only what we switched off comes back


def test_all_parents_off_by_hand_is_paused_by_someone_else(partman_conn, parents, pg15_state_schema, make_config):
    partman_conn.execute(
        "UPDATE partman.part_config SET automatic_maintenance = 'off' WHERE parent_table = ANY(%s)", [parents]
    )
    cfg = config_for(make_config, pg15_state_schema, parents)
    report = pause_services(partman_conn, cfg, ["partman"], **RUN)
    assert report.held == [] and [o.service for o in report.left_alone] == ["partman"]
    resume_services(partman_conn, cfg, **RUN)
    assert automatic(partman_conn, parents) == dict.fromkeys(parents, "off")


def test_explicit_parents(partman_conn, parents, pg15_state_schema, make_config):
    events, deltas = parents
    cfg = config_for(make_config, pg15_state_schema, parents, parents=[deltas])
    pause_services(partman_conn, cfg, ["partman"], **RUN)
    assert automatic(partman_conn, parents) == {events: "on", deltas: "off"}
    resume_services(partman_conn, cfg, **RUN)
    assert automatic(partman_conn, parents) == {events: "on", deltas: "on"}


def test_parent_not_managed_by_pg_partman_is_a_clear_error(partman_conn, parents, pg15_state_schema, make_config):
    cfg = config_for(make_config, pg15_state_schema, parents, parents=[parents[0], "public.not_partman"])
    with pytest.raises(
        ServicePauseError, match=r"not managed by pg_partman \(no row in part_config\): public.not_partman"
    ):
        pause_services(partman_conn, cfg, ["partman"], **RUN)
    assert automatic(partman_conn, parents) == dict.fromkeys(parents, "on")  # nothing was changed


def test_extension_absent_is_a_clear_error(target, scratch_schema, make_config):
    """The embedded PostgreSQL 16 has no pg_partman."""
    cfg = make_config(scratch_schema, [{"name": "partman", "kind": "pg_partman", "parents": ["public.events"]}])
    with pytest.raises(ServiceError, match=r"the pg_partman extension is not installed in database 'pgmaint_test_\d+'"):
        make_adapter(cfg.services[0], cfg, target).status()
