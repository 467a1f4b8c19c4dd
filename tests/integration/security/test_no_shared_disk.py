"""No shared local disk between tasks (issue 11, part 3): on Celery or Kubernetes the next task of
a run may start on another machine, so a task must never read a file another task wrote, and
pgmaint's tasks write no file at all outside Airflow's log folder.

How it is proven: one migration run and one maintenance run (gates included: Great Expectations
runs) go through dag.test() with a Python audit hook (sys.addaudithook) watching every file
open. dag.test() runs the tasks one after another in this process; `_run_task` is wrapped to
know which task is running. The hook records each open for writing (mode w/a/x/+, or O_WRONLY /
O_RDWR / O_CREAT) with the task that did it, and each open of a file some task wrote. The test
fails on any file written outside AIRFLOW_HOME/logs and on any file read by a task other than the
one that wrote it. Only Python-level opens are seen (open(), os.open, tempfile ...): the
in-process Airflow API's SQLite writes, done in C, are the metadata DB, not the tasks' disk.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]

_watch: dict = {"on": False, "task": None, "writes": {}, "events": []}
_lock = threading.Lock()
_hooked = False

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(event: str, args) -> None:
    if event != "open" or not _watch["on"] or _watch["task"] is None:
        return
    path, mode, flags = (list(args) + [None, None, None])[:3]
    if not isinstance(path, (str, bytes, os.PathLike)):
        return  # an fd or an opener's result
    path = os.path.abspath(os.fsdecode(path))
    writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        isinstance(flags, int) and flags & _WRITE_FLAGS
    )
    with _lock:
        _watch["events"].append((_watch["task"], path, "write" if writes else "read"))


def _install_hook() -> None:
    global _hooked
    if not _hooked:  # an audit hook cannot be removed: install once, switch with _watch["on"]
        sys.addaudithook(_audit)
        _hooked = True


def violations(events: list[tuple[str, str, str]], logs_dir: Path) -> list[str]:
    """Files written outside the log folder; files read by a task other than the one that wrote them."""
    found, writer = [], {}
    for task, path, kind in events:
        if kind == "write":
            if "__pycache__" in path or path == os.devnull:
                continue  # the interpreter's bytecode cache; /dev/null
            if not path.startswith(str(logs_dir) + os.sep):
                found.append(f"{task} wrote {path} (outside Airflow's log folder {logs_dir})")
            writer.setdefault(path, task)
        elif path in writer and writer[path] != task:
            found.append(f"{task} read {path}, which {writer[path]} wrote")
    return found


def test_the_hook_sees_a_handoff_through_the_disk(tmp_path):
    """What the DAG test below would report if a task left a file for another (here, two pretend tasks)."""
    import json
    import tempfile

    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    _install_hook()
    _watch.update(events=[], on=True, task="dag.produce")
    try:
        handoff = Path(tempfile.mkdtemp(dir=tmp_path)) / "handoff.json"
        handoff.write_text(json.dumps({"rows": 1}))
        (logs_dir / "produce.log").write_text("its own log: fine")
        _watch["task"] = "dag.consume"
        json.loads(handoff.read_text())
        (logs_dir / "produce.log").read_text()
        _watch["task"] = "dag.produce"
        handoff.read_text()  # its own file: fine
    finally:
        _watch.update(on=False, task=None)
    assert violations(_watch["events"], logs_dir) == [
        f"dag.produce wrote {handoff} (outside Airflow's log folder {logs_dir})",
        f"dag.consume read {handoff}, which dag.produce wrote",
        f"dag.consume read {logs_dir / 'produce.log'}, which dag.produce wrote",
    ]


def test_no_task_reads_a_file_another_task_wrote_and_none_writes_outside_the_logs(
    airflow_db, least_privilege, tmp_path, monkeypatch
):
    s = least_privilege
    config = {
        "state_schema": s.state,
        "services": [{"name": "api_logging", "kind": "flag"}],
        "tables": [
            {
                "name": s.table,
                "partition_key": "ts",
                "interval": "1 day",
                "premake": 2,
                "retention": "30 days",
                "writers": ["api_logging"],
            }
        ],
    }
    path = tmp_path / "pgmaint.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("PGMAINT_CONFIG", str(path))
    monkeypatch.setenv(
        "AIRFLOW_CONN_PGMAINT_TARGET", __import__("json").dumps({"conn_type": "postgres", **_airflow_fields(s.dsn())})
    )

    import airflow.sdk.definitions.dag as dag_module
    from airflow.dag_processing.dagbag import DagBag

    run_task = dag_module._run_task

    def run_one(*, ti, task, **kwargs):
        _watch["task"] = f"{ti.dag_id}.{ti.task_id}" + (f"[{ti.map_index}]" if ti.map_index >= 0 else "")
        try:
            return run_task(ti=ti, task=task, **kwargs)
        finally:
            _watch["task"] = None

    monkeypatch.setattr(dag_module, "_run_task", run_one)
    _install_hook()
    _watch.update(events=[], task=None, on=True)
    try:
        bag = DagBag(dag_folder=str(REPO / "dags"))
        migration = bag.dags["default_partition_migration"].test(run_conf={"table": s.table})
        maintenance = DagBag(dag_folder=str(REPO / "dags")).dags["partition_maintenance"].test()
    finally:
        _watch["on"] = False
    states = {ti.task_id: ti.state for run in (migration, maintenance) for ti in run.get_task_instances()}
    assert migration.state == "success" and maintenance.state == "success", states
    assert states["gate_before_cleanup"] == states["table.gate_before_retire"] == "success"

    events = list(_watch["events"])
    if os.environ.get("PGMAINT_DUMP_OPENS"):
        Path(os.environ["PGMAINT_DUMP_OPENS"]).write_text("\n".join(map(repr, events)))
    tasks = {task for task, _, _ in events}
    # it watched
    assert {"default_partition_migration.migrate", "partition_maintenance.table.retire[0]"} <= tasks, tasks
    logs_dir = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    assert violations(events, logs_dir) == []


def _airflow_fields(dsn: str) -> dict:
    from psycopg.conninfo import conninfo_to_dict

    p = conninfo_to_dict(dsn)
    return {
        k: v
        for k, v in {
            "host": p.get("host"),
            "port": int(p.get("port") or 5432),
            "login": p.get("user"),
            "password": p.get("password"),
            "schema": p.get("dbname"),
        }.items()
        if v is not None
    }
