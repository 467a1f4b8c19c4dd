"""
### default_partition_migration

Moves the rows that piled up in a table's DEFAULT partition into proper
partitions, online. Triggered by hand from the form below, or by the watchdog
(asset `pgmaint_default_rows`) for tables with `auto_migrate: true`.

1. **open_window** (setup): which table (the `table` param, or the table named by the watchdog's
   asset event) and which services write to it, in pause order.
2. **migrate**, once it holds a slot of the target's pool:
   - **pause the writers**: first check every privilege the migration needs (the dry run's
     check): one missing fails the run naming it and its GRANT, with nothing paused; then pause
     the writers, dependents first, each with a lease that expires (`pause_services`; nothing is
     paused on a dry run). Paused in this task, not a task of its own, so writers keep running
     while the move waits for a pool slot, and no scheduler pass falls between pause and move;
   then, under the table's runner lock, move the rows, copy first and swap last:
   - survey the DEFAULT (ACCESS SHARE only): which intervals hold rows, how many; refuse
     up front a table without a primary key (or unique key) or with foreign keys pointing at it;
   - build shadow partitions (one per interval inside the window) and a replacement DEFAULT;
   - **mirror**: a trigger on the DEFAULT replays every application write into the shadows;
   - **copy** the rows in short batches (no row lock: the application's reads and writes never
     wait for one), logging rows copied, rate and ETA every 10 s; every row stays in the DEFAULT,
     readable and writable as before; then remove the copies of rows deleted while a batch held
     them uncommitted (the mirror logged their keys; a last pass under SHARE for milliseconds);
   - **verify** per interval (count + checksum) that the copies equal the DEFAULT, in a snapshot
     taken at a write cut (SHARE on the DEFAULT for milliseconds: no write in flight);
   - **swap** in one catalog-only transaction (the parent's ACCESS EXCLUSIVE first, under a
     200 ms lock timeout and a circuit breaker); the old DEFAULT becomes read-only. If a write
     reached the DEFAULT since the cut (the mirror counts them and logs their keys), the rows
     with those keys are counted again, as they were at the cut and at the swap.
   Stops cleanly at `max_minutes` (nothing visible changed; the next run resumes the copy).
3. **gate_before_cleanup**: a data-quality gate (rows and checksums conserved per interval at the
   swap; no row left in the DEFAULT for a migrated interval; its expectations run as plain SQL,
   through GX when Data Docs are asked for) must pass before **finish** drops the detached old
   DEFAULT — its indexes first, one transaction each, then the table — each in the same transaction
   as checking it is unchanged since the swap (its read-only triggers untouched, else it is read
   again); **gate_after_cleanup** checks again.
4. **resume_writers** (teardown): runs as soon as `migrate` has ended — swapped, stopped or
   failed — beside the gates and `finish` (they only touch the detached old DEFAULT), and resumes
   what this run paused, in reverse order (retried twice; a resume that still fails fails the run,
   and the watchdog retries it when the lease expires). A failed pause, move, drop or gate fails
   the run too.

Steps 2–3 hold sessions to the table's database for the whole move, so they run in the target's
pool; `resume_writers` (one short session) does not, so resuming writers never waits for a slot.

**Several databases** (`targets:` in the config; `table` is `target/schema.table`): steps 2–3
exist once per target, in a group named after it (`<target>.migrate`, `<target>.finish`, …), each
in that target's pool; **to_target**, after `open_window`, follows the table's group and skips
the others.

**What applications see:** nothing. Every row is readable through the parent exactly once at
every instant; their updates, deletes, upserts and inserts take effect exactly once, before,
during and after the move, even if the worker is killed (the next run resumes from the journal).

**Params.** `table`, `dry_run` (survey and print the statements, move nothing),
`batch_rows`, `max_minutes`, `pause_services`, `move_out_of_window` (also move rows
older than retention or beyond the premake horizon; otherwise they stay in the
DEFAULT and are reported; partitions it makes for rows past retention are dropped,
rows and all, by the next maintenance run: the dry run warns). A dry run writes
nothing and first checks every privilege the real run needs.

Runbook: `docs/runbook.md`. Progress: `SELECT * FROM pgmaint.migrations ORDER BY migration_id DESC`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, TaskGroup, dag, setup, task

from include.pgmaint.airflow.assets import DEFAULT_ROWS
from include.pgmaint.airflow.callbacks import on_task_failure
from include.pgmaint.fleet import load_fleet

FLEET = load_fleet()  # file read + validation only; an invalid config is a DAG import error


def on(ref: str):
    """(the target's Config, the table's configured name) of a `table` param value."""
    config, table = FLEET.resolve(ref)
    return config, table.name


def move_and_clean_up(config, table):
    """Steps 2-3 on one target's database: each task holds a session to it, so each runs in its pool."""

    @task(multiple_outputs=False, pool=config.pool)
    def migrate(table: str, params=None, dag_run=None, ti=None) -> dict:
        from include.pgmaint.airflow.services import pause_writers
        from include.pgmaint.airflow.tasks import migrate_one

        # The writers are paused here, once this task holds its pool slot, not in a task of its own: they
        # keep running while the move waits for a slot, and no scheduler pass (~1 s by default) falls
        # between pausing and moving. Every privilege the move needs is checked first: none missing, or
        # nothing is paused. Leases outlive the time box, so the watchdog never resumes writers under a
        # run still working.
        target, name = on(table)
        paused = pause_writers(
            target,
            name,
            params["pause_services"] and not params["dry_run"],
            dag_run,
            min_lease_minutes=int(params["max_minutes"]) + 30,
            privileges_of="migration",
        )
        return {**migrate_one(target, name, params, dag_run=dag_run, ti=ti), "paused": paused}

    @task(multiple_outputs=False, pool=config.pool, retries=1, retry_delay=timedelta(seconds=30))
    def gate_before_cleanup(table: str, migrated: dict, params=None, ti=None) -> dict:
        from include.pgmaint.airflow.tasks import migration_gate

        return migration_gate(*on(table), "before_cleanup", migrated, dry_run=params["dry_run"], ti=ti)

    @task(multiple_outputs=False, pool=config.pool)
    def finish(table: str, migrated: dict, checked: dict, params=None) -> dict:
        from include.pgmaint.airflow.tasks import finish_one

        return finish_one(*on(table), migrated, dry_run=params["dry_run"])

    @task(multiple_outputs=False, pool=config.pool, retries=1, retry_delay=timedelta(seconds=30))
    def gate_after_cleanup(table: str, migrated: dict, finished: dict, params=None, ti=None) -> dict:
        from include.pgmaint.airflow.tasks import migration_gate

        return migration_gate(*on(table), "after_cleanup", migrated, dry_run=params["dry_run"], ti=ti)

    moved = migrate(table)
    finished = finish(table, moved, gate_before_cleanup(table, moved))
    return moved, finished, gate_after_cleanup(table, moved, finished)


