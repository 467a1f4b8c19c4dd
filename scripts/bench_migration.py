#!/usr/bin/env python3
"""Migration benchmark: move a DEFAULT partition's rows out, three ways, under a simulated API.

    .venv/bin/python scripts/bench_migration.py [--sets 1M/10d,4M/4d] [--quick] [--dsn CONNINFO]
                                                [--live-day in-default|partitioned|both]
                                                [--contenders pgmaint,pgmaint-dag,partman,partman-no-late,
                                                              partman-api-only,physical,pgmaint-api-only,
                                                              pgmaint-dag-api-only,pgmaint-deployed,
                                                              pgmaint-deployed-api-only]
                                                [--batch-rows 50000] [--airflow-metadata same-cluster|own-cluster]
                                                [--quiet-wait 180] [--keep-cluster]
    make bench-migration [BENCH_ARGS="--quick"]

Figures, not a timed test: exits 0 when a target is missed. Exits 1 when a contender lost
or duplicated a seeded or API row, when pgmaint (engine or DAG) or the physical limit did not
finish (pg_partman not finishing is a measured outcome, reported as DNF), or when the
application workload noticed anything during a pgmaint move (for pg_partman and the physical
limit its figures are measured outcomes). Tables go to stdout, progress to stderr.

Server: a throwaway PostgreSQL 15 cluster from /usr/lib/postgresql/15/bin
(scripts/pg15cluster.py: initdb as the `postgres` OS user in /tmp, shared_buffers
512MB, max_wal_size 4GB, checkpoint_timeout 15min, fsync and synchronous_commit on,
pg_stat_statements preloaded), deleted at exit; or `--dsn` (a role that may
CREATE DATABASE; the database `pgmaint_bench_migration` is recreated there).

Data set "N/Dd" (e.g. 1M/10d): `bench.req`, an API request log
    id bigint GENERATED ALWAYS AS IDENTITY, created_at timestamptz, client_id int,
    method text, path text, status smallint, duration_ms int, payload text (100 bytes)
    PRIMARY KEY (id, created_at), index on created_at, PARTITION BY RANGE (created_at), daily
with empty partitions for the 30 - D days before the window (retention 30 days) and a
DEFAULT holding N rows spread evenly over D days. Every contender gets byte-identical rows
(ids 1..N in time order, values derived from the id; the time span is fixed once per data
set). VACUUM ANALYZE after seeding, CHECKPOINT before each contender.

Two scenarios (--live-day, default both), because they behave differently:
- in-default: the rows span the D days ending at T0 (when the data set starts) and today has
  no partition, so the API's inserts at now() land in the DEFAULT too (the incident's state).
  pg_partman's partition_data_proc cannot finish here: its ATTACH of today's partition
  re-checks the DEFAULT and finds rows the API inserted after its DELETE.
- partitioned: the rows span the D full days before today; today's partition and PREMAKE
  more exist, so the API's inserts land there. All three contenders can finish.

Contenders, each on a fresh re-seed of the same data, on the same server:
1. pgmaint  `include.pgmaint.migrate.migrate_table` (batch_rows 50,000 by default), config
            interval 1 day, premake 4, retention 30 days; the state schema is created before
            timing (as in production after the first run). If the call fails it is called once
            more at once (an Airflow task retry); the wall time covers both and it is reported.
2. partman  pg_partman 4.7.2: before seeding the rows, `partman.create_parent(p_parent_table =>
            'bench.req', p_control => 'created_at', p_type => 'native', p_interval => 'daily',
            p_premake => 4, p_start_partition => <first pre-window day>)`; the partitions it made
            for the window and beyond are then dropped (that is the incident: maintenance
            stopped), so the partition set is the same as the others'. Timed:
            `CALL partman.partition_data_proc('bench.req', p_wait => 0)` on an autocommit
            connection (p_wait 0 rather than the default 1 s pause between intervals, to be
            fair on wall time; other arguments default). A failed CALL is repeated at once, up
            to 5 calls in all (what an operator would do); the wall time covers every call.
            Skipped with a reason if the extension cannot be created.
   partman-no-late  The same while the application workload makes no late inserts for the
            days being moved: each such insert, landing between partition_data_proc's DELETE
            and its ATTACH, makes the ATTACH fail, so with them it never finishes; this
            variant gives the time to compare with where it can finish. partman-api-only: the
            simulated API alone, no application workload at all (the application's updates,
            deletes and upserts can deadlock with partition_data_proc too). pgmaint-api-only and
            pgmaint-dag-api-only: pgmaint's engine and whole DAG under the same load, for a like-for-
            like ratio (no write reaches the DEFAULT then: the swap reuses the verified figures).
3. physical One transaction: LOCK the parent (ACCESS EXCLUSIVE, so no write can slip in
            between a day's DELETE and its ATTACH), then for each day of the window: CREATE
            TABLE ... (LIKE parent INCLUDING ALL), INSERT ... SELECT from the DEFAULT, DELETE
            from the DEFAULT, ADD the bound CHECK, ATTACH. No concern for readers or writers
            (they wait); the day list is known in advance.

pgmaint-dag  The whole `default_partition_migration` DAG, gates included:
            `scripts/airflow dags test default_partition_migration --conf '{"table": "bench.req",
            "batch_rows": …}'` as a subprocess, with PGMAINT_AIRFLOW_HOME a private directory
            under /tmp (SQLite metadata DB migrated once before anything is timed; deleted at
            exit), AIRFLOW_CONN_PGMAINT_TARGET = the bench database, PGMAINT_CONFIG = a file
            with the same config as contender 1. Wall time: command start to exit. Reported
            beside it: the engine's time (the migration's row in <state_schema>.runs, and the
            `finish` task that drops the old DEFAULT) and every task's time (Airflow's DB).

pgmaint-deployed  The same DAG as a user runs it: a deployed Airflow (scripts/airflow_local.py:
            API server, scheduler with LocalExecutor and Airflow's default scheduler settings, DAG
            processor, triggerer; metadata DB in a database of the benchmark's cluster, or with
            --airflow-metadata own-cluster of a second throwaway cluster on the same disk) is started
            before the contender and stopped after it, untimed; the run is triggered with
            `POST /api/v2/dags/default_partition_migration/dagRuns` (the UI's trigger form) and its
            state polled every 0.2 s. Wall time: from the POST to the poll that sees it finished.

Application workload (scripts/app_workload.py), beside the API during each move and the
baseline: 4 connections, each owning ~500 of the seeded rows (ids that are multiples of
N / 2,000, spread over every day) and the rows it inserts (ids from 50,000,000), reading
them by key, updating, deleting, upserting, inserting at now() and late rows for the days
being moved. It counts key reads that found nothing, UPDATEs/DELETEs that matched nothing,
errors, and afterwards compares the table with what it wrote: rows lost, resurrected,
payloads wrong, duplicate keys.

Simulated API, running from 2 s before each move until it ends: 8 client threads, each
paced at one request every 40 ms on a fixed schedule (25 req/s, 200 req/s in all), through
a pool of 10 connections (a queue of psycopg connections; psycopg_pool is not a project
dependency), statement_timeout 5 s. Each client rotates inserts at now(), count(*) over the
last minute, and a read by a random seeded id. Latency runs from the request's *scheduled*
start (waiting for a pooled connection and any backlog included); figures cover the requests
scheduled between the start and the end of the move. Its reads by id skip the rows the
application workload owns (it deletes some). A separate session samples
`SELECT count(*) FROM pg_locks WHERE NOT granted` every 50 ms.

Verification after each contender (PASS/FAIL): the seeded rows (id <= N) the application
workload does not own read through the parent have the seeded count and checksum
(sum(hashtextextended(t::text, 0))); every row the API inserted is there (count of
N < id < 50,000,000 = successful inserts); and the DEFAULT holds no row for an in-window
day. The application workload's `check` covers its own rows.

Where pgmaint's time goes: its public engine functions are wrapped with timers by this
script (no engine file is changed), and pg_stat_statements gives each contender's
statements (calls, total and max time, rows, WAL) and the API statements' server-side time.

Noise: before each measurement the script waits (up to --quiet-wait s) until other processes
on the machine use < 0.3 cores, and reports the cores they used during each move.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import queue
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (REPO, REPO / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import psycopg  # noqa: E402
from app_workload import AppWorkload  # noqa: E402  (scripts/app_workload.py)
from psycopg import sql  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

from include.pgmaint import execute as pg_execute  # noqa: E402
from include.pgmaint import migrate as pg_migrate  # noqa: E402
from include.pgmaint.config import parse_config  # noqa: E402
from include.pgmaint.db import connect  # noqa: E402
from include.pgmaint.migrate import migrate_table  # noqa: E402
from include.pgmaint.state import ensure_state_schema  # noqa: E402

BENCH_DB = "pgmaint_bench_migration"
SCHEMA = "bench"
TABLE = "req"
PARENT = f"{SCHEMA}.{TABLE}"
STATE_SCHEMA = "pgmaint_bench"
RETENTION_DAYS = 30
PREMAKE = 4

API_CLIENTS = 8
API_PERIOD_S = 0.040  # one request per client every 40 ms: 25 req/s each
API_POOL = 10
API_STATEMENT_TIMEOUT = "5s"
API_WARMUP_S = 2.0
API_TAIL_S = 0.5
LOCK_SAMPLE_S = 0.050
QUIET_CORES = (
    0.3  # before each measurement, wait (up to --quiet-wait s) until other processes use fewer cores than this
)

PARTMAN_TRIES = 5  # calls of partition_data_proc before giving up
PGMAINT_TRIES = 2  # calls of migrate_table (a DAG task retry)

TARGET_VS_PARTMAN = 1.0
TARGET_VS_PHYSICAL = 2.0
TARGET_MAX_MS = 100.0
TARGET_P99_MS = 20.0
TARGET_ERRORS = 0

APP_ROWS = 2_000  # seeded rows the application workload owns (every APP_ROWS-th part of the ids, spread over the days)
APP_WORKERS = 4
APP_PAUSE_S = 0.005  # between one worker's statements
APP_ID_BASE = 50_000_000  # the application's new rows get ids from here (the API's come from the sequence, after N)
APP_INSERT_VALUES = {"client_id": 7, "method": "PUT", "path": "/api/v1/app-workload", "status": 200, "duration_ms": 1}

# The application workload's statements (left out of the contenders' top statements)
APP_QUERIES = [
    f'SELECT payload FROM "{SCHEMA}"."{TABLE}" WHERE id = %',
    f'UPDATE "{SCHEMA}"."{TABLE}" SET payload = %',
    f'DELETE FROM "{SCHEMA}"."{TABLE}" WHERE id = %',
    f'INSERT INTO "{SCHEMA}"."{TABLE}" (id, "created_at", payload%',
    'SELECT id, "created_at", payload FROM %',
    "SELECT count(*) FROM (SELECT 1 FROM %",
]

DAG_ID = "default_partition_migration"
DAG_TIMEOUT_S = 3600

API_TAG = "/* bench-api */ "
SAMPLER_TAG = "/* bench-sampler */ "


def log(msg: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


# --- data sets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSet:
    label: str
    rows: int
    days: int


def parse_sets(text: str) -> list[DataSet]:
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)([kKmM]?)\s*/\s*(\d+)\s*d\s*", part)
        if not m:
            raise SystemExit(f"--sets: {part!r} is not like 1M/10d or 100k/5d")
        scale = {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
        rows, days = int(float(m.group(1)) * scale), int(m.group(3))
        if rows < 10 or rows > APP_ID_BASE // 2 or days < 1 or days >= RETENTION_DAYS:
            raise SystemExit(
                f"--sets: {part!r}: need 10 <= rows <= {APP_ID_BASE // 2:,} and 1 <= days < {RETENTION_DAYS}"
            )
        out.append(DataSet(part.strip(), rows, days))
    return out


def day_floor(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass
class Layout:
    """Where the rows go, fixed once per data set so every contender gets the same rows."""

    ds: DataSet
    t_end: datetime  # rows span [t_end - days, t_end)
    live_day: str = (
        "in-default"  # in-default: today has no partition (writers insert into the DEFAULT); partitioned: it has
    )

    @classmethod
    def at(cls, ds: DataSet, now: datetime, live_day: str) -> Layout:
        now = now.astimezone(timezone.utc).replace(microsecond=0)
        return cls(ds, now if live_day == "in-default" else day_floor(now), live_day)

    @property
    def t_start(self) -> datetime:
        return self.t_end - timedelta(days=self.ds.days)

    @property
    def first_window_day(self) -> datetime:
        return day_floor(self.t_start)

    @property
    def window_days(self) -> list[datetime]:
        days, d = [], self.first_window_day
        while d < self.t_end:
            days.append(d)
            d += timedelta(days=1)
        return days

    @property
    def pre_window_days(self) -> list[datetime]:
        first = self.first_window_day
        return [first - timedelta(days=k) for k in range(RETENTION_DAYS - self.ds.days, 0, -1)]

    @property
    def post_window_days(self) -> list[datetime]:
        """Partitions that exist after the window: today and the premade ones (scenario 'partitioned' only)."""
        if self.live_day == "in-default":
            return []
        return [self.t_end + timedelta(days=k) for k in range(PREMAKE + 1)]

    @property
    def existing_days(self) -> list[datetime]:
        return self.pre_window_days + self.post_window_days

    @property
    def app_stride(self) -> int:
        """The application workload owns the seeded rows whose id is a multiple of this (about APP_ROWS of them)."""
        return max(2, self.ds.rows // APP_ROWS)


def ts(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S+00")


# --- server & database ----------------------------------------------------------------------


def with_db(conninfo: str, dbname: str) -> str:
    params = conninfo_to_dict(conninfo)
    params["dbname"] = dbname
    return make_conninfo("", **params)


@contextlib.contextmanager
def server(dsn: str | None, keep: bool, under: str = "/tmp"):
    if dsn:
        yield dsn, "external server (--dsn)", None
        return
    import pg15cluster

    problem = pg15cluster.binaries_present()
    if problem:
        raise SystemExit(f"cannot start PostgreSQL 15: {problem}")
    log("starting a throwaway PostgreSQL 15 cluster (scripts/pg15cluster.py)")
    cluster = pg15cluster.start(parent_dir=under)
    log(f"cluster in {cluster.pgdata}, port {cluster.port}")
    try:
        pid = int((cluster.pgdata / "postmaster.pid").read_text().split()[0])
        yield (
            cluster.conninfo,
            f"throwaway PG15 cluster in {cluster.pgdata} (scripts/pg15cluster.py; {filesystem_of(cluster.pgdata)})",
            pid,
        )
    finally:
        log("stopping the cluster" + (" (kept)" if keep else " and deleting its data directory"))
        pg15cluster.stop(cluster.pgdata, delete=not keep)


def filesystem_of(path) -> str:
    """The file system holding `path` and its mount options, from /proc/mounts: `DROP TABLE` frees the table's file at
    commit, and on a file system mounted with online `discard` that free stalls every fsync (the API's commits) for
    a few hundred milliseconds per GB on this kind of virtual disk."""
    best = None
    with contextlib.suppress(OSError):
        real = os.path.realpath(path)
        for line in open("/proc/mounts"):
            device, mount, kind, options, *_ = line.split()
            mount = mount.replace("\\040", " ")
            if (real == mount or real.startswith(mount.rstrip("/") + "/")) and (
                best is None or len(mount) > len(best[1])
            ):
                best = (device, mount, kind, options)
    if best is None:
        return "file system unknown"
    device, mount, kind, options = best
    discard = "online discard ON" if "discard" in options.split(",") else "no online discard"
    return f"{kind} on {device} at {mount}, {discard}"


def fresh_database(admin_conninfo: str) -> str:
    with psycopg.connect(admin_conninfo, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
    return with_db(admin_conninfo, BENCH_DB)


def setup_extensions(conn) -> tuple[str | None, bool]:
    """(reason pg_partman is unavailable or None, pg_stat_statements available)."""
    partman_problem = None
    try:
        conn.execute("CREATE SCHEMA IF NOT EXISTS partman")
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_partman SCHEMA partman")
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'").fetchone()[0]
        if not version.startswith("4."):
            partman_problem = f"pg_partman {version} installed; this benchmark drives the 4.x API (4.7.2)"
    except psycopg.Error as exc:
        partman_problem = (
            f"CREATE EXTENSION pg_partman failed: {str(exc).strip()} (apt-get install -y postgresql-15-partman)"
        )
    pgss = True
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")
    except psycopg.Error as exc:
        log(f"pg_stat_statements unavailable ({str(exc).strip()}); no per-statement profile")
        pgss = False
    return partman_problem, pgss


# --- seeding ---------------------------------------------------------------------------------

ROW_VALUES = """
    g,
    %(t_start)s::timestamptz + (%(t_end)s::timestamptz - %(t_start)s::timestamptz) * ((g - 0.5) / %(n)s::float8),
    (hashint4(g::int) & 1023) + 1,
    (ARRAY['GET','GET','GET','GET','POST','POST','PUT','DELETE'])[1 + (g %% 8)],
    '/api/v1/' || (ARRAY['users','orders','items','search','auth','reports'])[1 + ((g / 8) %% 6)] || '/' || (hashint4(g::int + 7) & 65535),
    (ARRAY[200,200,200,200,200,200,201,204,301,400,401,404,500])[1 + ((g / 3) %% 13)]::smallint,
    (hashint4(g::int + 13) & 2047),
    md5(g::text) || md5((g + 1)::text) || left(md5((g + 2)::text), 36)
"""


@dataclass
class Seeded:
    rows: int  # seeded rows the application workload does not own: they must come out unchanged
    checksum: int
    seconds: float
    app_rows: list = field(default_factory=list)  # (id, created_at) of the seeded rows the application workload owns


def seed(conn, lay: Layout, *, partman: bool, partman_available: bool) -> Seeded:
    t0 = time.monotonic()
    parent = sql.Identifier(SCHEMA, TABLE)
    if partman_available:
        conn.execute("DELETE FROM partman.part_config WHERE parent_table = %s", [PARENT])
        conn.execute("DROP TABLE IF EXISTS partman.template_bench_req")
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(STATE_SCHEMA)))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    conn.execute(
        sql.SQL("""
        CREATE TABLE {} (
            id          bigint GENERATED ALWAYS AS IDENTITY,
            created_at  timestamptz NOT NULL,
            client_id   int NOT NULL,
            method      text NOT NULL,
            path        text NOT NULL,
            status      smallint NOT NULL,
            duration_ms int NOT NULL,
            payload     text,
            PRIMARY KEY (id, created_at)
        ) PARTITION BY RANGE (created_at)""").format(parent)
    )
    conn.execute(
        sql.SQL("CREATE INDEX {} ON {} (created_at)").format(sql.Identifier(f"{TABLE}_created_at_idx"), parent)
    )
    first = lay.pre_window_days[0]
    if partman:
        # Register with pg_partman while the table is empty (create_parent makes a DEFAULT and
        # partitions up to now + premake), then drop what the failed maintenance never made.
        conn.execute(
            "SELECT partman.create_parent(p_parent_table => %s, p_control => 'created_at', p_type => 'native', "
            "p_interval => 'daily', p_premake => %s, p_start_partition => %s)",
            [PARENT, PREMAKE, ts(first)],
        )
        rows = conn.execute(
            """
            SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = %s::regclass""",
            [PARENT],
        ).fetchall()
        names = {r[0] for r in rows}
        for day in lay.existing_days:
            if f"{TABLE}_p{day:%Y_%m_%d}" not in names:
                raise RuntimeError(f"create_parent did not make the partition for {day:%Y-%m-%d}: {sorted(names)}")
        keep = {f"{TABLE}_p{day:%Y_%m_%d}" for day in lay.existing_days} | {f"{TABLE}_default"}
        for name in sorted(names - keep):
            conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, sql.Identifier(SCHEMA, name)))
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(SCHEMA, name)))
    else:
        for day in lay.existing_days:
            conn.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(SCHEMA, f"{TABLE}_p{day:%Y_%m_%d}"),
                    parent,
                    sql.Literal(ts(day)),
                    sql.Literal(ts(day + timedelta(days=1))),
                )
            )
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
                sql.Identifier(SCHEMA, f"{TABLE}_default"), parent
            )
        )
    # The rows, in id (= time) order, as an append-only log has them.
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, created_at, client_id, method, path, status, duration_ms, payload) "
            "OVERRIDING SYSTEM VALUE SELECT " + ROW_VALUES + " FROM generate_series(1, %(n)s::bigint) g"
        ).format(parent),
        {"t_start": lay.t_start, "t_end": lay.t_end, "n": lay.ds.rows},
    )
    conn.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", [PARENT, lay.ds.rows])
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(parent))
    default = sql.Identifier(SCHEMA, f"{TABLE}_default")
    total, in_default = conn.execute(
        sql.SQL("SELECT (SELECT count(*) FROM {}), (SELECT count(*) FROM ONLY {})").format(parent, default)
    ).fetchone()
    if total != lay.ds.rows or in_default != total:
        raise RuntimeError(f"seeding went wrong: {total} rows, {in_default} in the DEFAULT, expected {lay.ds.rows}")
    n, ck = figures(conn, lay)
    app_rows = conn.execute(
        sql.SQL("SELECT id, created_at FROM ONLY {} WHERE id %% %s = 0 ORDER BY id").format(default), [lay.app_stride]
    ).fetchall()
    if n + len(app_rows) != total:
        raise RuntimeError(f"seeding went wrong: {n} + {len(app_rows)} application rows != {total}")
    return Seeded(n, ck, time.monotonic() - t0, app_rows)


def figures(conn, lay: Layout) -> tuple[int, int]:
    """Count and checksum of the seeded rows the application workload does not own (nobody writes them during a move)."""
    n, ck = conn.execute(
        sql.SQL(
            "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) FROM {} t WHERE id <= %s AND id %% %s <> 0"
        ).format(sql.Identifier(SCHEMA, TABLE)),
        [lay.ds.rows, lay.app_stride],
    ).fetchone()
    return int(n), int(ck)


def default_partition(conn) -> str | None:
    row = conn.execute(
        """
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = %s::regclass AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'""",
        [PARENT],
    ).fetchone()
    return row[0] if row else None


