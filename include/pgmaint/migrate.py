"""Move rows out of a DEFAULT partition online: `DefaultPartitionMigration`.

Design: swap the DEFAULT, then drain it (research/online_partitioning.md §4, option C).

1. Survey (ACCESS SHARE only): which intervals the DEFAULT holds rows for, and how many.
2. Prepare (no lock on anything in use): an empty partition table for every in-window
   interval (LIKE parent INCLUDING ALL + bound CHECK) and an empty replacement DEFAULT.
3. Swap, one catalog-only transaction under the lock budget and the circuit breaker:
   DETACH the old DEFAULT, ATTACH the new partitions (no DEFAULT attached at that moment,
   so nothing is scanned), ATTACH the empty replacement as DEFAULT, and journal the
   migration in the same transaction. The parent holds ACCESS EXCLUSIVE for milliseconds.
4. Drain: the old DEFAULT is now a standalone table nobody writes to. Each batch is ONE
   statement — DELETE a page range of it RETURNING the rows, INSERT them through the
   parent (they land in their new partitions), add their count and checksum per interval
   to the journal — so a batch is atomic: killed at any point, rows are either still in
   the drain table or in their partition, never both, never neither. Pages are drained
   from the end backwards, so the newest rows become visible first.
5. Verify per interval: rows and checksum moved == rows and checksum the drain table held;
   the drain table is empty; then drop it.

What readers see: from the swap until a row's batch commits, that row is not visible
through the parent (it sits in the drain table); every other row is. Writers are never
blocked beyond the swap's milliseconds; their new rows land in the new partitions (or in
the new DEFAULT for intervals still without one), never lost.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable

from psycopg import errors, sql

from include.pgmaint import ddl
from include.pgmaint.catalog import Range, TableFacts, read_catalog
from include.pgmaint.config import Config, TableConfig
from include.pgmaint.execute import Executor, Statement, Step, StepFailed
from include.pgmaint.guards import CircuitBreaker, TableBusy, preflight, quoted, runner_lock
from include.pgmaint.maintenance import RunContext
from include.pgmaint.plan import (CreatePartition, desired_ranges, fit_identifier, name_choice, partition_name, retention_cutoff,
                                  timeline, to_utc)
from include.pgmaint.state import Journal, ensure_state_schema, to_json

log = logging.getLogger("pgmaint.migrate")
PROGRESS_EVERY_SECONDS = 10.0


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
    outcome: str = "success"  # success | failed | skipped | dry_run | incomplete (stopped at max_minutes) | drained (not finished)
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

    def as_dict(self) -> dict:
        return asdict(self)


def failpoint(name: str) -> None:
    """Fault injection for the crash-safety tests: `PGMAINT_FAILPOINT=<name>` kills this process here, like kill -9."""
    if os.environ.get("PGMAINT_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


# --- survey & plan -------------------------------------------------------------------------------


def bucket_expression(facts: TableFacts, cfg: TableConfig, tz: str, alias: str | None = None) -> sql.Composable:
    """The start of the partition interval a row's key falls in, computed by PostgreSQL."""
    key = sql.Identifier(alias, facts.key_column) if alias else sql.Identifier(facts.key_column)
    unit = sql.Literal(cfg.interval.unit)
    if facts.key_type == "timestamp with time zone":
        return sql.SQL("date_trunc({}, {}, {})").format(unit, key, sql.Literal(tz))
    return sql.SQL("date_trunc({}, {}::timestamp)").format(unit, key)  # wall-clock keys: their own clock


def checksum_method(conn, facts: TableFacts) -> str:
    """'record' when every column type can be hashed as a value (about 2.7x cheaper than hashing
    the row's text form), else 'text'. Probed on an all-NULL row: PostgreSQL looks up every
    column's hash function even for NULL values."""
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SELECT hash_record_extended(json_populate_record(NULL::{}, '{{}}'), 0)").format(
                sql.Identifier(facts.schema, facts.table)))
        return "record"
    except errors.UndefinedFunction:
        return "text"


def checksum_expression(method: str, alias: str) -> sql.Composable:
    """Order-independent checksum term of one row (`sum()` it); `method` from the migration journal."""
    if method == "record":
        return sql.SQL("hash_record_extended({}, 0)").format(sql.Identifier(alias))
    if method == "text":
        return sql.SQL("hashtextextended({}::text, 0)").format(sql.Identifier(alias))
    raise ValueError(f"unknown checksum method {method!r}")


