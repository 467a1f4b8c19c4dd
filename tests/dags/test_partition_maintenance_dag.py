"""The partition_maintenance DAG: parses cleanly, rejects bad config at import, runs end to end with dag.test()."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from psycopg import sql

from include.pgmaint.db import connect
from tests.integration.helpers import add_partition, make_table, partitions, table_exists
from tests.wall_clock import wall_today

REPO = Path(__file__).resolve().parents[2]
# dag.test() runs on the real clock, so tables are built around the real today.
DAG_FILE = REPO / "dags" / "partition_maintenance.py"


def _dagbag(path: Path = DAG_FILE):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(path))  # 3.3.2: no include_examples argument (apache/airflow#70283)


def test_every_dag_file_imports_without_errors():
    bag = _dagbag(REPO / "dags")
    assert bag.import_errors == {}
    dag = bag.dags["partition_maintenance"]
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert set(dag.params.keys()) == {"dry_run", "tables", "as_of"}
    assert dag.doc_md and "What stops it" in dag.doc_md
    assert (
        dag.get_task("table.premake").pool == "pgmaint_target" and dag.get_task("table.retire").pool == "pgmaint_target"
    )
    assert [o.name for o in dag.get_task("table.request_migration").outlets] == ["pgmaint_default_rows"]
    chain = [
        "plan",
        "table.premake",
        "table.gate_before_retire",
        "table.retire",
        "table.gate_after_retire",
        "summarize",
    ]
    for upstream, downstream in zip(chain, chain[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids


def test_dag_file_parses_without_database_or_heavy_imports():
    """Parse in a fresh interpreter with the target pointing nowhere: no socket may be opened."""
    probe = f"""
