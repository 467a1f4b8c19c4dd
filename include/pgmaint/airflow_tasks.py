"""Glue between the DAG files and the engine: what each task does, in one call.

Imported only inside task bodies, so DAG files parse without psycopg or a
database. Airflow is imported lazily here too; the engine itself never needs it.
"""

from __future__ import annotations

import logging

from include.pgmaint.config import Config

log = logging.getLogger("pgmaint.tasks")


def resolve_as_of(params: dict, dag_run=None):
    """The moment premake plans for: the `as_of` param, else a backfill run's logical date, else None (now).

    Retirement never uses it: it always judges retention on the wall clock.
    """
    from datetime import datetime

    from airflow.sdk.exceptions import AirflowFailException

    text = (params or {}).get("as_of")
    if text:
        try:
            moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        except ValueError:
            raise AirflowFailException(f"as_of: {text!r} is not an ISO 8601 timestamp like 2026-11-01T00:00:00+00:00") from None
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
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from include.pgmaint.db import connect, conninfo_from_airflow
    from include.pgmaint.maintenance import RunContext, run_maintenance

    context = RunContext(
        dag_id=getattr(dag_run, "dag_id", None),
        dag_run_id=getattr(dag_run, "run_id", None),
        task_id=f"{ti.task_id}[{ti.map_index}]" if ti is not None else None,
    )
    with connect(conninfo_from_airflow(config.connection_id), config.lock_budget) as conn:
        result = run_maintenance(conn, config, [config.table(table)], dry_run=dry_run, context=context, phases=(phase,),
                                 as_of=as_of if phase == "premake" else None)[0]
    summary = result.as_dict()
    if ti is not None:
        ti.xcom_push(key="result", value=summary)  # kept even when the task fails or skips below
    if result.outcome == "failed":
        raise AirflowFailException(f"{table}: {phase} failed: " + " | ".join(result.errors))
    if result.outcome == "skipped":
        raise AirflowSkipException(f"{table}: {phase} skipped: {result.skipped_reason}")
    return summary


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
    from include.pgmaint.db import connect, conninfo_from_airflow
    from include.pgmaint.maintenance import planned_retirements

    with connect(conninfo_from_airflow(config.connection_id), config.lock_budget) as conn:
        due = planned_retirements(conn, config, config.table(table))
    detached = (upstream.get("detached") or []) if gate == "after_retire" else []
    if not due and not detached:
        return {"gate": gate, "skipped": "nothing to retire: no partition is past retention (read from the catalog now)"}
    log.info("%s: gate %s: %s", table, gate, f"due to retire: {', '.join(due)}" if due else f"detached: {', '.join(detached)}")
    from include.pgmaint.airflow_quality import gate_task

    return gate_task(config, table, gate, RETIRE_GATES[gate], ti=ti)


TABLE_TASKS = ("premake", "gate_before_retire", "retire", "gate_after_retire")


def summarize_results(tables: list[str], ti, dag_run=None) -> dict:
    """Every table's outcome from its tasks' results and states; fail the run if any table failed."""
    from airflow.sdk.exceptions import AirflowFailException

    indexes = list(range(len(tables)))
    premade = ti.xcom_pull(task_ids="table.premake", key="result", map_indexes=indexes) or []
    retired = ti.xcom_pull(task_ids="table.retire", key="result", map_indexes=indexes) or []
    states = {}
    if dag_run is not None:
        states = ti.get_task_states(dag_id=dag_run.dag_id, run_ids=[dag_run.run_id],
                                    task_ids=[f"table.{t}" for t in TABLE_TASKS]).get(dag_run.run_id, {})
    summary, lines = summarize_tables(tables, list(premade), list(retired), states)
    for line in lines:
        log.info("%s", line)
    if summary["failed"]:
        raise AirflowFailException(f"maintenance failed for {len(summary['failed'])} table(s): {', '.join(summary['failed'])}")
    return summary


SUMMARY_KEYS = ("created", "would_create", "retired", "would_retire", "not_retired", "needs_migration", "skipped",
                "failed", "notes")


