"""The Partitions view in a real browser: Debian's headless Chromium driven by Playwright, against a real
Airflow API server (scripts/airflow_local.py on a free port, SimpleAuthManager) whose target is the demo's
seeded incident state. Logs in, opens Browse → Partitions, checks what a person on call checks, repairs the
tables, checks again. Screenshots: printed path (kept after the test).

Skipped, with the reason, only when /usr/bin/chromium or the playwright package is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, _airflow_conn_json
from tests.support import announce

CHROMIUM = os.environ.get("PGMAINT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _http_status(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0  # not listening yet


@pytest.fixture
def api_server(request, demo_dsn, pg_dsn):
    """Only the API server (with the UI and the plugin) against the seeded demo database."""
    import airflow_local  # scripts/airflow_local.py
    from psycopg.conninfo import make_conninfo

    from tests.e2e.conftest import drop_database, fresh_database, sqlalchemy_url

    admin = make_conninfo(pg_dsn, dbname="postgres")
    meta_name = f"airflow_overview_{os.getpid()}"
    meta = fresh_database(admin, meta_name)
    home = Path(tempfile.mkdtemp(prefix="overview-", dir=REPO / ".pytest-airflow"))
    port = airflow_local.free_port()
    env = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(meta),
        "AIRFLOW_CONN_PGMAINT_TARGET": _airflow_conn_json(demo_dsn),
        "PGMAINT_CONFIG": str(REPO / "include" / "config" / "pgmaint.yaml"),
    }

    class ApiOnly(airflow_local.Deployment):
        def components(self):
            return {"api-server": (["api-server", "--port", str(self.port)], {})}

    d = ApiOnly(home=home, port=port, env_overrides=env)
    try:
        d.start()
        deadline = time.monotonic() + 180
        while _http_status(f"{d.base_url}/pgmaint/api/overview") != 401:
            assert not d.dead(), d.log_tail("api-server")
            assert time.monotonic() < deadline, "API server not up after 180 s\n" + d.log_tail("api-server")
            time.sleep(1)
        yield d
    finally:
        d.stop()
        drop_database(admin, meta_name)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian package `chromium`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    user_data = tempfile.mkdtemp(prefix="pgmaint-chromium-")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            user_data,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(user_data, ignore_errors=True)


def test_partitions_view_in_chromium(request, api_server, browser, demo_dsn):
    from include.pgmaint.config import load_config
    from include.pgmaint.db import connect
    from include.pgmaint.escalation import settings_for
    from include.pgmaint.maintenance import RunContext, run_maintenance
    from include.pgmaint.migrate import migrate_table
    from include.pgmaint.services.leases import pause_services, resume_services
    from include.pgmaint.watchdog import watch

    base = api_server.base_url
    shots = Path(tempfile.mkdtemp(prefix="pgmaint-view-screenshots-"))
    announce(request.config, f"partitions view: screenshots in {shots}")

    # Plugin routes are not authenticated by Airflow: ours require a session the auth manager accepts.
    assert _http_status(f"{base}/pgmaint/api/overview") == 401
    assert _http_status(f"{base}/pgmaint/partitions", {"Authorization": "Bearer not-a-jwt"}) in (401, 403)
    status, body = api_server.api("GET", "/pgmaint/api/overview")
    assert status == 200 and {t["name"] for t in body["tables"]} == {"public.inbound_requests", "public.event_deltas"}
    # The nav entry is registered.
    status, plugins = api_server.api("GET", "/api/v2/plugins")
    views = [v for p in plugins["plugins"] for v in p["external_views"]]
    assert any(v["name"] == "Partitions" and v["url_route"] == "pgmaint-partitions" for v in views), plugins

    # The incident's state, as the watchdog and a running migration leave it.
    config = load_config()
    watch(demo_dsn, config, settings_for(config))
    with connect(demo_dsn, config.lock_budget) as conn:
        pause_services(
            conn,
            config,
            ["request_logging"],
            dag_id="default_partition_migration",
            run_id="manual__browser",
            reason="moving DEFAULT rows",
        )
        default_rows = conn.execute("SELECT count(*) FROM ONLY public.inbound_requests_default").fetchone()[0]

    page = browser.new_page()
    page.goto(base + "/", wait_until="networkidle")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", api_server.admin_password())
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/auth/login" not in url and "login" not in url, timeout=60_000)
    assert any(c["name"] == "_token" for c in browser.cookies()), "no session cookie after login"

    page.goto(base + "/plugin/pgmaint-partitions", wait_until="networkidle")
    frame = page.frame_locator("iframe").first
    card = frame.locator("section[data-table='public.inbound_requests']")
    card.wait_for(timeout=60_000)
    page.screenshot(path=str(shots / "1-incident.png"), full_page=True)
    text = card.inner_text()
    assert "missing runway: no partition for the current interval" in text
    assert f"DEFAULT: {default_rows:,} rows waiting" in text
    assert "request_logging" in text and "default_partition_migration/manual__browser" in text
    assert "runway:public.inbound_requests" in text and "critical" in text
    assert card.locator(".seg.missing").count() >= 1 and card.locator(".dflt div").count() == 1
    # The prefilled trigger form for the exact migration.
    card.get_by_text("open the prefilled trigger form").click()
    frame.locator("textarea#conf").wait_for(timeout=30_000)
    assert json.loads(frame.locator("textarea#conf").input_value()) == {"table": "public.inbound_requests"}
    page.screenshot(path=str(shots / "2-trigger-form.png"), full_page=True)

    # Repair (as the demo does) and look again.
    with connect(demo_dsn, config.lock_budget) as conn:
        for name in ("public.inbound_requests", "public.event_deltas"):
            migrate_table(
                conn,
                demo_dsn,
                config,
                config.table(name),
                context=RunContext("default_partition_migration", "manual__repair", "migrate"),
            )
        run_maintenance(conn, config, context=RunContext("partition_maintenance", "manual__repair", "premake"))
        resume_services(conn, config, dag_id="default_partition_migration", run_id="manual__browser")
    watch(demo_dsn, config, settings_for(config))

    page.goto(base + "/plugin/pgmaint-partitions", wait_until="networkidle")
    frame = page.frame_locator("iframe").first
    card = frame.locator("section[data-table='public.inbound_requests']")
    card.wait_for(timeout=60_000)
    page.screenshot(path=str(shots / "3-repaired.png"), full_page=True)
    text = card.inner_text()
    assert "runway: 4 of 4 partitions ahead" in text and "DEFAULT: empty" in text
    assert "No service paused." in text and "No open watchdog condition." in text
    assert card.locator(".seg.missing").count() == 0 and card.locator(".seg.expired").count() == 0
    assert "manual__repair" in text
    for shot in shots.iterdir():
        assert shot.stat().st_size > 10_000, shot
