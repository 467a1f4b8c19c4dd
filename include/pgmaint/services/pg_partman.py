"""`pg_partman`: switch off pg_partman's automatic maintenance for some parents.

Pausing sets ``automatic_maintenance = 'off'`` in ``<partman schema>.part_config``
for each affected parent that has it ``'on'``; resuming sets ``'on'`` again only
for the parents that were ``'on'`` before the pause (the previous values are
kept in the lease). ``run_maintenance()`` without a parent argument (what cron
or the background worker calls) then leaves those parents alone.

Parents: the service's ``parents`` option, or else every configured table whose
``writers`` name the service. Works with pg_partman 4.x and 5.x (same column).
"""

from __future__ import annotations

import logging
from typing import Any

from psycopg import sql

from include.pgmaint.config import Config, ServiceConfig
from include.pgmaint.services.base import Actor, ServiceError, Snapshot, extension_schema, retry_lock_timeouts

log = logging.getLogger("pgmaint.services.pg_partman")

# run_maintenance() holds this advisory lock (pg_try_advisory_lock(hashtext('pg_partman run_maintenance'))) while it runs.
_RUNNING = """
SELECT count(*) > 0 FROM pg_locks
WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = hashtext('pg_partman run_maintenance')::bigint
"""


def default_parents(config: Config, service: ServiceConfig) -> list[str]:
    explicit = service.options.get("parents")
    if explicit:
        return list(explicit)
    return [f"{t.schema}.{t.table}" for t in config.tables if service.name in t.writers]


class PgPartmanAdapter:
    kind = "pg_partman"

    def __init__(self, service: ServiceConfig, conn, parents: list[str]):
        self.service, self.conn, self.parents = service, conn, parents

    def _part_config(self) -> sql.Composable:
        schema = extension_schema(self.conn, "pg_partman")
        if schema is None:
            db = self.conn.info.dbname
            raise ServiceError(
                f"service {self.service.name!r} (pg_partman): the pg_partman extension is not installed in database {db!r}"
            )
        return sql.Identifier(schema, "part_config")

    def _values(self, parents: list[str]) -> dict[str, str]:
        rows = self.conn.execute(
            sql.SQL("SELECT parent_table, automatic_maintenance FROM {} WHERE parent_table = ANY(%s)").format(
                self._part_config()
            ),
            [parents],
        ).fetchall()
        return dict(rows)

    def status(self) -> Snapshot:
        if not self.parents:
            raise ServiceError(
                f"service {self.service.name!r} (pg_partman): no parents (give `parents`, or name the service in a table's writers)"
            )
        values = self._values(self.parents)
        missing = [p for p in self.parents if p not in values]
        if missing:
            raise ServiceError(
                f"service {self.service.name!r} (pg_partman): not managed by pg_partman (no row in part_config): {', '.join(missing)}"
            )
        running = self.conn.execute(_RUNNING).fetchone()[0]
        paused = all(v == "off" for v in values.values())
        detail = "automatic_maintenance " + ", ".join(f"{p}={v}" for p, v in values.items())
        if running:
            detail += "; a run_maintenance() is in progress right now"
        return Snapshot(paused=paused, state={"automatic_maintenance": values}, detail=detail)

    def pause(self, before: Snapshot, actor: Actor) -> None:
        on = [p for p, v in before.state["automatic_maintenance"].items() if v != "off"]
        if not on:
            return
        table = self._part_config()
        retry_lock_timeouts(
            lambda: self.conn.execute(
                sql.SQL(
                    "UPDATE {} SET automatic_maintenance = 'off' WHERE parent_table = ANY(%s) AND automatic_maintenance <> 'off'"
                ).format(table),
                [on],
            ),
            f"pg_partman part_config for {', '.join(on)}",
        )
        if self.conn.execute(_RUNNING).fetchone()[0]:
            log.warning(
                "%s: automatic maintenance is off now, but a run_maintenance() already in progress will finish its pass",
                self.service.name,
            )

    def resume(self, previous: dict[str, Any], actor: Actor) -> None:
        was_on = [p for p, v in previous.get("automatic_maintenance", {}).items() if v == "on"]
        if not was_on:
            return
        table = self._part_config()
        gone = [p for p in was_on if p not in self._values(was_on)]
        if gone:
            log.warning(
                "%s: no longer in pg_partman's part_config, nothing to restore: %s", self.service.name, ", ".join(gone)
            )
        retry_lock_timeouts(
            lambda: self.conn.execute(
                sql.SQL(
                    "UPDATE {} SET automatic_maintenance = 'on' WHERE parent_table = ANY(%s) AND automatic_maintenance <> 'on'"
                ).format(table),
                [was_on],
            ),
            f"pg_partman part_config for {', '.join(was_on)}",
        )
