"""`flag`: a switch in `<state_schema>.service_flags` that applications check.

Applications call ``<state_schema>.service_enabled('<flag>')`` before the work
the flag guards (e.g. writing a request-log row); pausing sets the row's
``enabled`` to false, resuming sets it back. A missing row means enabled.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from include.pgmaint.config import ServiceConfig
from include.pgmaint.services.base import Actor, Snapshot, retry_lock_timeouts


class FlagAdapter:
    kind = "flag"

    def __init__(self, service: ServiceConfig, conn, state_schema: str):
        self.service, self.conn = service, conn
        self.flag = service.options.get("flag") or service.name
        self.table = sql.Identifier(state_schema, "service_flags")

    def status(self) -> Snapshot:
        row = self.conn.execute(
            sql.SQL("SELECT enabled, changed_by, reason, changed_at FROM {} WHERE name = %s").format(self.table),
            [self.flag],
        ).fetchone()
        enabled = True if row is None else row[0]
        detail = f"flag {self.flag!r} is {'enabled' if enabled else 'disabled'}"
        if row is not None and row[1]:
            detail += (
                f" (last changed by {row[1]} at {row[3]:%Y-%m-%d %H:%M:%S%z}" + (f": {row[2]}" if row[2] else "") + ")"
            )
        return Snapshot(paused=not enabled, state={"enabled": enabled}, detail=detail)

    def _set(self, enabled: bool, actor: Actor) -> None:
        def run():
            self.conn.execute(
                sql.SQL(
                    "INSERT INTO {} AS f (name, enabled, changed_at, changed_by, reason) "
                    "VALUES (%s, %s, clock_timestamp(), %s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET enabled = EXCLUDED.enabled, changed_at = EXCLUDED.changed_at, "
                    "changed_by = EXCLUDED.changed_by, reason = EXCLUDED.reason "
                    "WHERE f.enabled IS DISTINCT FROM EXCLUDED.enabled"
                ).format(self.table),
                [self.flag, enabled, actor.who, actor.reason],
            )

        retry_lock_timeouts(run, f"flag {self.flag!r}")

    def pause(self, before: Snapshot, actor: Actor) -> None:
        self._set(False, actor)

    def resume(self, previous: dict[str, Any], actor: Actor) -> None:
        if previous.get("enabled", True):
            self._set(True, actor)
