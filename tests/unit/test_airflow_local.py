"""scripts/airflow_local.py (`make airflow`): what it prints when a launch fails, and which databases it names.

The launch itself (components, health, Ctrl-C, restart) is tests/e2e/test_make_airflow.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import airflow_local  # scripts/airflow_local.py (scripts/ is on sys.path, see tests/conftest.py)


def test_a_launch_that_times_out_says_so_and_what_was_not_healthy(tmp_path):
    d = airflow_local.Deployment(home=tmp_path)
    d.procs["scheduler"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        message = airflow_local.not_healthy(d, "not yet healthy: scheduler")
    finally:
        d.procs["scheduler"].kill()
        d.procs["scheduler"].wait()
    assert message.startswith(f"not healthy after {airflow_local.STARTUP_TIMEOUT} s (not yet healthy: scheduler)")
    assert str(d.log_dir) in message


def test_a_launch_whose_component_exited_names_it_with_the_end_of_its_log(tmp_path):
    d = airflow_local.Deployment(home=tmp_path)
    d.log_dir.mkdir(parents=True)
    (d.log_dir / "triggerer.log").write_text("starting\nTraceback: boom\n")
    d.procs["triggerer"] = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    d.procs["triggerer"].wait()

    message = airflow_local.not_healthy(d, "no answer yet")

    assert message.startswith("not healthy: triggerer exited with 3:\n") and "Traceback: boom" in message
    assert "after" not in message


def test_the_databases_line_names_the_embedded_ones_by_default():
    line = airflow_local.databases({})
    assert line == (
        "target DB: the embedded demo database (pgmaint_demo); metadata DB: database 'airflow' of the embedded PostgreSQL"
    )


def test_the_databases_line_names_the_configured_target_and_metadata_db_without_passwords():
    env = {
        "AIRFLOW_CONN_PGMAINT_TARGET": json.dumps(
            {
                "conn_type": "postgres",
                "host": "db.example",
                "port": 6432,
                "login": "pgmaint",
                "password": "Pw-1",
                "schema": "shop",
            }
        ),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://airflow:Pw-2@meta.example:5433/airflow_meta",
    }
    line = airflow_local.databases(env)
    assert "target DB: database 'shop' on db.example:6432 as pgmaint (AIRFLOW_CONN_PGMAINT_TARGET)" in line
    assert "metadata DB: postgresql+psycopg2://airflow:***@meta.example:5433/airflow_meta" in line
    assert "Pw-" not in line

    uri = {"AIRFLOW_CONN_PGMAINT_TARGET": "postgres://ops%40corp:Pw-3@%2Frun%2FPostgres:5432/Orders?sslmode=disable"}
    line = airflow_local.databases(uri)
    assert line.startswith(
        "target DB: database 'Orders' on /run/Postgres:5432 as ops@corp (AIRFLOW_CONN_PGMAINT_TARGET)"
    )
    assert "Pw-3" not in line
