"""default_partition_migration: params are validated before anything runs; a run moves the rows and resumes writers."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "default_partition_migration.py"))
    assert bag.import_errors == {}
    return bag.dags["default_partition_migration"]


def test_structure_reads_like_the_runbook():
    dag = _dag()
    assert dag.max_active_runs == 1
    assert set(dag.params.keys()) == {
        "table",
        "dry_run",
        "batch_rows",
        "max_minutes",
        "pause_services",
        "move_out_of_window",
    }
    assert dag.get_task("open_window").is_setup and dag.get_task("resume_writers").is_teardown
    order = [
        "open_window",
        "migrate",
        "gate_before_cleanup",
        "finish",
        "gate_after_cleanup",
    ]
    for upstream, downstream in zip(order, order[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    # Writers are resumed once the move has ended (the rows are in their partitions), not after the drop and its
    # gates: they are paused for the move alone.
    assert dag.get_task("resume_writers").upstream_task_ids == {"open_window", "migrate"}


def _asset_events(*tables):
    """The `triggering_asset_events` a run started by the watchdog's `pgmaint_default_rows` events gets."""
    from datetime import datetime, timezone

    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from include.pgmaint.airflow.assets import DEFAULT_ROWS

    return TriggeringAssetEventsAccessor.build(
        AssetEventDagRunReferenceResult(
            asset={"name": DEFAULT_ROWS.name, "uri": DEFAULT_ROWS.uri, "extra": {}},
            extra={"table": table},
            source_task_id="request_migration",
            source_dag_id="partition_watchdog",
            source_run_id=f"scheduled__{i}",
            source_map_index=-1,
            source_aliases=[],
            timestamp=datetime(2026, 12, 2, 8, i, tzinfo=timezone.utc),
        )
        for i, table in enumerate(tables)
    )


def test_the_table_comes_from_the_param_or_else_from_the_watchdogs_latest_asset_event():
    from airflow.sdk.exceptions import AirflowFailException

    from include.pgmaint.airflow.tasks import resolve_migration_table
    from include.pgmaint.fleet import load_fleet

    fleet = load_fleet()
    first, second = fleet.table_refs[:2]
    events = _asset_events(first, second)
    assert resolve_migration_table(fleet, {"table": None}, events) == second
    assert resolve_migration_table(fleet, {"table": first}, _asset_events(second)) == first  # the form wins
    with pytest.raises(AirflowFailException, match="no table chosen"):
        resolve_migration_table(fleet, {"table": None}, _asset_events())
    with pytest.raises(AirflowFailException, match=r"'public.gone' is not configured"):
        resolve_migration_table(fleet, {"table": None}, _asset_events("public.gone"))


@pytest.mark.parametrize(
    "conf",
    [
        {"table": "public.not_configured"},
        {"table": "public.inbound_requests; DROP TABLE public.event_deltas"},
        {"table": "public.inbound_requests", "batch_rows": -5},
        {"table": "public.inbound_requests", "batch_rows": 0},
        {"table": "public.inbound_requests", "batch_rows": "1000; SELECT 1"},
        {"table": "public.inbound_requests", "max_minutes": 0},
        {"table": "public.inbound_requests", "dry_run": "yes"},
    ],
)
def test_bad_params_are_rejected_before_anything_runs(airflow_db, conf):
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError):
        _dag().test(run_conf=conf)


def test_a_run_moves_the_rows_and_ends_green(airflow_db, pg_dsn, scratch_schema, tmp_path, monkeypatch):
    import yaml
    from psycopg import sql

    from include.pgmaint.db import connect
    from tests.integration.migration.test_migration import fingerprint, seed

    with connect(pg_dsn) as conn:
        seed(conn, scratch_schema, 5_000)
        before = fingerprint(conn, scratch_schema)
    path = tmp_path / "pgmaint.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "state_schema": scratch_schema,
                "tables": [
                    {
                        "name": f"{scratch_schema}.ev",
                        "partition_key": "ts",
                        "interval": "1 day",
                        "premake": 2,
                        "retention": "30 days",
                    }
                ],
            }
        )
    )
    monkeypatch.setenv("PGMAINT_CONFIG", str(path))

    run = _dag().test(run_conf={"table": f"{scratch_schema}.ev", "batch_rows": 1000})

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert states["migrate"] == "success" and set(states.values()) == {"success"}, states
    with connect(pg_dsn) as conn:
        assert fingerprint(conn, scratch_schema) == before
        phase = conn.execute(
            sql.SQL("SELECT phase, rows_moved FROM {}.migrations").format(sql.Identifier(scratch_schema))
        ).fetchall()
    assert phase == [
        ("done", 5_002)
    ]  # every row of the old DEFAULT went back through the parent; 2 landed in the new DEFAULT