import socket, sys, runpy
def refuse(*a, **k): raise AssertionError("network connection attempted during DAG parse")
socket.socket.connect = refuse
import airflow.sdk
runpy.run_path({str(DAG_FILE)!r})
heavy = [m for m in ("psycopg", "great_expectations", "include.pgmaint.db", "include.pgmaint.maintenance") if m in sys.modules]
assert not heavy, heavy
print("ok")
"""
    env = {**os.environ, "AIRFLOW_CONN_PGMAINT_TARGET": '{"conn_type": "postgres", "host": "192.0.2.1"}'}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"interval": "2 days"}, "tables[0].interval: '2 days' is not a supported interval"),
        ({"premake": 0}, "tables[0].premake: must be at least 1"),
        ({"name": "request_log"}, "tables[0].name: 'request_log' is not a schema-qualified table name"),
        ({"bogus": 1}, "tables[0]: unknown key(s) 'bogus'"),
    ],
)
def test_invalid_config_is_an_import_error_naming_the_field(tmp_path, monkeypatch, change, expected):
    raw = yaml.safe_load((REPO / "include" / "config" / "pgmaint.yaml").read_text())
    raw["tables"][0].update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PGMAINT_CONFIG", str(path))
    bag = _dagbag()
    assert "partition_maintenance" not in bag.dags
    [message] = bag.import_errors.values()
    assert expected in message


def test_invalid_config_shows_in_list_import_errors(tmp_path, airflow_db):
    path = tmp_path / "bad.yaml"
    path.write_text("tables:\n  - name: public.x\n    partition_key: ts\n    interval: 1 fortnight\n    premake: 2\n")
    env = {**os.environ, "PGMAINT_CONFIG": str(path), "PGMAINT_AIRFLOW_HOME": os.environ["AIRFLOW_HOME"]}
    airflow = str(REPO / "scripts" / "airflow")
    # The DAG processor records import errors; `dags reserialize` does the same parse from the CLI.
    subprocess.run([airflow, "dags", "reserialize"], env=env, capture_output=True, text=True, timeout=300)
    out = subprocess.run([airflow, "dags", "list-import-errors"], env=env, capture_output=True, text=True, timeout=300)
    assert "tables[0].interval: '1 fortnight' is not a supported interval" in out.stdout + out.stderr, (
        out.stdout + out.stderr
    )


@pytest.fixture
def dag_config(tmp_path, monkeypatch, scratch_schema):
    def write(tables: list[dict], services: list[dict] | None = None) -> None:
        raw = {"state_schema": scratch_schema, "tables": tables, **({"services": services} if services else {})}
        path = tmp_path / "pgmaint.yaml"
        path.write_text(yaml.safe_dump(raw))
        monkeypatch.setenv("PGMAINT_CONFIG", str(path))

    return write


def _entry(schema: str, name: str) -> dict:
    return {
        "name": f"{schema}.{name}",
        "partition_key": "ts",
        "interval": "1 day",
        "premake": 2,
        "retention": "30 days",
    }


def _states(dag_run) -> dict[str, str]:
    return {
        f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: ti.state
        for ti in dag_run.get_task_instances()
    }


def test_dag_run_maintains_every_table(airflow_db, pg_dsn, scratch_schema, dag_config):
    with connect(pg_dsn) as conn:
        make_table(conn, scratch_schema, "a", days=range(-40, 0), anchor=wall_today())
        make_table(conn, scratch_schema, "b", days=range(-30, 0), default=False, anchor=wall_today())
    dag_config([_entry(scratch_schema, "a"), _entry(scratch_schema, "b")])
    dag = _dagbag().dags["partition_maintenance"]

    dry = dag.test(run_conf={"dry_run": True})
    assert dry.state == "success", _states(dry)
    with connect(pg_dsn) as conn:
        assert not table_exists(conn, scratch_schema, "runs")  # dry run wrote nothing
    said = _xcom(dry, "summarize", map_index=-1)  # what the dry run says it would do, not "nothing to do"
    assert said["would_retire"][f"{scratch_schema}.a"][0] == "a_old_60" and len(said["would_create"]) == 2
    assert not said["created"] and not said["retired"]

    # A fresh parse: dag.test(run_conf=...) leaves the conf in the in-process DAG's params.
    run = _dagbag().dags["partition_maintenance"].test()

    assert run.state == "success", _states(run)
    states = _states(run)
    assert states.pop("plan") == "success" and states.pop("summarize") == "success"
    requests = {k: states.pop(k) for k in list(states) if k.startswith("table.request_migration")}
    assert set(requests.values()) == {"skipped"}  # nothing waits in a DEFAULT
    assert set(states.values()) == {"success"} and len(states) == 2 * 4  # two tables x (premake, gate, retire, gate)
    with connect(pg_dsn) as conn:
        a, b = partitions(conn, scratch_schema, "a"), partitions(conn, scratch_schema, "b")
        journal = conn.execute(
            sql.SQL("SELECT DISTINCT table_name, outcome, dag_id FROM {}.runs ORDER BY table_name").format(
                sql.Identifier(scratch_schema)
            )
        ).fetchall()
    assert len([n for n in a if n.startswith("a_p")]) == 3 and "a_old_69" not in a  # runway made, expired gone
    assert len([n for n in b if n.startswith("b_p")]) == 3
    assert journal == [
        (f"{scratch_schema}.a", "success", "partition_maintenance"),
        (f"{scratch_schema}.b", "success", "partition_maintenance"),
    ]


def test_one_failing_table_fails_the_run_but_not_the_others(airflow_db, pg_dsn, scratch_schema, dag_config):
    with connect(pg_dsn) as conn:
        # the retention window is complete
        make_table(conn, scratch_schema, "good", days=range(-30, 0), anchor=wall_today())
    dag_config([_entry(scratch_schema, "missing"), _entry(scratch_schema, "good")])
    dag = _dagbag().dags["partition_maintenance"]

    run = dag.test()

    assert run.state == "failed"
    states = _states(run)
    assert states["table.premake[0]"] == "failed" and states["table.premake[1]"] == "success"
    assert states["table.retire[0]"] == "upstream_failed" and states["table.retire[1]"] == "success"
    assert states["summarize"] == "failed"
    with connect(pg_dsn) as conn:
        # despite the other failure
        assert len([n for n in partitions(conn, scratch_schema, "good") if n.startswith("good_p")]) == 3


def test_tables_param_limits_the_run_and_rejects_unknown_names(airflow_db, pg_dsn, scratch_schema, dag_config):
    with connect(pg_dsn) as conn:
        make_table(conn, scratch_schema, "a", days=range(-30, 0), anchor=wall_today())
        make_table(conn, scratch_schema, "b", days=range(-30, 0), anchor=wall_today())
    dag_config([_entry(scratch_schema, "a"), _entry(scratch_schema, "b")])
    dag = _dagbag().dags["partition_maintenance"]

    run = dag.test(run_conf={"tables": [f"{scratch_schema}.b"]})

    assert run.state == "success", _states(run)
    with connect(pg_dsn) as conn:
        assert len(partitions(conn, scratch_schema, "a")) == 30 + 1  # untouched: thirty days and the DEFAULT
        assert len(partitions(conn, scratch_schema, "b")) == 30 + 1 + 3
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError):
        dag.test(run_conf={"tables": ["public.x; DROP TABLE a"]})


def _xcom(dag_run, task_id: str, key: str = "return_value", map_index: int = 0):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(
                run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key=key, map_indexes=map_index
            )
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def _task_instance(dag_run, task_id: str, map_index: int = 0):
    return next(ti for ti in dag_run.get_task_instances() if ti.task_id == task_id and ti.map_index == map_index)


def test_retire_gate_runs_when_premake_has_nothing_to_do(airflow_db, pg_dsn, scratch_schema, dag_config):
    """The steady state (issue 15, item 1): the runway is complete, so premake has nothing to do, while
    partitions are due to retire. The gate must run (and finish) before anything is detached or dropped."""
    with connect(pg_dsn) as conn:
        make_table(conn, scratch_schema, "ev", days=range(-33, 3), anchor=wall_today())  # today and 2 ahead exist
    dag_config([_entry(scratch_schema, "ev")])

    run = _dagbag().dags["partition_maintenance"].test()

    assert run.state == "success", _states(run)
    premade = _xcom(run, "table.premake")
    assert premade["created"] == [] and premade["detached"] == []  # premake: nothing to do
    gate = _xcom(run, "table.gate_before_retire")
    assert not isinstance(gate.get("skipped"), str), gate  # a skipped gate returns {"skipped": "<why>"}
    assert (
        gate["success"] is True
        and gate["evaluated"] >= 2
        and {e["check"] for e in gate["expectations"]} >= {"contiguity"}
    )
    retired = _xcom(run, "table.retire")
    assert retired["dropped"] == ["ev_old_67", "ev_old_68", "ev_old_69"]
    checked, dropped = _task_instance(run, "table.gate_before_retire"), _task_instance(run, "table.retire")
    assert checked.end_date <= dropped.start_date  # the gate ran, and before the drop


def test_a_failing_retire_gate_stops_the_drop_when_premake_has_nothing_to_do(
    airflow_db, pg_dsn, scratch_schema, dag_config
):
    """Same steady state, but the DEFAULT hides a row without a key: the gate fails and nothing is dropped."""
    s = sql.Identifier
    with connect(pg_dsn) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (ts timestamptz, payload text) PARTITION BY RANGE (ts)").format(
                s(scratch_schema, "ev")
            )
        )
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
                s(scratch_schema, "ev_default"), s(scratch_schema, "ev")
            )
        )
        for d in range(-33, 3):
            lo = wall_today() + timedelta(days=d)
            add_partition(conn, scratch_schema, "ev", lo, lo + timedelta(days=1), f"ev_old_{d + 100}")
        conn.execute(sql.SQL("INSERT INTO {} (ts, payload) VALUES (NULL, 'no key')").format(s(scratch_schema, "ev")))
    dag_config([_entry(scratch_schema, "ev")])

    run = _dagbag().dags["partition_maintenance"].test()

    states = _states(run)
    assert states["table.gate_before_retire[0]"] == "failed" and states["table.retire[0]"] == "upstream_failed", states
    with connect(pg_dsn) as conn:
        assert {"ev_old_67", "ev_old_68", "ev_old_69"} <= set(partitions(conn, scratch_schema, "ev"))


def test_as_of_param_creates_what_that_moment_needs_and_backfill_runs_use_their_logical_date(
    airflow_db, pg_dsn, scratch_schema, dag_config
):
    with connect(pg_dsn) as conn:
        make_table(conn, scratch_schema, "ev", days=range(-30, 3), anchor=wall_today())
    dag_config([_entry(scratch_schema, "ev")])
    ahead = wall_today() + timedelta(days=20)

    run = _dagbag().dags["partition_maintenance"].test(run_conf={"as_of": ahead.isoformat()})

    assert run.state == "success", _states(run)
    assert _xcom(run, "table.premake")["created"] == [f"ev_p{ahead + timedelta(days=d):%Y%m%d}" for d in range(3)]
    assert _xcom(run, "plan", "result", -1)["as_of"] == ahead.isoformat()  # the moment the run planned for
    from airflow.sdk.definitions.param import ParamValidationError

    try:  # refused by the Param's date-time format when a format checker is installed, else by the task
        bad = _dagbag().dags["partition_maintenance"].test(run_conf={"as_of": "next tuesday"})
    except ParamValidationError:
        pass
    else:
        assert _states(bad)["plan"] == "failed" and "as_of: 'next tuesday'" in _xcom(bad, "plan", "result", -1)["error"]

    from types import SimpleNamespace

    from include.pgmaint.airflow.tasks import resolve_as_of

    backfill = SimpleNamespace(run_type=SimpleNamespace(value="backfill"), logical_date=ahead)
    scheduled = SimpleNamespace(run_type=SimpleNamespace(value="scheduled"), logical_date=ahead)
    assert resolve_as_of({"as_of": None}, backfill) == ahead and resolve_as_of({"as_of": None}, scheduled) is None


# --- plan once, map only the tables with work (issue 16) ---------------------------------------


def _healthy(conn, schema: str, name: str) -> None:
    make_table(conn, schema, name, days=range(-30, 3), anchor=wall_today())  # the whole managed window, nothing expired


def _mapped(dag_run, task_id: str) -> dict[int, tuple[str, str]]:
    """map index -> (rendered name, state) of a mapped task's instances (map index >= 0 only)."""
    return {
        ti.map_index: (ti.rendered_map_index, ti.state)
        for ti in dag_run.get_task_instances()
        if ti.task_id == task_id and ti.map_index >= 0
    }


