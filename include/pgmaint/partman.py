"""Taking over from pg_partman: import its configuration, hand tables over, hand them back,
and never maintain a table pg_partman is still maintaining.

Command line (also ``scripts/pgmaint-partman``)::

    python -m include.pgmaint.partman import   CONNINFO [--tables T ...] [--timezone ZONE] [--keep-partman] [-o FILE]
    python -m include.pgmaint.partman handover CONNINFO [--tables T ...] [--who NAME]   (config: $PGMAINT_CONFIG)
    python -m include.pgmaint.partman handback CONNINFO [--tables T ...] [--who NAME]
    python -m include.pgmaint.partman status   CONNINFO

* ``import`` reads ``<partman schema>.part_config`` (4.x and 5.x column sets: the row is read
  whole, as JSON, and interpreted here) and prints a pgmaint YAML. What pgmaint cannot express is
  a comment in the output and a line on stderr; a table pgmaint cannot maintain the way pg_partman
  does is left out, with the reason. Nothing is changed in the database.
* ``handover`` switches pg_partman's ``automatic_maintenance`` off for configured tables, in one
  transaction with a journal row per table (who, when, the previous value), then verifies that
  pg_partman will skip them and shows what pgmaint's next run would do.
* ``handback`` is the way back: ``automatic_maintenance`` on again for the tables handed over
  (journalled the same way). pgmaint then skips them (``dual_manager``) until they leave its config.
* ``status`` says who maintains each configured table.

Who maintains a table: ``maintained_by: pgmaint`` (the default) means pgmaint premakes and retires
it, so pg_partman's automatic maintenance must be off (``dual_manager`` otherwise: the watchdog
raises the condition and ``partition_maintenance`` skips the table). ``maintained_by: pg_partman``
is the supported split: pg_partman premakes and retires, pgmaint only migrates DEFAULT rows (pausing
pg_partman through the table's ``pg_partman`` writer service) and watches.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg
import yaml
from psycopg import sql

from include.pgmaint.catalog import WALL_CLOCK_KEY_TYPES, CatalogError, read_catalog
from include.pgmaint.config import Config, ConfigError, TableConfig, load_config, parse_config, parse_qualified_name
from include.pgmaint.db import connect
from include.pgmaint.escalation import Condition
from include.pgmaint.intervals import PartitionInterval
from include.pgmaint.naming import check_format
from include.pgmaint.plan import to_utc
from include.pgmaint.services.base import extension_schema, retry_lock_timeouts
from include.pgmaint.services.pg_partman import _RUNNING
from include.pgmaint.state import Journal, ensure_state_schema

log = logging.getLogger("pgmaint.partman")

SERVICE_NAME = "pg_partman"
HANDOVER_JOB, HANDBACK_JOB = "partman_handover", "partman_handback"
_SIMPLE_IDENT = re.compile(r"^[a-z_][a-z0-9_$]*$")


# --- intervals as PostgreSQL prints them ----------------------------------------------

_INTERVAL_PART = re.compile(r"([+-]?\d+)\s*(years?|mons?|months?|weeks?|days?|hours?|mins?|minutes?|secs?|seconds?)\b")
_INTERVAL_CLOCK = re.compile(r"([+-]?)(\d+):(\d{2})(?::(\d{2}))?$")


def parse_pg_interval(text: str | None) -> tuple[int, int, int] | None:
    """(months, days, seconds) of an interval as part_config stores it ('1 day', '1 mon', '7 days',
    '01:00:00', '30 days', '3 months', '1 year'); None for anything else (e.g. an id interval '100000')."""
    if not isinstance(text, str) or not text.strip():
        return None
    rest = text.strip().lower()
    months = days = seconds = 0
    clock = _INTERVAL_CLOCK.search(rest)
    if clock:
        sign = -1 if clock.group(1) == "-" else 1
        seconds += sign * (int(clock.group(2)) * 3600 + int(clock.group(3)) * 60 + int(clock.group(4) or 0))
        rest = rest[: clock.start()].strip()
    for number, unit in _INTERVAL_PART.findall(rest):
        n = int(number)
        if unit.startswith("y"):
            months += 12 * n
        elif unit.startswith("mon"):
            months += n
        elif unit.startswith("w"):
            days += 7 * n
        elif unit.startswith("d"):
            days += n
        elif unit.startswith("h"):
            seconds += 3600 * n
        elif unit.startswith("min"):
            seconds += 60 * n
        else:
            seconds += n
    leftover = _INTERVAL_PART.sub("", rest).strip()
    if leftover or (not clock and not _INTERVAL_PART.search(rest)):
        return None
    return months, days, seconds


_PARTITION_INTERVALS = {(0, 0, 3600): "1 hour", (0, 1, 0): "1 day", (0, 7, 0): "1 week", (1, 0, 0): "1 month"}


def pgmaint_interval(parts: tuple[int, int, int] | None) -> str | None:
    return _PARTITION_INTERVALS.get(parts) if parts else None


def pgmaint_duration(parts: tuple[int, int, int] | None) -> str | None:
    """A pgmaint duration ('30 days', '6 months', '2 weeks', '48 hours') equal to the interval, or None."""
    if not parts:
        return None
    months, days, seconds = parts
    plural = lambda n, unit: f"{n} {unit}{'s' if n != 1 else ''}"  # noqa: E731
    if months > 0 and not days and not seconds:
        return plural(months // 12, "year") if months % 12 == 0 else plural(months, "month")
    if days > 0 and not months and not seconds:
        return plural(days // 7, "week") if days % 7 == 0 else plural(days, "day")
    if seconds > 0 and not months and not days and seconds % 3600 == 0:
        return plural(seconds // 3600, "hour")
    return None


# --- part_config rows, 4.x and 5.x --------------------------------------------------------


@dataclass(frozen=True)
class PartConfig:
    """One part_config row, whichever pg_partman generation wrote it (absent columns get that version's default)."""

    parent_table: str
    control: str
    partition_interval: str
    partition_type: str
    generation: str  # "4.x" | "5.x", from the column set
    premake: int = 4
    automatic_maintenance: str = "on"
    retention: str | None = None
    retention_schema: str | None = None
    retention_keep_table: bool = True
    retention_keep_index: bool = True
    retention_keep_publication: bool = False
    infinite_time_partitions: bool = False
    template_table: str | None = None
    epoch: str = "none"
    undo_in_progress: bool = False
    constraint_cols: tuple[str, ...] = ()
    inherit_privileges: bool = False
    publications: tuple[str, ...] = ()  # 4.x
    subscription_refresh: str | None = None  # 4.x
    drop_cascade_fk: bool = False  # 4.x
    date_trunc_interval: str | None = None
    datetime_string: str | None = None
    partition_timezone: str | None = None  # 5.4.4+

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> PartConfig:
        # 4.x still carries the trigger-era columns; 5.0 dropped them (and added date_trunc_interval, maintenance_order ...).
        generation = "4.x" if "optimize_trigger" in row or "upsert" in row else "5.x"
        get = lambda key, default=None: default if row.get(key) is None else row[key]  # noqa: E731
        return cls(
            parent_table=row["parent_table"],
            control=row["control"],
            partition_interval=str(row["partition_interval"]),
            partition_type=str(row["partition_type"]),
            generation=generation,
            premake=int(get("premake", 4)),
            automatic_maintenance=get("automatic_maintenance", "on"),
            retention=get("retention"),
            retention_schema=get("retention_schema"),
            retention_keep_table=bool(get("retention_keep_table", True)),
            retention_keep_index=bool(get("retention_keep_index", True)),
            retention_keep_publication=bool(get("retention_keep_publication", False)),
            infinite_time_partitions=bool(get("infinite_time_partitions", False)),
            template_table=get("template_table"),
            epoch=get("epoch", "none"),
            undo_in_progress=bool(get("undo_in_progress", False)),
            constraint_cols=tuple(get("constraint_cols", ()) or ()),
            inherit_privileges=bool(get("inherit_privileges", False)),
            publications=tuple(get("publications", ()) or ()),
            subscription_refresh=get("subscription_refresh"),
            drop_cascade_fk=bool(get("drop_cascade_fk", False)),
            date_trunc_interval=get("date_trunc_interval"),
            datetime_string=get("datetime_string"),
            partition_timezone=get("partition_timezone"),
        )

    @property
    def native_range(self) -> bool:
        return self.partition_type in ({"native"} if self.generation == "4.x" else {"range"})


def _running_sql() -> str:
    """Is a run_maintenance() pass running (pg_partman's advisory lock held)? The services adapter's query."""

    return _RUNNING


def partman_schema(conn) -> str | None:

    return extension_schema(conn, "pg_partman")


def read_part_config(conn, parents: list[str] | None = None) -> tuple[str, str, list[PartConfig], set[str]]:
    """(partman schema, extension version, rows, sub-partitioned parents). Raises when pg_partman is absent."""
    schema = partman_schema(conn)
    if schema is None:
        raise PartmanError(f"the pg_partman extension is not installed in database {conn.info.dbname!r}")
    version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'").fetchone()[0]
    rows = conn.execute(
        sql.SQL(
            "SELECT to_jsonb(p) FROM {} p WHERE %(all)s OR p.parent_table = ANY(%(names)s) ORDER BY p.parent_table"
        ).format(sql.Identifier(schema, "part_config")),
        {"all": parents is None, "names": parents or []},
    ).fetchall()
    subs = {
        r[0]
        for r in conn.execute(sql.SQL("SELECT sub_parent FROM {}").format(sql.Identifier(schema, "part_config_sub")))
    }
    return schema, version, [PartConfig.from_row(r[0]) for r in rows], subs


class PartmanError(RuntimeError):
    """pg_partman cannot be read or changed as asked; the message says why."""


# --- what the database says about each parent ----------------------------------------------

_PARENTS_SQL = r"""
SELECT p.name,
       c.oid IS NOT NULL AS found,
       c.relkind::text,
       (SELECT i.inhparent::regclass::text FROM pg_inherits i WHERE i.inhrelid = c.oid) AS partition_of,
       EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class k ON k.oid = i.inhrelid
               WHERE i.inhparent = c.oid AND k.relkind = 'p') AS has_sub_partitions,
       (SELECT format_type(a.atttypid, NULL) FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attname = p.control AND NOT a.attisdropped) AS control_type
FROM unnest(%s::text[], %s::text[]) AS p(name, control)
LEFT JOIN pg_namespace n ON n.nspname = split_part(p.name, '.', 1)
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = substr(p.name, length(split_part(p.name, '.', 1)) + 2)
"""

# Properties of a template table that the parent lacks, i.e. what pg_partman adds to each new partition
# beyond what native partitioning (and pgmaint's CREATE TABLE ... LIKE parent INCLUDING ALL) gives it:
# indexes (primary key, unique or plain) with no equal definition on the parent, storage parameters, UNLOGGED.
_TEMPLATE_SQL = r"""
WITH t AS (
    SELECT to_regclass(format('%%I.%%I', split_part(%(template)s, '.', 1), substr(%(template)s, length(split_part(%(template)s, '.', 1)) + 2))) AS tid,
           to_regclass(format('%%I.%%I', split_part(%(parent)s, '.', 1), substr(%(parent)s, length(split_part(%(parent)s, '.', 1)) + 2))) AS pid
)
SELECT 'exists', (SELECT tid IS NOT NULL FROM t)::text
UNION ALL
SELECT 'index', pg_get_indexdef(i.indexrelid)
FROM t JOIN pg_index i ON i.indrelid = t.tid
WHERE i.indisvalid AND NOT EXISTS (
    SELECT 1 FROM pg_index pi WHERE pi.indrelid = t.pid AND pi.indisunique = i.indisunique
       AND regexp_replace(pg_get_indexdef(pi.indexrelid), '^.* USING ', '') = regexp_replace(pg_get_indexdef(i.indexrelid), '^.* USING ', ''))
UNION ALL
SELECT 'storage', array_to_string(c.reloptions, ', ') FROM t JOIN pg_class c ON c.oid = t.tid WHERE c.reloptions IS NOT NULL
UNION ALL
SELECT 'unlogged', 'UNLOGGED' FROM t JOIN pg_class c ON c.oid = t.tid JOIN pg_class pc ON pc.oid = t.pid
WHERE c.relpersistence = 'u' AND pc.relpersistence <> 'u'
"""


@dataclass(frozen=True)
class ParentFacts:
    found: bool = True
    relkind: str | None = "p"
    partition_of: str | None = None
    has_sub_partitions: bool = False
    control_type: str | None = None
    template_found: bool = True
    template_extras: tuple[
        str, ...
    ] = ()  # human-readable: "index CREATE UNIQUE INDEX ...", "storage fillfactor=70", "UNLOGGED"


def template_extras(conn, template: str, parent: str) -> tuple[bool, tuple[str, ...]]:
    """(template exists, what it carries that the parent lacks)."""
    rows = conn.execute(_TEMPLATE_SQL, {"template": template, "parent": parent}).fetchall()
    exists = any(kind == "exists" and value == "true" for kind, value in rows)
    extras = []
    for kind, value in rows:
        if kind == "index":
            extras.append(f"index: {value}")
        elif kind == "storage":
            extras.append(f"storage parameters: {value}")
        elif kind == "unlogged":
            extras.append("UNLOGGED (the parent is logged)")
    return exists, tuple(extras)


def parent_facts(conn, rows: list[PartConfig]) -> dict[str, ParentFacts]:
    found = conn.execute(_PARENTS_SQL, [[r.parent_table for r in rows], [r.control for r in rows]]).fetchall()
    out = {}
    for name, ok, relkind, partition_of, has_subs, control_type in found:
        out[name] = ParentFacts(ok, relkind, partition_of, has_subs, control_type)
    for r in rows:
        if r.template_table and out[r.parent_table].found:
            exists, extras = template_extras(conn, r.template_table, r.parent_table)
            f = out[r.parent_table]
            out[r.parent_table] = ParentFacts(
                f.found, f.relkind, f.partition_of, f.has_sub_partitions, f.control_type, exists, extras
            )
    return out


# --- translation (pure) ------------------------------------------------------------------------

TIME_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")


def config_name(parent_table: str) -> str:
    """part_config's 'schema.table' as a pgmaint table name (quoted where PostgreSQL would need it)."""
    schema, _, table = parent_table.partition(".")
    quote = lambda part: part if _SIMPLE_IDENT.match(part) else '"' + part.replace('"', '""') + '"'  # noqa: E731
    return f"{quote(schema)}.{quote(table)}"


@dataclass
class TableImport:
    parent: str  # part_config.parent_table
    item: dict[str, Any] | None = None  # the pgmaint table entry; None when refused
    refused: list[str] = field(default_factory=list)  # why pgmaint cannot take the table over
    notes: list[str] = field(default_factory=list)  # what pg_partman does that pgmaint will not (or differently)
    name_format: str | None = None  # pg_partman's datetime_string (the name_format key when pgmaint can write it)
    summary: str = ""
    partition_timezone: str | None = None


def translate(
    row: PartConfig, facts: ParentFacts, *, subs: set[str] = frozenset(), keep_partman: bool = False
) -> TableImport:
    """One part_config row -> a pgmaint table entry, or the reasons it cannot be one. Pure."""
    # whole: one check per part_config column, in the order of pg_partman's documentation; a reader
    # compares the two lists side by side.
    out = TableImport(row.parent_table, name_format=row.datetime_string, partition_timezone=row.partition_timezone)
    interval_parts = parse_pg_interval(row.partition_interval)
    out.summary = (
        f"pg_partman {row.generation} {row.partition_type!r}, control {row.control} "
        f"({facts.control_type or '?'}), interval {row.partition_interval!r}, premake {row.premake}, "
        f"retention {row.retention or 'none'}"
        + (f" (keep table: {'yes' if row.retention_keep_table else 'no'})" if row.retention else "")
        + f", automatic_maintenance {row.automatic_maintenance}"
    )
    refuse = out.refused.append
    if not facts.found:
        refuse("the table does not exist (or is not visible to this role)")
    elif facts.relkind != "p":
        refuse(
            f"not a natively partitioned table (relkind {facts.relkind!r}): pgmaint manages declarative range partitioning only"
        )
    if not row.native_range:
        refuse(
            f"partition_type {row.partition_type!r}: pgmaint manages native range partitioning only"
            + (" (trigger-based 'partman' sets are not supported)" if row.partition_type == "partman" else "")
        )
    if row.epoch and row.epoch != "none":
        refuse(f"epoch {row.epoch!r}: time stored as a number in {row.control} (id-based ranges) cannot be expressed")
    elif facts.control_type and facts.control_type not in TIME_TYPES:
        refuse(
            f"id-based partitioning (control {row.control} is {facts.control_type}, interval {row.partition_interval!r}) "
            "cannot be expressed: pgmaint manages time ranges only"
        )
    elif facts.found and facts.control_type is None:
        refuse(f"control column {row.control!r} not found on the table")
    elif pgmaint_interval(interval_parts) is None:
        refuse(
            f"interval {row.partition_interval!r} cannot be expressed: pgmaint supports 1 hour, 1 day, 1 week (ISO Monday), 1 month"
        )
    if row.parent_table in subs or facts.has_sub_partitions:
        refuse("sub-partitioned (its partitions are partitioned themselves): pgmaint manages one level")
    if facts.partition_of:
        refuse(f"a sub-partition of {facts.partition_of}: pgmaint manages one level")
    if row.undo_in_progress:
        refuse("undo_in_progress: pg_partman is un-partitioning this table")
    if row.template_table and not facts.template_found:
        refuse(f"template_table {row.template_table} does not exist")
    if facts.template_extras:
        refuse(
            f"template table {row.template_table} carries what the parent lacks and pg_partman adds to every new "
            f"partition: {'; '.join(facts.template_extras)}. pgmaint creates partitions LIKE the parent and would "
            "not add them. Move them to the parent where PostgreSQL allows it (a unique index there must include "
            "the partition key), drop them from the template if they are not needed, or keep the table with "
            "pg_partman (import --keep-partman: maintained_by: pg_partman)"
        )
    natural = {"1 hour": "hour", "1 day": "day", "1 week": "week", "1 month": "month"}.get(
        pgmaint_interval(interval_parts)
    )
    if row.date_trunc_interval and row.date_trunc_interval.strip().lower() != natural:
        refuse(
            f"date_trunc_interval {row.date_trunc_interval!r}: partitions aligned to another precision than "
            f"the interval's ({natural or 'none'}) cannot be expressed"
        )
    retention = None
    if row.retention:
        retention = pgmaint_duration(parse_pg_interval(row.retention))
        if retention is None:
            refuse(
                f"retention {row.retention!r} cannot be expressed as a whole number of hours, days, weeks, months or years"
            )
        else:
            r_parts, i_parts = parse_pg_interval(row.retention), interval_parts or (0, 0, 0)
            if (r_parts[0] * 28 * 24 + r_parts[1] * 24 + r_parts[2] / 3600) < (
                i_parts[0] * 28 * 24 + i_parts[1] * 24 + i_parts[2] / 3600
            ):
                refuse(f"retention {row.retention!r} is shorter than one interval: pgmaint would refuse the config")
            if row.retention_schema:
                out.notes.append(
                    f"retention_schema {row.retention_schema}: pg_partman moves expired partitions there; "
                    "pgmaint detaches them and leaves them in place (retention_keep_table: true). "
                    "Jobs that archive from that schema must look in the table's own schema"
                )
            if not row.retention_keep_index and (row.retention_keep_table or row.retention_schema):
                out.notes.append(
                    "retention_keep_index false: pg_partman drops the indexes of detached tables; pgmaint keeps them"
                )
            if row.retention_keep_publication:
                out.notes.append(
                    "retention_keep_publication: pg_partman decides whether a partition detached for retention stays "
                    "in its publications; pgmaint never changes publications when it detaches"
                )
    if row.drop_cascade_fk:
        out.notes.append(
            "drop_cascade_fk: when retention drops an expired partition, pg_partman uses DROP TABLE ... CASCADE "
            "(another table's foreign key referencing that partition goes with it); pgmaint drops without "
            "CASCADE, so such a drop fails and the run reports it instead of removing the foreign key"
        )
    if row.publications:
        out.notes.append(
            f"publications {list(row.publications)}: pg_partman adds each new partition to them (ALTER PUBLICATION "
            "... ADD TABLE); pgmaint does not, so a publication listing partitions one by one misses pgmaint's "
            "new ones (a publication that includes the parent covers every partition, present and future)"
        )
    if row.subscription_refresh:
        out.notes.append(
            f"subscription_refresh {row.subscription_refresh}: pg_partman runs ALTER SUBSCRIPTION "
            f"{row.subscription_refresh} REFRESH PUBLICATION in each maintenance run, so the subscription picks up "
            "tables newly added to the publication; pgmaint does not: schedule that refresh yourself"
        )
    if not row.infinite_time_partitions:
        out.notes.append(
            "infinite_time_partitions off: pg_partman premakes ahead of the newest row; pgmaint always "
            "premakes ahead of now (as infinite_time_partitions on)"
        )
    if row.constraint_cols:
        out.notes.append(
            f"constraint_cols {list(row.constraint_cols)}: pg_partman adds CHECK constraints on these columns "
            "to older partitions; pgmaint does not"
        )
    if row.inherit_privileges:
        out.notes.append(
            "inherit_privileges: pg_partman copies the parent's grants to each partition; pgmaint's partitions "
            "get none of their own (access through the parent is unaffected)"
        )
    if out.refused:
        return out
    item: dict[str, Any] = {
        "name": config_name(row.parent_table),
        "partition_key": row.control
        if _SIMPLE_IDENT.match(row.control)
        else '"' + row.control.replace('"', '""') + '"',
        "interval": pgmaint_interval(interval_parts),
        "premake": row.premake,
    }
    if retention:
        item["retention"] = retention
        item["retention_keep_table"] = bool(row.retention_keep_table or row.retention_schema)
    if out.name_format:
        try:
            check_format(out.name_format, PartitionInterval.parse(item["interval"]).unit)
            item["name_format"] = out.name_format  # new partitions get the names pg_partman would give them
        except ValueError as exc:
            out.notes.append(
                f"datetime_string {out.name_format!r}: {exc}. Without name_format, new partitions follow the "
                "existing partitions' naming scheme when pgmaint recognises it, else <parent>_pYYYYMMDD"
            )
    item["writers"] = [SERVICE_NAME]
    if keep_partman:
        item["maintained_by"] = "pg_partman"
    out.item = item
    return out


# --- time zone ----------------------------------------------------------------------------


def misaligned(facts, interval: str, tz: str) -> list[str]:
    """Partitions whose bounds are not exactly one `interval` aligned in `tz` (pgmaint's own alignment). Pure."""

    step = PartitionInterval.parse(interval)
    zone = "UTC" if facts.key_type in WALL_CLOCK_KEY_TYPES else tz  # wall-clock keys: see plan.timeline
    bad = []
    for p in facts.partitions:
        lo, hi = p.range.lower, p.range.upper
        if lo is None or hi is None or to_utc(step.floor(lo, zone)) != lo or to_utc(step.next(lo, zone)) != hi:
            bad.append(f"{p.name} {p.range}")
    return bad


@dataclass
class ZoneChoice:
    zone: str
    reason: str


def choose_zone(
    server_zone: str, server_source: str, aligned: dict[str, dict[str, bool]], override: str | None
) -> ZoneChoice:
    """Pick the config's `timezone`. `aligned[zone][table]`: do the table's timestamptz bounds align in that zone."""
    if override:
        return ZoneChoice(
            override, f"given with --timezone (the server's TimeZone is {server_zone}, from {server_source})"
        )
    tables = set().union(*(set(v) for v in aligned.values())) if aligned else set()
    in_server = {t for t, ok in aligned.get(server_zone, {}).items() if ok}
    why = (
        f"the server's TimeZone ({server_source}), which pg_partman's maintenance sessions use to align "
        "partitions (date_trunc on timestamptz)"
    )
    if not tables:
        return ZoneChoice(server_zone, why + "; no timestamptz table to check it against")
    if in_server == tables:
        return ZoneChoice(server_zone, why + f"; the bounds of all {len(tables)} timestamptz table(s) align to it")
    best = max(aligned, key=lambda z: (sum(aligned[z].values()), z == server_zone))
    ok = sum(aligned[best].values())
    if best == server_zone or ok <= len(in_server):
        return ZoneChoice(
            server_zone, why + f"; {len(tables) - len(in_server)} table(s) do not align to it and are left out"
        )
    return ZoneChoice(
        best,
        f"the bounds of {ok} of {len(tables)} timestamptz table(s) align to {best}, not to the "
        f"server's TimeZone {server_zone} ({server_source}): pg_partman's sessions evidently run "
        f"with TimeZone={best} (check the role running run_maintenance)",
    )


def server_timezone(conninfo: str) -> tuple[str, str]:
    """The TimeZone a fresh session of this role in this database gets, and where it comes from."""

    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SET statement_timeout = '5s'")
        zone, source = conn.execute("SELECT setting, source FROM pg_settings WHERE name = 'TimeZone'").fetchone()
    return zone, {"configuration file": "postgresql.conf", "client": "set by this client (PGTZ?)"}.get(source, source)


# --- import -------------------------------------------------------------------------------


@dataclass
class ImportResult:
    schema: str
    version: str
    database: str
    zone: ZoneChoice
    tables: list[TableImport]

    @property
    def imported(self) -> list[TableImport]:
        return [t for t in self.tables if t.item is not None]

    @property
    def left_out(self) -> list[TableImport]:
        return [t for t in self.tables if t.item is None]


def import_config(
    conn,
    conninfo: str,
    *,
    tables: list[str] | None = None,
    timezone_override: str | None = None,
    keep_partman: bool = False,
) -> ImportResult:
    """Read pg_partman's configuration and translate it (reads only)."""
    # whole: read pg_partman's rows, translate each, choose the zone, say what was left out: one pass.

    wanted = [_partman_name(t) for t in tables] if tables else None
    schema, version, rows, subs = read_part_config(conn, wanted)
    if wanted:
        missing = sorted(set(wanted) - {r.parent_table for r in rows})
        if missing:
            raise PartmanError(f"not in {schema}.part_config: {', '.join(missing)}")
    facts = parent_facts(conn, rows)
    results = [translate(r, facts[r.parent_table], subs=subs, keep_partman=keep_partman) for r in rows]

    # Check every candidate against its partitions' bounds, read the way maintenance reads them.
    server_zone, source = server_timezone(conninfo)
    configs: dict[str, TableConfig] = {}
    for t in results:
        if t.item is None:
            continue
        try:
            configs[t.parent] = parse_config(
                {"tables": [t.item], "services": [{"name": SERVICE_NAME, "kind": "pg_partman"}]}
            ).tables[0]
        except Exception as exc:  # e.g. premake above pgmaint's limit
            t.refused.append(f"not a valid pgmaint table: {exc}")
            t.item = None
    catalog = read_catalog(conn, list(configs.values()), "UTC") if configs else {}
    instants = {}  # timestamptz tables: their alignment depends on the zone
    for t in results:
        if t.item is None:
            continue
        f = catalog[configs[t.parent].name]
        if isinstance(f, CatalogError):
            t.refused.append(str(f))
            t.item = None
        elif f.key_type == "timestamp with time zone":
            instants[t.parent] = f
        elif bad := misaligned(f, t.item["interval"], "UTC"):  # wall-clock keys: the zone does not move the bounds
            t.refused.append(
                f"partition bounds are not whole {t.item['interval']} intervals, e.g. {', '.join(bad[:2])}"
            )
            t.item = None
    zones = [
        z
        for z in dict.fromkeys(
            [timezone_override, server_zone, "UTC", *(t.partition_timezone for t in results if t.partition_timezone)]
        )
        if z
    ]
    bad_by_zone = {z: {p: misaligned(f, str(configs[p].interval), z) for p, f in instants.items()} for z in zones}
    choice = choose_zone(
        server_zone,
        source,
        {z: {p: not bad for p, bad in v.items()} for z, v in bad_by_zone.items()},
        timezone_override,
    )
    for t in results:
        bad = bad_by_zone.get(choice.zone, {}).get(t.parent)
        if t.item and bad:
            t.refused.append(
                f"partition bounds do not align to whole {t.item['interval']} intervals in {choice.zone} "
                f"(the config's one timezone), e.g. {', '.join(bad[:2])}: pgmaint would plan ranges that overlap them"
            )
            t.item = None
        if t.item and t.partition_timezone and t.partition_timezone != choice.zone:
            t.notes.append(f"pg_partman's partition_timezone is {t.partition_timezone}; the config uses {choice.zone}")
    return ImportResult(schema, version, conn.info.dbname, choice, results)


def _partman_name(name: str) -> str:

    try:
        return ".".join(parse_qualified_name(name))
    except ValueError as exc:
        raise PartmanError(f"--tables: {exc}") from None


def render(result: ImportResult, *, keep_partman: bool = False) -> str:
    """The pgmaint YAML, with everything pgmaint cannot express as comments."""

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# pgmaint configuration imported from pg_partman {result.version} (schema {result.schema}) "
        f"in database {result.database} at {now}",
        "# by `python -m include.pgmaint.partman import`. Review it, add your applications' writer services",
        "# to each table's writers, then hand the tables over (README: Taking over from pg_partman).",
        f"# timezone: {result.zone.zone} - {result.zone.reason}.",
        "# Existing partitions keep pg_partman's names; pgmaint recognises them by their bounds.",
    ]
    if keep_partman:
        lines.append(
            "# maintained_by: pg_partman - pg_partman keeps premaking and retiring; pgmaint migrates and watches."
        )
    else:
        lines.append(
            "# Until `handover` switches pg_partman's automatic_maintenance off for a table, partition_maintenance"
        )
        lines.append("# skips it and the watchdog raises dual_manager:<table>: two managers never work on one table.")
    lines += [
        "connection_id: pgmaint_target",
        f"timezone: {_yaml_scalar(result.zone.zone)}",
        "state_schema: pgmaint",
        "",
    ]
    if result.imported:
        lines.append("tables:")
    else:
        lines.append("tables: []  # nothing could be imported (see below); pgmaint needs at least one table")
    for t in result.imported:
        lines.append(f"  # {t.parent}: {t.summary}")
        if "name_format" in t.item:
            lines.append(
                f"  # name_format: pg_partman's datetime_string {t.name_format!r}: new partitions are named "
                f"{t.parent.split('.', 1)[1]}_p<{t.name_format}> as pg_partman names them"
            )
        for note in t.notes:
            lines.append(f"  # not expressed: {note}")
        body = yaml.safe_dump([t.item], sort_keys=False, default_flow_style=None, allow_unicode=True)
        lines += ["  " + line for line in body.rstrip("\n").splitlines()]
    if result.left_out:
        lines += ["", "# Not imported (pgmaint cannot maintain these the way pg_partman does; pg_partman keeps them):"]
        for t in result.left_out:
            lines.append(f"# - {t.parent}: " + "; ".join(t.refused))
    lines += [
        "",
        "services:",
        f"  - name: {SERVICE_NAME}   # pauses pg_partman's automatic maintenance while rows move",
        "    kind: pg_partman",
        "",
    ]
    return "\n".join(lines)


