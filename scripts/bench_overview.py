#!/usr/bin/env python3
"""Partitions view benchmark: how long the view takes for 1,000 tables x 60 daily partitions.

    .venv/bin/python scripts/bench_overview.py [--tables 1000] [--partitions 60] [--repeats 7]
        [--dsn CONNINFO [--existing]] [--baseline GIT_REF] [--no-browser]

Builds the same tables as scripts/bench_maintenance.py (half with an empty DEFAULT; `--dsn` or
$PGMAINT_BENCH_DSN, else a throwaway embedded PostgreSQL), creates the state schema, then measures
with the plugin's own app (FastAPI TestClient, authorization left out), each figure the p50 and
max of `--repeats` loads:
  round trips  of one `gather`, counted from libpq's protocol trace (constant: not per table)
  catalog      `overview.read_partitions` alone (the two catalog queries), on one warm connection
  gather       `overview.gather` on a new connection, as each request opens one
  JSON         GET /pgmaint/api/overview: connect + gather + JSON encoding + gzip, the app mounted as
               Airflow's API server mounts it (inside its GZipMiddleware); sizes decoded and sent
  page         GET /pgmaint/partitions: connect + gather + HTML + gzip (sizes printed)
  Chromium     the page's HTML laid out and painted by headless Chromium (Debian's /usr/bin/chromium
               through playwright; skipped, with the reason, when either is missing); also the page
               with every table as a card (`?limit=`, the page's "show all" link)
`--existing`: measure the database `pgmaint_bench` at `--dsn` as an earlier run left it (an external
server keeps it), without rebuilding (a build of 1,000 x 60 takes minutes). `--baseline REF`:
also time `gather` of include/pgmaint/overview.py as it is at git REF, in the same run, for a
side-by-side ratio. Prints the load average before and after: the figures are wall times.
A benchmark, not a test: a missed target is reported, not failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (REPO, REPO / "scripts", REPO / "plugins"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import bench_maintenance as bm  # noqa: E402  (scripts/bench_maintenance.py: server, build, config, trace)
import pgmaint_partitions  # noqa: E402  (plugins/)

from include.pgmaint.escalation import settings_for  # noqa: E402
from include.pgmaint.overview import _gc_paused, gather, open_overview_connection, read_partitions  # noqa: E402
from include.pgmaint.state import ensure_state_schema  # noqa: E402

TARGET_S = 1.0
CHROMIUM = os.environ.get("PGMAINT_CHROMIUM", "/usr/bin/chromium")


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def baseline_gather(ref: str):
    """`gather` of include/pgmaint/overview.py at git `ref`, loaded as its own module."""
    text = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:include/pgmaint/overview.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="pgmaint-bench-baseline-")) / "overview_baseline.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("overview_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.gather


def chromium_render(html: str, repeats: int) -> tuple[list[float] | None, str]:
    """Seconds for headless Chromium to lay out and paint `html` (set_content up to the load event, then
    a forced layout and one animation frame)."""
    if not os.path.exists(CHROMIUM):
        return None, f"skipped: no Chromium at {CHROMIUM}"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None, "skipped: the playwright package is not installed"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})

            def once():
                page.set_content(html, wait_until="load")
                page.evaluate(
                    "() => new Promise(r => { document.body.offsetHeight; requestAnimationFrame(() => r()); })"
                )

            once()  # warm the renderer
            times = timed(once, repeats)
            cells = page.evaluate("() => document.querySelectorAll('.seg').length")
        finally:
            browser.close()
    return times, f"{cells:,} timeline cells drawn"


def airflow_like(plugin_app):
    """The plugin's app as Airflow's API server serves it: mounted under /pgmaint, inside the core app's
    GZipMiddleware (airflow/api_fastapi/core_api/app.py: minimum_size=1024, compresslevel=5)."""
    from fastapi import FastAPI
    from fastapi.middleware.gzip import GZipMiddleware

    app = FastAPI()
    app.mount(pgmaint_partitions.URL_PREFIX, plugin_app)
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=5)
    return app


def size(response, what: str) -> str:
    """Decoded size, and the bytes sent (gzip)."""
    return (
        f"{len(response.content) / 1e6:.2f} MB {what}, {response.num_bytes_downloaded / 1e6:.2f} MB sent "
        f"({response.headers.get('content-encoding', 'identity')})"
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tables", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=60)
    ap.add_argument("--dsn", default=os.environ.get("PGMAINT_BENCH_DSN"))
    ap.add_argument(
        "--existing",
        action="store_true",
        help="with --dsn: measure the pgmaint_bench database an earlier run left there, no rebuild",
    )
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline", metavar="GIT_REF", help="also time gather() as it is at this git ref")
    ap.add_argument("--no-browser", action="store_true", help="skip the Chromium render figure")
    args = ap.parse_args()
    if args.existing and not args.dsn:
        ap.error("--existing needs --dsn (an embedded server is deleted at exit)")

    import logging

    from fastapi.testclient import TestClient

    logging.disable(logging.INFO)  # httpx logs one line per request otherwise
    load_before = load()
    with bm.server(args.dsn) as (admin, kind, embedded):
        if args.existing:
            conninfo = bm.with_db(admin, bm.BENCH_DB)
            bm.log(f"measuring the existing database {bm.BENCH_DB} ({kind})")
        else:
            if embedded:
                bm.server_settings(admin, bm.FAST_BUILD_SETTINGS)
            conninfo = bm.fresh_database(admin)
            today = bm.day_floor(datetime.now(timezone.utc))
            bm.log(f"building {args.tables} tables x {args.partitions} partitions ({kind})")
            bm.build(conninfo, args.tables, args.partitions, today, args.workers)
            if embedded:
                bm.server_settings(admin, None)
        config, _ = bm.bench_config(args.tables, args.partitions)
        settings = settings_for(config)
        with open_overview_connection(conninfo, config) as conn:
            ensure_state_schema(conn, config.state_schema)
            relations = conn.execute("SELECT count(*) FROM pg_class").fetchone()[0]
            gather(conn, config, settings)  # warm the server's caches once, as a running database would be
            with bm.traced(conn) as trace:
                data = gather(conn, config, settings)
            with _gc_paused():  # as inside gather
                catalog = timed(lambda: read_partitions(conn, list(config.tables), config.timezone), args.repeats)

        def fresh_gather(fn=gather):
            with open_overview_connection(conninfo, config) as c:
                fn(c, config, settings)

        bm.log("timing gather on new connections")
        gathered = timed(fresh_gather, args.repeats)
        baseline = None
        if args.baseline:
            bm.log(f"timing gather at {args.baseline} on new connections (same run)")
            old = baseline_gather(args.baseline)
            baseline = []
            for _ in range(args.repeats):  # interleaved with the current code: the same machine load for both
                baseline += timed(lambda: fresh_gather(old), 1)
                gathered += timed(fresh_gather, 1)

        import include.pgmaint.config as cfgmod

        load_config = cfgmod.load_config
        try:  # the app loads $PGMAINT_CONFIG at each request: hand it the bench config instead
            cfgmod.load_config = lambda path=None: config
            client = TestClient(
                airflow_like(
                    pgmaint_partitions.create_app(authorize=None, conninfo=lambda c: conninfo, ui_base=lambda: "")
                )
            )
            client.get("/pgmaint/api/overview")
            responses = {}
            bm.log("timing the JSON endpoint and the page")
            json_t, page_t = [], []
            for _ in range(args.repeats):  # interleaved: the same machine load for both
                json_t += timed(lambda: responses.__setitem__("json", client.get("/pgmaint/api/overview")), 1)
                page_t += timed(lambda: responses.__setitem__("page", client.get("/pgmaint/partitions")), 1)
            responses["all"] = client.get("/pgmaint/partitions", params={"limit": args.tables})
        finally:
            cfgmod.load_config = load_config
        assert responses["json"].status_code == 200 and responses["page"].status_code == 200, responses
        assert len(data["tables"]) == args.tables and all(t["error"] is None for t in data["tables"]), [
            t["error"] for t in data["tables"] if t["error"]
        ][:3]
    render, render_note = (None, "skipped (--no-browser)")
    render_all, render_all_note = (None, "skipped (--no-browser)")
    if not args.no_browser:
        bm.log("timing the page in Chromium")
        render, render_note = chromium_render(responses["page"].text, args.repeats)
        render_all, render_all_note = chromium_render(responses["all"].text, max(1, args.repeats // 2))

    parts = sum(t["partitions"] for t in data["tables"])
    segments = sum(len(t["timeline"]["segments"]) for t in data["tables"])
    defaults = sum(1 for t in data["tables"] if t["default"])

    def row(name: str, xs: list[float] | None, extra: str = "", target: bool = True) -> str:
        if xs is None:
            return f"| {name} | — | — | — | {extra} |"
        p50 = statistics.median(xs)
        verdict = (f"≤ {TARGET_S:.0f} s: " + ("ok" if p50 <= TARGET_S else "**MISSED**")) if target else "—"
        return f"| {name} | {p50:.3f} | {max(xs):.3f} | {verdict} | {extra} |"

    print(
        f"\n{args.tables:,} tables × {args.partitions} partitions: {parts:,} attached partitions, {defaults} DEFAULTs "
        f"(counted), {relations:,} relations in pg_class; {kind}; p50 and max of {args.repeats} loads "
        f"(of {len(gathered)} for gather); load average (1/5/15 min) {load_before} before, {load()} after, "
        f"{os.cpu_count()} cores\n"
    )
    print("| figure | p50 s | max s | target | notes |")
    print("|---|---:|---:|---|---|")
    print(
        f"| round trips of one load | {trace['round_trips']} | | constant | not per table: "
        f"{len(trace['by_statement'])} distinct statements |"
    )
    print(row("catalog alone (`read_partitions`: 2 queries, no lock; same connection)", catalog, "", target=False))
    print(
        row(
            "`gather` on a new connection (catalog, locks, DEFAULTs, state)",
            gathered,
            f"{segments:,} timeline segments",
        )
    )
    if baseline is not None:
        ratio = statistics.median(baseline) / statistics.median(gathered)
        print(
            row(
                f"`gather` as at `{args.baseline}`, same run, interleaved",
                baseline,
                f"{ratio:.1f}× the current p50",
                target=False,
            )
        )
    print(row("GET /pgmaint/api/overview (connect + gather + JSON + gzip)", json_t, size(responses["json"], "JSON")))
    print(row("GET /pgmaint/partitions (connect + gather + HTML + gzip)", page_t, size(responses["page"], "HTML")))
    print(row("the page in headless Chromium (layout + paint)", render, render_note, target=False))
    print(
        row(
            f"the page with `?limit={args.tables}` (every table as a card) in Chromium",
            render_all,
            f"{render_all_note}; {len(responses['all'].content) / 1e6:.1f} MB HTML",
            target=False,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