def _journal(pg_dsn: str, schema: str, dag_run) -> dict[str, tuple[str, str]]:
    with connect(pg_dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT table_name, outcome, task_id FROM {}.runs WHERE dag_run_id = %s").format(
                sql.Identifier(schema)
            ),
            [dag_run.run_id],
        ).fetchall()
    return {t: (o, task) for t, o, task in rows}


def _gate_ran_before_every_retire(dag_run, prefix: str = "") -> int:
    """Every retire that ran was preceded, for its table, by a gate_before_retire that finished first."""
    tis = {(ti.task_id, ti.map_index): ti for ti in dag_run.get_task_instances()}
    checked = 0
    for (task_id, i), ti in tis.items():
        if task_id == f"{prefix}table.retire" and i >= 0 and ti.state == "success":
            gate = tis[(f"{prefix}table.gate_before_retire", i)]
            assert gate.state == "success" and gate.end_date <= ti.start_date, (i, gate.state)
            checked += 1
    return checked


def test_all_healthy_tables_get_no_table_tasks_and_one_journal_write(airflow_db, pg_dsn, scratch_schema, dag_config):
    names = [f"h{i}" for i in range(4)]
    with connect(pg_dsn) as conn:
        for n in names:
            _healthy(conn, scratch_schema, n)
    dag_config([_entry(scratch_schema, n) for n in names])

    run = _dagbag().dags["partition_maintenance"].test()

    assert run.state == "success", _states(run)
    states = _states(run)
    assert states.pop("plan") == "success" and states.pop("summarize") == "success"
    assert set(states) == {
        f"table.{t}" for t in ("premake", "request_migration", "gate_before_retire", "retire", "gate_after_retire")
    }  # no mapped instance: one unexpanded each
    assert set(states.values()) == {"skipped"}, states
    planned = _xcom(run, "plan", "result", -1)
    assert planned["work"] == [] and planned["healthy"] == 4 and planned["journalled"] == 4
    assert {t["status"] for t in planned["tables"].values()} == {"healthy"}
    # the watchdog's cadence check still finds every table checked, by this run
    assert _journal(pg_dsn, scratch_schema, run) == {f"{scratch_schema}.{n}": ("success", "plan") for n in names}
    said = _xcom(run, "summarize", map_index=-1)
    assert said["tables"] == 4 and said["healthy"] == 4 and not said["failed"]


