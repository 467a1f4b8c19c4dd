"""The one place that executes maintenance statements.

Every step runs in its own short transaction with `lock_timeout` and
`statement_timeout` set (and read back: a step is refused if either is 0).
A lock timeout rolls the step back, records who held the lock, sleeps with
exponential backoff and full jitter, and tries again with a slightly longer
lock timeout (never above the budget's cap) until the total budget is spent;
then it fails loudly, naming the blocking PIDs and their queries.

Waiting for a lock is what hurts others: while our ALTER waits for ACCESS
EXCLUSIVE, every later query on the table queues behind it. So the per-try
lock timeout is the worst stall we can inflict, and it is kept <= 200 ms.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg import errors, sql

from include.pgmaint.config import LockBudget

log = logging.getLogger("pgmaint.execute")


@dataclass(frozen=True)
class Statement:
    sql: sql.Composable
    lock: str  # the lock it takes, in words, shown in dry runs and logs
    scan: bool = False  # reads a table (under a weak lock): gets the longer scan timeout
    expect_no_rows: bool = False  # a guard query: any row returned fails the step
    then: Callable[[object], None] | None = None  # called with the cursor, inside the step's transaction
    params: tuple | None = None  # values bound to the statement's placeholders (reads such as probes)


@dataclass(frozen=True)
class Step:
    action: str  # create_table, exclude_from_default, validate_exclusion, attach, detach, drop, ...
    target: str  # the partition (or constraint) it is about
    statements: tuple[Statement, ...]
    lock_targets: tuple[str, ...] = ()  # qualified names whose lock holders we report when blocked
    transactional: bool = True  # DETACH ... CONCURRENTLY cannot run inside a transaction block
    strong_lock: bool = False  # holds ACCESS EXCLUSIVE on a busy table: run under the circuit breaker
    # Send consecutive plain statements (no guard, no callback, no scan) in one round trip: for steps that
    # hold a strong lock across many catalog-only statements, network and scheduling latency would
    # otherwise add up under the lock.
    batched: bool = False

    def render(self, conn=None) -> list[tuple[str, str]]:
        return [(st.sql.as_string(conn), st.lock) for st in self.statements]


@dataclass
class Blocker:
    pid: int
    mode: str
    relation: str
    state: str | None
    xact_seconds: float | None
    query: str | None

    def __str__(self) -> str:
        age = f"{self.xact_seconds:.1f}s" if self.xact_seconds is not None else "?"
        return (
            f"pid {self.pid} holds {self.mode} on {self.relation} ({self.state}, transaction age {age}): {self.query!r}"
        )


@dataclass
class StepResult:
    step: Step
    attempts: int
    seconds: float
    blockers: list[Blocker] = field(default_factory=list)


class StepFailed(Exception):
    def __init__(self, step: Step, message: str, attempts: int = 1, blockers: list[Blocker] | None = None):
        self.step, self.attempts, self.blockers = step, attempts, blockers or []
        super().__init__(message)


class LockBudgetExhausted(StepFailed):
    """Gave up waiting for a lock within the budget; names who held it."""


class GuardFailed(Exception):
    """A guard query of a step returned a row: the step's precondition does not hold."""


class UnguardedStatement(RuntimeError):
    """Refused: a statement would have run without lock_timeout / statement_timeout."""


_BLOCKERS_SQL = """
SELECT DISTINCT ON (a.pid) a.pid, l.mode, l.relation::regclass::text, a.state,
       extract(epoch FROM clock_timestamp() - a.xact_start)::float8, left(a.query, 400)
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.granted AND l.locktype = 'relation' AND a.pid <> pg_backend_pid()
  AND l.relation IN (SELECT to_regclass(t) FROM unnest(%s::text[]) AS t)
ORDER BY a.pid, a.xact_start
"""


def find_blockers(conn, relations: tuple[str, ...]) -> list[Blocker]:
    """Sessions holding locks on `relations` right now (run after a lock timeout)."""
    if not relations:
        return []
    try:
        rows = conn.execute(_BLOCKERS_SQL, [list(relations)]).fetchall()
    except psycopg.Error as exc:  # diagnosis must never hide the original failure
        log.warning("could not list lock holders: %s", exc)
        return []
    return [Blocker(*row) for row in rows]


def _plain(st: Statement) -> bool:
    return not (st.scan or st.expect_no_rows or st.then is not None or st.params is not None)


def _batches(statements: tuple[Statement, ...]) -> list[Statement]:
    """Consecutive plain statements joined into one (sent as one simple query: a statement with bound
    parameters is never plain); the first statement of a step (its lock request) always goes alone, so a lock
    timeout still names what waited."""
    out: list[Statement] = []
    for i, st in enumerate(statements):
        if i > 1 and _plain(st) and _plain(statements[i - 1]) and out:
            prev = out[-1]
            out[-1] = Statement(sql.SQL("; ").join([prev.sql, st.sql]), f"{prev.lock}; {st.lock}")
        else:
            out.append(st)
    return out