def test_a_changed_old_default_stops_the_cleanup_and_writers_are_resumed(
    airflow_db, pg_dsn, scratch_schema, tmp_path, monkeypatch
):
    """A row deleted from the detached old DEFAULT behind the migration's back, its read-only trigger disabled (it must
    stay as it was at the swap):
    the gate passes (the figures balanced at the swap) but the drop re-reads it and refuses: the old DEFAULT is kept,
    the writer paused for the run is resumed, and the run is failed."""
    import yaml
    from psycopg import sql

    from include.pgmaint.config import parse_config
    from include.pgmaint.db import connect
    from include.pgmaint.migrate import migrate_table
    from tests.integration.helpers import table_exists
    from tests.integration.migration.test_migration import seed

    raw = {
        "state_schema": scratch_schema,
        "services": [{"name": "request_logging", "kind": "flag"}],
        "tables": [
            {
                "name": f"{scratch_schema}.ev",
                "partition_key": "ts",
                "interval": "1 day",
                "premake": 2,
                "retention": "30 days",
                "writers": ["request_logging"],
            }
        ],
    }
    with connect(pg_dsn) as conn:
        seed(conn, scratch_schema, 3_000)
        config = parse_config(raw)
        swapped = migrate_table(conn, pg_dsn, config, config.tables[0], finish=False)  # moved, not cleaned up
        assert swapped.outcome == "swapped"
        old = sql.Identifier(scratch_schema, "ev_default_pgmaint_old")
        # its guard, tampered with
        conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER pgmaint_read_only").format(old))
        conn.execute(sql.SQL("DELETE FROM {} WHERE ctid = (SELECT min(ctid) FROM {})").format(old, old))
    path = tmp_path / "pgmaint.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PGMAINT_CONFIG", str(path))

    run = _dag().test(run_conf={"table": f"{scratch_schema}.ev"})

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed"
    assert states["migrate"] == "success" and states["gate_before_cleanup"] == "success"
    assert states["finish"] == "failed" and states["resume_writers"] == "success"
    with connect(pg_dsn) as conn:
        assert table_exists(conn, scratch_schema, "ev_default_pgmaint_old")  # the destructive step did not run
        flags = conn.execute(
            sql.SQL("SELECT name, enabled FROM {}.service_flags").format(sql.Identifier(scratch_schema))
        ).fetchall()
    assert flags == [("request_logging", True)]  # paused for the run, resumed after the failure