# --- the simulated API ------------------------------------------------------------------------


@dataclass
class Request:
    sched: float  # monotonic scheduled start
    latency: float  # seconds from sched to completion
    kind: str
    error: str | None = None
    found: bool | None = None  # reads by id: did the row come back


class ConnectionQueue:
    """A fixed pool: a queue of ready psycopg connections (broken ones are replaced)."""

    def __init__(self, conninfo: str, size: int):
        self.conninfo = conninfo
        self.q: queue.Queue = queue.Queue()
        for _ in range(size):
            self.q.put(self._new())

    def _new(self):
        return psycopg.connect(
            self.conninfo,
            autocommit=True,
            application_name="bench-api",
            options=f"-c statement_timeout={API_STATEMENT_TIMEOUT}",
        )

    @contextlib.contextmanager
    def connection(self):
        conn = self.q.get()
        try:
            yield conn
        finally:
            if conn.broken or conn.closed:
                with contextlib.suppress(Exception):
                    conn.close()
                try:
                    conn = self._new()
                except Exception:
                    time.sleep(0.1)
                    conn = self._new()
            self.q.put(conn)

    def close(self):
        while not self.q.empty():
            with contextlib.suppress(Exception):
                self.q.get_nowait().close()


INSERT_SQL = (
    API_TAG + "INSERT INTO bench.req (created_at, client_id, method, path, status, duration_ms, payload) "
    "VALUES (now(), %s, %s, %s, %s, %s, %s)"
)
COUNT_SQL = API_TAG + "SELECT count(*) FROM bench.req WHERE created_at > now() - interval '1 minute'"
READ_SQL = API_TAG + "SELECT * FROM bench.req WHERE id = %s"


