"""Move rows out of a DEFAULT partition online, invisibly to applications.

Copy first, swap last (the statements and their locks: `mirror.DefaultPartitionMigration`;
the copy and its proof: `backfill`):

1. Survey the DEFAULT under ACCESS SHARE: which intervals hold rows, how many; plan (pure)
   which intervals get a partition and which rows stay (NULL keys, out of the window).
2. Refuse, before touching anything, what cannot be moved online: no mirror key (primary key
   or unique index), foreign keys referencing the parent.
3. Prepare shadow partitions under a shadow parent, and a replacement DEFAULT.
4. Mirror: a trigger on the DEFAULT replays every application write into the shadows.
5. Copy the rows in short batches; every row stays in the DEFAULT, readable and writable.
6. Wait for REPEATABLE READ snapshots older than the copy to end (they could not see the copies).
7. Verify in one snapshot that the copies equal the DEFAULT, per interval (count + checksum).
8. Swap in one short transaction (parent's ACCESS EXCLUSIVE first, then catalog-only DETACH /
   ATTACH), exporting its snapshot: the rows written since the check are counted again exactly
   at the swap (everything, when the mirror's key log cannot tell which).
9. Tidy; after the data-quality gate, drop the old DEFAULT (`finish_migration`).

Every step is journalled in `<state_schema>.migrations`; a run killed at any point leaves
every row readable exactly once through the parent and resumes (or cleanly starts over).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import psycopg
from psycopg import sql

from include.pgmaint import privileges
from include.pgmaint.backfill import (
    GUARDED_BATCHES_AFTER_CONFLICT,
    Backfill,
    CutVerifier,
    compare,
    drop_deleted_copies,
    figures_in_snapshot,
    replace_counted,
    unlocked_deleted_copies_pass,
    written_keys,
)
from include.pgmaint.catalog import Range, TableFacts, read_catalog
from include.pgmaint.config import Config, TableConfig
from include.pgmaint.execute import Executor, GuardFailed, Statement, Step, StepFailed
from include.pgmaint.figures import bucket_expression, checksum_method, figures_query, table_columns
from include.pgmaint.guards import CircuitBreaker, TableBusy, preflight, quoted, require_session_visibility, runner_lock
from include.pgmaint.maintenance import RunContext
from include.pgmaint.mirror import DefaultPartitionMigration, mirror_key, refusals
from include.pgmaint.plan import desired_ranges, name_choice, partition_name, retention_cutoff, timeline, to_utc
from include.pgmaint.state import Journal, ensure_state_schema, to_json

log = logging.getLogger("pgmaint.migrate")
SNAPSHOT_WAIT_SECONDS = 60.0  # how long to wait for old REPEATABLE READ snapshots before the swap
UNWRITTEN_SINCE_CHECK = (
    "checked before the swap; no write reached the DEFAULT between that check and the swap (write mark)"
)


@dataclass(frozen=True)
class RangeRows:
    range: Range | None  # None: rows whose key is NULL
    rows: int
    partition: str | None = None  # the partition it will get
    reason: str | None = None  # why it is left in place

    def label(self) -> str:
        return "NULL key" if self.range is None else str(self.range)


@dataclass(frozen=True)
class MigrationPlan:
    table: str
    move: tuple[RangeRows, ...]  # each gets a new partition
    leave: tuple[RangeRows, ...]  # reported, left in the DEFAULT

    @property
    def rows_to_move(self) -> int:
        return sum(r.rows for r in self.move)


@dataclass
class MigrationResult:
    table: str
    outcome: str = (
        "success"  # success | failed | skipped | dry_run | incomplete (stopped at max_minutes) | drained (not finished)
    )
    migration_id: int | None = None
    partitions: list[str] = field(default_factory=list)
    rows_moved: int = 0
    rows_remaining: int = 0
    seconds: float = 0.0
    rows_per_second: float = 0.0
    left_in_default: list[dict] = field(default_factory=list)
    verified: dict = field(default_factory=dict)
    statements: list[dict] = field(default_factory=list)
    skipped_reason: str | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def failpoint_armed(name: str) -> bool:
    return os.environ.get("PGMAINT_FAILPOINT") == name


def failpoint(name: str) -> None:
    """Fault injection for the crash-safety tests: `PGMAINT_FAILPOINT=<name>` kills this process here, like kill -9."""
    if failpoint_armed(name):
        os.kill(os.getpid(), signal.SIGKILL)


# --- survey & plan -------------------------------------------------------------------------------


def survey_default(
    conn, facts: TableFacts, cfg: TableConfig, tz: str, timeout_ms: int
) -> list[tuple[datetime | None, int]]:
    """(interval start, rows) for every interval the DEFAULT holds rows for. Reads under ACCESS SHARE."""
    query = sql.SQL("SELECT {b} AS bucket, count(*) FROM ONLY {d} GROUP BY 1 ORDER BY 1 NULLS FIRST").format(
        b=bucket_expression(facts, cfg, tz), d=sql.Identifier(facts.schema, facts.default.name)
    )
    with conn.transaction():
        conn.execute("SELECT set_config('statement_timeout', %s, true)", [f"{timeout_ms}ms"])
        rows = conn.execute(query).fetchall()
    return [(_on_timeline(b), n) for b, n in rows]


def _on_timeline(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def plan_migration(
    cfg: TableConfig,
    facts: TableFacts,
    survey: list[tuple[datetime | None, int]],
    now: datetime,
    tz: str,
    move_out_of_window: bool = False,
) -> MigrationPlan:
    """Pure: which surveyed intervals get a partition, which are left (and why)."""
    now_t, tz_t = timeline(facts, now, tz)
    horizon = desired_ranges(cfg, now_t, tz_t)[-1][1].upper
    cutoff = retention_cutoff(cfg, now_t, tz_t)
    taken = {p.name for p in facts.partitions} | {facts.default.name}
    name_format = name_choice(cfg, facts, tz_t).format  # new partitions follow the table's naming scheme
    move, leave = [], []
    for start, rows in survey:
        if start is None:
            leave.append(RangeRows(None, rows, reason="partition key is NULL: only the DEFAULT can hold these rows"))
            continue
        rng = Range(start, to_utc(cfg.interval.next(start, tz_t)))
        clash = next((p for p in facts.partitions if p.range.overlaps(rng)), None)
        name = partition_name(cfg, start, tz_t, name_format)
        if clash is not None:
            leave.append(RangeRows(rng, rows, reason=f"overlaps existing partition {clash.name} {clash.range}"))
        elif not move_out_of_window and cutoff is not None and rng.upper <= cutoff:
            leave.append(RangeRows(rng, rows, reason=f"older than the retention window ({cfg.retention})"))
        elif not move_out_of_window and rng.lower >= horizon:
            leave.append(RangeRows(rng, rows, reason=f"beyond the premake horizon ({cfg.premake} intervals ahead)"))
        elif name in taken:
            leave.append(RangeRows(rng, rows, reason=f"the name {name} is already used by another table"))
        else:
            move.append(RangeRows(rng, rows, partition=name))
    return MigrationPlan(cfg.name, tuple(move), tuple(leave))


# --- the run ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenMigration:
    migration_id: int
    phase: str  # preparing | copying | swapped | draining (pre-006)
    method: str
    plan: MigrationPlan
    partitions_before: tuple[str, ...]
    checksum: str
    verified: bool


def open_migration(conn, config: Config, cfg: TableConfig) -> OpenMigration | None:
    """The table's unfinished migration, if any (at most one: a unique index says so)."""
    row = conn.execute(
        sql.SQL(
            "SELECT migration_id, phase, method, moves, partitions_before, checksum, verified_at IS NOT NULL FROM {}.migrations "
            "WHERE table_name = %s AND phase IN ('preparing', 'copying', 'swapped', 'draining')"
        ).format(sql.Identifier(config.state_schema)),
        [cfg.name],
    ).fetchone()
    if row is None:
        return None
    mid, phase, method, moves, before, checksum, verified = row
    move = tuple(
        RangeRows(
            Range(datetime.fromisoformat(m["lower"]), datetime.fromisoformat(m["upper"])),
            m["rows"],
            partition=m["partition"],
        )
        for m in moves or ()
    )
    return OpenMigration(mid, phase, method, MigrationPlan(cfg.name, move, ()), tuple(before or ()), checksum, verified)