def survey_default(conn, facts: TableFacts, cfg: TableConfig, tz: str, timeout_ms: int) -> list[tuple[datetime | None, int]]:
    """(interval start, rows) for every interval the DEFAULT holds rows for. Reads under ACCESS SHARE."""
    query = sql.SQL("SELECT {b} AS bucket, count(*) FROM ONLY {d} GROUP BY 1 ORDER BY 1 NULLS FIRST").format(
        b=bucket_expression(facts, cfg, tz), d=sql.Identifier(facts.schema, facts.default.name))
    with conn.transaction():
        conn.execute("SELECT set_config('statement_timeout', %s, true)", [f"{timeout_ms}ms"])
        rows = conn.execute(query).fetchall()
    return [(_on_timeline(b), n) for b, n in rows]


def _on_timeline(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def plan_migration(cfg: TableConfig, facts: TableFacts, survey: list[tuple[datetime | None, int]], now: datetime,
                   tz: str, move_out_of_window: bool = False) -> MigrationPlan:
    """Pure: which surveyed intervals get a partition, which are left (and why)."""
    now_t, tz_t = timeline(facts, now, tz)
    horizon = desired_ranges(cfg, now_t, tz_t)[-1][1].upper
    cutoff = retention_cutoff(cfg, now_t, tz_t)
    taken = {p.name for p in facts.partitions} | {facts.default.name}
    name_format = name_choice(cfg, facts, tz_t).format
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


# --- the steps -----------------------------------------------------------------------------------


class DefaultPartitionMigration:
    """Statements of one migration of one table's DEFAULT partition."""

    def __init__(self, config: Config, cfg: TableConfig, facts: TableFacts, plan: MigrationPlan, checksum: str = "text"):
        self.config, self.cfg, self.facts, self.plan, self.checksum = config, cfg, facts, plan, checksum
        self.tz = timeline(facts, datetime.now(timezone.utc), config.timezone)[1]
        self.parent = sql.Identifier(facts.schema, facts.table)
        self.default_name = facts.default.name
        self.next_name = fit_identifier(facts.default.name, "_pgmaint_next")
        self.drain_name = fit_identifier(facts.default.name, "_pgmaint_drain")
        self.state = sql.Identifier(config.state_schema)

    def _q(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.facts.schema, name)

    def _text(self, name: str) -> str:
        return quoted(self.facts.schema, name)

    def prepare_steps(self) -> list[Step]:
        creates = tuple(CreatePartition(r.partition, r.range, r.partition in self.facts.leftovers) for r in self.plan.move)
        prepare, _, _ = ddl.create_steps(replace(self.facts, default=None), creates, self.tz)
        nxt = self._q(self.next_name)
        prepare.append(Step("create_next_default", self.next_name, (
            *ddl.partition_like_statements(self.facts, self.next_name, if_not_exists=True),
            Statement(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(nxt),
                      f"ACCESS SHARE on {self.next_name} (must be empty: it becomes the DEFAULT)", expect_no_rows=True),
        ), lock_targets=(self._text(self.facts.table),)))
        return prepare

    def swap_step(self) -> Step:
        f, key_type = self.facts, self.facts.key_type
        statements = [
            Statement(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(self.parent, self._q(self.default_name)),
                      f"ACCESS EXCLUSIVE on {f.table} and {self.default_name} until commit (catalog only)"),
            Statement(sql.SQL("ALTER TABLE {} RENAME TO {}").format(self._q(self.default_name), sql.Identifier(self.drain_name)),
                      f"ACCESS EXCLUSIVE on {self.default_name} (already held; catalog only)"),
        ]
        for r in self.plan.move:
            statements.append(Statement(
                sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                    self.parent, self._q(r.partition), ddl.bound_literal(r.range.lower, key_type, self.tz),
                    ddl.bound_literal(r.range.upper, key_type, self.tz)),
                f"ACCESS EXCLUSIVE on {r.partition} (empty; its CHECK proves the bound; no DEFAULT attached, nothing scanned)"))
        statements += [
            Statement(sql.SQL("ALTER TABLE {} RENAME TO {}").format(self._q(self.next_name), sql.Identifier(self.default_name)),
                      f"ACCESS EXCLUSIVE on {self.next_name} (empty, not attached; catalog only)"),
            Statement(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} DEFAULT").format(self.parent, self._q(self.default_name)),
                      f"ACCESS EXCLUSIVE on the new, empty {self.default_name} (its check reads zero rows)"),
            # Draining leaves dead rows behind; an autovacuum on this doomed table would only compete
            # with the move and hold up its final DROP.
            Statement(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(self._q(self.drain_name)),
                      f"none beyond the above ({self.drain_name})"),
            Statement(sql.SQL("COMMENT ON TABLE {} IS {}").format(self._q(self.drain_name), sql.Literal(
                f"pgmaint: rows of {self.cfg.name}'s old DEFAULT partition being moved back; see {self.config.state_schema}.migrations")),
                      f"none beyond the above ({self.drain_name})"),
            Statement(sql.SQL("INSERT INTO {}.migrations (table_name, drain_table, partitions, checksum) "
                              "VALUES ({}, {}, {}::jsonb, {})").format(
                self.state, sql.Literal(self.cfg.name), sql.Literal(self._text(self.drain_name)),
                sql.Literal(to_json([r.partition for r in self.plan.move])), sql.Literal(self.checksum)),
                "ROW EXCLUSIVE on the journal (same transaction: the swap and its record commit together)"),
        ]
        targets = tuple(self._text(n) for n in (f.table, self.default_name))
        return Step("swap_default", self.default_name, tuple(statements), lock_targets=targets, strong_lock=True)


