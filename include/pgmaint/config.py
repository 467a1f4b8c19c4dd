"""The YAML configuration: load, validate, and expose as small frozen values.

Validation happens in two passes. A JSON Schema catches structure (unknown
keys, wrong types, missing fields) and names the field by its path; then the
checks a schema cannot express (time zones, identifiers, durations against
intervals, duplicates, service references and cycles). Any problem raises
`ConfigError` before anything touches a database.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pendulum
import yaml

from include.pgmaint.intervals import INTERVALS, Duration, PartitionInterval
from include.pgmaint.naming import check_format

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "pgmaint.yaml"
SERVICE_KINDS = ("flag", "pg_partman", "pg_cron", "airflow_dag", "http")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field and the problem."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid pgmaint configuration ({source}):\n{lines}")


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


@dataclass(frozen=True)
class Config:
    connection_id: str
    timezone: str
    state_schema: str
    tables: tuple[TableConfig, ...]
    services: tuple[ServiceConfig, ...]
    escalation: dict[str, Any] = field(hash=False, compare=False)
    maintenance_schedule: str | None = "*/15 * * * *"
    watchdog_schedule: str | None = "*/5 * * * *"
    pool: str = "pgmaint_target"
    lock_budget: LockBudget = LockBudget()
    preflight: Preflight = Preflight()
    source: str = "config"
    target: str | None = None  # fleet mode: the target's name (include/pgmaint/fleet.py); else None

    def table(self, name: str) -> TableConfig:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(f"table {name!r} is not configured (configured: {', '.join(self.table_names)})")

    @property
    def table_names(self) -> list[str]:
        return [t.name for t in self.tables]


# --- schema ------------------------------------------------------------------

_NAME = {"type": "string", "minLength": 1}
_POS_INT = {"type": "integer", "minimum": 1}
_POS_NUM = {"type": "number", "exclusiveMinimum": 0}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["tables"],
    "properties": {
        "connection_id": _NAME,
        "timezone": _NAME,
        "state_schema": _NAME,
        "pool": _NAME,
        "schedules": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "maintenance": {"type": ["string", "null"]},
                "watchdog": {"type": ["string", "null"]},
            },
        },
        "lock_budget": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "lock_timeout_ms": {"type": "integer", "minimum": 1, "maximum": 200},
                "max_lock_timeout_ms": {"type": "integer", "minimum": 1, "maximum": 200},
                "statement_timeout_ms": _POS_INT,
                "scan_timeout_ms": _POS_INT,
                "total_seconds": _POS_NUM,
                "backoff_base_seconds": _POS_NUM,
                "backoff_cap_seconds": _POS_NUM,
            },
        },
        "preflight": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "max_connection_usage": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "long_transaction_seconds": _POS_NUM,
                "allow_waiting_sessions": {"type": "integer", "minimum": 0},
            },
        },
        "tables": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "partition_key", "interval", "premake"],
                "properties": {
                    "name": {"type": "string"},
                    "partition_key": {"type": "string"},
                    "interval": {"type": "string"},
                    "premake": {"type": "integer"},
                    "retention": {"type": ["string", "null"]},
                    "writers": {"type": "array", "items": {"type": "string"}},
                    "retention_keep_table": {"type": "boolean"},
                    "auto_migrate": {"type": "boolean"},
                    "maintained_by": {"enum": ["pgmaint", "pg_partman"]},
                    "name_format": {"type": "string"},
                },
            },
        },
        "services": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "kind"],
                "properties": {
                    "name": _NAME,
                    "kind": {"enum": list(SERVICE_KINDS)},
                    "depends_on": {"type": "array", "items": {"type": "string"}},
                    # kind-specific (which kind takes which: SERVICE_FIELDS; docs/services.md)
                    "lease_minutes": {"type": "integer", "minimum": 1, "maximum": 10080},
                    "flag": _NAME,
                    "parents": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    "jobs": {"type": "array", "minItems": 1, "items": _NAME},
                    "dag_id": _NAME,
                    "connection_id": _NAME,
                    "pause_url": _NAME,
                    "resume_url": _NAME,
                    "status_url": _NAME,
                    "method": {"enum": ["POST", "PUT", "PATCH", "GET", "DELETE"]},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "body": {"type": ["object", "array", "string", "null"]},
                    "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
                    "retries": {"type": "integer", "minimum": 0, "maximum": 10},
                },
            },
        },
        # Watchdog thresholds and the notify/page policy (include/pgmaint/escalation.py,
        # parse_escalation; defaults there and in README). Durations: '24 hours', '30 minutes', '90 seconds'.
        "escalation": {
            "type": "object",
            "additionalProperties": False,
            "$defs": {
                "duration": {"type": "string",
                             "pattern": r"^\s*[0-9]+\s*(seconds?|minutes?|hours?|days?|weeks?)\s*$"},
                "targets": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["kind"],
                        "properties": {
                            "kind": {"enum": ["slack", "pagerduty", "email", "log"]},
                            "connection_id": _NAME,
                            "to": {"oneOf": [_NAME, {"type": "array", "minItems": 1, "items": _NAME}]},
                            "from_email": _NAME,
                        },
                        "allOf": [
                            {"if": {"required": ["kind"], "properties": {"kind": {"enum": ["slack", "pagerduty"]}}},
                             "then": {"required": ["connection_id"]}},
                            {"if": {"required": ["kind"], "properties": {"kind": {"const": "email"}}},
                             "then": {"required": ["to"]}},
                        ],
                    },
                },
            },
            "properties": {
                "notify": {"$ref": "#/properties/escalation/$defs/targets"},
                "page": {"$ref": "#/properties/escalation/$defs/targets"},
                "page_after": {"$ref": "#/properties/escalation/$defs/duration"},
                "renotify_every": {"$ref": "#/properties/escalation/$defs/duration"},
                "failure_resolve_after": {"$ref": "#/properties/escalation/$defs/duration"},
                "runbook_url": _NAME,
                "runway_warning_intervals": {"type": "integer", "minimum": 1},
                "connections_warning_percent": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                "connections_critical_percent": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                "lock_wait_seconds": _POS_NUM,
                "long_transaction_seconds": _POS_NUM,
                "cadence_multiple": {"type": "number", "minimum": 1},
                "canary_timeout_ms": {"type": "integer", "minimum": 100, "maximum": 60000},
                "default_exact_count_limit": {"type": "integer", "minimum": 0, "maximum": 10_000_000},
            },
        },
    },
}


def _path(error: jsonschema.ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _schema_problems(raw: Any) -> tuple[list[str], set[tuple]]:
    """Problems, and the (section, index) items they are in (those items skip the semantic checks)."""
    validator = jsonschema.Draft202012Validator(SCHEMA)
    problems, bad_items = [], set()
    for error in sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path))):
        path = list(error.absolute_path)
        if not path:
            bad_items.add(("*",))  # the document itself
        elif len(path) >= 2 and isinstance(path[1], int):
            bad_items.add((path[0], path[1]))  # one table or service
        else:
            bad_items.add((path[0],))  # a whole section
        if error.validator == "additionalProperties":
            known = ", ".join(sorted(error.schema.get("properties", {})))
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            problems.append(f"{_path(error)}: unknown key(s) {', '.join(map(repr, extra))} (known: {known})")
        else:
            problems.append(f"{_path(error)}: {error.message}")
    return problems, bad_items


# --- parsing -----------------------------------------------------------------


def parse_config(raw: Any, source: str = "config") -> Config:
    """Validate a parsed YAML document and build the `Config`."""
    if raw is None:
        raise ConfigError(["(top level): the file is empty"], source)
    if isinstance(raw, dict) and "targets" in raw:  # several databases: include/pgmaint/fleet.py reads those
        raise ConfigError(["targets: this file lists targets (fleet mode); read it with include.pgmaint.fleet.load_fleet, "
                           "or pick one target (--target NAME where a command offers it)"], source)
    problems, bad_items = _schema_problems(raw)
    if not isinstance(raw, dict) or bad_items & {("*",), ("tables",), ("services",)}:
        raise ConfigError(problems, source)  # the document's shape is wrong: nothing more to check

    tz = raw.get("timezone", "UTC")
    try:
        pendulum.timezone(tz)
    except Exception:
        problems.append(f"timezone: {tz!r} is not a known IANA time zone (e.g. 'UTC', 'America/Chicago')")
    state_schema = raw.get("state_schema", "pgmaint")
    try:
        state_schema = parse_identifier(state_schema)
    except ValueError as exc:
        problems.append(f"state_schema: {exc}")

    if any(section == "services" for section, *_ in bad_items):
        raise ConfigError(problems, source)  # tables refer to services: check those first
    services, service_problems = _parse_services(raw.get("services", []))
    problems += service_problems
    service_names = {s.name for s in services}

    tables: list[TableConfig] = []
    seen: dict[tuple[str, str], str] = {}
    for i, item in enumerate(raw["tables"]):
        where = f"tables[{i}]"
        if ("tables", i) in bad_items:
            continue
        try:
            table = _parse_table(item, where, service_names)
        except ConfigError as exc:
            problems += exc.problems
            continue
        key = (table.schema, table.table)
        if key in seen:
            problems.append(f"{where}.name: duplicate table {table.name!r} (already configured as {seen[key]!r})")
        seen[key] = table.name
        tables.append(table)
        if table.maintained_by == "pg_partman" and not any(
                s.kind == "pg_partman" and s.name in table.writers for s in services):
            problems.append(f"{where}.maintained_by: pg_partman needs a writer of kind pg_partman (so that a "
                            "migration pauses pg_partman's maintenance of the table while it moves rows)")

    if "escalation" not in {section for section, *_ in bad_items}:
        from include.pgmaint.escalation import parse_escalation  # imports this module: import lazily

        try:
            parse_escalation(raw.get("escalation"), source)  # what the schema cannot express
        except ConfigError as exc:
            problems += exc.problems
    schedules = raw.get("schedules", {})
    if problems:
        raise ConfigError(problems, source)
    return Config(
        connection_id=raw.get("connection_id", "pgmaint_target"),
        timezone=tz,
        state_schema=state_schema,
        tables=tuple(tables),
        services=tuple(services),
        escalation=raw.get("escalation", {}),
        maintenance_schedule=schedules.get("maintenance", "*/15 * * * *"),
        watchdog_schedule=schedules.get("watchdog", "*/5 * * * *"),
        pool=raw.get("pool", "pgmaint_target"),
        lock_budget=LockBudget(**raw.get("lock_budget", {})),
        preflight=Preflight(**raw.get("preflight", {})),
        source=source,
    )


def _parse_table(item: dict[str, Any], where: str, service_names: set[str]) -> TableConfig:
    problems = []
    schema = table = key = interval = retention = None
    try:
        schema, table = parse_qualified_name(item["name"])
    except ValueError as exc:
        problems.append(f"{where}.name: {exc}")
    try:
        key = parse_identifier(item["partition_key"])
    except ValueError as exc:
        problems.append(f"{where}.partition_key: {exc}")
    try:
        interval = PartitionInterval.parse(item["interval"])
    except ValueError as exc:
        problems.append(f"{where}.interval: {exc}")
    premake = item["premake"]
    if isinstance(premake, float):  # JSON Schema's "integer" accepts 2.0
        problems.append(f"{where}.premake: must be a whole number (got {premake})")
    elif premake < 1:
        problems.append(f"{where}.premake: must be at least 1 (got {premake})")
    elif premake > 1000:
        problems.append(f"{where}.premake: {premake} partitions ahead is more than the supported 1000")
    if item.get("retention") is not None:
        try:
            retention = Duration.parse(item["retention"])
        except ValueError as exc:
            problems.append(f"{where}.retention: {exc}")
        if retention and interval and retention.approx_hours < interval.duration.approx_hours:
            problems.append(
                f"{where}.retention: {retention} is shorter than one interval ({interval}); "
                "every partition would expire as soon as it is created"
            )
    name_format = item.get("name_format")
    if name_format is not None and interval is not None:
        try:
            check_format(name_format, interval.unit)
        except ValueError as exc:
            problems.append(f"{where}.name_format: {exc}")
    writers = tuple(item.get("writers", []))
    for name in writers:
        if name not in service_names:
            problems.append(f"{where}.writers: {name!r} is not a configured service")
    if problems:
        raise ConfigError(problems)
    return TableConfig(
        name=item["name"],
        schema=schema,
        table=table,
        partition_key=key,
        interval=interval,
        premake=premake,
        retention=retention,
        writers=writers,
        retention_keep_table=item.get("retention_keep_table", False),
        auto_migrate=item.get("auto_migrate", False),
        maintained_by=item.get("maintained_by", "pgmaint"),
        name_format=name_format,
    )


# Kind-specific service fields and their defaults (None = required, no default).
# Every kind also takes `lease_minutes` (default 120). See docs/services.md.
SERVICE_FIELDS: dict[str, dict[str, Any]] = {
    "flag": {"flag": "<name>"},
    "pg_partman": {"parents": "<tables whose writers include the service>"},
    "pg_cron": {"jobs": None, "connection_id": "<connection_id>"},
    "airflow_dag": {"dag_id": None, "connection_id": "airflow_api", "timeout_seconds": 10, "retries": 3},
    "http": {"pause_url": None, "resume_url": None, "status_url": "<none>", "method": "POST", "headers": {},
             "body": "<none>", "timeout_seconds": 5, "retries": 3},
}
DEFAULT_LEASE_MINUTES = 120


def _service_options(where: str, item: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The kind-specific options of one service, with defaults filled in, and their problems."""
    kind, problems = item["kind"], []
    fields = SERVICE_FIELDS[kind]
    given = {k: v for k, v in item.items() if k not in ("name", "kind", "depends_on")}
    options: dict[str, Any] = {"lease_minutes": given.pop("lease_minutes", DEFAULT_LEASE_MINUTES)}
    for key in sorted(given):
        if key not in fields:
            problems.append(f"{where}.{key}: not a field of kind {kind} (its fields: {', '.join([*fields, 'lease_minutes'])})")
    for key, default in fields.items():
        if key in given:
            options[key] = given[key]
        elif default is None:
            problems.append(f"{where}.{key}: required for kind {kind}")
        elif not (isinstance(default, str) and default.startswith("<")):
            options[key] = default
    if kind == "flag":
        options.setdefault("flag", item["name"])
    if "parents" in options:
        parents = []
        for j, parent in enumerate(options["parents"]):
            try:
                parents.append(".".join(parse_qualified_name(parent)))
            except ValueError as exc:
                problems.append(f"{where}.parents[{j}]: {exc}")
        options["parents"] = parents
    for key in ("pause_url", "resume_url", "status_url"):
        url = options.get(key)
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            problems.append(f"{where}.{key}: {url!r} is not an http:// or https:// URL")
    if isinstance(options.get("retries"), float) or isinstance(options.get("lease_minutes"), float):
        problems.append(f"{where}: retries and lease_minutes must be whole numbers")
    return options, problems