def migrate_table(
    conn,
    conninfo: str,
    config: Config,
    cfg: TableConfig,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    batch_rows: int = 50_000,
    max_minutes: float = 60.0,
    move_out_of_window: bool = False,
    context: RunContext = RunContext(),
    progress: Callable[[str], None] | None = None,
    finish: bool = True,
    snapshot_wait_seconds: float = SNAPSHOT_WAIT_SECONDS,
) -> MigrationResult:
    """Migrate one table's DEFAULT partition; resumes an unfinished migration first.

    `finish=False` stops after the swap and its verification (outcome "swapped"), keeping the
    old DEFAULT for `finish_migration` to drop once a data-quality gate has passed.
    """
    progress = progress or (lambda message: log.info("%s", message))
    now = now or datetime.now(timezone.utc)
    started = time.monotonic()
    deadline = started + max_minutes * 60
    result = MigrationResult(cfg.name, outcome="dry_run" if dry_run else "success")
    journal = run_id = None
    if not dry_run:
        ensure_state_schema(conn, config.state_schema)
        journal = Journal(conn, config.state_schema)
        run_id = journal.start_run(
            "migration", cfg.name, dag_id=context.dag_id, dag_run_id=context.dag_run_id, task_id=context.task_id
        )
    try:
        if dry_run:
            _dry_run(conn, config, cfg, now, move_out_of_window, result)
        else:
            with runner_lock(conn, quoted(cfg.schema, cfg.table)):
                run = _Run(
                    conn,
                    conninfo,
                    config,
                    cfg,
                    result,
                    journal,
                    run_id,
                    progress,
                    deadline,
                    batch_rows,
                    snapshot_wait_seconds,
                )
                run.migrate(now, move_out_of_window, finish)
    except TableBusy as exc:
        result.outcome, result.skipped_reason = "skipped", str(exc)
    except Exception as exc:
        log.exception("%s: migration failed", cfg.name)
        result.errors.append(f"{type(exc).__name__}: {exc}")
    if result.errors:
        result.outcome = "failed"
    result.seconds = round(time.monotonic() - started, 3)
    result.rows_per_second = round(result.rows_moved / result.seconds, 1) if result.seconds else 0.0
    if journal:
        outcome = {"incomplete": "success", "swapped": "success"}.get(result.outcome, result.outcome)
        journal.finish_run_safely(run_id, outcome, result.as_dict(), "\n".join(result.errors) or result.skipped_reason)
    progress(migration_summary(result))
    return result


def migration_summary(result: MigrationResult) -> str:
    """The run's last line: what was moved, and what remains where and why (never only in XCom)."""
    if result.outcome == "dry_run":
        done = f"would move {result.rows_remaining:,} rows into {len(result.partitions)} partition(s)"
    else:
        done = (
            f"{result.rows_moved:,} rows moved into {len(result.partitions)} partition(s) in {result.seconds:.1f}s "
            f"({result.rows_per_second:,.0f} rows/s)"
        )
        if result.rows_remaining:
            done += (
                f"; {result.rows_remaining:,} rows not swapped in yet, every one still readable and writable in "
                "the DEFAULT (run again to resume)"
            )
    left = sum(r["rows"] for r in result.left_in_default)
    if left:
        verb = "would stay" if result.outcome == "dry_run" else "stay"
        done += f"; {left:,} row(s) {verb} in the DEFAULT: " + "; ".join(
            f"{r['rows']:,} in {r['range']} ({r['reason']})" for r in result.left_in_default
        )
    elif result.outcome != "failed" and not result.skipped_reason:
        done += (
            "; nothing left in the DEFAULT" if result.outcome != "dry_run" else "; nothing would stay in the DEFAULT"
        )
    if result.skipped_reason:
        done += (
            f"; {'stopped before the swap' if result.outcome == 'incomplete' else 'skipped'}: {result.skipped_reason}"
        )
    if result.errors:
        done += f"; errors: {' | '.join(result.errors)}"
    if result.warnings:
        done += f"; WARNING: {' | '.join(result.warnings)}"
    return f"{result.table}: migration {result.outcome}: {done}"


