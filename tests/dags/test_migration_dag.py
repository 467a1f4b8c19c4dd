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
    assert set(dag.params.keys()) == {"table", "dry_run", "batch_rows", "max_minutes", "pause_services", "move_out_of_window"}
    assert dag.get_task("open_window").is_setup and dag.get_task("resume_writers").is_teardown
    order = ["resolve_table", "open_window", "pause_writers", "migrate", "resume_writers"]
    for upstream, downstream in zip(order, order[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids


@pytest.mark.parametrize("conf", [
    {"table": "public.not_configured"},
    {"table": "public.inbound_requests; DROP TABLE public.event_deltas"},
    {"table": "public.inbound_requests", "batch_rows": -5},
    {"table": "public.inbound_requests", "batch_rows": 0},
    {"table": "public.inbound_requests", "batch_rows": "1000; SELECT 1"},
    {"table": "public.inbound_requests", "max_minutes": 0},
    {"table": "public.inbound_requests", "dry_run": "yes"},
])
def test_bad_params_are_rejected_before_anything_runs(airflow_db, conf):
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError):
        _dag().test(run_conf=conf)