def _yaml_scalar(value: str) -> str:

    return yaml.safe_dump(value, default_style=None).strip().removesuffix("...").strip()


# --- who maintains a table ------------------------------------------------------------------


def partman_parent(cfg: TableConfig) -> str:
    return f"{cfg.schema}.{cfg.table}"


def automatic_maintenance(conn, tables: list[TableConfig]) -> dict[str, str]:
    """Configured table name -> pg_partman's automatic_maintenance ('on'/'off'); absent when partman does not know it."""
    schema = partman_schema(conn)
    if schema is None or not tables:
        return {}
    by_parent = {partman_parent(t): t.name for t in tables}
    rows = conn.execute(
        sql.SQL("SELECT parent_table, automatic_maintenance FROM {} WHERE parent_table = ANY(%s)").format(
            sql.Identifier(schema, "part_config")
        ),
        [list(by_parent)],
    ).fetchall()
    return {by_parent[parent]: value for parent, value in rows}


def dual_manager_message(cfg: TableConfig) -> str:
    return (
        f"dual_manager: {cfg.name} is in pgmaint's config (maintained_by: pgmaint) and pg_partman's "
        "automatic_maintenance is 'on' for it, so pg_partman's worker maintains it too; pgmaint leaves it to "
        "pg_partman until it is handed over (python -m include.pgmaint.partman handover) or marked "
        "maintained_by: pg_partman"
    )


