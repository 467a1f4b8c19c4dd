"""Per-database checks: the canary (a real read through each parent), connections in use, lock waits."""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timedelta, timezone

import pendulum
import psycopg
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo

from include.pgmaint.config import Config, EscalationSettings, Preflight
from include.pgmaint.escalation import Condition, describe_session
from include.pgmaint.execute import find_blockers
from include.pgmaint.guards import preflight, quoted, session_visibility_problem
from include.pgmaint.watchdog.results import CheckResult

log = logging.getLogger("pgmaint.watchdog")


_LOCK_WAITS_SQL = """
SELECT w.pid, w.usename, w.application_name, w.state,
       extract(epoch FROM clock_timestamp() - l.waitstart)::float8 AS waiting_seconds,
       l.locktype, l.mode, CASE WHEN l.relation IS NOT NULL THEN l.relation::regclass::text END AS relation,
       left(w.query, 300) AS query,
       (SELECT coalesce(json_agg(json_build_object(
                   'pid', b.pid, 'state', b.state, 'usename', b.usename, 'application_name', b.application_name,
                   'xact_seconds', extract(epoch FROM clock_timestamp() - b.xact_start)::float8,
                   'query', left(b.query, 300)) ORDER BY b.pid), '[]')
          FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(w.pid))) AS blockers
FROM pg_locks l
JOIN pg_stat_activity w ON w.pid = l.pid
WHERE NOT l.granted AND l.waitstart IS NOT NULL AND w.datname = current_database()
  AND l.waitstart < clock_timestamp() - make_interval(secs => %(seconds)s)
  AND (%(relation)s::text IS NULL OR l.relation = to_regclass(%(relation)s))
ORDER BY l.waitstart
LIMIT 20
"""

_TOP_CLIENTS_SQL = """
SELECT coalesce(usename, '?') AS usename, coalesce(nullif(application_name, ''), '?') AS application_name,
       coalesce(state, '?') AS state, count(*)::int AS sessions
FROM pg_stat_activity WHERE backend_type = 'client backend'
GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 5
"""


