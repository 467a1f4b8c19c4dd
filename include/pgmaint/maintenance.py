"""One maintenance run: premake future partitions, retire expired ones.

For each table: take the runner lock, read the catalog, probe the DEFAULT for
rows in the ranges we would create, plan (pure), and if there is work, run the
preflight and execute the steps through the lock-budgeted `Executor`,
journalling every step. A table's failure is recorded and the next table
still runs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone

import psycopg
from psycopg import sql

from include.pgmaint import ddl, privileges
from include.pgmaint.catalog import CatalogError, Range, TableFacts, read_catalog
from include.pgmaint.config import Config, LockBudget, TableConfig
from include.pgmaint.execute import Executor, LockBudgetExhausted, Statement, Step, StepFailed
from include.pgmaint.guards import TableBusy, preflight, quoted, runner_lock
from include.pgmaint.partman import maintenance_skips
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
    would_create: list[str] = field(default_factory=list)  # dry run: partitions the real run would create
    would_retire: list[str] = field(default_factory=list)  # dry run: partitions the real run would detach (and drop)
    run_id: int | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunContext:
    dag_id: str | None = None
    dag_run_id: str | None = None
    task_id: str | None = None


def probe_default(conn, facts: TableFacts, ranges: list[Range], tz: str, budget: LockBudget) -> frozenset[Range]:
    """Which of `ranges` the DEFAULT partition holds rows for (ACCESS SHARE only; LIMIT 1 per range).

    An ATTACH or DETACH on the table (another run's, or a migration's) holds ACCESS EXCLUSIVE on the DEFAULT:
    when the probe meets one it runs again as a step of the `Executor`, waiting under the lock budget like
    any DDL of ours instead of failing the table on one lock timeout; past the budget it raises
    `LockBudgetExhausted` naming who held the lock.
    """
    if facts.default is None or not ranges:
        return frozenset()
    default = sql.Identifier(facts.schema, facts.default.name)
    lows = [ddl.bound_text(r.lower, facts.key_type, tz) for r in ranges]
    highs = [ddl.bound_text(r.upper, facts.key_type, tz) for r in ranges]
    query = sql.SQL(
        "SELECT r.i FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS r(lo, hi, i) "
        "WHERE EXISTS (SELECT 1 FROM ONLY {default} d WHERE d.{key} >= r.lo::{t} AND d.{key} < r.hi::{t})"
    ).format(
        default=default,
        key=sql.Identifier(facts.key_column),
        t=sql.SQL(facts.key_type),  # one of catalog.SUPPORTED_KEY_TYPES, never user text
    )
    hits: set[int] = set()

    def collect(cur) -> None:
        hits.update(row[0] for row in cur.fetchall())

    try:  # the common case: one round trip, under the session's lock_timeout
        collect(conn.execute(query, [lows, highs]))
    except psycopg.errors.LockNotAvailable:
        step = Step(
            "probe_default",
            facts.default.name,
            (
                Statement(
                    query,
                    f"ACCESS SHARE on {facts.default.name} (at most one row read per missing range)",
                    then=collect,
                    params=(lows, highs),
                ),
            ),
            lock_targets=(quoted(facts.schema, facts.default.name),),
        )
        Executor(conn, budget, on_event=lambda m: log.warning("%s.%s: %s", facts.schema, facts.table, m)).run(step)
    return frozenset(r for i, r in enumerate(ranges, start=1) if i in hits)


PHASES = ("premake", "retire")


def _check_as_of(as_of: datetime | None) -> None:
    """Checked before anything runs: a moment without a zone offset is ambiguous."""
    if as_of is not None and as_of.tzinfo is None:
        raise ValueError(f"as_of must carry a time zone offset, got {as_of.isoformat()}")


def _journal(conn, config: Config, dry_run: bool) -> Journal | None:
    """The run journal (the state schema made or migrated first); none on a dry run, which writes nothing."""
    if dry_run:
        return None
    ensure_state_schema(conn, config.state_schema)
    return Journal(conn, config.state_schema)


def run_maintenance(
    conn,
    config: Config,
    tables: list[TableConfig] | None = None,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    context: RunContext = RunContext(),
    phases: tuple[str, ...] = PHASES,
    as_of: datetime | None = None,
) -> list[TableResult]:
    """Maintain `tables` (default: all configured). Reads the catalog for all of them in one query.

    `phases` lets the DAG put a data-quality gate between premaking (and repairing leftovers)
    and retiring expired partitions, the destructive part.
    Premake closes every gap in the managed window (plan.managed_ranges); `as_of` also makes
    its own interval and the premake after it. Retirement is always judged at `now`.
    """
    unknown = set(phases) - set(PHASES)
    if unknown or not phases:
        raise ValueError(f"phases must be a non-empty subset of {PHASES}, got {phases}")
    _check_as_of(as_of)
    tables = list(tables or config.tables)
    now = now or datetime.now(timezone.utc)
    journal = _journal(conn, config, dry_run)
    refused = _refused_by_privileges(conn, config, tables) if dry_run else {}
    facts = read_catalog(conn, [t for t in tables if t.name not in refused], config.timezone)
    skips = maintenance_skips(conn, tables)  # never work on a table pg_partman maintains (dual_manager, or the split)
    return [
        refused.get(cfg.name)
        or _maintain_table(
            conn, config, cfg, facts[cfg.name], now, dry_run, journal, context, phases, as_of, skips.get(cfg.name)
        )
        for cfg in tables
    ]


def plan_run(
    conn,
    config: Config,
    tables: list[TableConfig] | None = None,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    context: RunContext = RunContext(),
    as_of: datetime | None = None,
) -> dict:
    """Plan every table of one target at once, and say which ones have work: what the DAG maps.

    One catalog query for all tables, one read of pg_partman's switches, a DEFAULT probe only for
    tables with missing ranges, and one journal write for every table that is not mapped — so a
    healthy fleet costs a few round trips whatever its size, and the watchdog's cadence check still
    finds a run row per table (`Journal.last_success`). Writes nothing on a dry run.

    Returns a small JSON-able dict:
      work     tables to map: their plan is not a no-op, an auto_migrate table has intervals waiting
               in the DEFAULT (request_migration), or the table cannot be planned (its premake task
               fails, naming the table and why)
      tables   per table: status (work | healthy | needs_migration | skipped | failed), and what:
               create / retire (partition names), needs_migration (ranges), why
      results  TableResult dicts of the tables not mapped that have something to say (skipped,
               needs migration, notes); healthy tables are only counted
      healthy  how many tables need nothing
      journalled  run rows written in the one batched insert
      as_of    the moment premake plans for besides now (ISO 8601), or None: a backfill run shows its
               logical date here
    """
    # whole: one decision per table (failed, skipped, work, healthy), then one batched journal write.
    _check_as_of(as_of)
    tables = list(tables or config.tables)
    now = now or datetime.now(timezone.utc)
    started = time.monotonic()
    tz = config.timezone
    journal = _journal(conn, config, dry_run)
    refused = {cfg.name: privileges.problems(conn, config, cfg, "maintenance") for cfg in tables} if dry_run else {}
    facts = read_catalog(conn, [t for t in tables if not refused.get(t.name)], tz)
    skips = maintenance_skips(conn, tables)
    out: dict = {
        "work": [],
        "tables": {},
        "results": {},
        "healthy": 0,
        "journalled": 0,
        "as_of": as_of.isoformat() if as_of is not None else None,
    }
    rows: list[tuple[str, str, dict, str | None]] = []
    for cfg in tables:
        f = facts.get(cfg.name)
        if refused.get(cfg.name) or isinstance(f, CatalogError):
            why = "missing privileges: " + "; ".join(refused[cfg.name]) if refused.get(cfg.name) else str(f)
            out["work"].append(cfg.name)  # its premake task fails naming the table: a red box and a task: condition
            out["tables"][cfg.name] = {"status": "failed", "why": why}
            continue
        skip = skips.get(cfg.name)
        if skip and not dry_run:
            result = TableResult(cfg.name, outcome="skipped", skipped_reason=skip)
            out["tables"][cfg.name] = {"status": "skipped", "why": skip}
        else:
            try:
                plan = _plan(conn, config, cfg, f, now, PHASES, as_of)
            except StepFailed as exc:  # the DEFAULT stayed locked past the budget: this table only
                out["work"].append(cfg.name)  # its premake task tries again and fails naming the holder
                out["tables"][cfg.name] = {"status": "failed", "why": str(exc)}
                continue
            waiting = [
                {
                    "partition": m.name,
                    "range": str(m.range),
                    "trigger": migration_trigger(config, cfg),
                    "requested": cfg.auto_migrate and not dry_run,
                }
                for m in plan.needs_migration
            ]
            brief = {
                "create": [c.name for c in plan.creates],
                "retire": _retires_planned(plan),
                "needs_migration": [m["range"] for m in waiting],
            }
            if not plan.is_noop or (cfg.auto_migrate and waiting and not dry_run):
                out["work"].append(cfg.name)
                out["tables"][cfg.name] = {"status": "work", **brief}
                continue
            result = TableResult(
                cfg.name,
                outcome="dry_run" if dry_run else "success",
                needs_migration=waiting,
                notes=list(plan.notes) + ([f"a real run would skip this table: {skip}"] if skip else []),
            )
            out["tables"][cfg.name] = {"status": "needs_migration" if waiting else "healthy", **brief}
        if result.needs_migration or result.notes or result.skipped_reason:
            out["results"][cfg.name] = result.as_dict()
            _log_result(result)
        else:
            out["healthy"] += 1
        rows.append(
            (
                cfg.name,
                "skipped" if result.outcome == "skipped" else "success",
                {**result.as_dict(), "planned_by": "plan"},
                result.skipped_reason,
            )
        )
    if journal is not None:
        out["journalled"] = journal.record_runs(
            "maintenance", rows, dag_id=context.dag_id, dag_run_id=context.dag_run_id, task_id=context.task_id
        )
    out["seconds"] = round(time.monotonic() - started, 3)
    log.info(
        "planned %d table(s) in %.2fs: %d with work, %d healthy, %d to report; %d run row(s) journalled in one write",
        len(tables),
        out["seconds"],
        len(out["work"]),
        out["healthy"],
        len(out["results"]),
        out["journalled"],
    )
    return out


def _refused_by_privileges(conn, config: Config, tables: list[TableConfig]) -> dict[str, TableResult]:
    """Dry run: a failed result, listing every missing privilege with its fix, for each table the real run could not do."""
    refused = {}
    for cfg in tables:
        missing = privileges.problems(conn, config, cfg, "maintenance")
        if missing:
            refused[cfg.name] = TableResult(
                cfg.name,
                outcome="failed",
                errors=missing,
                notes=["no statements listed: the plan is made once the privileges above are granted"],
            )
            _log_result(refused[cfg.name])
    return refused


def _maintain_table(
    conn,
    config: Config,
    cfg: TableConfig,
    facts: TableFacts | CatalogError,
    now: datetime,
    dry_run: bool,
    journal: Journal | None,
    context: RunContext,
    phases: tuple[str, ...],
    as_of: datetime | None = None,
    skip: str | None = None,
) -> TableResult:
    started = time.monotonic()
    result = TableResult(cfg.name, outcome="dry_run" if dry_run else "success")
    if journal:
        result.run_id = journal.start_run(
            "maintenance", cfg.name, dag_id=context.dag_id, dag_run_id=context.dag_run_id, task_id=context.task_id
        )
    try:
        if skip and not dry_run:
            raise TableBusy(skip)
        if dry_run:
            _plan_into(conn, config, cfg, facts, now, result, phases, as_of, dry_run=True)
            if skip:
                result.notes.append(f"a real run would skip this table: {skip}")
        elif _nothing_to_do(conn, config, cfg, facts, now, phases, result, as_of):
            pass  # the common case: no lock, no further round trip (the plan is re-made under the lock when there is work)
        else:
            with runner_lock(conn, quoted(cfg.schema, cfg.table)):
                moving = journal.open_migration(cfg.name)
                if moving:  # its shadows and replacement DEFAULT were built for today's partitions: leave them be
                    raise TableBusy(
                        f"migration {moving[0]} of this table is {moving[1]} (default_partition_migration); "
                        "maintenance waits until it has finished"
                    )
                plan, facts = _plan_into(conn, config, cfg, facts, now, result, phases, as_of, dry_run=False)
                if plan is not None and not plan.is_noop:
                    _execute(conn, config, cfg, facts, plan, result, journal)
    except TableBusy as exc:
        result.outcome, result.skipped_reason = "skipped", str(exc)
    except Exception as exc:  # one table's failure never stops the others
        log.exception("%s: maintenance failed", cfg.name)
        result.errors.append(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):  # a read before the up-front check: name them all
            result.errors += privileges.problems(conn, config, cfg, "maintenance")
    if result.errors:
        result.outcome = "failed"
    result.seconds = round(time.monotonic() - started, 3)
    if journal:
        journal.finish_run_safely(
            result.run_id, result.outcome, result.as_dict(), "\n".join(result.errors) or result.skipped_reason
        )
    _log_result(result)
    return result


def _plan_into(
    conn, config, cfg, facts, now, result, phases, as_of, *, dry_run
) -> tuple[MaintenancePlan | None, TableFacts | None]:
    tz = config.timezone
    if isinstance(facts, CatalogError):
        result.errors.append(str(facts))
        return None, None
    plan = _plan(conn, config, cfg, facts, now, phases, as_of)
    if not dry_run and not plan.is_noop:
        # The catalog was read before we held the runner lock: re-read this table now that we do.
        facts = read_catalog(conn, [cfg], tz)[cfg.name]
        if isinstance(facts, CatalogError):
            result.errors.append(str(facts))
            return None, None
        plan = _plan(conn, config, cfg, facts, now, phases, as_of)
    result.retires_planned = _retires_planned(plan)
    plan = _only(plan, phases)
    result.needs_migration = [
        {
            "partition": m.name,
            "range": str(m.range),
            "trigger": migration_trigger(config, cfg),
            "requested": cfg.auto_migrate and not dry_run,
        }
        for m in plan.needs_migration
    ]
    result.notes = list(plan.notes)
    if dry_run:
        result.would_create = [c.name for c in plan.creates]
        result.would_retire = _retires_planned(plan)
        for step in ddl.all_steps(facts, plan, tz):
            for statement, lock in step.render(conn):
                result.statements.append({"step": step.action, "target": step.target, "sql": statement, "lock": lock})
    return plan, facts


def _plan(conn, config: Config, cfg, facts, now, phases, as_of=None) -> MaintenancePlan:
    tz = config.timezone
    missing = missing_ranges(cfg, facts, now, tz, as_of)
    candidates = [rng for _, rng in missing] if "premake" in phases else []
    in_default = probe_default(conn, facts, candidates, tz, config.lock_budget)
    return plan_maintenance(cfg, facts, now, tz, in_default, missing, as_of)


def migration_trigger(config: Config, cfg: TableConfig) -> str:
    """The exact command that moves a table's DEFAULT rows into their partitions (`target/table` in a fleet)."""
    conf = json.dumps({"table": config.ref(cfg.name)})
    return f"scripts/airflow dags trigger default_partition_migration --conf '{conf}'"


