"""Evaluate a `GateSuite` with Great Expectations Core 1.x (imported here, lazily, only when a gate runs).

One ephemeral context per gate: a `postgres` data source whose URL is passed through a
`${...}` config variable (never written anywhere), one query asset per source the checks
read (`suites.CATALOG`, `DEFAULT`, `FIGURES`), one suite + validation definition per
asset, all run by one checkpoint (which also builds Data Docs when asked).

GX pitfalls handled here (research/great_expectations.md):
* the `great_expectations` logger is set to WARNING before the import (the import logs
  ~200 INFO lines) and loggers GX sets to INFO itself are reset after it; progress bars off;
* SQL errors do not raise: the expectation comes back failed with `exception_info`; those
  are reported as errors (retryable), never as data failures;
* a failed metric is retried 3 times, re-running every pending query with it: retries are
  set to 0 here (the Airflow task retries instead, with a fresh connection);
* `{batch}` cannot be aliased and JOIN changes its substitution: see suites.check_query.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from include.pgmaint.quality.suites import GateSuite

log = logging.getLogger("pgmaint.quality")
URL_VARIABLE = "PGMAINT_GX_URL"
DATASOURCE = "pgmaint"
DOCS_SITE = "pgmaint"
MAX_PROBLEMS_SHOWN = 10
GX_METRIC_RETRIES = 0


@dataclass
class CheckOutcome:
    key: str
    success: bool
    observed: int | None = None  # number of problems (unexpected rows)
    problems: list[str] = field(default_factory=list)
    error: str | None = None  # could not be evaluated


@dataclass
class RunOutcome:
    checks: dict[str, CheckOutcome]
    docs_path: str | None = None
    error: str | None = None  # nothing could be evaluated (e.g. the data source could not connect)


def sqlalchemy_url(conninfo: str) -> tuple[str, dict]:
    """(`postgresql+psycopg://` URL, extra connect_args) for a libpq conninfo or URI.

    A unix-socket host (a directory) or a multi-host list cannot be the URL's host: it goes
    into the query string (`?host=/tmp/dir`), which the psycopg dialect hands to libpq.
    Every other libpq parameter (sslmode, ...) goes to the query string as well, except
    `options`, which is returned to be merged with ours.
    """
    from sqlalchemy.engine import URL

    params = {k: v for k, v in conninfo_to_dict(conninfo).items() if v is not None}
    host = params.pop("host", None)
    port = params.pop("port", None)
    options = params.pop("options", None)
    query = {k: str(v) for k, v in params.items() if k not in ("user", "password", "dbname")}
    url_host = host
    if host and (host.startswith(("/", "@")) or "," in host):
        query["host"] = host
        url_host = None
    if port and url_host is None and "," in str(port):
        query["port"] = str(port)
        port = None
    url = URL.create(
        "postgresql+psycopg",
        username=params.get("user"),
        password=params.get("password"),
        host=url_host,
        port=int(port) if port else None,
        database=params.get("dbname"),
        query=query,
    )
    return url.render_as_string(hide_password=False), ({"options": options} if options else {})


def session_options(statement_timeout_ms: int, extra: str | None = None) -> str:
    opts = (
        f"-c statement_timeout={statement_timeout_ms} -c lock_timeout=200 -c TimeZone=UTC "
        "-c idle_in_transaction_session_timeout=30000 -c default_transaction_read_only=on"
    )
    return f"{extra} {opts}" if extra else opts


def import_gx():
    """Import Great Expectations quietly; returns the module."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    with warnings.catch_warnings():  # e.g. "module 'sre_parse' is deprecated", once per process
        warnings.simplefilter("ignore", DeprecationWarning)
        import great_expectations as gx
        from great_expectations.validator import validation_graph

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("great_expectations."):
            logger = logging.getLogger(name)
            if logger.level and logger.level < logging.WARNING:
                logger.setLevel(logging.NOTSET)  # e.g. data_context.types.base sets itself to INFO
    validation_graph.MAX_METRIC_COMPUTATION_RETRIES = GX_METRIC_RETRIES
    return gx


def error_message(exception_info) -> str | None:
    """The first exception message in a result's `exception_info` (either shape), or None."""
    if not exception_info:
        return None
    infos = [exception_info] if "raised_exception" in exception_info else list(exception_info.values())
    for info in infos:
        if isinstance(info, dict) and info.get("raised_exception"):
            message = str(info.get("exception_message") or "unknown error")
            return _first_line(message)
    return None


