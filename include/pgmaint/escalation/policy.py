"""The escalation policy, pure: remembered states + what was observed + the clock -> new states and notifications.

New: notify once. Persisting past `page_after`, or critical: page once. Still there: re-send no more often than
`renotify_every`. Cleared: resolve, to whoever was told.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from include.pgmaint.config import EscalationSettings
from include.pgmaint.escalation.conditions import Condition, ConditionState, Notification


def plan(
    states: dict[str, ConditionState],
    observed: list[Condition],
    now: datetime,
    settings: EscalationSettings,
    scope: Iterable[str] = (),
    resolve: Iterable[str] = (),
    recheck: bool = True,
) -> tuple[dict[str, ConditionState], list[Notification]]:
    """What to send, and the state each touched condition moves to if everything is delivered.

    - `observed`: conditions seen now (a new episode starts if the key is not active);
    - `scope`: keys this evaluation checked; an active one not observed has cleared -> resolved;
    - `resolve`: keys known to be over (e.g. a failed task that succeeded since);
    - `recheck`: active conditions outside the above still page/renotify on time.
    """
    out: dict[str, ConditionState] = {}
    notes: list[Notification] = []
    seen = {c.key for c in observed}
    clear = (set(scope) | set(resolve)) - seen

    for cond in observed:
        prev = states.get(cond.key)
        if prev is None or not prev.active:
            st = ConditionState(
                cond.key,
                cond.severity,
                cond.message,
                cond.details,
                now,
                now,
                1,
                cond.quiet,
                episodes=(prev.episodes + 1) if prev else 1,
            )
        else:
            st = replace(
                prev,
                severity=cond.severity,
                message=cond.message,
                details=cond.details,
                last_seen=now,
                streak=prev.streak + 1,
                quiet=cond.quiet,
            )
        out[cond.key] = st
        notes += _timing(st, now, settings)

    for key, prev in states.items():
        if not prev.active or key in seen:
            continue
        if key in clear:
            out[key] = replace(prev)  # resolved_at is set by marks once the resolves are delivered
            resolves = []
            if prev.paged_at is not None:
                resolves.append(_note(prev, "page", "resolve", {"resolved_at": now}))
            if prev.notified_at is not None:
                resolves.append(_note(prev, "notify", "resolve", {"resolved_at": now}))
            if not resolves:  # nobody was told (quiet): resolve silently
                out[key] = replace(prev, resolved_at=now)
            notes += resolves
        elif recheck:
            timed = _timing(prev, now, settings)
            if timed:
                out[key] = prev
                notes += timed
    return out, notes


def _note(st: ConditionState, channel: str, action: str, marks: dict) -> Notification:
    return Notification(
        st.key, channel, action, st.severity, st.message, st.details, st.first_seen, st.streak, marks=marks
    )


def _timing(st: ConditionState, now: datetime, s: EscalationSettings) -> list[Notification]:
    due_page = st.severity == "critical" or now - st.first_seen >= s.page_after
    if st.paged_at is None and due_page:
        return [
            _note(st, "page", "trigger", {"paged_at": now, "last_page_at": now}),
            _note(st, "notify", "paged", {"notified_at": now}),
        ]
    if st.paged_at is not None:
        if now - (st.last_page_at or st.paged_at) >= s.renotify_every:
            return [_note(st, "page", "retrigger", {"last_page_at": now})]
        return []
    if st.quiet:
        return []
    if st.notified_at is None:
        return [_note(st, "notify", "open", {"notified_at": now})]
    if now - st.notified_at >= s.renotify_every:
        return [_note(st, "notify", "renotify", {"notified_at": now})]
    return []


def apply_deliveries(planned: dict[str, ConditionState], notes: list[Notification]) -> dict[str, ConditionState]:
    """Final states: a mark applies only if its message was delivered; resolved only if every resolve was."""
    final = dict(planned)
    by_key: dict[str, list[Notification]] = {}
    for n in notes:
        by_key.setdefault(n.key, []).append(n)
    for key, ns in by_key.items():
        st = final[key]
        resolves = [n for n in ns if n.action == "resolve"]
        if resolves:
            if all(n.delivered for n in resolves):
                st = replace(st, resolved_at=resolves[0].marks["resolved_at"])
            final[key] = st
            continue
        for n in ns:
            if n.delivered:
                st = replace(st, **n.marks)
        final[key] = st
    return final
