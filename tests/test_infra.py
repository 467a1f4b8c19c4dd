"""Checks of the test/dev infrastructure itself: fixtures, devdb, settings loader."""

from __future__ import annotations

import json
import os
from pathlib import Path

import airflow_settings  # scripts/airflow_settings.py (on sys.path via conftest)
import devdb  # scripts/devdb.py
import pytest

REPO = Path(__file__).resolve().parent.parent


def test_airflow_env_is_isolated():
    home = Path(os.environ["AIRFLOW_HOME"])
    assert home.parent == REPO / ".pytest-airflow"
    assert os.environ["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO / "dags")
    assert os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"


def test_pg_conn_server_version(pg_conn):
    (version,) = pg_conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert version >= 140000
    assert pg_conn.autocommit


def test_scratch_schema_exists(pg_conn, scratch_schema):
    assert scratch_schema.startswith("t_") and len(scratch_schema) == 10
    row = pg_conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (scratch_schema,)).fetchone()
    assert row == (1,)


def test_airflow_connection_reaches_pg_dsn(airflow_db, pg_dsn):
    from airflow.models.pool import Pool
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from psycopg.conninfo import conninfo_to_dict

    hook = PostgresHook(postgres_conn_id="pgmaint_target")
    assert hook.get_first("SELECT current_database()")[0] == conninfo_to_dict(pg_dsn)["dbname"]
    assert Pool.get_pool("pgmaint_target").slots == 4


def test_devdb_conninfo_quotes_values():
    info = devdb.ServerInfo(pgdata=Path("/x"), socket_dir=Path("/tmp/a b"), port=5432, pid=1)
    assert info.conninfo("d") == "host='/tmp/a b' port=5432 user=postgres dbname=d"
    assert info.env()["PGMAINT_DEV_DB"] == "pgmaint_demo"


# --- scripts/airflow_settings.py -------------------------------------------------------


def _settings(tmp_path, text):
    path = tmp_path / "airflow_settings.yaml"
    path.write_text(text)
    return airflow_settings.load(path)


def test_repo_settings_file_loads():
    settings = airflow_settings.load()
    env = airflow_settings.env_exports(settings, environ={"PGMAINT_DEV_HOST": "/sock", "PGMAINT_DEV_PORT": "5433"})
    conn = json.loads(env["AIRFLOW_CONN_PGMAINT_TARGET"])
    assert conn["conn_type"] == "postgres"
    assert (conn["host"], conn["port"], conn["login"], conn["schema"]) == ("/sock", 5433, "postgres", "pgmaint_demo")
    assert "password" not in conn
    assert airflow_settings.pools_json(settings, environ={})["pgmaint_target"]["slots"] == 4


def test_settings_env_expansion_and_skips(tmp_path):
    settings = _settings(
        tmp_path,
        """
airflow:
  connections:
    - conn_id: a
      conn_type: http
      conn_host: ${H:-example.org}
      conn_extra: {k: "${K}"}
    - conn_id: set_already
      conn_type: postgres
      conn_host: ${UNSET_VAR}
    - conn_id: uri_only
      conn_uri: postgres://u@h/db
    - conn_id: astro_skips_me
  variables:
    - variable_name: greeting
      variable_value: hello ${WHO:-world}
    - variable_name: n
      variable_value: 3
""",
    )
    env = airflow_settings.env_exports(settings, environ={"K": "v", "AIRFLOW_CONN_SET_ALREADY": "x"})
    assert json.loads(env["AIRFLOW_CONN_A"]) == {"conn_type": "http", "host": "example.org", "extra": {"k": "v"}}
    assert env["AIRFLOW_CONN_URI_ONLY"] == "postgres://u@h/db"
    assert "AIRFLOW_CONN_SET_ALREADY" not in env and "AIRFLOW_CONN_ASTRO_SKIPS_ME" not in env
    assert env["AIRFLOW_VAR_GREETING"] == "hello world"
    assert env["AIRFLOW_VAR_N"] == "3"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("airflow:\n  pools:\n    - pool_name: p\n      pool_slot: four\n", "pool_slot: must be an integer"),
        ("airflow:\n  pools:\n    - pool_slot: 1\n", "pools[0].pool_name: required"),
        (
            "airflow:\n  connections:\n    - conn_id: c\n      conn_type: x\n      conn_port: abc\n",
            "conn_port: must be an integer",
        ),
        (
            "airflow:\n  connections:\n    - conn_id: c\n      conn_type: x\n      conn_host: ${NOPE}\n",
            "conn_host: environment variable NOPE is not set",
        ),
        ("airflow:\n  connections:\n    - conn_id: c\n      conn_typo: x\n", "unknown field(s) conn_typo"),
        ("airflow:\n  variables:\n    - variable_name: v\n", "variable_value: required"),
    ],
)
def test_settings_errors_name_the_field(tmp_path, text, message):
    with pytest.raises(airflow_settings.SettingsError, match=None) as err:
        settings = _settings(tmp_path, text)
        airflow_settings.env_exports(settings, environ={})
        airflow_settings.pools_json(settings, environ={})
    assert message in str(err.value)