def migration_pending(
    conn, config: Config, cfg: TableConfig, facts: TableFacts, now: datetime | None = None
) -> list[Range]:
    """Intervals of the managed window with no partition whose rows sit in the DEFAULT (ACCESS SHARE probes).

    The gaps maintenance leaves on purpose: default_partition_migration fills them.
    """
    now = now or datetime.now(timezone.utc)
    missing = [rng for _, rng in missing_ranges(cfg, facts, now, config.timezone)]
    return sorted(probe_default(conn, facts, missing, config.timezone, config.lock_budget))


def _nothing_to_do(conn, config: Config, cfg, facts, now, phases, result: TableResult, as_of=None) -> bool:
    if isinstance(facts, CatalogError):
        return False
    plan = _plan(conn, config, cfg, facts, now, phases, as_of)
    result.retires_planned = _retires_planned(plan)  # filled on this path too: never an empty list by omission
    return _only(plan, phases).is_noop and not plan.needs_migration and not plan.notes


def _retires_planned(plan: MaintenancePlan) -> list[str]:
    return [r.name for r in plan.retires] + [f.name for f in plan.finalizes]


def planned_retirements(conn, config: Config, cfg: TableConfig, *, now: datetime | None = None) -> list[str]:
    """The partitions the retire phase would detach or finish detaching now, read from the catalog.

    What the retire gates decide on: the retire plan itself, never another phase's summary.
    Raises `CatalogError` when the table cannot be read as configured.
    """
    now = now or datetime.now(timezone.utc)
    facts = read_catalog(conn, [cfg], config.timezone)[cfg.name]
    if isinstance(facts, CatalogError):
        raise facts
    return _retires_planned(
        plan_maintenance(
            cfg, facts, now, config.timezone, frozenset(), missing_ranges(cfg, facts, now, config.timezone)
        )
    )


