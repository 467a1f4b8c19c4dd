"""Guards that keep a run from becoming the cause of an outage.

- `runner_lock`: one pgmaint runner per table, enforced in the database with a
  session-level advisory lock (it survives our commits, unlike an xact lock,
  cf. pg_partman #819) that is released in `finally` and by the server when
  the connection dies.
- `preflight`: before touching a table, refuse (and say why) when the server
  is short of connections, when an old transaction holds locks on the table
  family, or when sessions are already waiting for locks on it. Queueing
  behind such a session is exactly how the incident's outage began.
  It needs to see other roles' sessions: `session_visibility_problem`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from include.pgmaint.config import Preflight

_LOCK_NAMESPACE = "pgmaint"
log = logging.getLogger("pgmaint.guards")


def _lock_args(table: str) -> list[str]:
    return [_LOCK_NAMESPACE, table]


class TableBusy(Exception):
    """Another pgmaint runner holds this table's lock."""


@contextlib.contextmanager
def runner_lock(conn, table_qualified: str):
    """Hold the per-table runner lock for the duration of the block, or raise `TableBusy`."""
    got = conn.execute(
        "SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s))", _lock_args(table_qualified)
    ).fetchone()[0]
    if not got:
        holder = conn.execute(
            """SELECT a.pid, a.application_name, left(a.query, 200), a.backend_start
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
               WHERE l.locktype = 'advisory' AND l.granted
                 AND l.classid::int = hashtext(%s) AND l.objid::int = hashtext(%s) AND l.objsubid = 2""",
            _lock_args(table_qualified),
        ).fetchone()
        who = (
            f"pid {holder[0]} ({holder[1]}, connected since {holder[3]:%Y-%m-%d %H:%M:%S})"
            if holder
            else "another session"
        )
        raise TableBusy(f"{table_qualified}: another pgmaint run holds this table's runner lock: {who}")
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))", _lock_args(table_qualified))


@contextlib.contextmanager
def waiting_lock(conn, key: str, *, wait_seconds: float, on_timeout):
    """Hold pgmaint's session advisory lock `key`, polling for up to `wait_seconds` (never queueing
    in the server), then raise `on_timeout()`. Released in `finally`, and by the server if the
    connection dies."""
    deadline = time.monotonic() + wait_seconds
    while not conn.execute("SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s))", _lock_args(key)).fetchone()[0]:
        if time.monotonic() > deadline:
            raise on_timeout()
        time.sleep(0.1)
    try:
        yield
    finally:
        try:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))", _lock_args(key))
        except Exception:  # the connection is gone: so is the lock
            log.warning("could not release advisory lock %r (connection lost?)", key)


class CannotSeeSessions(PermissionError):
    """The role lacks pg_read_all_stats: other roles' transactions are invisible to it."""


def session_visibility_problem(conn) -> str | None:
    """Why this session cannot judge other sessions, or None.

    pg_stat_activity shows another role's xact_start, state, query and backend_xmin only to
    members of pg_read_all_stats (pg_monitor includes it) and superusers; for everyone else they
    are NULL. Preflight would then never see the long transaction a DDL would queue behind, and
    the migration could not wait for snapshots older than its copy. So that is refused, not
    guessed."""
    role, ok = conn.execute("SELECT current_user, pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')").fetchone()
    if ok:
        return None
    name = sql.Identifier(role).as_string(None)
    return (
        f"role {role!r} lacks the privileges of pg_read_all_stats: other roles' transactions, states and queries "
        "are hidden from it in pg_stat_activity, so pgmaint cannot see a long transaction it would queue behind "
        f"(fix: GRANT pg_monitor TO {name}; or GRANT pg_read_all_stats TO {name})"
    )


def require_session_visibility(conn) -> None:
    problem = session_visibility_problem(conn)
    if problem:
        raise CannotSeeSessions(problem)


@dataclass
class PreflightResult:
    ok: bool
    connections_used: int
    connections_usable: int
    problems: list[str] = field(default_factory=list)
    sessions: list[dict] = field(default_factory=list)  # the sessions behind the problems


