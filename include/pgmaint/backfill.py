"""Copy a DEFAULT partition's rows into the shadow partitions while the mirror trigger runs,
and prove, at the instant of the swap, that the copies equal the originals.

`Backfill`: each batch is one short transaction — copy a page range of the DEFAULT into the
shadow parent with `ON CONFLICT DO NOTHING` while holding KEY SHARE row locks on the rows it
reads, and advance the journal. Inserts never wait for it (a table lock would make every insert
into the DEFAULT queue behind each batch, and back-to-back batches would starve them); only a
DELETE or key change of a row in the batch waits for the batch's commit, and then its mirrored
delete removes the fresh copy. A row updated meanwhile is read in its newest version, and a
mirrored version always wins over ours through the unique key (`ON CONFLICT DO NOTHING` waits
for an uncommitted mirrored insert, then yields to it; a mirrored upsert waits for ours, then
overwrites it). So a copy never overwrites or resurrects an application's change. A batch is
atomic: killed at any point, the next run resumes at the journalled page; the trigger has kept
mirroring meanwhile.

`CutVerifier`: imports the snapshot the swap exports while it holds the parent's ACCESS
EXCLUSIVE lock, and counts, per interval, the old DEFAULT and the shadows as they were at
that instant: the only moment where "nothing lost, nothing doubled" can be stated exactly
while the application keeps writing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import psycopg
from psycopg import errors, sql

from include.pgmaint.db import connect
from include.pgmaint.figures import figures_query

log = logging.getLogger("pgmaint.backfill")
PROGRESS_EVERY_SECONDS = 10.0
# A batch holds row locks on the rows it copies: a DELETE or key update of one of them waits for it. Keep it short.
BATCH_TARGET_SECONDS = 0.05
BATCH_LOCK_TIMEOUT_MS = 20
BATCH_STATEMENT_TIMEOUT_MS = 80


class Backfill:
    def __init__(self, conn, migration, migration_id: int, *, failpoint: Callable[[str], None] = lambda name: None):
        self.conn, self.m, self.migration_id, self.failpoint = conn, migration, migration_id, failpoint
        cols = sql.SQL(", ").join(map(sql.Identifier, migration.writable))
        overriding = sql.SQL(" OVERRIDING SYSTEM VALUE") if migration.identity else sql.SQL("")
        self.batch_sql = sql.SQL("""
