"""The watchdog's checks: each returns `Condition`s with stable keys, and the keys it evaluated.

Cheap by construction, and never a lock stronger than ACCESS SHARE:
catalog reads (`read_catalog`, `preflight`) and pg_stat_activity / pg_locks
take no table locks; the DEFAULT partition is counted exactly only up to a
bound (`LIMIT`), under a short statement_timeout; the canary reads the current
interval of each managed table through its parent (ACCESS SHARE), on its own
connection, with a lock_timeout and statement_timeout of `canary_timeout_ms`.

Per table (keys `<kind>:<schema.table>`):
  catalog           the table is missing / not range-partitioned as configured
  runway            partitions ahead of now: warning below `runway_warning_intervals`,
                    critical below one interval (or no partition for the current one);
                    tables without a DEFAULT: critical below two (inserts fail, they do not pile up)
  gaps              intervals of the managed window behind the current one without a partition
  default_rows      rows in the DEFAULT partition (auto_migrate: asset event instead, quiet condition)
  expired_attached  partitions past retention still attached
  cadence           no successful partition_maintenance for cadence_multiple x its schedule interval
  long_transactions sessions whose transaction has held locks on the table family for too long
  dual_manager      pg_partman's automatic maintenance is on for a table pgmaint maintains (include.pgmaint.partman)
Per database:
  canary            the uptime check that touches the database: critical when it fails
  connections       percent of usable max_connections in use
  lock_waits        sessions waiting for a lock longer than lock_wait_seconds, and who blocks them
  leases            expired service leases (services resumed by the watchdog), or the check unavailable

Boundaries: runway and expired partitions are judged with a grace of one cadence
threshold, so the minutes between an interval boundary and the next maintenance
run do not raise (and clear) a warning every day.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from include.pgmaint.config import Config, TableConfig
from include.pgmaint.escalation import Condition, EscalationSettings, describe_session

log = logging.getLogger("pgmaint.watchdog")

TABLE_KINDS = ("catalog", "runway", "gaps", "default_rows", "expired_attached", "cadence", "long_transactions",
               "dual_manager")
DATABASE_KINDS = ("canary", "connections", "lock_waits")
MAINTENANCE_DAG = "partition_maintenance"


@dataclass
class CheckResult:
    conditions: list[Condition] = field(default_factory=list)
    scope: list[str] = field(default_factory=list)  # keys evaluated: an active one not in `conditions` is over
    migrate: list[str] = field(default_factory=list)  # auto_migrate tables with DEFAULT rows: emit DEFAULT_ROWS
    notes: list[str] = field(default_factory=list)  # for the log

    def add(self, other: "CheckResult") -> "CheckResult":
        return CheckResult(self.conditions + other.conditions, self.scope + other.scope, self.migrate + other.migrate,
                           self.notes + other.notes)

    def as_dict(self) -> dict:
        return {"conditions": [c.as_dict() for c in self.conditions], "scope": self.scope, "migrate": self.migrate,
                "notes": self.notes}

    @classmethod
    def from_dict(cls, d: dict | None) -> "CheckResult":
        if not d:
            return cls()
        return cls([Condition.from_dict(c) for c in d.get("conditions", [])], list(d.get("scope", [])),
                   list(d.get("migrate", [])), list(d.get("notes", [])))


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


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} days {seconds % 86400 // 3600} h"


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


# --- per table ---------------------------------------------------------------------


def check_tables(conn, config: Config, settings: EscalationSettings, now: datetime | None = None) -> CheckResult:
    """Runway, DEFAULT rows, expired partitions, cadence and long transactions for every configured table."""
    from include.pgmaint.catalog import CatalogError, read_catalog
    from include.pgmaint.partman import dual_manager_conditions
    from include.pgmaint.report import table_health
    from include.pgmaint.state import Journal

    now = now or datetime.now(timezone.utc)
    tz = config.timezone
    threshold = cadence_threshold(config, settings, now)
    grace = threshold or timedelta(0)
    facts = read_catalog(conn, list(config.tables), tz)
    journal = Journal(conn, config.state_schema)
    out = CheckResult(conditions=dual_manager_conditions(conn, list(config.tables)))
    for cfg in config.tables:
        f = facts[cfg.name]
        out.scope += table_keys(cfg.name)
        if isinstance(f, CatalogError):
            out.conditions.append(Condition(
                f"catalog:{cfg.name}", "warning",
                f"{cfg.name}: cannot be maintained as configured: {f}",
                {"table": cfg.name, "error": str(f)}))
            # The other checks need the catalog: leave their keys as they are (not evaluated).
            out.scope = [k for k in out.scope if not (key_table(k) == cfg.name and not k.startswith("catalog:"))]
            continue
        health = table_health(cfg, f, now, tz)
        late = table_health(cfg, f, now - grace, tz) if grace else health
        out.conditions += _runway(cfg, f, health, late, settings)
        out.conditions += _gaps(cfg, f, now, now - grace, tz)
        default_result = _default_rows(conn, cfg, f, settings)
        out.conditions += default_result.conditions
        out.migrate += default_result.migrate
        out.notes += default_result.notes
        if late.expired_attached:
            out.conditions.append(Condition(
                f"expired_attached:{cfg.name}", "warning",
                f"{cfg.name}: {late.expired_attached} partition(s) past the {cfg.retention} retention still attached "
                f"(oldest: {late.oldest}); partition_maintenance retires them, so it is not running or not succeeding",
                {"table": cfg.name, "count": late.expired_attached, "oldest": late.oldest,
                 "retention": str(cfg.retention)}))
        if threshold is not None and cfg.maintained_by == "pgmaint":  # the split: pg_partman keeps the cadence
            out.conditions += _cadence(conn, config, cfg, journal, threshold, now)
        out.conditions += _long_transactions(conn, cfg, settings)
    return out


def _runway(cfg: TableConfig, facts, health, late, settings: EscalationSettings) -> list[Condition]:
    key = f"runway:{cfg.name}"
    ahead = max(health.runway - 1, 0, late.runway - 1)  # tolerate the minutes before maintenance's next run
    covered = max((p.range.upper for p in facts.partitions if p.range.upper is not None), default=None)
    from include.pgmaint.catalog import WALL_CLOCK_KEY_TYPES

    clock = "(wall clock)" if facts.key_type in WALL_CLOCK_KEY_TYPES else "UTC"  # see plan.timeline
    until = f"; partitions end at {covered:%Y-%m-%d %H:%M} {clock}" if covered else "; no partitions at all"
    details = {"table": cfg.name, "runway": health.runway, "ahead": ahead, "premake": cfg.premake,
               "newest": health.newest, "covered_until": covered.isoformat() if covered else None}
    where_rows = "the DEFAULT partition" if facts.default else "nowhere: inserts fail (there is no DEFAULT partition)"
    if health.runway == 0:
        return [Condition(key, "critical",
                          f"{cfg.name}: no partition for the current {cfg.interval} interval: new rows go to {where_rows}{until}",
                          details)]
    if ahead < 1:
        return [Condition(key, "critical",
                          f"{cfg.name}: less than one {cfg.interval} interval of partitions left (none ahead of the current "
                          f"one, want {cfg.premake}){until}; after that rows go to {where_rows}", details)]
    if facts.default is None and ahead < min(2, cfg.premake):
        # Without a DEFAULT, running out means failed inserts, not rows piling up: page one interval earlier.
        return [Condition(key, "critical",
                          f"{cfg.name}: only {ahead} {cfg.interval} interval of partitions ahead of the current one (want "
                          f"{cfg.premake}){until}; the table has no DEFAULT partition, so inserts past it will fail",
                          details)]
    want = min(settings.runway_warning_intervals, cfg.premake)
    if ahead < want:
        return [Condition(key, "warning",
                          f"{cfg.name}: only {ahead} partition(s) ahead of the current one (want {cfg.premake}, "
                          f"warning below {want}){until}", details)]
    return []


def _gaps(cfg: TableConfig, facts, now: datetime, late: datetime, tz: str) -> list[Condition]:
    """Intervals inside the managed window that ended before `late` (now minus the cadence grace) with no
    partition; the runway condition covers the current interval and those ahead."""
    from include.pgmaint.plan import missing_ranges, timeline

    ended = timeline(facts, late, tz)[0]
    missing = [(name, rng) for name, rng in missing_ranges(cfg, facts, now, tz) if rng.upper <= ended
               and not any(p.range.overlaps(rng) for p in facts.partitions)]
    if not missing:
        return []
    shown = ", ".join(f"{rng}" for _, rng in missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
    where = ("late rows for them go to the DEFAULT partition" if facts.default is not None
             else "late rows for them are rejected (there is no DEFAULT partition)")
    return [Condition(
        f"gaps:{cfg.name}", "warning",
        f"{cfg.name}: {len(missing)} interval(s) inside the managed window have no partition: {shown}; {where}. "
        "partition_maintenance creates them on its next run; an interval whose rows already sit in the DEFAULT "
        "needs default_partition_migration (see default_rows)",
        {"table": cfg.name, "missing": [str(rng) for _, rng in missing], "has_default": facts.default is not None})]


def _default_rows(conn, cfg: TableConfig, facts, settings: EscalationSettings) -> CheckResult:
    """Rows in the DEFAULT: exact up to default_exact_count_limit (LIMIT-bounded, short timeout), else the estimate."""
    from psycopg import errors, sql

    out = CheckResult()
    if facts.default is None:
        return out
    estimate = facts.default.estimated_rows
    limit = settings.default_exact_count_limit
    rows, exact, low, high = estimate, False, None, None
    if estimate <= limit:
        query = sql.SQL("SELECT count(*), min(k)::text, max(k)::text FROM (SELECT {key} AS k FROM ONLY {default} LIMIT %s) s").format(
            key=sql.Identifier(facts.key_column), default=sql.Identifier(facts.schema, facts.default.name))
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('statement_timeout', %s, true)", [f"{settings.canary_timeout_ms}ms"])
                count, low, high = conn.execute(query, [limit + 1]).fetchone()
            rows, exact = (count, True) if count <= limit else (max(count, estimate), False)
        except (errors.QueryCanceled, errors.LockNotAvailable) as exc:
            out.notes.append(f"{cfg.name}: DEFAULT count gave up ({type(exc).__name__}); using the estimate {estimate}")
    if rows <= 0:
        return out
    amount = f"{rows} row(s)" if exact else f"about {rows} rows (estimate)"
    span = f" with {facts.key_column} from {low} to {high}" if exact and low else ""
    default = f"{facts.schema}.{facts.default.name}"
    details = {"table": cfg.name, "default": default, "rows": rows, "exact": exact, "min": low, "max": high,
               "auto_migrate": cfg.auto_migrate}
    if cfg.auto_migrate:
        out.migrate.append(cfg.name)
        out.notes.append(f"{cfg.name}: {amount} in {default}; auto_migrate: asking default_partition_migration to move them")
        out.conditions.append(Condition(
            f"default_rows:{cfg.name}", "warning",
            f"{cfg.name}: {amount} in the DEFAULT partition {default}{span}; auto_migrate is on and "
            "default_partition_migration has been triggered, but they are still there", details, quiet=True))
    else:
        out.conditions.append(Condition(
            f"default_rows:{cfg.name}", "warning",
            f"{cfg.name}: {amount} in the DEFAULT partition {default}{span}; queries on those ranges read the "
            "DEFAULT, and partition_maintenance cannot create a partition for a range the DEFAULT holds rows of: "
            "move them with default_partition_migration for this table",
            details))
    return out


def _cadence(conn, config: Config, cfg: TableConfig, journal, threshold: timedelta, now: datetime) -> list[Condition]:
    from psycopg import sql

    key = f"cadence:{cfg.name}"
    last = journal.last_success(cfg.name, "maintenance")
    schema = sql.Identifier(config.state_schema)
    born, latest = conn.execute(sql.SQL(
        "SELECT (SELECT min(applied_at) FROM {s}.schema_version), "
        "(SELECT json_build_object('outcome', outcome, 'finished_at', finished_at, 'error', left(error, 500), "
        "'dag_run_id', dag_run_id) FROM {s}.runs WHERE table_name = %s AND job = 'maintenance' ORDER BY run_id DESC LIMIT 1)"
    ).format(s=schema), [cfg.name]).fetchone()
    since = last or born
    if since is None or now - since <= threshold:
        return []
    latest_text = ""
    if latest:
        latest_text = f"; latest run: {latest['outcome']}" + (f": {latest['error']}" if latest.get("error") else "")
    if last is None:
        message = (f"{cfg.name}: no successful {MAINTENANCE_DAG} run recorded in the journal "
                   f"(journal started {_ago(now - born)} ago; expected at least every {_ago(threshold)}){latest_text}")
    else:
        message = (f"{cfg.name}: the partition manager missed its cadence: last successful {MAINTENANCE_DAG} "
                   f"{_ago(now - last)} ago ({last:%Y-%m-%d %H:%M} UTC; alert after {_ago(threshold)}){latest_text}")
    return [Condition(key, "warning", message,
                      {"table": cfg.name, "last_success": last.isoformat() if last else None,
                       "threshold_seconds": threshold.total_seconds(), "latest_run": latest})]


def _long_transactions(conn, cfg: TableConfig, settings: EscalationSettings) -> list[Condition]:
    """Sessions whose transaction has held a lock on the table family longer than long_transaction_seconds."""
    from include.pgmaint.config import Preflight
    from include.pgmaint.guards import preflight, quoted

    result = preflight(conn, quoted(cfg.schema, cfg.table),
                       Preflight(max_connection_usage=1.0, long_transaction_seconds=settings.long_transaction_seconds,
                                 allow_waiting_sessions=1 << 30), require_visibility=False)
    holders = [s for s in result.sessions if s.get("granted")]
    if not holders:
        return []
    who = {row[0]: row[1:] for row in conn.execute(  # who they are, for the responder
        "SELECT pid, usename, application_name, client_addr::text FROM pg_stat_activity WHERE pid = ANY(%s)",
        [[s["pid"] for s in holders]]).fetchall()}
    for s in holders:
        s["usename"], s["application_name"], s["client_addr"] = who.get(s["pid"], (None, None, None))
    idle = [s for s in holders if str(s.get("state", "")).startswith("idle in transaction")]
    lines = [f"{cfg.name}: {len(holders)} session(s) have held locks on the table for more than "
             f"{settings.long_transaction_seconds:.0f} s" + (f" ({len(idle)} idle in transaction)" if idle else "")
             + "; DDL on this table (maintenance, migration) queues behind them"]
    lines += ["  " + describe_session(s) for s in holders]
    return [Condition(f"long_transactions:{cfg.name}", "warning", "\n".join(lines),
                      {"table": cfg.name, "sessions": holders})]


# --- per database ------------------------------------------------------------------

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
    from include.pgmaint.config import Preflight
    from include.pgmaint.guards import preflight, quoted, session_visibility_problem

    out = CheckResult(scope=["connections", "lock_waits", "session_visibility"])
    # guards.preflight computes used / usable connections as maintenance sees them; our journal table
    # always exists, so it serves as the relation preflight wants (its lock holders are not used here).
    pf = preflight(conn, quoted(config.state_schema, "runs"), Preflight(), require_visibility=False)
    blind = session_visibility_problem(conn)
    if blind:  # long transactions and lock holders of other roles are invisible: say so instead of reporting all clear
        out.conditions.append(Condition("session_visibility", "warning",
                                        "session_visibility: " + blind + "; the long-transaction and lock-wait checks "
                                        "cannot see other roles' sessions, and maintenance and migration refuse to run",
                                        {"missing": "pg_read_all_stats"}))
    used, usable = pf.connections_used, pf.connections_usable
    percent = 100.0 * used / usable if usable > 0 else 100.0
    if percent >= settings.connections_warning_percent:
        severity = "critical" if percent >= settings.connections_critical_percent else "warning"
        top = [dict(zip(("usename", "application_name", "state", "sessions"), r))
               for r in conn.execute(_TOP_CLIENTS_SQL).fetchall()]
        lines = [f"connections: {used} of {usable} usable connections in use ({percent:.0f}%; warning at "
                 f"{settings.connections_warning_percent:.0f}%, critical at {settings.connections_critical_percent:.0f}%)"]
        lines += [f"  {t['sessions']} x {t['usename']}@{t['application_name']} ({t['state']})" for t in top]
        out.conditions.append(Condition("connections", severity, "\n".join(lines),
                                        {"used": used, "usable": usable, "percent": round(percent, 1), "top": top}))
    waits = lock_waits(conn, settings.lock_wait_seconds)
    if waits:
        lines = [f"lock waits: {len(waits)} session(s) waiting for a lock for more than {settings.lock_wait_seconds:.0f} s"]
        for w in waits:
            target = w["relation"] or w["locktype"]
            lines.append(f"  pid {w['pid']} has waited {w['waiting_seconds']:.0f} s for {w['mode']} on {target}: "
                         f"{' '.join(str(w['query'] or '').split())[:300]!r}")
            for b in w["blockers"]:
                lines.append("    blocked by " + describe_session(b))
        out.conditions.append(Condition("lock_waits", "warning", "\n".join(lines),
                                        {"sessions": waits, "blocking_pids": sorted({b["pid"] for w in waits for b in w["blockers"]})}))
    return out


def canary(conninfo: str, config: Config, settings: EscalationSettings, now: datetime | None = None) -> CheckResult:
    """The uptime check that touches the database: connect, and read the current interval of every table.

    Its own connection (a pool running dry shows here), lock_timeout and statement_timeout of
    canary_timeout_ms: if a lock on a managed table would make the API's reads queue, the
    canary queues too, gives up, and pages, naming who holds and who waits for locks there.
    """
    import psycopg
    from psycopg import errors, sql
    from psycopg.conninfo import make_conninfo

    from include.pgmaint.execute import find_blockers
    from include.pgmaint.guards import quoted

    now = now or datetime.now(timezone.utc)
    ms = settings.canary_timeout_ms
    out = CheckResult(scope=["canary"])
    started = time.monotonic()
    options = f"-c statement_timeout={ms} -c lock_timeout={ms} -c TimeZone=UTC"
    failed: list[str] = []
    sessions: list[dict] = []
    try:
        with psycopg.connect(make_conninfo(conninfo, application_name="pgmaint-canary", options=options),
                             autocommit=True, connect_timeout=max(2, math.ceil(ms / 1000))) as conn:
            types = dict(conn.execute(
                "SELECT n.name, format_type(a.atttypid, NULL) FROM unnest(%s::text[], %s::text[]) AS n(name, key) "
                "JOIN pg_attribute a ON a.attrelid = to_regclass(n.name) AND a.attname = n.key",
                [[t.name for t in config.tables], [t.partition_key for t in config.tables]]).fetchall())
            for cfg in config.tables:
                relation = quoted(cfg.schema, cfg.table)
                key_type = types.get(cfg.name)
                if key_type not in ("timestamp with time zone", "timestamp without time zone", "date"):
                    continue  # missing or unmanageable: the catalog check reports it
                lo, hi = _recent_bounds(now, config.timezone, key_type)
                query = sql.SQL("SELECT 1 FROM {} WHERE {} >= %s::{t} AND {} <= %s::{t} LIMIT 1").format(
                    sql.Identifier(cfg.schema, cfg.table), sql.Identifier(cfg.partition_key),
                    sql.Identifier(cfg.partition_key), t=sql.SQL(key_type))
                try:
                    conn.execute(query, [lo, hi])
                except (errors.LockNotAvailable, errors.QueryCanceled) as exc:
                    failed.append(f"reading {cfg.name} did not finish within {ms} ms ({type(exc).__name__}): "
                                  "a lock on the table makes readers queue")
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
        out.conditions.append(Condition(
            "canary", "critical",
            f"canary: the database is not answering reads on the managed tables ({seconds:.1f} s)\n" + "\n".join(failed),
            {"seconds": round(seconds, 3), "connection_id": config.connection_id, "sessions": sessions,
             "blocking_pids": sorted({s["pid"] for s in sessions if s.get("granted")})}))
    else:
        out.notes.append(f"canary: read {len(config.tables)} table(s) in {seconds * 1000:.0f} ms")
    return out


def _recent_bounds(now: datetime, tz: str, key_type: str) -> tuple[str, str]:
    """The last minute, as literals of the key's type (wall clock of `tz` for timestamp and date keys)."""
    import pendulum

    lo, hi = now - timedelta(minutes=1), now + timedelta(minutes=1)
    if key_type == "timestamp with time zone":
        return lo.isoformat(), hi.isoformat()
    fmt = "%Y-%m-%d %H:%M:%S"
    return (pendulum.instance(lo).in_timezone(tz).strftime(fmt), pendulum.instance(hi).in_timezone(tz).strftime(fmt))


