#!/usr/bin/env python3
"""The incident, replayed and drawn (`make replay`).

    .venv/bin/python scripts/replay.py [--quick] [--dsn CONNINFO] [--config PATH] [--rate 200] [--clients 8]
                                       [--pool 10] [--timeout-ms 5000] [--report-seconds 20] [--days 3]
                                       [--rows-per-day 200000] [--out replay]

Twice on the same freshly seeded table — a daily-partitioned request log whose partitions stopped
three days ago, so those days and today's inserts sit in the DEFAULT, with expired partitions still
attached — while a simulated API runs against it and a long report transaction holds ACCESS SHARE
on it for `--report-seconds`, the maintenance of the day runs:

  naive    what the incident's team did, in plain SQL with no lock budget: per day in the DEFAULT,
           LOCK the parent, move the day's rows into a new partition (CREATE … PARTITION OF), then
           CREATE the premake partitions, DROP the expired ones. (pg_partman's procedures do the
           same with the same locks; pg_partman is not used here.)
  pgmaint  the engine functions the DAGs call: include.pgmaint.migrate.migrate_table, then
           include.pgmaint.maintenance.run_maintenance — retried every `--retry-seconds` (the
           schedule, compressed) while they skip or fail, as the next scheduled runs would.

The simulated API: `--clients` threads issuing `--rate` requests per second in all (open loop: a
request's latency counts from when it was due), through a pool of `--pool` connections (waiting
for a free connection counts; none within the timeout = a pool timeout), `statement_timeout` =
`--timeout-ms`; a third each: inserts at now(), counts over the last minute, reads by id. Every
request is recorded (requests-<contender>.csv).

Writes replay/<timestamp>/report.html, replay.png (per second: latency p50/p99/max, errors and
timeouts, connections in use; a band per maintenance step with the lock it takes) and
results.json. Database: `--dsn` (a scratch schema `pgmaint_replay` is created and dropped there;
your tables are not touched; `--config` lends your lock budget and preflight settings), else a
throwaway embedded PostgreSQL. `--quick`: a few seconds per contender (the test suite runs it).
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import os
import queue
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (REPO, REPO / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

SCHEMA, TABLE = "pgmaint_replay", "inbound_requests"
STATE_SCHEMA = "pgmaint_replay_state"
RETENTION_DAYS, PREMAKE = 30, 4


# --- the simulated API ------------------------------------------------------------------------------


@dataclass
class Request:
    due: float
    started: float
    ended: float
    op: str
    outcome: str  # ok | timeout | pool_timeout | error
    error: str = ""

    @property
    def latency(self) -> float:
        return self.ended - self.due


class Pool:
    def __init__(self, dsn: str, size: int, timeout_ms: int):
        self.q: queue.Queue = queue.Queue()
        self.in_use = 0
        self.lock = threading.Lock()
        for _ in range(size):
            c = psycopg.connect(dsn, autocommit=True, application_name="replay-api")
            c.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{timeout_ms}ms")))
            self.q.put(c)

    def get(self, timeout: float):
        c = self.q.get(timeout=max(timeout, 0.001))
        with self.lock:
            self.in_use += 1
        return c

    def put(self, c) -> None:
        with self.lock:
            self.in_use -= 1
        self.q.put(c)

    def close(self) -> None:
        while not self.q.empty():
            self.q.get().close()


class Api:
    def __init__(self, dsn: str, *, rate: float, clients: int, pool: int, timeout_ms: int, max_id: int):
        self.pool = Pool(dsn, pool, timeout_ms)
        self.rate, self.clients, self.timeout = rate, clients, timeout_ms / 1000
        self.max_id = max_id
        self.requests: list[Request] = []
        self.in_use: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.t0 = 0.0

    def start(self, t0: float) -> None:
        self.t0 = t0
        for i in range(self.clients):
            self._threads.append(threading.Thread(target=self._client, args=(i,), daemon=True))
        self._threads.append(threading.Thread(target=self._sampler, daemon=True))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self.pool.close()

    def _sampler(self) -> None:
        while not self._stop.is_set():
            self.in_use.append((time.monotonic() - self.t0, self.pool.in_use))
            time.sleep(0.05)

    def _client(self, i: int) -> None:
        rng = random.Random(i)
        period = self.clients / self.rate
        due = self.t0 + i * period / self.clients
        parent = sql.Identifier(SCHEMA, TABLE)
        queries = {
            "insert": (
                sql.SQL(
                    "INSERT INTO {} (created_at, client_id, path, status) VALUES (now(), %s, '/api/v1/people', 200)"
                ).format(parent),
                lambda: [rng.randrange(1, 100)],
            ),
            "recent": (
                sql.SQL("SELECT count(*) FROM {} WHERE created_at > now() - interval '1 minute'").format(parent),
                list,
            ),
            "by_id": (
                sql.SQL("SELECT * FROM {} WHERE id = %s").format(parent),
                lambda: [rng.randrange(1, self.max_id)],
            ),
        }
        ops = list(queries)
        n = 0
        while not self._stop.is_set():
            now = time.monotonic()
            if now < due:
                time.sleep(min(due - now, 0.05))
                continue
            op = ops[n % 3]
            n += 1
            started = time.monotonic()
            outcome, error = "ok", ""
            remaining = self.timeout - (started - due)
            try:
                c = self.pool.get(timeout=remaining)
            except queue.Empty:
                outcome, error = "pool_timeout", "no free connection within the timeout"
            else:
                try:
                    query, params = queries[op]
                    c.execute(query, params()).fetchall() if op != "insert" else c.execute(query, params())
                except psycopg.errors.QueryCanceled:
                    outcome, error = "timeout", "statement timeout"
                except psycopg.Error as exc:
                    outcome, error = "error", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
                finally:
                    self.pool.put(c)
            self.requests.append(
                Request(due - self.t0, started - self.t0, time.monotonic() - self.t0, op, outcome, error)
            )
            due += period


# --- the table ----------------------------------------------------------------------------------------


def seed(dsn: str, now: datetime, days: int, rows_per_day: int) -> dict:
    """Partitions for days -36..-(days+1) (the oldest past retention); the last `days` days and today in the DEFAULT."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    parent = sql.Identifier(SCHEMA, TABLE)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
        c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(STATE_SCHEMA)))
        c.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        c.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigserial, created_at timestamptz NOT NULL, client_id int NOT NULL, "
                "path text NOT NULL, status smallint NOT NULL, PRIMARY KEY (id, created_at)) "
                "PARTITION BY RANGE (created_at)"
            ).format(parent)
        )
        c.execute(sql.SQL("CREATE INDEX ON {} (created_at)").format(parent))
        c.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
                sql.Identifier(SCHEMA, f"{TABLE}_default"), parent
            )
        )
        first = -(RETENTION_DAYS + 3)
        for d in range(first, -days):
            day = today + timedelta(days=d)
            c.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(SCHEMA, f"{TABLE}_p{day:%Y%m%d}"),
                    parent,
                    sql.Literal(day),
                    sql.Literal(day + timedelta(days=1)),
                )
            )
        # A few rows in every partition, `rows_per_day` on each of the last days (DEFAULT), up to now.
        c.execute(
            sql.SQL(
                "INSERT INTO {} (created_at, client_id, path, status) SELECT ts, 1 + g %% 97, '/api/v1/people/' || g %% 5000, 200 "
                "FROM generate_series(%s::timestamptz, %s::timestamptz, interval '10 minutes') WITH ORDINALITY s(ts, g)"
            ).format(parent),
            [today + timedelta(days=first), today - timedelta(days=days) - timedelta(seconds=1)],
        )
        step = timedelta(days=1) / rows_per_day
        c.execute(
            sql.SQL(
                "INSERT INTO {} (created_at, client_id, path, status) SELECT ts, 1 + g %% 97, '/api/v1/people/' || g %% 5000, 200 "
                "FROM generate_series(%s::timestamptz, %s::timestamptz, %s::interval) WITH ORDINALITY s(ts, g)"
            ).format(parent),
            [today - timedelta(days=days), now, step],
        )
        c.execute(sql.SQL("ANALYZE {}").format(parent))
        default_rows, max_id = c.execute(
            sql.SQL("SELECT (SELECT count(*) FROM ONLY {}), (SELECT max(id) FROM {})").format(
                sql.Identifier(SCHEMA, f"{TABLE}_default"), parent
            )
        ).fetchone()
    return {"default_rows": default_rows, "max_id": max_id, "today": today}


