"""Shared helpers for integration tests: build partitioned tables and configs in a scratch schema."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from psycopg import sql

from include.pgmaint.config import parse_config

NOW = datetime(2026, 11, 26, 10, 30, tzinfo=timezone.utc)
TODAY = NOW.replace(hour=0, minute=0)


def make_table(
    conn,
    schema: str,
    name: str,
    *,
    days: Iterable[int] = range(-3, 1),
    default: bool = True,
    key: str = "ts",
    key_type: str = "timestamptz",
    anchor: datetime = TODAY,
) -> None:
    """A daily range-partitioned table with partitions for `anchor + d` days, d in `days`."""
    parent = sql.Identifier(schema, name)
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY, {} {} NOT NULL, payload text, "
            "PRIMARY KEY (id, {})) PARTITION BY RANGE ({})"
        ).format(parent, sql.Identifier(key), sql.SQL(key_type), sql.Identifier(key), sql.Identifier(key))
    )
    conn.execute(sql.SQL("CREATE INDEX ON {} ({})").format(parent, sql.Identifier(key)))
    if default:
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(sql.Identifier(schema, f"{name}_default"), parent)
        )
    for d in days:
        lo = anchor + timedelta(days=d)
        add_partition(conn, schema, name, lo, lo + timedelta(days=1), f"{name}_old_{d + 100}")


def add_partition(conn, schema: str, parent: str, lo: datetime, hi: datetime, name: str) -> None:
    conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, name),
            sql.Identifier(schema, parent),
            sql.Literal(lo.isoformat()),
            sql.Literal(hi.isoformat()),
        )
    )


def config_for(schema: str, tables: list[dict], **top) -> object:
    raw = {"state_schema": schema, "tables": tables, **top}
    return parse_config(raw)


def table_entry(schema: str, name: str, **overrides) -> dict:
    entry = {
        "name": f"{schema}.{name}",
        "partition_key": "ts",
        "interval": "1 day",
        "premake": 2,
        "retention": "30 days",
    }
    entry.update(overrides)
    return entry


def partitions(conn, schema: str, parent: str) -> dict[str, str]:
    """{partition name: bound expression} as the catalog has them now."""
    rows = conn.execute(
        """SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = to_regclass(%s) ORDER BY 1""",
        [sql.Identifier(schema, parent).as_string(None)],
    ).fetchall()
    return dict(rows)


def table_exists(conn, schema: str, name: str) -> bool:
    return conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", [sql.Identifier(schema, name).as_string(None)]
    ).fetchone()[0]