class Executor:
    """Runs `Step`s under a `LockBudget`. Needs an autocommit connection."""

    def __init__(
        self,
        conn: psycopg.Connection,
        budget: LockBudget,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        on_event: Callable[[str], None] | None = None,
        breaker=None,
    ):
        if budget.lock_timeout_ms <= 0 or budget.max_lock_timeout_ms <= 0 or budget.statement_timeout_ms <= 0:
            raise UnguardedStatement("refusing to execute without positive lock_timeout and statement_timeout")
        if not conn.autocommit:
            raise ValueError("Executor needs an autocommit connection: it opens one short transaction per step")
        self.conn, self.budget, self.sleep, self.breaker = conn, budget, sleep, breaker
        self.rng = rng or random.Random()
        self.on_event = on_event or (lambda message: log.info("%s", message))

    def run(self, step: Step) -> StepResult:
        budget = self.budget
        started = time.monotonic()
        attempt, blockers = 0, []
        while True:
            attempt += 1
            lock_ms = min(budget.max_lock_timeout_ms, budget.lock_timeout_ms * 2 ** (attempt - 1))
            tripped = None
            try:
                if step.strong_lock and self.breaker is not None:
                    with self.breaker.watch(self.conn.info.backend_pid):
                        try:
                            self._attempt(step, lock_ms)
                        finally:
                            tripped = self.breaker.tripped
                else:
                    self._attempt(step, lock_ms)
                return StepResult(step, attempt, time.monotonic() - started, blockers)
            except (errors.LockNotAvailable, errors.QueryCanceled) as exc:
                if isinstance(exc, errors.QueryCanceled) and not tripped:
                    raise StepFailed(
                        step, f"{step.action} {step.target}: cancelled by statement_timeout: {exc}", attempt
                    ) from exc
                if tripped:
                    self.on_event(f"{step.action} {step.target}: circuit breaker cancelled us: {tripped}")
                blockers = find_blockers(self.conn, step.lock_targets) or blockers
                delay = self.rng.uniform(0, budget.backoff(attempt))
                elapsed = time.monotonic() - started
                if elapsed + delay > budget.total_seconds:
                    held = "; ".join(map(str, blockers)) or "no holder visible any more (lock released meanwhile)"
                    raise LockBudgetExhausted(
                        step,
                        f"{step.action} {step.target}: gave up after {attempt} tries in {elapsed:.1f}s "
                        f"(lock_timeout {lock_ms} ms per try, budget {budget.total_seconds:.0f}s). "
                        f"Blocked by: {held}. Nothing was changed by this step. "
                        "Find out why that session holds the lock (pg_stat_activity), let it finish or end it, then rerun.",
                        attempt,
                        blockers,
                    ) from None
                self.on_event(
                    f"{step.action} {step.target}: lock not granted within {lock_ms} ms (try {attempt}); "
                    f"held by {', '.join(f'pid {b.pid}' for b in blockers) or 'unknown'}; retrying in {delay:.2f}s"
                )
                self.sleep(delay)
            except GuardFailed as exc:
                raise StepFailed(step, f"{step.action} {step.target}: {exc}", attempt) from exc
            except psycopg.Error as exc:
                raise StepFailed(
                    step, f"{step.action} {step.target}: {type(exc).__name__}: {exc}".strip(), attempt
                ) from exc

    def _attempt(self, step: Step, lock_ms: int) -> None:
        conn = self.conn
        if step.transactional:
            with conn.transaction():
                self._set_timeouts(lock_ms, self.budget.statement_timeout_ms, local=True)
                for st in _batches(step.statements) if step.batched else step.statements:
                    self._execute(st, local=True)
            return
        # Outside a transaction block: session-level settings, restored afterwards.
        try:
            self._set_timeouts(lock_ms, self.budget.statement_timeout_ms, local=False)
            for st in step.statements:
                self._execute(st, local=False)
        finally:
            if not conn.broken:
                conn.execute("RESET lock_timeout")
                conn.execute("RESET statement_timeout")

    def _set_timeouts(self, lock_ms: int, statement_ms: int, *, local: bool) -> None:
        row = self.conn.execute(
            "SELECT set_config('lock_timeout', %s, %s), set_config('statement_timeout', %s, %s)",
            [f"{lock_ms}ms", local, f"{statement_ms}ms", local],
        ).fetchone()
        if row is None or row[0] in ("0", "") or row[1] in ("0", ""):
            raise UnguardedStatement(
                f"timeouts not in effect (lock_timeout={row and row[0]}, statement_timeout={row and row[1]})"
            )

    def _execute(self, st: Statement, *, local: bool) -> None:
        conn = self.conn
        if st.scan:
            conn.execute("SELECT set_config('statement_timeout', %s, %s)", [f"{self.budget.scan_timeout_ms}ms", local])
        cur = conn.execute(st.sql, st.params)
        if st.expect_no_rows and cur.description is not None and cur.fetchone() is not None:
            raise GuardFailed(f"precondition failed: {st.sql.as_string(conn)} returned a row")
        if st.then is not None:
            st.then(cur)
        if st.scan:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, %s)", [f"{self.budget.statement_timeout_ms}ms", local]
            )