def replay_config(user_config: str | None):
    import yaml

    from include.pgmaint.config import parse_config

    raw = yaml.safe_load(Path(user_config).read_text()) if user_config else {}
    keep = {k: raw[k] for k in ("lock_budget", "preflight") if k in raw}
    return parse_config(
        {
            **keep,
            "timezone": "UTC",
            "state_schema": STATE_SCHEMA,
            "tables": [
                {
                    "name": f"{SCHEMA}.{TABLE}",
                    "partition_key": "created_at",
                    "interval": "1 day",
                    "premake": PREMAKE,
                    "retention": f"{RETENTION_DAYS} days",
                }
            ],
            "services": [],
        },
        source=user_config or "replay",
    )


# --- the contenders -----------------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    lock: str
    start: float
    end: float
    outcome: str = "ok"
    detail: str = ""


@dataclass
class Run:
    name: str
    steps: list[Step] = field(default_factory=list)
    finished_at: float | None = None
    outcome: str = "success"
    notes: list[str] = field(default_factory=list)


def naive(dsn: str, today: datetime, days: int, t0: float, run: Run) -> None:
    parent = sql.Identifier(SCHEMA, TABLE)
    default = sql.Identifier(SCHEMA, f"{TABLE}_default")
    with psycopg.connect(dsn, autocommit=True, application_name="replay-naive") as c:
        c.execute("SET lock_timeout = 0; SET statement_timeout = 0")

        def step(name: str, lock: str, statements) -> None:
            s = time.monotonic() - t0
            try:
                with c.transaction():
                    for stmt, params in statements:
                        c.execute(stmt, params)
                run.steps.append(Step(name, lock, s, time.monotonic() - t0))
            except psycopg.Error as exc:
                run.steps.append(Step(name, lock, s, time.monotonic() - t0, "failed", str(exc).strip().splitlines()[0]))
                run.outcome = "failed"

        for d in range(-days, 1):  # the days in the DEFAULT, oldest first, then today
            lo, hi = today + timedelta(days=d), today + timedelta(days=d + 1)
            part = sql.Identifier(SCHEMA, f"{TABLE}_p{lo:%Y%m%d}")
            step(
                f"move {lo:%m-%d} out of the DEFAULT",
                "ACCESS EXCLUSIVE on the parent (LOCK, CREATE … PARTITION OF scans the DEFAULT)",
                [
                    (sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(parent), None),
                    (
                        sql.SQL(
                            "CREATE TEMP TABLE moving ON COMMIT DROP AS WITH m AS (DELETE FROM {} WHERE created_at >= %s AND created_at < %s "
                            "RETURNING *) SELECT * FROM m"
                        ).format(default),
                        [lo, hi],
                    ),
                    (
                        sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                            part, parent, sql.Literal(lo), sql.Literal(hi)
                        ),
                        None,
                    ),
                    (sql.SQL("INSERT INTO {} SELECT * FROM moving").format(parent), None),
                ],
            )
        for d in range(1, PREMAKE + 1):
            lo, hi = today + timedelta(days=d), today + timedelta(days=d + 1)
            step(
                f"premake {lo:%m-%d}",
                "ACCESS EXCLUSIVE on the parent and the DEFAULT (CREATE … PARTITION OF, scans the DEFAULT)",
                [
                    (
                        sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                            sql.Identifier(SCHEMA, f"{TABLE}_p{lo:%Y%m%d}"), parent, sql.Literal(lo), sql.Literal(hi)
                        ),
                        None,
                    )
                ],
            )
        expired = c.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass "
            "AND pg_get_expr(c.relpartbound, c.oid) LIKE 'FOR VALUES FROM%%' AND c.relname < %s ORDER BY 1",
            [f"{SCHEMA}.{TABLE}", f"{TABLE}_p{today - timedelta(days=RETENTION_DAYS):%Y%m%d}"],
        ).fetchall()
        for (name,) in expired:
            step(
                f"drop {name[-8:]}",
                "ACCESS EXCLUSIVE on the parent (DROP TABLE of a partition)",
                [(sql.SQL("DROP TABLE {}").format(sql.Identifier(SCHEMA, name)), None)],
            )
    run.finished_at = time.monotonic() - t0


