"""Glue between the DAG files and the engine: what each task does, in one call.

Imported only inside task bodies, so DAG files parse without psycopg or a
database. Airflow is imported lazily here too; the engine itself never needs it.
"""

from __future__ import annotations

import logging

from include.pgmaint.config import Config

log = logging.getLogger("pgmaint.tasks")


def maintain_one(config: Config, table: str, phase: str, *, dry_run: bool, dag_run=None, ti=None) -> dict:
    """Run one maintenance phase (premake | retire) for one table; push its result, then fail/skip the task to match it."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from include.pgmaint.db import connect, conninfo_from_airflow
    from include.pgmaint.maintenance import RunContext, run_maintenance

    context = RunContext(
        dag_id=getattr(dag_run, "dag_id", None),
        dag_run_id=getattr(dag_run, "run_id", None),
        task_id=f"{ti.task_id}[{ti.map_index}]" if ti is not None else None,
    )
    with connect(conninfo_from_airflow(config.connection_id), config.lock_budget) as conn:
        result = run_maintenance(conn, config, [config.table(table)], dry_run=dry_run, context=context, phases=(phase,))[0]
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
    by_table = {}
    for r in list(premade) + list(retired):
        if r:
            by_table.setdefault(r["table"], []).append(r)
    summary = {"tables": len(tables), "created": {}, "retired": {}, "needs_migration": {}, "skipped": {}, "failed": {}}
    for i, table in enumerate(tables):
        results = by_table.get(table, [])
        created = [p for r in results for p in r["created"]]
        detached = [p for r in results for p in r["detached"]]
        if created:
            summary["created"][table] = created
        if detached:
            summary["retired"][table] = detached
        migrations = [m["partition"] for r in results for m in r["needs_migration"]]
        if migrations:
            summary["needs_migration"][table] = migrations
        skipped = [r["skipped_reason"] for r in results if r["outcome"] == "skipped"]
        if skipped:
            summary["skipped"][table] = " | ".join(skipped)
        failed = [f"{t}: {states.get(f'table.{t}_{i}')}" for t in TABLE_TASKS
                  if states.get(f"table.{t}_{i}") in ("failed", "upstream_failed")]
        errors = [e for r in results for e in r["errors"]]
        if not results:
            failed.append("no result: the task crashed or was killed; see its log")
        if failed or errors:
            summary["failed"][table] = " | ".join(errors + failed)
    for key in ("created", "retired", "needs_migration", "skipped", "failed"):
        for table, what in summary[key].items():
            log.info("%-16s %s: %s", key, table, what)
    if not any(summary[k] for k in ("created", "retired", "needs_migration", "skipped", "failed")):
        log.info("all %d table(s) already healthy: nothing to do", len(tables))
    if summary["failed"]:
        raise AirflowFailException(f"maintenance failed for {len(summary['failed'])} table(s): {', '.join(summary['failed'])}")
    return summary


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
        log.warning("%s: stopped at max_minutes with %d rows still in the drain table (not visible through the parent "
                    "until moved); trigger the DAG again to resume", table, result.rows_remaining)
    return summary


# The gate around dropping the emptied old DEFAULT (the migration's destructive step): per
# interval, rows and checksums conserved (journal, and still in place), and no row left in the
# DEFAULT for a migrated interval.
MIGRATION_GATE_CHECKS = ["conserved", "default_clean"]


def migration_gate(config: Config, table: str, gate: str, migrated: dict, *, dry_run: bool, ti=None) -> dict:
    if dry_run:
        return {"gate": gate, "skipped": "dry run"}
    if migrated.get("outcome") != "drained" or not migrated.get("migration_id"):
        return {"gate": gate, "skipped": f"no finished migration to check (migrate: {migrated.get('outcome')})"}
    from include.pgmaint.airflow_quality import gate_task

    return gate_task(config, table, gate, MIGRATION_GATE_CHECKS, migration_id=migrated["migration_id"],
                     ranges="migrated", ti=ti)


def finish_one(config: Config, table: str, migrated: dict, *, dry_run: bool) -> dict:
    """Drop the emptied old DEFAULT once the gate passed."""
    if dry_run or migrated.get("outcome") != "drained":
        return {"table": table, "finished": None, "skipped": "dry run" if dry_run else f"migrate: {migrated.get('outcome')}"}
    from include.pgmaint.db import connect, conninfo_from_airflow
    from include.pgmaint.migrate import finish_migration

    with connect(conninfo_from_airflow(config.connection_id), config.lock_budget) as conn:
        return finish_migration(conn, config, config.table(table))