def test_scripts_airflow_uses_the_session_home(airflow_db):
    import subprocess

    home = Path(os.environ["AIRFLOW_HOME"])
    log = home / "logs" / "scripts-airflow.log"  # written by the wrapper's own set-up commands only
    before = log.stat().st_mtime_ns if log.exists() else None
    env = {**os.environ, "PGMAINT_AIRFLOW_HOME": str(home)}
    out = subprocess.run(
        [str(REPO / "scripts" / "airflow"), "pools", "get", "pgmaint_target", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    [pool] = json.loads(out.stdout)
    assert pool["pool"] == "pgmaint_target" and int(pool["slots"]) == 4
    # airflow_db's markers spared the wrapper a second `db migrate` (and `pools get` reads no serialized DAG).
    assert (log.stat().st_mtime_ns if log.exists() else None) == before


def test_scripts_airflow_dags_list_on_a_fresh_metadata_db_lists_the_dags(tmp_path):
    """A fresh metadata DB has no serialized DAGs until a DAG processor runs: the wrapper
    reserializes first (and says so) instead of printing "No data found"; the second call does not."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__DATABASE__")}
    # dags list never connects to it
    env.update(PGMAINT_AIRFLOW_HOME=str(tmp_path / "home"), AIRFLOW_CONN_PGMAINT_TARGET="postgresql://nobody@/unused")
    command = [str(REPO / "scripts" / "airflow"), "dags", "list", "-o", "plain"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "No data found" not in first.stdout
    for dag_id in ("partition_maintenance", "default_partition_migration", "partition_watchdog"):
        assert dag_id in first.stdout
    assert "scripts/airflow: parsing dags/ into the metadata DB first" in first.stderr
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "partition_watchdog" in second.stdout
    assert "parsing dags/" not in second.stderr


def test_scripts_airflow_backfill_create_reads_the_dags_parsed_from_dags(tmp_path):
    """`backfill create` reads the serialized DAG (its schedule decides the runs): the wrapper parses dags/
    into the metadata DB first when this home has not, so it works without a running DAG processor and
    sees the current config. The dry run lists the runs and creates none: one per tick of the default
    15-minute schedule, both ends included."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__DATABASE__")}
    env.update(PGMAINT_AIRFLOW_HOME=str(tmp_path / "home"), AIRFLOW_CONN_PGMAINT_TARGET="postgresql://nobody@/unused")
    env.pop("PGMAINT_CONFIG", None)  # the demo config: schedules.maintenance */15
    out = subprocess.run(
        [
            str(REPO / "scripts" / "airflow"),
            "backfill",
            "create",
            "--dag-id",
            "partition_maintenance",
            "--from-date",
            "2026-11-01T00:00:00+00:00",
            "--to-date",
            "2026-11-01T01:00:00+00:00",
            "--dry-run",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "scripts/airflow: parsing dags/ into the metadata DB first" in out.stderr
    listed = [line.split("|")[1].strip() for line in out.stdout.splitlines() if line.startswith("| 2026-")]
    assert listed == [f"2026-11-01 {hm}:00+00:00" for hm in ("00:00", "00:15", "00:30", "00:45", "01:00")], out.stdout