def pgmaint(dsn: str, config, t0: float, run: Run, retry_seconds: float, deadline: float) -> None:
    from include.pgmaint.db import connect
    from include.pgmaint.maintenance import RunContext, run_maintenance
    from include.pgmaint.migrate import migrate_table

    cfg = config.tables[0]
    conn = connect(dsn, config.lock_budget, application_name="replay-pgmaint")
    try:
        for job in ("migrate", "maintenance"):
            while True:
                s = time.monotonic() - t0
                try:
                    if job == "migrate":
                        r = migrate_table(
                            conn,
                            dsn,
                            config,
                            cfg,
                            context=RunContext("default_partition_migration", "replay", "migrate"),
                            snapshot_wait_seconds=max(5.0, deadline - time.monotonic()),
                        )
                        outcome, detail = (
                            r.outcome,
                            r.skipped_reason or f"{r.rows_moved:,} rows into {len(r.partitions)} partitions",
                        )
                    else:
                        (r,) = run_maintenance(
                            conn, config, context=RunContext("partition_maintenance", "replay", "table")
                        )
                        outcome = r.outcome
                        detail = (
                            r.skipped_reason
                            or "; ".join(r.errors)
                            or f"created {len(r.created)}, dropped {len(r.dropped)}, detached {len(r.detached)}"
                        )[:300]
                except Exception as exc:  # a failed attempt is a data point: the next schedule retries
                    outcome, detail = "failed", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                run.steps.append(
                    Step(
                        f"{job} (attempt)",
                        "lock budget: ≤ 200 ms waits, then back off",
                        s,
                        time.monotonic() - t0,
                        "ok" if outcome == "success" else outcome,
                        detail,
                    )
                )
                if outcome == "success" or time.monotonic() > deadline:
                    break
                time.sleep(retry_seconds)
            if outcome != "success":
                run.outcome = "failed"
                break
        # The statements pgmaint executed, with their locks, from its journal.
        rows = conn.execute(
            sql.SQL(
                "SELECT action, target, locks, extract(epoch FROM started_at), extract(epoch FROM finished_at), outcome "
                "FROM {}.steps ORDER BY step_id"
            ).format(sql.Identifier(STATE_SCHEMA))
        ).fetchall()
        wall0 = time.time() - (time.monotonic() - t0)
        for action, target, locks, st, en, oc in rows:
            run.steps.append(
                Step(
                    f"{action} {target.split('.')[-1]}",
                    "; ".join(sorted(set(locks)))[:120],
                    float(st) - wall0,
                    float(en) - wall0,
                    "ok" if oc == "success" else oc,
                )
            )
    finally:
        conn.close()
    run.finished_at = time.monotonic() - t0