# --- draining ------------------------------------------------------------------------------------


def _columns(conn, facts: TableFacts) -> tuple[list[str], bool]:
    rows = conn.execute(
        """SELECT attname, attidentity FROM pg_attribute
           WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
           ORDER BY attnum""", [quoted(facts.schema, facts.table)]).fetchall()
    return [r[0] for r in rows], any(r[1] == "a" for r in rows)


class Drain:
    """Moves the drain table's rows back through the parent, one atomic batch statement at a time."""

    def __init__(self, conn, config: Config, cfg: TableConfig, facts: TableFacts, migration_id: int, drain_name: str):
        self.conn, self.config, self.cfg, self.facts = conn, config, cfg, facts
        self.migration_id = migration_id
        self.drain_table = quoted(facts.schema, drain_name)
        self.state = sql.Identifier(config.state_schema)
        self.bucket = bucket_expression(facts, cfg, config.timezone, alias="m")
        self.drain = sql.Identifier(facts.schema, drain_name)
        method = conn.execute(sql.SQL("SELECT checksum FROM {}.migrations WHERE migration_id = %s").format(self.state),
                              [migration_id]).fetchone()[0]
        self.checksum = checksum_expression(method, "m")
        columns, identity = _columns(conn, facts)
        cols = sql.SQL(", ").join(map(sql.Identifier, columns))
        m_cols = sql.SQL(", ").join(sql.Identifier("m", c) for c in columns)
        overriding = sql.SQL(" OVERRIDING SYSTEM VALUE") if identity else sql.SQL("")
        self.batch_sql = sql.SQL("""
WITH m AS (
    DELETE FROM {drain} WHERE ctid >= %(lo)s::tid AND ctid < %(hi)s::tid RETURNING *
), ins AS (
    INSERT INTO {parent} ({cols}){overriding} SELECT {m_cols} FROM m
), fig AS (
    SELECT coalesce({bucket}::text, 'NULL') AS bucket, count(*) AS n, sum({checksum}) AS ck
    FROM m GROUP BY 1
), tally AS (
    INSERT INTO {state}.migration_figures AS f (migration_id, kind, bucket, rows, checksum)
    SELECT %(mid)s, 'moved', bucket, n, ck FROM fig
    ON CONFLICT (migration_id, kind, bucket)
    DO UPDATE SET rows = f.rows + EXCLUDED.rows, checksum = f.checksum + EXCLUDED.checksum
)
UPDATE {state}.migrations
SET next_page = %(lo_page)s, rows_moved = rows_moved + (SELECT coalesce(sum(n), 0) FROM fig)::bigint, updated_at = clock_timestamp()
WHERE migration_id = %(mid)s
RETURNING rows_moved, (SELECT coalesce(sum(n), 0) FROM fig)::bigint
""").format(drain=self.drain, parent=sql.Identifier(facts.schema, facts.table), cols=cols, overriding=overriding,
            m_cols=m_cols, bucket=self.bucket, state=self.state, checksum=self.checksum)

    def _pages(self) -> int:
        return self.conn.execute(sql.SQL("SELECT (pg_relation_size({}) / current_setting('block_size')::int)::bigint")
                                 .format(sql.Literal(self.drain_table))).fetchone()[0]

    def record_before(self) -> tuple[int, int]:
        """Figures of the drain table before any row moves, and its size in pages (idempotent)."""
        done = self.conn.execute(sql.SQL("SELECT total_pages, (SELECT coalesce(sum(rows), 0) FROM {s}.migration_figures "
                                         "WHERE migration_id = %(m)s AND kind = 'before') FROM {s}.migrations WHERE migration_id = %(m)s")
                                 .format(s=self.state), {"m": self.migration_id}).fetchone()
        if done[0] is not None:
            return int(done[0]), int(done[1])
        with self.conn.transaction():
            self.conn.execute("SELECT set_config('statement_timeout', %s, true)", [f"{self.config.lock_budget.scan_timeout_ms}ms"])
            bucket = bucket_expression(self.facts, self.cfg, self.config.timezone, alias="m")
            self.conn.execute(sql.SQL(
                "INSERT INTO {s}.migration_figures (migration_id, kind, bucket, rows, checksum) "
                "SELECT %(m)s, 'before', coalesce({b}::text, 'NULL'), count(*), sum({ck}) "
                "FROM {d} AS m GROUP BY 3").format(s=self.state, b=bucket, d=self.drain, ck=self.checksum),
                {"m": self.migration_id})
            pages = self._pages()
            total = self.conn.execute(sql.SQL("UPDATE {s}.migrations SET total_pages = %(p)s, next_page = %(p)s "
                                              "WHERE migration_id = %(m)s RETURNING (SELECT coalesce(sum(rows), 0) FROM {s}.migration_figures "
                                              "WHERE migration_id = %(m)s AND kind = 'before')").format(s=self.state),
                                      {"p": pages, "m": self.migration_id}).fetchone()[0]
        return int(pages), int(total)

    def run(self, *, batch_rows: int, deadline: float, progress: Callable[[str], None]) -> tuple[int, bool]:
        """Drain until done or `deadline` (monotonic). Returns (rows moved by this call, finished)."""
        total_pages, before_rows = self.record_before()
        next_page, moved_total = self.conn.execute(
            sql.SQL("SELECT next_page, rows_moved FROM {}.migrations WHERE migration_id = %s").format(self.state),
            [self.migration_id]).fetchone()
        rows_per_page = max(1.0, before_rows / max(total_pages, 1))
        pages = max(1, int(batch_rows / rows_per_page))
        started = last_report = time.monotonic()
        moved_here = 0
        while next_page > 0:
            if time.monotonic() >= deadline:
                return moved_here, False
            lo_page = max(0, next_page - pages)
            t0 = time.monotonic()
            moved_total, n = self._batch(lo_page, next_page)
            if moved_total > 0:
                failpoint("after_batch")
            took = time.monotonic() - t0
            moved_here += n
            next_page = lo_page
            # Keep each batch short (~0.25-1 s) and within batch_rows: a batch is one transaction.
            if took > 1.0 and pages > 1:
                pages = max(1, pages // 2)
            elif took < 0.25 and pages * rows_per_page * 2 <= batch_rows:
                pages *= 2
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY_SECONDS or next_page == 0:
                rate = moved_here / max(now - started, 1e-6)
                remaining = max(0, before_rows - moved_total)
                eta = remaining / rate if rate > 0 else float("inf")
                progress(f"{self.cfg.name}: moved {moved_total:,} of {before_rows:,} rows ({remaining:,} remaining), "
                         f"{rate:,.0f} rows/s, ETA {eta:,.0f}s")
                last_report = now
        # Rows written into the drain table by name after the swap would sit below no page mark: sweep once more.
        leftover = self._pages()
        if self.conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(self.drain)).fetchone()[0]:
            self.conn.execute(sql.SQL("UPDATE {}.migrations SET next_page = %s WHERE migration_id = %s").format(self.state),
                              [leftover, self.migration_id])
            more, finished = self.run(batch_rows=batch_rows, deadline=deadline, progress=progress)
            return moved_here + more, finished
        return moved_here, True

    def _batch(self, lo_page: int, hi_page: int, tries: int = 5) -> tuple[int, int]:
        """One atomic batch. A lock timeout (someone's DDL on the parent) is retried with backoff, then raised."""
        budget = self.config.lock_budget
        for attempt in range(1, tries + 1):
            try:
                with self.conn.transaction():
                    self.conn.execute("SELECT set_config('statement_timeout', %s, true)", [f"{budget.scan_timeout_ms}ms"])
                    moved_total, n = self.conn.execute(self.batch_sql, {
                        "lo": f"({lo_page},0)", "hi": f"({hi_page},0)", "lo_page": lo_page, "mid": self.migration_id}).fetchone()
                    if moved_total > 0:
                        failpoint("inside_batch")  # the batch ran but did not commit
                return moved_total, n
            except errors.LockNotAvailable:
                if attempt == tries:
                    raise
                delay = random.uniform(0, min(budget.backoff_cap_seconds, budget.backoff_base_seconds * 2 ** attempt))
                log.warning("%s: batch waited more than the lock timeout (try %d); retrying in %.2fs", self.cfg.name, attempt, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def verify(self) -> dict:
        """Per interval: rows and checksum moved must equal what the drain table held."""
        rows = self.conn.execute(sql.SQL("""
            SELECT coalesce(b.bucket, m.bucket), b.rows, m.rows, b.checksum = m.checksum
            FROM (SELECT * FROM {s}.migration_figures WHERE migration_id = %(m)s AND kind = 'before') b
            FULL JOIN (SELECT * FROM {s}.migration_figures WHERE migration_id = %(m)s AND kind = 'moved') m USING (bucket)
            ORDER BY 1""").format(s=self.state), {"m": self.migration_id}).fetchall()
        mismatches = [f"{bucket}: {before or 0} rows before, {moved or 0} moved{'' if same else ', checksums differ'}"
                      for bucket, before, moved, same in rows if before != moved or not same]
        return {"intervals": len(rows), "rows": sum(r[1] or 0 for r in rows), "mismatches": mismatches}


# --- the run ---------------------------------------------------------------------------------------


def migrate_table(conn, conninfo: str, config: Config, cfg: TableConfig, *, now: datetime | None = None,
                  dry_run: bool = False, batch_rows: int = 50_000, max_minutes: float = 60.0,
                  move_out_of_window: bool = False, context: RunContext = RunContext(),
                  progress: Callable[[str], None] | None = None, finish: bool = True) -> MigrationResult:
    """Migrate one table's DEFAULT partition; resumes an interrupted migration first.

    `finish=False` stops after draining and verifying (outcome "drained"), leaving the empty old
    DEFAULT for `finish_migration` to drop once a data-quality gate has passed.
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
        run_id = journal.start_run("migration", cfg.name, dag_id=context.dag_id, dag_run_id=context.dag_run_id,
                                   task_id=context.task_id)
    try:
        if dry_run:
            _dry_run(conn, config, cfg, now, move_out_of_window, result)
        else:
            with runner_lock(conn, quoted(cfg.schema, cfg.table)):
                _migrate(conn, conninfo, config, cfg, now, batch_rows, deadline, move_out_of_window, result, journal,
                         run_id, progress, finish)
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
        outcome = {"incomplete": "success", "dry_run": "success", "drained": "success"}.get(result.outcome, result.outcome)
        journal.finish_run_safely(run_id, outcome, result.as_dict(), "\n".join(result.errors) or result.skipped_reason)
    progress(f"{cfg.name}: migration {result.outcome}: {result.rows_moved:,} rows moved into {len(result.partitions)} "
             f"partition(s) in {result.seconds:.1f}s ({result.rows_per_second:,.0f} rows/s)"
             + (f"; {result.rows_remaining:,} rows remain for the next run" if result.rows_remaining else "")
             + (f"; errors: {' | '.join(result.errors)}" if result.errors else ""))
    return result


def _facts(conn, config: Config, cfg: TableConfig) -> TableFacts:
    facts = read_catalog(conn, [cfg], config.timezone)[cfg.name]
    if not isinstance(facts, TableFacts):
        raise facts
    return facts


def _dry_run(conn, config, cfg, now, move_out_of_window, result: MigrationResult) -> None:
    facts = _facts(conn, config, cfg)
    if facts.default is None:
        result.left_in_default = []
        return
    survey = survey_default(conn, facts, cfg, config.timezone, config.lock_budget.scan_timeout_ms)
    plan = plan_migration(cfg, facts, survey, now, config.timezone, move_out_of_window)
    result.left_in_default = [{"range": r.label(), "rows": r.rows, "reason": r.reason} for r in plan.leave]
    result.rows_remaining = plan.rows_to_move
    result.partitions = [r.partition for r in plan.move]
    if not plan.move:
        return
    m = DefaultPartitionMigration(config, cfg, facts, plan)
    for step in m.prepare_steps() + [m.swap_step()]:
        for statement, lock in step.render(conn):
            result.statements.append({"step": step.action, "target": step.target, "sql": statement, "lock": lock})
    for r in plan.move:
        log.info("%s: [dry run] would move %d rows of %s into %s", cfg.name, r.rows, r.range, r.partition)
    for left in result.left_in_default:
        log.info("%s: [dry run] would leave %d rows (%s) in the DEFAULT: %s", cfg.name, left["rows"], left["range"], left["reason"])
    for s in result.statements:
        log.info("%s: [dry run] %s;  -- %s", cfg.name, s["sql"], s["lock"])
    log.info("%s: [dry run] then drain in batches: DELETE a page range of the old DEFAULT RETURNING rows, "
             "INSERT them through the parent, journal counts and checksums: one statement, one transaction per batch", cfg.name)


def _active_migration(conn, config: Config, cfg: TableConfig) -> tuple[int, str] | None:
    return conn.execute(sql.SQL("SELECT migration_id, drain_table FROM {}.migrations WHERE table_name = %s AND phase = 'draining'")
                        .format(sql.Identifier(config.state_schema)), [cfg.name]).fetchone()


def _migrate(conn, conninfo, config, cfg, now, batch_rows, deadline, move_out_of_window, result: MigrationResult,
             journal: Journal, run_id: int, progress, finish: bool) -> None:
    facts = _facts(conn, config, cfg)
    active = _active_migration(conn, config, cfg)
    if active is None:
        if facts.default is None:
            return
        survey = survey_default(conn, facts, cfg, config.timezone, config.lock_budget.scan_timeout_ms)
        plan = plan_migration(cfg, facts, survey, now, config.timezone, move_out_of_window)
        result.left_in_default = [{"range": r.label(), "rows": r.rows, "reason": r.reason} for r in plan.leave]
        if not plan.move:
            return
        check = preflight(conn, quoted(cfg.schema, cfg.table), config.preflight)
        if not check.ok:
            result.outcome, result.skipped_reason = "skipped", "preflight: " + "; ".join(check.problems)
            return
        m = DefaultPartitionMigration(config, cfg, facts, plan, checksum_method(conn, facts))
        breaker = CircuitBreaker(conninfo)
        executor = Executor(conn, config.lock_budget, breaker=breaker, on_event=lambda msg: log.warning("%s: %s", cfg.name, msg))
        for step in m.prepare_steps() + [m.swap_step()]:
            failpoint(f"before_{step.action}")
            began = datetime.now(timezone.utc)
            try:
                outcome = executor.run(step)
            except StepFailed as exc:
                journal.record_step(run_id, step, began, "failed", exc.attempts, str(exc), exc.blockers)
                raise
            journal.record_step(run_id, step, began, "success", outcome.attempts, None, outcome.blockers)
        failpoint("after_swap")
        progress(f"{cfg.name}: swapped the DEFAULT: {len(plan.move)} partition(s) attached, "
                 f"{plan.rows_to_move:,} rows to move back (peak sessions queued behind the swap: {breaker.peak_waiters})")
        active = _active_migration(conn, config, cfg)
        facts = _facts(conn, config, cfg)
    migration_id, drain_table = active
    drain_name = fit_identifier(facts.default.name, "_pgmaint_drain")
    if quoted(facts.schema, drain_name) != drain_table:
        raise RuntimeError(f"{cfg.name}: the journal's drain table {drain_table} is not {quoted(facts.schema, drain_name)}; "
                           "was the DEFAULT partition renamed during the migration? Resolve by hand (docs/runbook.md)")
    result.migration_id = migration_id
    result.partitions = conn.execute(sql.SQL("SELECT partitions FROM {}.migrations WHERE migration_id = %s").format(
        sql.Identifier(config.state_schema)), [migration_id]).fetchone()[0]
    drain = Drain(conn, config, cfg, facts, migration_id, drain_name)
    moved, finished = drain.run(batch_rows=batch_rows, deadline=deadline, progress=progress)
    result.rows_moved = moved
    state = sql.Identifier(config.state_schema)
    if not finished:
        before = conn.execute(sql.SQL("SELECT coalesce(sum(rows), 0) FROM {}.migration_figures WHERE migration_id = %s AND kind = 'before'")
                              .format(state), [migration_id]).fetchone()[0]
        total = conn.execute(sql.SQL("SELECT rows_moved FROM {}.migrations WHERE migration_id = %s").format(state), [migration_id]).fetchone()[0]
        result.rows_remaining = int(before - total)
        result.outcome = "incomplete"
        return
    verified = drain.verify()
    result.verified = verified
    if verified["mismatches"]:
        conn.execute(sql.SQL("UPDATE {}.migrations SET phase = 'failed', summary = %s::jsonb WHERE migration_id = %s").format(state),
                     [to_json(verified), migration_id])
        raise RuntimeError(f"{cfg.name}: rows not conserved, drain table {drain_table} kept: " + "; ".join(verified["mismatches"]))
    progress(f"{cfg.name}: verified {verified['rows']:,} rows in {verified['intervals']} interval(s): counts and checksums conserved")
    if finish:
        _drop_drain(conn, config, drain, verified)
        progress(f"{cfg.name}: dropped the emptied old DEFAULT {drain_table}")
    else:
        result.outcome = "drained"  # the caller gates, then calls finish_migration


def _drop_drain(conn, config: Config, drain: "Drain", verified: dict) -> None:
    """Drop the emptied old DEFAULT (standalone since the swap: no lock on the parent), through the
    executor's lock budget and retries: a running autovacuum only yields after deadlock_timeout."""
    state = sql.Identifier(config.state_schema)
    step = Step("drop_drain", drain.drain_table, (
        Statement(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(drain.drain),
                  f"ACCESS SHARE on {drain.drain_table} (must be empty)", expect_no_rows=True),
        Statement(sql.SQL("DROP TABLE {}").format(drain.drain), f"ACCESS EXCLUSIVE on {drain.drain_table} only"),
        Statement(sql.SQL("UPDATE {}.migrations SET phase = 'done', finished_at = clock_timestamp(), summary = {}::jsonb "
                          "WHERE migration_id = {}").format(state, sql.Literal(to_json(verified)), sql.Literal(drain.migration_id)),
                  "ROW EXCLUSIVE on the journal (same transaction as the drop)"),
    ), lock_targets=(drain.drain_table,))
    try:
        Executor(conn, config.lock_budget, on_event=lambda msg: log.warning("%s", msg)).run(step)
    except StepFailed as exc:
        raise RuntimeError(f"{exc} (every row was moved and verified; only the empty {drain.drain_table} "
                           "is left: the next run drops it)") from exc


def finish_migration(conn, config: Config, cfg: TableConfig) -> dict:
    """After the gate: verify once more and drop the emptied old DEFAULT. Idempotent."""
    with runner_lock(conn, quoted(cfg.schema, cfg.table)):
        active = _active_migration(conn, config, cfg)
        if active is None:
            return {"table": cfg.name, "finished": None}
        facts = _facts(conn, config, cfg)
        drain = Drain(conn, config, cfg, facts, active[0], fit_identifier(facts.default.name, "_pgmaint_drain"))
        if drain.conn.execute(sql.SQL("SELECT next_page FROM {}.migrations WHERE migration_id = %s").format(
                drain.state), [active[0]]).fetchone()[0] != 0:
            raise RuntimeError(f"{cfg.name}: migration {active[0]} has not finished draining; run the migration again")
        verified = drain.verify()
        if verified["mismatches"]:
            raise RuntimeError(f"{cfg.name}: rows not conserved: " + "; ".join(verified["mismatches"]))
        _drop_drain(conn, config, drain, verified)
        log.info("%s: dropped the emptied old DEFAULT %s (migration %s)", cfg.name, drain.drain_table, active[0])
        return {"table": cfg.name, "finished": active[0], "verified": verified}
