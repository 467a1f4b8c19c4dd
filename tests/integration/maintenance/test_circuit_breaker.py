"""The circuit breaker: while our statement waits for (or holds) a strong lock, sessions queueing
behind it make us cancel ourselves, back off and retry, instead of letting a queue build up."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg import sql

from include.pgmaint.config import LockBudget
from include.pgmaint.db import connect
from include.pgmaint.execute import Executor, LockBudgetExhausted, Statement, Step
from include.pgmaint.guards import CircuitBreaker

pytestmark = pytest.mark.pg


def test_queue_behind_our_lock_request_trips_the_breaker(pg_dsn, scratch_schema):
    table = sql.Identifier(scratch_schema, "busy")
    with connect(pg_dsn) as setup:
        setup.execute(sql.SQL("CREATE TABLE {} (id int)").format(table))
    holder = psycopg.connect(pg_dsn)  # a long report query keeps ACCESS SHARE
    holder.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
    holder_pid = holder.info.backend_pid

    # lock_timeout alone would let readers queue behind our ALTER for up to 200 ms per try;
    # the breaker cancels as soon as 2 sessions queue or one has waited 50 ms.
    budget = LockBudget(
        lock_timeout_ms=200,
        max_lock_timeout_ms=200,
        total_seconds=2.0,
        backoff_base_seconds=0.05,
        backoff_cap_seconds=0.2,
    )
    breaker = CircuitBreaker(pg_dsn, max_waiters=2, max_wait_ms=50, poll_seconds=0.01)
    events: list[str] = []
    waits: list[float] = []
    stop = threading.Event()

    def reader():
        with psycopg.connect(pg_dsn, autocommit=True) as r:
            while not stop.is_set():
                t0 = time.monotonic()
                r.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
                waits.append(time.monotonic() - t0)
                time.sleep(0.005)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    step = Step(
        "alter",
        "busy",
        (Statement(sql.SQL("ALTER TABLE {} ADD COLUMN note text").format(table), "ACCESS EXCLUSIVE on busy"),),
        lock_targets=(f'"{scratch_schema}"."busy"',),
        strong_lock=True,
    )
    try:
        with connect(pg_dsn, budget) as conn:
            executor = Executor(conn, budget, breaker=breaker, on_event=events.append)
            with pytest.raises(LockBudgetExhausted) as exhausted:
                executor.run(step)
    finally:
        stop.set()
        for t in readers:
            t.join()
        holder.close()

    tripped = [e for e in events if "circuit breaker cancelled us" in e]
    assert tripped, events
    assert breaker.peak_waiters >= 1
    assert "gave up" in str(exhausted.value) and f"pid {holder_pid}" in str(exhausted.value)
    # readers were never stuck behind us for long: the breaker cut the queue well inside the lock timeout
    assert max(waits) < 0.5, f"a reader waited {max(waits):.3f}s"