def statements_for(
    conn, config: Config, cfg: TableConfig, facts: TableFacts, plan: MigrationPlan
) -> DefaultPartitionMigration:
    """The migration's statements for `plan`; a table without a mirror key raises with the reasons."""
    key = mirror_key(conn, facts)
    if key is None:
        raise RuntimeError("; ".join(refusals(conn, facts)))
    return DefaultPartitionMigration(config, cfg, facts, plan, key, table_columns(conn, facts))


def _facts(conn, config: Config, cfg: TableConfig) -> TableFacts:
    facts = read_catalog(conn, [cfg], config.timezone)[cfg.name]
    if not isinstance(facts, TableFacts):
        raise facts
    return facts


def _survey_and_plan(conn, config, cfg, facts, now, move_out_of_window, result: MigrationResult) -> MigrationPlan:
    survey = survey_default(conn, facts, cfg, config.timezone, config.lock_budget.scan_timeout_ms)
    plan = plan_migration(cfg, facts, survey, now, config.timezone, move_out_of_window)
    result.left_in_default = [{"range": r.label(), "rows": r.rows, "reason": r.reason} for r in plan.leave]
    result.warnings = privileges.migration_warnings(config, cfg, facts, plan, now)
    return plan


def _dry_run(conn, config, cfg, now, move_out_of_window, result: MigrationResult) -> None:
    result.errors += privileges.problems(conn, config, cfg, "migration")  # all the real run needs, at once
    if result.errors:
        return
    facts = _facts(conn, config, cfg)
    if facts.default is None:
        return
    plan = _survey_and_plan(conn, config, cfg, facts, now, move_out_of_window, result)
    result.rows_remaining = plan.rows_to_move
    result.partitions = [r.partition for r in plan.move]
    if not plan.move:
        return
    problems = refusals(conn, facts)
    if problems:
        result.errors.extend(f"cannot move rows online: {p}" for p in problems)
        for p in problems:
            log.error("%s: [dry run] cannot move rows online: %s", cfg.name, p)
        return
    m = statements_for(conn, config, cfg, facts, plan)
    steps = m.prepare_steps() + [m.mirror_step(0, m.mirror_function().as_string(conn))]
    copy = Backfill(conn, m, 0)
    steps.append(
        Step(
            "copy_batch",
            m.default_name,
            (
                Statement(
                    copy.template(guarded=False),
                    f"ACCESS SHARE on {m.default_name}, no row lock (~50 ms; only a mirrored write of a key it has "
                    f"just copied waits for its commit); ROW EXCLUSIVE on {m.shadow_parent}; repeated per page range "
                    "until every page is copied",
                ),
                Statement(
                    copy.template(guarded=True),
                    "the same locks: a batch that met a key the mirror had already written (unique violation, "
                    f"rolled back) runs again like this, and so do the next {GUARDED_BATCHES_AFTER_CONFLICT} batches",
                ),
            ),
        )
    )
    steps.append(
        Step(
            "drop_deleted_copies_unlocked",
            m.shadow_parent,
            (
                Statement(
                    unlocked_deleted_copies_pass(m),
                    "no lock on the DEFAULT: ROW EXCLUSIVE on our key log and copies; gives way "
                    "(rolls back, the entries stay) when an application write touches a key it looks at; repeated "
                    "while many entries come in",
                ),
            ),
        )
    )
    steps.append(m.vacuum_key_log_step())
    steps.append(m.deleted_copies_step())
    steps.append(m.verify_cut_step())
    steps.append(m.analyze_step())  # beside the check, in the engine's own session
    steps.append(m.swap_step(0, guard=m.partitions_unchanged_guard(sorted(p.name for p in facts.partitions))))
    steps += m.tidy_steps()
    for step in steps:
        for statement, lock in step.render(conn):
            result.statements.append({"step": step.action, "target": step.target, "sql": statement, "lock": lock})
    for r in plan.move:
        log.info("%s: [dry run] would move %d rows of %s into %s", cfg.name, r.rows, r.range, r.partition)
    for left in result.left_in_default:
        log.info(
            "%s: [dry run] would leave %d rows (%s) in the DEFAULT: %s",
            cfg.name,
            left["rows"],
            left["range"],
            left["reason"],
        )
    for s in result.statements:
        log.info("%s: [dry run] %s;  -- %s", cfg.name, s["sql"], s["lock"])
    log.info(
        "%s: [dry run] then: wait for REPEATABLE READ snapshots older than the copy, verify the copies per interval "
        "(count + checksum) in the snapshot of the write cut, swap, count again at the swap's instant the rows whose "
        "keys were written since the cut (all rows if the key log cannot tell); the old DEFAULT is dropped after the "
        "data-quality gate, its indexes first (one transaction each, so no single commit frees all of its files)",
        cfg.name,
    )


# Log entries the passes without a lock removed, from which the key log is vacuumed before the pass under SHARE reads
# it (100,000 dead entries: ~5 MB to read while writers wait).
VACUUM_KEY_LOG_AFTER = 100_000


