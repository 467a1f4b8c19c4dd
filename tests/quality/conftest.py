"""Fixtures for the data-quality gate tests: healthy tables built by pgmaint's own maintenance."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from include.pgmaint.db import connect
from include.pgmaint.maintenance import run_maintenance
from tests.integration.helpers import config_for, table_entry

# Catalog checks take `now`: a fixed moment the night before US DST ends (2026-11-01 07:00 UTC),
# so the America/Chicago variants cross a 25-hour day inside the premake horizon.
NOW = datetime(2026, 10, 31, 15, 0, tzinfo=timezone.utc)
RETENTION_DAYS = 3
PREMAKE = 4
KEY_TYPES = {"timestamptz": "timestamp with time zone", "timestamp": "timestamp without time zone", "date": "date"}


@pytest.fixture
def conn(pg_dsn):
    with connect(pg_dsn) as c:
        yield c


@pytest.fixture(scope="session", autouse=True)
def gx_warm():
    """Import Great Expectations once per session (~3 s), so no single test carries the cost."""
    from include.pgmaint.quality.runner import import_gx

    import_gx()


def create_parent(conn, schema: str, name: str = "ev", *, key_type: str = "timestamptz", nullable: bool = False,
                  default: bool = True, primary_key: bool = False) -> None:
    parent = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY, ts {} {}, payload text{}) "
                         "PARTITION BY RANGE (ts)").format(parent, sql.SQL(key_type),
                                                           sql.SQL("" if nullable else "NOT NULL"),
                                                           sql.SQL(", PRIMARY KEY (id, ts)" if primary_key else "")))
    conn.execute(sql.SQL("CREATE INDEX ON {} (ts)").format(parent))
    if default:
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(sql.Identifier(schema, f"{name}_default"), parent))


def healthy_table(conn, schema: str, name: str = "ev", *, key_type: str = "timestamptz", tz: str = "UTC",
                  nullable: bool = False, default: bool = True, retention: str | None = f"{RETENTION_DAYS} days",
                  rows_per_day: int = 10, now: datetime = NOW):
    """A table in the state pgmaint's maintenance leaves it in: partitions from the retention cutoff to the
    premake horizon (made by run_maintenance, aligned in `tz`), rows in them, an empty DEFAULT. Returns the config."""
    create_parent(conn, schema, name, key_type=key_type, nullable=nullable, default=default)
    entry = table_entry(schema, name, premake=PREMAKE, retention=retention)
    cfg = config_for(schema, [entry], timezone=tz)
    for days_back in (RETENTION_DAYS, 0):  # the past window first, then today's runway
        [result] = run_maintenance(conn, cfg, now=now - timedelta(days=days_back))
        assert result.outcome == "success", result.errors
    conn.execute(sql.SQL(
        "INSERT INTO {} (ts, payload) SELECT (%s::timestamptz + g * %s::interval) AT TIME ZONE 'UTC', 'row ' || g "
        "FROM generate_series(0, %s) g").format(sql.Identifier(schema, name)),
        [now - timedelta(days=RETENTION_DAYS - 1), timedelta(days=1) / rows_per_day, (RETENTION_DAYS + 2) * rows_per_day])
    default_rows = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema, f"{name}_default"))
                                ).fetchone()[0] if default else 0
    assert default_rows == 0
    return cfg


def partition_names(conn, schema: str, parent: str = "ev") -> list[str]:
    rows = conn.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                        "WHERE i.inhparent = to_regclass(%s) ORDER BY 1",
                        [sql.Identifier(schema, parent).as_string(None)]).fetchall()
    return [r[0] for r in rows]


def airflow_conn_json(dsn: str) -> str:
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    out = {"conn_type": "postgres", "host": params.get("host"), "login": params.get("user"),
           "password": params.get("password"), "schema": params.get("dbname")}
    if params.get("port"):
        out["port"] = int(params["port"])
    return json.dumps({k: v for k, v in out.items() if v is not None})
