"""Data-quality gates: prove a stage did no harm before the next one runs.

    result = run_gate(conninfo, config, config.table("public.request_log"), "after_migration",
                      ["conserved", "default_clean", "contiguity"], migration_id=7, ranges="migrated")

`run_gate` reads the facts it needs (catalog, migration journal) with psycopg, builds the
checks as plain SQL with `suites` (pure functions), and evaluates them with Great
Expectations (`runner`, which imports GX lazily: importing this package never imports
GX, so DAG files that import it parse fast), or runs the same queries directly
(`evaluator="sql"`: same verdicts, no GX import, no Data Docs). It never raises for database trouble:
failed expectations land in `failures`, expectations that could not be evaluated (SQL or
connection errors) in `errors`. Checks that meet a lock (an ATTACH or DETACH holds ACCESS EXCLUSIVE
on the DEFAULT they read) are evaluated again, from fresh facts, with backoff until the config's lock
budget is spent, as pgmaint's DDL waits; only then are they errors, naming who held the lock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from include.pgmaint.catalog import CatalogError, Range
from include.pgmaint.config import Config, TableConfig
from include.pgmaint.db import connect
from include.pgmaint.execute import find_blockers
from include.pgmaint.guards import quoted
from include.pgmaint.quality.facts import as_ranges, migrated_ranges, read_facts, read_pending
from include.pgmaint.quality.runner import run_suite, run_suite_sql
from include.pgmaint.quality.suites import CHECKS, CheckSpec, GateSuite, build_suite

log = logging.getLogger("pgmaint.quality")
EXPECTATION_TYPE = "unexpected_rows_expectation"
LOCK_TIMEOUT = "lock timeout"  # in PostgreSQL's "canceling statement due to lock timeout", as a check's error says
MIGRATED = "migrated"  # `ranges="migrated"`: the ranges of the partitions migration `migration_id` attached


@dataclass
class GateResult:
    gate: str  # e.g. "before_retire", "after_migration"
    table: str
    success: bool  # every expectation evaluated and passed
    failures: list[str] = field(default_factory=list)  # "<description>: expected <...>, observed <...>"
    errors: list[str] = field(default_factory=list)  # could not be evaluated (SQL/connection): retryable
    summary: dict = field(default_factory=dict)  # small, JSON-safe; never unexpected rows
    docs_path: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def failure_line(description: str, expected: str, observed: str) -> str:
    return f"{description}: expected {expected}, observed {observed}"


def _observed(problems: list[str], count: int | None) -> str:
    count = len(problems) if count is None else count
    shown = problems[:10]
    text = f"{count} problem(s): " + "; ".join(shown)
    if count > len(shown):
        text += f"; ... and {count - len(shown)} more"
    return text


def run_gate(
    conninfo: str,
    config: Config,
    table_cfg: TableConfig,
    gate: str,
    checks: list[str],
    *,
    now: datetime | None = None,
    migration_id: int | None = None,
    ranges: list[tuple[datetime, datetime]] | list[Range] | str | None = None,
    data_docs_dir: str | None = None,
    evaluator: str = "gx",
) -> GateResult:
    """Evaluate `checks` (names from `suites.CHECKS`) for one table; see the module docstring.

    `evaluator`: "gx" (Great Expectations validates the suite) or "sql" (`runner.run_suite_sql`: the same
    queries and verdicts without importing GX, which costs seconds per task process); Data Docs are built by
    GX, so asking for them (`data_docs_dir`) always uses GX.

    `ranges` (for `default_clean`): (lower, upper) pairs on the table's timeline (datetimes
    or ISO strings, naive = UTC), or "migrated" for the partitions migration `migration_id`
    attached; None checks that the DEFAULT is empty.
    """

    started = time.monotonic()
    _check_arguments(checks, migration_id, ranges, evaluator)
    now = now or datetime.now(timezone.utc)
    budget = config.lock_budget
    tries = 0
    while True:
        tries += 1
        result = _evaluate(
            conninfo, config, table_cfg, gate, checks, now, migration_id, ranges, data_docs_dir, evaluator
        )
        locked = [e for e in result.errors if LOCK_TIMEOUT in e]
        if not locked or len(locked) < len(result.errors):
            break  # passed, failed, or an error that waiting cannot cure
        # Every error is a lock wait: an ATTACH or DETACH (another run's, a migration's) holds ACCESS EXCLUSIVE on
        # the DEFAULT, which the checks read. Like our DDL, wait for it under the lock budget, then evaluate again.
        holders = _lock_holders(conninfo, config, table_cfg)
        delay = budget.backoff(tries)
        waited = time.monotonic() - started
        if waited + delay > budget.total_seconds:
            result.errors = [
                f"{e} (still locked after {tries} tries in {waited:.1f}s, budget {budget.total_seconds:.0f}s; "
                f"held by: {holders or 'no holder visible any more'}; retryable once that session has finished)"
                for e in result.errors
            ]
            break
        log.warning(
            "%s: gate %s: %d check(s) met a lock held by %s; evaluating again in %.1fs (try %d)",
            table_cfg.name,
            gate,
            len(locked),
            holders or "a session that has finished since",
            delay,
            tries,
        )
        time.sleep(delay)
    result.seconds = round(time.monotonic() - started, 3)
    result.summary["seconds"] = result.seconds
    return result


def _lock_holders(conninfo: str, config: Config, table_cfg: TableConfig) -> str:
    """Who holds locks on the table's family right now, for the log and the error (never raises)."""
    try:
        with connect(conninfo, config.lock_budget, application_name="pgmaint_quality") as conn:
            names = [quoted(table_cfg.schema, table_cfg.table)] + [
                quoted(schema, name)
                for schema, name in conn.execute(
                    "SELECT n.nspname, c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE i.inhparent = to_regclass(%s)",
                    [quoted(table_cfg.schema, table_cfg.table)],
                ).fetchall()
            ]
            return "; ".join(str(b) for b in find_blockers(conn, tuple(names)))
    except Exception as exc:  # the diagnosis must never hide the gate's own result
        log.warning("%s: could not list lock holders: %s", table_cfg.name, exc)
        return ""


