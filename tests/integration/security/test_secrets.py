"""Secrets stay secret (issue 11, part 6).

The three flows run through dag.test() as the least-privilege role, with recognisable secret
values (`S3cr3t-<what>-<random>`) in every place a deployment keeps one: the target connection's
password, an `http` writer service's header values (one from `${ENV}`, one literal in the YAML),
the Slack webhook token, the PagerDuty routing key and the SMTP password. The flows: the watchdog
finds the incident and pages (Slack, mail, PagerDuty), dry runs of both DAGs, the migration with
an `http` and a `flag` writer, maintenance with one table that fails (the failure callback tells
Slack and mail), a revoked Slack token whose delivery fails, an `http` service that fails, echoing
the credentials it was sent, and the watchdog with the database down (state kept in an Airflow
Variable). Each secret is first shown to have been used (the servers received it), then searched
for in everything the runs left: the task logs (all output of the process, and every file under
AIRFLOW_HOME), every row of every table of the Airflow metadata DB (XCom, Variables, ...) and
every row of every table in the state schema.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
import yaml
from psycopg import sql

REPO = Path(__file__).resolve().parents[3]


def secret(what: str) -> str:
    return f"S3cr3t-{what}-{uuid.uuid4().hex[:12]}"


def _dagbag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag


def _states(run) -> dict[str, str]:
    return {
        f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: ti.state
        for ti in run.get_task_instances()
    }


@pytest.fixture
def smtp_with_auth():
    """An SMTP server on loopback that requires AUTH (without TLS, as a test server may); records logins."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    logins: list[tuple[str, str]] = []
    mails: list[bytes] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            mails.append(envelope.content)
            return "250 accepted"

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=True)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        auth_require_tls=False,
        auth_required=True,
    )
    controller.start()
    try:
        yield port, logins, mails
    finally:
        controller.stop()