# --- services -----------------------------------------------------------------------


def check_leases(conn, config: Config) -> CheckResult:
    """Resume services whose pause lease expired (the run that paused them died or overran), and say so."""
    out = CheckResult(scope=["leases"])
    try:
        from include.pgmaint.services import live_leases, resume_expired_leases
    except ImportError as exc:
        out.conditions.append(Condition("leases", "warning",
                                        f"lease check unavailable: include.pgmaint.services.resume_expired_leases "
                                        f"cannot be imported ({exc}); paused services are not resumed by the watchdog",
                                        {"error": str(exc)}))
        return out
    expired = {lease["lease_id"]: lease for lease in live_leases(conn, config) if lease.get("expired")}
    if not expired:
        return out
    outcomes = resume_expired_leases(conn, config, raise_on_error=False)
    failed = [o for o in outcomes if o.action == "failed"]
    lines = [f"leases: {len(expired)} expired service lease(s): the run that paused these services died or overran; "
             + ("some could NOT be resumed: their writers are still off" if failed else "the watchdog resumed them")]
    items = []
    for o in outcomes:
        lease = expired.get(o.lease_id, {})
        owner = f"{lease.get('dag_id')}/{lease.get('run_id')}" if lease.get("dag_id") else "?"
        until = lease.get("lease_until")
        lines.append(f"  {o} (paused by {owner}, lease until {until:%Y-%m-%d %H:%M} UTC)" if isinstance(until, datetime)
                     else f"  {o} (paused by {owner})")
        items.append({**o.as_dict(), "paused_by": owner, "lease_until": until.isoformat() if isinstance(until, datetime) else until})
    out.conditions.append(Condition("leases", "critical" if failed else "warning", "\n".join(lines),
                                    {"leases": items, "failed": [o.service for o in failed]}))
    return out


