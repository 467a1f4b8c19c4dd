"""Airflow glue for pausing a table's writers around risky work (safety rule 7).

The DAG wires these as (see docs/services.md):

    window = open_window(...)            # @setup: tiny, cannot fail half-way, pauses nothing
    window >> <the work task>            # inside the scope: pause_writers(...) first (undoes itself
                                         # on failure), then the work
           >> resume_writers(...).as_teardown(setups=window)   # runs even when the work failed

Why this shape: a teardown does not run when its setup failed, so the pausing
must not be the setup. ``pause_writers`` runs in a normal task in the scope; if it
fails half-way it resumes what it paused itself, and the teardown runs anyway
(its setup succeeded) and resumes whatever is left, idempotently. If the worker
dies, the leases expire and the watchdog's ``resume_expired_leases`` gives the
services back.

Airflow and psycopg are imported inside the functions: DAG files import this
module only from task bodies.
"""

from __future__ import annotations

import logging

from include.pgmaint import privileges
from include.pgmaint.config import Config
from include.pgmaint.db import connect
from include.pgmaint.services.leases import (
    pause_services,
    resume_expired_leases,
    resume_services,
)
from include.pgmaint.services.ordering import pause_order

log = logging.getLogger("pgmaint.services")


def _owner(dag_run) -> tuple[str, str]:
    return dag_run.dag_id, dag_run.run_id


def open_window(config: Config, table: str, dag_run) -> dict:
    """Setup: check the table and name the services the run will pause, in pause order. Writes nothing."""
    writers = config.table(table).writers
    order = pause_order(config, writers)
    dag_id, run_id = _owner(dag_run)
    log.info(
        "maintenance window on %s for %s/%s: will pause %s (in this order), resume in reverse",
        table,
        dag_id,
        run_id,
        " -> ".join(order) or "no services",
    )
    return {"table": table, "services": order}


def pause_writers(
    config: Config,
    table: str,
    enabled: bool,
    dag_run,
    min_lease_minutes: int | None = None,
    *,
    privileges_of: str | None = None,
) -> list[str]:
    """Pause the table's writers in dependency order, leased to this run; undo and raise if one fails.

    `min_lease_minutes`: make every lease at least this long (pass the run's time box plus a
    margin, so the watchdog never resumes the writers under a run that is still working).
    `privileges_of`: a job of `privileges.JOBS` (e.g. "migration"): before anything is paused,
    every privilege its real run needs on the table is checked, the check the job and its dry run
    make; one missing raises MissingPrivileges naming each (and its GRANT) with nothing paused,
    instead of the writers being paused for work that would then stop on `permission denied`.
    """
    from include.pgmaint.airflow.connections import conninfo_from_airflow

    writers = config.table(table).writers
    if not enabled:
        log.info("pausing services is disabled for this run: not pausing %s", ", ".join(writers) or "anything")
        return []
    if not writers:
        log.info("%s has no writers configured: nothing to pause", table)
        return []
    dag_id, run_id = _owner(dag_run)
    with connect(conninfo_from_airflow(config.connection_id), config.lock_budget) as conn:
        if privileges_of:
            privileges.require(conn, config, config.table(table), privileges_of)
            log.info("%s: every privilege the %s needs is there: pausing its writers", table, privileges_of)
        report = pause_services(
            conn,
            config,
            writers,
            dag_id=dag_id,
            run_id=run_id,
            reason=f"{dag_id} on {table}",
            min_lease_minutes=min_lease_minutes,
        )
    for outcome in report.left_alone:
        log.warning("NOT paused by this run (someone else paused it; it stays paused after the run): %s", outcome)
    log.info("holding paused: %s", ", ".join(report.held) or "nothing")
    return report.held


def resume_writers(config: Config, table: str, dag_run, dry_run: bool = False) -> list[str]:
    """Teardown: resume everything this run paused, newest first. Idempotent; fine when nothing was paused."""
    from include.pgmaint.airflow.connections import conninfo_from_airflow

    if dry_run:  # a dry run pauses nothing, so there is nothing to resume, and it writes nothing
        log.info("dry run: nothing was paused, nothing to resume")
        return []
    dag_id, run_id = _owner(dag_run)
    with connect(conninfo_from_airflow(config.connection_id), config.lock_budget) as conn:
        outcomes = resume_services(conn, config, dag_id=dag_id, run_id=run_id)
    return [o.service for o in outcomes if o.action in ("resumed", "released")]


def resume_expired_services(config: Config) -> list[dict]:
    """For the watchdog: give back services whose lease expired; raises if one could not be resumed."""
    from include.pgmaint.airflow.connections import conninfo_from_airflow

    with connect(conninfo_from_airflow(config.connection_id), config.lock_budget) as conn:
        return [o.as_dict() for o in resume_expired_leases(conn, config)]