def test_only_the_tables_with_work_are_mapped_and_each_retire_is_gated(airflow_db, pg_dsn, scratch_schema, dag_config):
    with connect(pg_dsn) as conn:
        for n in ("h0", "h1", "h2"):
            _healthy(conn, scratch_schema, n)
        make_table(conn, scratch_schema, "runway", days=range(-30, 0), anchor=wall_today())  # no partition for today
        # three days past retention
        make_table(conn, scratch_schema, "expired", days=range(-33, 3), anchor=wall_today())
    dag_config([_entry(scratch_schema, n) for n in ("h0", "runway", "h1", "expired", "h2")])

    run = _dagbag().dags["partition_maintenance"].test()

    assert run.state == "success", _states(run)
    work = [f"{scratch_schema}.runway", f"{scratch_schema}.expired"]
    assert _xcom(run, "plan", "result", -1)["work"] == work
    for task in ("premake", "gate_before_retire", "retire", "gate_after_retire"):
        assert _mapped(run, f"table.{task}") == {0: (work[0], "success"), 1: (work[1], "success")}, task
    assert _gate_ran_before_every_retire(run) == 2
    assert _xcom(run, "table.retire", "result", 1)["dropped"] == ["expired_old_67", "expired_old_68", "expired_old_69"]
    journal = _journal(pg_dsn, scratch_schema, run)
    assert {t: o for t, (o, _) in journal.items()} == {
        f"{scratch_schema}.{n}": "success" for n in ("h0", "h1", "h2", "runway", "expired")
    }
    assert journal[f"{scratch_schema}.h1"][1] == "plan" and journal[work[0]][1].startswith("table.")
    said = _xcom(run, "summarize", map_index=-1)
    assert said["tables"] == 5 and said["healthy"] == 3 and set(said["created"]) == {work[0]}


