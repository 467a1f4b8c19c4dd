#!/usr/bin/env python3
"""DAG-level benchmark: what one `partition_maintenance` / `partition_watchdog` run costs.

    .venv/bin/python scripts/bench_dag.py [--sizes 1,100,1000] [--fleet 1000x5] [--repo DIR] [--partitions 12]
                                          [--no-watchdog | --only-watchdog]

For each scenario — N tables on one target, and N tables spread over T targets (T databases
on one server, one connection each, `targets:` config) — it builds the tables (healthy: every
partition of the managed window exists, nothing expired), then runs in a fresh interpreter
(a private Airflow home, SQLite metadata DB, as `scripts/airflow dags test` does):

  1. partition_maintenance, all healthy;
  2. partition_maintenance with 1 % of the tables (at least one per target) needing work (their
     newest partition dropped beforehand, so premake re-creates it);
  3. partition_watchdog, all healthy.

and prints, per run: task instances created, task instances executed (not skipped by the
scheduler), the DAG run's wall time in `dag.test()`, and the statements the targets received
(transactions committed + rolled back in `pg_stat_database` of the target databases: pgmaint runs
every statement in autocommit, so that is the number of round trips, plus connection set-up).
For the watchdog run also: the checks it made, as the watchdog counts them (the keys in the
`scope` of the `CheckResult`s its `check_*` tasks push as XCom `result`, summed over tasks and
targets), and the time its `check_*` tasks took (sum of their task instances' end - start).

Then the watchdog engine without Airflow, on the same databases: `run_checks()` once per target
as a warm-up, then once per target timed — the checks made, the seconds, the statements
("watchdog engine: N checks in X s"). That is the figure of issue 16 ("200 tables, 1,204 checks,
1.1 s"): measure it alone with `--sizes 200 --fleet '' --only-watchdog`.

`--only-watchdog` skips the two measured maintenance runs (the warm-up maintenance run still runs:
it creates the state schema and journals every table, so the watchdog's cadence check sees a
maintained fleet, as in the full benchmark).

`--repo DIR` runs the DAGs of another checkout of pgmaint (e.g. `git archive <rev> | tar -x -C DIR`)
against the same tables, for before/after figures; `--max-tables-repo` bounds the sizes tried there
(the per-table DAG needs ~4 task instances per table). A benchmark, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import psycopg  # noqa: E402
import yaml  # noqa: E402
from bench_maintenance import BENCH_SCHEMA, PREMAKE, _build_batch, day_floor, log, server, with_db  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import conninfo_to_dict  # noqa: E402

STATE_SCHEMA = "pgmaint_bench"
TARGET_TIS, TARGET_WALL_S = 10, 30.0

RUNNER = textwrap.dedent("""
    import json, os, sys, time, logging
    repo = sys.argv[1]
    sys.path.insert(0, repo)
    logging.disable(logging.INFO)
    from airflow.utils import db
    db.upgradedb()
    from airflow.models.pool import Pool
    for name in json.loads(os.environ["BENCH_POOLS"]):
        Pool.create_or_update_pool(name, 8, "bench", False)
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    def n_checks(payload):
        # a check task's XCom `result`: a CheckResult dict (one target) or {target: CheckResult dict or None}
        if not isinstance(payload, dict):
            return 0
        if "scope" in payload:
            return len(payload["scope"])
        return sum(n_checks(v) for v in payload.values())

    out = {}
    for dag_id, conf in json.loads(sys.argv[2]):
        bag = DagBag(dag_folder=os.path.join(repo, "dags"))
        assert not bag.import_errors, bag.import_errors
        dag = bag.dags[dag_id]
        t = time.perf_counter()
        run = dag.test(run_conf=conf or None)
        wall = time.perf_counter() - t
        tis = run.get_task_instances()
        states = {}
        for ti in tis:
            states[str(ti.state)] = states.get(str(ti.state), 0) + 1
        executed = sum(1 for ti in tis if ti.start_date is not None and str(ti.state) not in ("skipped", "upstream_failed"))
        entry = {"state": str(run.state), "wall": wall, "tis": len(tis), "executed": executed, "states": states}
        if dag_id == "partition_watchdog":
            checks = [ti for ti in tis if ti.task_id.startswith("check_")]
            with create_session() as session:
                rows = session.scalars(XComModel.get_many(
                    run_id=run.run_id, dag_ids=dag_id, key="result", task_ids=[ti.task_id for ti in checks])).all()
                payloads = [XComModel.deserialize_value(r) for r in rows]
            entry["checks"] = sum(n_checks(p) for p in payloads) if payloads else None
            entry["check_tasks"] = len(checks)
            entry["check_s"] = sum(
                (ti.end_date - ti.start_date).total_seconds() for ti in checks if ti.start_date and ti.end_date)
        out[dag_id + (":" + json.dumps(conf) if conf else "")] = entry
    print("BENCH-RESULT " + json.dumps(out))