def report_transaction(dsn: str, start_at: float, seconds: float, t0: float, out: dict) -> None:
    """BEGIN; SELECT count(*) over the whole table (ACCESS SHARE on every partition); stay open; COMMIT."""
    time.sleep(max(0.0, start_at - (time.monotonic() - t0)))
    with psycopg.connect(dsn, application_name="replay-report") as c:
        out["start"] = time.monotonic() - t0
        c.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, TABLE))).fetchone()
        time.sleep(max(0.0, seconds - (time.monotonic() - t0 - out["start"])))
        c.commit()
        out["end"] = time.monotonic() - t0


# --- measuring ----------------------------------------------------------------------------------------


def per_second(requests: list[Request], in_use: list[tuple[float, int]], horizon: float) -> list[dict]:
    out = []
    for s in range(int(horizon) + 1):
        done = [r for r in requests if s <= r.due < s + 1]
        ok = sorted(r.latency * 1000 for r in done if r.outcome == "ok")
        lat = sorted(r.latency * 1000 for r in done)
        conns = [n for t, n in in_use if s <= t < s + 1]
        out.append(
            {
                "second": s,
                "requests": len(done),
                "ok": len(ok),
                "errors": sum(r.outcome == "error" for r in done),
                "timeouts": sum(r.outcome in ("timeout", "pool_timeout") for r in done),
                "p50_ms": _pct(lat, 50),
                "p99_ms": _pct(lat, 99),
                "max_ms": lat[-1] if lat else None,
                "connections_in_use": max(conns) if conns else 0,
            }
        )
    return out


def _pct(xs: list[float], p: float):
    if not xs:
        return None
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs))) - 1))]


