"""
### partition_watchdog

Knows within minutes when partitioned tables or their database are in trouble,
and pages when it has been failing too long. Every 5 minutes by default
(`schedules.watchdog`), cheap, and never takes a lock stronger than ACCESS SHARE.

1. **check_database** — the uptime check that touches the database:
   - **canary**: connect and read the current interval of every managed table with a
     short timeout (`canary_timeout_ms`); if it cannot, that is **critical** (it pages),
     with the sessions holding and queueing for locks on the table;
   - **connections**: percent of usable `max_connections` in use (critical above
     `connections_critical_percent`), with who holds them;
   - **lock_waits**: sessions waiting for a lock longer than `lock_wait_seconds`, and
     the PIDs and queries blocking them.
2. **check_tables**, per table:
   - **runway**: partitions ahead of now (warning below `runway_warning_intervals`,
     critical below one interval);
   - **default_rows**: rows in the DEFAULT partition (estimate; exact count when small);
     with `auto_migrate: true` the table goes to step 4 instead of alerting;
   - **expired_attached**: partitions past retention still attached;
   - **cadence**: no successful `partition_maintenance` for the table in the journal for
     `cadence_multiple` x its schedule interval ("the partition manager missed its cadence");
   - **long_transactions**: sessions whose transaction has held locks on the table for
     more than `long_transaction_seconds` (idle in transaction included).
3. **check_services**: services whose pause lease expired (the run that paused them died)
   are resumed, and that is reported.
4. **request_migration** (one per auto_migrate table with DEFAULT rows): an event on the
   asset `pgmaint_default_rows` with extra `{"table": …}` triggers `default_partition_migration`.
5. **escalate**: every finding is a condition with a stable key. New ones go to the
   `notify` targets; one that persists for `page_after` (24 h), or is critical, goes to
   the `page` targets (PagerDuty dedup_key = the key); reminders no more often than
   `renotify_every`; resolved when it clears. State: `pgmaint.conditions`, sent: `pgmaint.alerts`.

Failed tasks of every pgmaint DAG go through the same policy (`on_failure_callback`).
Runbook for every alert: `docs/runbook.md`.

**Several databases** (`targets:` in the config): every check runs for each target
in turn (one target that cannot be reached is reported — its canary is critical —
and the others are still checked); each target's conditions live in its own state
schema, and messages and PagerDuty dedup keys carry the target (`orders/canary`).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, get_current_context, task

from include.pgmaint.airflow.assets import DEFAULT_ROWS
from include.pgmaint.airflow.callbacks import on_task_failure
from include.pgmaint.fleet import load_fleet

FLEET = load_fleet()  # file read + validation only; an invalid config is a DAG import error
CHECKS = ("check_database", "check_tables", "check_services")


@dag(
    dag_id="partition_watchdog",
    schedule=FLEET.watchdog_schedule,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=15),
    doc_md=__doc__,
    tags=["pgmaint", "partitions", "monitoring"],
    default_args={"retries": 0, "execution_timeout": timedelta(minutes=3), "on_failure_callback": on_task_failure},
)
def partition_watchdog():
    @task
    def check_database(ti=None) -> None:
        from include.pgmaint.airflow.watchdog_tasks import per_target, task_check_database

        per_target(FLEET, task_check_database, ti)

    @task
    def check_tables(ti=None) -> list[str]:
        """Pushes its findings as XCom `result`; returns the auto_migrate tables with DEFAULT rows."""
        from include.pgmaint.airflow.watchdog_tasks import per_target, task_check_tables

        results = per_target(FLEET, task_check_tables, ti)
        return [FLEET.ref(c, t) for c in FLEET.targets for t in (results.get(c.target) or {}).get("migrate", [])]

    @task
    def check_services(ti=None) -> None:
        from include.pgmaint.airflow.watchdog_tasks import per_target, task_check_services

        per_target(FLEET, task_check_services, ti)

    @task(outlets=[DEFAULT_ROWS], map_index_template="{{ table_name }}")
    def request_migration(table: str, outlet_events=None) -> str:
        get_current_context()["table_name"] = table
        outlet_events[DEFAULT_ROWS].extra = {"table": table}
        return table

    @task(multiple_outputs=False, trigger_rule="all_done")
    def escalate(ti=None) -> dict:
        from include.pgmaint.airflow.watchdog_tasks import task_escalate

        payloads = {task_id: ti.xcom_pull(task_ids=task_id, key="result") for task_id in CHECKS}
        if not FLEET.multi:
            return task_escalate(FLEET.targets[0], payloads, ti.dag_id)
        return {
            c.target: task_escalate(c, {t: (p or {}).get(c.target) for t, p in payloads.items()}, ti.dag_id)
            for c in FLEET.targets
        }

    database, tables, services = check_database(), check_tables(), check_services()
    request_migration.expand(table=tables)
    [database, tables, services] >> escalate()


partition_watchdog()
