"""Where condition state is kept: the target database (`PgStore`), or memory / a spill (`MemoryStore`)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Protocol

from psycopg import sql
from psycopg.types.json import Jsonb

from include.pgmaint.escalation.conditions import ConditionState, Notification
from include.pgmaint.guards import waiting_lock

log = logging.getLogger("pgmaint.escalation")


class Store(Protocol):
    def load(self) -> dict[str, ConditionState]: ...

    def save(self, states: Iterable[ConditionState]) -> None: ...

    def record(self, notes: list[Notification], at: datetime) -> None: ...

    def locked(self) -> contextlib.AbstractContextManager: ...


class MemoryStore:
    """States in a JSON blob: the fallback when the state database is unreachable, and for tests.

    `read`/`write` get and put the blob (an Airflow Variable in production).
    """

    def __init__(self, read: Callable[[], str | None] | None = None, write: Callable[[str | None], None] | None = None):
        self._blob: str | None = None
        self._read = read or (lambda: self._blob)
        self._write = write or self._set_blob

    def _set_blob(self, value: str | None) -> None:
        self._blob = value

    def load(self) -> dict[str, ConditionState]:
        raw = self._read()
        if not raw:
            return {}
        return {k: ConditionState.from_json(v) for k, v in json.loads(raw).items()}

    def save(self, states: Iterable[ConditionState]) -> None:
        current = self.load()
        for st in states:
            current[st.key] = st
        # Only what is still open matters here; resolved rows are history, kept in the database.
        active = {k: v.to_json() for k, v in current.items() if v.active}
        self._write(json.dumps(active) if active else None)

    def clear(self) -> None:
        self._write(None)

    def record(self, notes: list[Notification], at: datetime) -> None:
        pass  # the alerts history lives in the database; the log has the rest

    def locked(self):
        return contextlib.nullcontext()


class PgStore:
    """`<state_schema>.conditions` and `.alerts` (include/sql/004_escalation.sql). Autocommit connection."""

    _COLUMNS = (
        "key",
        "severity",
        "message",
        "details",
        "first_seen",
        "last_seen",
        "streak",
        "quiet",
        "notified_at",
        "paged_at",
        "last_page_at",
        "resolved_at",
        "episodes",
    )

    def __init__(self, conn, schema: str):

        self.conn, self.schema, self._sql = conn, schema, sql
        self._ident = sql.Identifier(schema)

    def load(self) -> dict[str, ConditionState]:
        sql = self._sql
        rows = self.conn.execute(
            sql.SQL("SELECT {} FROM {}.conditions").format(
                sql.SQL(", ").join(map(sql.Identifier, self._COLUMNS)), self._ident
            )
        ).fetchall()
        return {r[0]: ConditionState(*r) for r in rows}

    def save(self, states: Iterable[ConditionState]) -> None:
        sql = self._sql
        cols = sql.SQL(", ").join(map(sql.Identifier, self._COLUMNS))
        updates = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in self._COLUMNS[1:])
        stmt = sql.SQL("INSERT INTO {}.conditions ({}) VALUES ({}) ON CONFLICT (key) DO UPDATE SET {}").format(
            self._ident, cols, sql.SQL(", ").join(sql.Placeholder() * len(self._COLUMNS)), updates
        )

        with self.conn.transaction():
            for st in states:
                values = [getattr(st, c) for c in self._COLUMNS]
                values[3] = Jsonb(st.details)
                self.conn.execute(stmt, values)

    def record(self, notes: list[Notification], at: datetime) -> None:
        sql = self._sql
        stmt = sql.SQL(
            "INSERT INTO {}.alerts (sent_at, key, channel, action, target, severity, message, delivered, error) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        ).format(self._ident)
        with self.conn.transaction():
            for n in notes:
                for target, error in n.results:
                    self.conn.execute(
                        stmt,
                        [at, n.key, n.channel, n.action, target, n.severity, n.message[:4000], error is None, error],
                    )

    def absorb(self, spilled: dict[str, ConditionState]) -> int:
        """Fold states kept while the database was unreachable back in (newer wins). Returns how many."""
        if not spilled:
            return 0
        current = self.load()
        newer = [st for key, st in spilled.items() if key not in current or st.last_seen >= current[key].last_seen]
        self.save(newer)
        return len(newer)

    @contextlib.contextmanager
    def locked(self, wait_seconds: float = 15.0):
        """One evaluation at a time (watchdog and failure callbacks may overlap): a session advisory lock."""

        with waiting_lock(
            self.conn,
            "escalation:" + self.schema,
            wait_seconds=wait_seconds,
            on_timeout=lambda: TimeoutError(
                f"another pgmaint evaluation kept the escalation lock for {wait_seconds:.0f}s"
            ),
        ):
            yield
