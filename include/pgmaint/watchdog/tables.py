"""Per-table checks: catalog, runway, gaps, DEFAULT rows, expired partitions, cadence, long transactions."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from psycopg import errors, sql

from include.pgmaint.catalog import WALL_CLOCK_KEY_TYPES, CatalogError, read_catalog
from include.pgmaint.config import Config, EscalationSettings, Preflight, TableConfig
from include.pgmaint.escalation import Condition, ago, describe_session
from include.pgmaint.guards import preflight, quoted
from include.pgmaint.partman import dual_manager_conditions
from include.pgmaint.plan import missing_ranges, timeline
from include.pgmaint.report import table_health
from include.pgmaint.state import Journal
from include.pgmaint.watchdog.results import (
    MAINTENANCE_DAG,
    CheckResult,
    cadence_threshold,
    key_table,
    table_keys,
)

log = logging.getLogger("pgmaint.watchdog")


def check_tables(conn, config: Config, settings: EscalationSettings, now: datetime | None = None) -> CheckResult:
    """Runway, DEFAULT rows, expired partitions, cadence and long transactions for every configured table."""

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
            out.conditions.append(
                Condition(
                    f"catalog:{cfg.name}",
                    "warning",
                    f"{cfg.name}: cannot be maintained as configured: {f}",
                    {"table": cfg.name, "error": str(f)},
                )
            )
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
            out.conditions.append(
                Condition(
                    f"expired_attached:{cfg.name}",
                    "warning",
                    f"{cfg.name}: {late.expired_attached} partition(s) past the {cfg.retention} retention still attached "
                    f"(oldest: {late.oldest}); partition_maintenance retires them, so it is not running or not succeeding",
                    {
                        "table": cfg.name,
                        "count": late.expired_attached,
                        "oldest": late.oldest,
                        "retention": str(cfg.retention),
                    },
                )
            )
        if threshold is not None and cfg.maintained_by == "pgmaint":  # the split: pg_partman keeps the cadence
            out.conditions += _cadence(conn, config, cfg, journal, threshold, now)
        out.conditions += _long_transactions(conn, cfg, settings)
    return out


def _runway(cfg: TableConfig, facts, health, late, settings: EscalationSettings) -> list[Condition]:
    key = f"runway:{cfg.name}"
    ahead = max(health.runway - 1, 0, late.runway - 1)  # tolerate the minutes before maintenance's next run
    covered = max((p.range.upper for p in facts.partitions if p.range.upper is not None), default=None)

    clock = "(wall clock)" if facts.key_type in WALL_CLOCK_KEY_TYPES else "UTC"  # see plan.timeline
    until = f"; partitions end at {covered:%Y-%m-%d %H:%M} {clock}" if covered else "; no partitions at all"
    details = {
        "table": cfg.name,
        "runway": health.runway,
        "ahead": ahead,
        "premake": cfg.premake,
        "newest": health.newest,
        "covered_until": covered.isoformat() if covered else None,
    }
    where_rows = "the DEFAULT partition" if facts.default else "nowhere: inserts fail (there is no DEFAULT partition)"
    if health.runway == 0:
        return [
            Condition(
                key,
                "critical",
                f"{cfg.name}: no partition for the current {cfg.interval} interval: new rows go to {where_rows}{until}",
                details,
            )
        ]
    if ahead < 1:
        return [
            Condition(
                key,
                "critical",
                f"{cfg.name}: less than one {cfg.interval} interval of partitions left (none ahead of the current "
                f"one, want {cfg.premake}){until}; after that rows go to {where_rows}",
                details,
            )
        ]
    if facts.default is None and ahead < min(2, cfg.premake):
        # Without a DEFAULT, running out means failed inserts, not rows piling up: page one interval earlier.
        return [
            Condition(
                key,
                "critical",
                f"{cfg.name}: only {ahead} {cfg.interval} interval of partitions ahead of the current one (want "
                f"{cfg.premake}){until}; the table has no DEFAULT partition, so inserts past it will fail",
                details,
            )
        ]
    want = min(settings.runway_warning_intervals, cfg.premake)
    if ahead < want:
        return [
            Condition(
                key,
                "warning",
                f"{cfg.name}: only {ahead} partition(s) ahead of the current one (want {cfg.premake}, "
                f"warning below {want}){until}",
                details,
            )
        ]
    return []


def _gaps(cfg: TableConfig, facts, now: datetime, late: datetime, tz: str) -> list[Condition]:
    """Intervals inside the managed window that ended before `late` (now minus the cadence grace) with no
    partition; the runway condition covers the current interval and those ahead."""

    ended = timeline(facts, late, tz)[0]
    missing = [
        (name, rng)
        for name, rng in missing_ranges(cfg, facts, now, tz)
        if rng.upper <= ended and not any(p.range.overlaps(rng) for p in facts.partitions)
    ]
    if not missing:
        return []
    shown = ", ".join(f"{rng}" for _, rng in missing[:6]) + (
        f" and {len(missing) - 6} more" if len(missing) > 6 else ""
    )
    where = (
        "late rows for them go to the DEFAULT partition"
        if facts.default is not None
        else "late rows for them are rejected (there is no DEFAULT partition)"
    )
    return [
        Condition(
            f"gaps:{cfg.name}",
            "warning",
            f"{cfg.name}: {len(missing)} interval(s) inside the managed window have no partition: {shown}; {where}. "
            "partition_maintenance creates them on its next run; an interval whose rows already sit in the DEFAULT "
            "needs default_partition_migration (see default_rows)",
            {"table": cfg.name, "missing": [str(rng) for _, rng in missing], "has_default": facts.default is not None},
        )
    ]


def _default_rows(conn, cfg: TableConfig, facts, settings: EscalationSettings) -> CheckResult:
    """Rows in the DEFAULT: exact up to default_exact_count_limit (LIMIT-bounded, short timeout), else the estimate."""

    out = CheckResult()
    if facts.default is None:
        return out
    estimate = facts.default.estimated_rows
    limit = settings.default_exact_count_limit
    rows, exact, low, high = estimate, False, None, None
    if estimate <= limit:
        query = sql.SQL(
            "SELECT count(*), min(k)::text, max(k)::text FROM (SELECT {key} AS k FROM ONLY {default} LIMIT %s) s"
        ).format(key=sql.Identifier(facts.key_column), default=sql.Identifier(facts.schema, facts.default.name))
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
    details = {
        "table": cfg.name,
        "default": default,
        "rows": rows,
        "exact": exact,
        "min": low,
        "max": high,
        "auto_migrate": cfg.auto_migrate,
    }
    if cfg.auto_migrate:
        out.migrate.append(cfg.name)
        out.notes.append(
            f"{cfg.name}: {amount} in {default}; auto_migrate: asking default_partition_migration to move them"
        )
        out.conditions.append(
            Condition(
                f"default_rows:{cfg.name}",
                "warning",
                f"{cfg.name}: {amount} in the DEFAULT partition {default}{span}; auto_migrate is on and "
                "default_partition_migration has been triggered, but they are still there",
                details,
                quiet=True,
            )
        )
    else:
        out.conditions.append(
            Condition(
                f"default_rows:{cfg.name}",
                "warning",
                f"{cfg.name}: {amount} in the DEFAULT partition {default}{span}; queries on those ranges read the "
                "DEFAULT, and partition_maintenance cannot create a partition for a range the DEFAULT holds rows of: "
                "move them with default_partition_migration for this table",
                details,
            )
        )
    return out


def _cadence(conn, config: Config, cfg: TableConfig, journal, threshold: timedelta, now: datetime) -> list[Condition]:

    key = f"cadence:{cfg.name}"
    last = journal.last_success(cfg.name, "maintenance")
    schema = sql.Identifier(config.state_schema)
    born, latest = conn.execute(
        sql.SQL(
            "SELECT (SELECT min(applied_at) FROM {s}.schema_version), "
            "(SELECT json_build_object('outcome', outcome, 'finished_at', finished_at, 'error', left(error, 500), "
            "'dag_run_id', dag_run_id) FROM {s}.runs WHERE table_name = %s AND job = 'maintenance' ORDER BY run_id DESC LIMIT 1)"
        ).format(s=schema),
        [cfg.name],
    ).fetchone()
    since = last or born
    if since is None or now - since <= threshold:
        return []
    latest_text = ""
    if latest:
        latest_text = f"; latest run: {latest['outcome']}" + (f": {latest['error']}" if latest.get("error") else "")
    if last is None:
        message = (
            f"{cfg.name}: no successful {MAINTENANCE_DAG} run recorded in the journal "
            f"(journal started {ago(now - born)} ago; expected at least every {ago(threshold)}){latest_text}"
        )
    else:
        message = (
            f"{cfg.name}: the partition manager missed its cadence: last successful {MAINTENANCE_DAG} "
            f"{ago(now - last)} ago ({last:%Y-%m-%d %H:%M} UTC; alert after {ago(threshold)}){latest_text}"
        )
    return [
        Condition(
            key,
            "warning",
            message,
            {
                "table": cfg.name,
                "last_success": last.isoformat() if last else None,
                "threshold_seconds": threshold.total_seconds(),
                "latest_run": latest,
            },
        )
    ]


def _long_transactions(conn, cfg: TableConfig, settings: EscalationSettings) -> list[Condition]:
    """Sessions whose transaction has held a lock on the table family longer than long_transaction_seconds."""

    result = preflight(
        conn,
        quoted(cfg.schema, cfg.table),
        Preflight(
            max_connection_usage=1.0,
            long_transaction_seconds=settings.long_transaction_seconds,
            allow_waiting_sessions=1 << 30,
        ),
        require_visibility=False,
    )
    holders = [s for s in result.sessions if s.get("granted")]
    if not holders:
        return []
    who = {
        row[0]: row[1:]
        for row in conn.execute(  # who they are, for the responder
            "SELECT pid, usename, application_name, client_addr::text FROM pg_stat_activity WHERE pid = ANY(%s)",
            [[s["pid"] for s in holders]],
        ).fetchall()
    }
    for s in holders:
        s["usename"], s["application_name"], s["client_addr"] = who.get(s["pid"], (None, None, None))
    idle = [s for s in holders if str(s.get("state", "")).startswith("idle in transaction")]
    lines = [
        f"{cfg.name}: {len(holders)} session(s) have held locks on the table for more than "
        f"{settings.long_transaction_seconds:.0f} s"
        + (f" ({len(idle)} idle in transaction)" if idle else "")
        + "; DDL on this table (maintenance, migration) queues behind them"
    ]
    lines += ["  " + describe_session(s) for s in holders]
    return [
        Condition(
            f"long_transactions:{cfg.name}", "warning", "\n".join(lines), {"table": cfg.name, "sessions": holders}
        )
    ]
