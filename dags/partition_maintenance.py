"""
### partition_maintenance

Keeps every configured partitioned table healthy, every 15 minutes by default:

1. **plan**: one session reads the catalog of every table (the `tables` param,
   or all configured ones) in one query and plans them all; every table with
   nothing to do gets its journal row in one batched write (the watchdog's
   cadence check sees it). Its result — per table: would create, would retire,
   needs migration, skipped and why — is what summarize and the UI show.
2. **table** (one mapped group **per table with work only**, named after the
   table; DDL tasks in the target's pool), each step under the table's runner lock:
   - **premake**: create a partition for every interval of the managed window
     that has none — from now − `retention` (kept forever: the oldest partition)
     to the current interval and `premake` ahead, so one run after an outage
     closes every gap — as `CREATE TABLE … (LIKE parent INCLUDING ALL)` + `ATTACH`,
     so the parent only takes SHARE UPDATE EXCLUSIVE and nothing is scanned
     under an exclusive lock. A range for which the DEFAULT partition already
     holds rows is **not** created: it is reported as `needs_migration` with the
     `default_partition_migration` command to run, and blocks nothing else.
   - **request_migration**: for `auto_migrate: true` tables with such ranges,
     an event on `pgmaint_default_rows` triggers `default_partition_migration`.
   - **gate_before_retire**: when partitions are due to retire (decided from
     the catalog at that moment, never from premake's result), a Great
     Expectations gate (no gaps or overlaps, no NULL keys) must pass. A gap
     made only of intervals waiting for migration (rows in the DEFAULT) is
     tolerated — retiring what is past the window cannot make it worse; any
     other gap stops retirement, named in the task log.
   - **retire**: detach partitions whose upper bound is at or before
     now − `retention`, then drop them (unless `retention_keep_table`).
   - **gate_after_retire**: runway, retention and contiguity hold afterwards.
3. **summarize**: created / retired / skipped / failed per table, to the log and
   XCom. The run fails if any table failed, naming it.

**Several databases** (`targets:` in the config): steps 1–2 exist once per
target, in a group named after it (`<target>.plan`, `<target>.table.premake`,
map indexes `target/schema.table`), each in that target's pool. A target that
is down fails its own plan task; every other target is maintained, and the
run fails naming the target that was down.

**What stops it.** Every statement waits at most 200 ms for a lock, retried
with backoff for 60 s, then the table fails naming the sessions that blocked
it; reads too (the DEFAULT probes, the gates), so another run's DDL on the
same table makes this one wait, not fail. The plan's catalog read takes no
lock at all. Before any DDL a table is *skipped* (not queued) when the server is short
of connections, an old transaction holds locks on the table, or sessions are
already waiting on it. One table's failure does not stop the others.

**Params.** `dry_run` prints every statement and the lock it takes and
executes nothing. `tables` limits the run to some configured tables.
`as_of` (ISO timestamp with offset) also creates the partitions that moment
needs (its interval and `premake` after it), for loading history; a backfill run
uses its logical date as `as_of`. Retirement always uses the wall clock, and an
interval already past retention is never created (the summary says so).

Runbook: `docs/runbook.md`. Journal: `SELECT * FROM pgmaint.runs ORDER BY run_id DESC`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, TaskGroup, dag, get_current_context, task, task_group

from include.pgmaint.airflow.assets import DEFAULT_ROWS
from include.pgmaint.airflow.callbacks import on_task_failure
from include.pgmaint.fleet import load_fleet

FLEET = load_fleet()  # file read + validation only; an invalid config is a DAG import error


def label(config, table: str) -> str:
    """Name a mapped task after its table (`target/table` with several targets) and tell the failure callback."""
    context = get_current_context()
    context["table_name"], context["pgmaint_target"] = table, config.target
    context["table_ref"] = FLEET.ref(config, table)
    return table


def maintain_target(config):
    """Plan all of one target's tables at once, then work only on the tables with work."""

    @task(pool=config.pool)
    def plan(params=None, dag_run=None, ti=None) -> list[str]:
        from include.pgmaint.airflow.tasks import plan_target

        return plan_target(config, params, dag_run=dag_run, ti=ti)

    @task_group(group_id="table")
    def maintain_table(table: str):
        """One table's chain; a failed gate stops the destructive step for that table only."""

        @task(multiple_outputs=False, pool=config.pool, map_index_template="{{ table_ref }}")
        def premake(table: str, params=None, dag_run=None, ti=None) -> dict:
            from include.pgmaint.airflow.tasks import maintain_one, resolve_as_of

            return maintain_one(
                config,
                label(config, table),
                "premake",
                dry_run=params["dry_run"],
                dag_run=dag_run,
                ti=ti,
                as_of=resolve_as_of(params, dag_run),
            )

        @task(outlets=[DEFAULT_ROWS], map_index_template="{{ table_ref }}")
        def request_migration(table: str, premade: dict, outlet_events=None) -> str:
            """auto_migrate tables whose missed intervals sit in the DEFAULT: trigger default_partition_migration."""
            from airflow.sdk.exceptions import AirflowSkipException

            label(config, table)
            if not any(m.get("requested") for m in premade.get("needs_migration", [])):
                raise AirflowSkipException(
                    "nothing to request: no interval waits in the DEFAULT, or auto_migrate is off"
                )
            outlet_events[DEFAULT_ROWS].extra = {"table": FLEET.ref(config, table)}
            return table

        @task(multiple_outputs=False, pool=config.pool, map_index_template="{{ table_ref }}")
        def gate_before_retire(table: str, premade: dict, params=None, ti=None) -> dict:
            from include.pgmaint.airflow.tasks import retention_gate

            return retention_gate(
                config, label(config, table), "before_retire", premade, dry_run=params["dry_run"], ti=ti
            )

        @task(multiple_outputs=False, pool=config.pool, map_index_template="{{ table_ref }}")
        def retire(table: str, checked: dict, params=None, dag_run=None, ti=None) -> dict:
            from include.pgmaint.airflow.tasks import maintain_one

            return maintain_one(
                config, label(config, table), "retire", dry_run=params["dry_run"], dag_run=dag_run, ti=ti
            )

        @task(multiple_outputs=False, pool=config.pool, map_index_template="{{ table_ref }}")
        def gate_after_retire(table: str, retired: dict, params=None, ti=None) -> dict:
            from include.pgmaint.airflow.tasks import retention_gate

            return retention_gate(
                config, label(config, table), "after_retire", retired, dry_run=params["dry_run"], ti=ti
            )

        premade = premake(table)
        request_migration(table, premade)
        retired = retire(table, gate_before_retire(table, premade))
        return gate_after_retire(table, retired)

    return maintain_table.expand(table=plan())