def summarize_tables(tables: list[str], premade: list[dict | None], retired: list[dict | None],
                     states: dict[str, str]) -> tuple[dict, list[str]]:
    """Pure: the run's summary and its log lines. Each line says what was done or what remains, and why.

    `states`: task state by "table.<task>_<map index>" (as TaskInstance.get_task_states gives them).
    """
    by_table: dict[str, dict[str, dict]] = {}
    for phase, results in (("premake", premade), ("retire", retired)):
        for r in results:
            if r:
                by_table.setdefault(r["table"], {})[phase] = r
    summary: dict = {"tables": len(tables), **{key: {} for key in SUMMARY_KEYS}}
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
            add("retired", table, detached, ", ".join(detached) + (f" (detached and kept: {', '.join(kept)})" if kept else ""))
        would_create = list(dict.fromkeys(p for r in results for p in r.get("would_create", [])))
        would_retire = list(dict.fromkeys(p for r in results for p in r.get("would_retire", [])))
        if would_create:
            add("would_create", table, would_create, f"{', '.join(would_create)} (dry run: nothing was created)")
        if would_retire:
            add("would_retire", table, would_retire, f"{', '.join(would_retire)} past retention (dry run: nothing was detached)")
        planned = (phases.get("retire") or phases.get("premake") or {}).get("retires_planned", [])
        left = [p for p in planned if p not in detached]
        if left and not dry_run:
            add("not_retired", table, left, f"{', '.join(left)} still attached past retention: "
                + _why_not_retired(phases.get("retire"), state))
        migrations = [m for r in results for m in r["needs_migration"]]
        if migrations:
            shown = ", ".join(f"{m['partition']} {m['range']}" for m in migrations)
            trigger = migrations[0].get("trigger") or f"trigger default_partition_migration for {table}"
            add("needs_migration", table, [m["partition"] for m in migrations],
                f"{shown}: the DEFAULT holds rows in these ranges, so their partitions were not created "
                f"(the migration creates them as it moves the rows): {trigger}")
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
        lines.append(f"all {len(tables)} table(s) healthy: runway complete, nothing past retention, nothing in the way"
                     + (" (dry run: nothing would change)" if dry_run else ": nothing to do"))
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


def resolve_migration_table(config: Config, params: dict, triggering_asset_events=None) -> str:
    """The table to migrate: the `table` param, else the latest watchdog asset event's."""
    from airflow.sdk.exceptions import AirflowFailException

    table = params.get("table")
    if not table and triggering_asset_events:
        for events in triggering_asset_events.values():
            for event in events:
                table = (event.extra or {}).get("table") or table
    if not table:
        raise AirflowFailException("no table chosen: set the `table` param (or trigger through the watchdog's asset event)")
    if table not in config.table_names:
        raise AirflowFailException(f"table {table!r} is not configured (configured: {', '.join(config.table_names)})")
    return table


def migrate_one(config: Config, table: str, params: dict, *, dag_run=None, ti=None) -> dict:
    """Run (or resume) the migration of one table's DEFAULT partition; fail the task if it failed."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from include.pgmaint.db import connect, conninfo_from_airflow
    from include.pgmaint.maintenance import RunContext
    from include.pgmaint.migrate import migrate_table

    conninfo = conninfo_from_airflow(config.connection_id)
    context = RunContext(dag_id=getattr(dag_run, "dag_id", None), dag_run_id=getattr(dag_run, "run_id", None),
                         task_id=getattr(ti, "task_id", None))
    with connect(conninfo, config.lock_budget) as conn:
        result = migrate_table(conn, conninfo, config, config.table(table), dry_run=params["dry_run"],
                               batch_rows=params["batch_rows"], max_minutes=params["max_minutes"],
                               move_out_of_window=params["move_out_of_window"], context=context, finish=False)
    summary = result.as_dict()
    if result.outcome == "failed":
        raise AirflowFailException(f"{table}: migration failed: " + " | ".join(result.errors))
    if result.outcome == "skipped":
        raise AirflowSkipException(f"{table}: skipped: {result.skipped_reason}")
    if result.outcome == "incomplete":
        log.warning("%s: not swapped yet: %s (every row is still readable and writable in the DEFAULT; the mirror "
                    "trigger keeps the copies current)", table, result.skipped_reason)
    for left in result.left_in_default:
        log.warning("%s: %d row(s) %s in the DEFAULT partition, %s: %s%s", table, left["rows"],
                    "would stay" if params["dry_run"] else "stay", left["range"], left["reason"],
                    " (move_out_of_window: true moves them too)"
                    if left["reason"].startswith(("older than", "beyond")) and not params["move_out_of_window"] else "")
    return summary


# The gate around dropping the detached old DEFAULT (the migration's destructive step): per
# interval, rows and checksums conserved at the instant of the swap, the old DEFAULT unchanged
# since, and no row left in the DEFAULT for a migrated interval.
MIGRATION_GATE_CHECKS = ["conserved", "default_clean"]


def migration_gate(config: Config, table: str, gate: str, migrated: dict, *, dry_run: bool, ti=None) -> dict:
    if dry_run:
        return {"gate": gate, "skipped": "dry run"}
    if migrated.get("outcome") != "swapped" or not migrated.get("migration_id"):
        return {"gate": gate, "skipped": f"no finished migration to check (migrate: {migrated.get('outcome')})"}
    from include.pgmaint.airflow_quality import gate_task

    return gate_task(config, table, gate, MIGRATION_GATE_CHECKS, migration_id=migrated["migration_id"],
                     ranges="migrated", ti=ti)


def finish_one(config: Config, table: str, migrated: dict, *, dry_run: bool) -> dict:
    """Drop the detached old DEFAULT once the gate passed."""
    if dry_run or migrated.get("outcome") != "swapped":
        return {"table": table, "finished": None, "skipped": "dry run" if dry_run else f"migrate: {migrated.get('outcome')}"}
    from include.pgmaint.db import connect, conninfo_from_airflow
    from include.pgmaint.migrate import finish_migration

    with connect(conninfo_from_airflow(config.connection_id), config.lock_budget) as conn:
        return finish_migration(conn, config, config.table(table))