class _Run:
    """One run's state: connection, executor, journal, clock."""

    def __init__(
        self, conn, conninfo, config, cfg, result, journal, run_id, progress, deadline, batch_rows, snapshot_wait
    ):
        self.conn, self.conninfo, self.config, self.cfg, self.result = conn, conninfo, config, cfg, result
        self.journal, self.run_id, self.progress, self.deadline, self.batch_rows = (
            journal,
            run_id,
            progress,
            deadline,
            batch_rows,
        )
        self.snapshot_wait = snapshot_wait
        self.state = sql.Identifier(config.state_schema)
        self.breaker = CircuitBreaker(conninfo)
        self.executor = Executor(
            conn, config.lock_budget, breaker=self.breaker, on_event=lambda msg: log.warning("%s: %s", cfg.name, msg)
        )

    def step(self, step: Step) -> None:
        failpoint(f"before_{step.action}")
        began = datetime.now(timezone.utc)
        try:
            outcome = self.executor.run(step)
        except StepFailed as exc:
            self.journal.record_step(self.run_id, step, began, "failed", exc.attempts, str(exc), exc.blockers)
            raise
        self.journal.record_step(self.run_id, step, began, "success", outcome.attempts, None, outcome.blockers)

    def set(self, migration_id: int, **values) -> None:
        assignments = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in values)
        self.conn.execute(
            sql.SQL("UPDATE {}.migrations SET {}, updated_at = clock_timestamp() WHERE migration_id = %s").format(
                self.state, assignments
            ),
            [*(to_json(v) if isinstance(v, (dict, list)) else v for v in values.values()), migration_id],
        )

    def migration(self, facts: TableFacts, plan: MigrationPlan) -> DefaultPartitionMigration:
        return statements_for(self.conn, self.config, self.cfg, facts, plan)

    # --- the phases --------------------------------------------------------------------------

    def migrate(self, now, move_out_of_window, finish: bool) -> None:
        conn, cfg = self.conn, self.cfg
        facts = _facts(conn, self.config, cfg)
        current = open_migration(conn, self.config, cfg)
        if current and current.method == "drain":
            raise RuntimeError(
                f"migration {current.migration_id} of {cfg.name} was started by an earlier pgmaint (drain design) and is "
                "unfinished; its rows sit in the drain table named in the journal. See docs/runbook.md, "
                "'A migration left by an earlier version'"
            )
        if current and current.phase == "preparing":
            self.abandon(facts, current, "the previous run stopped while preparing")
            current = None
        if current is None:
            if facts.default is None:
                return
            # before the survey reads the DEFAULT, and anything is built
            privileges.require(conn, self.config, cfg, "migration")
            plan = _survey_and_plan(conn, self.config, cfg, facts, now, move_out_of_window, self.result)
            if not plan.move:
                return
            problems = refusals(conn, facts)
            if problems:
                raise RuntimeError("cannot move rows online: " + " | ".join(problems))
            check = preflight(conn, quoted(cfg.schema, cfg.table), self.config.preflight)
            if not check.ok:
                self.result.outcome, self.result.skipped_reason = "skipped", "preflight: " + "; ".join(check.problems)
                self.result.rows_remaining = plan.rows_to_move
                return
            current = self.prepare(facts, plan)
        facts = _facts(conn, self.config, cfg)
        self.result.migration_id = current.migration_id
        self.result.partitions = [r.partition for r in current.plan.move]
        if current.phase == "copying":
            m = self.migration(facts, current.plan)
            if not self.copy(m, current):
                return
            facts = _facts(conn, self.config, cfg)
            current = open_migration(conn, self.config, cfg)
        m = self.migration(facts, current.plan)
        self.after_swap(m, current, finish)

    def prepare(self, facts: TableFacts, plan: MigrationPlan) -> OpenMigration:
        checksum = checksum_method(self.conn, facts)
        moves = [
            {
                "partition": r.partition,
                "lower": r.range.lower.isoformat(),
                "upper": r.range.upper.isoformat(),
                "rows": r.rows,
            }
            for r in plan.move
        ]
        before = sorted(p.name for p in facts.partitions)
        m = self.migration(facts, plan)
        mid = self.conn.execute(
            sql.SQL(
                "INSERT INTO {}.migrations (table_name, drain_table, partitions, checksum, method, phase, moves, partitions_before) "
                "VALUES (%s, %s, %s::jsonb, %s, 'copy', 'preparing', %s::jsonb, %s::jsonb) RETURNING migration_id"
            ).format(self.state),
            [
                self.cfg.name,
                m.text(m.old_name),
                to_json([r.partition for r in plan.move]),
                checksum,
                to_json(moves),
                to_json(before),
            ],
        ).fetchone()[0]
        for step in m.prepare_steps():
            self.step(step)
        self.step(m.mirror_step(mid, m.mirror_function().as_string(self.conn)))
        self.progress(
            f"{self.cfg.name}: mirroring writes to the DEFAULT into {len(plan.move)} shadow partition(s); "
            f"copying {plan.rows_to_move:,} rows"
        )
        return OpenMigration(mid, "copying", "copy", plan, tuple(before), checksum, False)

    def copy(self, m: DefaultPartitionMigration, current: OpenMigration) -> bool:
        """Copy, wait for old snapshots, verify, swap. False when the run stops before the swap (time box, snapshots)."""
        conn, mid, cfg = self.conn, current.migration_id, self.cfg
        if not conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = 'pgmaint_mirror')",
            [m.text(m.default_name)],
        ).fetchone()[0]:
            self.abandon(m.facts, current, "the mirror trigger is gone (dropped by someone?)")
            raise RuntimeError(
                f"{cfg.name}: migration {mid} lost its mirror trigger on {m.default_name}; it was cleaned up, "
                "every row is still in the DEFAULT: run again to start over"
            )
        # Migrations begun by a version before the key log lock the rows they copy instead (see `drop_deleted_copies`).
        logged = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [m.text(m.written)]).fetchone()[0]
        copied, finished = Backfill(
            conn, m, mid, failpoint=failpoint, hold_commit=failpoint_armed("inside_batch"), row_locks=not logged
        ).run(
            expected_rows=current.plan.rows_to_move,
            batch_rows=self.batch_rows,
            deadline=self.deadline,
            progress=self.progress,
        )
        if not finished:
            self._stop_early(
                current,
                "stopped at max_minutes while copying; the mirror trigger stays on, "
                "every row stays readable in the DEFAULT: trigger the DAG again to resume",
            )
            return False
        if not self.wait_for_old_snapshots(mid):
            return False
        if logged:
            self.remove_deleted_copies(m)
        failpoint("before_verify")
        # The keeper holds the cut's snapshot (touching no table) until the swap, when the rows written in between are
        # read again in it: only those need counting at the swap. Only with this version's key log (see mirror.py).
        verifier = CutVerifier(self.conninfo, self.config.lock_budget)
        keeper = CutVerifier(self.conninfo, self.config.lock_budget) if logged else None
        try:
            self.step(m.verify_cut_step(on_snapshot=_adopt_both(verifier, keeper)))
            # The shadows' statistics and the check are independent reads in two sessions, one process each: side by
            # side they take the time of the longer (1 M rows: ANALYZE 1.1 s, check 1.3 s). If ANALYZE fails, the
            # pool's exit waits for the check, so the verifier's session is idle when it is closed.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgmaint-check") as pool:
                counted = pool.submit(verifier.figures, m, current.checksum, swapped=False)
                self.step(m.analyze_step())
                before, after = counted.result()
            checked_mark = verifier.write_mark
        except BaseException:
            if keeper is not None:
                keeper.close()
            raise
        finally:
            verifier.close()
        try:
            return self._swap(m, current, before, after, checked_mark, keeper)
        finally:
            if keeper is not None:
                keeper.close()

    def remove_deleted_copies(self, m: DefaultPartitionMigration) -> None:
        """The copies of rows deleted while a batch held them uncommitted go, before the copies are verified: passes over
        the key log without a lock, then one under SHARE on the DEFAULT for the last entries."""
        failpoint("before_drop_deleted_copies_unlocked")
        entries, removed = drop_deleted_copies(self.conn, m)
        if entries >= VACUUM_KEY_LOG_AFTER:
            try:
                self.step(m.vacuum_key_log_step())
            except StepFailed as exc:  # an autovacuum of it, say: the last pass then reads the dead entries too
                log.warning("%s: the key log was not vacuumed before the last pass (%s); going on", self.cfg.name, exc)
        last: dict = {}
        self.step(m.deleted_copies_step(then=lambda cur: last.update(zip(("entries", "removed"), cur.fetchone()))))
        entries, removed = entries + last.get("entries", 0), removed + last.get("removed", 0)
        log.info(
            "%s: %d key(s) written during the copy looked at; %d copy(ies) of rows deleted meanwhile removed",
            self.cfg.name,
            entries,
            removed,
        )

    def _swap(self, m: DefaultPartitionMigration, current: OpenMigration, before, after, checked_mark, keeper) -> bool:
        cfg, mid = self.cfg, current.migration_id
        mismatches = compare(before, after)
        if mismatches:
            self.abandon(m.facts, current, "copies differ from the DEFAULT: " + "; ".join(mismatches))
            raise RuntimeError(
                f"{cfg.name}: the copies differ from the DEFAULT ({'; '.join(mismatches)}); nothing was "
                "swapped, the copies were removed and every row is still in the DEFAULT"
            )
        # Kept if the run dies between the swap and its count, with the write mark they were taken at.
        self.record_figures(mid, before, after, at_swap=False, write_mark=checked_mark)
        self.progress(
            f"{cfg.name}: copies verified in one snapshot ({sum(n for n, _ in before.values()):,} rows in "
            f"{len(before)} interval(s)); swapping"
        )
        verifier = CutVerifier(self.conninfo, self.config.lock_budget)
        try:
            self.step(
                m.swap_step(
                    mid,
                    on_snapshot=self._adopt(verifier),
                    guard=m.partitions_unchanged_guard(current.partitions_before),
                )
            )
            failpoint("after_swap")
            marks = self.write_marks(mid)
            if marks.unwritten:
                # No write reached the DEFAULT between the verified instant and the swap: the figures taken then are
                # the figures at the swap (only the mirror writes to the shadows, and only for a write to the DEFAULT).
                verifier.release()
                how = UNWRITTEN_SINCE_CHECK
            else:
                recounted = self.recount_written(m, current, before, after, keeper, verifier, marks)
                if recounted is not None:
                    before, after, how = recounted
                else:
                    before, after = verifier.figures(m, current.checksum, swapped=True)
                    how = "counted at the swap"
        finally:
            verifier.close()
        self.record_figures(mid, before, after, at_swap=True, how=how)
        self.progress(
            f"{cfg.name}: swapped: {len(current.plan.move)} partition(s) attached "
            f"(peak sessions queued behind the swap: {self.breaker.peak_waiters}, longest wait {self.breaker.peak_wait_ms:.0f} ms)"
        )
        return True

    def recount_written(self, m, current: OpenMigration, before: dict, after: dict, keeper, verifier, marks):
        """(DEFAULT, copies, how) at the swap from the figures verified at the cut, counting again only the rows whose
        keys were written in between: each in the cut's snapshot (the keeper's) and in the swap's. The copies equaled
        the DEFAULT at the cut, and every other row is as it was then on both sides, so the two sides are equal at the
        swap exactly when those rows are. None when the key log cannot tell (then everything is counted again)."""
        if keeper is None or keeper.snapshot is None or not marks.mirror_untouched:
            return None
        since = marks.count_at_check
        keys = None if since is None else written_keys(verifier.conn, m, since)
        if keys is None:
            return None
        old_default, new_homes = m.compared(swapped=True)
        method = current.checksum
        try:
            was_default = figures_in_snapshot(keeper.conn, m, method, [old_default], keys)
            was_copies = figures_in_snapshot(keeper.conn, m, method, new_homes, keys)
        except psycopg.Error as e:  # the keeper was ended (idle_in_transaction_session_timeout?): count everything
            log.warning(
                "%s: could not read the cut's snapshot again (%s); counting every row at the swap", self.cfg.name, e
            )
            return None
        if compare(was_default, was_copies):
            return None  # cannot be after a verified cut; count everything rather than reason from it
        now_default = figures_in_snapshot(verifier.conn, m, method, [old_default], keys)
        now_copies = figures_in_snapshot(verifier.conn, m, method, new_homes, keys)
        verifier.release()
        return (
            replace_counted(before, was_default, now_default),
            replace_counted(after, was_copies, now_copies),
            f"counted at the swap: the {len(keys):,} row key(s) written since the check before the swap, read in the "
            "check's snapshot and in the swap's; every other row as verified at the check",
        )

    def _adopt(self, verifier: CutVerifier):
        def then(cursor):
            verifier.adopt(cursor)
            failpoint("inside_swap")

        return then

    def write_marks(self, mid: int) -> WriteMarks:
        """The write marks journalled with the figures checked before the swap and by the swap."""
        row = self.conn.execute(
            sql.SQL(
                "SELECT summary->>'write_mark_checked', summary->>'write_mark_at_swap' FROM {}.migrations "
                "WHERE migration_id = %s"
            ).format(self.state),
            [mid],
        ).fetchone()
        return WriteMarks(*row)

    def record_figures(
        self,
        mid: int,
        before: dict,
        after: dict,
        *,
        at_swap: bool,
        how: str | None = None,
        write_mark: str | None = None,
    ) -> None:
        """'before' (the DEFAULT) and 'moved' (the copies) per interval. At the swap they are the proof: verified_at is set
        when they agree. Before the swap they are the fallback if the swap's own count is lost (`reverify`)."""
        with self.conn.transaction():
            self.conn.execute(
                sql.SQL("DELETE FROM {}.migration_figures WHERE migration_id = %s").format(self.state), [mid]
            )
            for kind, figs in (("before", before), ("moved", after)):
                for bucket, (n, ck) in figs.items():
                    self.conn.execute(
                        sql.SQL(
                            "INSERT INTO {}.migration_figures (migration_id, kind, bucket, rows, checksum) "
                            "VALUES (%s, %s, %s, %s, %s)"
                        ).format(self.state),
                        [mid, kind, bucket, n, ck],
                    )
            mismatches = compare(before, after)
            self.conn.execute(
                sql.SQL(
                    "UPDATE {}.migrations SET verified_at = CASE WHEN %(ok)s THEN clock_timestamp() END, rows_moved = %(rows)s, "
                    "summary = summary || %(summary)s::jsonb WHERE migration_id = %(m)s"
                ).format(self.state),
                {
                    "ok": at_swap and not mismatches,
                    "rows": sum(n for n, _ in after.values()),
                    "m": mid,
                    "summary": to_json(
                        {"verified": how, "mismatches_at_swap": mismatches}
                        if at_swap
                        else {"verified": None, "write_mark_checked": write_mark}
                    ),
                },
            )
        if at_swap:
            failpoint("after_verify")

    def reverify(self, m: DefaultPartitionMigration, current: OpenMigration) -> None:
        """The run died between the swap and its count. The copies matched the DEFAULT in the check before the swap;
        if the old DEFAULT still holds exactly what it held then, no write reached it in between, so the copies
        matched it at the swap too. (With writers paused, the usual case, that holds.)"""
        mid = current.migration_id
        if (
            current.verified
            or self.conn.execute(
                sql.SQL("SELECT summary ? 'mismatches_at_swap' FROM {}.migrations WHERE migration_id = %s").format(
                    self.state
                ),
                [mid],
            ).fetchone()[0]
        ):
            return  # counted at the swap (in this run, or the one that swapped): agreed or not, that count stands
        if self.write_marks(mid).unwritten:
            self.conn.execute(
                sql.SQL(
                    "UPDATE {}.migrations SET verified_at = clock_timestamp(), summary = summary || %s::jsonb "
                    "WHERE migration_id = %s"
                ).format(self.state),
                [to_json({"verified": UNWRITTEN_SINCE_CHECK}), mid],
            )
            return
        with self.conn.transaction():
            self.conn.execute(
                "SELECT set_config('statement_timeout', %s, true)", [f"{self.config.lock_budget.scan_timeout_ms}ms"]
            )
            now = figures_in_snapshot(self.conn, m, current.checksum, [m.old_name])
        was = {
            b: (int(n), int(ck))
            for b, n, ck in self.conn.execute(
                sql.SQL(
                    "SELECT bucket, rows, checksum FROM {}.migration_figures WHERE migration_id = %s AND kind = 'before'"
                ).format(self.state),
                [mid],
            ).fetchall()
        }
        if compare(was, now):
            self.progress(
                f"{self.cfg.name}: migration {mid}: the old DEFAULT changed between the check before the swap and the "
                "swap, and the run died before counting at the swap: conservation cannot be proven automatically"
            )
            return
        self.conn.execute(
            sql.SQL(
                "UPDATE {}.migrations SET verified_at = clock_timestamp(), summary = summary || %s::jsonb "
                "WHERE migration_id = %s"
            ).format(self.state),
            [to_json({"verified": "checked before the swap; the old DEFAULT is unchanged since"}), mid],
        )

    def after_swap(self, m: DefaultPartitionMigration, current: OpenMigration, finish: bool) -> None:
        conn, cfg, mid = self.conn, self.cfg, current.migration_id
        for step in m.tidy_steps():
            self.step(step)
        self.reverify(m, current)
        verified = journal_verification(conn, self.config, mid)
        self.result.rows_moved = verified["rows"]
        self.result.verified = verified
        if verified["mismatches"]:
            raise RuntimeError(
                f"{cfg.name}: migration {mid}: {'; '.join(verified['mismatches'])}. Every row the application "
                f"wrote is in the table; the old DEFAULT is kept as {m.text(m.old_name)} for comparison "
                "(docs/runbook.md, 'Migration not verified')"
            )
        self.progress(
            f"{cfg.name}: verified {verified['rows']:,} rows in {verified['intervals']} interval(s) at the instant "
            "of the swap: counts and checksums conserved"
        )
        if finish:
            drop_old_default(conn, self.config, m, current, verified)
            self.progress(f"{cfg.name}: dropped the old DEFAULT {m.text(m.old_name)}")
        else:
            self.result.outcome = "swapped"  # the caller gates, then calls finish_migration

    def wait_for_old_snapshots(self, mid: int) -> bool:
        """REPEATABLE READ / SERIALIZABLE transactions whose snapshot predates the last copy batch cannot see the copies:
        after the swap they would find the moved intervals empty. Wait for them to end (bounded), else stop here."""
        # other roles' backend_xmin / xact_start are NULL without pg_read_all_stats
        require_session_visibility(self.conn)
        limit = min(self.deadline, time.monotonic() + self.snapshot_wait)
        while True:
            old = self.conn.execute(
                sql.SQL(
                    """SELECT pid, usename, state, extract(epoch FROM clock_timestamp() - xact_start)::int, left(query, 200)
                   FROM pg_stat_activity
                   WHERE backend_type = 'client backend' AND datname = current_database() AND pid <> pg_backend_pid()
                     AND backend_xmin IS NOT NULL AND xact_start < (SELECT updated_at FROM {}.migrations WHERE migration_id = %s)
                     -- a snapshot kept across statements: idle in a transaction, or not its first statement
                     -- (a single READ COMMITTED statement that reads the table holds a lock the swap waits for)
                     AND (state LIKE 'idle in transaction%%' OR query_start > xact_start)
                     AND application_name NOT LIKE 'pgmaint%%'"""
                ).format(self.state),
                [mid],
            ).fetchall()
            if not old:
                return True
            if time.monotonic() >= limit:
                who = "; ".join(f"pid {p} ({u}, {s}, transaction {age}s old): {q!r}" for p, u, s, age, q in old)
                self._stop_early(
                    None,
                    f"waiting for {len(old)} transaction(s) holding snapshots older than the copy: {who}. "
                    "They would not see the moved rows after the swap; the copy is complete and kept "
                    "up to date by the mirror trigger: run again once they have ended",
                )
                return False
            time.sleep(0.2)

    def _stop_early(self, current, reason: str) -> None:
        self.result.outcome = "incomplete"
        self.result.skipped_reason = reason
        self.result.rows_remaining = (
            sum(r.rows for r in (current.plan.move if current else ())) or self.result.rows_remaining
        )
        self.progress(f"{self.cfg.name}: {reason}")

    def abandon(self, facts: TableFacts, current: OpenMigration, why: str) -> None:
        """Before the swap only: remove what the migration built. The DEFAULT has kept every row throughout."""
        m = self.migration(facts, current.plan)
        self.progress(f"{self.cfg.name}: abandoning migration {current.migration_id} ({why}); removing its copies")
        for step in m.abandon_steps():
            self.step(step)
        self.set(current.migration_id, phase="abandoned", summary={"abandoned": why})