def test_a_failing_table_among_many_fails_the_run_naming_it(airflow_db, pg_dsn, scratch_schema, dag_config):
    with connect(pg_dsn) as conn:
        for n in ("h0", "h1", "h2", "h3"):
            _healthy(conn, scratch_schema, n)
        make_table(conn, scratch_schema, "runway", days=range(-30, 0), anchor=wall_today())
    dag_config([_entry(scratch_schema, n) for n in ("h0", "h1", "missing", "h2", "runway", "h3")])

    run = _dagbag().dags["partition_maintenance"].test()

    assert run.state == "failed"
    missing, runway = f"{scratch_schema}.missing", f"{scratch_schema}.runway"
    planned = _xcom(run, "plan", "result", -1)
    assert planned["work"] == [missing, runway] and planned["tables"][missing]["status"] == "failed"
    assert "does not exist" in planned["tables"][missing]["why"] or "not" in planned["tables"][missing]["why"]
    assert _mapped(run, "table.premake") == {0: (missing, "failed"), 1: (runway, "success")}
    states = _states(run)
    assert states["plan"] == "success" and states["summarize"] == "failed"
    with connect(pg_dsn) as conn:
        assert len([n for n in partitions(conn, scratch_schema, "runway") if n.startswith("runway_p")]) == 3
        failures = [
            k
            for (k,) in conn.execute(
                sql.SQL("SELECT key FROM {}.conditions WHERE resolved_at IS NULL").format(
                    sql.Identifier(scratch_schema)
                )
            ).fetchall()
            if k.startswith("task:")
        ]
    assert failures == [f"task:partition_maintenance.table.premake:{missing}"]  # named, by the failed task's callback
    assert {t for t, (o, _) in _journal(pg_dsn, scratch_schema, run).items() if o == "success"} == {
        f"{scratch_schema}.{n}" for n in ("h0", "h1", "h2", "h3", "runway")
    }