def verdict(name: str, run: Run, requests: list[Request], due: float, rate: float) -> dict:
    lat = sorted(r.latency * 1000 for r in requests)
    return {
        "contender": name,
        "outcome": run.outcome,
        "time_to_finish_s": round(run.finished_at, 2) if run.finished_at is not None else None,
        "requests_due": int(due * rate),
        "requests": len(requests),
        "ok": sum(r.outcome == "ok" for r in requests),
        "timeouts": sum(r.outcome == "timeout" for r in requests),
        "pool_timeouts": sum(r.outcome == "pool_timeout" for r in requests),
        "errors": sum(r.outcome != "ok" for r in requests),
        "p50_ms": round(_pct(lat, 50), 1) if lat else None,
        "p99_ms": round(_pct(lat, 99), 1) if lat else None,
        "max_stall_ms": round(lat[-1], 1) if lat else None,
        "over_1s": sum(x > 1000 for x in lat),
    }


def run_contender(name: str, dsn: str, args, config, progress) -> dict:
    info = seed(dsn, datetime.now(timezone.utc), args.days, args.rows_per_day)
    api = Api(
        dsn, rate=args.rate, clients=args.clients, pool=args.pool, timeout_ms=args.timeout_ms, max_id=info["max_id"]
    )
    t0 = time.monotonic()
    api.start(t0)
    report: dict = {}
    rt = threading.Thread(
        target=report_transaction, args=(dsn, args.warmup, args.report_seconds, t0, report), daemon=True
    )
    rt.start()
    run = Run(name)
    time.sleep(args.warmup + 0.5)
    progress(f"{name}: maintenance starts behind the report transaction")
    deadline = time.monotonic() + args.report_seconds + args.budget_seconds
    worker = threading.Thread(
        target=(lambda: naive(dsn, info["today"], args.days, t0, run))
        if name == "naive"
        else (lambda: pgmaint(dsn, config, t0, run, args.retry_seconds, deadline)),
        daemon=True,
    )
    worker.start()
    while worker.is_alive() or rt.is_alive():
        time.sleep(0.25)
        progress(None)
    time.sleep(args.tail)
    api.stop()
    horizon = time.monotonic() - t0
    with psycopg.connect(dsn, autocommit=True) as c:
        left = c.execute(
            sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(SCHEMA, f"{TABLE}_default"))
        ).fetchone()[0]
        parts = c.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = %s::regclass", [f"{SCHEMA}.{TABLE}"]
        ).fetchone()[0]
    v = verdict(name, run, api.requests, horizon, args.rate)
    v.update(default_rows_before=info["default_rows"], default_rows_after=left, partitions_after=parts)
    return {
        "name": name,
        "verdict": v,
        "steps": [vars(s) for s in run.steps],
        "report": report,
        "seconds": per_second(api.requests, api.in_use, horizon),
        "requests": api.requests,
        "horizon": horizon,
    }


# --- drawing ------------------------------------------------------------------------------------------

LOCK_COLOURS = {"ACCESS EXCLUSIVE": "#e53935", "lock budget": "#43a047"}