""")

# The watchdog engine alone (no Airflow), with the checkout's own code: every target's run_checks()
# once as a warm-up, then once timed; the statements of the timed calls from pg_stat_database.
ENGINE = textwrap.dedent("""
    import json, sys, time, logging
    repo, config_path, admin, targets = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    sys.path.insert(0, repo)
    logging.disable(logging.WARNING)
    import psycopg
    from include.pgmaint.fleet import load_target
    from include.pgmaint.escalation import settings_for
    from include.pgmaint.watchdog.run import run_checks

    def statements():
        time.sleep(1.2)  # backends flush their statistics at exit
        with psycopg.connect(admin, autocommit=True) as conn:
            return conn.execute(
                "SELECT coalesce(sum(xact_commit + xact_rollback), 0)::bigint FROM pg_stat_database "
                "WHERE datname = ANY(%s)", [[db for _, _, db in targets]]).fetchone()[0]

    configs = [(load_target(config_path, name), conninfo) for name, conninfo, _ in targets]
    for config, conninfo in configs:
        run_checks(conninfo, config, settings_for(config))
    before = statements()
    seconds, checks, conditions = 0.0, 0, 0
    for config, conninfo in configs:
        t = time.perf_counter()
        result = run_checks(conninfo, config, settings_for(config))
        seconds += time.perf_counter() - t
        checks += len(result.scope)
        conditions += len(result.conditions)
    after = statements()
    print("BENCH-RESULT " + json.dumps(
        {"checks": checks, "seconds": seconds, "conditions": conditions, "statements": after - before}))
