"""Helpers shared by the watchdog tests (fixtures are in conftest.py)."""

from __future__ import annotations

from datetime import datetime, timedelta


def escalation_block(connections: dict[str, str], **overrides) -> dict:
    """The `escalation` config block: chat + mail are told, PagerDuty pages."""
    block = {
        "notify": [{"kind": "slack", "connection_id": connections["slack"]},
                   {"kind": "email", "connection_id": connections["smtp"], "to": ["oncall@example.test"]},
                   {"kind": "log"}],
        "page": [{"kind": "pagerduty", "connection_id": connections["pagerduty"]}],
        "page_after": "24 hours",
        "renotify_every": "4 hours",
    }
    block.update(overrides)
    return block


class FakeClock:
    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw) -> datetime:
        self.now += timedelta(**kw)
        return self.now