def test_no_secret_reaches_logs_xcom_journal_alerts_variables_or_the_dry_run(
    airflow_db, least_privilege, http_service, webhooks, smtp_with_auth, tmp_path, monkeypatch, capfd, caplog
):
    s = least_privilege
    smtp_port, smtp_logins, mails = smtp_with_auth
    secrets = {
        what: secret(what)
        for what in (
            "db-password",
            "header-env",
            "header-literal",
            "slack-token",
            "url-password",
            "slack-revoked",
            "pagerduty-key",
            "smtp-password",
        )
    }

    # --- where a deployment keeps them ---------------------------------------------------------
    s.admin(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(s.role), sql.Literal(secrets["db-password"])))
    target = s.airflow_connection(password=secrets["db-password"])
    monkeypatch.setenv("AIRFLOW_CONN_PGMAINT_TARGET", json.dumps(target))
    monkeypatch.setenv("PGMAINT_TEST_SYNC_TOKEN", secrets["header-env"])
    connections = {
        "SECRET_SLACK": {
            "conn_type": "slackwebhook",
            "host": f"{webhooks.url}/services",
            "password": secrets["slack-token"],
        },
        "SECRET_SLACK_REVOKED": {
            "conn_type": "slackwebhook",
            "host": f"{webhooks.url}/services",
            "password": secrets["slack-revoked"],
        },
        "SECRET_PAGERDUTY": {
            "conn_type": "pagerduty_events",
            "host": webhooks.url,
            "password": secrets["pagerduty-key"],
        },
        "SECRET_SMTP": {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": smtp_port,
            "login": "pgmaint",
            "password": secrets["smtp-password"],
            "extra": {
                "disable_ssl": True,
                "disable_tls": True,
                "from_email": "pgmaint@example.test",
                "retry_limit": 0,
                "timeout": 10,
            },
        },
    }
    for name, conn in connections.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{name}", json.dumps(conn))
    # a revoked Slack token: the webhook answers 403 invalid_token (as Slack does)
    webhooks.fail_paths = {f"/services/{secrets['slack-revoked']}": (403, "invalid_token")}

    missing = f"{s.schema}.missing"
    with_password = http_service.base_url.replace("//", f"//archive:{secrets['url-password']}@")
    http_service.plan["/archiver/status"] = [(200, {"paused": False})]
    raw = {
        "state_schema": s.state,
        "services": [
            {"name": "api_logging", "kind": "flag"},
            {
                "name": "sync_fn",
                "kind": "http",
                "depends_on": ["api_logging"],
                "retries": 0,
                "pause_url": f"{http_service.base_url}/sync/pause",
                "resume_url": f"{http_service.base_url}/sync/resume",
                "headers": {
                    "Authorization": "Bearer ${PGMAINT_TEST_SYNC_TOKEN}",
                    "X-Api-Key": secrets["header-literal"],
                },
            },
            {
                "name": "archiver",
                "kind": "http",
                "retries": 0,  # basic auth in its URLs
                **{f"{verb}_url": f"{with_password}/archiver/{verb}" for verb in ("status", "pause", "resume")},
            },
        ],
        "tables": [
            {
                "name": s.table,
                "partition_key": "ts",
                "interval": "1 day",
                "premake": 2,
                "retention": "30 days",
                "writers": ["sync_fn", "archiver", "api_logging"],
            },
            {"name": missing, "partition_key": "ts", "interval": "1 day", "premake": 2, "retention": "30 days"},
        ],
        "escalation": {
            "notify": [
                {"kind": "slack", "connection_id": "secret_slack"},
                {"kind": "slack", "connection_id": "secret_slack_revoked"},
                {"kind": "email", "connection_id": "secret_smtp", "to": ["oncall@example.test"]},
                {"kind": "log"},
            ],
            "page": [{"kind": "pagerduty", "connection_id": "secret_pagerduty"}, {"kind": "log"}],
        },
    }
    config_path = tmp_path / "pgmaint.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PGMAINT_CONFIG", str(config_path))

    # --- the flows -------------------------------------------------------------------------------
    def dags():  # parsed afresh for every run: a DAG object keeps the conf of its last dag.test() in its params
        return _dagbag().dags

    watchdog = dags()["partition_watchdog"].test()
    assert watchdog.state == "success", _states(watchdog)

    dry_migration = dags()["default_partition_migration"].test(run_conf={"table": s.table, "dry_run": True})
    assert dry_migration.state == "success", _states(dry_migration)
    dry_maintenance = dags()["partition_maintenance"].test(run_conf={"dry_run": True, "tables": [s.table]})
    assert dry_maintenance.state == "success", _states(dry_maintenance)

    migration = dags()["default_partition_migration"].test(run_conf={"table": s.table})
    assert migration.state == "success", _states(migration)
    assert sorted(http_service.paths()) == [
        "GET /archiver/status",
        "POST /archiver/pause",
        "POST /archiver/resume",
        "POST /sync/pause",
        "POST /sync/resume",
    ]

    maintenance = dags()["partition_maintenance"].test()  # the missing table's premake fails: the callback alerts
    assert maintenance.state == "failed"
    assert _states(maintenance)["table.premake[1]"] == "failed" and _states(maintenance)["table.retire[0]"] == "success"

    # an http writer that refuses the pause, quoting the credentials it was sent (some gateways do)
    http_service.plan["/sync/pause"] = [
        (
            401,
            {
                "error": "unauthorized",
                "received": {
                    "Authorization": f"Bearer {secrets['header-env']}",
                    "X-Api-Key": secrets["header-literal"],
                },
            },
        )
    ]
    failed_pause = dags()["default_partition_migration"].test(run_conf={"table": s.table})
    assert failed_pause.state == "failed" and _states(failed_pause)["migrate"] == "failed"

    # the database is down: the watchdog pages and keeps its state in an Airflow Variable
    monkeypatch.setenv("AIRFLOW_CONN_PGMAINT_TARGET", json.dumps({**target, "host": str(tmp_path / "no-server-here")}))
    down = dags()["partition_watchdog"].test()
    assert down.state == "success", _states(down)
    monkeypatch.setenv("AIRFLOW_CONN_PGMAINT_TARGET", json.dumps(target))

    # --- every secret was used (else not finding it would prove nothing) ---------------------------
    sent = [c["headers"] for c in http_service.calls if c["path"].startswith("/sync/")]
    assert sent and all(h.get("Authorization") == f"Bearer {secrets['header-env']}" for h in sent), sent
    assert all(h.get("X-Api-Key") == secrets["header-literal"] for h in sent)
    basic = "Basic " + base64.b64encode(f"archive:{secrets['url-password']}".encode()).decode()
    assert {c["headers"].get("Authorization") for c in http_service.calls if c["path"].startswith("/archiver/")} == {
        basic
    }
    paths = {r["path"] for r in webhooks.requests}
    assert f"/services/{secrets['slack-token']}" in paths and f"/services/{secrets['slack-revoked']}" in paths, paths
    assert {e["routing_key"] for e in webhooks.pagerduty} == {secrets["pagerduty-key"]}
    assert {e["dedup_key"] for e in webhooks.pagerduty} >= {f"runway:{s.table}", "canary"}
    assert smtp_logins and set(smtp_logins) == {("pgmaint", secrets["smtp-password"])} and mails
    task_failures = [
        r["body"]["text"]
        for r in webhooks.requests
        if r["path"] == f"/services/{secrets['slack-token']}"
        and r["body"].get("text", "").startswith("[pgmaint] WARNING task:")
    ]
    assert any(missing in t for t in task_failures) and any(
        "default_partition_migration.migrate" in t for t in task_failures
    ), task_failures
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        revoked = conn.execute(
            sql.SQL("SELECT error FROM {}.alerts WHERE target = %s").format(sql.Identifier(s.state)),
            ["slack:secret_slack_revoked"],
        ).fetchall()
    assert revoked and all(e and "invalid_token" in e for (e,) in revoked), revoked  # the failure is recorded...

    # --- ... and none of them is anywhere -----------------------------------------------------------
    # dag.test() runs the tasks in this process: their logs are its log records (with tracebacks) and its output
    out, err = capfd.readouterr()
    logs = "\n".join([caplog.text, out, err])
    if os.environ.get("PGMAINT_DUMP_TEST_LOGS"):
        Path(os.environ["PGMAINT_DUMP_TEST_LOGS"]).write_text(logs)
    found = search(
        secrets, logs=logs, home=Path(os.environ["AIRFLOW_HOME"]), admin_dsn=s.admin_dsn, state_schema=s.state
    )
    assert found == [], "secrets leaked:\n" + "\n".join(found)
    # the logs searched are the tasks' logs: the dry run's statements, the failed pause with the echo redacted
    assert "[dry run] ALTER TABLE" in logs and "/sync/pause failed: HTTP 401" in logs and '"X-Api-Key": "***"' in logs