@dag(
    dag_id="default_partition_migration",
    schedule=[DEFAULT_ROWS] if any(t.auto_migrate for c in FLEET.targets for t in c.tables) else None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["pgmaint", "partitions", "migration"],
    default_args={"retries": 0, "on_failure_callback": on_task_failure},
    params={
        "table": Param(
            None,
            type=["null", "string"],
            enum=[None, *FLEET.table_refs],
            title="Table",
            description="The configured table whose DEFAULT partition to migrate (target/table with several targets) "
            "(empty when triggered by the watchdog's asset event).",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Survey the DEFAULT and print every statement with its lock; move nothing, pause nothing.",
        ),
        "batch_rows": Param(
            50_000,
            type="integer",
            minimum=100,
            maximum=1_000_000,
            title="Rows per batch",
            description="Upper bound on rows moved per transaction (batches also adapt to stay under ~1 s).",
        ),
        "max_minutes": Param(
            60,
            type="number",
            minimum=1,
            maximum=1440,
            title="Time box (minutes)",
            description="Stop cleanly after this long; the next run resumes where this one stopped.",
        ),
        "pause_services": Param(
            True,
            type="boolean",
            title="Pause writers",
            description="Pause the table's `writers` services for the run and resume them after.",
        ),
        "move_out_of_window": Param(
            False,
            type="boolean",
            title="Move rows outside the window",
            description="Also move rows older than retention or beyond the premake horizon. "
            "Partitions made for rows past retention are dropped by the next "
            "partition_maintenance (unless retention_keep_table): the dry run warns.",
        ),
    },
)
def default_partition_migration():
    @setup
    @task(multiple_outputs=True)
    def open_window(params=None, dag_run=None, triggering_asset_events=None) -> dict:
        # One task, not two: each task costs a scheduler pass and a process (~1 s with Airflow's defaults).
        from include.pgmaint.airflow.services import open_window as record_intent
        from include.pgmaint.airflow.tasks import resolve_migration_table

        table = resolve_migration_table(FLEET, params, triggering_asset_events)
        return {**record_intent(*on(table), dag_run), "table": table}

    @task(retries=2, retry_delay=timedelta(seconds=10))
    def resume_writers(table: str, params=None, dag_run=None) -> list[str]:
        from include.pgmaint.airflow.services import resume_writers as resume

        return resume(*on(table), dag_run, dry_run=params["dry_run"])

    @task.branch
    def to_target(table: str) -> str:
        """Several databases: follow the table's target group; the other targets' groups are skipped."""
        config, _ = on(table)
        return f"{config.target}.migrate"

    window = open_window()
    table = window["table"]
    if FLEET.multi:  # one group per database, each in its own pool; only the table's target runs
        route = to_target(table)
        chains = []
        for config in FLEET.targets:
            with TaskGroup(group_id=config.target):
                chains.append(move_and_clean_up(config, table))
        window >> route >> [moved for moved, _, _ in chains]
    else:
        chains = [move_and_clean_up(FLEET.targets[0], table)]
        window >> chains[0][0]
    # Counts for the run's state (on_failure_fail_dagrun): a resume that fails fails the run. A failed
    # move fails it through its gates (upstream_failed leaves): no watcher task, no extra scheduler pass.
    resume = resume_writers(table).as_teardown(setups=window, on_failure_fail_dagrun=True)
    # the rows are in their partitions once `migrate` has ended: writers need not wait for the drop and its gates
    [moved for moved, _, _ in chains] >> resume


default_partition_migration()