# --- everything, and what to resolve ------------------------------------------------------


def open_watchdog_connection(conninfo: str, config: Config):
    """A session for the checks: 200 ms lock_timeout, a short statement_timeout, application_name pgmaint-watchdog."""
    from include.pgmaint.db import connect

    budget = replace(config.lock_budget, statement_timeout_ms=min(config.lock_budget.statement_timeout_ms, 5000))
    return connect(conninfo, budget, application_name="pgmaint-watchdog")


def run_checks(conninfo: str, config: Config, settings: EscalationSettings, now: datetime | None = None) -> CheckResult:
    """All checks in one call (the DAG runs them as separate tasks): canary first, then the rest if it connects."""
    from include.pgmaint.state import ensure_state_schema

    now = now or datetime.now(timezone.utc)
    result = canary(conninfo, config, settings, now)
    try:
        conn = open_watchdog_connection(conninfo, config)
    except Exception as exc:
        result.notes.append(f"checks skipped: cannot connect ({exc})")
        return result
    with conn:
        ensure_state_schema(conn, config.state_schema)
        result = result.add(check_database(conn, config, settings))
        result = result.add(check_tables(conn, config, settings, now))
        result = result.add(check_leases(conn, config))
    return result


def task_conditions_over(conn, config: Config, settings: EscalationSettings, active: dict, now: datetime,
                         healthy_tasks: set[str] = frozenset()) -> list[str]:
    """Failed-task conditions that are over.

    - with a table: the journal shows a successful run of the same DAG for the table since;
    - a watchdog task: it succeeded in this run (`healthy_tasks`, as `dag.task`);
    - otherwise: no new failure for failure_resolve_after.
    """
    from psycopg import sql

    over = []
    for key, st in active.items():
        if not key.startswith("task:"):
            continue
        d = st.details or {}
        dag_task = f"{d.get('dag_id')}.{d.get('task_id')}"
        if dag_task in healthy_tasks:
            over.append(key)
        elif d.get("table") and conn is not None:
            ok = conn.execute(sql.SQL(
                "SELECT max(finished_at) FROM {}.runs WHERE dag_id = %s AND table_name = %s AND outcome = 'success'"
            ).format(sql.Identifier(config.state_schema)), [d.get("dag_id"), d["table"]]).fetchone()[0]
            if ok is not None and ok > st.last_seen:
                over.append(key)
        elif not d.get("table") and now - st.last_seen >= settings.failure_resolve_after:
            over.append(key)
    return over