@dataclass(frozen=True)
class WriteMarks:
    """The DEFAULT's write mark (`DefaultPartitionMigration.write_mark`: the mirror triggers' catalog rows '|' the write
    counter) at the check before the swap and at the swap; None where the mirror was not in place as built."""

    checked: str | None
    at_swap: str | None

    @property
    def unwritten(self) -> bool:
        """No write reached the DEFAULT between the check and the swap."""
        return self.checked is not None and self.checked == self.at_swap

    @property
    def mirror_untouched(self) -> bool:
        """Only the write counter moved: the mirror's triggers were neither disabled nor replaced in between (their
        catalog rows are the same versions), so every write since was logged with its key."""
        return (
            self.checked is not None
            and self.at_swap is not None
            and self.checked.split("|", 1)[0] == self.at_swap.split("|", 1)[0]
        )

    @property
    def count_at_check(self) -> int | None:
        """The write counter's value at the check."""
        try:
            return int(self.checked.rsplit("|", 1)[1]) if self.checked else None
        except (IndexError, ValueError):
            return None


def _adopt_both(verifier: CutVerifier, keeper: CutVerifier | None):
    def then(cursor):
        row = cursor.fetchone()
        for v in (verifier, keeper):
            if v is not None:
                v.adopt_row(row)

    return then


