"""Fleet mode: one deployment, several target databases.

A config file either describes one target (the top-level `connection_id`, `pool`, `tables`,
`services` — unchanged) or lists several under `targets`:

    timezone: UTC                 # shared defaults: timezone, state_schema, lock_budget,
    schedules: {...}              # preflight, escalation (each target may override them);
    escalation: {...}             # schedules are the DAGs' own, so they are shared only
    targets:
      - name: orders              # optional (default: connection_id): letters, digits, _ and -
        connection_id: orders_db  # required: the Airflow connection of this database
        pool: orders_db           # optional (default: the connection_id): the Airflow pool of its tasks
        tables: [...]             # as in the single-target form
        services: [...]

Each target becomes an ordinary `Config` (every engine function works on one), validated by
`config.parse_config`; problems name the field inside its target (`targets[1].tables[0].interval: …`).
With more than one target, tables are referred to as `target/schema.table` (task map indexes,
the migration DAG's `table` param), since the same table name may exist in several databases.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Any

from include.pgmaint.config import Config, ConfigError, TableConfig, parse_config, read_config_file
from include.pgmaint.config.model import TARGET_SEPARATOR

TARGET_NAME = re.compile(r"^[A-Za-z0-9_-]{1,50}$")
TARGET_KEYS = ("name", "connection_id", "pool", "tables", "services")  # a target's own
OVERRIDABLE = ("timezone", "state_schema", "lock_budget", "preflight", "escalation")  # shared, a target may override
SHARED_ONLY = ("schedules",)


@dataclass(frozen=True)
class Fleet:
    """The targets of one deployment; a single-target config is a fleet of one."""

    targets: tuple[Config, ...]
    source: str = "config"

    @property
    def multi(self) -> bool:
        """More than one target: tables are named `target/table`, the maintenance DAG has a group per target."""
        return len(self.targets) > 1

    @property
    def maintenance_schedule(self) -> str | None:
        return self.targets[0].maintenance_schedule

    @property
    def watchdog_schedule(self) -> str | None:
        return self.targets[0].watchdog_schedule

    def ref(self, config: Config, table: str) -> str:
        """How a table is named across the deployment: `target/table` with several targets, else the table."""
        return config.ref(table)

    @property
    def table_refs(self) -> list[str]:
        return [self.ref(c, t.name) for c in self.targets for t in c.tables]

    def target(self, name: str | None) -> Config:
        for config in self.targets:
            if config.target == name:
                return config
        raise KeyError(
            f"target {name!r} is not configured (configured: {', '.join(str(c.target) for c in self.targets)})"
        )

    def resolve(self, ref: str) -> tuple[Config, TableConfig]:
        """`target/table` (or a bare table name when it is unambiguous) -> (the target's Config, the table)."""
        if self.multi and TARGET_SEPARATOR in ref:
            name, table = ref.split(TARGET_SEPARATOR, 1)
            config = self.target(name)
            return config, config.table(table)
        found = [(c, t) for c in self.targets for t in c.tables if t.name == ref]
        if len(found) == 1:
            return found[0]
        if not found:
            raise KeyError(f"table {ref!r} is not configured (configured: {', '.join(self.table_refs)})")
        raise KeyError(
            f"table {ref!r} is configured on several targets ({', '.join(str(c.target) for c, _ in found)}): "
            f"write it as target{TARGET_SEPARATOR}table"
        )

    def for_connection(self, connection_id: str) -> Config:
        for config in self.targets:
            if config.connection_id == connection_id:
                return config
        raise KeyError(f"no target uses connection {connection_id!r}")


def _first_field(problem: str) -> str:
    return re.split(r"[\[.:\s]", problem, maxsplit=1)[0]


def parse_fleet(raw: Any, source: str = "config") -> Fleet:
    """Validate a parsed YAML document: the single-target form, or `targets: [...]`."""
    # whole: the checks of a `targets:` file in the order README's fleet section lists them.
    if not (isinstance(raw, dict) and "targets" in raw):
        return Fleet((parse_config(raw, source),), source)  # target None: names, keys and messages as before
    problems: list[str] = []
    clash = [k for k in TARGET_KEYS if k in raw]
    if clash:
        problems.append(f"(top level): {', '.join(clash)} cannot sit beside targets: move them into each target")
    unknown = sorted(set(raw) - {"targets", *OVERRIDABLE, *SHARED_ONLY})
    if unknown:
        problems.append(
            f"(top level): unknown key(s) {', '.join(map(repr, unknown))} "
            f"(known with targets: {', '.join(sorted(['targets', *OVERRIDABLE, *SHARED_ONLY]))})"
        )
    items = raw["targets"]
    if not isinstance(items, list) or not items:
        raise ConfigError(
            problems
            + ["targets: must be a non-empty list of targets ({connection_id, tables, name?, pool?, services?})"],
            source,
        )
    shared = {k: v for k, v in raw.items() if k in OVERRIDABLE or k in SHARED_ONLY}
    configs: list[Config] = []
    names: dict[str, int] = {}
    connections: dict[str, int] = {}
    shared_problems: list[str] = []
    for i, item in enumerate(items):
        where = f"targets[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a mapping with connection_id and tables")
            continue
        unknown, connection_id, name = _target_keys(item, where, problems)
        if name is _INVALID:
            continue
        if name in names:
            problems.append(f"{where}.name: duplicate target {name!r} (already targets[{names[name]}])")
        if connection_id in connections:
            problems.append(
                f"{where}.connection_id: {connection_id!r} is already targets[{connections[connection_id]}]'s "
                "(one target per database)"
            )
        if name is None or unknown or "tables" not in item:
            continue
        names[name], connections[connection_id] = i, i
        own = {k: v for k, v in item.items() if k != "name"}
        merged = {**shared, **own, "pool": item.get("pool", connection_id)}
        try:
            config = parse_config(merged, source)
        except ConfigError as exc:
            for p in exc.problems:
                if _first_field(p) in own or _first_field(p) == "pool":
                    problems.append(f"{where}.{p}")
                elif p not in shared_problems:
                    shared_problems.append(p)
            continue
        configs.append(replace(config, target=name))
    problems += shared_problems
    if problems:
        raise ConfigError(problems, source)
    if len(configs) > 1:
        configs = [replace(c, one_of_several=True) for c in configs]
    return Fleet(tuple(configs), source)