def draw(results: list[dict], path: Path, timeout_ms: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        3,
        len(results),
        figsize=(7 * len(results), 8.5),
        sharex="col",
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1.3, 1.3]},
    )
    top = max((s["max_ms"] or 0) for r in results for s in r["seconds"]) or 1
    for col, r in enumerate(results):
        secs = r["seconds"]
        x = [s["second"] + 0.5 for s in secs]
        ax = axes[0][col]
        for key, style in (("max_ms", ":"), ("p99_ms", "-"), ("p50_ms", "--")):
            ax.plot(x, [s[key] for s in secs], style, label=key.replace("_ms", ""), linewidth=1.4)
        ax.axhline(timeout_ms, color="grey", linewidth=0.8)
        ax.text(0, timeout_ms, " timeout", va="bottom", fontsize=7, color="grey")
        ax.set_yscale("log")
        ax.set_ylim(0.5, top * 2)
        ax.set_ylabel("API latency ms (from due)")
        v = r["verdict"]
        ax.set_title(
            f"{r['name']}: {v['errors']} errors/timeouts, max stall {v['max_stall_ms']:,.0f} ms, "
            f"finished at {v['time_to_finish_s']} s",
            fontsize=10,
        )
        for band in [
            ("report transaction (ACCESS SHARE)", r["report"].get("start"), r["report"].get("end"), "#90a4ae")
        ] + [(s["name"], s["start"], s["end"], _lock_colour(s["lock"])) for s in r["steps"]]:
            name, start, end, colour = band
            if start is None or end is None:
                continue
            for a in axes[:, col]:
                a.axvspan(start, max(end, start + 0.05), color=colour, alpha=0.18, linewidth=0)
        y = top * 1.3
        for s in r["steps"]:
            if s["end"] - s["start"] > 0.2 * max(r["horizon"] / 20, 1) or "attempt" in s["name"]:
                ax.text(s["start"], y, s["name"], fontsize=6, rotation=90, va="top", ha="left")
        ax.legend(loc="upper right", fontsize=7)
        ax = axes[1][col]
        ax.bar(
            [s["second"] for s in secs],
            [s["timeouts"] for s in secs],
            width=1,
            align="edge",
            color="#e53935",
            label="timeouts",
        )
        ax.bar(
            [s["second"] for s in secs],
            [s["errors"] for s in secs],
            width=1,
            align="edge",
            bottom=[s["timeouts"] for s in secs],
            color="#8e24aa",
            label="errors",
        )
        ax.set_ylabel("failed / s")
        ax.legend(loc="upper right", fontsize=7)
        ax = axes[2][col]
        ax.step([s["second"] for s in secs], [s["connections_in_use"] for s in secs], where="post", color="#1e88e5")
        ax.set_ylabel("pool conns in use")
        ax.set_xlabel("seconds (red: ACCESS EXCLUSIVE step, green: pgmaint under its lock budget, grey: report txn)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _lock_colour(lock: str) -> str:
    if "lock budget" in lock:
        return "#43a047"
    return "#e53935" if "ACCESS EXCLUSIVE" in lock or "AccessExclusive" in lock else "#fdd835"


def write_html(results: list[dict], args, out: Path, png: str, meta: dict) -> None:
    cols = [
        "contender",
        "outcome",
        "errors",
        "timeouts",
        "pool_timeouts",
        "max_stall_ms",
        "p99_ms",
        "p50_ms",
        "over_1s",
        "requests",
        "requests_due",
        "time_to_finish_s",
        "default_rows_before",
        "default_rows_after",
        "partitions_after",
    ]
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r['verdict'][c]))}</td>" for c in cols) + "</tr>" for r in results
    )
    steps = ""
    for r in results:
        steps += f"<h3>{html.escape(r['name'])}: steps</h3><table><tr><th>step</th><th>lock</th><th>start s</th><th>end s</th><th>outcome</th><th>detail</th></tr>"
        steps += (
            "".join(
                f"<tr><td>{html.escape(s['name'])}</td><td>{html.escape(s['lock'])}</td><td>{s['start']:.2f}</td>"
                f"<td>{s['end']:.2f}</td><td>{html.escape(s['outcome'])}</td><td>{html.escape(s['detail'])}</td></tr>"
                for s in r["steps"]
            )
            + "</table>"
        )
    params = html.escape(json.dumps(meta, indent=1, default=str))
    (out / "report.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>pgmaint replay</title><style>"
        "body{font:14px system-ui,sans-serif;margin:16px} table{border-collapse:collapse} td,th{border:1px solid #ddd;padding:3px 6px;font-size:13px}"
        "</style></head><body><h1>The incident, replayed</h1>"
        f"<p>Simulated API: {args.clients} clients, {args.rate:g} requests/s, pool {args.pool}, statement timeout {args.timeout_ms} ms. "
        f"A report transaction holds ACCESS SHARE on the table for {args.report_seconds:g} s; the maintenance starts "
        f"{args.warmup + 0.5:g} s in, just after it. All figures measured in this run.</p>"
        f"<h2>Verdict</h2><table><tr>{''.join(f'<th>{c}</th>' for c in cols)}</tr>{rows}</table>"
        f"<p><img src='{png}' style='max-width:100%'></p>{steps}<h2>Parameters</h2><pre>{params}</pre></body></html>"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="replay.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="a few seconds per contender (the test suite's mode)")
    ap.add_argument(
        "--dsn", default=os.environ.get("PGMAINT_REPLAY_DSN"), help="a staging database (scratch schema pgmaint_replay)"
    )
    ap.add_argument("--config", help="your pgmaint YAML: its lock_budget and preflight are used")
    ap.add_argument("--rate", type=float)
    ap.add_argument("--clients", type=int)
    ap.add_argument("--pool", type=int)
    ap.add_argument("--timeout-ms", type=int)
    ap.add_argument("--report-seconds", type=float)
    ap.add_argument("--days", type=int, help="days of rows in the DEFAULT before today")
    ap.add_argument("--rows-per-day", type=int)
    ap.add_argument(
        "--retry-seconds", type=float, help="pgmaint's schedule, compressed: retry a skipped run after this"
    )
    ap.add_argument("--out", default=str(REPO / "replay"))
    args = ap.parse_args(argv)
    quick = {
        "rate": 60,
        "clients": 4,
        "pool": 4,
        "timeout_ms": 2000,
        "report_seconds": 5,
        "days": 1,
        "rows_per_day": 20_000,
        "retry_seconds": 1.0,
        "warmup": 1.5,
        "tail": 1.0,
        "budget_seconds": 60,
    }
    full = {
        "rate": 200,
        "clients": 8,
        "pool": 10,
        "timeout_ms": 5000,
        "report_seconds": 20,
        "days": 3,
        "rows_per_day": 300_000,
        "retry_seconds": 3.0,
        "warmup": 4.0,
        "tail": 3.0,
        "budget_seconds": 180,
    }
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    from tqdm import tqdm

    from include.pgmaint.config import ConfigError

    try:
        config = replay_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"replay: --config: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    server = None
    if args.dsn:
        dsn = args.dsn
    else:
        import devdb

        pgdata = Path(tempfile.mkdtemp(prefix="pgmaint-replay-", dir="/tmp"))
        server = pgdata
        dsn = devdb.start_server(pgdata, cleanup_mode="delete").conninfo("postgres")
    expected = 2 * (args.warmup + args.report_seconds + args.tail + 4)
    bar = tqdm(total=round(expected), unit="s", desc="replay", file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
    started = time.monotonic()

    def progress(message):
        if message:
            bar.set_description(message[:60])
        bar.n = min(int(time.monotonic() - started), bar.total)
        bar.refresh()

    results = []
    try:
        for name in ("naive", "pgmaint"):
            progress(f"{name}: seeding")
            results.append(run_contender(name, dsn, args, config, progress))
    finally:
        bar.close()
        if args.dsn:
            with psycopg.connect(dsn, autocommit=True) as c:
                for s in (SCHEMA, STATE_SCHEMA):
                    c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(s)))
        elif server is not None:
            import devdb

            devdb.stop_server(server, delete=True)
    for r in results:
        with open(out / f"requests-{r['name']}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["due_s", "started_s", "ended_s", "latency_ms", "op", "outcome", "error"])
            for q in r["requests"]:
                w.writerow(
                    [
                        f"{q.due:.4f}",
                        f"{q.started:.4f}",
                        f"{q.ended:.4f}",
                        f"{q.latency * 1000:.2f}",
                        q.op,
                        q.outcome,
                        q.error,
                    ]
                )
    draw(results, out / "replay.png", args.timeout_ms)
    meta = {
        k: getattr(args, k)
        for k in (
            "rate",
            "clients",
            "pool",
            "timeout_ms",
            "report_seconds",
            "days",
            "rows_per_day",
            "retry_seconds",
            "quick",
        )
    }
    meta["database"] = "--dsn" if args.dsn else "embedded PostgreSQL (pgserver)"
    write_html(results, args, out, "replay.png", meta)
    (out / "results.json").write_text(
        json.dumps(
            {
                "parameters": meta,
                "contenders": [{k: r[k] for k in ("name", "verdict", "steps", "report", "seconds")} for r in results],
            },
            indent=1,
            default=str,
        )
    )
    print(
        "\n| contender | outcome | errors+timeouts | max stall ms | p99 ms | requests / due | finished at s | DEFAULT rows before → after |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        v = r["verdict"]
        print(
            f"| {v['contender']} | {v['outcome']} | {v['errors']} | {v['max_stall_ms']} | {v['p99_ms']} | {v['requests']} / "
            f"{v['requests_due']} | {v['time_to_finish_s']} | {v['default_rows_before']:,} → {v['default_rows_after']:,} |"
        )
    print(f"\nreport: {out / 'report.html'}\npicture: {out / 'replay.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