def test_tables_waiting_for_migration_and_skipped_tables_reach_the_summary_with_what_to_do(
    airflow_db, pg_dsn, scratch_schema, dag_config
):
    """Plan statuses besides work/healthy: `needs_migration` (today's rows sit in the DEFAULT, every other partition
    exists) — mapped to request the migration with `auto_migrate`, else only listed with the command to run — and
    `skipped` (pg_partman maintains the table), listed with its reason. Neither is premade nor retired."""
    with connect(pg_dsn) as conn:
        for name in ("waits", "auto"):
            make_table(conn, scratch_schema, name, days=[d for d in range(-30, 3) if d != 0], anchor=wall_today())
            conn.execute(
                sql.SQL("INSERT INTO {} (ts, payload) VALUES (%s, 'late')").format(
                    sql.Identifier(scratch_schema, name)
                ),
                [wall_today()],
            )
        make_table(conn, scratch_schema, "partman", days=range(-30, 0), anchor=wall_today())  # would need a runway
    waits, auto, partman = (f"{scratch_schema}.{n}" for n in ("waits", "auto", "partman"))
    today = f"{wall_today():%Y%m%d}"
    dag_config(
        [
            _entry(scratch_schema, "waits"),
            {**_entry(scratch_schema, "auto"), "auto_migrate": True},
            {**_entry(scratch_schema, "partman"), "maintained_by": "pg_partman", "writers": ["partman"]},
        ],
        services=[{"name": "partman", "kind": "pg_partman"}],
    )

    run = _dagbag().dags["partition_maintenance"].test()

    assert run.state == "success", _states(run)
    planned = _xcom(run, "plan", "result", -1)
    assert planned["work"] == [auto]  # only the auto_migrate table is mapped: to request its migration
    assert planned["tables"][waits]["status"] == "needs_migration"
    assert planned["tables"][waits]["create"] == [] and len(planned["tables"][waits]["needs_migration"]) == 1
    assert planned["tables"][auto]["status"] == "work"
    assert planned["tables"][partman] == {
        "status": "skipped",
        "why": f"maintained_by: pg_partman (pg_partman premakes and retires {partman}; pgmaint only migrates and watches)",
    }
    assert _mapped(run, "table.premake") == {0: (auto, "success")}
    assert _mapped(run, "table.request_migration") == {0: (auto, "success")}
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.execute(
            select(AssetModel.name, AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetEvent.source_dag_id == "partition_maintenance", AssetEvent.source_run_id == run.run_id)
        ).all()
    assert [tuple(e) for e in events] == [("pgmaint_default_rows", {"table": auto})]  # the waiting one is not asked for

    said = _xcom(run, "summarize", map_index=-1)
    assert said["tables"] == 3 and said["healthy"] == 0 and not said["failed"] and not said["created"]
    assert said["needs_migration"] == {waits: [f"waits_p{today}"], auto: [f"auto_p{today}"]}
    assert said["skipped"] == {partman: f"premake: {planned['tables'][partman]['why']}"}
    [waiting] = planned["results"][waits]["needs_migration"]  # what the summary's line tells to do, not asked for
    assert waiting["requested"] is False and waiting["trigger"] == (
        f'scripts/airflow dags trigger default_partition_migration --conf \'{{"table": "{waits}"}}\''
    )
    with connect(pg_dsn) as conn:
        # nothing created over the DEFAULT's rows, and pg_partman's table left alone (its runway is still missing)
        assert f"waits_p{today}" not in partitions(conn, scratch_schema, "waits")
        assert len(partitions(conn, scratch_schema, "partman")) == 30 + 1
    assert {t: o for t, (o, _) in _journal(pg_dsn, scratch_schema, run).items()} == {
        waits: "success",
        auto: "success",
        partman: "skipped",
    }


def test_two_targets_one_down_the_other_is_maintained_and_the_run_names_the_down_one(
    airflow_db, pg_dsn, scratch_schema, tmp_path, monkeypatch
):
    from airflow.models.pool import Pool

    with connect(pg_dsn) as conn:
        # runway missing and three expired
        make_table(conn, scratch_schema, "ev", days=range(-33, 0), anchor=wall_today())
        _healthy(conn, scratch_schema, "calm")
    monkeypatch.setenv(
        "AIRFLOW_CONN_PGMAINT_DOWN",
        '{"conn_type": "postgres", "host": "127.0.0.1", "port": 9, '
        '"login": "nobody", "schema": "nothing", "extra": {"connect_timeout": "2"}}',
    )
    Pool.create_or_update_pool("pgmaint_down", 2, "test: the target that is down", False)
    same = [_entry(scratch_schema, "ev"), _entry(scratch_schema, "calm")]  # the same names on both targets
    raw = {
        "state_schema": scratch_schema,
        "targets": [
            {"name": "up", "connection_id": "pgmaint_target", "pool": "pgmaint_target", "tables": same},
            {"name": "down", "connection_id": "pgmaint_down", "tables": same},
        ],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PGMAINT_CONFIG", str(path))
    dag = _dagbag().dags["partition_maintenance"]
    assert (
        dag.get_task("up.table.premake").pool == "pgmaint_target"
        and dag.get_task("down.table.premake").pool == "pgmaint_down"
    )
    assert dag.get_task("down.plan").pool == "pgmaint_down"
    assert dag.params.get_param("tables").schema["items"]["enum"] == [
        f"{t}/{scratch_schema}.{n}" for t in ("up", "down") for n in ("ev", "calm")
    ]

    run = dag.test()

    assert run.state == "failed"
    states = _states(run)
    assert states["up.plan"] == "success" and states["down.plan"] == "failed" and states["summarize"] == "failed"
    assert _mapped(run, "up.table.premake") == {0: (f"up/{scratch_schema}.ev", "success")}
    assert states["down.table.premake"] == "upstream_failed"
    assert _gate_ran_before_every_retire(run, "up.") == 1
    assert "target down (connection pgmaint_down): cannot plan" in _xcom(run, "down.plan", "result", -1)["error"]
    with connect(pg_dsn) as conn:
        parts = partitions(conn, scratch_schema, "ev")
    assert len([n for n in parts if n.startswith("ev_p")]) == 3 and "ev_old_67" not in parts