def evaluate(results: CheckResult, config: Config, settings: EscalationSettings, *, conninfo: str | None = None,
             healthy_tasks: set[str] = frozenset(), **escalator_kwargs):
    """Send what the checks found through the escalation policy. Returns the Evaluation."""
    from include.pgmaint.escalation import open_escalator

    with open_escalator(config, settings, conninfo=conninfo, **escalator_kwargs) as (esc, conn):
        now = esc.clock()
        active = esc.active()
        resolve = task_conditions_over(conn, config, settings, active, now, healthy_tasks) if esc.persisted else []
        configured = set(config.table_names)
        resolve += [k for k in active if (t := key_table(k)) and t not in configured]  # tables no longer configured
        scope = results.scope if esc.persisted else [k for k in results.scope if k == "canary"]
        return esc.evaluate(results.conditions, scope=scope, resolve=resolve)


def watch(conninfo: str, config: Config, settings: EscalationSettings, **escalator_kwargs):
    """One watchdog pass without Airflow: checks, then escalation. Returns (CheckResult, Evaluation)."""
    clock = escalator_kwargs.get("clock")
    results = run_checks(conninfo, config, settings, clock() if clock else None)
    return results, evaluate(results, config, settings, conninfo=conninfo, **escalator_kwargs)


# --- Airflow glue (imported inside tasks) ---------------------------------------------------


