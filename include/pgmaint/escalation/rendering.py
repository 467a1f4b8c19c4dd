"""Notifications as text: the title, the body a responder reads, and how a blocking session is described."""

from __future__ import annotations

from datetime import datetime, timedelta

from include.pgmaint.config import EscalationSettings
from include.pgmaint.escalation.conditions import Notification

_TITLES = {
    ("notify", "open"): "{sev}",
    ("notify", "renotify"): "{sev} (still)",
    ("notify", "paged"): "{sev} -> PAGED",
    ("notify", "resolve"): "RESOLVED",
    ("page", "trigger"): "PAGE {sev}",
    ("page", "retrigger"): "PAGE {sev} (still)",
    ("page", "resolve"): "RESOLVED",
}


def ago(delta: timedelta) -> str:
    """A duration as people say it: '45 s', '12 min', '3 h 05 min', '4 days 2 h' (messages, the Partitions view)."""
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} days {seconds % 86400 // 3600} h"


def render(n: Notification, now: datetime, settings: EscalationSettings) -> tuple[str, str]:
    """(one-line title, full text) for chat, mail and logs."""
    title = _TITLES[(n.channel, n.action)].format(sev=n.severity.upper())
    first_line = n.message.splitlines()[0] if n.message else ""
    head = f"[pgmaint] {title} {n.key}: {first_line}"
    since = f"since {n.first_seen:%Y-%m-%d %H:%M} UTC ({ago(now - n.first_seen)}, seen {n.streak}x)"
    if n.action == "resolve":
        body = [head, f"cleared after {ago(now - n.first_seen)} (first seen {n.first_seen:%Y-%m-%d %H:%M} UTC)"]
    else:
        body = [head, *n.message.splitlines()[1:], since]
        if n.action in ("paged", "trigger") and n.severity == "warning":
            body.append(f"paging: it has persisted for more than {ago(settings.page_after)}")
    if n.details.get("log_url"):
        body.append(f"log: {n.details['log_url']}")
    body.append(f"runbook: {settings.runbook(n.key)}")
    return head, "\n".join(body)


def describe_session(s: dict) -> str:
    """'pid 123 (idle in transaction, transaction 312 s, holds AccessShareLock on public.x): SELECT ...'."""
    bits = [
        b
        for b in (
            s.get("state"),
            f"transaction {s['xact_seconds']:.0f} s" if isinstance(s.get("xact_seconds"), (int, float)) else None,
            f"waiting {s['waiting_seconds']:.0f} s" if isinstance(s.get("waiting_seconds"), (int, float)) else None,
            f"holds {s['mode']} on {s['relation']}"
            if s.get("mode") and s.get("relation") and s.get("granted", True)
            else None,
            f"wants {s['mode']} on {s['relation']}"
            if s.get("mode") and s.get("relation") and s.get("granted") is False
            else None,
            f"{s['usename']}@{s['application_name'] or '?'}" if s.get("usename") else None,
        )
        if b
    ]
    out = f"pid {s.get('pid')}" + (f" ({', '.join(bits)})" if bits else "")
    if s.get("query"):
        out += f": {' '.join(str(s['query']).split())[:300]!r}"
    return out
