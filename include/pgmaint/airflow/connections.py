"""Connection lookup: an Airflow connection id -> what the engine needs (a libpq conninfo, an API endpoint).

The engine never imports Airflow; where it must turn a connection id into a target (the writer
services' own databases, the escalation state), it calls this module at that moment.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Connection
from psycopg.conninfo import make_conninfo


def conninfo_from_airflow(conn_id: str) -> str:
    """libpq conninfo for an Airflow connection."""
    c = airflow_connection(conn_id)
    params: dict[str, Any] = {
        "host": c.host or None,
        "port": c.port or None,
        "user": c.login or None,
        "password": c.password or None,
        "dbname": c.schema or None,
    }
    extra = c.extra_dejson or {}
    for key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "target_session_attrs"):
        if key in extra:
            params[key] = extra[key]
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None})


def airflow_connection(conn_id: str) -> Connection:
    return Connection.get(conn_id)
