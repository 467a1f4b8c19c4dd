"""pgmaint's own state in `state_schema`: migrations and the run/step journal.

The journal, not Airflow's task state, is the source of truth: the watchdog
reads it to tell when maintenance last succeeded for a table, and responders
can query it with plain SQL.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from include.pgmaint.execute import Step

log = logging.getLogger("pgmaint.state")
SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, text) for every `NNN_name.sql` under include/sql, in order."""
    out = []
    for path in sorted(SQL_DIR.glob("[0-9][0-9][0-9]_*.sql")):
        out.append((int(path.name[:3]), path.name, path.read_text()))
    return out


def latest_version() -> int:
    return max((version for version, _, _ in migrations()), default=0)


def state_schema_version(conn, schema: str) -> int | None:
    """The state schema's version: None when the schema does not exist, 0 when it has no version table yet.

    Reads the catalog and `schema_version` only (no lock beyond ACCESS SHARE, no DDL)."""
    exists, has_versions = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s), "
        "EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = 'schema_version')",
        [schema, schema],
    ).fetchone()
    if not exists:
        return None
    if not has_versions:
        return 0
    return conn.execute(
        sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_version").format(sql.Identifier(schema))
    ).fetchone()[0]


def ensure_state_schema(conn, schema: str, wait_seconds: float = 10.0) -> int:
    """Create or upgrade the state schema; safe to call from many workers at once. Returns the version.

    When the schema is already at the latest version (every run after the first) this only reads
    the catalog: no DDL (nothing in DDL audit logs) and no CREATE privilege on the database needed.
    """
    latest = latest_version()
    current = state_schema_version(conn, schema)
    if current is not None and current >= latest:
        return current
    try:
        return _migrate_state_schema(conn, schema, latest, wait_seconds)
    except psycopg.errors.InsufficientPrivilege as exc:  # the transaction rolled back: nothing was applied
        from include.pgmaint.privileges import JOBS, _state_schema, current_role

        missing = _state_schema(conn, current_role(conn), schema, JOBS)
        raise PermissionError(
            f"state schema {schema!r}: cannot create or upgrade it to version {latest} ({exc}); "
            "nothing was applied. " + (" | ".join(str(m) for m in missing) or "")
        ) from exc


def _migrate_state_schema(conn, schema: str, latest: int, wait_seconds: float) -> int:
    ident = sql.Identifier(schema).as_string(None)
    deadline = time.monotonic() + wait_seconds
    while True:
        with conn.transaction():
            got = conn.execute(
                "SELECT pg_try_advisory_xact_lock(hashtext('pgmaint'), hashtext(%s))", ["state:" + schema]
            ).fetchone()[0]
            if got:
                current = state_schema_version(conn, schema)  # another worker may have done it meanwhile
                if current is None:
                    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                    current = 0
                if current >= latest:
                    return current
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {}.schema_version (version integer PRIMARY KEY, name text NOT NULL, "
                        "applied_at timestamptz NOT NULL DEFAULT now())"
                    ).format(sql.Identifier(schema))
                )
                for version, name, text in migrations():
                    if version > current:
                        log.info("state schema %s: applying %s", schema, name)
                        conn.execute(sql.SQL(text.replace("{schema}", ident)))
                        conn.execute(
                            sql.SQL("INSERT INTO {}.schema_version (version, name) VALUES (%s, %s)").format(
                                sql.Identifier(schema)
                            ),
                            [version, name],
                        )
                        current = version
                return current
        if time.monotonic() > deadline:
            raise TimeoutError(f"another session kept the state-schema migration lock for {wait_seconds:.0f}s")
        time.sleep(0.2)


def to_json(value: Any) -> str:
    def default(o):
        if is_dataclass(o):
            return asdict(o)
        if isinstance(o, datetime):
            return o.isoformat()
        return str(o)

    return json.dumps(value, default=default)