_INVALID = object()  # a target whose name or connection_id cannot be used: nothing more to check for it


def _target_keys(item: dict, where: str, problems: list[str]) -> tuple[list[str], Any, Any]:
    """(unknown keys, connection_id, name) of one `targets[i]` entry; problems are appended to `problems`."""
    unknown = sorted(set(item) - set(TARGET_KEYS) - set(OVERRIDABLE))
    if unknown:
        problems.append(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted([*TARGET_KEYS, *OVERRIDABLE]))})"
        )
    for key in ("connection_id", "tables"):
        if key not in item:
            problems.append(f"{where}.{key}: required")
    connection_id = item.get("connection_id")
    if "connection_id" in item and (not isinstance(connection_id, str) or not connection_id):
        problems.append(f"{where}.connection_id: must be a non-empty string")
        return unknown, connection_id, _INVALID
    name = item.get("name", connection_id)
    if name is not None and (not isinstance(name, str) or not TARGET_NAME.fullmatch(name)):
        field = "name" if "name" in item else "connection_id"
        problems.append(
            f"{where}.{field}: {name!r} cannot name a target (letters, digits, _ and -, at most 50)"
            + ("" if "name" in item else "; set name")
        )
        return unknown, connection_id, _INVALID
    return unknown, connection_id, name


def load_fleet(path: str | os.PathLike | None = None) -> Fleet:
    """Read the YAML at `path`, `$PGMAINT_CONFIG`, or the demo config: every target in it."""
    path, raw = read_config_file(path)
    return parse_fleet(raw, source=str(path))


def load_target(path: str | os.PathLike | None = None, target: str | None = None) -> Config:
    """One target's Config, for commands that work on one database (`--target NAME`; optional with one target)."""
    fleet = load_fleet(path)
    if target is None:
        if fleet.multi:
            raise ConfigError(
                [
                    f"targets: this file lists {len(fleet.targets)} targets "
                    f"({', '.join(str(c.target) for c in fleet.targets)}): choose one with --target NAME"
                ],
                fleet.source,
            )
        return fleet.targets[0]
    try:
        return fleet.target(target)
    except KeyError as exc:
        raise ConfigError([f"--target: {exc.args[0]}"], fleet.source) from None


__all__ = ["Fleet", "load_fleet", "load_target", "parse_fleet"]