def maintenance_skips(conn, tables: list[TableConfig]) -> dict[str, str]:
    """Tables partition_maintenance must not touch, and why: maintained by pg_partman, or by both (dual_manager)."""
    out = {
        t.name: f"maintained_by: pg_partman (pg_partman premakes and retires {t.name}; pgmaint only migrates and watches)"
        for t in tables
        if t.maintained_by == "pg_partman"
    }
    ours = [t for t in tables if t.maintained_by == "pgmaint"]
    on = automatic_maintenance(conn, ours) if ours else {}
    out.update({t.name: dual_manager_message(t) for t in ours if on.get(t.name) == "on"})
    return out


def dual_manager_conditions(conn, tables: list[TableConfig]) -> list:
    """The watchdog's `dual_manager:<table>` conditions (warning)."""

    ours = [t for t in tables if t.maintained_by == "pgmaint"]
    on = automatic_maintenance(conn, ours) if ours else {}
    return [
        Condition(
            f"dual_manager:{t.name}",
            "warning",
            dual_manager_message(t) + ". partition_maintenance skips the table meanwhile, so its runway "
            "depends on pg_partman alone",
            {"table": t.name, "partman_parent": partman_parent(t), "automatic_maintenance": "on"},
        )
        for t in ours
        if on.get(t.name) == "on"
    ]


