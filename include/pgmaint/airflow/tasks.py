"""Glue between the DAG files and the engine: what each task does, in one call.

Imported only inside task bodies, so DAG files parse without psycopg or a
database. Airflow is imported lazily here too; the engine itself never needs it.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from include.pgmaint.config import Config
from include.pgmaint.db import connect
from include.pgmaint.maintenance import (
    RunContext,
    plan_run,
    planned_retirements,
    run_maintenance,
)
from include.pgmaint.migrate import finish_migration, migrate_table

log = logging.getLogger("pgmaint.tasks")


def resolve_as_of(params: dict, dag_run=None):
    """The moment premake plans for: the `as_of` param, else a backfill run's logical date, else None (now).

    Retirement never uses it: it always judges retention on the wall clock.
    """

    text = (params or {}).get("as_of")
    if text:
        try:
            moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        except ValueError:
            raise AirflowFailException(
                f"as_of: {text!r} is not an ISO 8601 timestamp like 2026-11-01T00:00:00+00:00"
            ) from None
        if moment.tzinfo is None:
            raise AirflowFailException(f"as_of: {text!r} has no UTC offset; write e.g. {text}+00:00")
        return moment
    run_type = getattr(dag_run, "run_type", None)
    if getattr(run_type, "value", run_type) == "backfill":
        return getattr(dag_run, "logical_date", None)
    return None


def maintain_one(config: Config, table: str, phase: str, *, dry_run: bool, dag_run=None, ti=None, as_of=None) -> dict:
    """Run one maintenance phase (premake | retire) for one table; push its result, then fail/skip the task to match it.

    `as_of` (premake only) adds the partitions that moment needs; see `resolve_as_of`.
    """

    from include.pgmaint.airflow.connections import conninfo_from_airflow

    context = RunContext(
        dag_id=getattr(dag_run, "dag_id", None),
        dag_run_id=getattr(dag_run, "run_id", None),
        task_id=f"{ti.task_id}[{ti.map_index}]" if ti is not None else None,
    )
    with connect(conninfo_from_airflow(config.connection_id), config.lock_budget) as conn:
        result = run_maintenance(
            conn,
            config,
            [config.table(table)],
            dry_run=dry_run,
            context=context,
            phases=(phase,),
            as_of=as_of if phase == "premake" else None,
        )[0]
    summary = result.as_dict()
    if ti is not None:
        ti.xcom_push(key="result", value=summary)  # kept even when the task fails or skips below
    if result.outcome == "failed":
        raise AirflowFailException(f"{table}: {phase} failed: " + " | ".join(result.errors))
    if result.outcome == "skipped":
        raise AirflowSkipException(f"{table}: {phase} skipped: {result.skipped_reason}")
    return summary


def plan_target(config: Config, params: dict, *, dag_run=None, ti=None) -> list[str]:
    """The plan task of one target: plan all its (selected) tables at once; return the tables with work.

    Its full result (per table: what would be created / retired, what waits for migration, what is
    skipped and why) goes to XCom `result`: what summarize and the UI show. If the target cannot be
    planned (database down, state schema unreadable), the task fails naming the target; the other
    targets' plan tasks go on.
    """

    from include.pgmaint.airflow.connections import conninfo_from_airflow

    selected = set(params.get("tables") or [])
    prefix = f"{config.target}/"
    tables = [t for t in config.tables if not selected or t.name in selected or prefix + t.name in selected]
    where = (
        f"target {config.target} (connection {config.connection_id})"
        if config.target
        else f"connection {config.connection_id}"
    )
    if not tables:
        result = {"work": [], "tables": {}, "results": {}, "healthy": 0, "journalled": 0, "not_selected": True}
    else:
        context = RunContext(
            dag_id=getattr(dag_run, "dag_id", None),
            dag_run_id=getattr(dag_run, "run_id", None),
            task_id=getattr(ti, "task_id", None),
        )
        try:
            with connect(conninfo_from_airflow(config.connection_id), config.lock_budget) as conn:
                result = plan_run(
                    conn,
                    config,
                    tables,
                    dry_run=params["dry_run"],
                    context=context,
                    as_of=resolve_as_of(params, dag_run),
                )
        except Exception as exc:
            why = str(exc) if isinstance(exc, AirflowFailException) else f"{type(exc).__name__}: {exc}".strip()
            error = f"{where}: cannot plan: {why}"
            if ti is not None:
                ti.xcom_push(
                    key="result",
                    value={"error": error, "tables": {t.name: {"status": "failed", "why": error} for t in tables}},
                )
            raise AirflowFailException(error) from exc
    result["target"], result["connection_id"] = config.target, config.connection_id
    if ti is not None:
        ti.xcom_push(key="result", value=result)
    return result["work"]


# Gates around the destructive step. Before: the window is intact (no gaps or overlaps; a gap
# usually means rows sit in the DEFAULT and need default_partition_migration) and no row hides
# in the DEFAULT without a key. After: nothing expired is still attached and the window is intact.
RETIRE_GATES = {
    "before_retire": ["contiguity", "not_null_key"],
    "after_retire": ["retention", "contiguity"],
}


def retention_gate(config: Config, table: str, gate: str, upstream: dict, *, dry_run: bool, ti=None) -> dict:
    """Run a retire gate when partitions are due to retire (gates cost a GX import).

    Decided from the retire plan itself, read from the catalog now: never from the upstream
    task's summary (premake's fast path, or any other phase, says nothing about retirement).
    The after-retire gate also runs when the retire step detached something.
    """
    if dry_run:
        return {"gate": gate, "skipped": "dry run"}
    from include.pgmaint.airflow.connections import conninfo_from_airflow

    with connect(conninfo_from_airflow(config.connection_id), config.lock_budget) as conn:
        due = planned_retirements(conn, config, config.table(table))
    detached = (upstream.get("detached") or []) if gate == "after_retire" else []
    if not due and not detached:
        return {
            "gate": gate,
            "skipped": "nothing to retire: no partition is past retention (read from the catalog now)",
        }
    log.info(
        "%s: gate %s: %s",
        table,
        gate,
        f"due to retire: {', '.join(due)}" if due else f"detached: {', '.join(detached)}",
    )
    from include.pgmaint.airflow.quality import gate_task

    return gate_task(config, table, gate, RETIRE_GATES[gate], ti=ti)


TABLE_TASKS = ("premake", "gate_before_retire", "retire", "gate_after_retire")


def summarize_results(fleet, ti, dag_run=None) -> dict:
    """Every table's outcome from the plan tasks' results and the mapped tasks' results and states.

    Fails the run if any table failed or a target could not be planned, naming them.
    """
    # whole: collects every target's plan, mapped results and task states into the lists
    # summarize_tables reads, then applies the one failure rule; each part needs the others' indexes.

    names: list[str] = []
    premade: list[dict | None] = []
    retired: list[dict | None] = []
    states: dict[str, str] = {}
    healthy = 0
    down: list[str] = []
    per_target: dict[str, dict] = {}
    for config in fleet.targets:
        prefix = f"{config.target}." if fleet.multi else ""
        plan = ti.xcom_pull(task_ids=f"{prefix}plan", key="result") or {
            "error": "the plan task left no result (see its log)"
        }
        if plan.get("error"):
            down.append(f"{config.target}: {plan['error']}" if fleet.multi else plan["error"])
            per_target[str(config.target)] = {"error": plan["error"]}
            continue
        per_target[str(config.target)] = {k: plan.get(k) for k in ("healthy", "journalled", "seconds")} | {
            "work": len(plan["work"])
        }
        if plan.get("not_selected"):
            continue
        healthy += plan["healthy"]
        work = list(plan["work"])
        ref = functools.partial(fleet.ref, config)  # this target's table names as the summary shows them

        def relabel(r, ref=ref):
            return r and {**r, "table": ref(r["table"])}

        indexes = list(range(len(work)))
        got_premade = ti.xcom_pull(task_ids=f"{prefix}table.premake", key="result", map_indexes=indexes) if work else []
        got_retired = ti.xcom_pull(task_ids=f"{prefix}table.retire", key="result", map_indexes=indexes) if work else []
        if dag_run is not None and work:
            raw = ti.get_task_states(
                dag_id=dag_run.dag_id, run_ids=[dag_run.run_id], task_ids=[f"{prefix}table.{t}" for t in TABLE_TASKS]
            ).get(dag_run.run_id, {})
            offset = len(names)
            for key, state in raw.items():
                task, _, index = key.rpartition("_")
                if index.isdigit():
                    states[f"{task.removeprefix(prefix)}_{offset + int(index)}"] = state
        names += [ref(t) for t in work]
        premade += [relabel(r) for r in _as_list(got_premade, len(work))]
        retired += [relabel(r) for r in _as_list(got_retired, len(work))]
        for name, result in plan["results"].items():  # not mapped, something to say
            names.append(ref(name))
            premade.append(relabel(result))
            retired.append(None)
    summary, lines = summarize_tables(names, premade, retired, states, healthy=healthy)
    summary["targets"] = per_target
    if down:
        summary["targets_down"] = down
        lines.append("target down: " + " | ".join(down) + "; its tables were not maintained, the others were")
    for line in lines:
        log.info("%s", line)
    problems = []
    if summary["failed"]:
        problems.append(f"maintenance failed for {len(summary['failed'])} table(s): {', '.join(summary['failed'])}")
    if down:
        problems.append(f"{len(down)} target(s) could not be planned: {' | '.join(down)}")
    if problems:
        raise AirflowFailException("; ".join(problems))
    return summary


def _as_list(pulled, n: int) -> list:
    """xcom_pull with map_indexes gives a list (or a single value for one index, in some versions)."""
    if n == 0 or pulled is None:
        return [None] * n
    if isinstance(pulled, dict):
        return [pulled]
    values = list(pulled)
    return values + [None] * (n - len(values))


SUMMARY_KEYS = (
    "created",
    "would_create",
    "retired",
    "would_retire",
    "not_retired",
    "needs_migration",
    "skipped",
    "failed",
    "notes",
)


def summarize_tables(
    tables: list[str],
    premade: list[dict | None],
    retired: list[dict | None],
    states: dict[str, str],
    *,
    healthy: int = 0,
) -> tuple[dict, list[str]]:
    """Pure: the run's summary and its log lines. Each line says what was done or what remains, and why.

    `states`: task state by "table.<task>_<index in tables>" (as TaskInstance.get_task_states gives them).
    `healthy`: tables the plan found nothing to do or say for (not listed in `tables`).
    """
    # whole: one paragraph per summary key, in the order the run's log prints them.
    by_table: dict[str, dict[str, dict]] = {}
    for phase, results in (("premake", premade), ("retire", retired)):
        for r in results:
            if r:
                by_table.setdefault(r["table"], {})[phase] = r
    summary: dict = {"tables": len(tables) + healthy, "healthy": healthy, **{key: {} for key in SUMMARY_KEYS}}
    lines: list[str] = []
    dry_run = False

    def add(key: str, table: str, value, line: str) -> None:
        summary[key][table] = value
        lines.append(f"{key.replace('_', ' '):<16} {table}: {line}")

    for i, table in enumerate(tables):
        phases = by_table.get(table, {})
        results = list(phases.values())
        state = {t: states.get(f"table.{t}_{i}") for t in TABLE_TASKS}
        dry_run = dry_run or any(r["outcome"] == "dry_run" for r in results)
        created = [p for r in results for p in r["created"]]
        detached = [p for r in results for p in r["detached"]]
        dropped = [p for r in results for p in r["dropped"]]
        if created:
            add("created", table, created, ", ".join(created))
        if detached:
            kept = [p for p in detached if p not in dropped]
            add(
                "retired",
                table,
                detached,
                ", ".join(detached) + (f" (detached and kept: {', '.join(kept)})" if kept else ""),
            )
        would_create = list(dict.fromkeys(p for r in results for p in r.get("would_create", [])))
        would_retire = list(dict.fromkeys(p for r in results for p in r.get("would_retire", [])))
        if would_create:
            add("would_create", table, would_create, f"{', '.join(would_create)} (dry run: nothing was created)")
        if would_retire:
            add(
                "would_retire",
                table,
                would_retire,
                f"{', '.join(would_retire)} past retention (dry run: nothing was detached)",
            )
        planned = (phases.get("retire") or phases.get("premake") or {}).get("retires_planned", [])
        left = [p for p in planned if p not in detached]
        if left and not dry_run:
            add(
                "not_retired",
                table,
                left,
                f"{', '.join(left)} still attached past retention: " + _why_not_retired(phases.get("retire"), state),
            )
        migrations = [m for r in results for m in r["needs_migration"]]
        if migrations:
            shown = ", ".join(f"{m['partition']} {m['range']}" for m in migrations)
            trigger = migrations[0].get("trigger") or f"trigger default_partition_migration for {table}"
            add(
                "needs_migration",
                table,
                [m["partition"] for m in migrations],
                f"{shown}: the DEFAULT holds rows in these ranges, so their partitions were not created "
                f"(the migration creates them as it moves the rows): {trigger}",
            )
        skipped = [f"{phase}: {r['skipped_reason']}" for phase, r in phases.items() if r["outcome"] == "skipped"]
        if skipped:
            add("skipped", table, " | ".join(skipped), " | ".join(skipped) + "; the next run tries again")
        failed = [f"{t}: {state[t]}" for t in TABLE_TASKS if state[t] in ("failed", "upstream_failed")]
        errors = [e for r in results for e in r["errors"]]
        if not results:
            failed.append("no result: the task crashed or was killed; see its log")
        if failed or errors:
            add("failed", table, " | ".join(errors + failed), " | ".join(errors + failed))
        notes = list(dict.fromkeys(n for r in results for n in r.get("notes", [])))
        if notes:
            add("notes", table, notes, " | ".join(notes))
    if not lines:
        lines.append(
            f"all {len(tables) + healthy} table(s) healthy: runway complete, nothing past retention, nothing in the way"
            + (" (dry run: nothing would change)" if dry_run else ": nothing to do")
        )
    return summary, lines


def _why_not_retired(retire: dict | None, state: dict[str, str | None]) -> str:
    gate = state.get("gate_before_retire")
    if gate in ("failed", "upstream_failed"):
        return f"gate_before_retire {gate}, so retire did not run; see that task's log"
    if retire is None:
        return f"retire did not run (task state: {state.get('retire') or 'unknown'})"
    if retire["outcome"] == "skipped":
        return f"retire skipped: {retire['skipped_reason']}"
    if retire["errors"]:
        return "retire failed: " + " | ".join(retire["errors"])
    return "retire stopped early; " + (" | ".join(retire.get("notes", [])) or "see the retire task's log")


def resolve_migration_table(fleet, params: dict, triggering_asset_events=None) -> str:
    """The table to migrate (`target/table` with several targets): the `table` param, else the latest watchdog asset event's."""

    table = params.get("table")
    if not table and triggering_asset_events:
        for events in triggering_asset_events.values():
            for event in events:
                table = (event.extra or {}).get("table") or table
    if not table:
        raise AirflowFailException(
            "no table chosen: set the `table` param (or trigger through the watchdog's asset event)"
        )
    if table not in fleet.table_refs:
        raise AirflowFailException(f"table {table!r} is not configured (configured: {', '.join(fleet.table_refs)})")
    return table


