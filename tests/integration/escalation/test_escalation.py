"""The escalation policy against real notification servers (Slack webhook + PagerDuty Events v2 over
HTTP, SMTP) and real condition state in PostgreSQL, with an injectable clock instead of sleeps."""

from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from psycopg import sql

from include.pgmaint.airflow.failure_report import report_task_failure
from include.pgmaint.config import ConfigError, parse_config
from include.pgmaint.escalation import (
    Condition,
    EscalationSettings,
    MemoryStore,
    Target,
    apply_deliveries,
    open_escalator,
    parse_escalation,
    plan,
    settings_for,
)
from include.pgmaint.execute import Blocker, LockBudgetExhausted, Step
from tests.fixtures.escalation import escalation_block
from tests.integration.helpers import table_entry


def _config(schema: str, escalation: dict):
    return parse_config({"state_schema": schema, "tables": [table_entry(schema, "events")], "escalation": escalation})


def _rows(conn, schema: str, query: str, params=()):
    return conn.execute(sql.SQL(query).format(s=sql.Identifier(schema)), params).fetchall()


def _fake_failure(schema: str) -> dict:
    """What Airflow hands an on_failure_callback when partition_maintenance.table.premake fails on a lock."""
    table = f"{schema}.events"
    blocker = Blocker(
        4242,
        "AccessShareLock",
        table,
        "idle in transaction",
        312.0,
        "SELECT count(*) FROM events WHERE ts > now() - interval '30 days'",
    )
    step = Step("attach", f"{schema}.events_p20261127", ())
    error = LockBudgetExhausted(
        step, f"attach {schema}.events_p20261127: gave up after 9 tries in 60.2s. Blocked by: {blocker}.", 9, [blocker]
    )
    ti = SimpleNamespace(
        dag_id="partition_maintenance",
        task_id="table.premake",
        run_id="scheduled__2026-11-26T10:30:00+00:00",
        try_number=1,
        map_index=0,
        rendered_map_index=table,
        log_url="http://airflow.example/dags/partition_maintenance/runs/scheduled/tasks/table.premake/mapped/0?try_number=1",
        task=SimpleNamespace(op_kwargs={}, upstream_task_ids={"select_tables"}, trigger_rule="all_success"),
    )
    return {"ti": ti, "exception": error, "params": {"tables": [], "dry_run": False}}


def test_a_task_failure_notifies_once(pg_dsn, pg_conn, scratch_schema, notify_connections, webhooks, mailbox, clock):
    config = _config(scratch_schema, escalation_block(notify_connections))
    settings = settings_for(config)
    context = _fake_failure(scratch_schema)

    report_task_failure(context, config, settings, clock=clock, conninfo=pg_dsn, spill=MemoryStore())

    key = f"task:partition_maintenance.table.premake:{scratch_schema}.events"
    [slack] = webhooks.slack
    text = slack["text"]
    assert text.startswith(
        f"[pgmaint] WARNING {key}: partition_maintenance.table.premake [{scratch_schema}.events] failed"
    )
    assert f"step: attach {scratch_schema}.events_p20261127" in text
    assert "blocked by pid 4242 (idle in transaction, transaction 312 s" in text
    assert "SELECT count(*) FROM events WHERE ts > now() - interval '30 days'" in text
    assert "log: http://airflow.example/dags/partition_maintenance/runs/scheduled/tasks/table.premake/mapped/0" in text
    assert "runbook: docs/runbook.md#task-failure" in text
    [mail] = mailbox
    assert mail.rcpt_tos == ["oncall@example.test"] and key in mail.subject and "pid 4242" in mail.body
    assert webhooks.pagerduty == []  # a warning: nobody is paged yet

    # The next scheduled run fails the same way: the condition's streak grows, nobody is told again.
    clock.advance(minutes=15)
    report_task_failure(context, config, settings, clock=clock, conninfo=pg_dsn, spill=MemoryStore())
    assert len(webhooks.slack) == 1 and len(mailbox) == 1 and webhooks.pagerduty == []
    [(streak, details)] = _rows(
        pg_conn, scratch_schema, "SELECT streak, details FROM {s}.conditions WHERE key = %s", [key]
    )
    assert streak == 2 and details["blockers"][0]["pid"] == 4242 and details["table"] == f"{scratch_schema}.events"
    sent = _rows(pg_conn, scratch_schema, "SELECT channel, action, target, delivered FROM {s}.alerts ORDER BY alert_id")
    assert sent == [
        ("notify", "open", "slack:pgmaint_slack", True),
        ("notify", "open", "email:oncall@example.test", True),
        ("notify", "open", "log", True),
    ]


