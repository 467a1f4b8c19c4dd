"""Glue between the DAG files and the engine: what each task does, in one call.

Imported only inside task bodies, so DAG files parse without psycopg or a
database. Airflow is imported lazily here too; the engine itself never needs it.
"""

from __future__ import annotations

import logging

from include.pgmaint.config import Config

log = logging.getLogger("pgmaint.tasks")


def maintain_one(config: Config, table: str, *, dry_run: bool, dag_run=None, ti=None) -> dict:
    """Run maintenance for one table; push its result, then fail/skip the task to match it."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from include.pgmaint.db import connect, conninfo_from_airflow
    from include.pgmaint.maintenance import RunContext, run_maintenance

    context = RunContext(
        dag_id=getattr(dag_run, "dag_id", None),
        dag_run_id=getattr(dag_run, "run_id", None),
        task_id=f"{ti.task_id}[{ti.map_index}]" if ti is not None else None,
    )
    with connect(conninfo_from_airflow(config.connection_id), config.lock_budget) as conn:
        result = run_maintenance(conn, config, [config.table(table)], dry_run=dry_run, context=context)[0]
    summary = result.as_dict()
    if ti is not None:
        ti.xcom_push(key="result", value=summary)  # kept even when the task fails or skips below
    if result.outcome == "failed":
        raise AirflowFailException(f"{table}: maintenance failed: " + " | ".join(result.errors))
    if result.outcome == "skipped":
        raise AirflowSkipException(f"{table}: skipped: {result.skipped_reason}")
    return summary


def summarize_results(tables: list[str], ti) -> dict:
    """Collect every table's result; fail the run if any table failed or left no result."""
    from airflow.sdk.exceptions import AirflowFailException

    pulled = ti.xcom_pull(task_ids="maintain", key="result", map_indexes=list(range(len(tables)))) or []
    by_table = {r["table"]: r for r in pulled if r}
    summary = {"tables": len(tables), "created": {}, "retired": {}, "needs_migration": {}, "skipped": {}, "failed": {}}
    for table in tables:
        r = by_table.get(table)
        if r is None:
            summary["failed"][table] = "the task ended without a result (crashed or was killed); see its log"
            continue
        if r["created"]:
            summary["created"][table] = r["created"]
        if r["detached"]:
            summary["retired"][table] = r["detached"]
        if r["needs_migration"]:
            summary["needs_migration"][table] = [m["partition"] for m in r["needs_migration"]]
        if r["outcome"] == "skipped":
            summary["skipped"][table] = r["skipped_reason"]
        if r["outcome"] == "failed":
            summary["failed"][table] = " | ".join(r["errors"])
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
                               move_out_of_window=params["move_out_of_window"], context=context)
    summary = result.as_dict()
    if result.outcome == "failed":
        raise AirflowFailException(f"{table}: migration failed: " + " | ".join(result.errors))
    if result.outcome == "skipped":
        raise AirflowSkipException(f"{table}: skipped: {result.skipped_reason}")
    if result.outcome == "incomplete":
        log.warning("%s: stopped at max_minutes with %d rows still in the drain table (not visible through the parent "
                    "until moved); trigger the DAG again to resume", table, result.rows_remaining)
    return summary