class Api:
    """8 paced clients sharing a pool of 10; plus the pg_locks sampler."""

    def __init__(self, conninfo: str, seeded_rows: int, seed: int, app_stride: int):
        self.conninfo, self.seeded_rows, self.app_stride = conninfo, seeded_rows, app_stride
        self.pool = ConnectionQueue(conninfo, API_POOL)
        self.stop_event = threading.Event()
        self.requests: list[Request] = []
        self.lock_samples: list[tuple[float, int]] = []
        self.autovacuum: list[tuple[float, str]] = []
        # (time, the checkpointer's wait event, checkpoints so far): a checkpoint flushing and syncing GBs of copied
        # rows can hold the API's commits (their WAL fsyncs) back, whoever wrote the rows
        self.checkpointer: list[tuple[float, str | None, int]] = []
        # (time, MB dirty, MB under write-back) in the kernel's page cache: a write-back burst slows every fsync
        self.page_cache: list[tuple[float, float, float]] = []
        self.inserted = 0
        self._mutex = threading.Lock()
        self._seed = seed
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        t0 = time.monotonic() + 0.05
        for i in range(API_CLIENTS):
            th = threading.Thread(
                target=self._client, args=(i, t0 + i * API_PERIOD_S / API_CLIENTS), name=f"api-{i}", daemon=True
            )
            self._threads.append(th)
        self._threads.append(threading.Thread(target=self._sampler, name="lock-sampler", daemon=True))
        for th in self._threads:
            th.start()

    def stop(self) -> None:
        self.stop_event.set()
        for th in self._threads:
            th.join(timeout=15)
        self.pool.close()

    def _client(self, i: int, first: float) -> None:
        rng = random.Random(self._seed * 1000 + i)
        k = 0
        while not self.stop_event.is_set():
            sched = first + k * API_PERIOD_S
            kind = ("insert", "count", "read")[(k + i) % 3]
            k += 1
            delay = sched - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if self.stop_event.is_set():
                break
            error, found = None, None
            try:
                with self.pool.connection() as conn:
                    if kind == "insert":
                        conn.execute(
                            INSERT_SQL,
                            [
                                rng.randint(1, 1024),
                                rng.choice(("GET", "GET", "POST", "PUT")),
                                f"/api/v1/orders/{rng.randint(1, 65535)}",
                                200,
                                rng.randint(1, 2000),
                                rng.randbytes(50).hex(),
                            ],
                        )
                    elif kind == "count":
                        conn.execute(COUNT_SQL).fetchone()
                    else:
                        rid = rng.randint(1, self.seeded_rows)
                        if rid % self.app_stride == 0:  # not a row the application workload may have deleted
                            rid -= 1
                        found = conn.execute(READ_SQL, [rid]).fetchone() is not None
            except Exception as exc:  # any failure counts: timeouts, lock errors, constraint errors, broken connections
                error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            latency = time.monotonic() - sched
            with self._mutex:
                self.requests.append(Request(sched, latency, kind, error, found))
                if kind == "insert" and error is None:
                    self.inserted += 1

    def _sampler(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True, application_name="bench-sampler") as c:
            c.execute("SET statement_timeout = '1s'")
            nxt = time.monotonic()
            while not self.stop_event.is_set():
                try:
                    n, av, cp_wait, cp_count = c.execute(
                        SAMPLER_TAG + "SELECT count(*) FILTER (WHERE NOT granted), "
                        "(SELECT string_agg(query, '; ') FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' "
                        "AND query <> ''), "
                        "(SELECT wait_event FROM pg_stat_activity WHERE backend_type = 'checkpointer'), "
                        "(SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter) FROM pg_locks"
                    ).fetchone()
                    now = time.monotonic()
                    self.lock_samples.append((now, int(n)))
                    self.checkpointer.append((now, cp_wait, int(cp_count)))
                    dirty = page_cache_dirty()
                    if dirty:
                        self.page_cache.append((now, *dirty))
                    if av:
                        self.autovacuum.append((now, av))
                except psycopg.Error:
                    pass
                nxt += LOCK_SAMPLE_S
                time.sleep(max(0.0, nxt - time.monotonic()))