# --- hand-over and the way back ----------------------------------------------------------------


@dataclass
class Handover:
    table: str
    action: str  # handed_over | handed_back | unchanged | refused
    previous: str | None = None
    problems: list[str] = field(default_factory=list)  # verification failures (pg_partman may still touch it)
    notes: list[str] = field(default_factory=list)
    run_id: int | None = None

    def __str__(self) -> str:
        text = f"{self.table}: {self.action}" + (
            f" (automatic_maintenance was {self.previous})" if self.previous else ""
        )
        return "\n".join([text] + [f"  ! {p}" for p in self.problems] + [f"  . {n}" for n in self.notes])


def default_who() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _select_tables(config: Config, names: list[str] | None) -> list[TableConfig]:
    if not names:
        return list(config.tables)
    out = []
    for name in names:
        match = next((t for t in config.tables if t.name == name or partman_parent(t) == _partman_name(name)), None)
        if match is None:
            raise PartmanError(f"{name} is not a configured table (configured: {', '.join(config.table_names)})")
        out.append(match)
    return out


def _switch_context(conn, config: Config, tables: list[str] | None, who: str | None):
    """(who, the chosen tables, pg_partman's schema, the journal) for a hand-over or hand-back."""

    chosen = _select_tables(config, tables)
    schema = partman_schema(conn)
    if schema is None:
        raise PartmanError(f"the pg_partman extension is not installed in database {conn.info.dbname!r}")
    ensure_state_schema(conn, config.state_schema)
    return who or default_who(), chosen, schema, Journal(conn, config.state_schema)


