"""The partition_watchdog DAG's task bodies: each check for every target, then escalation."""

from __future__ import annotations

import logging

from airflow.sdk.exceptions import AirflowException

from include.pgmaint.airflow.connections import conninfo_from_airflow
from include.pgmaint.airflow.spill import spill_for
from include.pgmaint.config import Config
from include.pgmaint.state import ensure_state_schema
from include.pgmaint.watchdog import (
    CheckResult,
    canary,
    check_database,
    check_leases,
    check_tables,
    evaluate,
    log_result,
    open_watchdog_connection,
)

log = logging.getLogger("pgmaint.watchdog")


def _conninfo(config: Config) -> str:
    return conninfo_from_airflow(config.connection_id)


def per_target(fleet, check, ti=None) -> dict:
    """Run one watchdog check for every target of the fleet; one target's error never stops the others.

    Pushes XCom `result`: the check's payload (one target), or {target: payload} (several).
    Returns {target: payload}. Raises after all targets ran if a check failed for any, naming them
    (that target's payload is None, so escalation sees the check as not done for it).
    """
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


def task_check_database(config: Config) -> dict:
    conninfo = _conninfo(config)
    result = canary(conninfo, config, config.escalation)
    try:
        conn = open_watchdog_connection(conninfo, config)
    except Exception as exc:
        result.notes.append(f"connections / lock waits not checked: cannot connect ({exc})")
    else:
        with conn:
            ensure_state_schema(conn, config.state_schema)  # check_database reads through the journal table
            result = result.add(check_database(conn, config, config.escalation))
    log_result(result)
    return result.as_dict()


def task_check_tables(config: Config) -> dict:
    try:
        conn = open_watchdog_connection(_conninfo(config), config)
    except Exception as exc:  # the canary reports an unreachable database
        result = CheckResult(notes=[f"tables not checked: cannot connect ({exc})"])
    else:
        with conn:
            ensure_state_schema(conn, config.state_schema)
            result = check_tables(conn, config, config.escalation)
    log_result(result)
    return result.as_dict()


def task_check_services(config: Config) -> dict:
    try:
        conn = open_watchdog_connection(_conninfo(config), config)
    except Exception as exc:
        result = CheckResult(notes=[f"service leases not checked: cannot connect ({exc})"])
    else:
        with conn:
            ensure_state_schema(conn, config.state_schema)
            result = check_leases(conn, config)
    log_result(result)
    return result.as_dict()


def task_escalate(config: Config, payloads: dict[str, dict | None], dag_id: str) -> dict:
    """Combine the checks' findings and apply the policy; fail if a page could not be delivered anywhere."""
    results = CheckResult()
    for payload in payloads.values():
        results = results.add(CheckResult.from_dict(payload))
    healthy = {f"{dag_id}.{task_id}" for task_id, payload in payloads.items() if payload is not None}
    ev = evaluate(results, config, config.escalation, healthy_tasks=healthy, spill=spill_for(config))
    summary = {
        "active": {
            k: {"severity": s.severity, "since": s.first_seen.isoformat(), "paged": s.paged_at is not None}
            for k, s in sorted(ev.active.items())
        },
        "sent": [f"{n.channel}:{n.action}:{n.key}" for n in ev.notifications],
        "persisted": ev.persisted,
    }
    if not summary["active"]:
        log.info("all clear: no active conditions")
    for key, s in summary["active"].items():
        log.info("active %-8s %s (since %s%s)", s["severity"], key, s["since"], ", paged" if s["paged"] else "")
    undelivered = [n for n in ev.undelivered if n.channel == "page"]
    if undelivered:
        raise AirflowException(
            "could not deliver page(s) to any page target: "
            + "; ".join(f"{n.action} {n.key}: {', '.join(f'{t}: {e}' for t, e in n.results)}" for n in undelivered)
        )
    return summary