def migrate_one(config: Config, table: str, params: dict, *, dag_run=None, ti=None) -> dict:
    """Run (or resume) the migration of one table's DEFAULT partition; fail the task if it failed."""

    from include.pgmaint.airflow.connections import conninfo_from_airflow

    conninfo = conninfo_from_airflow(config.connection_id)
    context = RunContext(
        dag_id=getattr(dag_run, "dag_id", None),
        dag_run_id=getattr(dag_run, "run_id", None),
        task_id=getattr(ti, "task_id", None),
    )
    with connect(conninfo, config.lock_budget) as conn:
        result = migrate_table(
            conn,
            conninfo,
            config,
            config.table(table),
            dry_run=params["dry_run"],
            batch_rows=params["batch_rows"],
            max_minutes=params["max_minutes"],
            move_out_of_window=params["move_out_of_window"],
            context=context,
            finish=False,
        )
    summary = result.as_dict()
    if result.outcome == "failed":
        raise AirflowFailException(f"{table}: migration failed: " + " | ".join(result.errors))
    if result.outcome == "skipped":
        raise AirflowSkipException(f"{table}: skipped: {result.skipped_reason}")
    if result.outcome == "incomplete":
        log.warning(
            "%s: not swapped yet: %s (every row is still readable and writable in the DEFAULT; the mirror "
            "trigger keeps the copies current)",
            table,
            result.skipped_reason,
        )
    for left in result.left_in_default:
        log.warning(
            "%s: %d row(s) %s in the DEFAULT partition, %s: %s%s",
            table,
            left["rows"],
            "would stay" if params["dry_run"] else "stay",
            left["range"],
            left["reason"],
            " (move_out_of_window: true moves them too)"
            if left["reason"].startswith(("older than", "beyond")) and not params["move_out_of_window"]
            else "",
        )
    return summary


