"""One maintenance run: premake future partitions, retire expired ones.

For each table: take the runner lock, read the catalog, probe the DEFAULT for
rows in the ranges we would create, plan (pure), and if there is work, run the
preflight and execute the steps through the lock-budgeted `Executor`,
journalling every step. A table's failure is recorded and the next table
still runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone

from psycopg import sql

from include.pgmaint import ddl
from include.pgmaint.catalog import CatalogError, Range, TableFacts, read_catalog
from include.pgmaint.config import Config, TableConfig
from include.pgmaint.execute import Executor, LockBudgetExhausted, Step, StepFailed
from include.pgmaint.guards import TableBusy, preflight, quoted, runner_lock
from include.pgmaint.plan import MaintenancePlan, missing_ranges, plan_maintenance
from include.pgmaint.state import Journal, ensure_state_schema

log = logging.getLogger("pgmaint.maintenance")


@dataclass
class TableResult:
    table: str
    outcome: str = "success"  # success | failed | skipped | dry_run
    created: list[str] = field(default_factory=list)
    detached: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    needs_migration: list[dict] = field(default_factory=list)
    skipped_reason: str | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    statements: list[dict] = field(default_factory=list)  # dry run: what would run, with its lock
    retires_planned: list[str] = field(default_factory=list)  # expired partitions, whichever phases run
    run_id: int | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunContext:
    dag_id: str | None = None
    dag_run_id: str | None = None
    task_id: str | None = None


def probe_default(conn, facts: TableFacts, ranges: list[Range], tz: str) -> frozenset[Range]:
    """Which of `ranges` the DEFAULT partition holds rows for (ACCESS SHARE only; LIMIT 1 per range)."""
    if facts.default is None or not ranges:
        return frozenset()
    key_type = sql.SQL(facts.key_type)  # one of catalog.SUPPORTED_KEY_TYPES, never user text
    query = sql.SQL(
        "SELECT r.i FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS r(lo, hi, i) "
        "WHERE EXISTS (SELECT 1 FROM ONLY {default} d WHERE d.{key} >= r.lo::{t} AND d.{key} < r.hi::{t})"
    ).format(default=sql.Identifier(facts.schema, facts.default.name), key=sql.Identifier(facts.key_column), t=key_type)
    lows = [ddl.bound_text(r.lower, facts.key_type, tz) for r in ranges]
    highs = [ddl.bound_text(r.upper, facts.key_type, tz) for r in ranges]
    hits = {row[0] for row in conn.execute(query, [lows, highs]).fetchall()}
    return frozenset(r for i, r in enumerate(ranges, start=1) if i in hits)


PHASES = ("premake", "retire")


def run_maintenance(conn, config: Config, tables: list[TableConfig] | None = None, *, now: datetime | None = None,
                    dry_run: bool = False, context: RunContext = RunContext(),
                    phases: tuple[str, ...] = PHASES) -> list[TableResult]:
    """Maintain `tables` (default: all configured). Reads the catalog for all of them in one query.

    `phases` lets the DAG put a data-quality gate between premaking (and repairing leftovers)
    and retiring expired partitions, the destructive part.
    """
    unknown = set(phases) - set(PHASES)
    if unknown or not phases:
        raise ValueError(f"phases must be a non-empty subset of {PHASES}, got {phases}")
    tables = list(tables or config.tables)
    now = now or datetime.now(timezone.utc)
    journal = None
    if not dry_run:
        ensure_state_schema(conn, config.state_schema)
        journal = Journal(conn, config.state_schema)
    facts = read_catalog(conn, tables, config.timezone)
    return [_maintain_table(conn, config, cfg, facts[cfg.name], now, dry_run, journal, context, phases) for cfg in tables]


def _maintain_table(conn, config: Config, cfg: TableConfig, facts: TableFacts | CatalogError, now: datetime,
                    dry_run: bool, journal: Journal | None, context: RunContext, phases: tuple[str, ...]) -> TableResult:
    started = time.monotonic()
    result = TableResult(cfg.name, outcome="dry_run" if dry_run else "success")
    if journal:
        result.run_id = journal.start_run("maintenance", cfg.name, dag_id=context.dag_id,
                                          dag_run_id=context.dag_run_id, task_id=context.task_id)
    try:
        if dry_run:
            _plan_into(conn, config, cfg, facts, now, result, phases, dry_run=True)
        elif _nothing_to_do(conn, cfg, facts, now, config.timezone, phases):
            pass  # the common case: no lock, no further round trip (the plan is re-made under the lock when there is work)
        else:
            with runner_lock(conn, quoted(cfg.schema, cfg.table)):
                plan, facts = _plan_into(conn, config, cfg, facts, now, result, phases, dry_run=False)
                if plan is not None and not plan.is_noop:
                    _execute(conn, config, cfg, facts, plan, result, journal)
    except TableBusy as exc:
        result.outcome, result.skipped_reason = "skipped", str(exc)
    except Exception as exc:  # one table's failure never stops the others
        log.exception("%s: maintenance failed", cfg.name)
        result.errors.append(f"{type(exc).__name__}: {exc}")
    if result.errors:
        result.outcome = "failed"
    result.seconds = round(time.monotonic() - started, 3)
    if journal:
        journal.finish_run_safely(result.run_id, result.outcome, result.as_dict(),
                                  "\n".join(result.errors) or result.skipped_reason)
    _log_result(result)
    return result


def _plan_into(conn, config, cfg, facts, now, result, phases, *, dry_run) -> tuple[MaintenancePlan | None, TableFacts | None]:
    tz = config.timezone
    if isinstance(facts, CatalogError):
        result.errors.append(str(facts))
        return None, None
    plan = _plan(conn, cfg, facts, now, tz, phases)
    if not dry_run and not plan.is_noop:
        # The catalog was read before we held the runner lock: re-read this table now that we do.
        facts = read_catalog(conn, [cfg], tz)[cfg.name]
        if isinstance(facts, CatalogError):
            result.errors.append(str(facts))
            return None, None
        plan = _plan(conn, cfg, facts, now, tz, phases)
    result.retires_planned = [r.name for r in plan.retires] + [f.name for f in plan.finalizes]
    plan = _only(plan, phases)
    result.needs_migration = [{"partition": m.name, "range": str(m.range)} for m in plan.needs_migration]
    result.notes = list(plan.notes)
    for m in plan.needs_migration:
        result.notes.append(f"{m.range}: DEFAULT holds rows in this range; {m.name} not created, the rows need migration")
    if dry_run:
        for step in ddl.all_steps(facts, plan, tz):
            for statement, lock in step.render(conn):
                result.statements.append({"step": step.action, "target": step.target, "sql": statement, "lock": lock})
    return plan, facts


def _plan(conn, cfg, facts, now, tz, phases) -> MaintenancePlan:
    missing = missing_ranges(cfg, facts, now, tz)
    candidates = [rng for _, rng in missing] if "premake" in phases else []
    return plan_maintenance(cfg, facts, now, tz, probe_default(conn, facts, candidates, tz), missing)


def _nothing_to_do(conn, cfg, facts, now, tz, phases) -> bool:
    if isinstance(facts, CatalogError):
        return False
    plan = _plan(conn, cfg, facts, now, tz, phases)
    return _only(plan, phases).is_noop and not plan.needs_migration and not plan.notes


def _only(plan: MaintenancePlan, phases: tuple[str, ...]) -> MaintenancePlan:
    """The part of the plan the requested phases carry out."""
    if "premake" not in phases:
        plan = replace(plan, creates=(), stale_checks=(), identity_repairs=(), needs_migration=())
    if "retire" not in phases:
        plan = replace(plan, retires=(), finalizes=())
    return plan


def _execute(conn, config: Config, cfg: TableConfig, facts: TableFacts, plan: MaintenancePlan,
             result: TableResult, journal: Journal) -> None:
    tz = config.timezone
    check = preflight(conn, quoted(cfg.schema, cfg.table), config.preflight)
    if not check.ok:
        result.outcome = "skipped"
        result.skipped_reason = "preflight: " + "; ".join(check.problems)
        return
    executor = Executor(conn, config.lock_budget, on_event=lambda m: log.warning("%s: %s", cfg.name, m))
    blocked: list[str] = []  # after one lock-budget failure, stop adding DDL to this table for this run

    def run(step: Step, *, even_if_blocked: bool = False) -> bool:
        if blocked and not even_if_blocked:
            return False
        began = datetime.now(timezone.utc)
        try:
            outcome = executor.run(step)
        except StepFailed as exc:
            journal.record_step(result.run_id, step, began, "failed", exc.attempts, str(exc), exc.blockers)
            result.errors.append(str(exc))
            if isinstance(exc, LockBudgetExhausted):
                blocked.append(step.target)
            return False
        journal.record_step(result.run_id, step, began, "success", outcome.attempts, None, outcome.blockers)
        return True

    for constraint in plan.stale_checks:
        run(ddl.stale_check_step(facts, constraint))
    for stray in plan.identity_repairs:
        run(ddl.drop_identity_step(facts, stray))
    for f in plan.finalizes:
        if run(ddl.finalize_step(facts, f.name)):
            result.detached.append(f.name)
            if f.drop and run(ddl.drop_step(facts, f.name)):
                result.dropped.append(f.name)

    prepare, attach, cleanup = ddl.create_steps(facts, plan.creates, tz)
    excluded = False
    try:
        for step in prepare:
            if not run(step):
                break
            excluded = excluded or step.action == "exclude_from_default"
        else:
            for step in attach:
                if run(step):
                    result.created.append(step.target)
    finally:
        if cleanup is not None and excluded:
            # The exclusion CHECK rejects inserts into the new ranges: never leave it behind.
            run(cleanup, even_if_blocked=True)

    for r in plan.retires:
        if run(ddl.detach_step(facts, r)) or (not blocked and _finalize_if_pending(conn, facts, r.name, run)):
            result.detached.append(r.name)
            if r.drop and run(ddl.drop_step(facts, r.name)):
                result.dropped.append(r.name)
    if blocked:
        result.notes.append(f"stopped adding DDL after {blocked[0]} stayed locked past the budget; the rest waits for the next run")


def _finalize_if_pending(conn, facts: TableFacts, name: str, run) -> bool:
    """A DETACH CONCURRENTLY interrupted in its second phase leaves the partition pending: finish it."""
    pending = conn.execute(
        "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = to_regclass(%s)", [quoted(facts.schema, name)]
    ).fetchone()
    return bool(pending and pending[0]) and run(ddl.finalize_step(facts, name))


def _log_result(r: TableResult) -> None:
    for s in r.statements:
        log.info("%s: [dry run] %s;  -- %s", r.table, s["sql"], s["lock"])
    log.info(
        "%s: %s; created %s; detached %s; dropped %s%s%s",
        r.table, r.outcome, r.created or "none", r.detached or "none", r.dropped or "none",
        f"; skipped: {r.skipped_reason}" if r.skipped_reason else "",
        f"; errors: {' | '.join(r.errors)}" if r.errors else "",
    )
    for note in r.notes:
        log.info("%s: note: %s", r.table, note)


__all__ = ["RunContext", "TableResult", "probe_default", "run_maintenance"]