""")


def _conn_json(conninfo: str) -> str:
    p = {k: v for k, v in conninfo_to_dict(conninfo).items() if v is not None}
    c = {
        "conn_type": "postgres",
        "host": p.pop("host", None),
        "login": p.pop("user", None),
        "password": p.pop("password", None),
        "schema": p.pop("dbname", None),
    }
    if "port" in p:
        c["port"] = int(p.pop("port"))
    return json.dumps({k: v for k, v in c.items() if v is not None})


def build_target(admin: str, dbname: str, n_tables: int, n_parts: int, today: datetime) -> str:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(dbname)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    conninfo = with_db(admin, dbname)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(BENCH_SCHEMA)))
    first = today - timedelta(days=n_parts - 1 - PREMAKE)
    for lo in range(0, n_tables, 100):
        _build_batch(conninfo, range(lo, min(lo + 100, n_tables)), n_parts, first)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) pg_catalog.pg_class, pg_catalog.pg_inherits, pg_catalog.pg_constraint")
    return conninfo


def break_some(conninfo: str, n_tables: int, n_parts: int) -> int:
    """Drop the newest partition of 1 % of the tables (at least one): premake has work on those."""
    k = max(1, n_tables // 100)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for i in range(0, n_tables, max(1, n_tables // k))[:k]:
            conn.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(
                    sql.Identifier(BENCH_SCHEMA, f"t{i:04d}_part_{n_parts - 1:02d}")
                )
            )
            # a partition premake re-creates gets pgmaint's name: drop that too on a second round
            conn.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(
                    sql.Identifier(
                        BENCH_SCHEMA,
                        f"t{i:04d}_p{day_floor(datetime.now(timezone.utc)) + timedelta(days=PREMAKE):%Y%m%d}",
                    )
                )
            )
    return k


def statements(admin: str, dbnames: list[str]) -> int:
    time.sleep(1.2)  # backends flush their statistics at exit and when idle for a second
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute(
            "SELECT coalesce(sum(xact_commit + xact_rollback), 0)::bigint FROM pg_stat_database "
            "WHERE datname = ANY(%s)",
            [dbnames],
        ).fetchone()[0]


def config_for(n_tables: int, n_parts: int, targets: list[tuple[str, str]]) -> dict:
    retention = f"{n_parts - PREMAKE - 1} days"
    tables = [
        {
            "name": f"{BENCH_SCHEMA}.t{i:04d}",
            "partition_key": "ts",
            "interval": "1 day",
            "premake": PREMAKE,
            "retention": retention,
        }
        for i in range(n_tables)
    ]
    shared = {"timezone": "UTC", "state_schema": STATE_SCHEMA, "schedules": {"maintenance": "*/15 * * * *"}}
    if len(targets) == 1:
        return {**shared, "connection_id": targets[0][1], "pool": targets[0][1], "tables": tables}
    return {
        **shared,
        "targets": [{"name": name, "connection_id": conn_id, "tables": tables} for name, conn_id in targets],
    }


def run_dags(repo: Path, home: Path, config_path: Path, env_conns: dict, pools: list[str], runs: list) -> dict:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "PGMAINT_CONFIG": str(config_path),
        "AIRFLOW__CORE__DAGS_FOLDER": str(repo / "dags"),
        "PYTHONPATH": str(repo),
        "BENCH_POOLS": json.dumps(pools),
        **env_conns,
    }
    out = subprocess.run(
        [sys.executable, "-c", RUNNER, str(repo), json.dumps(runs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=7200,
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH-RESULT ")), None)
    if line is None:
        raise RuntimeError(f"DAG runner failed:\n{out.stderr[-4000:]}")
    return json.loads(line.removeprefix("BENCH-RESULT "))


def watchdog_engine(
    repo: Path, config_path: Path, admin: str, targets: list[tuple[str | None, str, str]]
) -> dict | None:
    """run_checks() per target (warm-up, then timed) in a fresh interpreter with `repo`'s code; None if it failed."""
    out = subprocess.run(
        [sys.executable, "-c", ENGINE, str(repo), str(config_path), admin, json.dumps(targets)],
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH-RESULT ")), None)
    if line is None:
        log(f"watchdog engine: could not measure (run_checks failed in {repo}):\n{out.stderr[-2000:]}")
        return None
    return json.loads(line.removeprefix("BENCH-RESULT "))


def engine_line(e: dict) -> str:
    return (
        f"watchdog engine: {e['checks']:,} checks in {e['seconds']:.2f} s ({e['statements']:,} statements, "
        f"{e['conditions']} condition(s) found)"
    )


def scenario(
    admin: str,
    repo: Path,
    label: str,
    n_tables: int,
    n_targets: int,
    n_parts: int,
    today: datetime,
    watchdog: bool,
    maintenance: bool = True,
) -> tuple[list[dict], dict | None]:
    per_target = n_tables // n_targets
    dbs = [f"pgmaint_dag_{i}" for i in range(n_targets)]
    log(f"{label}: building {n_targets} database(s) x {per_target} tables x {n_parts} partitions")
    conninfos = [build_target(admin, db, per_target, n_parts, today) for db in dbs]
    targets = [(f"db{i}", f"bench_db{i}") for i in range(n_targets)]
    conns = {f"AIRFLOW_CONN_{conn_id.upper()}": _conn_json(ci) for (_, conn_id), ci in zip(targets, conninfos)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="pgmaint-bench-dag-") as tmp:
        home = Path(tmp)
        config_path = home / "pgmaint.yaml"
        config_path.write_text(yaml.safe_dump(config_for(per_target, n_parts, targets)))
        pools = [conn_id for _, conn_id in targets]
        # warm-up: the first run creates the state schema
        run_dags(repo, home, config_path, conns, pools, [["partition_maintenance", None]])
        plan = [("healthy", ["partition_maintenance", None])] if maintenance else []
        for what, (dag_id, conf) in plan:
            before = statements(admin, dbs)
            got = run_dags(repo, home, config_path, conns, pools, [[dag_id, conf]])
            rows.append(
                {
                    "scenario": label,
                    "run": f"maintenance, {what}",
                    **next(iter(got.values())),
                    "statements": statements(admin, dbs) - before,
                }
            )
        if maintenance:
            broken = sum(break_some(ci, per_target, n_parts) for ci in conninfos)
            before = statements(admin, dbs)
            got = run_dags(repo, home, config_path, conns, pools, [["partition_maintenance", None]])
            rows.append(
                {
                    "scenario": label,
                    "run": f"maintenance, {broken} table(s) with work",
                    **next(iter(got.values())),
                    "statements": statements(admin, dbs) - before,
                }
            )
        engine = None
        if watchdog:
            before = statements(admin, dbs)
            got = run_dags(repo, home, config_path, conns, pools, [["partition_watchdog", None]])
            rows.append(
                {
                    "scenario": label,
                    "run": "watchdog",
                    **next(iter(got.values())),
                    "statements": statements(admin, dbs) - before,
                }
            )
            names = [name for name, _ in targets] if n_targets > 1 else [None]
            engine = watchdog_engine(
                repo, config_path, admin, [(name, ci, db) for name, ci, db in zip(names, conninfos, dbs)]
            )
    for row in rows:
        log(
            f"  {row['run']}: {row['state']}, {row['tis']} task instances ({row['executed']} executed), "
            f"{row['wall']:.1f} s, {row['statements']} statements"
            + (
                f", {_fmt_checks(row)} checks, check tasks {row['check_s']:.2f} s ({row['check_tasks']} tasks)"
                if "check_s" in row
                else ""
            )
        )
    if engine:
        log(f"  {engine_line(engine)}")
    return rows, engine


def _fmt_checks(row: dict) -> str:
    return "?" if row.get("checks") is None else f"{row['checks']:,}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,100,1000", help="tables on one target, comma-separated")
    ap.add_argument("--fleet", default="1000x5", help="TABLESxTARGETS spread over several databases ('' to skip)")
    ap.add_argument("--partitions", type=int, default=12)
    ap.add_argument("--repo", type=Path, default=REPO, help="the pgmaint checkout whose DAGs to run")
    ap.add_argument("--max-tables-repo", type=int, default=None, help="skip sizes above this (for slow old checkouts)")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--no-watchdog", action="store_true", help="skip the watchdog run and the engine figure")
    only.add_argument(
        "--only-watchdog",
        action="store_true",
        help="skip the measured maintenance runs: build, one warm-up maintenance run, the watchdog run, the engine figure",
    )
    ap.add_argument("--dsn", default=os.environ.get("PGMAINT_BENCH_DSN"))
    args = ap.parse_args()
    today = day_floor(datetime.now(timezone.utc))
    sizes = [int(n) for n in args.sizes.split(",") if n.strip()]  # '' or 0: no single-target scenario
    scenarios = [(f"{n} table(s), 1 target", n, 1) for n in sizes if n]
    if args.fleet:
        n, t = map(int, args.fleet.split("x"))
        scenarios.append((f"{n} tables, {t} targets", n, t))
    scenarios = [s for s in scenarios if args.max_tables_repo is None or s[1] <= args.max_tables_repo]
    rows, engines = [], []
    with server(args.dsn) as (admin, kind, _):
        for label, n, t in scenarios:
            got, engine = scenario(
                admin,
                args.repo.resolve(),
                label,
                n,
                t,
                args.partitions,
                today,
                watchdog=not args.no_watchdog,
                maintenance=not args.only_watchdog,
            )
            rows += got
            if engine:
                engines.append((label, engine))
    print()
    print(f"## DAG runs in `dag.test()` — DAGs of {args.repo.resolve()}")
    print()
    print(
        "| scenario | run | state | task instances (executed) | wall s | statements on the targets "
        "| watchdog checks | watchdog check tasks s |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        checks = (_fmt_checks(r), f"{r['check_s']:.2f}") if "check_s" in r else ("", "")
        print(
            f"| {r['scenario']} | {r['run']} | {r['state']} | {r['tis']} ({r['executed']}) | {r['wall']:.1f} "
            f"| {r['statements']} | {checks[0]} | {checks[1]} |"
        )
    if engines:
        print()
        print(
            f"Watchdog engine without Airflow (`run_checks()` per target, after one warm-up call; code of {args.repo.resolve()}):"
        )
        for label, e in engines:
            print(f"- {label}: {engine_line(e)}")
    healthy_1000 = [r for r in rows if r["scenario"].startswith("1000 table") and r["run"].endswith("healthy")]
    for r in healthy_1000:
        ok = r["tis"] <= TARGET_TIS and r["wall"] <= TARGET_WALL_S
        print(
            f"\n{r['scenario']}, healthy: {r['tis']} task instances (target ≤ {TARGET_TIS}), {r['wall']:.1f} s "
            f"(target ≤ {TARGET_WALL_S:g} s): {'ok' if ok else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