_PREFLIGHT_SQL = """
WITH fam AS (
    SELECT %(parent)s::regclass::oid AS oid
    UNION ALL
    SELECT inhrelid FROM pg_inherits WHERE inhparent = %(parent)s::regclass
),
holders AS (
    SELECT DISTINCT ON (a.pid, l.granted) a.pid, l.granted, l.mode, l.relation::regclass::text AS relation,
           a.state, extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS xact_seconds,
           left(a.query, 300) AS query
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'relation' AND l.relation IN (SELECT oid FROM fam) AND a.pid <> pg_backend_pid()
    ORDER BY a.pid, l.granted, a.xact_start
)
SELECT
    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int,
    (current_setting('max_connections')::int
       - current_setting('superuser_reserved_connections')::int
       - coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0))::int,
    (SELECT coalesce(json_agg(h), '[]') FROM holders h WHERE h.granted AND h.xact_seconds > %(long_seconds)s),
    (SELECT coalesce(json_agg(h), '[]') FROM holders h WHERE NOT h.granted)
"""


def preflight(conn, table_qualified: str, limits: Preflight, *, require_visibility: bool = True) -> PreflightResult:
    """Raises CannotSeeSessions (before any work) when the role cannot see other sessions, unless
    `require_visibility` is off (the watchdog reports that as a condition of its own)."""
    if require_visibility:
        require_session_visibility(conn)
    used, usable, long_tx, waiting = conn.execute(
        _PREFLIGHT_SQL, {"parent": table_qualified, "long_seconds": limits.long_transaction_seconds}
    ).fetchone()
    result = PreflightResult(True, used, usable)
    if usable > 0 and used / usable > limits.max_connection_usage:
        result.problems.append(
            f"connection headroom: {used} of {usable} usable connections in use "
            f"(over {limits.max_connection_usage:.0%}); not adding DDL to a crowded server"
        )
    for h in long_tx:
        result.problems.append(
            f"long transaction: pid {h['pid']} has held {h['mode']} on {h['relation']} for {h['xact_seconds']:.0f}s "
            f"({h['state']}): {h['query']!r}; our DDL would queue behind it"
        )
    if len(waiting) > limits.allow_waiting_sessions:
        for h in waiting:
            result.problems.append(
                f"waiting session: pid {h['pid']} is waiting for {h['mode']} on {h['relation']}: {h['query']!r}"
            )
    result.sessions = long_tx + waiting
    result.ok = not result.problems
    return result


def quoted(schema: str, table: str) -> str:
    return sql.Identifier(schema, table).as_string(None)


class CircuitBreaker:
    """Watches, from a second connection, for sessions queueing behind one of ours.

    While our session waits for or holds a strong lock, every later query on the
    table queues behind it. Past `max_waiters` queued sessions, or one queued for
    longer than `max_wait_ms`, the breaker cancels our statement (pg_cancel_backend);
    the executor sees the cancellation as a lock failure and backs off and retries.
    """

    _SQL = """
        SELECT count(*), coalesce(max(extract(epoch FROM clock_timestamp() - l.waitstart)) * 1000, 0)
        FROM pg_locks l
        WHERE NOT l.granted AND %s = ANY(pg_blocking_pids(l.pid))
    """

    def __init__(self, conninfo: str, *, max_waiters: int = 5, max_wait_ms: float = 100.0, poll_seconds: float = 0.02):
        self.conninfo, self.max_waiters, self.max_wait_ms, self.poll = conninfo, max_waiters, max_wait_ms, poll_seconds
        self.tripped: str | None = None
        self.peak_waiters = 0
        self.peak_wait_ms = 0.0
        self._stop = None
        self._thread = None

    @contextlib.contextmanager
    def watch(self, pid: int):

        self.tripped, self._stop = None, threading.Event()
        watcher = psycopg.connect(self.conninfo, autocommit=True, application_name="pgmaint-breaker")
        watcher.execute("SET statement_timeout = '1s'")

        def loop():
            while not self._stop.wait(self.poll):
                try:
                    waiters, wait_ms = watcher.execute(self._SQL, [pid]).fetchone()
                except Exception:  # the breaker must never break the run it guards
                    continue
                self.peak_waiters = max(self.peak_waiters, waiters)
                self.peak_wait_ms = max(self.peak_wait_ms, float(wait_ms))
                if waiters > self.max_waiters or wait_ms > self.max_wait_ms:
                    self.tripped = f"{waiters} session(s) queued behind pid {pid}, longest {float(wait_ms):.0f} ms"
                    watcher.execute("SELECT pg_cancel_backend(%s)", [pid])
                    return

        self._thread = threading.Thread(target=loop, name="pgmaint-breaker", daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            watcher.close()