def _conninfo(config: Config) -> str:
    from include.pgmaint.db import conninfo_from_airflow

    return conninfo_from_airflow(config.connection_id)


def per_target(fleet, check, ti=None) -> dict:
    """Run one watchdog check for every target of the fleet; one target's error never stops the others.

    Pushes XCom `result`: the check's payload (one target), or {target: payload} (several).
    Returns {target: payload}. Raises after all targets ran if a check failed for any, naming them
    (that target's payload is None, so escalation sees the check as not done for it).
    """
    from airflow.sdk.exceptions import AirflowException

    results: dict = {}
    failed: list[str] = []
    for config in fleet.targets:
        try:
            results[config.target] = check(config)
        except Exception as exc:
            log.exception("target %s: check failed", config.target or config.connection_id)
            results[config.target] = None
            failed.append(f"{config.target or config.connection_id}: {type(exc).__name__}: {exc}")
    if ti is not None:
        ti.xcom_push(key="result", value=results if fleet.multi else results[fleet.targets[0].target])
    if failed:
        raise AirflowException("check failed for " + " | ".join(failed))
    return results


def task_check_database(config: Config, settings: EscalationSettings) -> dict:
    from include.pgmaint.state import ensure_state_schema

    conninfo = _conninfo(config)
    result = canary(conninfo, config, settings)
    try:
        conn = open_watchdog_connection(conninfo, config)
    except Exception as exc:
        result.notes.append(f"connections / lock waits not checked: cannot connect ({exc})")
    else:
        with conn:
            ensure_state_schema(conn, config.state_schema)  # check_database reads through the journal table
            result = result.add(check_database(conn, config, settings))
    _log(result)
    return result.as_dict()