def handover(
    conn, config: Config, tables: list[str] | None = None, *, who: str | None = None, wait_seconds: float = 30.0
) -> list[Handover]:
    """Switch pg_partman's automatic maintenance off for configured tables (maintained_by: pgmaint), journal it, verify."""

    who, chosen, schema, journal = _switch_context(conn, config, tables, who)
    current = automatic_maintenance(conn, chosen)
    results, to_switch = [], []
    for t in chosen:
        if t.maintained_by != "pgmaint":
            results.append(
                Handover(
                    t.name,
                    "refused",
                    problems=[
                        "maintained_by: pg_partman in pgmaint's config: "
                        "set maintained_by: pgmaint first, or leave it to pg_partman"
                    ],
                )
            )
        elif t.name not in current:
            results.append(Handover(t.name, "unchanged", notes=[f"not in {schema}.part_config: nothing to hand over"]))
        elif current[t.name] == "off":
            results.append(Handover(t.name, "unchanged", "off", notes=["automatic_maintenance is already off"]))
        else:
            to_switch.append(t)
    if to_switch:
        run_ids = _switch(
            conn, schema, journal, to_switch, HANDOVER_JOB, who, before={t.name: "on" for t in to_switch}, after="off"
        )
        results += [Handover(t.name, "handed_over", "on", run_id=run_ids[t.name]) for t in to_switch]
    verify(
        conn,
        config,
        schema,
        [r for r in results if r.action in ("handed_over", "unchanged") and r.previous],
        wait_seconds=wait_seconds,
    )
    return results


