#!/usr/bin/env python3
"""Partitions view benchmark: how long the view takes for 1,000 tables x 60 daily partitions.

    .venv/bin/python scripts/bench_overview.py [--tables 1000] [--partitions 60] [--dsn CONNINFO] [--repeats 5]

Builds the same tables as scripts/bench_maintenance.py (half with an empty DEFAULT; `--dsn` or
$PGMAINT_BENCH_DSN, else a throwaway embedded PostgreSQL), creates the state schema, then measures
with the plugin's own app (FastAPI TestClient, authorization left out):
  gather       include.pgmaint.overview.gather: catalog + DEFAULT counts + state reads (median, max)
  JSON         GET /pgmaint/api/overview, connection included (median, max)
  page         GET /pgmaint/partitions, the HTML the UI shows (median, max; size)
and the same gather split into its parts (catalog query alone). Prints a markdown table; a benchmark,
not a test: a missed target is reported, not failed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (REPO, REPO / "scripts", REPO / "plugins"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import bench_maintenance as bm  # noqa: E402  (scripts/bench_maintenance.py: server, build, config)

from include.pgmaint.catalog import read_catalog  # noqa: E402
from include.pgmaint.escalation import settings_for  # noqa: E402
from include.pgmaint.overview import gather, open_overview_connection  # noqa: E402
from include.pgmaint.state import ensure_state_schema  # noqa: E402

TARGET_S = 1.0


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=60)
    ap.add_argument("--dsn", default=os.environ.get("PGMAINT_BENCH_DSN"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import pgmaint_partitions
    from fastapi.testclient import TestClient

    with bm.server(args.dsn) as (admin, kind, embedded):
        if embedded:
            bm.server_settings(admin, bm.FAST_BUILD_SETTINGS)
        conninfo = bm.fresh_database(admin)
        today = bm.day_floor(datetime.now(timezone.utc))
        bm.log(f"building {args.tables} tables x {args.partitions} partitions ({kind})")
        built = bm.build(conninfo, args.tables, args.partitions, today, args.workers)
        if embedded:
            bm.server_settings(admin, None)
        config, _ = bm.bench_config(args.tables, args.partitions)
        settings = settings_for(config)
        with open_overview_connection(conninfo, config) as conn:
            ensure_state_schema(conn, config.state_schema)
            gather(conn, config, settings)  # warm the caches once, as a running API server would be
            catalog = timed(lambda: read_catalog(conn, list(config.tables), config.timezone), args.repeats)
            gathered = timed(lambda: gather(conn, config, settings), args.repeats)
            data = gather(conn, config, settings)

        import include.pgmaint.config as cfgmod

        load_config = cfgmod.load_config
        try:  # the app loads $PGMAINT_CONFIG at each request: hand it the bench config instead
            cfgmod.load_config = lambda path=None: config
            client = TestClient(pgmaint_partitions.create_app(authorize=None, conninfo=lambda c: conninfo, ui_base=lambda: ""))
            client.get("/api/overview")
            responses = {}
            json_t = timed(lambda: responses.__setitem__("json", client.get("/api/overview")), args.repeats)
            page_t = timed(lambda: responses.__setitem__("page", client.get("/partitions")), args.repeats)
        finally:
            cfgmod.load_config = load_config
        assert responses["json"].status_code == 200 and responses["page"].status_code == 200, responses
        assert len(data["tables"]) == args.tables and all(t["error"] is None for t in data["tables"])
        parts = sum(t["partitions"] for t in data["tables"])

    def row(name: str, xs: list[float], extra: str = "") -> str:
        med = statistics.median(xs)
        ok = "ok" if med <= TARGET_S else "MISSED"
        return f"| {name} | {med:.3f} | {max(xs):.3f} | ≤ {TARGET_S:.0f} s: {ok} | {extra} |"

    print(f"\n{args.tables} tables x {args.partitions} partitions ({parts:,} attached partitions, "
          f"{built['all_relations']:,} relations in pg_class); {kind}; {args.repeats} repeats\n")
    print("| figure | median s | max s | target | notes |")
    print("|---|---:|---:|---|---|")
    print(row("catalog query alone (read_catalog)", catalog, "one round trip"))
    print(row("gather (catalog, DEFAULT counts, state reads)", gathered,
              f"{sum(1 for t in data['tables'] if t['default'])} DEFAULTs counted"))
    print(row("GET /pgmaint/api/overview (connect + gather + JSON)", json_t,
              f"{len(responses['json'].content) / 1e6:.1f} MB JSON"))
    print(row("GET /pgmaint/partitions (connect + gather + HTML)", page_t,
              f"{len(responses['page'].content) / 1e6:.1f} MB HTML"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