class Journal:
    """Writes runs and steps. Each write is its own short autocommit statement."""

    def __init__(self, conn, schema: str):
        self.conn, self.schema = conn, sql.Identifier(schema)

    def start_run(
        self,
        job: str,
        table: str,
        *,
        dag_id: str | None = None,
        dag_run_id: str | None = None,
        task_id: str | None = None,
    ) -> int:
        return self.conn.execute(
            sql.SQL(
                "INSERT INTO {}.runs (job, table_name, dag_id, dag_run_id, task_id) VALUES (%s, %s, %s, %s, %s) RETURNING run_id"
            ).format(self.schema),
            [job, table, dag_id, dag_run_id, task_id],
        ).fetchone()[0]

    def record_runs(
        self,
        job: str,
        rows: list[tuple[str, str, dict, str | None]],
        *,
        dag_id: str | None = None,
        dag_run_id: str | None = None,
        task_id: str | None = None,
    ) -> int:
        """Journal many finished runs in one round trip: (table, outcome, summary, error) each.

        What a plan-once maintenance run writes for every table it found nothing to do for (or skipped):
        the same row per table a per-table run writes, so `last_success` (the watchdog's cadence check)
        still sees every table checked. Returns the number of rows written.
        """
        if not rows:
            return 0
        tables, outcomes, summaries, errors = (list(col) for col in zip(*rows))
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {}.runs (job, table_name, dag_id, dag_run_id, task_id, finished_at, outcome, summary, error) "
                "SELECT %s, t, %s, %s, %s, clock_timestamp(), o, s::jsonb, e "
                "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS r(t, o, s, e)"
            ).format(self.schema),
            [job, dag_id, dag_run_id, task_id, tables, outcomes, [to_json(s) for s in summaries], errors],
        )
        return len(rows)

    def record_step(
        self,
        run_id: int,
        step: Step,
        started_at: datetime,
        outcome: str,
        attempts: int,
        error: str | None = None,
        blockers: list | None = None,
    ) -> None:
        rendered = step.render(self.conn)
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {}.steps (run_id, action, target, statements, locks, started_at, outcome, attempts, error, blockers) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)"
            ).format(self.schema),
            [
                run_id,
                step.action,
                step.target,
                [s for s, _ in rendered],
                [lk for _, lk in rendered],
                started_at,
                outcome,
                attempts,
                error,
                to_json(blockers or []),
            ],
        )

    def finish_run(self, run_id: int, outcome: str, summary: dict, error: str | None = None) -> None:
        self.conn.execute(
            sql.SQL(
                "UPDATE {}.runs SET finished_at = clock_timestamp(), outcome = %s, summary = %s::jsonb, error = %s WHERE run_id = %s"
            ).format(self.schema),
            [outcome, to_json(summary), error, run_id],
        )

    def finish_run_safely(self, run_id: int, outcome: str, summary: dict, error: str | None = None) -> None:
        """`finish_run`, unless the connection is gone: then say so (the run row stays 'running';
        the watchdog's cadence check sees no success) instead of hiding the run's own error."""
        try:
            self.finish_run(run_id, outcome, summary, error)
        except Exception as exc:
            log.error("journal: could not record the end of run %s (%s): %s", run_id, outcome, exc)

    def open_migration(self, table: str) -> tuple[int, str] | None:
        """(migration_id, phase) of the table's unfinished migration, if any."""
        return self.conn.execute(
            sql.SQL(
                "SELECT migration_id, phase FROM {}.migrations WHERE table_name = %s "
                "AND phase IN ('preparing', 'copying', 'swapped', 'draining')"
            ).format(self.schema),
            [table],
        ).fetchone()

    def last_success(self, table: str, job: str = "maintenance") -> datetime | None:
        return self.conn.execute(
            sql.SQL(
                "SELECT max(finished_at) FROM {}.runs WHERE table_name = %s AND job = %s AND outcome = 'success'"
            ).format(self.schema),
            [table, job],
        ).fetchone()[0]
