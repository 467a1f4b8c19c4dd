"""`pg_cron`: deactivate and reactivate named jobs in ``cron.job``.

Uses pg_cron's own API, ``cron.alter_job(jobid, active := ...)`` (pg_cron >= 1.4),
so the scheduler picks the change up at once. Only jobs that were active before
the pause are reactivated. pg_cron lives in one database (``cron.database_name``);
if that is not the target database, give the service a ``connection_id`` for it.
The role needs to own the jobs (or be a superuser) for ``alter_job``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from include.pgmaint.config import ServiceConfig
from include.pgmaint.services.base import Actor, ServiceError, Snapshot, extension_schema, retry_lock_timeouts


class PgCronAdapter:
    kind = "pg_cron"

    def __init__(self, service: ServiceConfig, conn, open_connection: Callable[[str], Any] | None = None):
        self.service, self._conn, self._open = service, conn, open_connection
        self.jobs: list[str] = list(service.options.get("jobs") or [])

    @contextlib.contextmanager
    def _connection(self):
        conn_id = self.service.options.get("connection_id")
        if not conn_id or self._open is None:
            yield self._conn
            return
        conn = self._open(conn_id)
        try:
            yield conn
        finally:
            conn.close()

    def _check_extension(self, conn) -> None:
        if extension_schema(conn, "pg_cron") is None:
            raise ServiceError(
                f"service {self.service.name!r} (pg_cron): the pg_cron extension is not installed in database "
                f"{conn.info.dbname!r} (it needs shared_preload_libraries = 'pg_cron' and CREATE EXTENSION pg_cron "
                "in the database named by cron.database_name; give the service a connection_id for that database)"
            )

    def _read(self, conn) -> dict[str, dict[str, Any]]:
        self._check_extension(conn)
        rows = conn.execute(
            "SELECT jobid, jobname, active FROM cron.job WHERE jobname = ANY(%s) ORDER BY jobid", [self.jobs]
        ).fetchall()
        missing = sorted(set(self.jobs) - {name for _, name, _ in rows})
        if missing:
            raise ServiceError(
                f"service {self.service.name!r} (pg_cron): no job named {', '.join(map(repr, missing))} in cron.job"
            )
        return {str(jobid): {"name": name, "active": active} for jobid, name, active in rows}

    def status(self) -> Snapshot:
        with self._connection() as conn:
            jobs = self._read(conn)
        paused = not any(j["active"] for j in jobs.values())
        detail = ", ".join(
            f"{j['name']} (job {jobid}) {'active' if j['active'] else 'inactive'}" for jobid, j in jobs.items()
        )
        return Snapshot(paused=paused, state={"jobs": jobs}, detail=detail)

    def _set(self, conn, jobids: list[int], active: bool) -> None:
        for jobid in jobids:
            retry_lock_timeouts(
                lambda jobid=jobid: conn.execute("SELECT cron.alter_job(%s, active := %s)", [jobid, active]),
                f"pg_cron job {jobid}",
            )

    def pause(self, before: Snapshot, actor: Actor) -> None:
        active = [int(jobid) for jobid, j in before.state["jobs"].items() if j["active"]]
        with self._connection() as conn:
            self._check_extension(conn)
            self._set(conn, active, False)

    def resume(self, previous: dict[str, Any], actor: Actor) -> None:
        was_active = [int(jobid) for jobid, j in previous.get("jobs", {}).items() if j["active"]]
        if not was_active:
            return
        with self._connection() as conn:
            self._check_extension(conn)
            existing = {r[0] for r in conn.execute("SELECT jobid FROM cron.job WHERE jobid = ANY(%s)", [was_active])}
            self._set(conn, [j for j in was_active if j in existing], True)