@dag(
    dag_id="partition_maintenance",
    schedule=FLEET.maintenance_schedule,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["pgmaint", "partitions"],
    default_args={"retries": 0, "on_failure_callback": on_task_failure},
    params={
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Print every statement and the lock it would take; execute nothing.",
        ),
        "tables": Param(
            [],
            type="array",
            title="Tables",
            items={"type": "string", "enum": FLEET.table_refs},
            uniqueItems=True,
            description="Configured tables to maintain (target/table with several targets); empty means all.",
        ),
        "as_of": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="As of",
            description="Also create the partitions this moment needs (its interval and `premake` after it), "
            "e.g. to load history. Retirement always uses the wall clock; intervals already past "
            "retention are never created. Backfill runs use their logical date.",
        ),
    },
)
def partition_maintenance():
    @task(multiple_outputs=False, trigger_rule="all_done")
    def summarize(ti=None, dag_run=None) -> dict:
        from include.pgmaint.airflow.tasks import summarize_results

        return summarize_results(FLEET, ti, dag_run)

    if FLEET.multi:  # one group per database: its own plan, its own pool; one target's outage stops only its group
        work = []
        for config in FLEET.targets:
            with TaskGroup(group_id=config.target):
                work.append(maintain_target(config))
    else:
        work = [maintain_target(FLEET.targets[0])]
    work >> summarize()


partition_maintenance()