def journal_verification(conn, config: Config, mid: int) -> dict:
    """The figures taken at the swap: per interval, the old DEFAULT's rows equal the rows in their new homes."""
    state = sql.Identifier(config.state_schema)
    verified_at = conn.execute(
        sql.SQL("SELECT verified_at FROM {}.migrations WHERE migration_id = %s").format(state), [mid]
    ).fetchone()[0]
    rows = conn.execute(
        sql.SQL("""
        SELECT coalesce(b.bucket, m.bucket), b.rows, m.rows, b.checksum = m.checksum
        FROM (SELECT * FROM {s}.migration_figures WHERE migration_id = %(m)s AND kind = 'before') b
        FULL JOIN (SELECT * FROM {s}.migration_figures WHERE migration_id = %(m)s AND kind = 'moved') m USING (bucket)
        ORDER BY 1""").format(s=state),
        {"m": mid},
    ).fetchall()
    mismatches = [
        f"{bucket}: {before or 0} rows in the DEFAULT at the swap, {moved or 0} in their new partitions"
        f"{'' if same else ', checksums differ'}"
        for bucket, before, moved, same in rows
        if before != moved or not same
    ]
    if verified_at is None and not mismatches:
        mismatches = [
            "the run stopped between the swap and its verification, so the rows could not be counted at the "
            "instant of the swap"
        ]
    return {"intervals": len(rows), "rows": sum(r[1] or 0 for r in rows), "mismatches": mismatches}


