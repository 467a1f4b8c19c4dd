"""Who delivers a notification, by target kind.

`log` is written here; Slack, PagerDuty and e-mail go through the Airflow providers' notifiers, which
live in the Airflow package (`include/pgmaint/airflow/notifiers.py`) and are imported only when a
message is sent to such a target.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from include.pgmaint.config import Target
from include.pgmaint.escalation.conditions import Notification

alert_log = logging.getLogger("pgmaint.alerts")

Sender = Callable[[Target, Notification, str, str, str], None]


def send_log(target: Target, n: Notification, title: str, text: str, source: str) -> None:
    level = (
        logging.INFO
        if n.action == "resolve"
        else (logging.ERROR if n.channel == "page" or n.severity == "critical" else logging.WARNING)
    )
    alert_log.log(level, "%s", text)


def _provider(name: str) -> Sender:
    def send(target: Target, n: Notification, title: str, text: str, source: str) -> None:
        getattr(importlib.import_module("include.pgmaint.airflow.notifiers"), name)(target, n, title, text, source)

    send.__name__ = name
    return send


SENDERS: dict[str, Sender] = {
    "log": send_log,
    "slack": _provider("send_slack"),
    "pagerduty": _provider("send_pagerduty"),
    "email": _provider("send_email"),
}