@dataclass
class ApiFigures:
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    over_100ms: int
    over_1s: int
    max_lock_waiters: int
    lock_samples: int
    reads: int = 0
    reads_missing: int = 0
    error_kinds: dict = field(default_factory=dict)
    autovacuum: list = field(default_factory=list)  # distinct autovacuum worker activities seen during the move
    by_kind: dict = field(default_factory=dict)  # kind -> (requests, p50, p99, max) in ms
    slow: list = field(default_factory=list)  # (scheduled start, latency ms, kind) of requests over 100 ms
    checkpointer: list = field(default_factory=list)  # (time, wait event, checkpoints so far) sampled during the move
    page_cache: list = field(default_factory=list)  # (time, MB dirty, MB under write-back) sampled during the move


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = max(1, int(-(-q * len(sorted_values) // 1)))  # nearest rank
    return sorted_values[min(rank, len(sorted_values)) - 1]


def api_figures(api: Api, start: float, end: float) -> ApiFigures:
    reqs = [r for r in api.requests if start <= r.sched <= end]
    lat = sorted(r.latency * 1000 for r in reqs)
    errors = [r for r in reqs if r.error]
    kinds: dict[str, int] = {}
    for r in errors:
        key = f"{r.kind}: {r.error[:120]}"
        kinds[key] = kinds.get(key, 0) + 1
    samples = [n for t, n in api.lock_samples if start <= t <= end]
    reads = [r for r in reqs if r.kind == "read" and not r.error]
    by_kind = {}
    for kind in ("insert", "count", "read"):
        k_lat = sorted(r.latency * 1000 for r in reqs if r.kind == kind)
        if k_lat:
            by_kind[kind] = (len(k_lat), percentile(k_lat, 0.5), percentile(k_lat, 0.99), k_lat[-1])
    return ApiFigures(
        requests=len(reqs),
        errors=len(errors),
        p50_ms=percentile(lat, 0.50),
        p99_ms=percentile(lat, 0.99),
        max_ms=lat[-1] if lat else float("nan"),
        over_100ms=sum(1 for x in lat if x > 100),
        over_1s=sum(1 for x in lat if x > 1000),
        max_lock_waiters=max(samples, default=0),
        lock_samples=len(samples),
        reads=len(reads),
        reads_missing=sum(1 for r in reads if r.found is False),
        error_kinds=kinds,
        autovacuum=sorted({q for t, q in api.autovacuum if start <= t <= end + API_TAIL_S}),
        by_kind=by_kind,
        slow=[(r.sched, r.latency * 1000, r.kind) for r in reqs if r.latency > 0.1],
        checkpointer=[x for x in api.checkpointer if start <= x[0] <= end + API_TAIL_S],
        page_cache=[x for x in api.page_cache if start <= x[0] <= end + API_TAIL_S],
    )


def page_cache_dirty() -> tuple[float, float] | None:
    """(MB dirty, MB under write-back) from /proc/meminfo (this machine: the benchmark's server is local)."""
    found = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("Dirty", "Writeback"):
                    found[name] = int(rest.split()[0]) / 1024
    except OSError:
        return None
    return (found.get("Dirty", 0.0), found.get("Writeback", 0.0)) if found else None


def page_cache_during(api: ApiFigures, start: float, end: float) -> str:
    """The most dirty and under write-back page cache sampled between start and end, as text."""
    inside = [(d, w) for t, d, w in api.page_cache if start <= t <= end]
    if not inside:
        return ""
    return (
        f"page cache up to {max(d for d, _ in inside):,.0f} MB dirty, {max(w for _, w in inside):,.0f} MB in write-back"
    )


# The checkpointer's wait events while it sleeps between writes or waits for work; any other one means it is writing
# or syncing data files (e.g. DataFileSync, DataFileWrite, CheckpointSync... in pg_stat_activity).
CHECKPOINTER_RESTING = {None, "CheckpointerMain", "CheckpointWriteDelay"}


def checkpointer_busy(api: ApiFigures, start: float, end: float) -> list[str]:
    """The checkpointer's wait events (other than resting) sampled between start and end."""
    return sorted({w for t, w, _ in api.checkpointer if start <= t <= end and w not in CHECKPOINTER_RESTING})


def checkpoints_during(api: ApiFigures) -> int:
    counts = [n for _, _, n in api.checkpointer]
    return counts[-1] - counts[0] if counts else 0


# --- CPU used by other processes on this machine ------------------------------------------------


class CpuMeter:
    """Machine CPU busy time minus ours (this process + the benchmark cluster's postmaster and its children).

    Exited backends' CPU is counted through the postmaster's children_user/children_system (it
    reaps them). Unknown (None) on an external server, whose processes we cannot tell apart.
    """

    def __init__(self, postmaster_pid: int | None):
        import psutil

        self.psutil = psutil
        self.pm = postmaster_pid

    def _ours(self) -> float:
        """CPU of this process and its subprocesses (the DAG run), the cluster's postmaster and backends.

        A process's children_* times hold only its exited (reaped) children, so nothing counts twice.
        """
        ps = self.psutil
        me = ps.Process(os.getpid())
        procs = [me]
        with contextlib.suppress(ps.Error):
            procs += me.children(recursive=True)
        with contextlib.suppress(ps.Error):
            pm = ps.Process(self.pm)
            procs += [pm] + pm.children()
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
            except ps.Error:
                continue
            total += t.user + t.system + t.children_user + t.children_system
        return total

    def _busy(self) -> float:
        t = self.psutil.cpu_times()
        return t.user + t.nice + t.system + t.irq + t.softirq + t.steal

    def snapshot(self) -> tuple[float, float, float]:
        return time.monotonic(), self._busy(), self._ours()

    def since(self, snap) -> tuple[float, float] | None:
        """(cores used by other processes, cores used by the whole machine) on average since `snap`."""
        if self.pm is None:
            return None
        t0, b0, o0 = snap
        t1, b1, o1 = self.snapshot()
        wall = max(t1 - t0, 1e-6)
        return max(0.0, (b1 - b0) - (o1 - o0)) / wall, (b1 - b0) / wall

    def wait_quiet(self, max_wait: float, cores: float = QUIET_CORES, window: float = 2.0) -> float | None:
        """Wait until other processes use < `cores` over a `window`; return their load when we go (None: unknown)."""
        if self.pm is None:
            return None
        deadline = time.monotonic() + max_wait
        while True:
            snap = self.snapshot()
            time.sleep(window)
            other, _ = self.since(snap)
            if other < cores or time.monotonic() >= deadline:
                if other >= cores:
                    log(
                        f"  machine still busy (other processes use {other:.2f} cores); going ahead after {max_wait:.0f}s"
                    )
                return other
            log(f"  other processes use {other:.2f} cores; waiting for a quieter machine")


METER: CpuMeter | None = None


# --- pgmaint phase timers (wrappers around the engine's functions; no engine file changed) -----


class PhaseTimer:
    def __init__(self):
        self.phases: dict[str, list[float]] = {}
        self.spans: list[tuple[str, float, float]] = []  # (phase, monotonic start, end)

    def add(self, name: str, t0: float, t1: float) -> None:
        self.phases.setdefault(name, []).append(t1 - t0)
        self.spans.append((name, t0, t1))

    def wrap(self, owner, attr: str, name: str | None = None, key=None):
        original = getattr(owner, attr)
        label = name or attr

        @functools.wraps(original)
        def timed(*args, **kwargs):
            t0 = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(key(*args, **kwargs) if key else label, t0, time.monotonic())

        setattr(owner, attr, timed)
        return original, owner, attr


@contextlib.contextmanager
def pgmaint_timers():
    timer = PhaseTimer()
    undo = [
        timer.wrap(pg_migrate, "ensure_state_schema", "ensure_state_schema"),
        timer.wrap(pg_migrate, "_facts", "catalog read (read_catalog)"),
        timer.wrap(pg_migrate, "survey_default", "survey (GROUP BY day over the DEFAULT)"),
        timer.wrap(pg_migrate, "preflight", "preflight"),
        timer.wrap(pg_execute.Executor, "run", key=lambda self, step: f"step {step.action}"),
        timer.wrap(pg_migrate.Backfill, "run", "copy (all batches)"),
        timer.wrap(pg_migrate, "drop_deleted_copies", "deleted copies: passes over the key log without a lock"),
        timer.wrap(
            pg_migrate.Backfill,
            "_batch",
            "one copy batch (INSERT ... SELECT FOR KEY SHARE + journal; ON CONFLICT DO NOTHING after a conflict)",
        ),
        timer.wrap(
            pg_migrate.CutVerifier,
            "figures",
            key=lambda self, m, method, *, swapped: (
                "count at the swap (exported snapshot; only when a write reached the DEFAULT since the check)"
                if swapped
                else "verify the copies before the swap (exported snapshot, count + checksum)"
            ),
        ),
        timer.wrap(pg_migrate._Run, "wait_for_old_snapshots", "wait for older snapshots"),
        timer.wrap(pg_migrate, "drop_old_default", "drop the old DEFAULT (re-checked unchanged)"),
    ]
    try:
        yield timer
    finally:
        for original, owner, attr in reversed(undo):
            setattr(owner, attr, original)


# --- contenders -------------------------------------------------------------------------------


@dataclass
class Outcome:
    contender: str
    wall: float | None = None
    api: ApiFigures | None = None
    verify: str = ""
    verified: bool = False
    skipped: str | None = None
    note: str = ""
    statements: list = field(default_factory=list)
    api_server: list = field(default_factory=list)  # (kind, mean ms, max ms) of the API's statements, server side
    phases: dict = field(default_factory=dict)
    spans: list = field(default_factory=list)  # pgmaint: (phase, start, end), monotonic
    move_start: float = 0.0
    seeded: Seeded | None = None
    failure: str | None = None  # the move did not finish
    other_load: tuple | None = None  # (cores used by other processes, cores busy in all) during the move
    data_ok: bool = True  # no row lost or duplicated
    rows_left: int = 0  # seeded rows still in the DEFAULT afterwards
    app: dict = field(default_factory=dict)  # the application workload's totals() and check()
    dag: dict = field(default_factory=dict)  # pgmaint-dag: engine time from the journal, task times from Airflow's DB


def app_clean(app: dict) -> bool:
    """The application noticed nothing: no miss, no error, nothing lost, doubled, resurrected or wrong."""
    return bool(app) and all(app.get(k, 0) == 0 for k in APP_BUG_FIGURES)


APP_BUG_FIGURES = (
    "read_misses",
    "read_doubles",
    "stale_reads",
    "update_misses",
    "delete_misses",
    "errors",
    "duplicate_keys",
    "rows_lost",
    "rows_resurrected",
    "payloads_wrong",
)


BENCH_CONFIG = {
    "state_schema": STATE_SCHEMA,
    "timezone": "UTC",
    "tables": [
        {
            "name": PARENT,
            "partition_key": "created_at",
            "interval": "1 day",
            "premake": PREMAKE,
            "retention": f"{RETENTION_DAYS} days",
        }
    ],
}


def bench_config():
    return parse_config(BENCH_CONFIG)


def run_pgmaint(conninfo: str, lay: Layout, batch_rows: int, outcome: Outcome) -> None:
    """migrate_table; if a call fails, call it again at once (as the DAG task's retry would), up to PGMAINT_TRIES calls."""
    config = bench_config()
    conn = connect(conninfo, config.lock_budget)
    try:
        ensure_state_schema(conn, config.state_schema)  # exists in production after the first run

        def progress(msg: str) -> None:
            log(f"  pgmaint: {msg}")

        calls = []
        with pgmaint_timers() as timer:
            t0 = time.monotonic()
            for _attempt in range(PGMAINT_TRIES):
                if conn.closed or conn.broken:
                    conn = connect(conninfo, config.lock_budget)
                result = migrate_table(
                    conn, conninfo, config, config.tables[0], batch_rows=batch_rows, max_minutes=60.0, progress=progress
                )
                calls.append(result)
                if result.outcome == "success":
                    break
            outcome.wall = time.monotonic() - t0
        outcome.phases = {k: (len(v), sum(v), max(v)) for k, v in timer.phases.items()}
        outcome.spans = timer.spans
        first = calls[0]
        outcome.note = (
            f"outcome {result.outcome}, {sum(c.rows_moved for c in calls):,} rows into {len(first.partitions)} partitions, "
            f"engine-reported {sum(c.seconds for c in calls):.2f}s"
        )
        if len(calls) > 1:
            outcome.note += f"; NEEDED {len(calls)} CALLS: " + " | ".join(
                f"call {i}: {c.outcome} after {c.seconds:.1f}s, {c.rows_moved:,} rows moved, errors {c.errors}"
                for i, c in enumerate(calls, 1)
            )
        if first.left_in_default:
            outcome.note += f"; left in DEFAULT: {first.left_in_default}"
        if result.outcome != "success":
            raise RuntimeError(
                f"pgmaint migration {result.outcome} after {len(calls)} call(s): {result.errors or result.skipped_reason}"
            )
    finally:
        conn.close()


def airflow_target(conninfo: str) -> dict:
    """The bench database as an Airflow connection (JSON form)."""
    params = conninfo_to_dict(conninfo)
    target = {
        "conn_type": "postgres",
        "host": params.get("host"),
        "port": int(params.get("port") or 5432),
        "login": params.get("user"),
        "password": params.get("password"),
        "schema": params.get("dbname"),
    }
    return {k: v for k, v in target.items() if v is not None}


class AirflowHome:
    """A private AIRFLOW_HOME under /tmp for `scripts/airflow dags test` (never the repo's .airflow).

    The metadata DB (SQLite, as for every `dags test`) is migrated and the pools imported once,
    before anything is timed (`scripts/airflow --prepare`), as in a deployment; deleted at exit.
    """

    def __init__(self, conninfo: str):
        self.path = Path(tempfile.mkdtemp(prefix="pgmaint-bench-airflow-"))
        self.config = self.path / "pgmaint-bench.yaml"
        self.config.write_text(json.dumps(BENCH_CONFIG, indent=2) + "\n")  # JSON is YAML
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW__DATABASE__", "AIRFLOW_CONN_", "AIRFLOW_HOME"))
        }
        self.env.update(
            {
                "PGMAINT_AIRFLOW_HOME": str(self.path),
                "PGMAINT_CONFIG": str(self.config),
                # the SQLite DB `dags test` uses, for `--prepare` too (else it would prepare the embedded dev DB)
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.path}/airflow.db",
                "AIRFLOW_CONN_PGMAINT_TARGET": json.dumps(airflow_target(conninfo)),
            }
        )
        self.prepare_seconds: float | None = None

    def prepare(self) -> None:
        t0 = time.monotonic()
        proc = subprocess.run(
            [str(REPO / "scripts" / "airflow"), "--prepare"], env=self.env, capture_output=True, text=True, timeout=900
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"scripts/airflow --prepare failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}"
            )
        self.prepare_seconds = time.monotonic() - t0

    def task_times(self) -> tuple[dict, list[tuple]]:
        """The last DAG run (state, start, end) and its task instances (task, state, start, end, seconds), from the SQLite DB."""
        db = sqlite3.connect(self.path / "airflow.db")
        try:
            run = db.execute(
                "SELECT run_id, state, start_date, end_date FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
                [DAG_ID],
            ).fetchone()
            if run is None:
                return {}, []
            tis = db.execute(
                "SELECT task_id, state, start_date, end_date, duration FROM task_instance "
                "WHERE dag_id = ? AND run_id = ? ORDER BY start_date",
                [DAG_ID, run[0]],
            ).fetchall()
        finally:
            db.close()
        return {"run_id": run[0], "state": run[1], "start": _utc(run[2]), "end": _utc(run[3])}, [
            (t, st, _utc(a), _utc(b), d) for t, st, a, b, d in tis
        ]

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _utc(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def journalled_migration(conninfo: str) -> dict:
    """The DAG's migration as <state_schema>.runs recorded it: engine time, outcome, rows, error ({} if none)."""
    with psycopg.connect(conninfo, autocommit=True) as c:
        row = c.execute(
            sql.SQL(
                "SELECT extract(epoch FROM finished_at - started_at), outcome, summary->>'outcome', "
                "(summary->>'seconds')::float8, (summary->>'rows_moved')::bigint, error FROM {}.runs "
                "WHERE job = 'migration' AND dag_id = %s ORDER BY run_id DESC LIMIT 1"
            ).format(sql.Identifier(STATE_SCHEMA)),
            [DAG_ID],
        ).fetchone()
    if row is None:
        return {}
    return {
        "engine_journal": float(row[0]) if row[0] is not None else None,
        "journal_outcome": row[1],
        "engine_outcome": row[2],
        "engine_seconds": row[3],
        "rows_moved": row[4],
        "engine_error": row[5],
    }


def logged_events(home: Path, run_id: str) -> list[tuple[datetime, str]]:
    """pgmaint's own log lines in the deployed run's `migrate` task log, (time, message), in order."""
    events = []
    for path in home.rglob("*.log"):
        if "task_id=migrate" not in str(path) or run_id not in str(path):
            continue
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if str(rec.get("logger", "")).startswith("pgmaint") and rec.get("timestamp"):
                events.append((_utc(rec["timestamp"]), str(rec.get("event", ""))))
    return sorted(events)


def logged_phases(events: list[tuple[datetime, str]]) -> list[tuple[str, datetime, datetime]]:
    """The engine's steps inside the deployed `migrate` task (it has no phase timers there): between two of its
    log lines, a span named after the earlier one."""
    return [(f"after «{text[:90]}»", at, nxt) for (at, text), (nxt, _) in zip(events, events[1:]) if nxt > at]


AIRFLOW_HOME: AirflowHome | None = None
DEPLOYED = None  # DeployedAirflow, while a pgmaint-deployed contender runs


def run_pgmaint_dag(conninfo: str, lay: Layout, batch_rows: int, outcome: Outcome) -> None:
    """The whole DAG, gates included: `scripts/airflow dags test default_partition_migration --conf …` as a subprocess.

    Wall time: from starting the command to its exit (Airflow start-up, DAG parsing, every task,
    GX import in the gates). Engine time: the migration's row in <state_schema>.runs (migrate task)
    and the finish task (drop of the old DEFAULT); task times from the private metadata DB.
    """
    home = AIRFLOW_HOME
    config = bench_config()
    with connect(conninfo, config.lock_budget) as conn:
        ensure_state_schema(conn, config.state_schema)  # exists in production after the first run
    conf = {"table": PARENT, "batch_rows": batch_rows, "max_minutes": 60}
    cmd = [str(REPO / "scripts" / "airflow"), "dags", "test", DAG_ID, "--conf", json.dumps(conf)]
    logfile = home.path / f"dags-test-{lay.ds.label.replace('/', '_')}-{lay.live_day}.log"
    home.prepare()  # again, at the last moment: other users of the shared venv re-install it often (a no-op install)
    marker = home.path / ".initialised"
    migrated_before = marker.stat().st_mtime if marker.exists() else None
    started_at = datetime.now(timezone.utc)
    t0 = time.monotonic()
    with open(logfile, "w") as out:
        proc = subprocess.run(cmd, env=home.env, stdout=out, stderr=subprocess.STDOUT, timeout=DAG_TIMEOUT_S)
    outcome.wall = time.monotonic() - t0
    remigrated = (marker.stat().st_mtime if marker.exists() else None) != migrated_before
    run, tasks = home.task_times()
    dag = outcome.dag = {
        "exit": proc.returncode,
        "state": run.get("state"),
        "started_at": started_at,
        "run": run,
        "tasks": tasks,
        "log": str(logfile),
        **journalled_migration(conninfo),
    }
    by_task = {t[0]: t for t in tasks}
    fin = by_task.get("finish")
    dag["finish_seconds"] = fin[4] if fin else None
    outcome.note = (
        f"`scripts/airflow dags test {DAG_ID}` exit {proc.returncode}, DAG run {run.get('state')}; "
        f"migrate: {dag.get('engine_outcome')}, {dag.get('rows_moved') or 0:,} rows, "
        f"engine {dag.get('engine_seconds') or 0:.2f}s (journal)"
    )
    if remigrated:
        outcome.note += (
            "; NOTE: scripts/airflow re-ran `airflow db migrate` inside this timed run (the shared venv was "
            "re-installed meanwhile): the wall time includes it"
        )
    if proc.returncode != 0 or run.get("state") != "success":
        tail = logfile.read_text(errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(
            f"DAG run {run.get('state')} (exit {proc.returncode}); {dag.get('engine_error') or ''} "
            f"log {logfile}: " + " / ".join(tail)
        )


class DeployedAirflow:
    """A deployed Airflow for `pgmaint-deployed`: scripts/airflow_local.py's Deployment (API server, scheduler with
    LocalExecutor, DAG processor, triggerer; Airflow's default scheduler settings) with its metadata DB in a database
    of the benchmark's cluster, the bench database as target and the bench config. Started before its contender
    and stopped after it (untimed, and idle while the others run), as a production deployment is already up when
    someone presses "Trigger"."""

    def __init__(self, admin_conninfo: str, conninfo: str, metadata_where: str = "the benchmark's cluster"):
        import airflow_local  # scripts/airflow_local.py

        self.metadata_where = metadata_where

        self.home = Path(tempfile.mkdtemp(prefix="pgmaint-bench-deployed-"))
        config = self.home / "pgmaint-bench.yaml"
        config.write_text(json.dumps(BENCH_CONFIG, indent=2) + "\n")
        with psycopg.connect(admin_conninfo, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DEPLOYED_META_DB)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEPLOYED_META_DB)))
        meta = conninfo_to_dict(with_db(admin_conninfo, DEPLOYED_META_DB))
        host = meta.get("host") or "127.0.0.1"
        url = f"postgresql+psycopg2://{meta.get('user') or 'postgres'}@/{DEPLOYED_META_DB}?port={meta.get('port') or 5432}"
        url += f"&host={host}"
        self.d = airflow_local.Deployment(
            home=self.home,
            port=airflow_local.free_port(),
            env_overrides={
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
                "AIRFLOW_CONN_PGMAINT_TARGET": json.dumps(airflow_target(conninfo)),
                "PGMAINT_CONFIG": str(config),
            },
        )
        self.ready_seconds: float | None = None

    def start(self) -> None:
        t0 = time.monotonic()
        self.d.start()
        self.d.wait_healthy(timeout=300)
        deadline = time.monotonic() + 180
        while self.d.api("GET", f"/api/v2/dags/{DAG_ID}")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{DAG_ID} not parsed by the deployment after 180 s; logs in {self.d.log_dir}")
            time.sleep(1)
        status, body = self.d.api("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        if status != 200:
            raise RuntimeError(f"unpausing {DAG_ID}: {status} {body}")
        # A deployment in use has run tasks before: one dry run first, so that the timed run does not pay for
        # the components' first task (imports and connections made once per process).
        _run_id, run, tis, _seconds = self.run({"table": PARENT, "dry_run": True}, timeout=300)
        self.warmup = {t["task_id"]: t.get("duration") for t in tis}
        if run["state"] != "success":
            raise RuntimeError(f"warm-up dry run {run['state']}: {self.warmup}; logs in {self.d.log_dir}")
        self.ready_seconds = time.monotonic() - t0

    def run(self, conf: dict, timeout: float) -> tuple[str, dict, list[dict], float]:
        """Trigger a run with `conf` over REST (as the UI's trigger form does), poll it every DEPLOYED_POLL_S until
        it has finished; (run id, the run, its task instances, seconds from the POST to the poll that saw it end)."""
        t0 = time.monotonic()
        status, body = self.d.api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
        if status != 200:
            raise RuntimeError(f"trigger: {status} {body}")
        run_id = body["dag_run_id"]
        path = f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        while True:
            status, run = self.d.api("GET", path)
            if status == 200 and run["state"] in ("success", "failed"):
                break
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"{run_id} not finished after {timeout:.0f} s; logs in {self.d.log_dir}")
            time.sleep(DEPLOYED_POLL_S)
        seconds = time.monotonic() - t0
        return run_id, run, self.d.api("GET", f"{path}/taskInstances?limit=100")[1].get("task_instances", []), seconds

    def stop(self) -> None:
        self.d.stop()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