def _first_line(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else message
    return line[:500]


def run_suite(
    conninfo: str, suite: GateSuite, gate: str, *, statement_timeout_ms: int = 30_000, data_docs_dir: str | None = None
) -> RunOutcome:
    """Evaluate every check of `suite`; never raises for SQL/connection problems (they come back as errors)."""
    outcomes: dict[str, CheckOutcome] = {}
    if not suite.checks:
        return RunOutcome(outcomes)
    gx = import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    url, extra = sqlalchemy_url(conninfo)
    connect_args = {
        "options": session_options(statement_timeout_ms, extra.get("options")),
        "application_name": "pgmaint_quality",
        "connect_timeout": 10,
    }
    context = gx.get_context(mode="ephemeral", runtime_environment={URL_VARIABLE: url})
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    datasource = None
    try:
        try:
            datasource = context.data_sources.add_postgres(
                DATASOURCE, connection_string="${" + URL_VARIABLE + "}", kwargs={"connect_args": connect_args}
            )
        except Exception as exc:  # TestConnectionError: add_postgres connects straight away
            return RunOutcome(outcomes, error=f"could not connect: {_first_line(str(exc))}")
        definitions = _validation_definitions(gx, context, datasource, suite, gate)
        actions, docs_base = _data_docs(context, suite, gate, data_docs_dir)
        # COMPLETE: our queries return problem descriptions (catalog/journal facts), never user rows.
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"pgmaint.{gate}", validation_definitions=definitions, actions=actions, result_format="COMPLETE"
            )
        )
        try:
            result = checkpoint.run()
        except Exception as exc:
            if not actions:
                raise
            log.warning("%s: building Data Docs failed (%s); validating without them", suite.table, exc)
            checkpoint.actions = []
            result = checkpoint.run()
        outcomes.update(_outcomes(result))
        docs_path = None
        if docs_base is not None and (docs_base / "index.html").exists():
            docs_path = str(docs_base / "index.html")
        return RunOutcome(outcomes, docs_path)
    except Exception as exc:  # anything else GX raises while talking to the database: retryable
        log.warning("%s: gate %s could not be evaluated: %s", suite.table, gate, exc, exc_info=True)
        return RunOutcome(outcomes, error=f"{type(exc).__name__}: {_first_line(str(exc))}")
    finally:
        _dispose(datasource)


def _validation_definitions(gx, context, datasource, suite: GateSuite, gate: str) -> list:
    """One validation definition per query asset: its checks as UnexpectedRowsExpectations."""
    definitions = []
    for asset_name, query in suite.assets.items():
        specs = [s for s in suite.checks if s.asset == asset_name]
        asset = datasource.add_query_asset(asset_name, query=query)
        batch = asset.add_batch_definition_whole_table(asset_name)
        expectations = [
            gx.expectations.UnexpectedRowsExpectation(
                unexpected_rows_query=s.query,
                description=s.description,
                meta={"pgmaint_key": s.key, "check": s.check, "expected": s.expected},
            )
            for s in specs
        ]
        gx_suite = context.suites.add(gx.ExpectationSuite(name=f"{gate}.{asset_name}", expectations=expectations))
        definitions.append(
            context.validation_definitions.add(
                gx.ValidationDefinition(name=f"{gate}.{asset_name}", data=batch, suite=gx_suite)
            )
        )
    return definitions


def _data_docs(context, suite: GateSuite, gate: str, data_docs_dir: str | None) -> tuple[list, Path | None]:
    """The checkpoint's actions and the Data Docs folder of this gate (none without `data_docs_dir`)."""
    if not data_docs_dir:
        return [], None
    from great_expectations.checkpoint import UpdateDataDocsAction

    docs_base = Path(data_docs_dir) / suite.table / gate
    shutil.rmtree(docs_base, ignore_errors=True)  # the folder shows the latest run of this gate
    context.add_data_docs_site(
        DOCS_SITE,
        {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_base)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    return [UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])], docs_base


def _outcomes(result) -> dict[str, CheckOutcome]:
    """Each expectation's verdict, by pgmaint check key (an expectation that raised is an error, not a failure)."""
    outcomes = {}
    for run in result.run_results.values():
        for er in run.results:
            key = er.expectation_config.meta["pgmaint_key"]
            message = error_message(er.exception_info)
            if message:
                outcomes[key] = CheckOutcome(key, False, error=message)
                continue
            details = (er.result or {}).get("details") or {}
            rows = details.get("unexpected_rows") or []
            outcomes[key] = CheckOutcome(
                key, bool(er.success), (er.result or {}).get("observed_value"), [str(r.get("problem")) for r in rows]
            )
    return outcomes


def run_suite_sql(conninfo: str, suite: GateSuite, *, statement_timeout_ms: int = 30_000) -> RunOutcome:
    """Evaluate every check of `suite` as GX's `UnexpectedRowsExpectation` does, without importing GX: the same
    query with `{batch}` replaced by `(<asset query>) AS subselect`, in a read-only session with the same timeouts;
    the check passes when it returns no row, and its rows are the problems. No Data Docs. Never raises for
    SQL/connection problems (they come back as errors)."""
    import psycopg

    outcomes: dict[str, CheckOutcome] = {}
    if not suite.checks:
        return RunOutcome(outcomes)
    try:
        conn = psycopg.connect(
            conninfo,
            autocommit=True,
            application_name="pgmaint_quality",
            connect_timeout=10,
            options=session_options(statement_timeout_ms, conninfo_to_dict(conninfo).get("options")),
        )
    except psycopg.Error as exc:
        return RunOutcome(outcomes, error=f"could not connect: {_first_line(str(exc))}")
    with conn:
        for spec in suite.checks:
            query = spec.query.replace("{batch}", f"({suite.assets[spec.asset]}) AS subselect")
            try:
                cur = conn.execute(query)
                names = [c.name for c in cur.description]
                rows = [dict(zip(names, r)) for r in cur.fetchall()]
            except psycopg.Error as exc:
                if conn.broken:
                    return RunOutcome(outcomes, error=f"{type(exc).__name__}: {_first_line(str(exc))}")
                outcomes[spec.key] = CheckOutcome(spec.key, False, error=_first_line(str(exc)))
                continue
            outcomes[spec.key] = CheckOutcome(spec.key, not rows, len(rows), [str(r.get("problem")) for r in rows])
    return RunOutcome(outcomes)


def _dispose(datasource) -> None:
    """Close the data source's connection pool (a worker may run many gates)."""
    if datasource is None:
        return
    try:
        datasource.get_execution_engine().engine.dispose()
    except Exception:  # pragma: no cover - best effort
        pass
