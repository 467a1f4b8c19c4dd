"""Copy a DEFAULT partition's rows into the shadow partitions while the mirror trigger runs,
and prove, at the instant of the swap, that the copies equal the originals.

`Backfill`: each batch is one short transaction — copy a page range of the DEFAULT into the
shadow parent, taking no lock on the rows it reads, and advance the journal. Nothing waits for it
(a table lock would make every insert into the DEFAULT queue behind each batch, and back-to-back
batches would starve them) except a mirrored write of a key it has just copied, until it commits.
A row updated meanwhile is read in its newest version, and a mirrored version always wins over
ours through the unique key: a batch is a plain INSERT, which fails on a key the mirror already
wrote (unique violation: the batch rolls back, nothing of it stays) and is then run again with
`ON CONFLICT DO NOTHING` (which waits for an uncommitted mirrored insert, then yields to it; a
mirrored upsert waits for ours, then overwrites it), as are the batches after it for a while.
So a copy never overwrites an application's change. A DELETE (or key change) of a row whose copy
a batch holds uncommitted cannot see that copy, so the copy outlives the row: the mirror logged
the key, and `drop_deleted_copies` (then one pass under SHARE on the DEFAULT) removes every copy
of a logged key the DEFAULT no longer has, before the copies are verified. Locking the rows read
(FOR KEY SHARE, as before) made such a DELETE wait instead, but wrote every source row's header:
measured on 1 M rows, 2.6 s and 526 MB of WAL with it, 1.9 s and 328 MB without. The plain INSERT is the usual
case (writers paused, or not writing to the rows ahead of the copy) and the cheaper one: a
speculative insertion costs an extra index probe and WAL record per row (measured on 1 M rows:
6.1-6.9 s with `ON CONFLICT`, 3.5 s without, with asynchronous commit).

A batch commits with `synchronous_commit = off`: its copied rows and its journal advance are one
transaction, so a server crash loses both or neither, and any later transaction that commits
durably (an application write, the swap) flushes the WAL before it, batch included. A batch is
atomic: killed at any point, the next run resumes at the journalled page; the trigger has kept
mirroring meanwhile.

`CutVerifier`: imports a snapshot a step exports while it holds its lock, and counts, per
interval, the DEFAULT and the shadows as they were at that instant: at the write cut before the
swap (SHARE on the DEFAULT: no write in flight), and, when a write reached the DEFAULT since
(its write mark moved), at the swap itself (the parent's ACCESS EXCLUSIVE): the moments where
"nothing lost, nothing doubled" can be stated exactly while the application keeps writing.
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
from include.pgmaint.guards import quoted
from include.pgmaint.mirror import KEY_LOOKUPS_ONLY

log = logging.getLogger("pgmaint.backfill")
_ON_CONFLICT = sql.SQL("\n    ON CONFLICT DO NOTHING")
PROGRESS_EVERY_SECONDS = 10.0
# Until a batch commits, a mirrored write of a row it copied waits for it (the copies' unique index). Keep it short.
BATCH_TARGET_SECONDS = 0.05
BATCH_LOCK_TIMEOUT_MS = 20
BATCH_STATEMENT_TIMEOUT_MS = 80
# After a batch met a key the mirror had written, this many batches run with ON CONFLICT DO NOTHING straight away
# (the application is writing rows ahead of the copy: rolling back plain batches would waste their work).
GUARDED_BATCHES_AFTER_CONFLICT = 32


_CONFLICT = object()  # `Backfill._batch`: an unguarded batch met a key the mirror had written


class Backfill:
    def __init__(
        self,
        conn,
        migration,
        migration_id: int,
        *,
        failpoint: Callable[[str], None] = lambda name: None,
        hold_commit: bool = False,
        row_locks: bool = False,
    ):
        """`hold_commit`: send COMMIT separately, after `failpoint("inside_batch")` (the crash tests kill the
        process there); otherwise a batch is one round trip. `row_locks`: lock the rows copied (FOR KEY SHARE), so
        that a DELETE of one waits for the batch; only for a migration begun without a key log, whose deleted
        copies `drop_deleted_copies` cannot find (the lock writes every row's header: ~60 % more WAL)."""
        self.conn, self.m, self.migration_id, self.failpoint, self.hold_commit = (
            conn,
            migration,
            migration_id,
            failpoint,
            hold_commit,
        )
        cols = sql.SQL(", ").join(map(sql.Identifier, migration.writable))
        overriding = sql.SQL(" OVERRIDING SYSTEM VALUE") if migration.identity else sql.SQL("")
        # RETURNING the server time since the batch's query arrived (statement_timestamp() of a multi-statement
        # query string): how long the batch ran uncommitted, whatever the client's scheduling latency.
        self.batch_sql = sql.SQL("""
WITH ins AS (
    INSERT INTO {sp} ({cols}){overriding}
    SELECT {cols} FROM ONLY {d} WHERE ctid >= {lo}::tid AND ctid < {hi}::tid{row_locks}{on_conflict}
    RETURNING 1
)
UPDATE {state}.migrations
SET next_page = {hi_page}, rows_copied = rows_copied + (SELECT count(*) FROM ins), updated_at = clock_timestamp()
WHERE migration_id = {mid}
RETURNING rows_copied, (SELECT count(*) FROM ins), extract(epoch FROM clock_timestamp() - statement_timestamp())::float8
""")
        self._parts = {
            "sp": migration.q(migration.shadow_parent),
            "cols": cols,
            "overriding": overriding,
            "d": migration.q(migration.default_name),
            "state": migration.state,
            "row_locks": sql.SQL(" FOR KEY SHARE") if row_locks else sql.SQL(""),
        }
        self._timeouts = sql.SQL(
            "SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}; SET LOCAL synchronous_commit = off"
        ).format(sql.Literal(f"{BATCH_LOCK_TIMEOUT_MS}ms"), sql.Literal(f"{BATCH_STATEMENT_TIMEOUT_MS}ms"))
        self.guarded_batches = (
            0  # batches still to run with ON CONFLICT DO NOTHING (see GUARDED_BATCHES_AFTER_CONFLICT)
        )
        self.conflicts = 0

    def statement(self, lo_page: int, hi_page: int, *, guarded: bool) -> sql.Composable:
        """The batch copying pages [lo_page, hi_page): every value a literal (the whole transaction goes in one
        simple-protocol query string). `guarded`: with ON CONFLICT DO NOTHING."""
        return self.batch_sql.format(
            lo=sql.Literal(f"({lo_page},0)"),
            hi=sql.Literal(f"({hi_page},0)"),
            hi_page=sql.Literal(hi_page),
            mid=sql.Literal(self.migration_id),
            on_conflict=_ON_CONFLICT if guarded else sql.SQL(""),
            **self._parts,
        )

    def template(self, *, guarded: bool) -> sql.Composable:
        """The batch statement with its per-batch values as placeholders (dry runs show it)."""
        return self.batch_sql.format(
            lo=sql.Placeholder("lo"),
            hi=sql.Placeholder("hi"),
            hi_page=sql.Placeholder("hi_page"),
            mid=sql.Placeholder("mid"),
            on_conflict=_ON_CONFLICT if guarded else sql.SQL(""),
            **self._parts,
        )

    def progress_row(self) -> tuple[int, int, int]:
        return self.conn.execute(
            sql.SQL("SELECT next_page, total_pages, rows_copied FROM {}.migrations WHERE migration_id = %s").format(
                self.m.state
            ),
            [self.migration_id],
        ).fetchone()

    def run(
        self, *, expected_rows: int, batch_rows: int, deadline: float, progress: Callable[[str], None]
    ) -> tuple[int, bool]:
        """Copy until every page counted when mirroring began is copied, or `deadline` (monotonic).
        Returns (rows copied by this call, finished). Batches are sized by the server time they run uncommitted
        (target BATCH_TARGET_SECONDS), never above `batch_rows` rows."""
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
            guarded = self.guarded_batches > 0
            done = self._batch(next_page, hi_page, guarded=guarded)
            if done is _CONFLICT:  # a key the mirror wrote: the same pages again, guarded
                self.conflicts += 1
                self.guarded_batches = GUARDED_BATCHES_AFTER_CONFLICT
                continue
            if done is None:  # too slow or locked: smaller, after a pause
                pages = max(1, pages // 2)
                continue
            self.guarded_batches -= guarded
            copied, n, took = done
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
                met = (
                    f"; {self.conflicts:,} met keys the mirror had written and ran again guarded"
                    if self.conflicts
                    else ""
                )
                progress(
                    f"{self.m.cfg.name}: copied {copied:,} rows ({next_page:,} of {total_pages:,} pages, {batches:,} "
                    f"batches{met}), {rate:,.0f} rows/s, ETA {eta:,.0f}s; every row stays readable in the DEFAULT "
                    "meanwhile"
                )
                last_report = now
        return copied_here, True

    def _batch(self, lo_page: int, hi_page: int, *, guarded: bool):
        """One atomic batch, sent as one query string (BEGIN; settings; copy + journal; COMMIT): one round trip.
        Returns (rows copied so far, rows copied by it, server seconds); None when it waited past its lock
        timeout or ran past its statement timeout, `_CONFLICT` when an unguarded batch met a key already in the
        copies (rolled back in both cases)."""
        parts = [sql.SQL("BEGIN"), self._timeouts, self.statement(lo_page, hi_page, guarded=guarded)]
        if not self.hold_commit:
            parts.append(sql.SQL("COMMIT"))
        try:
            cur = self.conn.execute(sql.SQL("; ").join(parts))
            while cur.description is None or len(cur.description) != 3:  # BEGIN and the SETs: no rows
                if not cur.nextset():
                    raise RuntimeError("copy batch: no result from the batch statement")
            copied, n, took = cur.fetchone()
            if self.hold_commit:
                self.failpoint("inside_batch")  # the batch ran but did not commit
                self.conn.execute("COMMIT")
            return copied, n, took
        except errors.UniqueViolation:
            _rollback(self.conn)
            if guarded:
                raise
            log.info(
                "%s: copy batch of pages %d-%d met a key the mirror had written; running it again with "
                "ON CONFLICT DO NOTHING",
                self.m.cfg.name,
                lo_page,
                hi_page,
            )
            return _CONFLICT
        except (errors.LockNotAvailable, errors.QueryCanceled) as exc:
            _rollback(self.conn)
            delay = random.uniform(0.01, 0.1)
            log.info(
                "%s: copy batch of pages %d-%d gave way (%s); retrying smaller in %.2fs",
                self.m.cfg.name,
                lo_page,
                hi_page,
                type(exc).__name__,
                delay,
            )
            time.sleep(delay)
            return None
        except BaseException:
            _rollback(self.conn)
            raise


# The passes over the key log without a table lock: an application write to a key being looked at makes a pass give
# way (it rolls back: the entries stay for the next pass); more entries than this left make another pass run.
DELETED_COPIES_LOCK_TIMEOUT_MS = 20
DELETED_COPIES_STATEMENT_TIMEOUT_MS = 60_000
DELETED_COPIES_TRIES = 3
DELETED_COPIES_LEFT_FOR_THE_LOCKED_PASS = 2_000
DELETED_COPIES_MAX_PASSES = 10


def unlocked_deleted_copies_pass(migration) -> sql.Composable:
    """One pass of `drop_deleted_copies`, a whole transaction in one query string (the dry run prints it)."""
    return sql.SQL("; ").join(
        [
            sql.SQL("BEGIN ISOLATION LEVEL REPEATABLE READ"),
            sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{DELETED_COPIES_LOCK_TIMEOUT_MS}ms")),
            sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(f"{DELETED_COPIES_STATEMENT_TIMEOUT_MS}ms")),
            *KEY_LOOKUPS_ONLY,
            migration.deleted_copies(),
            sql.SQL("COMMIT"),
        ]
    )


def drop_deleted_copies(conn, migration) -> tuple[int, int]:
    """`migration.deleted_copies()` over the key log with no lock on the DEFAULT, repeated while many entries come in,
    so the pass under SHARE (`deleted_copies_step`) has only the last ones left. Returns (entries, copies removed).

    REPEATABLE READ makes each pass exact: a copy it would remove that an application write changed since the pass's
    snapshot (a row inserted again under the same key) fails it with a serialization error instead of being removed
    on the strength of an older look at the DEFAULT (READ COMMITTED would re-check only the copy); a copy locked by
    a write in flight makes it give way after DELETED_COPIES_LOCK_TIMEOUT_MS."""
    statement = unlocked_deleted_copies_pass(migration)
    entries = removed = failures = passes = 0
    while failures < DELETED_COPIES_TRIES and passes < DELETED_COPIES_MAX_PASSES:
        try:
            cur = conn.execute(statement)
            while cur.description is None or len(cur.description) != 2:
                if not cur.nextset():
                    raise RuntimeError("drop_deleted_copies: no result from the pass")
            n, r = cur.fetchone()
        except (errors.SerializationFailure, errors.LockNotAvailable, errors.QueryCanceled) as exc:
            _rollback(conn)
            failures += 1
            log.info(
                "%s: a pass over the key log gave way to an application write (%s); %s",
                migration.cfg.name,
                type(exc).__name__,
                "trying again" if failures < DELETED_COPIES_TRIES else "the pass under SHARE does the rest",
            )
            time.sleep(random.uniform(0.01, 0.1))
            continue
        except BaseException:
            _rollback(conn)
            raise
        entries, removed, passes = entries + n, removed + r, passes + 1
        if n <= DELETED_COPIES_LEFT_FOR_THE_LOCKED_PASS:
            break
    return entries, removed


def _rollback(conn) -> None:
    """An error inside an explicit BEGIN leaves the session in an aborted transaction block."""
    if not conn.closed and not conn.broken and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.execute("ROLLBACK")


def figures_in_snapshot(
    conn, migration, method: str, relations: list[str], keys: list[tuple[str, ...]] | None = None
) -> dict[str, tuple[int, int]]:
    """Per interval (rows, checksum) of `relations` in the snapshot of `conn`; with `keys`, of only the rows whose
    mirror key is one of them (index lookups)."""
    if keys is not None and not keys:
        return {}
    prefix, where, params = (sql.SQL(""), None, None) if keys is None else _only_keys(conn, migration, keys)
    query = prefix + figures_query(
        migration.facts,
        migration.cfg,
        migration.config.timezone,
        method,
        migration.columns,
        [migration.q(r) for r in relations],
        where=where,
    )
    return {b: (int(n), int(ck)) for b, n, ck in conn.execute(query, params).fetchall()}


def _only_keys(conn, migration, keys: list[tuple[str, ...]]) -> tuple[sql.Composable, sql.Composable, list]:
    """(WITH clause, WHERE condition, parameters) selecting the rows whose mirror key is one of `keys` (as text)."""
    types = dict(
        conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass(%s) "
            "AND attnum > 0 AND NOT attisdropped",
            [quoted(migration.facts.schema, migration.facts.table)],
        ).fetchall()
    )
    names = [sql.Identifier(f"k{i}") for i in range(len(migration.key.columns))]
    # format_type's output is a type name as PostgreSQL spells (and quotes) it. The keys once, looked up by index.
    with_keys = sql.SQL("WITH pgmaint_keys AS MATERIALIZED (SELECT {} FROM unnest({}) AS u({})) ").format(
        sql.SQL(", ").join(
            sql.SQL("CAST({} AS {})").format(n, sql.SQL(types[k])) for n, k in zip(names, migration.key.columns)
        ),
        sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in names),
        sql.SQL(", ").join(names),
    )
    where = sql.SQL("({}) IN (SELECT * FROM pgmaint_keys)").format(
        sql.SQL(", ").join(map(sql.Identifier, migration.key.columns))
    )
    return with_keys, where, [list(column) for column in zip(*keys)]


