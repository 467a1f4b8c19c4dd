"""pgmaint's Partitions view in the Airflow UI (Airflow 3.3 plugin interface).

- a FastAPI app, mounted by the API server under /pgmaint:
    GET /pgmaint/partitions             the page (server-rendered HTML)
    GET /pgmaint/api/overview           the same data as JSON (README: "The Partitions view");
                                        ?segments=partitions for one timeline segment per partition
    GET /pgmaint/trigger/{dag_id}?conf= a prefilled trigger form, posted to Airflow's REST API as the viewer
    GET /pgmaint/runbook                docs/runbook.md as HTML (when escalation.runbook_url is that relative path)
- an external view in the navigation (Browse → Partitions) that shows /pgmaint/partitions inside the UI.

Airflow does not authenticate plugin apps: every route here requires a user whom Airflow's auth
manager lets read (GET) all three pgmaint DAGs — the same check Airflow's own DAG routes make,
with the session's JWT (the `_token` cookie the UI sets at login, or an `Authorization: Bearer`
header). The data comes from include/pgmaint/overview.py (no Airflow needed there).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse

try:  # importable outside Airflow (tests build the app with their own authorization)
    from airflow.plugins_manager import AirflowPlugin
except ImportError:  # pragma: no cover
    AirflowPlugin = object

log = logging.getLogger("pgmaint.plugin")
REPO = Path(__file__).resolve().parent.parent
URL_PREFIX = "/pgmaint"
PGMAINT_DAGS = ("partition_maintenance", "default_partition_migration", "partition_watchdog")


async def airflow_readers_of_pgmaint_dags(request: Request) -> None:
    """401 without a valid session, 403 unless the auth manager lets the user read every pgmaint DAG."""
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user, requires_access_dag

    credentials = await bearer_scheme(request)
    user = await get_user(request, None, credentials)
    for dag_id in PGMAINT_DAGS:
        await run_in_threadpool(requires_access_dag("GET", param_dag_id=dag_id), request, user)


def _ui_base() -> str:
    """The path the Airflow UI is served under ('' at the root), from [api] base_url."""
    try:
        from urllib.parse import urlsplit

        from airflow.configuration import conf

        return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    except Exception:
        return ""


def _target_conninfo(config) -> str:
    from include.pgmaint.airflow.connections import conninfo_from_airflow

    try:
        return conninfo_from_airflow(config.connection_id)
    except Exception:  # outside a task the SDK may not reach the metadata DB's connections
        from airflow.models.connection import Connection

        c = Connection.get_connection_from_secrets(config.connection_id)
        from psycopg.conninfo import make_conninfo

        params = {"host": c.host, "port": c.port, "user": c.login, "password": c.password, "dbname": c.schema}
        return make_conninfo("", **{k: v for k, v in params.items() if v})


def create_app(
    authorize: Callable[[Request], Awaitable[None]] | None = airflow_readers_of_pgmaint_dags,
    conninfo: Callable[[object], str] = _target_conninfo,
    ui_base: Callable[[], str] = _ui_base,
) -> FastAPI:
    """The plugin's app. `authorize=None` only for tests of the endpoint itself."""
    deps = [Depends(authorize)] if authorize else []
    app = FastAPI(title="pgmaint partitions", dependencies=deps, docs_url=None, redoc_url=None, openapi_url=None)

    def overview(tables: list[str] | None = None, segments: str = "runs") -> dict:
        from include.pgmaint.config import load_config
        from include.pgmaint.escalation import settings_for
        from include.pgmaint.overview import gather, open_overview_connection

        try:
            config = load_config()
        except Exception as exc:
            raise HTTPException(500, f"pgmaint config: {exc}") from None
        base = ui_base()
        try:
            with open_overview_connection(conninfo(config), config) as conn:
                return gather(
                    conn,
                    config,
                    settings_for(config),
                    ui_base=base,
                    plugin_base=base + URL_PREFIX,
                    tables=tables,
                    segments=segments,
                )
        except HTTPException:
            raise
        except KeyError as exc:
            raise HTTPException(404, f"table: {exc.args[0]}") from None
        except Exception as exc:  # unreachable database, timeout, privilege: say so, never hang
            log.warning("pgmaint partitions: cannot read the target database: %s", exc)
            raise HTTPException(
                503,
                f"cannot read the target database ({config.connection_id}): "
                f"{type(exc).__name__}: {' '.join(str(exc).split())}",
            ) from None

    @app.get("/api/overview")
    def api_overview(
        table: list[str] | None = Query(None, description="only these configured tables"),
        segments: str = Query(
            "runs",
            pattern="^(runs|partitions)$",
            description="runs: adjacent partitions of one kind as one segment; partitions: one segment per partition",
        ),
    ) -> JSONResponse:
        return JSONResponse(overview(table, segments))

    @app.get("/partitions", response_class=HTMLResponse)
    def page(table: list[str] | None = Query(None), limit: int = Query(50, ge=1, le=10_000)) -> HTMLResponse:
        from include.pgmaint.overview_page import render

        try:
            return HTMLResponse(render(overview(table, "partitions"), limit=limit))  # cards draw every partition
        except HTTPException as exc:
            return HTMLResponse(f"<!doctype html><h1>pgmaint partitions</h1><p>{exc.detail}</p>", exc.status_code)

    @app.get("/trigger/{dag_id}", response_class=HTMLResponse)
    def trigger(dag_id: str, conf: str = Query("{}")) -> HTMLResponse:
        from include.pgmaint.overview_page import trigger_page

        if dag_id not in PGMAINT_DAGS:
            raise HTTPException(404, f"not a pgmaint DAG: {dag_id!r} (one of {', '.join(PGMAINT_DAGS)})")
        try:
            parsed = json.loads(conf)
            if not isinstance(parsed, dict):
                raise ValueError("must be a JSON object")
        except ValueError as exc:
            raise HTTPException(422, f"conf: not a JSON object: {exc}") from None
        base = ui_base()
        return HTMLResponse(trigger_page(dag_id, parsed, api_base=base, ui_base=base, plugin_base=base + URL_PREFIX))

    @app.get("/runbook", response_class=HTMLResponse)
    def runbook() -> HTMLResponse:
        from markdown_it import MarkdownIt

        text = (REPO / "docs" / "runbook.md").read_text()
        body = MarkdownIt("commonmark", {"html": True}).enable("table").render(text)
        return HTMLResponse(
            "<!doctype html><html><head><meta charset='utf-8'><title>pgmaint runbook</title>"
            "<style>body{font:14px/1.5 system-ui,sans-serif;max-width:960px;margin:16px auto}"
            "code,pre{background:#f5f5f5}</style></head><body>" + body + "</body></html>"
        )

    return app


class PgmaintPartitionsPlugin(AirflowPlugin):
    name = "pgmaint_partitions"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "pgmaint partitions"}]
    external_views = [
        {
            "name": "Partitions",
            "href": URL_PREFIX.lstrip("/") + "/partitions",
            "url_route": "pgmaint-partitions",
            "destination": "nav",
            "category": "browse",
        }
    ]
