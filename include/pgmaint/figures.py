"""Row counts and order-independent checksums per partition interval ("figures").

A migration proves it lost and duplicated nothing by comparing, per interval bucket, the
count and the summed row hash of the rows before and after. The migration, its
verification and the data-quality gate all build their SQL here, so they compute the
same thing the same way.
"""

from __future__ import annotations

from psycopg import errors, sql

from include.pgmaint.catalog import TableFacts
from include.pgmaint.config import TableConfig


def bucket_expression(facts: TableFacts, cfg: TableConfig, tz: str, alias: str | None = None) -> sql.Composable:
    """The start of the partition interval a row's key falls in, computed by PostgreSQL."""
    key = sql.Identifier(alias, facts.key_column) if alias else sql.Identifier(facts.key_column)
    unit = sql.Literal(cfg.interval.unit)
    if facts.key_type == "timestamp with time zone":
        return sql.SQL("date_trunc({}, {}, {})").format(unit, key, sql.Literal(tz))
    return sql.SQL("date_trunc({}, {}::timestamp)").format(unit, key)  # wall-clock keys: their own clock


def checksum_method(conn, facts: TableFacts) -> str:
    """'record' when every column type can be hashed as a value (about 2.7x cheaper than hashing
    the row's text form), else 'text'. Probed on an all-NULL row: PostgreSQL looks up every
    column's hash function even for NULL values."""
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("SELECT hash_record_extended(json_populate_record(NULL::{}, '{{}}'), 0)").format(
                    sql.Identifier(facts.schema, facts.table)
                )
            )
        return "record"
    except errors.UndefinedFunction:
        return "text"


def checksum_expression(method: str, alias: str) -> sql.Composable:
    """Order-independent checksum term of one row (`sum()` it); `method` from the migration journal."""
    if method == "record":
        return sql.SQL("hash_record_extended({}, 0)").format(sql.Identifier(alias))
    if method == "text":
        return sql.SQL("hashtextextended({}::text, 0)").format(sql.Identifier(alias))
    raise ValueError(f"unknown checksum method {method!r}")


def figures_query(
    facts: TableFacts,
    cfg: TableConfig,
    tz: str,
    method: str,
    columns: list[str],
    relations: list[sql.Composable],
    where: sql.Composable | None = None,
) -> sql.Composable:
    """`bucket, rows, checksum` per interval over the rows of `relations` (ONLY each; those matching `where`).

    Rows are read as the same explicit column list from every relation, so a table whose
    physical column order differs (an attached partition, a detached old DEFAULT) hashes equal.
    """
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    filtered = sql.SQL("") if where is None else sql.SQL(" WHERE ") + where
    union = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {} FROM ONLY {}{}").format(cols, r, filtered) for r in relations
    )
    return sql.SQL(
        "SELECT coalesce({b}::text, 'NULL') AS bucket, count(*) AS rows, coalesce(sum({ck}), 0) AS checksum "
        "FROM ({u}) AS m GROUP BY 1"
    ).format(b=bucket_expression(facts, cfg, tz, alias="m"), ck=checksum_expression(method, "m"), u=union)


def table_columns(conn, facts: TableFacts) -> list[tuple[str, bool, bool]]:
    """(name, is_generated, is_identity_always) of the parent's columns, in order."""
    rows = conn.execute(
        """SELECT attname, attgenerated <> '', attidentity = 'a' FROM pg_attribute
           WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum""",
        [sql.Identifier(facts.schema, facts.table).as_string(None)],
    ).fetchall()
    return [(r[0], bool(r[1]), bool(r[2])) for r in rows]


__all__ = ["bucket_expression", "checksum_expression", "checksum_method", "figures_query", "table_columns"]