WITH ins AS (
    INSERT INTO {sp} ({cols}){overriding}
    SELECT {cols} FROM ONLY {d} WHERE ctid >= %(lo)s::tid AND ctid < %(hi)s::tid FOR KEY SHARE
    ON CONFLICT DO NOTHING
    RETURNING 1
)
UPDATE {state}.migrations
SET next_page = %(hi_page)s, rows_copied = rows_copied + (SELECT count(*) FROM ins), updated_at = clock_timestamp()
WHERE migration_id = %(mid)s
RETURNING rows_copied, (SELECT count(*) FROM ins)
""").format(sp=migration.q(migration.shadow_parent), cols=cols, overriding=overriding,
            d=migration.q(migration.default_name), state=migration.state)

    def progress_row(self) -> tuple[int, int, int]:
        return self.conn.execute(sql.SQL("SELECT next_page, total_pages, rows_copied FROM {}.migrations WHERE migration_id = %s")
                                 .format(self.m.state), [self.migration_id]).fetchone()

    def run(self, *, expected_rows: int, batch_rows: int, deadline: float, progress: Callable[[str], None]) -> tuple[int, bool]:
        """Copy until every page counted when mirroring began is copied, or `deadline` (monotonic).
        Returns (rows copied by this call, finished)."""
        next_page, total_pages, copied = self.progress_row()
        rows_per_page = max(1.0, expected_rows / max(total_pages, 1))
        pages = max(1, int(min(batch_rows, 5_000) / rows_per_page))
        started = last_report = time.monotonic()
        copied_here = 0
        batches = 0
        while next_page < total_pages:
            if batches and time.monotonic() >= deadline:  # every run copies at least one batch: it always progresses
                return copied_here, False
            hi_page = min(total_pages, next_page + pages)
            t0 = time.monotonic()
            done = self._batch(next_page, hi_page)
            took = time.monotonic() - t0
            if done is None:  # too slow or locked: smaller, after a pause
                pages = max(1, pages // 2)
                continue
            copied, n = done
            batches += 1
            self.failpoint("after_batch")
            copied_here += n
            next_page = hi_page
            if took > BATCH_TARGET_SECONDS * 1.5 and pages > 1:
                pages = max(1, int(pages * 0.7))
            elif took < BATCH_TARGET_SECONDS * 0.6 and (pages * 2) * rows_per_page <= batch_rows:
                pages = pages * 2 if took < BATCH_TARGET_SECONDS * 0.3 else int(pages * 1.4) + 1
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY_SECONDS or next_page >= total_pages:
                rate = copied_here / max(now - started, 1e-6)
                left = max(0, total_pages - next_page)
                eta = left * rows_per_page / rate if rate > 0 else float("inf")
                progress(f"{self.m.cfg.name}: copied {copied:,} rows ({next_page:,} of {total_pages:,} pages), "
                         f"{rate:,.0f} rows/s, ETA {eta:,.0f}s; every row stays readable in the DEFAULT meanwhile")
                last_report = now
        return copied_here, True

    def _batch(self, lo_page: int, hi_page: int) -> tuple[int, int] | None:
        """One atomic batch; None when it waited past its lock timeout or ran past its statement timeout."""
        try:
            with self.conn.transaction():
                self.conn.execute("SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                                  [f"{BATCH_LOCK_TIMEOUT_MS}ms", f"{BATCH_STATEMENT_TIMEOUT_MS}ms"])
                copied, n = self.conn.execute(self.batch_sql, {
                    "lo": f"({lo_page},0)", "hi": f"({hi_page},0)", "hi_page": hi_page, "mid": self.migration_id}).fetchone()
                self.failpoint("inside_batch")  # the batch ran but did not commit
            return copied, n
        except (errors.LockNotAvailable, errors.QueryCanceled) as exc:
            delay = random.uniform(0.01, 0.1)
            log.info("%s: copy batch of pages %d-%d gave way (%s); retrying smaller in %.2fs",
                     self.m.cfg.name, lo_page, hi_page, type(exc).__name__, delay)
            time.sleep(delay)
            return None


def figures_in_snapshot(conn, migration, method: str, relations: list[str]) -> dict[str, tuple[int, int]]:
    query = figures_query(migration.facts, migration.cfg, migration.config.timezone, method, migration.columns,
                          [migration.q(r) for r in relations])
    return {b: (int(n), int(ck)) for b, n, ck in conn.execute(query).fetchall()}


def compare(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    out = []
    for bucket in sorted(set(before) | set(after)):
        (n0, c0), (n1, c1) = before.get(bucket, (0, 0)), after.get(bucket, (0, 0))
        if n0 != n1:
            out.append(f"{bucket}: {n0} row(s) in the DEFAULT, {n1} in the copies ({abs(n0 - n1)} {'missing' if n1 < n0 else 'extra'})")
        elif c0 != c1:
            out.append(f"{bucket}: {n0} row(s) on both sides, checksums differ")
    return out


def verify_copy(conn, migration, method: str, scan_timeout_ms: int) -> tuple[dict, dict, list[str]]:
    """Before the swap, in one REPEATABLE READ snapshot: the DEFAULT and the copies hold the same rows."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SELECT set_config('statement_timeout', %s, true)", [f"{scan_timeout_ms}ms"])
        before = figures_in_snapshot(conn, migration, method, [migration.default_name])
        after = figures_in_snapshot(conn, migration, method, [r.partition for r in migration.plan.move] + [migration.next_name])
    return before, after, compare(before, after)


class CutVerifier:
    """Holds a REPEATABLE READ transaction on the snapshot the swap exported (see module docstring)."""

    def __init__(self, conninfo: str, budget):
        self.conn = connect(conninfo, budget, application_name="pgmaint-verify")
        self.scan_timeout_ms = budget.scan_timeout_ms
        self.snapshot: str | None = None

    def adopt(self, cursor) -> None:
        """`Statement.then` of the swap's `SELECT pg_export_snapshot()`: runs inside the swap transaction."""
        snapshot = cursor.fetchone()[0]
        if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.conn.execute("ROLLBACK")  # an earlier try of the swap was rolled back
        # One round trip: the swap holds its locks until this returns.
        self.conn.execute(sql.SQL("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}; "
                                  "SET LOCAL statement_timeout = {}").format(
            sql.Literal(snapshot), sql.Literal(f"{self.scan_timeout_ms}ms")))
        self.snapshot = snapshot

    def figures(self, migration, method: str) -> tuple[dict, dict]:
        """(old DEFAULT, the moved rows' new homes) as they were at the swap. Call after the swap committed:
        names resolve in the new catalog (the old DEFAULT under its new name), rows in the swap's snapshot."""
        if self.snapshot is None:
            raise RuntimeError("the swap's snapshot was never adopted")
        before = figures_in_snapshot(self.conn, migration, method, [migration.old_name])
        after = figures_in_snapshot(self.conn, migration, method, [r.partition for r in migration.plan.move] + [migration.default_name])
        self.conn.execute("COMMIT")
        return before, after

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # closing must never hide the run's own outcome
            pass


__all__ = ["Backfill", "CutVerifier", "compare", "figures_in_snapshot", "verify_copy"]
