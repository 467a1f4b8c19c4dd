"""Slack, PagerDuty and e-mail through the Airflow providers' notifiers (connections by id)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import json

from include.pgmaint.config import Target
from include.pgmaint.escalation.conditions import Notification


def _run_coroutine(coro):
    """Run an async notifier method from sync code, whether or not an event loop is running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def send_slack(target: Target, n: Notification, title: str, text: str, source: str) -> None:
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    # notify() directly: __call__ would render the text as a Jinja template (queries may contain "{{").
    SlackWebhookNotifier(slack_webhook_conn_id=target.connection_id, text=text, timeout=15).notify({})


def send_pagerduty(target: Target, n: Notification, title: str, text: str, source: str) -> None:
    """PagerDuty Events API v2 through the provider's PagerdutyNotifier: dedup_key = condition key.

    The provider's events hooks post to https://events.pagerduty.com. Its async hook is an
    HttpAsyncHook whose base URL comes from `http_conn_id` when one is set: if the PagerDuty
    connection has a host (e.g. https://events.eu.pagerduty.com for the EU service region, or a
    test server), we point that at the same connection.
    """
    from airflow.providers.pagerduty.hooks.pagerduty_events import PagerdutyEventsHook
    from airflow.providers.pagerduty.notifications.pagerduty import PagerdutyNotifier

    severity = "info" if n.action == "resolve" else ("critical" if n.severity == "critical" else "error")
    details = {"message": n.message, "first_seen": n.first_seen.isoformat(), "streak": n.streak, **n.details}
    links = [{"href": n.details["log_url"], "text": "Airflow log"}] if n.details.get("log_url") else None
    notifier = PagerdutyNotifier(
        summary=title[:1024],
        severity=severity,
        source=source,
        action="resolve" if n.action == "resolve" else "trigger",
        dedup_key=n.key,
        custom_details=json.loads(json.dumps(details, default=str)),
        group="pgmaint",
        component=n.details.get("table"),
        class_type=n.key.split(":", 1)[0],
        links=links,
        pagerduty_events_conn_id=target.connection_id,
    )
    if PagerdutyEventsHook.get_connection(target.connection_id).host:
        notifier.hook_async.http_conn_id = target.connection_id
    _run_coroutine(notifier.async_notify({}))


def send_email(target: Target, n: Notification, title: str, text: str, source: str) -> None:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    SmtpNotifier(
        to=list(target.to),
        from_email=target.from_email,
        subject=title[:200],
        html_content=f"<pre>{html.escape(text)}</pre>",
        smtp_conn_id=target.connection_id,
    ).notify({})
