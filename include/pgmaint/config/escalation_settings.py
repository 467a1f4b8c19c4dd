"""The `escalation` block of the configuration: where messages go, when they page, watchdog thresholds.

Parsed once with the rest of the configuration (`Config.escalation`); the escalation package reads
these values and this module knows nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

from include.pgmaint.config.errors import ConfigError
from include.pgmaint.intervals import parse_elapsed

SEVERITIES = ("warning", "critical")
TARGET_KINDS = ("slack", "pagerduty", "email", "log")


@dataclass(frozen=True)
class Target:
    """One place a message goes: `slack` / `pagerduty` (connection_id), `email` (to, connection_id), `log`."""

    kind: str
    connection_id: str | None = None
    to: tuple[str, ...] = ()
    from_email: str | None = None

    def __str__(self) -> str:
        if self.kind == "log":
            return "log"
        if self.kind == "email":
            return f"email:{','.join(self.to)}"
        return f"{self.kind}:{self.connection_id}"


@dataclass(frozen=True)
class EscalationSettings:
    notify: tuple[Target, ...] = (Target("log"),)
    page: tuple[Target, ...] = (Target("log"),)
    page_after: timedelta = timedelta(hours=24)
    renotify_every: timedelta = timedelta(hours=4)
    failure_resolve_after: timedelta = timedelta(hours=1)  # task failures without a table: quiet this long = over
    runbook_url: str = "docs/runbook.md"
    # watchdog thresholds
    runway_warning_intervals: int = 2
    connections_warning_percent: float = 80.0
    connections_critical_percent: float = 95.0
    lock_wait_seconds: float = 30.0
    long_transaction_seconds: float = 300.0
    cadence_multiple: float = 3.0
    canary_timeout_ms: int = 2000
    default_exact_count_limit: int = 10_000

    def runbook(self, key: str) -> str:
        return f"{self.runbook_url}#{anchor(key)}"


_DEFAULTS = EscalationSettings()


def _targets(raw: dict, name: str, problems: list[str]) -> tuple[Target, ...]:
    """`escalation.notify` / `escalation.page`: where messages go (default: the log)."""
    items = raw.get(name)
    if items is None:
        return getattr(_DEFAULTS, name)
    out = []
    if not isinstance(items, list):
        problems.append(f"escalation.{name}: must be a list of targets")
        return ()
    for i, item in enumerate(items):
        kind = item.get("kind") if isinstance(item, dict) else None
        if kind not in TARGET_KINDS:
            problems.append(f"escalation.{name}[{i}].kind: {kind!r} is not one of {', '.join(TARGET_KINDS)}")
            continue
        if kind in ("slack", "pagerduty") and not item.get("connection_id"):
            problems.append(f"escalation.{name}[{i}]: kind {kind} needs connection_id (an Airflow connection)")
            continue
        to = item.get("to") or ()
        to = (to,) if isinstance(to, str) else tuple(to)
        if kind == "email" and not to:
            problems.append(f"escalation.{name}[{i}]: kind email needs `to` (one address or a list)")
            continue
        out.append(
            Target(
                kind,
                item.get("connection_id") or ("smtp_default" if kind == "email" else None),
                to,
                item.get("from_email"),
            )
        )
    return tuple(out)


def parse_escalation(raw: dict | None, source: str = "config") -> EscalationSettings:
    """The `escalation` block (already structure-checked by config.SCHEMA) as settings.

    Raises ConfigError naming the field for what the schema cannot express.
    """
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(["escalation: must be a mapping"], source)
    problems: list[str] = []

    def duration(name: str) -> timedelta:
        if name not in raw:
            return getattr(_DEFAULTS, name)
        try:
            return parse_elapsed(raw[name])
        except ValueError as exc:
            problems.append(f"escalation.{name}: {exc}")
            return getattr(_DEFAULTS, name)

    values: dict[str, Any] = {
        "notify": _targets(raw, "notify", problems),
        "page": _targets(raw, "page", problems),
        "page_after": duration("page_after"),
        "renotify_every": duration("renotify_every"),
        "failure_resolve_after": duration("failure_resolve_after"),
    }
    for f in fields(EscalationSettings):
        if f.name in values or f.name not in raw:
            continue
        value = raw[f.name]
        if isinstance(value, bool) or (f.type in ("int", "float") and not isinstance(value, (int, float))):
            problems.append(f"escalation.{f.name}: {value!r} is not a number")
            continue
        values[f.name] = value
    settings = EscalationSettings(**{**asdict_shallow(_DEFAULTS), **values})
    if settings.connections_warning_percent > settings.connections_critical_percent:
        problems.append(
            f"escalation.connections_warning_percent: {settings.connections_warning_percent} is above "
            f"connections_critical_percent ({settings.connections_critical_percent})"
        )
    if problems:
        raise ConfigError(problems, source)
    return settings


def asdict_shallow(obj) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def anchor(key: str) -> str:
    """Runbook anchor of a condition key: `runway:public.x` -> `runway`, `task:...` -> `task-failure`."""
    kind = key.split(":", 1)[0]
    return {"task": "task-failure"}.get(kind, kind.replace("_", "-"))
