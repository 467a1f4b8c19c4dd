"""gate_task: what an Airflow task running a gate returns, logs and raises."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from include.pgmaint.airflow.quality import DATA_DOCS_ENV, XCOM_KEY_ON_FAILURE, gate_task
from tests.fixtures.quality import airflow_conn_json, healthy_table, partition_names

pytestmark = [pytest.mark.pg, pytest.mark.usefixtures("gx_warm")]  # GX imported once per session
CONN_ID = "pgmaint_quality_test"
CHECKS = ["runway", "retention", "contiguity", "default_clean", "not_null_key"]


class FakeTI:
    def __init__(self):
        self.pushed = {}

    def xcom_push(self, key, value):
        json.dumps(value)  # XCom values must serialise
        self.pushed[key] = value


@pytest.fixture
def target(conn, pg_dsn, scratch_schema, monkeypatch):
    """A healthy table around the real clock (gate_task validates at the current time) and its Airflow connection."""
    cfg = healthy_table(conn, scratch_schema, now=datetime.now(timezone.utc))
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", airflow_conn_json(pg_dsn))
    monkeypatch.delenv(DATA_DOCS_ENV, raising=False)
    return replace(cfg, connection_id=CONN_ID)


def test_a_passing_gate_returns_a_small_summary(target, scratch_schema, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv(DATA_DOCS_ENV, str(tmp_path))
    caplog.set_level(logging.INFO)

    value = gate_task(target, f"{scratch_schema}.ev", "before_retire", CHECKS, ti=FakeTI())

    assert value["success"] is True and value["failures"] == [] and value["error_lines"] == []
    assert [e["check"] for e in value["expectations"]] == CHECKS
    assert len(json.dumps(value)) < 4000
    assert value["docs_path"] == str(tmp_path / f"{scratch_schema}.ev" / "before_retire" / "index.html")
    out, err = capsys.readouterr()
    # Where the lines end up (stdout through Airflow's structlog, or the log records) depends on
    # which tests configured logging before this one: look in both.
    logged = out + err + caplog.text
    assert f"Data Docs for gate before_retire: {value['docs_path']}" in logged
    assert "5 expectation(s) passed, 0 failed, 0 could not be evaluated" in logged
    # GX kept quiet
    assert "great_expectations" not in out + err + caplog.text and "Calculating Metrics" not in out + err


def test_a_data_failure_fails_the_task_without_retries_one_line_per_expectation(conn, target, scratch_schema):
    from airflow.sdk.exceptions import AirflowFailException

    future = [n for n in partition_names(conn, scratch_schema) if n != "ev_default"][-1]
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(scratch_schema, future)))
    conn.execute(
        sql.SQL("INSERT INTO {} (ts) VALUES (now() + interval '60 days')").format(sql.Identifier(scratch_schema, "ev"))
    )
    ti = FakeTI()

    with pytest.raises(AirflowFailException) as failed:
        gate_task(target, f"{scratch_schema}.ev", "after_retire", CHECKS, ti=ti)

    message = str(failed.value).splitlines()
    assert message[0] == (
        f"{scratch_schema}.ev: gate after_retire failed: 2 expectation(s) not met (data failure: not retried)"
    )
    assert message[1].startswith(f"{scratch_schema}.ev: at least 4 partitions exist ahead of now: expected ")
    assert "observed 1 problem(s): no partition for [" in message[1]
    assert message[2].startswith(
        f"{scratch_schema}.ev: the DEFAULT partition ev_default is empty: expected 0 rows, "
        "observed 1 problem(s): the DEFAULT partition ev_default holds 1 row(s)"
    )
    assert len(message) == 3
    assert ti.pushed[XCOM_KEY_ON_FAILURE]["success"] is False and len(ti.pushed[XCOM_KEY_ON_FAILURE]["failures"]) == 2


def test_a_connection_error_stays_retryable_and_says_so(target, scratch_schema, pg_dsn, monkeypatch):
    from airflow.sdk.exceptions import AirflowException

    port = int(conninfo_to_dict(pg_dsn).get("port") or 5432) + 1
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", airflow_conn_json(make_conninfo(pg_dsn, port=str(port))))

    with pytest.raises(RuntimeError) as raised:
        gate_task(target, f"{scratch_schema}.ev", "before_retire", CHECKS)

    assert not isinstance(raised.value, AirflowException)  # AirflowFailException would skip the retries
    assert "(retryable: SQL or connection error)" in str(raised.value)
    assert "could not read the catalog: OperationalError" in str(raised.value)