def task_check_tables(config: Config, settings: EscalationSettings) -> dict:
    from include.pgmaint.state import ensure_state_schema

    try:
        conn = open_watchdog_connection(_conninfo(config), config)
    except Exception as exc:  # the canary reports an unreachable database
        result = CheckResult(notes=[f"tables not checked: cannot connect ({exc})"])
    else:
        with conn:
            ensure_state_schema(conn, config.state_schema)
            result = check_tables(conn, config, settings)
    _log(result)
    return result.as_dict()


def task_check_services(config: Config) -> dict:
    from include.pgmaint.state import ensure_state_schema

    try:
        conn = open_watchdog_connection(_conninfo(config), config)
    except Exception as exc:
        result = CheckResult(notes=[f"service leases not checked: cannot connect ({exc})"])
    else:
        with conn:
            ensure_state_schema(conn, config.state_schema)
            result = check_leases(conn, config)
    _log(result)
    return result.as_dict()


def task_escalate(config: Config, settings: EscalationSettings, payloads: dict[str, dict | None], dag_id: str) -> dict:
    """Combine the checks' findings and apply the policy; fail if a page could not be delivered anywhere."""
    from airflow.sdk.exceptions import AirflowException

    results = CheckResult()
    for payload in payloads.values():
        results = results.add(CheckResult.from_dict(payload))
    healthy = {f"{dag_id}.{task_id}" for task_id, payload in payloads.items() if payload is not None}
    ev = evaluate(results, config, settings, healthy_tasks=healthy)
    summary = {
        "active": {k: {"severity": s.severity, "since": s.first_seen.isoformat(), "paged": s.paged_at is not None}
                   for k, s in sorted(ev.active.items())},
        "sent": [f"{n.channel}:{n.action}:{n.key}" for n in ev.notifications],
        "persisted": ev.persisted,
    }
    if not summary["active"]:
        log.info("all clear: no active conditions")
    for key, s in summary["active"].items():
        log.info("active %-8s %s (since %s%s)", s["severity"], key, s["since"], ", paged" if s["paged"] else "")
    undelivered = [n for n in ev.undelivered if n.channel == "page"]
    if undelivered:
        raise AirflowException("could not deliver page(s) to any page target: " + "; ".join(
            f"{n.action} {n.key}: {', '.join(f'{t}: {e}' for t, e in n.results)}" for n in undelivered))
    return summary