def drop_old_default(
    conn, config: Config, m: DefaultPartitionMigration, current: OpenMigration, verified: dict
) -> None:
    """Drop the detached old DEFAULT (no lock on the parent) through the lock budget: an autovacuum or a reader may hold it.

    It must still hold exactly what it held at the swap (nobody wrote to it behind our back). The swap made it
    read-only (ALWAYS triggers that refuse every write and TRUNCATE) and journalled their catalog rows: if they are
    untouched, under the DROP's own lock, nothing can have changed and nothing is read. Otherwise (a trigger was
    disabled or dropped, or the table rewritten, or the swap was made by an earlier version) the old DEFAULT is read
    again and compared with the figures taken at the swap."""
    state, mid = sql.Identifier(config.state_schema), current.migration_id
    old = m.q(m.old_name)
    executor = Executor(conn, config.lock_budget, on_event=lambda msg: log.warning("%s", msg))
    figures = figures_query(m.facts, m.cfg, config.timezone, current.checksum, m.columns, [old])
    tail = (
        Statement(sql.SQL("DROP TABLE {}").format(old), f"ACCESS EXCLUSIVE on the detached {m.old_name} only (held)"),
        Statement(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(m.q(m.read_only_function)), "none (our function)"),
        Statement(
            sql.SQL(
                "UPDATE {}.migrations SET phase = 'done', finished_at = clock_timestamp(), summary = summary || {}::jsonb "
                "WHERE migration_id = {}"
            ).format(state, sql.Literal(to_json(verified)), sql.Literal(mid)),
            "ROW EXCLUSIVE on the journal (same transaction as the drop)",
        ),
    )
    lock = Statement(
        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(old),
        f"ACCESS EXCLUSIVE on the detached {m.old_name} only (nothing can write to it until the drop commits)",
    )
    unchanged = Statement(
        sql.SQL(
            "SELECT 1 WHERE ({now}) IS DISTINCT FROM (SELECT summary->>'read_only_mark' FROM {s}.migrations "
            "WHERE migration_id = {m}) OR ({now}) IS NULL"
        ).format(now=m.read_only_mark(m.old_name), s=state, m=sql.Literal(mid)),
        "none (catalog read: the read-only triggers the swap created stand untouched)",
        expect_no_rows=True,
    )
    untouched = Step(
        "drop_old_default", m.text(m.old_name), (lock, unchanged) + tail, lock_targets=(m.text(m.old_name),)
    )
    # Its indexes first, one transaction each, while it is proven unchanged: DROP frees a relation's files when it
    # commits, and on a disk that discards freed blocks at once every fsync of that file system (the application's
    # commits) waits for the discard; a few smaller frees hold them for less than one large one (docs/deploy.md).
    indexes_first = [
        Step("drop_old_default_index", name, (lock, unchanged, drop), lock_targets=(m.text(m.old_name),))
        for name, drop in _old_default_indexes(conn, m)
    ]
    reread = Step(
        "drop_old_default",
        m.text(m.old_name),
        (
            lock,
            Statement(
                sql.SQL(
                    "SELECT 1 FROM ({f}) AS now FULL JOIN (SELECT bucket, rows, checksum FROM {s}.migration_figures "
                    "WHERE migration_id = {m} AND kind = 'before') AS was USING (bucket) "
                    "WHERE now.rows IS DISTINCT FROM was.rows OR now.checksum IS DISTINCT FROM was.checksum"
                ).format(f=figures, s=state, m=sql.Literal(mid)),
                f"(held) reads {m.old_name}: unchanged since the swap",
                expect_no_rows=True,
                scan=True,
            ),
        )
        + tail,
        lock_targets=(m.text(m.old_name),),
    )
    try:
        try:
            for step in indexes_first:
                executor.run(step)
                failpoint("after_drop_old_default_index")
            executor.run(untouched)
        except StepFailed as exc:
            if not isinstance(exc.__cause__, GuardFailed):
                raise
            log.warning(
                "%s: the read-only guard of %s is not as the swap left it; reading it to compare with the figures "
                "taken at the swap",
                m.cfg.name,
                m.text(m.old_name),
            )
            executor.run(reread)
    except StepFailed as exc:
        if isinstance(exc.__cause__, GuardFailed):
            raise RuntimeError(
                f"not dropping {m.text(m.old_name)}: it no longer holds what it held at the swap (someone "
                "wrote to the detached old DEFAULT), so the figures proving conservation no longer describe "
                "it; kept for a person to compare (docs/runbook.md, 'Migration not verified')"
            ) from exc
        raise RuntimeError(
            f"{exc} (every row is in its partition and was verified; only the detached {m.text(m.old_name)} "
            "is left: the next run drops it)"
        ) from exc