@contextlib.contextmanager
def metadata_cluster(under: str):
    """A second throwaway PostgreSQL 15 cluster for the deployed Airflow's metadata DB (--airflow-metadata
    own-cluster): its commits, WAL and processes apart from the benchmark's cluster, the disk and cores shared."""
    import pg15cluster

    cluster = pg15cluster.start({"shared_buffers": "128MB"}, parent_dir=under)
    log(f"Airflow's metadata cluster in {cluster.pgdata}, port {cluster.port}")
    try:
        yield cluster.conninfo
    finally:
        pg15cluster.stop(cluster.pgdata, delete=True)


DEPLOYED_META_DB = "pgmaint_bench_airflow"
DEPLOYED_POLL_S = 0.2


def _scheduler_settings() -> str:
    """How the deployed contender's scheduler is set: Airflow's defaults unless AIRFLOW__SCHEDULER__* is exported."""
    own = sorted((k, v) for k, v in os.environ.items() if k.startswith("AIRFLOW__SCHEDULER__"))
    return ", ".join(f"{k}={v}" for k, v in own) if own else "scheduler defaults"


def run_pgmaint_deployed(deployed: DeployedAirflow, conninfo: str, batch_rows: int, outcome: Outcome) -> None:
    """The whole DAG run in a running deployment: `POST /api/v2/dags/{DAG_ID}/dagRuns` with the conf (what the UI's
    trigger form sends), then the run's state polled every 0.2 s. Wall time: from the POST to the first poll that
    sees the run finished. Task times from the REST API."""
    config = bench_config()
    with connect(conninfo, config.lock_budget) as conn:
        ensure_state_schema(conn, config.state_schema)
    conf = {"table": PARENT, "batch_rows": batch_rows, "max_minutes": 60}
    started_at = datetime.now(timezone.utc)
    run_id, run, tis, outcome.wall = deployed.run(conf, timeout=DAG_TIMEOUT_S)
    events = logged_events(deployed.home, run_id)
    tasks = sorted(
        ((t["task_id"], t["state"], _utc(t["start_date"]), _utc(t["end_date"]), t.get("duration")) for t in tis),
        key=lambda t: t[2] or started_at,
    )
    fin = {t[0]: t for t in tasks}.get("finish")
    # Task spans on the benchmark's monotonic clock (the move started as the run was triggered), so the API's slow
    # episodes name the task running at the time.
    outcome.spans = [
        (
            f"task {t[0]}",
            outcome.move_start + (t[2] - started_at).total_seconds(),
            outcome.move_start + (t[3] - started_at).total_seconds(),
        )
        for t in tasks
        if t[2] and t[3]
    ] + [
        (
            name,
            outcome.move_start + (begin - started_at).total_seconds(),
            outcome.move_start + (end - started_at).total_seconds(),
        )
        for name, begin, end in logged_phases(events)
    ]
    dag = outcome.dag = {
        "how": f"a running Airflow (LocalExecutor, {_scheduler_settings()}, metadata DB in "
        f"{deployed.metadata_where}), triggered over REST; {outcome.wall:.2f}s "
        "from the POST to the poll that saw the run finished",
        "state": run["state"],
        "started_at": started_at,
        "run": {"start": _utc(run.get("start_date")), "end": _utc(run.get("end_date"))},
        "tasks": tasks,
        "finish_seconds": fin[4] if fin else None,
        "log": str(deployed.d.log_dir),
        **journalled_migration(conninfo),
    }
    outcome.note = (
        f"deployed run {run_id}: {run['state']}; migrate: {dag.get('engine_outcome')}, "
        f"{dag.get('rows_moved') or 0:,} rows"
        + "".join(f"; «{text}»" for _, text in events if "queued behind the swap" in text)
    )
    if run["state"] != "success":
        raise RuntimeError(
            f"DAG run {run['state']}: {dag.get('engine_error') or ''}; component logs in {deployed.d.log_dir}"
        )


def run_partman(conninfo: str, lay: Layout, outcome: Outcome) -> None:
    """CALL partition_data_proc; if it fails, call it again at once (as an operator would), up to PARTMAN_TRIES times.

    Its per-interval transaction moves the interval's rows out of the DEFAULT, then ATTACHes the
    new partition, which re-checks the DEFAULT under ACCESS EXCLUSIVE: a row for that interval
    inserted by a live writer in between makes the ATTACH fail ("updated partition constraint for
    default partition ... would be violated"). Intervals already done stay done; the wall time
    counts every attempt.
    """
    notices: list[str] = []
    failures: list[str] = []
    with psycopg.connect(conninfo, autocommit=True, application_name="bench-partman") as conn:
        stamps: list[float] = []

        def on_notice(d) -> None:
            notices.append(d.message_primary or "")
            stamps.append(time.monotonic())

        conn.add_notice_handler(on_notice)
        conn.execute("SET statement_timeout = 0")
        t0 = time.monotonic()
        for attempt in range(1, PARTMAN_TRIES + 1):
            try:
                conn.execute("CALL partman.partition_data_proc(%s, p_wait => 0)", [PARENT])
                break
            except psycopg.Error as exc:
                failures.append(str(exc).strip().splitlines()[0])
                log(f"  partman: attempt {attempt} failed: {failures[-1]}")
        outcome.wall = time.monotonic() - t0
    batches = [(n, t) for n, t in zip(notices, stamps) if n.startswith("Batch:")]
    outcome.note = (
        f"partition_data_proc(p_wait => 0): {len(batches)} committed batches (one day per transaction), "
        f"{len(failures) + (0 if len(failures) == PARTMAN_TRIES else 1)} call(s)"
    )
    if batches:
        outcome.note += f"; last committed batch at {batches[-1][1] - t0:.2f}s"
    if failures:
        distinct = sorted(set(failures))
        outcome.note += f"; {len(failures)} call(s) failed: " + " | ".join(distinct)
    if len(failures) == PARTMAN_TRIES:
        raise RuntimeError(f"partition_data_proc failed {PARTMAN_TRIES} times in a row: {failures[-1]}")