def test_a_persisting_condition_pages_once_renotifies_on_schedule_and_resolves(
    pg_dsn, pg_conn, scratch_schema, notify_connections, webhooks, mailbox, clock
):
    config = _config(
        scratch_schema, escalation_block(notify_connections, page_after="24 hours", renotify_every="4 hours")
    )
    key = f"cadence:{scratch_schema}.events"
    problem = Condition(
        key,
        "warning",
        f"{scratch_schema}.events: the partition manager missed its cadence",
        {"table": f"{scratch_schema}.events"},
    )
    start = clock.now

    def run(observed: bool) -> list[str]:
        """One watchdog evaluation: the condition seen (or, if not, checked and found healthy)."""
        with open_escalator(config, conninfo=pg_dsn, clock=clock, spill=MemoryStore()) as (esc, _):
            ev = esc.evaluate([problem] if observed else [], scope=[key])
        assert ev.persisted and not ev.undelivered
        return [f"{n.channel}:{n.action}" for n in ev.notifications]

    assert run(True) == ["notify:open"]
    for minutes in (5, 60, 3 * 60 + 55):  # the watchdog keeps seeing it: silence until renotify_every
        clock.now = start + timedelta(minutes=minutes)
        assert run(True) == []
    clock.now = start + timedelta(hours=4)
    assert run(True) == ["notify:renotify"]
    clock.now = start + timedelta(hours=7, minutes=55)
    assert run(True) == []
    assert webhooks.pagerduty == []

    clock.now = start + timedelta(hours=24)  # persisted for page_after: page, once
    assert run(True) == ["page:trigger", "notify:paged"]
    clock.now = start + timedelta(hours=24, minutes=5)
    assert run(True) == []
    clock.now = start + timedelta(hours=28)  # re-notified on the page channel, same incident
    assert run(True) == ["page:retrigger"]
    clock.now = start + timedelta(hours=28, minutes=5)
    assert run(True) == []

    clock.now = start + timedelta(hours=28, minutes=10)  # healthy: resolved, on both channels
    assert run(False) == ["page:resolve", "notify:resolve"]
    clock.now = start + timedelta(hours=28, minutes=15)
    assert run(False) == []

    pd = webhooks.pagerduty
    assert [e["event_action"] for e in pd] == ["trigger", "trigger", "resolve"]
    assert {e["dedup_key"] for e in pd} == {key} and {e["routing_key"] for e in pd} == {"test-routing-key"}
    assert pd[0]["payload"]["severity"] == "error" and "missed its cadence" in pd[0]["payload"]["summary"]
    assert pd[0]["payload"]["source"] == "pgmaint/pgmaint_target" and pd[0]["payload"]["custom_details"]["table"]
    texts = [m["text"].splitlines()[0] for m in webhooks.slack]
    assert [t.split(key)[0] for t in texts] == [
        "[pgmaint] WARNING ",
        "[pgmaint] WARNING (still) ",
        "[pgmaint] WARNING -> PAGED ",
        "[pgmaint] RESOLVED ",
    ]
    assert "paging: it has persisted for more than 24 h 00 min" in webhooks.slack[2]["text"]
    assert len(mailbox) == 4
    [(paged_at, resolved_at, streak)] = _rows(
        pg_conn, scratch_schema, "SELECT paged_at, resolved_at, streak FROM {s}.conditions WHERE key = %s", [key]
    )
    assert paged_at == start + timedelta(hours=24) and resolved_at == start + timedelta(hours=28, minutes=10)
    assert streak == 10

    # It comes back: a new episode, told again from the start.
    clock.now = start + timedelta(hours=30)
    assert run(True) == ["notify:open"]
    [(episodes, paged_at)] = _rows(
        pg_conn, scratch_schema, "SELECT episodes, paged_at FROM {s}.conditions WHERE key = %s", [key]
    )
    assert episodes == 2 and paged_at is None


def test_a_critical_condition_pages_at_once(pg_dsn, scratch_schema, notify_connections, webhooks, mailbox, clock):
    config = _config(scratch_schema, escalation_block(notify_connections))
    with open_escalator(config, conninfo=pg_dsn, clock=clock, spill=MemoryStore()) as (esc, _):
        esc.evaluate([Condition("canary", "critical", "canary: the database is not answering reads")], scope=["canary"])
    [event] = webhooks.pagerduty
    assert event["event_action"] == "trigger" and event["dedup_key"] == "canary"
    assert event["payload"]["severity"] == "critical"
    assert webhooks.slack[0]["text"].startswith(
        "[pgmaint] CRITICAL -> PAGED canary: canary: the database is not answering"
    )