def test_with_two_targets_the_table_is_migrated_in_its_own_database_and_pool(
    airflow_db, pg_dsn, scratch_schema, tmp_path, monkeypatch
):
    """Fleet mode: the same table on two databases; `second/<schema>.ev` is moved in the second database only, its
    journal in that target's state schema, and every task holding a session to it runs in that target's pool."""
    import psycopg
    import yaml
    from airflow.models.pool import Pool
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    from include.pgmaint.db import connect
    from tests.conftest import _airflow_conn_json
    from tests.integration.helpers import table_exists
    from tests.integration.migration.test_migration import fingerprint, seed

    admin, name = make_conninfo(pg_dsn, dbname="postgres"), f"pgmaint_second_{scratch_schema}"
    second_dsn, state = make_conninfo(pg_dsn, dbname=name), f"{scratch_schema}_state"

    def drop_second() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    drop_second()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with connect(pg_dsn) as conn:
            seed(conn, scratch_schema, 2_000)
            first_before = fingerprint(conn, scratch_schema)
        with connect(second_dsn) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(scratch_schema)))
            seed(conn, scratch_schema, 3_000)
            second_before = fingerprint(conn, scratch_schema)
        monkeypatch.setenv("AIRFLOW_CONN_PGMAINT_SECOND", _airflow_conn_json(second_dsn))
        Pool.create_or_update_pool("pgmaint_second", 1, "test: the second target's sessions", False)
        table = {
            "name": f"{scratch_schema}.ev",
            "partition_key": "ts",
            "interval": "1 day",
            "premake": 2,
            "retention": "30 days",
        }
        path = tmp_path / "fleet.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "state_schema": scratch_schema,
                    "targets": [
                        {
                            "name": "first",
                            "connection_id": "pgmaint_target",
                            "pool": "pgmaint_target",
                            "tables": [table],
                        },
                        {"name": "second", "connection_id": "pgmaint_second", "state_schema": state, "tables": [table]},
                    ],
                }
            )
        )
        monkeypatch.setenv("PGMAINT_CONFIG", str(path))
        dag = _dag()
        for task_id in ("migrate", "gate_before_cleanup", "finish", "gate_after_cleanup"):
            assert dag.get_task(f"first.{task_id}").pool == "pgmaint_target", task_id
            assert dag.get_task(f"second.{task_id}").pool == "pgmaint_second", task_id
        assert dag.get_task("resume_writers").upstream_task_ids == {
            "open_window",
            "first.migrate",
            "second.migrate",
        }

        run = dag.test(run_conf={"table": f"second/{scratch_schema}.ev", "batch_rows": 1000})

        tis = {ti.task_id: ti for ti in run.get_task_instances()}
        states = {task_id: ti.state for task_id, ti in tis.items()}
        assert run.state == "success", states
        assert states["to_target"] == "success" and states["resume_writers"] == "success"
        for task_id in ("migrate", "gate_before_cleanup", "finish", "gate_after_cleanup"):
            assert states[f"second.{task_id}"] == "success" and states[f"first.{task_id}"] == "skipped", task_id
        assert tis["second.migrate"].pool == "pgmaint_second" and tis["second.finish"].pool == "pgmaint_second"
        with connect(second_dsn) as conn:
            assert fingerprint(conn, scratch_schema) == second_before
            moved = conn.execute(
                sql.SQL("SELECT phase, rows_moved FROM {}.migrations").format(sql.Identifier(state))
            ).fetchall()
            journal = conn.execute(
                sql.SQL("SELECT DISTINCT table_name, dag_run_id, task_id FROM {}.runs").format(sql.Identifier(state))
            ).fetchall()
            left = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(scratch_schema, "ev_default"))
            ).fetchone()[0]
        assert journal == [(f"{scratch_schema}.ev", run.run_id, "second.migrate")], journal
        assert moved == [("done", 3_002)] and left == 2  # only the two rows outside the window stay
        with connect(pg_dsn) as conn:  # the first target's table: untouched, no journal
            assert fingerprint(conn, scratch_schema) == first_before
            assert not table_exists(conn, scratch_schema, "migrations")
            assert (
                conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(scratch_schema, "ev_default"))
                ).fetchone()[0]
                == 2_002
            )

        # The table's group fails while the other group is skipped: the run fails (its last tasks did not succeed).
        # The rows left in the DEFAULT, moved too, need a key the table no longer has: the move refuses it.
        with connect(second_dsn) as conn:
            [pkey] = conn.execute(
                "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
                [f"{scratch_schema}.ev"],
            ).fetchone()
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(scratch_schema, "ev"), sql.Identifier(pkey)
                )
            )
        failed = dag.test(run_conf={"table": f"second/{scratch_schema}.ev", "move_out_of_window": True})
        states = {ti.task_id: ti.state for ti in failed.get_task_instances()}
        assert failed.state == "failed", states
        assert states["second.migrate"] == "failed" and states["second.gate_after_cleanup"] == "upstream_failed"
        assert states["first.gate_after_cleanup"] == "skipped" and states["resume_writers"] == "success", states
    finally:
        drop_second()