# Above this many keys written between the write cut and the swap, counting everything again is the cheaper way.
WRITTEN_KEYS_RECOUNT_LIMIT = 200_000


def written_keys(conn, migration, since: int) -> list[tuple[str, ...]] | None:
    """The keys the mirror logged for writes counted after `since` (the write cut's count; each key as text, as many
    as the mirror key has columns), in the snapshot of `conn`; None when the log cannot tell: a TRUNCATE of the
    DEFAULT (a row of NULL keys), or too many keys."""
    cols = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in migration.key.columns)
    rows = conn.execute(
        sql.SQL("SELECT DISTINCT {} FROM {} WHERE seq > %s LIMIT {}").format(
            cols, migration.q(migration.written), sql.Literal(WRITTEN_KEYS_RECOUNT_LIMIT + 1)
        ),
        [since],
    ).fetchall()
    if len(rows) > WRITTEN_KEYS_RECOUNT_LIMIT or any(r[0] is None for r in rows):
        return None
    return rows


def replace_counted(figures: dict, was: dict, now: dict) -> dict:
    """`figures` with the rows counted in `was` taken out and those counted in `now` put in, per interval."""
    out = dict(figures)
    for bucket in set(was) | set(now):
        n0, c0 = out.get(bucket, (0, 0))
        n1, c1 = was.get(bucket, (0, 0))
        n2, c2 = now.get(bucket, (0, 0))
        out[bucket] = (n0 - n1 + n2, c0 - c1 + c2)
        if out[bucket] == (0, 0):
            del out[bucket]
    return out