def test_a_page_nobody_received_is_sent_again(
    pg_dsn, pg_conn, scratch_schema, notify_connections, webhooks, clock, monkeypatch
):
    # nothing listens there
    monkeypatch.setenv(
        "AIRFLOW_CONN_PGMAINT_PAGERDUTY",
        json.dumps({"conn_type": "pagerduty_events", "host": "http://127.0.0.1:9", "password": "k"}),
    )
    config = _config(scratch_schema, escalation_block(notify_connections, notify=[]))
    cond = Condition("canary", "critical", "canary: cannot connect")

    with open_escalator(config, conninfo=pg_dsn, clock=clock, spill=MemoryStore()) as (esc, _):
        ev = esc.evaluate([cond], scope=["canary"])
    [undelivered] = ev.undelivered
    assert undelivered.action == "trigger" and "127.0.0.1:9" in undelivered.results[0][1]
    assert _rows(pg_conn, scratch_schema, "SELECT paged_at FROM {s}.conditions") == [(None,)]

    monkeypatch.setenv(
        "AIRFLOW_CONN_PGMAINT_PAGERDUTY",
        json.dumps({"conn_type": "pagerduty_events", "host": webhooks.url, "password": "k"}),
    )
    clock.advance(minutes=5)
    with open_escalator(config, conninfo=pg_dsn, clock=clock, spill=MemoryStore()) as (esc, _):
        ev = esc.evaluate([cond], scope=["canary"])
    assert [n.action for n in ev.notifications] == ["trigger", "paged"] and not ev.undelivered
    assert len(webhooks.pagerduty) == 1
    assert _rows(
        pg_conn, scratch_schema, "SELECT delivered FROM {s}.alerts WHERE channel = 'page' ORDER BY alert_id"
    ) == [(False,), (True,)]


# --- the policy without servers -------------------------------------------------------------


def _plan_run(states, observed, now, settings, **kw):
    planned, notes = plan(states, observed, now, settings, **kw)
    for n in notes:
        n.delivered = True
    return apply_deliveries(planned, notes), notes


def test_quiet_conditions_are_told_only_when_they_page(clock):
    s = EscalationSettings(page_after=timedelta(hours=2))
    quiet = Condition("default_rows:public.x", "warning", "rows in DEFAULT; migration triggered", quiet=True)
    states, notes = _plan_run({}, [quiet], clock.now, s)
    assert notes == [] and states[quiet.key].notified_at is None
    states, notes = _plan_run(states, [quiet], clock.advance(hours=2), s)
    assert [(n.channel, n.action) for n in notes] == [("page", "trigger"), ("notify", "paged")]


def test_active_conditions_nobody_reports_again_still_page_on_time(clock):
    s = EscalationSettings(page_after=timedelta(hours=24))
    failure = Condition("task:partition_maintenance.table.premake:public.x", "warning", "maintain failed")
    states, _ = _plan_run({}, [failure], clock.now, s)
    _, notes = _plan_run(states, [], clock.advance(hours=3), s)  # the watchdog: not its scope, not resolved
    assert notes == []
    _, notes = _plan_run(states, [], clock.advance(hours=21), s)
    assert [n.action for n in notes] == ["trigger", "paged"]


def test_a_resolve_not_delivered_keeps_the_condition_open(clock):
    s = EscalationSettings()
    states, _ = _plan_run({}, [Condition("canary", "critical", "down")], clock.now, s)
    planned, notes = plan(states, [], clock.advance(minutes=5), s, scope=["canary"])
    for n in notes:
        n.delivered = n.channel == "notify"  # PagerDuty unreachable
    final = apply_deliveries(planned, notes)
    assert final["canary"].active  # tried again next run
    _, notes = _plan_run(final, [], clock.advance(minutes=5), s, scope=["canary"])
    assert [(n.channel, n.action) for n in notes] == [("page", "resolve"), ("notify", "resolve")]


def test_escalation_settings_defaults_and_errors_name_the_field():
    s = parse_escalation({})
    assert s.notify == (Target("log"),) and s.page == (Target("log"),)
    assert s.page_after == timedelta(hours=24) and s.renotify_every == timedelta(hours=4)
    s = parse_escalation(
        {"page_after": "90 minutes", "notify": [{"kind": "email", "to": "a@example.test"}], "lock_wait_seconds": 5}
    )
    assert s.page_after == timedelta(minutes=90) and s.notify == (Target("email", "smtp_default", ("a@example.test",)),)
    assert s.lock_wait_seconds == 5
    with pytest.raises(
        ConfigError, match=r"escalation.connections_warning_percent: 90 is above connections_critical_percent"
    ):
        parse_escalation({"connections_warning_percent": 90, "connections_critical_percent": 85})
    with pytest.raises(ConfigError, match=r"escalation.renotify_every: '1 fortnight' is not a duration"):
        parse_escalation({"renotify_every": "1 fortnight"})
    base = {"tables": [{"name": "public.x", "partition_key": "ts", "interval": "1 day", "premake": 2}]}
    with pytest.raises(ConfigError, match=r"escalation.page\[0\]: 'connection_id' is a required property"):
        parse_config({**base, "escalation": {"page": [{"kind": "pagerduty"}]}})
    with pytest.raises(ConfigError, match=r"escalation: unknown key\(s\) 'page_afer'"):
        parse_config({**base, "escalation": {"page_afer": "1 hour"}})
