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

# Zones without offset changes, where an hour, a day and a week always have the same length.
_UTC_NAMES = frozenset({"utc", "etc/utc", "gmt", "etc/gmt", "universal", "etc/universal", "zulu", "etc/zulu"})
# A Monday at midnight (1 January of the year 1, proleptic Gregorian, as PostgreSQL counts): the origin of `date_bin`
# buckets that fall where date_trunc's do (ISO weeks start on Monday). Before its origin date_bin misplaces a time
# that is exactly on a bucket's edge (PostgreSQL 15 and 16), hence the earliest origin and date_trunc for the rest.
_MONDAY = "0001-01-01 00:00:00"


def bucket_expression(facts: TableFacts, cfg: TableConfig, tz: str, alias: str | None = None) -> sql.Composable:
    """The start of the partition interval a row's key falls in, computed by PostgreSQL.

    Always the value of `date_trunc(unit, key, tz)` (the journal's buckets are its text). Where an interval has one
    fixed length (hours, days, ISO weeks, in UTC or on a wall-clock key) it is computed with `date_bin`, which
    gives the same value about three times cheaper: date_trunc with a time zone converts every row's time to
    that zone and back, which was about half the cost of counting a DEFAULT and of checking the copies."""
    key = sql.Identifier(alias, facts.key_column) if alias else sql.Identifier(facts.key_column)
    unit = cfg.interval.unit
    aware = facts.key_type == "timestamp with time zone"
    if aware:
        truncated = sql.SQL("date_trunc({}, {}, {})").format(sql.Literal(unit), key, sql.Literal(tz))
    else:  # wall-clock keys: their own clock
        key = sql.SQL("{}::timestamp").format(key)
        truncated = sql.SQL("date_trunc({}, {})").format(sql.Literal(unit), key)
    if unit not in ("hour", "day", "week") or (aware and tz.lower() not in _UTC_NAMES):
        return truncated
    kind = sql.SQL("timestamptz" if aware else "timestamp")
    origin = sql.SQL("{}::{}").format(sql.Literal(_MONDAY + ("+00" if aware else "")), kind)
    width = sql.Literal("7 days" if unit == "week" else f"1 {unit}")
    return sql.SQL("CASE WHEN {k} >= {o} AND isfinite({k}) THEN date_bin({w}::interval, {k}, {o}) ELSE {t} END").format(
        k=key, o=origin, w=width, t=truncated
    )


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
    # Grouped by the bucket's value, rendered as text once per bucket rather than once per row.
    return sql.SQL(
        "SELECT coalesce(g.b::text, 'NULL') AS bucket, g.rows, g.checksum FROM ("
        "SELECT {b} AS b, count(*) AS rows, coalesce(sum({ck}), 0) AS checksum FROM ({u}) AS m GROUP BY 1) AS g"
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
