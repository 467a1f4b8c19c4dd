"""`on_failure_callback` for every pgmaint task. DAG files import it at parse time, so this module is
light: the report (psycopg, the escalation package) is imported when a task fails."""

from __future__ import annotations

import logging

log = logging.getLogger("pgmaint.escalation")


def on_task_failure(context) -> None:
    """`on_failure_callback` for every pgmaint task: a failed task is a condition, through the same policy.

    Key `task:<dag_id>.<task_id>` (+ `:<table>` when the task works on one table). The message has
    the DAG, task, table, failed step, error, the sessions that blocked it (PIDs and queries, from
    the exception or the journal) and the log URL. Never raises (Airflow only logs callback errors).
    """
    try:
        from include.pgmaint.airflow.failure_report import report_task_failure, target_of

        config = target_of(context)
        report_task_failure(context, config, config.escalation)
    except Exception:
        log.exception("pgmaint failure callback could not report the failure")