def _parse_services(items: list[dict[str, Any]]) -> tuple[list[ServiceConfig], list[str]]:
    problems = []
    services = []
    names: set[str] = set()
    for i, item in enumerate(items):
        if item["name"] in names:
            problems.append(f"services[{i}].name: duplicate service {item['name']!r}")
        names.add(item["name"])
        options, option_problems = _service_options(f"services[{i}]", item)
        problems += option_problems
        services.append(ServiceConfig(item["name"], item["kind"], tuple(item.get("depends_on", [])), options))
    for i, service in enumerate(services):
        for dep in service.depends_on:
            if dep not in names:
                problems.append(f"services[{i}].depends_on: {dep!r} is not a configured service")
    cycle = _find_cycle({s.name: [d for d in s.depends_on if d in names] for s in services})
    if cycle:
        problems.append(f"services: dependency cycle {' -> '.join(cycle)}")
    return services, problems


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def read_config_file(path: str | os.PathLike | None = None) -> tuple[Path, object]:
    """(path, parsed YAML) of `path`, `$PGMAINT_CONFIG`, or the demo config; unreadable or invalid: ConfigError."""
    path = Path(path or os.environ.get("PGMAINT_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"(file): cannot read {path}: {exc.strerror}"], str(path)) from None
    try:
        return path, yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml: 50x faster
    except yaml.YAMLError as exc:
        raise ConfigError([f"(file): not valid YAML: {exc}"], str(path)) from None


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Read the YAML at `path`, `$PGMAINT_CONFIG`, or the demo config."""
    path, raw = read_config_file(path)
    return parse_config(raw, source=str(path))


__all__ = [
    "Config",
    "ConfigError",
    "INTERVALS",
    "LockBudget",
    "Preflight",
    "ServiceConfig",
    "TableConfig",
    "load_config",
    "parse_config",
    "parse_qualified_name",
]