def _old_default_indexes(conn, m: DefaultPartitionMigration) -> list[tuple[str, Statement]]:
    """(name, the statement dropping it) for each index of the detached old DEFAULT, largest first; an index that
    backs a constraint (its primary key, a unique or exclusion constraint) goes with its constraint."""
    rows = conn.execute(
        "SELECT n.nspname, r.relname, c.conname FROM pg_index i JOIN pg_class r ON r.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = r.relnamespace "
        "LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid "
        "WHERE i.indrelid = to_regclass(%s) ORDER BY pg_relation_size(i.indexrelid) DESC, r.relname",
        [m.text(m.old_name)],
    ).fetchall()
    old, lock = m.q(m.old_name), f"ACCESS EXCLUSIVE on the detached {m.old_name} only (held)"
    return [
        (
            quoted(schema, index),
            Statement(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(old, sql.Identifier(constraint)), lock)
            if constraint
            else Statement(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, index)), lock),
        )
        for schema, index, constraint in rows
    ]


def finish_migration(conn, config: Config, cfg: TableConfig) -> dict:
    """After the gate: check the figures once more and drop the old DEFAULT. Idempotent."""
    with runner_lock(conn, quoted(cfg.schema, cfg.table)):
        current = open_migration(conn, config, cfg)
        if current is None:
            return {"table": cfg.name, "finished": None}
        if current.phase != "swapped":
            raise RuntimeError(
                f"{cfg.name}: migration {current.migration_id} is {current.phase}, not swapped; run the migration again"
            )
        facts = _facts(conn, config, cfg)
        m = statements_for(conn, config, cfg, facts, current.plan)
        verified = journal_verification(conn, config, current.migration_id)
        if verified["mismatches"]:
            raise RuntimeError(f"{cfg.name}: not dropping the old DEFAULT: " + "; ".join(verified["mismatches"]))
        drop_old_default(conn, config, m, current, verified)
        log.info("%s: dropped the old DEFAULT %s (migration %s)", cfg.name, m.text(m.old_name), current.migration_id)
        return {"table": cfg.name, "finished": current.migration_id, "verified": verified}


__all__ = [
    "MigrationPlan",
    "MigrationResult",
    "RangeRows",
    "finish_migration",
    "migrate_table",
    "open_migration",
    "plan_migration",
    "survey_default",
]
