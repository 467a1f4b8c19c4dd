"""A failed task as a condition: which target keeps its state, which table and step, who blocked it."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime

from psycopg import sql

from include.pgmaint.airflow.spill import spill_for
from include.pgmaint.config import Config, EscalationSettings
from include.pgmaint.config.model import TARGET_SEPARATOR
from include.pgmaint.escalation.conditions import Condition
from include.pgmaint.escalation.escalator import Evaluation, open_escalator, utcnow
from include.pgmaint.escalation.rendering import describe_session
from include.pgmaint.escalation.stores import MemoryStore
from include.pgmaint.fleet import load_fleet

log = logging.getLogger("pgmaint.escalation")


_PID = re.compile(r"pid (\d+)")


def target_of(context) -> Config:
    """The target whose database keeps this failure's state: one target, or (fleet mode) the task's own —
    from the task (`pgmaint_target` in its context), its group (`<target>.…` task ids), or its `table` param."""

    fleet = load_fleet()
    if not fleet.multi:
        return fleet.targets[0]
    ti = context.get("ti") or context.get("task_instance")
    table_param = (context.get("params") or {}).get("table")
    candidates = [
        context.get("pgmaint_target"),
        str(getattr(ti, "task_id", "")).split(".", 1)[0],
        str(getattr(ti, "rendered_map_index", None) or "").split(TARGET_SEPARATOR, 1)[0],
        table_param.split(TARGET_SEPARATOR, 1)[0] if isinstance(table_param, str) else None,
    ]
    for name in candidates:
        try:
            config = fleet.target(name)
        except KeyError:
            continue
        if isinstance(table_param, str) and table_param.startswith(f"{name}{TARGET_SEPARATOR}"):
            context["table_name"] = table_param.split(TARGET_SEPARATOR, 1)[1]
        return config
    return fleet.targets[0]


def report_task_failure(
    context,
    config: Config,
    settings: EscalationSettings,
    *,
    clock: Callable[[], datetime] = utcnow,
    senders: dict | None = None,
    conninfo: str | None = None,
    spill: MemoryStore | None = None,
) -> Evaluation | None:
    ti = context.get("ti") or context.get("task_instance")
    if (context.get("params") or {}).get("dry_run") is True:
        # A dry run writes nothing, not even to the escalation state: its failure is in the run itself.
        log.warning(
            "dry run: %s.%s failed; not recorded as a condition and nobody notified (a dry run writes nothing): %s",
            getattr(ti, "dag_id", "?"),
            getattr(ti, "task_id", "?"),
            context.get("exception"),
        )
        return None
    if ti is not None and _restates_upstream_failure(ti, context):
        log.info("%s.%s failed because upstream tasks failed; those are reported on their own", ti.dag_id, ti.task_id)
        return None
    spill = spill if spill is not None else spill_for(config)
    with open_escalator(config, settings, conninfo=conninfo, clock=clock, senders=senders, spill=spill) as (esc, conn):
        cond = task_failure_condition(context, config, conn)
        return esc.evaluate([cond])


def task_failure_condition(context, config: Config, conn=None) -> Condition:
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    run_id = getattr(ti, "run_id", None) or getattr(context.get("dag_run"), "run_id", None)
    table = _table_of(context, config)
    exc = context.get("exception")
    error = f"{type(exc).__name__}: {exc}".strip() if isinstance(exc, BaseException) else str(exc or "unknown error")
    blockers, step = _blockers_and_step(exc)
    if conn is not None and table and (not blockers or not step):
        j_blockers, j_step = _from_journal(conn, config.state_schema, run_id, table)
        blockers, step = blockers or j_blockers, step or j_step
    if not blockers:
        blockers = [{"pid": int(p)} for p in dict.fromkeys(_PID.findall(error))]
    try:
        log_url = ti.log_url
    except Exception:
        log_url = None
    where = f"{dag_id}.{task_id}" + (f" [{table}]" if table else "")
    lines = [f"{where} failed (try {getattr(ti, 'try_number', '?')}, run {run_id}): {error[:1500]}"]
    if step:
        lines.append(f"step: {step}")
    for b in blockers:
        lines.append("blocked by " + describe_session(b))
    details = {
        "dag_id": dag_id,
        "task_id": task_id,
        "run_id": run_id,
        "table": table,
        "step": step,
        "error": error[:4000],
        "blockers": blockers,
        "log_url": log_url,
        "map_index": getattr(ti, "map_index", None),
        "try_number": getattr(ti, "try_number", None),
    }
    key = f"task:{dag_id}.{task_id}" + (f":{table}" if table else "")
    return Condition(key, "warning", "\n".join(lines), json.loads(json.dumps(details, default=str)))


def _blockers_and_step(exc) -> tuple[list[dict], str | None]:
    """Blocking sessions and the failed step, if the exception (or its cause) carries them (execute.StepFailed)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        blockers = getattr(exc, "blockers", None)
        step = getattr(exc, "step", None)
        if blockers or step is not None:
            out = [asdict(b) if hasattr(b, "__dataclass_fields__") else dict(b) for b in blockers or []]
            step_text = f"{step.action} {step.target}" if hasattr(step, "action") else (str(step) if step else None)
            return out, step_text
        exc = exc.__cause__ or exc.__context__
    return [], None


def _from_journal(conn, schema: str, run_id: str | None, table: str) -> tuple[list[dict], str | None]:
    """The failed step of this DAG run for the table, and who blocked it, from the journal."""

    try:
        row = conn.execute(
            sql.SQL(
                "SELECT s.action || ' ' || s.target, s.blockers FROM {}.steps s JOIN {}.runs r USING (run_id) "
                "WHERE r.table_name = %s AND (%s::text IS NULL OR r.dag_run_id = %s) AND s.outcome = 'failed' "
                "ORDER BY s.step_id DESC LIMIT 1"
            ).format(sql.Identifier(schema), sql.Identifier(schema)),
            [table, run_id, run_id],
        ).fetchone()
    except Exception as exc:
        log.info("no journal details for %s: %s", table, exc)
        return [], None
    return (list(row[1] or []), row[0]) if row else ([], None)


def _table_of(context, config: Config) -> str | None:
    """The configured table a task worked on: its `table` argument, map index name, or params."""
    names = set(config.table_names)
    ti = context.get("ti")
    task = getattr(ti, "task", None) or context.get("task")
    candidates = [
        (getattr(task, "op_kwargs", None) or {}).get("table"),
        context.get("table_name"),
        getattr(ti, "rendered_map_index", None),
        (context.get("params") or {}).get("table"),
    ]
    tables_param = (context.get("params") or {}).get("tables")
    if isinstance(tables_param, (list, tuple)) and len(tables_param) == 1:
        candidates.append(tables_param[0])
    for c in candidates:
        if isinstance(c, str) and c in names:
            return c
    return None


def _restates_upstream_failure(ti, context) -> bool:
    """True for a task (e.g. a summary with trigger_rule all_done) that failed because upstream tasks did."""
    task = getattr(ti, "task", None)
    upstream = sorted(getattr(task, "upstream_task_ids", None) or ())
    if not upstream or str(getattr(task, "trigger_rule", "all_success")) in ("all_success", "TriggerRule.ALL_SUCCESS"):
        return False
    try:
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=upstream, run_ids=[ti.run_id])
    except Exception as exc:
        log.debug("cannot read upstream task states: %s", exc)
        return False
    flat: list[str] = []

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif v is not None:
            flat.append(str(v))

    walk(states)
    return any(s in ("failed", "upstream_failed", "TaskInstanceState.FAILED") for s in flat)