def verify(conn, config: Config, schema: str, results: list[Handover], *, wait_seconds: float = 30.0) -> None:
    """Check that pg_partman will skip the tables from now on, and show what pgmaint's next run would do."""

    if not results:
        return
    by_name = {t.name: t for t in config.tables}
    after = automatic_maintenance(conn, [by_name[r.table] for r in results])
    deadline = time.monotonic() + wait_seconds
    running = conn.execute(_running_sql()).fetchone()[0]
    while running and time.monotonic() < deadline:  # a pass already under way read its list before our switch
        time.sleep(0.5)
        running = conn.execute(_running_sql()).fetchone()[0]
    jobs = _cron_jobs(conn)
    for r in results:
        t = by_name[r.table]
        if after.get(r.table) != "off":
            r.problems.append(f"automatic_maintenance reads {after.get(r.table)!r}, not 'off'")
        else:
            r.notes.append(
                "verified: run_maintenance() without a parent (pg_partman's background worker, or a cron "
                "job calling it so) skips the table: it only takes automatic_maintenance = 'on'"
            )
        if running:
            r.problems.append(
                f"a run_maintenance() pass was still running after {wait_seconds:.0f} s; it may still "
                "touch the table once: run `status` again before relying on pgmaint alone"
            )
        for jobid, jobname, command in jobs:
            if partman_parent(t) in command and "run_maintenance" in command:
                r.problems.append(
                    f"pg_cron job {jobid} ({jobname}) calls {command.strip()!r}: run_maintenance with an "
                    "explicit parent ignores automatic_maintenance; unschedule that job"
                )
    try:
        from include.pgmaint.maintenance import run_maintenance  # maintenance asks this module what to skip

        plans = run_maintenance(conn, config, [by_name[r.table] for r in results], dry_run=True)
    except Exception as exc:  # the hand-over itself is done; say why the preview is missing
        for r in results:
            r.notes.append(f"pgmaint's dry run could not be made: {exc}")
        return
    for r, plan in zip(results, plans):
        work = list(plan.statements)
        what = (
            "nothing to do"
            if not work
            else f"{len(work)} statement(s): " + ", ".join(sorted({f"{s['step']} {s['target']}" for s in work}))
        )
        r.notes.append(f"pgmaint's next partition_maintenance run (dry run now): {what}")


