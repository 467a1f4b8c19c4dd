"""Data-quality gates as Airflow task bodies: `gate_task` runs one gate and fails the task to match.

Light to import (DAG files may import it at parse time): Airflow, psycopg and Great
Expectations are imported only when a gate runs.

* every expectation passed        -> returns the gate summary (Airflow puts it in XCom)
* a data expectation failed       -> AirflowFailException (no retries: re-validating bad data
                                     cannot make it good), one line per failed expectation
* only SQL/connection errors      -> RuntimeError saying "retryable" (the task's retries apply)
"""

from __future__ import annotations

import logging
import os

from airflow.sdk.exceptions import AirflowFailException

from include.pgmaint.config import Config
from include.pgmaint.quality import run_gate

log = logging.getLogger("pgmaint.quality")
DATA_DOCS_ENV = "PGMAINT_DATA_DOCS_DIR"
XCOM_KEY_ON_FAILURE = "gate_summary"


class GateError(RuntimeError):
    """The gate could not be evaluated (SQL or connection error): retryable."""


def task_value(result) -> dict:
    """What the task returns (and so puts in XCom): the summary, the verdict and the failure lines. Small."""
    return {**result.summary, "success": result.success, "failures": result.failures, "error_lines": result.errors}


def gate_task(
    config: Config,
    table: str,
    gate: str,
    checks: list[str],
    *,
    migration_id: int | None = None,
    ranges=None,
    ti=None,
    evaluator: str = "gx",
) -> dict:
    """Run gate `gate` (checks: names from quality.CHECKS) on `table`; see the module docstring.

    `ranges`: for `default_clean`, a list of (lower, upper) ISO strings/datetimes, or "migrated"
    (the partitions migration `migration_id` attached), or None (the DEFAULT must be empty).
    Data Docs are written under $PGMAINT_DATA_DOCS_DIR/<table>/<gate>/ when that is set.
    `ti`: when given and the gate fails, the summary is pushed to XCom under key
    "gate_summary" (a failing task has no return value).
    `evaluator`: see `quality.run_gate` ("sql": the same checks without importing GX).
    """
    from include.pgmaint.airflow.connections import conninfo_from_airflow

    table_cfg = config.table(table)
    result = run_gate(
        conninfo_from_airflow(config.connection_id),
        config,
        table_cfg,
        gate,
        list(checks),
        migration_id=migration_id,
        ranges=ranges,
        data_docs_dir=os.environ.get(DATA_DOCS_ENV) or None,
        evaluator=evaluator,
    )
    value = task_value(result)
    passed = sum(1 for e in result.summary.get("expectations", []) if e["success"])
    log.info(
        "%s: gate %s: %d expectation(s) passed, %d failed, %d could not be evaluated, %d skipped (%.2fs)",
        table,
        gate,
        passed,
        len(result.failures),
        len(result.errors),
        len(result.summary.get("skipped", [])),
        result.seconds,
    )
    for line in result.failures:
        log.error("FAILED %s", line)
    for line in result.errors:
        log.warning("NOT EVALUATED %s", line)
    for skipped in result.summary.get("skipped", []):
        log.info("skipped %s: %s", skipped["check"], skipped["reason"])
    # (run_gate logs the Data Docs path when it wrote them)
    if result.success:
        return value
    if ti is not None:
        ti.xcom_push(key=XCOM_KEY_ON_FAILURE, value=value)
    if result.failures:
        lines = "\n".join(result.failures + [f"(also not evaluated) {e}" for e in result.errors])
        raise AirflowFailException(
            f"{table}: gate {gate} failed: {len(result.failures)} expectation(s) not met "
            f"(data failure: not retried)\n{lines}"
        )
    raise GateError(
        f"{table}: gate {gate} could not be evaluated (retryable: SQL or connection error); "
        f"{len(result.errors)} expectation(s) not evaluated\n" + "\n".join(result.errors)
    )
