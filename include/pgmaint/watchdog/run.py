"""Every check once, and the escalation of what they found (`run_checks`, `evaluate`, `watch`)."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timezone

from psycopg import sql

from include.pgmaint.config import Config, EscalationSettings
from include.pgmaint.db import connect
from include.pgmaint.escalation import open_escalator
from include.pgmaint.state import ensure_state_schema
from include.pgmaint.watchdog.database import canary, check_database
from include.pgmaint.watchdog.leases import check_leases
from include.pgmaint.watchdog.results import CheckResult, key_table
from include.pgmaint.watchdog.tables import check_tables

log = logging.getLogger("pgmaint.watchdog")


def open_watchdog_connection(conninfo: str, config: Config):
    """A session for the checks: 200 ms lock_timeout, a short statement_timeout, application_name pgmaint-watchdog."""

    budget = replace(config.lock_budget, statement_timeout_ms=min(config.lock_budget.statement_timeout_ms, 5000))
    return connect(conninfo, budget, application_name="pgmaint-watchdog")


def run_checks(conninfo: str, config: Config, settings: EscalationSettings, now: datetime | None = None) -> CheckResult:
    """All checks in one call (the DAG runs them as separate tasks): canary first, then the rest if it connects."""

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


def task_conditions_over(
    conn,
    config: Config,
    settings: EscalationSettings,
    active: dict,
    now: datetime,
    healthy_tasks: set[str] = frozenset(),
) -> list[str]:
    """Failed-task conditions that are over.

    - with a table: the journal shows a successful run of the same DAG for the table since;
    - a watchdog task: it succeeded in this run (`healthy_tasks`, as `dag.task`);
    - otherwise: no new failure for failure_resolve_after.
    """

    over = []
    for key, st in active.items():
        if not key.startswith("task:"):
            continue
        d = st.details or {}
        dag_task = f"{d.get('dag_id')}.{d.get('task_id')}"
        if dag_task in healthy_tasks:
            over.append(key)
        elif d.get("table") and conn is not None:
            ok = conn.execute(
                sql.SQL(
                    "SELECT max(finished_at) FROM {}.runs WHERE dag_id = %s AND table_name = %s AND outcome = 'success'"
                ).format(sql.Identifier(config.state_schema)),
                [d.get("dag_id"), d["table"]],
            ).fetchone()[0]
            if ok is not None and ok > st.last_seen:
                over.append(key)
        elif not d.get("table") and now - st.last_seen >= settings.failure_resolve_after:
            over.append(key)
    return over


def evaluate(
    results: CheckResult,
    config: Config,
    settings: EscalationSettings,
    *,
    conninfo: str | None = None,
    healthy_tasks: set[str] = frozenset(),
    **escalator_kwargs,
):
    """Send what the checks found through the escalation policy. Returns the Evaluation."""

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
