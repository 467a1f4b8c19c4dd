"""The configuration as small frozen values: tables, services, lock budget, preflight, the whole `Config`.

Identifiers are parsed here too (as PostgreSQL folds them), so every value holds catalog spelling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from include.pgmaint.config.escalation_settings import EscalationSettings
from include.pgmaint.intervals import Duration, PartitionInterval

SERVICE_KINDS = ("flag", "pg_partman", "pg_cron", "airflow_dag", "http")

# --- identifiers -----------------------------------------------------------

# One SQL identifier: unquoted (folded to lower case, as PostgreSQL does) or double-quoted.
_IDENT = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'
_QUALIFIED = re.compile(rf"^({_IDENT})\.({_IDENT})$")
_SINGLE = re.compile(rf"^{_IDENT}$")


def _unquote(part: str) -> str:
    if part.startswith('"'):
        return part[1:-1].replace('""', '"')
    return part.lower()


def parse_qualified_name(text: str) -> tuple[str, str]:
    """`schema.table` -> (schema, table) as stored in the catalog."""
    match = _QUALIFIED.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not a schema-qualified table name like 'public.events'")
    schema, table = _unquote(match.group(1)), _unquote(match.group(2))
    for part in (schema, table):
        if len(part.encode()) > 63:
            raise ValueError(f"{text!r}: identifier {part!r} is longer than PostgreSQL's 63 bytes")
    return schema, table


def parse_identifier(text: str) -> str:
    if not isinstance(text, str) or not _SINGLE.fullmatch(text):
        raise ValueError(f"{text!r} is not a column or schema identifier")
    name = _unquote(text)
    if len(name.encode()) > 63:
        raise ValueError(f"{text!r} is longer than PostgreSQL's 63 bytes")
    return name


# --- values ------------------------------------------------------------------


@dataclass(frozen=True)
class LockBudget:
    """How long any statement of ours may wait for a lock, and how long we keep trying."""

    lock_timeout_ms: int = 50  # first try; doubles per retry ...
    max_lock_timeout_ms: int = 200  # ... up to this (safety rule 1: <= 200 ms per try)
    statement_timeout_ms: int = 10_000  # catalog-only DDL
    scan_timeout_ms: int = 300_000  # statements that read a table under a weak lock (VALIDATE)
    total_seconds: float = 60.0  # retries stop here, then the step fails loudly
    backoff_base_seconds: float = 0.2
    backoff_cap_seconds: float = 5.0

    def backoff(self, attempt: int) -> float:
        """The longest pause after failed try `attempt` (1, 2, ...): doubling from the base, capped."""
        return min(self.backoff_cap_seconds, self.backoff_base_seconds * 2 ** (attempt - 1))


@dataclass(frozen=True)
class Preflight:
    """Conditions under which a table is skipped rather than queued behind."""

    max_connection_usage: float = 0.8  # fraction of usable max_connections
    long_transaction_seconds: float = 5.0  # a transaction this old holding locks on the family
    allow_waiting_sessions: int = 0  # sessions already waiting for locks on the family


@dataclass(frozen=True)
class TableConfig:
    name: str  # as written in the config, e.g. "public.request_log"
    schema: str
    table: str
    partition_key: str
    interval: PartitionInterval
    premake: int
    retention: Duration | None
    writers: tuple[str, ...]
    retention_keep_table: bool = False
    auto_migrate: bool = False
    maintained_by: str = "pgmaint"  # "pg_partman": partman premakes and retires, pgmaint only migrates and watches
    name_format: str | None = None  # None: follow the existing partitions' scheme (naming.choose)


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    kind: str
    depends_on: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


TARGET_SEPARATOR = "/"  # between a target's name and a table's in fleet mode (`orders/public.events`)


@dataclass(frozen=True)
class Config:
    connection_id: str
    timezone: str
    state_schema: str
    tables: tuple[TableConfig, ...]
    services: tuple[ServiceConfig, ...]
    escalation: EscalationSettings = field(hash=False, compare=False)  # parsed once, with the rest
    maintenance_schedule: str | None = "*/15 * * * *"
    watchdog_schedule: str | None = "*/5 * * * *"
    pool: str = "pgmaint_target"
    lock_budget: LockBudget = LockBudget()
    preflight: Preflight = Preflight()
    source: str = "config"
    target: str | None = None  # fleet mode: the target's name (include/pgmaint/fleet.py); else None
    one_of_several: bool = False  # fleet mode with several targets: tables are named `target/table` deployment-wide

    def ref(self, table: str) -> str:
        """How `table` is named in DAG params and asset events: `target/table` when this is one of several targets."""
        return f"{self.target}{TARGET_SEPARATOR}{table}" if self.one_of_several else table

    def table(self, name: str) -> TableConfig:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(f"table {name!r} is not configured (configured: {', '.join(self.table_names)})")

    @property
    def table_names(self) -> list[str]:
        return [t.name for t in self.tables]