# The gate around dropping the detached old DEFAULT (the migration's destructive step): per
# interval, rows and checksums conserved at the instant of the swap, and no row left in the
# DEFAULT for a migrated interval (the old DEFAULT unchanged since: checked by the drop itself).
# Both are a few rows of journal and catalog: evaluated directly, without importing GX (seconds
# per task process; with $PGMAINT_DATA_DOCS_DIR set, GX validates them and writes Data Docs).
MIGRATION_GATE_CHECKS = ["conserved", "default_clean"]


def migration_gate(config: Config, table: str, gate: str, migrated: dict, *, dry_run: bool, ti=None) -> dict:
    if dry_run:
        return {"gate": gate, "skipped": "dry run"}
    if migrated.get("outcome") != "swapped" or not migrated.get("migration_id"):
        return {"gate": gate, "skipped": f"no finished migration to check (migrate: {migrated.get('outcome')})"}
    from include.pgmaint.airflow.quality import gate_task

    return gate_task(
        config,
        table,
        gate,
        MIGRATION_GATE_CHECKS,
        migration_id=migrated["migration_id"],
        ranges="migrated",
        ti=ti,
        evaluator="sql",
    )


def finish_one(config: Config, table: str, migrated: dict, *, dry_run: bool) -> dict:
    """Drop the detached old DEFAULT once the gate passed."""
    if dry_run or migrated.get("outcome") != "swapped":
        return {
            "table": table,
            "finished": None,
            "skipped": "dry run" if dry_run else f"migrate: {migrated.get('outcome')}",
        }
    from include.pgmaint.airflow.connections import conninfo_from_airflow

    with connect(conninfo_from_airflow(config.connection_id), config.lock_budget) as conn:
        return finish_migration(conn, config, config.table(table))