def _log(result: CheckResult) -> None:
    for note in result.notes:
        log.info("%s", note)
    for c in result.conditions:
        log.warning("%s %s: %s", c.severity.upper(), c.key, c.message)
    if not result.conditions:
        log.info("no conditions (%d check(s))", len(result.scope))


EXIT_CLEAR, EXIT_WARNING, EXIT_CRITICAL, EXIT_CANNOT_CHECK = 0, 1, 2, 3


def cli_parser():
    from include.pgmaint.cli import EXIT_USAGE, Parser

    return Parser(
        prog="python -m include.pgmaint.watchdog",
        description="Run every watchdog check once against the target database and print what it finds. "
                    "Notifies nobody and records no condition (the escalation policy runs only in the "
                    "partition_watchdog DAG).",
        epilog=f"exit status: {EXIT_CLEAR} all clear, {EXIT_WARNING} warnings, {EXIT_CRITICAL} something critical "
               f"(the canary failing to connect or read counts as critical), {EXIT_CANNOT_CHECK} could not check "
               f"(invalid config, missing privileges, a check's query failed), {EXIT_USAGE} usage error")


def main(argv: list[str] | None = None) -> int:
    """`python -m include.pgmaint.watchdog CONNINFO`: run every check and print what it finds (see --help)."""
    import sys

    from include.pgmaint.cli import one_line, privilege_hint
    from include.pgmaint.fleet import load_target
    from include.pgmaint.escalation import settings_for

    parser = cli_parser()
    parser.add_argument("conninfo", metavar="CONNINFO",
                        help="libpq connection string or URI of the target database, e.g. 'host=db dbname=app user=pgmaint'")
    parser.add_argument("--config", metavar="PATH", help="pgmaint YAML config (default: $PGMAINT_CONFIG, else the demo's)")
    parser.add_argument("--target", metavar="NAME", help="with several targets in the config: the one CONNINFO points at")
    args = parser.parse_args(argv)
    try:
        config = load_target(args.config, args.target)
        result = run_checks(args.conninfo, config, settings_for(config))
    except Exception as exc:  # a failure to check is not a finding: its own exit status, one line
        print(f"pgmaint watchdog: could not check: {one_line(exc)}{privilege_hint(exc)}", file=sys.stderr)
        return EXIT_CANNOT_CHECK
    for note in result.notes:
        print(f"  . {note}")
    if not result.conditions:
        print(f"all clear ({len(result.scope)} checks)")
        return EXIT_CLEAR
    for c in sorted(result.conditions, key=lambda c: (c.severity != "critical", c.key)):
        first, *rest = c.message.splitlines()
        print(f"{c.severity.upper():8} {c.key}\n         {first}" + "".join(f"\n         {line}" for line in rest))
    return EXIT_CRITICAL if any(c.severity == "critical" for c in result.conditions) else EXIT_WARNING


__all__ = [
    "CheckResult",
    "canary",
    "check_database",
    "check_leases",
    "check_tables",
    "evaluate",
    "run_checks",
    "watch",
]


if __name__ == "__main__":
    import sys

    sys.exit(main())