def forms(value: str) -> set[str]:
    """The ways a secret shows up in text: as is, URL-quoted, JSON-escaped."""
    return {value, quote(value, safe=""), json.dumps(value)[1:-1]}


def search(secrets: dict[str, str], *, logs: str, home: Path, admin_dsn: str, state_schema: str) -> list[str]:
    found: list[str] = []

    def look(where: str, text: str) -> None:
        for what, value in secrets.items():
            for form in forms(value):
                at = text.find(form)
                if at >= 0:
                    found.append(f"{what} in {where}: ...{text[max(0, at - 200) : at + len(form) + 40]!r}")
                    break

    look("the task logs", logs)
    for path in sorted(home.rglob("*")):  # and any log file a task wrote under AIRFLOW_HOME
        if path.is_file() and path.suffix not in (".db", ".db-journal", ".db-wal", ".db-shm"):
            look(f"file {path.relative_to(home)}", path.read_bytes().decode(errors="replace"))

    # the Airflow metadata DB: every row of every table (xcom, variable, dag_run, task_instance, log, ...)
    from airflow.utils.session import create_session
    from sqlalchemy import MetaData, select

    with create_session() as session:
        meta = MetaData()
        meta.reflect(bind=session.get_bind())
        assert {"xcom", "variable"} <= set(meta.tables), sorted(meta.tables)
        for name, table in meta.tables.items():
            for row in session.execute(select(table)).all():
                look(f"Airflow metadata table {name}", " ".join(_text(v) for v in row))

    # the state schema: every row of every table (runs, steps, alerts, conditions, leases, ...)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace AND relkind IN ('r', 'p') ORDER BY 1",
                [sql.Identifier(state_schema).as_string(conn)],
            ).fetchall()
        ]
        assert {"runs", "steps", "alerts", "conditions", "service_leases"} <= set(tables), tables
        for name in tables:
            for (row,) in conn.execute(sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(state_schema, name))):
                look(f"{state_schema}.{name}", row)
    return found


def _text(value) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode(errors="replace")
    return "" if value is None else str(value)
