"""An application working on its own rows while maintenance runs — the way applications notice a migration.

Each worker owns a disjoint set of rows (so the expected final state is exactly known) and, in a
loop, reads one of its rows by key, updates one, deletes one, upserts one (`INSERT … ON CONFLICT
DO UPDATE`, an idempotent retry), inserts a row for now and a late row for one of the days being
moved. It counts what an application would call a bug:

* read_misses     a key read of a row that exists found nothing
* read_doubles    a key read returned the same key twice
* stale_reads     a key read returned an older payload than the worker last wrote
* update_misses   an UPDATE of an existing row matched 0 rows (the write was lost)
* delete_misses   a DELETE of an existing row matched 0 rows
* errors          any statement error (statement timeout included)

and, at the end (`check`), compares the table with the model: rows lost, rows that should be
gone but are back, payloads wrong, duplicate keys.

Used by the migration tests and by `scripts/bench_migration.py`.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import psycopg
from psycopg import sql

COUNTERS = (
    "reads",
    "read_misses",
    "read_doubles",
    "stale_reads",
    "updates",
    "update_misses",
    "deletes",
    "delete_misses",
    "upserts",
    "inserts",
    "late_inserts",
    "errors",
)


@dataclass
class WorkerState:
    rows: dict = field(default_factory=dict)  # (id, ts) -> payload, None = deleted
    counts: dict = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    latencies: list = field(default_factory=list)
    error_samples: list = field(default_factory=list)


class AppWorkload:
    def __init__(
        self,
        dsn: str,
        schema: str,
        table: str,
        existing: list[tuple[int, datetime]],
        late_days: list[datetime],
        *,
        workers: int = 4,
        pause: float = 0.002,
        key: str = "ts",
        new_id_base: int = 50_000_000,
        statement_timeout_ms: int = 5000,
        identity_always: bool = True,
        seed: int = 7,
        insert_values: dict | None = None,
    ):
        """`insert_values`: values for the table's other NOT NULL columns, given to every INSERT and upsert
        (e.g. {"client_id": 1, "method": "GET"}); the workload itself writes only id, the key and payload."""
        self.dsn, self.parent, self.key = dsn, sql.Identifier(schema, table), sql.Identifier(key)
        extra = dict(insert_values or {})
        self.extra_values = list(extra.values())
        # ", col1, col2" after (id, key, payload) and ", %s, %s" after its three placeholders
        self.extra_cols = sql.SQL("").join(sql.SQL(", ") + sql.Identifier(c) for c in extra)
        self.extra_params = sql.SQL(", %s" * len(extra))
        self.workers, self.pause, self.timeout_ms = workers, pause, statement_timeout_ms
        self.late_days = late_days
        self.overriding = sql.SQL(" OVERRIDING SYSTEM VALUE") if identity_always else sql.SQL("")
        self.states = [WorkerState() for _ in range(workers)]
        for i, (row_id, ts) in enumerate(existing):
            self.states[i % workers].rows[(row_id, ts)] = "seed"
        self.seed_payloads: dict = {}
        self.new_id_base = new_id_base
        self.rng_seed = seed
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started_at = self.stopped_at = None

    # --- running --------------------------------------------------------------------------------

    def start(self) -> AppWorkload:
        self.started_at = time.monotonic()
        for w in range(self.workers):
            t = threading.Thread(target=self._run, args=(w,), name=f"app-{w}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self.stopped_at = time.monotonic()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _insert(self) -> sql.Composed:
        return sql.SQL("INSERT INTO {} (id, {}, payload{}){} VALUES (%s, %s, %s{})").format(
            self.parent, self.key, self.extra_cols, self.overriding, self.extra_params
        )

    def _upsert(self) -> sql.Composed:
        return self._insert() + sql.SQL(" ON CONFLICT (id, {}) DO UPDATE SET payload = EXCLUDED.payload").format(
            self.key
        )

    def _run(self, w: int) -> None:
        st, rng = self.states[w], random.Random(self.rng_seed * 1000 + w)
        next_id = self.new_id_base + w * 10_000_000
        p, k = self.parent, self.key
        with psycopg.connect(self.dsn, autocommit=True, application_name=f"app-workload-{w}") as c:
            c.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{self.timeout_ms}ms")))
            step = 0
            while not self._stop.is_set():
                step += 1
                live = [key for key, v in st.rows.items() if v is not None]
                op = step % 7
                t0 = time.monotonic()
                try:
                    if op in (0, 4) and live:  # key read
                        key = rng.choice(live)
                        got = c.execute(
                            sql.SQL("SELECT payload FROM {} WHERE id = %s AND {} = %s").format(p, k), list(key)
                        ).fetchall()
                        st.counts["reads"] += 1
                        if not got:
                            st.counts["read_misses"] += 1
                        elif len(got) > 1:
                            st.counts["read_doubles"] += 1
                        elif st.rows[key] != "seed" and got[0][0] != st.rows[key]:
                            st.counts["stale_reads"] += 1
                    elif op == 1 and live:  # update
                        key, payload = rng.choice(live), f"u{w}-{step}"
                        n = c.execute(
                            sql.SQL("UPDATE {} SET payload = %s WHERE id = %s AND {} = %s").format(p, k),
                            [payload, *key],
                        ).rowcount
                        st.counts["updates"] += 1
                        if n != 1:
                            st.counts["update_misses"] += 1
                        else:
                            st.rows[key] = payload
                    elif op == 2 and live and step % 3 == 0:  # delete (less often than the rest)
                        key = rng.choice(live)
                        n = c.execute(
                            sql.SQL("DELETE FROM {} WHERE id = %s AND {} = %s").format(p, k), list(key)
                        ).rowcount
                        st.counts["deletes"] += 1
                        if n != 1:
                            st.counts["delete_misses"] += 1
                        st.rows[key] = None
                    elif op == 3 and live:  # upsert of an existing row: an idempotent retry
                        key, payload = rng.choice(live), f"x{w}-{step}"
                        c.execute(self._upsert(), [*key, payload, *self.extra_values])
                        st.counts["upserts"] += 1
                        st.rows[key] = payload
                    elif op == 5:  # insert now (through an upsert, as a retrying client does)
                        next_id += 1
                        ts = datetime.now(timezone.utc)
                        c.execute(self._upsert(), [next_id, ts, f"n{w}-{step}", *self.extra_values])
                        st.counts["inserts"] += 1
                        st.rows[(next_id, ts)] = f"n{w}-{step}"
                    elif op == 6 and self.late_days:  # a late row for a day being moved
                        next_id += 1
                        day = rng.choice(self.late_days)
                        ts = day + timedelta(seconds=rng.randrange(86_399), microseconds=rng.randrange(1_000_000))
                        c.execute(self._insert(), [next_id, ts, f"l{w}-{step}", *self.extra_values])
                        st.counts["late_inserts"] += 1
                        st.rows[(next_id, ts)] = f"l{w}-{step}"
                except psycopg.Error as exc:
                    st.counts["errors"] += 1
                    if len(st.error_samples) < 5:
                        st.error_samples.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}")
                st.latencies.append(time.monotonic() - t0)
                if self.pause:
                    time.sleep(self.pause)

    # --- results --------------------------------------------------------------------------------

    def totals(self) -> dict:
        out = dict.fromkeys(COUNTERS, 0)
        for st in self.states:
            for name, n in st.counts.items():
                out[name] += n
        lat = sorted(x for st in self.states for x in st.latencies)
        out["requests"] = len(lat)
        out["max_ms"] = round(1000 * lat[-1], 1) if lat else 0.0
        out["p99_ms"] = round(1000 * lat[int(len(lat) * 0.99) - 1], 1) if lat else 0.0
        out["error_samples"] = [e for st in self.states for e in st.error_samples][:5]
        return out

    def check(self, conn) -> dict:
        """Compare the table with what the workers know they wrote. Run after `stop()`."""
        expected = {key: v for st in self.states for key, v in st.rows.items()}
        ids = sorted({row_id for row_id, _ in expected})
        found: dict = {}
        duplicates = 0
        for i in range(0, len(ids), 5000):
            rows = conn.execute(
                sql.SQL("SELECT id, {}, payload FROM {} WHERE id = ANY(%s)").format(self.key, self.parent),
                [ids[i : i + 5000]],
            ).fetchall()
            for row_id, ts, payload in rows:
                if (row_id, ts) in found:
                    duplicates += 1
                found[(row_id, ts)] = payload
        lost = [k for k, v in expected.items() if v is not None and k not in found]
        resurrected = [k for k, v in expected.items() if v is None and k in found]
        wrong = [k for k, v in expected.items() if v not in (None, "seed") and k in found and found[k] != v]
        dup_keys = conn.execute(
            sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} GROUP BY id, {} HAVING count(*) > 1) d").format(
                self.parent, self.key
            )
        ).fetchone()[0]
        return {
            "rows_expected": sum(1 for v in expected.values() if v is not None),
            "rows_lost": len(lost),
            "rows_resurrected": len(resurrected),
            "payloads_wrong": len(wrong),
            "duplicate_keys": int(dup_keys) + duplicates,
            "lost_sample": lost[:3],
            "wrong_sample": wrong[:3],
        }


def sample_rows(
    conn, schema: str, table: str, n: int, key: str = "ts", where: sql.Composable | None = None
) -> list[tuple]:
    """(id, key) of up to `n` rows spread over the table (read through the given relation)."""
    return conn.execute(
        sql.SQL("SELECT id, {} FROM {} {} ORDER BY md5(id::text) LIMIT %s").format(
            sql.Identifier(key),
            sql.Identifier(schema, table),
            sql.SQL("WHERE ") + where if where is not None else sql.SQL(""),
        ),
        [n],
    ).fetchall()