def _only(plan: MaintenancePlan, phases: tuple[str, ...]) -> MaintenancePlan:
    """The part of the plan the requested phases carry out."""
    if "premake" not in phases:
        plan = replace(plan, creates=(), stale_checks=(), identity_repairs=(), needs_migration=())
    if "retire" not in phases:
        plan = replace(plan, retires=(), finalizes=())
    return plan


def _execute(
    conn,
    config: Config,
    cfg: TableConfig,
    facts: TableFacts,
    plan: MaintenancePlan,
    result: TableResult,
    journal: Journal,
) -> None:
    # whole: the table's steps in their order (stale checks, identity repairs, pending detaches, creates, retires), each through
    # the one `run` helper that journals it; split, the executor, journal and lock-budget stop would travel along.
    tz = config.timezone
    privileges.require(conn, config, cfg, "maintenance")  # before any DDL: all missing privileges at once
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
        result.notes.append(
            f"stopped adding DDL after {blocked[0]} stayed locked past the budget; the rest waits for the next run"
        )


def _finalize_if_pending(conn, facts: TableFacts, name: str, run) -> bool:
    """A DETACH CONCURRENTLY interrupted in its second phase leaves the partition pending: finish it."""
    pending = conn.execute(
        "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = to_regclass(%s)", [quoted(facts.schema, name)]
    ).fetchone()
    return bool(pending and pending[0]) and run(ddl.finalize_step(facts, name))


def _log_result(r: TableResult) -> None:
    for s in r.statements:
        log.info("%s: [dry run] %s;  -- %s", r.table, s["sql"], s["lock"])
    if r.outcome == "dry_run":
        done = f"would create {r.would_create or 'none'}; would retire {r.would_retire or 'none'}"
    else:
        done = f"created {r.created or 'none'}; detached {r.detached or 'none'}; dropped {r.dropped or 'none'}"
    log.info(
        "%s: %s; %s%s%s",
        r.table,
        r.outcome,
        done,
        f"; skipped: {r.skipped_reason}" if r.skipped_reason else "",
        f"; errors: {' | '.join(r.errors)}" if r.errors else "",
    )
    for m in r.needs_migration:
        log.warning(
            "%s: %s: the DEFAULT holds rows in this range, so %s was not created; the rows need migration",
            r.table,
            m["range"],
            m["partition"],
        )
    for note in r.notes:
        log.info("%s: note: %s", r.table, note)


__all__ = [
    "RunContext",
    "plan_run",
    "TableResult",
    "migration_pending",
    "migration_trigger",
    "planned_retirements",
    "probe_default",
    "run_maintenance",
]