def run_physical(conninfo: str, lay: Layout, outcome: Outcome) -> None:
    parent = sql.Identifier(SCHEMA, TABLE)
    default = sql.Identifier(SCHEMA, f"{TABLE}_default")
    with psycopg.connect(conninfo, autocommit=True, application_name="bench-physical") as conn:
        conn.execute("SET statement_timeout = 0")
        t0 = time.monotonic()
        with conn.transaction():
            # Everything first: otherwise a late insert for a day, committed between that day's DELETE and its
            # ATTACH, makes the ATTACH's scan of the DEFAULT fail (the application workload does such inserts).
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(parent))
            for day in lay.window_days:
                lo, hi = sql.Literal(ts(day)), sql.Literal(ts(day + timedelta(days=1)))
                child = sql.Identifier(SCHEMA, f"{TABLE}_p{day:%Y%m%d}")
                cond = sql.SQL("created_at >= {} AND created_at < {}").format(lo, hi)
                conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(child, parent))
                conn.execute(
                    sql.SQL("INSERT INTO {} OVERRIDING SYSTEM VALUE SELECT * FROM ONLY {} WHERE {}").format(
                        child, default, cond
                    )
                )
                conn.execute(sql.SQL("DELETE FROM ONLY {} WHERE {}").format(default, cond))
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
                        child, sql.Identifier(f"{TABLE}_p{day:%Y%m%d}_bound"), cond
                    )
                )
                conn.execute(
                    sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                        parent, child, lo, hi
                    )
                )
        outcome.wall = time.monotonic() - t0
    outcome.note = f"one transaction under ACCESS EXCLUSIVE on the parent, {len(lay.window_days)} days"


def verify(conn, lay: Layout, seeded: Seeded, api_inserted: int) -> tuple[bool, bool, str, int]:
    """(no row lost or duplicated, nothing left behind, text, seeded rows left in the DEFAULT).

    The seeded rows the application workload owns are left out of the count and checksum (it
    changes them legitimately; its own `check` compares them with what it wrote), and so are its
    new rows (ids from APP_ID_BASE).
    """
    n, ck = figures(conn, lay)
    api_rows = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE id > %s AND id < %s").format(sql.Identifier(SCHEMA, TABLE)),
        [lay.ds.rows, APP_ID_BASE],
    ).fetchone()[0]
    dflt = default_partition(conn)
    left, left_seeded = (
        conn.execute(
            sql.SQL("SELECT count(*), count(*) FILTER (WHERE id <= %s) FROM ONLY {} WHERE created_at >= %s").format(
                sql.Identifier(SCHEMA, dflt)
            ),
            [lay.ds.rows, lay.first_window_day],
        ).fetchone()
        if dflt
        else (0, 0)
    )
    problems, leftovers = [], []
    if n != seeded.rows:
        problems.append(f"seeded rows {n:,} != {seeded.rows:,}")
    if ck != seeded.checksum:
        problems.append("seeded rows' checksum differs")
    if api_rows != api_inserted:
        problems.append(f"API rows {api_rows:,} != {api_inserted:,} successful inserts")
    if left:
        leftovers.append(f"{left:,} rows left in the DEFAULT for in-window days")
    if dflt is None:
        problems.append("no DEFAULT partition attached")
    if problems or leftovers:
        kept = (
            ""
            if problems
            else (
                f"no row lost or duplicated ({n:,} seeded rows not owned by the application: count+checksum "
                f"equal; {api_rows:,} API rows present); "
            )
        )
        return not problems, not leftovers, "FAIL: " + kept + "; ".join(problems + leftovers), left_seeded
    return (
        True,
        True,
        (
            f"PASS: {n:,} seeded rows not owned by the application, count+checksum equal; {api_rows:,} API rows all "
            "present; DEFAULT holds 0 in-window rows"
        ),
        0,
    )


def pgss_reset(conn, enabled: bool) -> None:
    if enabled:
        conn.execute("SELECT pg_stat_statements_reset()")


def pgss_top(conn, enabled: bool, limit: int = 8) -> list[tuple]:
    if not enabled:
        return []
    return conn.execute(
        """
        SELECT calls, round(total_exec_time::numeric / 1000, 2) AS total_s, round(max_exec_time::numeric, 1) AS max_ms,
               rows, round(wal_bytes / 1048576.0, 1) AS wal_mb, regexp_replace(left(query, 400), '\\s+', ' ', 'g')
        FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND query NOT LIKE %s AND query NOT LIKE %s AND query NOT ILIKE '%%pg_stat_statements%%'
          AND NOT query LIKE ANY(%s)
        ORDER BY total_exec_time DESC LIMIT %s""",
        [API_TAG.strip() + "%", SAMPLER_TAG.strip() + "%", APP_QUERIES, limit],
    ).fetchall()


def pgss_api(conn, enabled: bool) -> list[tuple]:
    if not enabled:
        return []
    rows = conn.execute(
        """
        SELECT CASE WHEN query LIKE %s THEN 'insert' WHEN query LIKE %s THEN 'count' ELSE 'read' END,
               sum(total_exec_time) / greatest(sum(calls), 1), max(max_exec_time)
        FROM pg_stat_statements WHERE query LIKE %s GROUP BY 1 ORDER BY 1""",
        [API_TAG.strip() + " INSERT%", API_TAG.strip() + " SELECT count%", API_TAG.strip() + "%"],
    ).fetchall()
    return [(k, float(m), float(x)) for k, m, x in rows]


def run_contender(
    name: str, conninfo: str, admin, lay: Layout, seeded: Seeded, pgss: bool, batch_rows: int, quiet_wait: float
) -> Outcome:
    outcome = Outcome(name, seeded=seeded)
    admin.execute("CHECKPOINT")
    if METER:
        METER.wait_quiet(quiet_wait)
    pgss_reset(admin, pgss)
    api = Api(conninfo, lay.ds.rows, seed=sum(map(ord, name)), app_stride=lay.app_stride)
    api.start()
    app = (
        None
        if name.endswith("-api-only")
        else start_app(conninfo, lay, seeded, seed=sum(map(ord, name)), late=(name != "partman-no-late"))
    )
    time.sleep(API_WARMUP_S)
    snap = METER.snapshot() if METER else None
    start = outcome.move_start = time.monotonic()
    failure = None
    try:
        if name in ("pgmaint", "pgmaint-api-only"):
            run_pgmaint(conninfo, lay, batch_rows, outcome)
        elif name in ("pgmaint-dag", "pgmaint-dag-api-only"):
            run_pgmaint_dag(conninfo, lay, batch_rows, outcome)
        elif name in ("pgmaint-deployed", "pgmaint-deployed-api-only"):
            run_pgmaint_deployed(DEPLOYED, conninfo, batch_rows, outcome)
        elif name.startswith("partman"):
            run_partman(conninfo, lay, outcome)
        else:
            run_physical(conninfo, lay, outcome)
    except Exception as exc:
        failure = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
        log(f"  {name} FAILED: {failure}")
    outcome.failure = failure
    end = time.monotonic()
    outcome.other_load = METER.since(snap) if METER else None
    if outcome.wall is None:
        outcome.wall = end - start
    time.sleep(API_TAIL_S)
    if app:
        app.stop()
    api.stop()
    outcome.api = api_figures(api, start, end)
    outcome.app = {**app.totals(), **app.check(admin)} if app else {}
    outcome.statements = pgss_top(admin, pgss)
    outcome.api_server = pgss_api(admin, pgss)
    data_ok, complete, text, outcome.rows_left = verify(admin, lay, seeded, api.inserted)
    if failure:
        text = f"FAIL: the move did not finish: {failure}; " + text.removeprefix("FAIL: ").removeprefix("PASS: ")
    outcome.data_ok = data_ok
    outcome.verified, outcome.verify = data_ok and complete and not failure, text
    return outcome


def start_app(conninfo: str, lay: Layout, seeded: Seeded, seed: int, late: bool = True) -> AppWorkload:
    """late=False: no late inserts for the days being moved (what lets partition_data_proc finish)."""
    return AppWorkload(
        conninfo,
        SCHEMA,
        TABLE,
        seeded.app_rows,
        lay.window_days if late else [],
        workers=APP_WORKERS,
        pause=APP_PAUSE_S,
        key="created_at",
        new_id_base=APP_ID_BASE,
        statement_timeout_ms=int(API_STATEMENT_TIMEOUT.rstrip("s")) * 1000,
        seed=seed,
        insert_values=APP_INSERT_VALUES,
    ).start()


def baseline(conninfo: str, lay: Layout, seeded: Seeded, seconds: float = 5.0) -> Outcome:
    """The API and the application workload alone on the freshly seeded table: what 'no move' looks like on this machine."""
    outcome = Outcome("(API + application alone, no move)")
    api = Api(conninfo, lay.ds.rows, seed=7, app_stride=lay.app_stride)
    api.start()
    app = start_app(conninfo, lay, seeded, seed=7)
    time.sleep(API_WARMUP_S)
    snap = METER.snapshot() if METER else None
    start = time.monotonic()
    time.sleep(seconds)
    end = time.monotonic()
    outcome.other_load = METER.since(snap) if METER else None
    time.sleep(API_TAIL_S)
    app.stop()
    api.stop()
    outcome.api = api_figures(api, start, end)
    with psycopg.connect(conninfo, autocommit=True) as c:
        outcome.app = {**app.totals(), **app.check(c)}
    outcome.wall = end - start
    outcome.verify = "-"
    return outcome


# --- report -----------------------------------------------------------------------------------


def fmt_ms(x: float) -> str:
    return "-" if x != x else (f"{x:,.0f}" if x >= 100 else f"{x:.1f}")


SCENARIO_TEXT = {
    "in-default": "live day in the DEFAULT: rows span the {days} days ending at the start of the run; today has no partition, "
    "so the API's inserts at now() also land in the DEFAULT until today's partition exists",
    "partitioned": "live day partitioned: rows span the {days} full days before today; today's partition (and {premake} "
    "premade ones) exist, so the API's inserts at now() land there",
}