def lock_waits(conn, min_seconds: float, relation: str | None = None) -> list[dict]:
    cur = conn.execute(_LOCK_WAITS_SQL, {"seconds": min_seconds, "relation": relation})
    names = [d.name for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def check_database(conn, config: Config, settings: EscalationSettings) -> CheckResult:
    """Connection headroom and lock waits (the canary runs on its own connection: `canary`)."""

    out = CheckResult(scope=["connections", "lock_waits", "session_visibility"])
    # guards.preflight computes used / usable connections as maintenance sees them; our journal table
    # always exists, so it serves as the relation preflight wants (its lock holders are not used here).
    pf = preflight(conn, quoted(config.state_schema, "runs"), Preflight(), require_visibility=False)
    blind = session_visibility_problem(conn)
    if blind:  # long transactions and lock holders of other roles are invisible: say so instead of reporting all clear
        out.conditions.append(
            Condition(
                "session_visibility",
                "warning",
                "session_visibility: " + blind + "; the long-transaction and lock-wait checks "
                "cannot see other roles' sessions, and maintenance and migration refuse to run",
                {"missing": "pg_read_all_stats"},
            )
        )
    used, usable = pf.connections_used, pf.connections_usable
    percent = 100.0 * used / usable if usable > 0 else 100.0
    if percent >= settings.connections_warning_percent:
        severity = "critical" if percent >= settings.connections_critical_percent else "warning"
        top = [
            dict(zip(("usename", "application_name", "state", "sessions"), r))
            for r in conn.execute(_TOP_CLIENTS_SQL).fetchall()
        ]
        lines = [
            f"connections: {used} of {usable} usable connections in use ({percent:.0f}%; warning at "
            f"{settings.connections_warning_percent:.0f}%, critical at {settings.connections_critical_percent:.0f}%)"
        ]
        lines += [f"  {t['sessions']} x {t['usename']}@{t['application_name']} ({t['state']})" for t in top]
        out.conditions.append(
            Condition(
                "connections",
                severity,
                "\n".join(lines),
                {"used": used, "usable": usable, "percent": round(percent, 1), "top": top},
            )
        )
    waits = lock_waits(conn, settings.lock_wait_seconds)
    if waits:
        lines = [
            f"lock waits: {len(waits)} session(s) waiting for a lock for more than {settings.lock_wait_seconds:.0f} s"
        ]
        for w in waits:
            target = w["relation"] or w["locktype"]
            lines.append(
                f"  pid {w['pid']} has waited {w['waiting_seconds']:.0f} s for {w['mode']} on {target}: "
                f"{' '.join(str(w['query'] or '').split())[:300]!r}"
            )
            for b in w["blockers"]:
                lines.append("    blocked by " + describe_session(b))
        out.conditions.append(
            Condition(
                "lock_waits",
                "warning",
                "\n".join(lines),
                {"sessions": waits, "blocking_pids": sorted({b["pid"] for w in waits for b in w["blockers"]})},
            )
        )
    return out


def canary(conninfo: str, config: Config, settings: EscalationSettings, now: datetime | None = None) -> CheckResult:
    """The uptime check that touches the database: connect, and read the current interval of every table.

    Its own connection (a pool running dry shows here), lock_timeout and statement_timeout of
    canary_timeout_ms: if a lock on a managed table would make the API's reads queue, the
    canary queues too, gives up, and pages, naming who holds and who waits for locks there.
    """

    now = now or datetime.now(timezone.utc)
    ms = settings.canary_timeout_ms
    out = CheckResult(scope=["canary"])
    started = time.monotonic()
    options = f"-c statement_timeout={ms} -c lock_timeout={ms} -c TimeZone=UTC"
    failed: list[str] = []
    sessions: list[dict] = []
    try:
        with psycopg.connect(
            make_conninfo(conninfo, application_name="pgmaint-canary", options=options),
            autocommit=True,
            connect_timeout=max(2, math.ceil(ms / 1000)),
        ) as conn:
            types = dict(
                conn.execute(
                    "SELECT n.name, format_type(a.atttypid, NULL) FROM unnest(%s::text[], %s::text[]) AS n(name, key) "
                    "JOIN pg_attribute a ON a.attrelid = to_regclass(n.name) AND a.attname = n.key",
                    [[t.name for t in config.tables], [t.partition_key for t in config.tables]],
                ).fetchall()
            )
            for cfg in config.tables:
                relation = quoted(cfg.schema, cfg.table)
                key_type = types.get(cfg.name)
                if key_type not in ("timestamp with time zone", "timestamp without time zone", "date"):
                    continue  # missing or unmanageable: the catalog check reports it
                lo, hi = _recent_bounds(now, config.timezone, key_type)
                query = sql.SQL("SELECT 1 FROM {} WHERE {} >= %s::{t} AND {} <= %s::{t} LIMIT 1").format(
                    sql.Identifier(cfg.schema, cfg.table),
                    sql.Identifier(cfg.partition_key),
                    sql.Identifier(cfg.partition_key),
                    t=sql.SQL(key_type),
                )
                try:
                    conn.execute(query, [lo, hi])
                except (errors.LockNotAvailable, errors.QueryCanceled) as exc:
                    failed.append(
                        f"reading {cfg.name} did not finish within {ms} ms ({type(exc).__name__}): "
                        "a lock on the table makes readers queue"
                    )
                    try:
                        holders = [dict(vars(b), granted=True) for b in find_blockers(conn, (relation,))]
                        waiters = [dict(w, granted=False) for w in lock_waits(conn, 0, relation)]
                    except psycopg.Error:
                        holders, waiters = [], []
                    sessions += holders + waiters
                    failed += ["  holder: " + describe_session(s) for s in holders]
                    failed += ["  queued: " + describe_session(s) for s in waiters]
    except psycopg.OperationalError as exc:
        failed.append(f"cannot connect: {' '.join(str(exc).split())}")
    except psycopg.Error as exc:
        failed.append(f"query failed: {type(exc).__name__}: {' '.join(str(exc).split())}")
    seconds = time.monotonic() - started
    if failed:
        out.conditions.append(
            Condition(
                "canary",
                "critical",
                f"canary: the database is not answering reads on the managed tables ({seconds:.1f} s)\n"
                + "\n".join(failed),
                {
                    "seconds": round(seconds, 3),
                    "connection_id": config.connection_id,
                    "sessions": sessions,
                    "blocking_pids": sorted({s["pid"] for s in sessions if s.get("granted")}),
                },
            )
        )
    else:
        out.notes.append(f"canary: read {len(config.tables)} table(s) in {seconds * 1000:.0f} ms")
    return out


def _recent_bounds(now: datetime, tz: str, key_type: str) -> tuple[str, str]:
    """The last minute, as literals of the key's type (wall clock of `tz` for timestamp and date keys)."""

    lo, hi = now - timedelta(minutes=1), now + timedelta(minutes=1)
    if key_type == "timestamp with time zone":
        return lo.isoformat(), hi.isoformat()
    fmt = "%Y-%m-%d %H:%M:%S"
    return (pendulum.instance(lo).in_timezone(tz).strftime(fmt), pendulum.instance(hi).in_timezone(tz).strftime(fmt))
