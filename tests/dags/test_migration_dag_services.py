"""default_partition_migration's pause/resume wiring, end to end with dag.test() (real PostgreSQL, real HTTP server).

The configured table exists and the role may do everything (so `migrate`'s up-front privilege
check passes and it pauses the writers), but it has no primary key and a row in its DEFAULT: the
migration refuses it after surveying the DEFAULT, so the work fails after the writers were paused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from psycopg import sql

from include.pgmaint.db import connect

REPO = Path(__file__).resolve().parents[2]


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "default_partition_migration.py"))
    assert bag.import_errors == {}
    return bag.dags["default_partition_migration"]


def _states(dag_run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def _xcom(dag_run, task_id: str):
    [ti] = [ti for ti in dag_run.get_task_instances() if ti.task_id == task_id]
    return ti.xcom_pull(task_ids=task_id)


@pytest.fixture
def migration_config(tmp_path, monkeypatch, pg_dsn, scratch_schema):
    """Make the table (no primary key, a row in its DEFAULT), write the config (a diamond of writers
    on it) and point PGMAINT_CONFIG at it."""

    def write(c_service: dict | None = None) -> str:
        table = f"{scratch_schema}.unkeyed"
        with connect(pg_dsn) as conn:
            conn.execute(
                sql.SQL("CREATE TABLE {} (ts timestamptz NOT NULL, payload text) PARTITION BY RANGE (ts)").format(
                    sql.Identifier(scratch_schema, "unkeyed")
                )
            )
            conn.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
                    sql.Identifier(scratch_schema, "unkeyed_default"), sql.Identifier(scratch_schema, "unkeyed")
                )
            )
            conn.execute(
                sql.SQL("INSERT INTO {} VALUES (now(), 'today')").format(sql.Identifier(scratch_schema, "unkeyed"))
            )
        services = [
            {"name": "A", "kind": "flag", "depends_on": ["B", "C"]},
            {"name": "B", "kind": "flag", "depends_on": ["D"]},
            c_service or {"name": "C", "kind": "flag", "depends_on": ["D"]},
            {"name": "D", "kind": "flag"},
        ]
        raw = {
            "state_schema": scratch_schema,
            "services": services,
            "tables": [
                {
                    "name": table,
                    "partition_key": "ts",
                    "interval": "1 day",
                    "premake": 2,
                    "writers": ["D", "C", "B", "A"],
                }
            ],
        }
        path = tmp_path / "pgmaint.yaml"
        path.write_text(yaml.safe_dump(raw))
        monkeypatch.setenv("PGMAINT_CONFIG", str(path))
        return table

    return write


def _flags(pg_dsn, schema) -> dict[str, bool]:
    with connect(pg_dsn) as conn:
        if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{schema}.service_flags"]).fetchone()[0]:
            return {}
        return dict(
            conn.execute(
                sql.SQL("SELECT name, enabled FROM {}.service_flags").format(sql.Identifier(schema))
            ).fetchall()
        )


def _leases(pg_dsn, schema, order: str = "resumed_at") -> list[tuple]:
    with connect(pg_dsn) as conn:
        if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{schema}.service_leases"]).fetchone()[0]:
            return []
        return conn.execute(
            sql.SQL("SELECT service, dag_id, run_id, state FROM {}.service_leases ORDER BY {}").format(
                sql.Identifier(schema), sql.Identifier(order)
            )
        ).fetchall()


def test_work_fails_all_resumed_in_reverse_and_the_run_fails(airflow_db, pg_dsn, scratch_schema, migration_config):
    table = migration_config()

    run = _dag().test(run_conf={"table": table})

    assert run.state == "failed"
    assert _states(run) == {
        "open_window": "success",
        "migrate": "failed",
        "gate_before_cleanup": "upstream_failed",
        "finish": "upstream_failed",
        "gate_after_cleanup": "upstream_failed",
        "resume_writers": "success",
    }
    assert _xcom(run, "open_window") == {"table": table, "services": ["A", "B", "C", "D"]}
    assert [s for s, *_ in _leases(pg_dsn, scratch_schema, order="paused_at")] == ["A", "B", "C", "D"]
    assert _xcom(run, "resume_writers") == ["D", "C", "B", "A"]
    assert _flags(pg_dsn, scratch_schema) == {"A": True, "B": True, "C": True, "D": True}
    leases = _leases(pg_dsn, scratch_schema)  # in the order they were resumed
    assert [(s, state) for s, _, _, state in leases] == [
        ("D", "resumed"),
        ("C", "resumed"),
        ("B", "resumed"),
        ("A", "resumed"),
    ]
    assert {(dag_id, run_id) for _, dag_id, run_id, _ in leases} == {("default_partition_migration", run.run_id)}


def test_pause_fails_half_way_what_was_paused_is_resumed(
    airflow_db, pg_dsn, scratch_schema, migration_config, http_service
):
    http_service.plan["/c/pause"] = [500]
    table = migration_config(
        {
            "name": "C",
            "kind": "http",
            "depends_on": ["D"],
            "retries": 0,
            "pause_url": f"{http_service.base_url}/c/pause",
            "resume_url": f"{http_service.base_url}/c/resume",
        }
    )

    run = _dag().test(run_conf={"table": table})

    assert run.state == "failed"
    assert _states(run) == {
        "open_window": "success",
        "migrate": "failed",
        "gate_before_cleanup": "upstream_failed",
        "finish": "upstream_failed",
        "gate_after_cleanup": "upstream_failed",
        "resume_writers": "success",
    }
    assert _flags(pg_dsn, scratch_schema) == {"A": True, "B": True}  # paused, then resumed; D never touched
    assert http_service.paths() == ["POST /c/pause", "POST /c/resume"]
    assert [(s, state) for s, _, _, state in _leases(pg_dsn, scratch_schema)] == [
        ("C", "resumed"),
        ("B", "resumed"),
        ("A", "resumed"),
    ]
    assert _xcom(run, "resume_writers") == []  # the teardown ran and found nothing left to resume


def test_pause_services_off_pauses_nothing(airflow_db, pg_dsn, scratch_schema, migration_config):
    table = migration_config()

    run = _dag().test(run_conf={"table": table, "pause_services": False})

    assert _states(run)["migrate"] == "failed" and _states(run)["resume_writers"] == "success"
    assert _xcom(run, "resume_writers") == []
    assert _flags(pg_dsn, scratch_schema) == {}
    assert _leases(pg_dsn, scratch_schema) == []