def _cron_jobs(conn) -> list[tuple]:
    if conn.execute("SELECT to_regclass('cron.job') IS NOT NULL").fetchone()[0]:
        return conn.execute(
            "SELECT jobid, jobname, command FROM cron.job WHERE active AND command ILIKE '%%run_maintenance%%'"
        ).fetchall()
    return []


def handback(conn, config: Config, tables: list[str] | None = None, *, who: str | None = None) -> list[Handover]:
    """The way back: automatic_maintenance 'on' again for the tables pgmaint took over (as the journal records)."""

    who, chosen, schema, journal = _switch_context(conn, config, tables, who)
    last = last_handovers(conn, config)
    current = automatic_maintenance(conn, chosen)
    results, to_switch = [], []
    for t in chosen:
        entry = last.get(t.name)
        if entry is None or entry["job"] != HANDOVER_JOB:
            results.append(
                Handover(
                    t.name,
                    "unchanged",
                    current.get(t.name),
                    notes=["no hand-over recorded in pgmaint's journal: left as it is"],
                )
            )
        elif t.name not in current:
            results.append(Handover(t.name, "refused", problems=[f"no longer in {schema}.part_config"]))
        else:
            to_switch.append(t)
    if to_switch:
        run_ids = _switch(conn, schema, journal, to_switch, HANDBACK_JOB, who, before=current, after="on")
        results += [
            Handover(
                t.name,
                "handed_back",
                current[t.name],
                run_id=run_ids[t.name],
                notes=[
                    "pg_partman maintains it again; partition_maintenance now skips it (dual_manager) and the watchdog "
                    "warns until it leaves pgmaint's config or is marked maintained_by: pg_partman"
                ],
            )
            for t in to_switch
        ]
    return results


def _switch(
    conn, schema: str, journal: Journal, tables: list, job: str, who: str, *, before: dict[str, str], after: str
) -> dict[str, int]:
    """Set `automatic_maintenance = after` in part_config for `tables` and journal each change (who, the database
    user, before and after), in one transaction retried on lock timeouts. Returns each table's journal run id."""
    db_user = conn.execute("SELECT current_user").fetchone()[0]

    def switch() -> dict[str, int]:
        run_ids = {}
        with conn.transaction():  # the switch and its journal rows commit together
            conn.execute(
                sql.SQL("UPDATE {} SET automatic_maintenance = %s WHERE parent_table = ANY(%s)").format(
                    sql.Identifier(schema, "part_config")
                ),
                [after, [partman_parent(t) for t in tables]],
            )
            for t in tables:
                run_ids[t.name] = run_id = journal.start_run(job, t.name)
                journal.finish_run(
                    run_id,
                    "success",
                    {
                        "who": who,
                        "db_user": db_user,
                        "partman_parent": partman_parent(t),
                        "automatic_maintenance": {"before": before[t.name], "after": after},
                    },
                )
        return run_ids

    return retry_lock_timeouts(switch, f"pg_partman part_config for {', '.join(t.name for t in tables)}")


