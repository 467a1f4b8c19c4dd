"""Run-time facts a gate's suite is built from: catalog facts and the migration journal.

Plain psycopg reads (no Great Expectations), through `db.connect`, so they run with
pgmaint's timeouts. Catalog and journal reads only: no table is scanned here.
"""

from __future__ import annotations

from datetime import datetime, timezone

from psycopg import sql

from include.pgmaint.catalog import CatalogError, Range, TableFacts, read_catalog
from include.pgmaint.config import Config, TableConfig
from include.pgmaint.db import connect
from include.pgmaint.maintenance import migration_pending
from include.pgmaint.quality.suites import MigrationFacts

APPLICATION_NAME = "pgmaint_quality"


def read_facts(
    conninfo: str, config: Config, cfg: TableConfig, migration_id: int | None
) -> tuple[TableFacts | CatalogError, MigrationFacts | None, str | None]:
    """(catalog facts, migration facts, why the migration cannot be checked). Raises on SQL/connection errors."""
    with connect(conninfo, config.lock_budget, application_name=APPLICATION_NAME) as conn:
        conn.execute("SET default_transaction_read_only = on")
        facts = read_catalog(conn, [cfg], config.timezone)[cfg.name]
        if migration_id is None:
            return facts, None, None
        migration, problem = read_migration(conn, config, cfg, migration_id)
        return facts, migration, problem


def read_pending(conninfo: str, config: Config, cfg: TableConfig, facts: TableFacts, now: datetime) -> list[Range]:
    """Intervals of the managed window without a partition whose rows wait in the DEFAULT for migration
    (bounded probes, ACCESS SHARE). Raises on SQL/connection errors."""

    with connect(conninfo, config.lock_budget, application_name=APPLICATION_NAME) as conn:
        conn.execute("SET default_transaction_read_only = on")
        return migration_pending(conn, config, cfg, facts, now)


def read_migration(
    conn, config: Config, cfg: TableConfig, migration_id: int
) -> tuple[MigrationFacts | None, str | None]:
    state = sql.Identifier(config.state_schema)
    exists = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", [sql.SQL("{}.migration_figures").format(state).as_string(conn)]
    ).fetchone()[0]
    if not exists:
        return None, f"there is no migration journal ({config.state_schema}.migrations does not exist)"
    row = conn.execute(
        sql.SQL(
            "SELECT m.table_name, m.phase, m.partitions, m.total_pages, m.checksum, m.method, m.verified_at IS NOT NULL, "
            "(SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c, pg_namespace n "
            " WHERE c.oid = to_regclass(m.drain_table) AND n.oid = c.relnamespace) "
            "FROM {}.migrations m WHERE m.migration_id = %s"
        ).format(state),
        [migration_id],
    ).fetchone()
    if row is None:
        return None, f"migration {migration_id} is not in {config.state_schema}.migrations"
    table_name, phase, partitions, total_pages, checksum, method, verified, drain = row
    if table_name != cfg.name:
        return None, f"migration {migration_id} migrated {table_name}, not {cfg.name}"
    if method == "copy" and not verified:
        return None, (
            f"migration {migration_id} has no figures taken at its swap (phase {phase}): "
            + (
                "it has not swapped yet; run the migration again"
                if phase in ("preparing", "copying")
                else "the run stopped between the swap and its verification; see docs/runbook.md, 'Migration not verified'"
            )
        )
    if method == "drain" and total_pages is None:
        return None, (
            f"migration {migration_id} has not recorded its 'before' figures yet (interrupted right after "
            "the swap); run the migration again to finish it"
        )
    buckets = conn.execute(
        sql.SQL(
            "SELECT bucket, bool_or(kind = 'moved') FROM {}.migration_figures WHERE migration_id = %s GROUP BY 1 ORDER BY 1"
        ).format(state),
        [migration_id],
    ).fetchall()
    return MigrationFacts(
        migration_id=migration_id,
        table_name=table_name,
        phase=phase,
        partitions=tuple(partitions or ()),
        buckets=tuple(b for b, _ in buckets),
        moved_buckets=tuple(b for b, moved in buckets if moved),
        drain_table=drain,
        method=method,
        checksum=checksum,
    ), None


def migrated_ranges(facts: TableFacts, migration: MigrationFacts) -> list[Range]:
    """Bounds of the partitions a migration attached that are still attached."""
    by_name = {p.name: p.range for p in facts.partitions}
    return [by_name[name] for name in migration.partitions if name in by_name]


def as_ranges(ranges) -> list[Range]:
    """(lower, upper) pairs of datetimes or ISO strings, or `Range`s -> `Range`s (naive = UTC)."""
    out = []
    for item in ranges:
        lower, upper = (item.lower, item.upper) if isinstance(item, Range) else item
        out.append(Range(_moment(lower), _moment(upper)))
    return out


def _moment(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        raise TypeError(f"a range bound must be a datetime or an ISO string, got {value!r}")
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
