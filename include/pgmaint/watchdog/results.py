"""What a watchdog check returns (`CheckResult`), the condition keys per table, and the cadence threshold."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from include.pgmaint.config import Config, EscalationSettings
from include.pgmaint.escalation import Condition

log = logging.getLogger("pgmaint.watchdog")

TABLE_KINDS = (
    "catalog",
    "runway",
    "gaps",
    "default_rows",
    "expired_attached",
    "cadence",
    "long_transactions",
    "dual_manager",
)
DATABASE_KINDS = ("canary", "connections", "lock_waits")
MAINTENANCE_DAG = "partition_maintenance"


@dataclass
class CheckResult:
    conditions: list[Condition] = field(default_factory=list)
    scope: list[str] = field(default_factory=list)  # keys evaluated: an active one not in `conditions` is over
    migrate: list[str] = field(default_factory=list)  # auto_migrate tables with DEFAULT rows: emit DEFAULT_ROWS
    notes: list[str] = field(default_factory=list)  # for the log

    def add(self, other: CheckResult) -> CheckResult:
        return CheckResult(
            self.conditions + other.conditions,
            self.scope + other.scope,
            self.migrate + other.migrate,
            self.notes + other.notes,
        )

    def as_dict(self) -> dict:
        return {
            "conditions": [c.as_dict() for c in self.conditions],
            "scope": self.scope,
            "migrate": self.migrate,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: dict | None) -> CheckResult:
        if not d:
            return cls()
        return cls(
            [Condition.from_dict(c) for c in d.get("conditions", [])],
            list(d.get("scope", [])),
            list(d.get("migrate", [])),
            list(d.get("notes", [])),
        )


def table_keys(table: str) -> list[str]:
    return [f"{kind}:{table}" for kind in TABLE_KINDS]


def key_table(key: str) -> str | None:
    """The table a key is about (`runway:public.x` -> `public.x`, `task:dag.task:public.x` -> `public.x`)."""
    kind, _, rest = key.partition(":")
    if kind in TABLE_KINDS:
        return rest
    if kind == "task" and ":" in rest:
        return rest.split(":", 1)[1]
    return None


def maintenance_interval(schedule: str | None, now: datetime) -> timedelta | None:
    """Longest gap between consecutive runs of a cron schedule (None: manual only or not a cron)."""
    if not schedule:
        return None
    try:
        from croniter import croniter

        it = croniter(schedule, now)
        times = [it.get_next(datetime) for _ in range(8)]
    except Exception:
        log.warning("cadence check off: cannot read the maintenance schedule %r as cron", schedule)
        return None
    return max(b - a for a, b in zip(times, times[1:]))


def cadence_threshold(config: Config, settings: EscalationSettings, now: datetime) -> timedelta | None:
    interval = maintenance_interval(config.maintenance_schedule, now)
    return interval * settings.cadence_multiple if interval else None


def log_result(result: CheckResult) -> None:
    for note in result.notes:
        log.info("%s", note)
    for c in result.conditions:
        log.warning("%s %s: %s", c.severity.upper(), c.key, c.message)
    if not result.conditions:
        log.info("no conditions (%d check(s))", len(result.scope))