def table(lay: Layout, outcomes: list[Outcome]) -> str:
    ds = lay.ds
    lines = [
        f"### {ds.rows:,} DEFAULT rows over {ds.days} days ({ds.label}), {lay.live_day}",
        "",
        SCENARIO_TEXT[lay.live_day].format(days=ds.days, premake=PREMAKE)
        + f" ({len(lay.window_days)} daily intervals to move, "
        f"{len(lay.pre_window_days)} partitions before the window).",
        "",
        "| contender | wall s | rows/s | API requests | errors | p50 ms | p99 ms | max ms | >100 ms | >1 s | max lock waiters |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        if o.skipped:
            lines.append(f"| {o.contender} | skipped: {o.skipped} | | | | | | | | | |")
            continue
        a = o.api
        idle = o.contender.startswith("(")
        wall = f"({o.wall:.1f})" if idle else f"{o.wall:.2f}" + (" DNF" if o.failure else "")
        rate = "-" if idle else f"{(ds.rows - o.rows_left) / o.wall:,.0f}"
        lines.append(
            f"| {o.contender} | {wall} | {rate} | {a.requests:,} | {a.errors:,} | {fmt_ms(a.p50_ms)} | {fmt_ms(a.p99_ms)} | "
            f"{fmt_ms(a.max_ms)} | {a.over_100ms:,} | {a.over_1s:,} | {a.max_lock_waiters} |"
        )
    return "\n".join(lines)


def app_table(outcomes: list[Outcome]) -> str:
    """What the application workload saw: misses of its own existing rows, and the table against its model afterwards."""
    lines = [
        f"Application workload ({APP_WORKERS} connections, each owning ~{APP_ROWS // APP_WORKERS:,} seeded rows and its new rows; "
        "from 2 s before the move until 0.5 s after it). Misses: key reads / UPDATEs / DELETEs of rows that exist that "
        "found or matched nothing; afterwards: the table compared with what the application knows it wrote.",
        "",
        "| contender | statements | key reads missed | updates missed | deletes missed | read twice / stale | "
        "upserts, inserts now, late | errors | duplicate keys | rows lost | resurrected | payloads wrong |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        a = o.app
        if o.skipped or not a:
            continue
        lines.append(
            f"| {o.contender} | {a['requests']:,} | {a['read_misses']:,} of {a['reads']:,} | "
            f"{a['update_misses']:,} of {a['updates']:,} | {a['delete_misses']:,} of {a['deletes']:,} | "
            f"{a['read_doubles']} / {a['stale_reads']} | {a['upserts']:,}, {a['inserts']:,}, {a['late_inserts']:,} | "
            f"{a['errors']:,} | {a['duplicate_keys']:,} | {a['rows_lost']:,} | {a['rows_resurrected']:,} | "
            f"{a['payloads_wrong']:,} |"
        )
    return "\n".join(lines)


def dag_breakdown(o: Outcome) -> list[str]:
    """Where the whole DAG run's time goes: Airflow start-up, each task, the engine inside `migrate`."""
    d = o.dag
    if not d:
        return []
    tasks = d.get("tasks") or []
    how = d.get("how") or (
        f"`scripts/airflow dags test {DAG_ID}` (own process, private SQLite metadata DB), "
        f"{o.wall:.2f}s from starting the command to its exit"
    )
    deployed = "how" in d
    out = [
        f"{o.contender}: {how}:",
        "",
        "| part | s |",
        "|---|---:|",
    ]
    starts = [t[2] for t in tasks if t[2]]
    ends = [t[3] for t in tasks if t[3]]
    if starts:
        before = (
            "the trigger to the first task (scheduler picks the run up, executor starts the task process)"
            if deployed
            else "before the first task (interpreter, Airflow import, DAG parse, run set-up)"
        )
        out.append(f"| {before} | {(min(starts) - d['started_at']).total_seconds():.2f} |")
    for task_id, state, _started, _ended, secs in tasks:
        extra = ""
        if task_id == "migrate" and d.get("engine_journal") is not None:
            extra = f" (engine, journal: {d['engine_journal']:.2f}s)"
        out.append(f"| task `{task_id}` ({state}){extra} | {secs if secs is not None else float('nan'):.2f} |")
    if ends:
        gaps = (max(ends) - min(starts)).total_seconds() - sum(t[4] or 0 for t in tasks)
        where = "the scheduler's passes" if deployed else "scheduling inside `dags test`"
        out.append(f"| between tasks ({where}; negative = tasks overlapped) | {gaps:.2f} |")
        exit_at = d["started_at"] + timedelta(seconds=o.wall)
        after = (
            "after the last task (the run marked finished, seen by the next poll)"
            if deployed
            else "after the last task (run wrap-up, interpreter exit)"
        )
        out.append(f"| {after} | {(exit_at - max(ends)).total_seconds():.2f} |")
    out.append("")
    return out


def targets(outcomes: dict[str, Outcome]) -> list[str]:
    out = []
    alone = outcomes.get("partman-api-only")
    for name, what in (
        ("pgmaint-api-only", "the engine"),
        ("pgmaint-dag-api-only", "the whole DAG (gates included), `dags test`"),
        ("pgmaint-deployed-api-only", "the whole DAG (gates included), triggered in a running Airflow"),
    ):
        o = outcomes.get(name)
        if o and not o.skipped and o.wall and alone and not alone.skipped and alone.wall and not alone.failure:
            r = o.wall / alone.wall
            out.append(
                f"- like for like (the simulated API alone, no application workload): pgmaint {what} / partman-api-only: "
                f"{r:.2f}x ({o.wall:.1f}s vs {alone.wall:.1f}s; target <= {TARGET_VS_PARTMAN:.1f}x): "
                f"{'met' if r <= TARGET_VS_PARTMAN else 'MISSED'}{'; did not finish: ' + o.failure if o.failure else ''}"
            )
    pg = outcomes.get("pgmaint")
    if not pg or pg.skipped or pg.api is None:
        return out + ["pgmaint (with the application workload) did not run: its targets not evaluated"]

    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    pm, ph = outcomes.get("partman"), outcomes.get("physical")
    for variant, what in (
        ("partman-no-late", "the same application without late inserts"),
        ("partman-api-only", "the simulated API alone, no application workload"),
    ):
        alt = outcomes.get(variant)
        if alt and not alt.skipped and alt.wall and not alt.failure and (not pm or pm.skipped or pm.failure):
            out.append(
                f"- partman with the full application workload {'did not finish' if pm and pm.failure else 'not run'}; "
                f"ratios below use {variant} ({alt.wall:.1f}s, {what})"
            )
            pm = alt
    if pm and not pm.skipped and pm.wall:
        r = pg.wall / pm.wall
        if pm.failure:
            out.append(
                f"- pgmaint (engine, in-process) / partman wall time: n/a: partman did not finish ({pm.rows_left:,} seeded rows left in the DEFAULT "
                f"after {pm.wall:.1f}s; pgmaint took {pg.wall:.1f}s for all of them)"
            )
        else:
            out.append(
                f"- pgmaint (engine, in-process) / {pm.contender} wall time: {r:.2f}x (target <= {TARGET_VS_PARTMAN:.1f}x): "
                f"{mark(r <= TARGET_VS_PARTMAN)}"
            )
    else:
        out.append(f"- pgmaint / partman wall time: n/a (partman {'skipped: ' + pm.skipped if pm else 'not run'})")
    if ph and not ph.skipped and ph.wall:
        r = pg.wall / ph.wall
        out.append(
            f"- pgmaint / physical wall time: {r:.2f}x (target <= {TARGET_VS_PHYSICAL:.0f}x): {mark(r <= TARGET_VS_PHYSICAL)}"
        )
    else:
        out.append("- pgmaint / physical wall time: n/a (physical not run)")
    dag = outcomes.get("pgmaint-dag")
    if dag and not dag.skipped and dag.dag:
        engine = (dag.dag.get("engine_journal") or 0) + (dag.dag.get("finish_seconds") or 0)
        if dag.failure:
            out.append(f"- pgmaint whole DAG: did not finish ({dag.failure})")
        elif pm and not pm.skipped and pm.wall and not pm.failure:
            r = dag.wall / pm.wall
            out.append(
                f"- pgmaint whole DAG run (gates included) / {pm.contender}: {r:.2f}x ({dag.wall:.1f}s vs {pm.wall:.1f}s; "
                f"target <= {TARGET_VS_PARTMAN:.1f}x): {mark(r <= TARGET_VS_PARTMAN)}; the engine inside it "
                f"(migrate + finish, own process) {engine:.1f}s = {engine / pm.wall:.2f}x"
            )
        else:
            why = f"partman did not finish in {pm.wall:.1f}s" if pm and pm.failure else "partman not run"
            out.append(
                f"- pgmaint whole DAG run / partman: n/a ({why}); the DAG finished in {dag.wall:.1f}s, "
                f"engine (migrate + finish) {engine:.1f}s"
            )
    for o in (pg, dag):
        if o and not o.skipped and o.app:
            bad = {k: o.app[k] for k in APP_BUG_FIGURES if o.app.get(k)}
            out.append(
                f"- application during {o.contender}: misses, errors, duplicates, lost/resurrected/wrong rows "
                f"{'all 0' if not bad else bad} (target all 0): {mark(not bad)}"
            )
    a = pg.api
    out.append(
        f"- API max stall during pgmaint: {fmt_ms(a.max_ms)} ms (target <= {TARGET_MAX_MS:.0f} ms): {mark(a.max_ms <= TARGET_MAX_MS)}"
    )
    out.append(
        f"- API p99 during pgmaint: {fmt_ms(a.p99_ms)} ms (target <= {TARGET_P99_MS:.0f} ms): {mark(a.p99_ms <= TARGET_P99_MS)}"
    )
    out.append(f"- API errors during pgmaint: {a.errors} (target {TARGET_ERRORS}): {mark(a.errors <= TARGET_ERRORS)}")
    return out


def details(outcomes: list[Outcome]) -> list[str]:
    out = []
    for o in outcomes:
        if o.skipped:
            continue
        load = (
            (
                f" Other processes on this machine used {o.other_load[0]:.2f} cores on average during the move "
                f"(all processes: {o.other_load[1]:.2f} of {os.cpu_count()})."
            )
            if o.other_load
            else ""
        )
        if o.contender.startswith("("):
            out.append(f"- **{o.contender}**: 5 s of API traffic on the freshly seeded table.{load}")
            continue
        out.append(f"- **{o.contender}**: {o.verify}. {o.note}.{load}")
        a = o.api
        if a.by_kind:
            out.append(
                "  - API latency by request kind (p50 / p99 / max ms): "
                + "; ".join(
                    f"{k} {fmt_ms(p50)} / {fmt_ms(p99)} / {fmt_ms(mx)}" for k, (n, p50, p99, mx) in a.by_kind.items()
                )
            )
        if o.api_server:
            out.append(
                "  - the same API statements, server-side execution only (pg_stat_statements, mean / max ms): "
                + "; ".join(f"{k} {mean:.2f} / {mx:.1f}" for k, mean, mx in o.api_server)
            )
        if a.reads:
            out.append(
                f"  - API reads by id of seeded rows during the move: {a.reads:,}, of which {a.reads_missing:,} found no row"
            )
        if o.app.get("error_samples"):
            out.append("  - application errors (samples): " + " | ".join(o.app["error_samples"][:3]))
        if o.app.get("lost_sample") or o.app.get("wrong_sample"):
            out.append(
                f"  - application rows lost (sample): {o.app.get('lost_sample')}; payloads wrong (sample): {o.app.get('wrong_sample')}"
            )
        for kind, count in sorted(a.error_kinds.items(), key=lambda kv: -kv[1])[:6]:
            out.append(f"  - API error x{count}: {kind}")
        if a.slow:
            out.append("  - requests over 100 ms, by episode: " + "; ".join(slow_episodes(o)))
        if a.autovacuum:
            out.append("  - autovacuum workers seen during the move: " + "; ".join(a.autovacuum[:6]))
        if a.checkpointer:
            busy = checkpointer_busy(a, a.checkpointer[0][0], a.checkpointer[-1][0])
            out.append(
                f"  - checkpoints completed during the move: {checkpoints_during(a)}; the checkpointer's wait events "
                f"while busy: {', '.join(busy) or 'none sampled'}"
            )
        if a.page_cache:
            out.append(f"  - during the move: {page_cache_during(a, a.page_cache[0][0], a.page_cache[-1][0])}")
    return out


def slow_episodes(o: Outcome, gap: float = 0.5, limit: int = 6) -> list[str]:
    """Group the slow requests into episodes; name the innermost pgmaint phase running at the time."""
    episodes: list[list] = []
    for sched, ms, kind in sorted(o.api.slow):
        if episodes and sched - episodes[-1][-1][0] <= gap:
            episodes[-1].append((sched, ms, kind))
        else:
            episodes.append([(sched, ms, kind)])
    out = []
    for ep in episodes[:limit]:
        t = ep[0][0]
        worst = max(ep, key=lambda x: x[1])
        inner = [sp for sp in o.spans if sp[1] <= t + worst[1] / 1000 and sp[2] >= t]
        phase = min(inner, key=lambda sp: sp[2] - sp[1])[0] if inner else None
        kinds = sorted({k for _, _, k in ep})
        busy = checkpointer_busy(o.api, t - 0.1, t + worst[1] / 1000)
        cache = page_cache_during(o.api, t - 0.1, t + worst[1] / 1000)
        out.append(
            f"t+{t - o.move_start:.1f}s: {len(ep)} ({'/'.join(kinds)}), worst {worst[1]:.0f} ms"
            + (f", during {phase}" if phase else "")
            + (f"; the checkpointer was in {'/'.join(busy)}" if busy else "")
            + (f"; {cache}" if cache else "")
        )
    if len(episodes) > limit:
        out.append(f"... {len(episodes) - limit} more episodes")
    return out


def profile(outcomes: list[Outcome]) -> list[str]:
    out = []
    for o in outcomes:
        if o.skipped or o.contender.startswith("("):
            continue
        out += dag_breakdown(o)
        if o.phases:
            out.append(
                f"{o.contender} phases (wall seconds, measured around the engine's functions; total {o.wall:.2f}s):"
            )
            out.append("")
            out.append("| phase | calls | total s | max s |")
            out.append("|---|---:|---:|---:|")
            for name, (calls, total, mx) in sorted(o.phases.items(), key=lambda kv: -kv[1][1]):
                out.append(f"| {name} | {calls} | {total:.3f} | {mx:.3f} |")
            out.append("")
        if o.statements:
            out.append(
                f"{o.contender}: top statements by server time (pg_stat_statements; nested statements included):"
            )
            out.append("")
            out.append("| calls | total s | max ms | rows | WAL MB | statement |")
            out.append("|---:|---:|---:|---:|---:|---|")
            for calls, total, mx, rows, wal, q in o.statements:
                q = q.replace("|", "\\|")
                out.append(
                    f"| {calls} | {total} | {mx} | {rows:,} | {wal} | `{q[:160]}{'…' if len(q) > 160 else ''}` |"
                )
            out.append("")
    return out


def environment(conn, where: str, partman_problem: str | None) -> list[str]:
    version = conn.execute("SHOW server_version").fetchone()[0]
    settings = dict(
        conn.execute("""SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN
        ('shared_buffers', 'max_wal_size', 'checkpoint_timeout', 'synchronous_commit', 'fsync', 'work_mem',
         'maintenance_work_mem', 'wal_level')""").fetchall()
    )
    partman = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'").fetchone()
    mem = ""
    with contextlib.suppress(Exception):
        kb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1])
        mem = f", {kb / 1048576:.0f} GiB RAM"
    cpu = ""
    with contextlib.suppress(Exception):
        cpu = next(line for line in open("/proc/cpuinfo") if line.startswith("model name")).split(":", 1)[1].strip()
    return [
        f"- PostgreSQL {version}; {where}",
        f"- settings: {', '.join(f'{k}={v}' for k, v in sorted(settings.items()))}",
        f"- pg_partman: {partman[0] if partman else 'not available: ' + (partman_problem or '?')}",
        f"- machine: {os.cpu_count()} cores ({cpu}){mem}; {platform.platform()}",
        f"- Python {platform.python_version()}, psycopg {psycopg.__version__}; API pool: queue of {API_POOL} psycopg connections "
        "(psycopg_pool not installed)",
    ]


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sets", default="1M/10d,4M/4d", help="data sets, N/Dd comma-separated (default 1M/10d,4M/4d)")
    ap.add_argument("--quick", action="store_true", help="smoke run: --sets 100k/5d")
    ap.add_argument(
        "--dsn", default=os.environ.get("PGMAINT_BENCH_DSN"), help="use this server instead of a throwaway PG15 cluster"
    )
    ap.add_argument(
        "--contenders",
        default="pgmaint,pgmaint-dag,partman,partman-no-late,partman-api-only,physical",
        help="pgmaint (the engine, in-process), pgmaint-dag (the whole DAG through `scripts/airflow dags test`), "
        "partman, partman-no-late (the same, while the application makes no late inserts for the days "
        "being moved: they make partition_data_proc fail), partman-api-only (the simulated API alone, no "
        "application workload), physical (default: all six); pgmaint-api-only, pgmaint-dag-api-only: "
        "pgmaint's engine and whole DAG under the simulated API alone, like partman-api-only; pgmaint-deployed "
        "(-api-only): the whole DAG triggered over REST in a running Airflow (scheduler, LocalExecutor) started "
        "for it before timing",
    )
    ap.add_argument(
        "--live-day",
        default="both",
        choices=("in-default", "partitioned", "both"),
        help="in-default: the data runs up to now and today has no partition (API inserts go to the DEFAULT); "
        "partitioned: the data ends at midnight and today's partition exists; both (default): run each",
    )
    ap.add_argument(
        "--batch-rows", type=int, default=50_000, help="pgmaint batch_rows (default 50,000, the engine default)"
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=180.0,
        help="before each measurement wait up to this many seconds for other processes on the machine to use "
        f"< {QUIET_CORES} cores (default 180; 0: do not wait)",
    )
    ap.add_argument("--keep-cluster", action="store_true", help="leave the throwaway cluster's data directory in place")
    ap.add_argument(
        "--airflow-metadata",
        default="same-cluster",
        choices=("same-cluster", "own-cluster"),
        help="pgmaint-deployed's metadata DB: a database of the benchmark's cluster (default), or of a second "
        "throwaway PostgreSQL 15 cluster started for it (its own WAL and processes; same disk, same cores), as in "
        "a production where Airflow's database is not the application's",
    )
    ap.add_argument(
        "--data-under",
        default="/tmp",
        metavar="DIR",
        help="make the throwaway cluster's data directory under DIR (default /tmp), e.g. on a file system mounted "
        "without online discard; the report names the file system and its discard option",
    )
    args = ap.parse_args()
    sets = parse_sets("100k/5d" if args.quick else args.sets)
    scenarios = ["in-default", "partitioned"] if args.live_day == "both" else [args.live_day]
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(contenders) - {
        "pgmaint",
        "pgmaint-dag",
        "partman",
        "partman-no-late",
        "partman-api-only",
        "physical",
        "pgmaint-api-only",
        "pgmaint-dag-api-only",
        "pgmaint-deployed",
        "pgmaint-deployed-api-only",
    }
    if unknown:
        raise SystemExit(f"--contenders: unknown {sorted(unknown)}")

    all_ok = True
    global METER, AIRFLOW_HOME, DEPLOYED
    with (
        server(args.dsn, args.keep_cluster, args.data_under) as (admin_conninfo, where, postmaster),
        contextlib.ExitStack() as stack,
    ):
        METER = CpuMeter(postmaster) if postmaster else None
        meta_admin = None  # --airflow-metadata own-cluster: started before the first pgmaint-deployed contender
        conninfo = fresh_database(admin_conninfo)
        if any(c.startswith("pgmaint-dag") for c in contenders):
            AIRFLOW_HOME = AirflowHome(conninfo)
            stack.callback(AIRFLOW_HOME.close)
            log(f"preparing a private Airflow home {AIRFLOW_HOME.path} (metadata DB migrated once, not timed)")
            AIRFLOW_HOME.prepare()
            log(f"  ready in {AIRFLOW_HOME.prepare_seconds:.1f}s")
        with psycopg.connect(conninfo, autocommit=True, application_name="bench-admin") as admin:
            admin.execute("SET statement_timeout = 0")
            partman_problem, pgss = setup_extensions(admin)
            if partman_problem and any(c.startswith("partman") for c in contenders):
                log(f"partman will be skipped: {partman_problem}")
            header = (
                [
                    "## Migration benchmark",
                    "",
                    f"Command: `.venv/bin/python scripts/bench_migration.py {' '.join(sys.argv[1:])}`",
                    "",
                    "Environment:",
                    "",
                ]
                + environment(admin, where, partman_problem)
                + [""]
            )
            header += [
                "Columns: wall s = the contender's call(s), end to end (DNF: did not finish; rows/s then counts the rows it "
                "did move); pgmaint = the engine (`migrate_table`) called in this process, where it shares the Python GIL "
                f"with the {API_CLIENTS} API and {APP_WORKERS} application threads; "
                "pgmaint-dag = the whole "
                f"`{DAG_ID}` DAG (gates included) through `scripts/airflow dags test` in its own process; "
                "API figures cover requests scheduled during the move, latency from the scheduled start; "
                "max lock waiters = max of `count(*) FROM pg_locks WHERE NOT granted`, sampled every 50 ms.",
                "",
            ]
            if AIRFLOW_HOME:
                header += [
                    f"Airflow for pgmaint-dag: private AIRFLOW_HOME under {tempfile.gettempdir()}, SQLite metadata DB migrated "
                    f"before timing ({AIRFLOW_HOME.prepare_seconds:.1f}s, once), AIRFLOW_CONN_PGMAINT_TARGET = the bench "
                    "database, PGMAINT_CONFIG = the bench config.",
                    "",
                ]
            print("\n".join(header), flush=True)
            for live_day in scenarios:
                for ds in sets:
                    lay = Layout.at(ds, datetime.now(timezone.utc), live_day)
                    label = f"{ds.label} {live_day}"
                    log(
                        f"data set {label}: {ds.rows:,} rows from {ts(lay.t_start)} to {ts(lay.t_end)} "
                        f"({len(lay.window_days)} daily intervals), {len(lay.pre_window_days)} pre-window partitions"
                    )
                    outcomes: list[Outcome] = []
                    for i, name in enumerate(contenders):
                        if name.startswith("partman") and partman_problem:
                            outcomes.append(Outcome(name, skipped=partman_problem))
                            continue
                        log(f"{label}: seeding for {name}")
                        seeded = seed(
                            admin, lay, partman=name.startswith("partman"), partman_available=not partman_problem
                        )
                        log(
                            f"{label}: seeded {ds.rows:,} rows ({len(seeded.app_rows):,} owned by the application workload) "
                            f"in {seeded.seconds:.1f}s"
                        )
                        if i == 0:
                            log(f"{label}: API baseline (no move)")
                            admin.execute("CHECKPOINT")
                            if METER:
                                METER.wait_quiet(args.quiet_wait)
                            outcomes.append(baseline(conninfo, lay, seeded))
                            log(f"{label}: re-seeding for {name} (the baseline's inserts changed the table)")
                            seeded = seed(
                                admin, lay, partman=name.startswith("partman"), partman_available=not partman_problem
                            )
                        if name.startswith("pgmaint-dag"):
                            # scripts/airflow migrates the metadata DB again when the (shared) venv was re-installed
                            # since: do that now, untimed, as a deployment has; the run's note says if it happened again.
                            AIRFLOW_HOME.prepare()
                        if name.startswith("pgmaint-deployed"):
                            if args.airflow_metadata == "own-cluster" and meta_admin is None:
                                meta_admin = stack.enter_context(metadata_cluster(args.data_under))
                            DEPLOYED = DeployedAirflow(
                                meta_admin or admin_conninfo,
                                conninfo,
                                "a second cluster" if meta_admin else "the benchmark's cluster",
                            )
                            log(f"{label}: starting a deployed Airflow in {DEPLOYED.home} (untimed)")
                            DEPLOYED.start()
                            log(
                                f"  up, DAG parsed and unpaused, one dry run done in {DEPLOYED.ready_seconds:.1f}s "
                                f"(its task times: {DEPLOYED.warmup})"
                            )
                        log(f"{label}: running {name}")
                        try:
                            o = run_contender(
                                name, conninfo, admin, lay, seeded, pgss, args.batch_rows, args.quiet_wait
                            )
                        finally:
                            if DEPLOYED:
                                DEPLOYED.close()
                                DEPLOYED = None
                        log(
                            f"{label}: {name}: {o.wall:.2f}s; API max {fmt_ms(o.api.max_ms)} ms, errors {o.api.errors}; {o.verify}"
                        )
                        log(
                            f"{label}: {name}: application: "
                            + ", ".join(f"{k} {o.app.get(k, 0)}" for k in APP_BUG_FIGURES)
                        )
                        # A contender that did not finish is a measured outcome; lost or duplicated rows are not.
                        if not o.data_ok or (not name.startswith("partman") and not o.verified):
                            all_ok = False
                        if (
                            name.startswith("pgmaint") and not name.endswith("-api-only") and not app_clean(o.app)
                        ):  # the application must notice nothing
                            all_ok = False
                        outcomes.append(o)
                    by_name = {o.contender: o for o in outcomes}
                    section = [table(lay, outcomes), "", app_table(outcomes), "", "Targets (pgmaint):", ""] + targets(
                        by_name
                    )
                    section += ["", "Verification and notes:", ""] + details(outcomes) + [""] + profile(outcomes)
                    print("\n".join(section), flush=True)  # each data set as soon as it is done
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