def compare(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    out = []
    for bucket in sorted(set(before) | set(after)):
        (n0, c0), (n1, c1) = before.get(bucket, (0, 0)), after.get(bucket, (0, 0))
        if n0 != n1:
            out.append(
                f"{bucket}: {n0} row(s) in the DEFAULT, {n1} in the copies ({abs(n0 - n1)} {'missing' if n1 < n0 else 'extra'})"
            )
        elif c0 != c1:
            out.append(f"{bucket}: {n0} row(s) on both sides, checksums differ")
    return out


class CutVerifier:
    """Holds a REPEATABLE READ transaction on a snapshot a step exported (see module docstring)."""

    def __init__(self, conninfo: str, budget):
        self.conn = connect(conninfo, budget, application_name="pgmaint-verify")
        # Figures group millions of rows into a handful of intervals, but the planner cannot see that from the
        # bucket expression and sorts every row (whole rows, spilled to disk) instead of hashing a few groups.
        self.conn.execute("SET enable_sort = off")
        self.scan_timeout_ms = budget.scan_timeout_ms
        self.snapshot: str | None = None
        self.write_mark: str | None = (
            None  # the DEFAULT's write mark at that instant (`DefaultPartitionMigration.write_mark`)
        )

    def adopt(self, cursor) -> None:
        """`Statement.then` of a step's `SELECT pg_export_snapshot()[, write mark]`: runs inside that step's transaction."""
        self.adopt_row(cursor.fetchone())

    def adopt_row(self, row) -> None:
        """`adopt` with the row already fetched (several verifiers adopting one exported snapshot)."""
        snapshot = row[0]
        self.write_mark = row[1] if len(row) > 1 else None
        if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.conn.execute("ROLLBACK")  # an earlier try of the step was rolled back
        # One round trip: the exporting step holds its locks until this returns.
        self.conn.execute(
            sql.SQL(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}; "
                "SET LOCAL statement_timeout = {}"
            ).format(sql.Literal(snapshot), sql.Literal(f"{self.scan_timeout_ms}ms"))
        )
        self.snapshot = snapshot

    def figures(self, migration, method: str, *, swapped: bool) -> tuple[dict, dict]:
        """(the DEFAULT, the moved rows' new homes) as they were at the exported instant. Before the swap: the DEFAULT
        and the shadows (with the replacement DEFAULT); after it committed (`swapped`), names resolve in the new
        catalog: the old DEFAULT under its new name, the new partitions and the new DEFAULT."""
        if self.snapshot is None:
            raise RuntimeError("no exported snapshot was adopted")
        default, homes = migration.compared(swapped=swapped)
        before = figures_in_snapshot(self.conn, migration, method, [default])
        after = figures_in_snapshot(self.conn, migration, method, homes)
        self.release()
        return before, after

    def release(self) -> None:
        """End the snapshot's transaction (it holds back vacuum while open)."""
        if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.conn.execute("COMMIT")
        self.snapshot = None

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # closing must never hide the run's own outcome
            pass


__all__ = [
    "Backfill",
    "CutVerifier",
    "compare",
    "figures_in_snapshot",
    "replace_counted",
    "written_keys",
]