def _evaluate(
    conninfo: str,
    config: Config,
    table_cfg: TableConfig,
    gate: str,
    checks: list[str],
    now: datetime,
    migration_id: int | None,
    ranges,
    data_docs_dir: str | None,
    evaluator: str,
) -> GateResult:
    """One evaluation of the gate from fresh facts."""
    started = time.monotonic()
    result = GateResult(gate, table_cfg.name, success=False)

    try:
        facts, migration, migration_problem = read_facts(conninfo, config, table_cfg, migration_id)
    except Exception as exc:
        result.errors.append(
            f"{table_cfg.name}: could not read the catalog: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        )
        return _finish(result, None, started, checks)
    if isinstance(facts, CatalogError):
        result.failures.append(
            failure_line(
                f"{table_cfg.name}: the table is range-partitioned as configured",
                f"a table range-partitioned on {table_cfg.partition_key}",
                str(facts),
            )
        )
        return _finish(result, None, started, checks)

    pending: list[Range] = []
    if "contiguity" in checks:  # gaps that only wait for default_partition_migration are not the gate's business
        try:
            pending = read_pending(conninfo, config, table_cfg, facts, now)
        except Exception as exc:
            result.errors.append(
                f"{table_cfg.name}: could not probe the DEFAULT for migration-pending intervals: "
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            )
            return _finish(result, None, started, checks)
    if ranges == MIGRATED:
        ranges = migrated_ranges(facts, migration) if migration else []
    elif ranges is not None:
        ranges = as_ranges(ranges)
    suite = build_suite(
        config,
        table_cfg,
        facts,
        list(checks),
        now=now,
        ranges=ranges,
        migration=migration,
        migration_problem=migration_problem,
        pending=pending,
    )
    for problem in suite.problems:
        result.failures.append(
            failure_line(
                f"{table_cfg.name}: migration {migration_id} can be verified",
                "a finished or draining migration of this table in the journal",
                problem,
            )
        )

    timeout = 30_000
    if "conserved" in checks:  # reads the rows the migration moved, like the migration's own verification
        timeout = max(timeout, config.lock_budget.scan_timeout_ms)
    if evaluator == "sql" and not data_docs_dir:
        outcome = run_suite_sql(conninfo, suite, statement_timeout_ms=timeout)
    else:
        outcome = run_suite(conninfo, suite, gate, statement_timeout_ms=timeout, data_docs_dir=data_docs_dir)
    _record_verdicts(result, suite, outcome)
    result.docs_path = outcome.docs_path
    if result.docs_path:
        log.info("%s: Data Docs for gate %s: %s", table_cfg.name, gate, result.docs_path)
    return _finish(result, suite, started, checks, outcome)


def _check_arguments(checks: list[str], migration_id: int | None, ranges, evaluator: str) -> None:
    """A caller's mistake is a ValueError before anything is read."""
    unknown = [c for c in checks if c not in CHECKS]
    if unknown or not checks:
        raise ValueError(f"unknown or no checks {unknown or checks}; known: {', '.join(CHECKS)}")
    if ("conserved" in checks or ranges == MIGRATED) and migration_id is None:
        raise ValueError("the conserved check and ranges='migrated' need a migration_id")
    if evaluator not in ("gx", "sql"):
        raise ValueError(f"evaluator must be 'gx' or 'sql', not {evaluator!r}")
    if isinstance(ranges, str) and ranges != MIGRATED:
        raise ValueError(f"ranges must be a list of (lower, upper) pairs, None, or {MIGRATED!r}")


def _record_verdicts(result: GateResult, suite: GateSuite, outcome) -> None:
    """Each check's verdict into `result`: not evaluated is an error (retryable), a failed check a failure."""
    for spec in suite.checks:
        got = outcome.checks.get(spec.key)
        if got is None:
            result.errors.append(f"{spec.description}: not evaluated: {outcome.error or 'no result from GX'}")
        elif got.error:
            result.errors.append(f"{spec.description}: not evaluated: {got.error}")
        elif not got.success:
            result.failures.append(failure_line(spec.description, spec.expected, _observed(got.problems, got.observed)))


def _finish(result: GateResult, suite: GateSuite | None, started: float, checks: list[str], outcome=None) -> GateResult:
    result.success = not result.failures and not result.errors
    result.seconds = round(time.monotonic() - started, 3)
    expectations = []
    for spec in suite.checks if suite else ():
        got = outcome.checks.get(spec.key) if outcome else None
        expectations.append(
            {
                "check": spec.check,
                "key": spec.key,
                "type": EXPECTATION_TYPE,
                "description": spec.description,
                "success": bool(got and got.success and not got.error),
                "observed_value": got.observed if got and not got.error else None,
                "error": bool(got is None or got.error),
            }
        )
    result.summary = {
        "gate": result.gate,
        "table": result.table,
        "success": result.success,
        "checks": list(checks),
        "evaluated": sum(1 for e in expectations if not e["error"]),
        "failed": len(result.failures),
        "errors": len(result.errors),
        "expectations": expectations,
        "skipped": [{"check": s.check, "reason": s.reason} for s in (suite.skipped if suite else ())],
        "docs_path": result.docs_path,
        "seconds": result.seconds,
    }
    return result


__all__ = ["CHECKS", "CheckSpec", "GateResult", "MIGRATED", "run_gate"]
