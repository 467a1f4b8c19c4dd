"""Load and validate the YAML configuration into a `Config`.

Validation happens in two passes. The JSON Schema (`schema.py`) catches structure and names the
field by its path; then the checks a schema cannot express (time zones, identifiers, durations
against intervals, duplicates, service references and cycles, the escalation block). Any problem
raises `ConfigError` before anything touches a database.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pendulum
import yaml

from include.pgmaint.config.errors import ConfigError
from include.pgmaint.config.escalation_settings import parse_escalation
from include.pgmaint.config.model import (
    Config,
    LockBudget,
    Preflight,
    ServiceConfig,
    TableConfig,
    parse_identifier,
    parse_qualified_name,
)
from include.pgmaint.config.schema import schema_problems
from include.pgmaint.intervals import Duration, PartitionInterval
from include.pgmaint.naming import check_format

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "config" / "pgmaint.yaml"


def parse_config(raw: Any, source: str = "config") -> Config:
    """Validate a parsed YAML document and build the `Config`."""
    if raw is None:
        raise ConfigError(["(top level): the file is empty"], source)
    if isinstance(raw, dict) and "targets" in raw:  # several databases: include/pgmaint/fleet.py reads those
        raise ConfigError(
            [
                "targets: this file lists targets (fleet mode); read it with include.pgmaint.fleet.load_fleet, "
                "or pick one target (--target NAME where a command offers it)"
            ],
            source,
        )
    problems, bad_items = schema_problems(raw)
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
    tables = _parse_tables(raw["tables"], bad_items, services, problems)

    escalation = None
    if "escalation" not in {section for section, *_ in bad_items}:
        try:
            escalation = parse_escalation(raw.get("escalation"), source)  # what the schema cannot express
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
        escalation=escalation,
        maintenance_schedule=schedules.get("maintenance", "*/15 * * * *"),
        watchdog_schedule=schedules.get("watchdog", "*/5 * * * *"),
        pool=raw.get("pool", "pgmaint_target"),
        lock_budget=LockBudget(**raw.get("lock_budget", {})),
        preflight=Preflight(**raw.get("preflight", {})),
        source=source,
    )


def _parse_tables(
    items: list, bad_items: set[tuple], services: list[ServiceConfig], problems: list[str]
) -> list[TableConfig]:
    """The `tables` section (items the schema rejected are skipped); problems are appended to `problems`."""
    service_names = {s.name for s in services}
    tables: list[TableConfig] = []
    seen: dict[tuple[str, str], str] = {}
    for i, item in enumerate(items):
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
            s.kind == "pg_partman" and s.name in table.writers for s in services
        ):
            problems.append(
                f"{where}.maintained_by: pg_partman needs a writer of kind pg_partman (so that a "
                "migration pauses pg_partman's maintenance of the table while it moves rows)"
            )
    return tables


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
    "http": {
        "pause_url": None,
        "resume_url": None,
        "status_url": "<none>",
        "method": "POST",
        "headers": {},
        "body": "<none>",
        "timeout_seconds": 5,
        "retries": 3,
    },
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
            problems.append(
                f"{where}.{key}: not a field of kind {kind} (its fields: {', '.join([*fields, 'lease_minutes'])})"
            )
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
                return path[path.index(nxt) :] + [nxt]
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