def last_handovers(conn, config: Config) -> dict[str, dict]:
    """Per configured table, the latest hand-over or hand-back in the journal."""
    rows = conn.execute(
        sql.SQL(
            "SELECT DISTINCT ON (table_name) table_name, job, started_at, summary FROM {}.runs "
            "WHERE job IN (%s, %s) AND outcome = 'success' ORDER BY table_name, run_id DESC"
        ).format(sql.Identifier(config.state_schema)),
        [HANDOVER_JOB, HANDBACK_JOB],
    ).fetchall()
    return {name: {"job": job, "at": at, "who": (summary or {}).get("who")} for name, job, at, summary in rows}


def status(conn, config: Config) -> list[str]:
    """One line per configured table: who maintains it."""

    ensure_state_schema(conn, config.state_schema)
    on = automatic_maintenance(conn, list(config.tables))
    last = last_handovers(conn, config)
    running = partman_schema(conn) is not None and conn.execute(_running_sql()).fetchone()[0]
    lines = []
    for t in config.tables:
        partman = on.get(t.name)
        if partman is None:
            verdict = (
                "pgmaint (pg_partman does not manage it)"
                if t.maintained_by == "pgmaint"
                else "NOBODY: maintained_by pg_partman but pg_partman has no part_config row for it"
            )
        elif t.maintained_by == "pg_partman":
            verdict = "pg_partman (split: pgmaint migrates and watches)" + (
                "" if partman == "on" else "; automatic_maintenance is off (paused by a migration, or by hand)"
            )
        else:
            verdict = "pgmaint (handed over)" if partman == "off" else "DUAL MANAGER: pgmaint skips it until handover"
        entry = last.get(t.name)
        history = (
            f"; last {entry['job'].replace('partman_', '')} {entry['at']:%Y-%m-%d %H:%M} UTC by {entry['who']}"
            if entry
            else ""
        )
        lines.append(f"{t.name}: {verdict} [automatic_maintenance {partman or '-'}]{history}")
    if running:
        lines.append("a pg_partman run_maintenance() is running right now")
    return lines


# --- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    # whole: the command line's declarations, then one short branch per subcommand.

    parser = argparse.ArgumentParser(
        prog="python -m include.pgmaint.partman",
        description="Take partitioned tables over from pg_partman (README: Taking over from pg_partman).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_import = sub.add_parser(
        "import", help="print a pgmaint YAML for pg_partman's time-partitioned parents (changes nothing)"
    )
    p_import.add_argument("conninfo")
    p_import.add_argument("--tables", nargs="+", metavar="SCHEMA.TABLE", help="only these parents (default: all)")
    p_import.add_argument("--timezone", help="use this zone instead of the one the import would choose")
    p_import.add_argument(
        "--keep-partman",
        action="store_true",
        help="emit maintained_by: pg_partman (pg_partman keeps premaking; pgmaint migrates and watches)",
    )
    p_import.add_argument("-o", "--output", help="write the YAML here instead of stdout")
    for name, text in (
        ("handover", "switch pg_partman's automatic maintenance off for configured tables"),
        ("handback", "the way back: switch it on again for the tables handed over"),
    ):
        p = sub.add_parser(name, help=text + " (config: $PGMAINT_CONFIG or --config)")
        p.add_argument("conninfo")
        p.add_argument("--tables", nargs="+", metavar="TABLE", help="configured tables (default: all)")
        p.add_argument("--who", help="recorded in the journal (default: user@host)")
        p.add_argument("--config", help="pgmaint YAML (default: $PGMAINT_CONFIG)")
    p_status = sub.add_parser("status", help="who maintains each configured table")
    p_status.add_argument("conninfo")
    p_status.add_argument("--config", help="pgmaint YAML (default: $PGMAINT_CONFIG)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        if args.command == "import":
            if args.timezone:
                import pendulum

                try:
                    pendulum.timezone(args.timezone)
                except Exception:
                    print(f"--timezone: {args.timezone!r} is not a known IANA time zone", file=sys.stderr)
                    return 64
            with connect(args.conninfo, application_name="pgmaint-partman") as conn:
                result = import_config(
                    conn,
                    args.conninfo,
                    tables=args.tables,
                    timezone_override=args.timezone,
                    keep_partman=args.keep_partman,
                )
            text = render(result, keep_partman=args.keep_partman)
            if args.output:
                with open(args.output, "w") as f:
                    f.write(text)
            else:
                sys.stdout.write(text)
            print(f"timezone {result.zone.zone}: {result.zone.reason}", file=sys.stderr)
            for t in result.imported:
                for note in t.notes:
                    print(f"not expressed for {t.parent}: {note}", file=sys.stderr)
            for t in result.left_out:
                print(f"NOT IMPORTED {t.parent}: {'; '.join(t.refused)}", file=sys.stderr)
            print(f"imported {len(result.imported)} of {len(result.tables)} pg_partman table(s)", file=sys.stderr)
            return 0 if result.imported and not result.left_out else (1 if result.imported else 2)

        config = load_config(args.config)
        with connect(args.conninfo, config.lock_budget, application_name="pgmaint-partman") as conn:
            if args.command == "status":
                print("\n".join(status(conn, config)))
                return 0
            action = handover if args.command == "handover" else handback
            results = action(conn, config, args.tables, who=args.who)
        for r in results:
            print(r)
        return 1 if any(r.problems or r.action == "refused" for r in results) else 0
    except (PartmanError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


__all__ = [
    "Handover",
    "ImportResult",
    "PartConfig",
    "PartmanError",
    "TableImport",
    "automatic_maintenance",
    "dual_manager_conditions",
    "handback",
    "handover",
    "import_config",
    "maintenance_skips",
    "render",
    "status",
    "translate",
]


if __name__ == "__main__":
    sys.exit(main())
