"""Escalation: who hears about a condition, when, and how often.

A *condition* is something wrong, with a stable key (`runway:public.events`,
`canary`, `task:partition_maintenance.table.premake:public.events`), a severity
(`warning` or `critical`), a message for people and machine-readable details.
The watchdog reports the conditions it sees every run; the task-failure
callback (`on_task_failure`) reports a failed task. Both go through one policy:

- a new condition is sent once to the `notify` targets;
- it *pages* (the `page` targets) once it has persisted for `page_after`
  (default 24 h), or at once when it is critical; a page is opened once
  (PagerDuty dedup_key = the condition key, action trigger);
- while it lasts, it is re-sent no more often than `renotify_every`;
- when it clears, it is resolved (PagerDuty action resolve, a "resolved" line
  to whoever was told).

State (first seen, last seen, streak, when notified/paged/resolved) lives in
`<state_schema>.conditions`, and every message sent in `<state_schema>.alerts`,
so it survives worker restarts and responders can read it with SQL. When the
target database itself is unreachable (the outage case), state is kept in an
Airflow Variable until the database answers again, then folded back.

Notifications use the providers' notifiers (SlackWebhookNotifier,
PagerdutyNotifier, SmtpNotifier) configured by Airflow connection ids, plus a
plain log target. Everything Airflow- or psycopg-related is imported lazily:
DAG files import `on_task_failure` at parse time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import html
import json
import logging
import re
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator, Protocol

from include.pgmaint.config import Config, ConfigError

log = logging.getLogger("pgmaint.escalation")
alert_log = logging.getLogger("pgmaint.alerts")

SEVERITIES = ("warning", "critical")
TARGET_KINDS = ("slack", "pagerduty", "email", "log")

# --- settings -----------------------------------------------------------------

_DURATION = re.compile(r"^\s*([0-9]+)\s*(second|minute|hour|day|week)s?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}


def parse_duration(text: str, where: str = "duration") -> timedelta:
    """'24 hours', '30 minutes', '90 seconds', '2 days', '1 week' -> timedelta."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match:
        raise ConfigError([f"{where}: {text!r} is not a duration like '24 hours', '30 minutes', '90 seconds'"])
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if seconds <= 0:
        raise ConfigError([f"{where}: {text!r} must be longer than zero"])
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class Target:
    """One place a message goes: `slack` / `pagerduty` (connection_id), `email` (to, connection_id), `log`."""

    kind: str
    connection_id: str | None = None
    to: tuple[str, ...] = ()
    from_email: str | None = None

    def __str__(self) -> str:
        if self.kind == "log":
            return "log"
        if self.kind == "email":
            return f"email:{','.join(self.to)}"
        return f"{self.kind}:{self.connection_id}"


@dataclass(frozen=True)
class EscalationSettings:
    notify: tuple[Target, ...] = (Target("log"),)
    page: tuple[Target, ...] = (Target("log"),)
    page_after: timedelta = timedelta(hours=24)
    renotify_every: timedelta = timedelta(hours=4)
    failure_resolve_after: timedelta = timedelta(hours=1)  # task failures without a table: quiet this long = over
    runbook_url: str = "docs/runbook.md"
    # watchdog thresholds
    runway_warning_intervals: int = 2
    connections_warning_percent: float = 80.0
    connections_critical_percent: float = 95.0
    lock_wait_seconds: float = 30.0
    long_transaction_seconds: float = 300.0
    cadence_multiple: float = 3.0
    canary_timeout_ms: int = 2000
    default_exact_count_limit: int = 10_000

    def runbook(self, key: str) -> str:
        return f"{self.runbook_url}#{anchor(key)}"


_DEFAULTS = EscalationSettings()


def parse_escalation(raw: dict | None, source: str = "config") -> EscalationSettings:
    """The `escalation` block (already structure-checked by config.SCHEMA) as settings.

    Raises ConfigError naming the field for what the schema cannot express.
    """
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(["escalation: must be a mapping"], source)
    problems: list[str] = []

    def targets(name: str) -> tuple[Target, ...]:
        items = raw.get(name)
        if items is None:
            return getattr(_DEFAULTS, name)
        out = []
        if not isinstance(items, list):
            problems.append(f"escalation.{name}: must be a list of targets")
            return ()
        for i, item in enumerate(items):
            kind = item.get("kind") if isinstance(item, dict) else None
            if kind not in TARGET_KINDS:
                problems.append(f"escalation.{name}[{i}].kind: {kind!r} is not one of {', '.join(TARGET_KINDS)}")
                continue
            if kind in ("slack", "pagerduty") and not item.get("connection_id"):
                problems.append(f"escalation.{name}[{i}]: kind {kind} needs connection_id (an Airflow connection)")
                continue
            to = item.get("to") or ()
            to = (to,) if isinstance(to, str) else tuple(to)
            if kind == "email" and not to:
                problems.append(f"escalation.{name}[{i}]: kind email needs `to` (one address or a list)")
                continue
            out.append(Target(kind, item.get("connection_id") or ("smtp_default" if kind == "email" else None), to,
                              item.get("from_email")))
        return tuple(out)

    def duration(name: str) -> timedelta:
        if name not in raw:
            return getattr(_DEFAULTS, name)
        try:
            return parse_duration(raw[name], f"escalation.{name}")
        except ConfigError as exc:
            problems.extend(exc.problems)
            return getattr(_DEFAULTS, name)

    values: dict[str, Any] = {
        "notify": targets("notify"),
        "page": targets("page"),
        "page_after": duration("page_after"),
        "renotify_every": duration("renotify_every"),
        "failure_resolve_after": duration("failure_resolve_after"),
    }
    for f in fields(EscalationSettings):
        if f.name in values or f.name not in raw:
            continue
        value = raw[f.name]
        if isinstance(value, bool) or (f.type in ("int", "float") and not isinstance(value, (int, float))):
            problems.append(f"escalation.{f.name}: {value!r} is not a number")
            continue
        values[f.name] = value
    settings = EscalationSettings(**{**asdict_shallow(_DEFAULTS), **values})
    if settings.connections_warning_percent > settings.connections_critical_percent:
        problems.append(
            f"escalation.connections_warning_percent: {settings.connections_warning_percent} is above "
            f"connections_critical_percent ({settings.connections_critical_percent})"
        )
    if problems:
        raise ConfigError(problems, source)
    return settings


def asdict_shallow(obj) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def settings_for(config: Config) -> EscalationSettings:
    return parse_escalation(config.escalation, config.source)


def anchor(key: str) -> str:
    """Runbook anchor of a condition key: `runway:public.x` -> `runway`, `task:...` -> `task-failure`."""
    kind = key.split(":", 1)[0]
    return {"task": "task-failure"}.get(kind, kind.replace("_", "-"))


# --- conditions and their state ---------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """Something wrong, as one check saw it just now."""

    key: str  # stable: the same problem always has the same key
    severity: str  # warning | critical
    message: str  # for people: what, where, PIDs and queries
    details: dict = field(default_factory=dict, hash=False, compare=False)  # JSON-serialisable
    quiet: bool = False  # tell nobody until it pages (e.g. DEFAULT rows an auto migration should clear)

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    def as_dict(self) -> dict:
        return {"key": self.key, "severity": self.severity, "message": self.message, "details": self.details,
                "quiet": self.quiet}

    @classmethod
    def from_dict(cls, d: dict) -> "Condition":
        return cls(d["key"], d["severity"], d["message"], d.get("details") or {}, bool(d.get("quiet")))


@dataclass(frozen=True)
class ConditionState:
    """One row of `<state_schema>.conditions`: the current (or last) episode of a condition."""

    key: str
    severity: str
    message: str
    details: dict
    first_seen: datetime  # start of this episode
    last_seen: datetime
    streak: int = 1  # consecutive observations (failures, for task conditions) in this episode
    quiet: bool = False
    notified_at: datetime | None = None  # last message to the notify targets in this episode
    paged_at: datetime | None = None  # when the page was opened (None: not paged)
    last_page_at: datetime | None = None  # last page trigger (opening or re-notification)
    resolved_at: datetime | None = None  # None while active
    episodes: int = 1

    @property
    def active(self) -> bool:
        return self.resolved_at is None

    def to_json(self) -> dict:
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, datetime):
                out[k] = v.isoformat()
        return out

    @classmethod
    def from_json(cls, d: dict) -> "ConditionState":
        kw = dict(d)
        for f in ("first_seen", "last_seen", "notified_at", "paged_at", "last_page_at", "resolved_at"):
            if kw.get(f):
                kw[f] = datetime.fromisoformat(kw[f])
        return cls(**{k: v for k, v in kw.items() if k in {f.name for f in fields(cls)}})


@dataclass
class Notification:
    key: str
    channel: str  # notify | page
    action: str  # notify: open, renotify, paged, resolve; page: trigger, retrigger, resolve
    severity: str
    message: str
    details: dict
    first_seen: datetime
    streak: int
    marks: dict = field(default_factory=dict)  # state fields to set when delivered
    delivered: bool | None = None  # True: at least one target took it (or there is no target)
    results: list[tuple[str, str | None]] = field(default_factory=list)  # (target, error or None)


# --- the policy (pure) ----------------------------------------------------------------


def plan(states: dict[str, ConditionState], observed: list[Condition], now: datetime, settings: EscalationSettings,
         scope: Iterable[str] = (), resolve: Iterable[str] = (), recheck: bool = True
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
            st = ConditionState(cond.key, cond.severity, cond.message, cond.details, now, now, 1, cond.quiet,
                                episodes=(prev.episodes + 1) if prev else 1)
        else:
            st = replace(prev, severity=cond.severity, message=cond.message, details=cond.details, last_seen=now,
                         streak=prev.streak + 1, quiet=cond.quiet)
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
    return Notification(st.key, channel, action, st.severity, st.message, st.details, st.first_seen, st.streak,
                        marks=marks)


def _timing(st: ConditionState, now: datetime, s: EscalationSettings) -> list[Notification]:
    due_page = st.severity == "critical" or now - st.first_seen >= s.page_after
    if st.paged_at is None and due_page:
        return [_note(st, "page", "trigger", {"paged_at": now, "last_page_at": now}),
                _note(st, "notify", "paged", {"notified_at": now})]
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


# --- stores ---------------------------------------------------------------------------


class Store(Protocol):
    def load(self) -> dict[str, ConditionState]: ...

    def save(self, states: Iterable[ConditionState]) -> None: ...

    def record(self, notes: list[Notification], at: datetime) -> None: ...

    def locked(self) -> contextlib.AbstractContextManager: ...


class MemoryStore:
    """States in a JSON blob: the fallback when the state database is unreachable, and for tests.

    `read`/`write` get and put the blob (an Airflow Variable in production).
    """

    def __init__(self, read: Callable[[], str | None] | None = None, write: Callable[[str | None], None] | None = None):
        self._blob: str | None = None
        self._read = read or (lambda: self._blob)
        self._write = write or self._set_blob

    def _set_blob(self, value: str | None) -> None:
        self._blob = value

    def load(self) -> dict[str, ConditionState]:
        raw = self._read()
        if not raw:
            return {}
        return {k: ConditionState.from_json(v) for k, v in json.loads(raw).items()}

    def save(self, states: Iterable[ConditionState]) -> None:
        current = self.load()
        for st in states:
            current[st.key] = st
        # Only what is still open matters here; resolved rows are history, kept in the database.
        active = {k: v.to_json() for k, v in current.items() if v.active}
        self._write(json.dumps(active) if active else None)

    def clear(self) -> None:
        self._write(None)

    def record(self, notes: list[Notification], at: datetime) -> None:
        pass  # the alerts history lives in the database; the log has the rest

    def locked(self):
        return contextlib.nullcontext()


class PgStore:
    """`<state_schema>.conditions` and `.alerts` (include/sql/004_escalation.sql). Autocommit connection."""

    _COLUMNS = ("key", "severity", "message", "details", "first_seen", "last_seen", "streak", "quiet", "notified_at",
                "paged_at", "last_page_at", "resolved_at", "episodes")

    def __init__(self, conn, schema: str):
        from psycopg import sql

        self.conn, self.schema, self._sql = conn, schema, sql
        self._ident = sql.Identifier(schema)

    def load(self) -> dict[str, ConditionState]:
        sql = self._sql
        rows = self.conn.execute(sql.SQL("SELECT {} FROM {}.conditions").format(
            sql.SQL(", ").join(map(sql.Identifier, self._COLUMNS)), self._ident)).fetchall()
        return {r[0]: ConditionState(*r) for r in rows}

    def save(self, states: Iterable[ConditionState]) -> None:
        sql = self._sql
        cols = sql.SQL(", ").join(map(sql.Identifier, self._COLUMNS))
        updates = sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in self._COLUMNS[1:])
        stmt = sql.SQL("INSERT INTO {}.conditions ({}) VALUES ({}) ON CONFLICT (key) DO UPDATE SET {}").format(
            self._ident, cols, sql.SQL(", ").join(sql.Placeholder() * len(self._COLUMNS)), updates)
        from psycopg.types.json import Jsonb

        with self.conn.transaction():
            for st in states:
                values = [getattr(st, c) for c in self._COLUMNS]
                values[3] = Jsonb(st.details)
                self.conn.execute(stmt, values)

    def record(self, notes: list[Notification], at: datetime) -> None:
        sql = self._sql
        stmt = sql.SQL("INSERT INTO {}.alerts (sent_at, key, channel, action, target, severity, message, delivered, error) "
                       "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)").format(self._ident)
        with self.conn.transaction():
            for n in notes:
                for target, error in n.results:
                    self.conn.execute(stmt, [at, n.key, n.channel, n.action, target, n.severity, n.message[:4000],
                                             error is None, error])

    def absorb(self, spilled: dict[str, ConditionState]) -> int:
        """Fold states kept while the database was unreachable back in (newer wins). Returns how many."""
        if not spilled:
            return 0
        current = self.load()
        newer = [st for key, st in spilled.items() if key not in current or st.last_seen >= current[key].last_seen]
        self.save(newer)
        return len(newer)

    @contextlib.contextmanager
    def locked(self, wait_seconds: float = 15.0):
        """One evaluation at a time (watchdog and failure callbacks may overlap): a session advisory lock."""
        from include.pgmaint.guards import waiting_lock

        with waiting_lock(self.conn, "escalation:" + self.schema, wait_seconds=wait_seconds, on_timeout=lambda: TimeoutError(
                f"another pgmaint evaluation kept the escalation lock for {wait_seconds:.0f}s")):
            yield


# --- rendering ---------------------------------------------------------------------------

_TITLES = {
    ("notify", "open"): "{sev}",
    ("notify", "renotify"): "{sev} (still)",
    ("notify", "paged"): "{sev} -> PAGED",
    ("notify", "resolve"): "RESOLVED",
    ("page", "trigger"): "PAGE {sev}",
    ("page", "retrigger"): "PAGE {sev} (still)",
    ("page", "resolve"): "RESOLVED",
}


def _ago(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} days {hours % 24} h"


def render(n: Notification, now: datetime, settings: EscalationSettings) -> tuple[str, str]:
    """(one-line title, full text) for chat, mail and logs."""
    title = _TITLES[(n.channel, n.action)].format(sev=n.severity.upper())
    first_line = n.message.splitlines()[0] if n.message else ""
    head = f"[pgmaint] {title} {n.key}: {first_line}"
    since = f"since {n.first_seen:%Y-%m-%d %H:%M} UTC ({_ago(now - n.first_seen)}, seen {n.streak}x)"
    if n.action == "resolve":
        body = [head, f"cleared after {_ago(now - n.first_seen)} (first seen {n.first_seen:%Y-%m-%d %H:%M} UTC)"]
    else:
        body = [head, *n.message.splitlines()[1:], since]
        if n.action in ("paged", "trigger") and n.severity == "warning":
            body.append(f"paging: it has persisted for more than {_ago(settings.page_after)}")
    if n.details.get("log_url"):
        body.append(f"log: {n.details['log_url']}")
    body.append(f"runbook: {settings.runbook(n.key)}")
    return head, "\n".join(body)


# --- senders (the providers' notifiers) ---------------------------------------------------


def _run_coroutine(coro):
    """Run an async notifier method from sync code, whether or not an event loop is running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def send_log(target: Target, n: Notification, title: str, text: str, source: str) -> None:
    level = logging.INFO if n.action == "resolve" else (logging.ERROR if n.channel == "page" or n.severity == "critical"
                                                        else logging.WARNING)
    alert_log.log(level, "%s", text)


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
        summary=title[:1024], severity=severity, source=source, action="resolve" if n.action == "resolve" else "trigger",
        dedup_key=n.key, custom_details=json.loads(json.dumps(details, default=str)), group="pgmaint",
        component=n.details.get("table"), class_type=n.key.split(":", 1)[0], links=links,
        pagerduty_events_conn_id=target.connection_id,
    )
    if PagerdutyEventsHook.get_connection(target.connection_id).host:
        notifier.hook_async.http_conn_id = target.connection_id
    _run_coroutine(notifier.async_notify({}))


def send_email(target: Target, n: Notification, title: str, text: str, source: str) -> None:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    SmtpNotifier(to=list(target.to), from_email=target.from_email, subject=title[:200],
                 html_content=f"<pre>{html.escape(text)}</pre>", smtp_conn_id=target.connection_id).notify({})


SENDERS: dict[str, Callable[[Target, Notification, str, str, str], None]] = {
    "log": send_log, "slack": send_slack, "pagerduty": send_pagerduty, "email": send_email,
}


# --- the escalator -------------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Evaluation:
    notifications: list[Notification]
    states: dict[str, ConditionState]  # every condition after the evaluation
    persisted: bool  # False: the state database was unreachable (state kept in the spill store)

    @property
    def undelivered(self) -> list[Notification]:
        return [n for n in self.notifications if not n.delivered]

    @property
    def active(self) -> dict[str, ConditionState]:
        return {k: v for k, v in self.states.items() if v.active}


class Escalator:
    """Applies the policy to what was observed, sends, and records. `clock` is injectable for tests."""

    def __init__(self, settings: EscalationSettings, store: Store, *, clock: Callable[[], datetime] = utcnow,
                 senders: dict[str, Callable] | None = None, source: str = "pgmaint", persisted: bool = True,
                 target: str | None = None):
        self.settings, self.store, self.clock = settings, store, clock
        self.senders = {**SENDERS, **(senders or {})}
        self.source, self.persisted = source, persisted
        self.target = target  # fleet mode: messages and PagerDuty dedup keys carry the target ("orders/canary")

    def evaluate(self, observed: Iterable[Condition] = (), scope: Iterable[str] = (), resolve: Iterable[str] = (),
                 recheck: bool = True) -> Evaluation:
        observed = list(observed)
        with self.store.locked():
            now = self.clock()
            states = self.store.load()
            planned, notes = plan(states, observed, now, self.settings, scope, resolve, recheck)
            for n in notes:
                self._deliver(n, now)
            final = apply_deliveries(planned, notes)
            self.store.save(final.values())
            self.store.record(notes, now)
            return Evaluation(notes, {**states, **final}, self.persisted)

    def active(self) -> dict[str, ConditionState]:
        return {k: v for k, v in self.store.load().items() if v.active}

    def _deliver(self, n: Notification, now: datetime) -> None:
        targets = self.settings.page if n.channel == "page" else self.settings.notify
        title, text = render(n, now, self.settings)
        if self.target:  # several databases page through the same targets: keep their incidents apart
            title, text = f"[{self.target}] {title}", f"[{self.target}] {text}"
        if not self.persisted:
            text += "\n(state database unreachable: pgmaint cannot record this alert there; it may repeat)"
        for target in targets:
            try:
                sent = replace(n, key=f"{self.target}/{n.key}") if self.target else n  # shares n.results
                self.senders[target.kind](target, sent, title, text, self.source)
                n.results.append((str(target), None))
            except Exception as exc:  # one broken target must not silence the others
                log.warning("could not send %s %s for %s to %s: %s", n.channel, n.action, n.key, target, exc)
                n.results.append((str(target), f"{type(exc).__name__}: {exc}"[:1000]))
        n.delivered = not targets or any(err is None for _, err in n.results)


# --- wiring to Airflow and the target database ---------------------------------------------


def variable_spill(schema: str) -> MemoryStore:
    """Where conditions go while the state database is unreachable: an Airflow Variable.

    Outside a task (no Airflow API) it degrades to memory, i.e. stateless for that evaluation.
    """
    key = f"pgmaint_escalation_spill_{schema}"
    memory = MemoryStore()

    def read() -> str | None:
        try:
            from airflow.sdk import Variable

            return Variable.get(key, default=None)
        except Exception as exc:
            log.warning("cannot read Airflow Variable %s (%s); condition state is not kept", key, exc)
            return memory._blob

    def write(value: str | None) -> None:
        try:
            from airflow.sdk import Variable

            if value is None:
                if Variable.get(key, default=None) is not None:
                    Variable.delete(key)
            else:
                Variable.set(key, value, description="pgmaint: open conditions while the state database was unreachable")
        except Exception as exc:
            log.warning("cannot write Airflow Variable %s (%s); condition state is not kept", key, exc)
            memory._blob = value

    return MemoryStore(read, write)


@contextlib.contextmanager
def open_escalator(config: Config, settings: EscalationSettings | None = None, *, conninfo: str | None = None,
                   clock: Callable[[], datetime] = utcnow, senders: dict | None = None,
                   spill: MemoryStore | None = None) -> Iterator[tuple[Escalator, Any]]:
    """(Escalator, connection or None): state in the target database, or in `spill` when it is unreachable."""
    from include.pgmaint.config import LockBudget
    from include.pgmaint.db import connect, conninfo_from_airflow
    from include.pgmaint.state import ensure_state_schema

    settings = settings or settings_for(config)
    if spill is None:  # one fallback per target database
        spill = variable_spill(config.state_schema if config.target is None else f"{config.state_schema}_{config.target}")
    source = f"pgmaint/{config.connection_id}"
    conn = None
    try:
        conn = connect(conninfo or conninfo_from_airflow(config.connection_id),
                       LockBudget(statement_timeout_ms=5000), application_name="pgmaint-escalation")
        ensure_state_schema(conn, config.state_schema)
        store = PgStore(conn, config.state_schema)
        absorbed = store.absorb(spill.load())
        if absorbed:
            log.info("folded %d condition(s) kept while the state database was unreachable back into %s.conditions",
                     absorbed, config.state_schema)
            spill.clear()
        escalator = Escalator(settings, store, clock=clock, senders=senders, source=source, target=config.target)
    except Exception as exc:
        if conn is not None:
            conn.close()
            conn = None
        log.error("state database unreachable (%s: %s); keeping condition state in the fallback store",
                  type(exc).__name__, str(exc).strip())
        escalator = Escalator(settings, spill, clock=clock, senders=senders, source=source, persisted=False,
                              target=config.target)
    try:
        yield escalator, conn
    finally:
        if conn is not None:
            conn.close()


# --- the task-failure callback -------------------------------------------------------------

_PID = re.compile(r"pid (\d+)")


def on_task_failure(context) -> None:
    """`on_failure_callback` for every pgmaint task: a failed task is a condition, through the same policy.

    Key `task:<dag_id>.<task_id>` (+ `:<table>` when the task works on one table). The message has
    the DAG, task, table, failed step, error, the sessions that blocked it (PIDs and queries, from
    the exception or the journal) and the log URL. Never raises (Airflow only logs callback errors).
    """
    try:
        config = _target_of(context)
        try:
            settings = settings_for(config)
        except ConfigError as exc:
            log.error("%s; alerting to the log only", exc)
            settings = EscalationSettings()
        report_task_failure(context, config, settings)
    except Exception:
        log.exception("pgmaint failure callback could not report the failure")


def _target_of(context) -> Config:
    """The target whose database keeps this failure's state: one target, or (fleet mode) the task's own —
    from the task (`pgmaint_target` in its context), its group (`<target>.…` task ids), or its `table` param."""
    from include.pgmaint.fleet import SEPARATOR, load_fleet

    fleet = load_fleet()
    if not fleet.multi:
        return fleet.targets[0]
    ti = context.get("ti") or context.get("task_instance")
    table_param = (context.get("params") or {}).get("table")
    candidates = [context.get("pgmaint_target"), str(getattr(ti, "task_id", "")).split(".", 1)[0],
                  str(getattr(ti, "rendered_map_index", None) or "").split(SEPARATOR, 1)[0],
                  table_param.split(SEPARATOR, 1)[0] if isinstance(table_param, str) else None]
    for name in candidates:
        try:
            config = fleet.target(name)
        except KeyError:
            continue
        if isinstance(table_param, str) and table_param.startswith(f"{name}{SEPARATOR}"):
            context["table_name"] = table_param.split(SEPARATOR, 1)[1]
        return config
    return fleet.targets[0]


def report_task_failure(context, config: Config, settings: EscalationSettings, *, clock: Callable[[], datetime] = utcnow,
                        senders: dict | None = None, conninfo: str | None = None,
                        spill: MemoryStore | None = None) -> Evaluation | None:
    ti = context.get("ti") or context.get("task_instance")
    if (context.get("params") or {}).get("dry_run") is True:
        # A dry run writes nothing, not even to the escalation state: its failure is in the run itself.
        log.warning("dry run: %s.%s failed; not recorded as a condition and nobody notified (a dry run writes nothing): %s",
                    getattr(ti, "dag_id", "?"), getattr(ti, "task_id", "?"), context.get("exception"))
        return None
    if ti is not None and _restates_upstream_failure(ti, context):
        log.info("%s.%s failed because upstream tasks failed; those are reported on their own", ti.dag_id, ti.task_id)
        return None
    with open_escalator(config, settings, conninfo=conninfo, clock=clock, senders=senders, spill=spill) as (esc, conn):
        cond = task_failure_condition(context, config, conn)
        return esc.evaluate([cond])


def task_failure_condition(context, config: Config, conn=None) -> Condition:
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    run_id = getattr(ti, "run_id", None) or getattr(context.get("dag_run"), "run_id", None)
    table = _table_of(context, config)
    exc = context.get("exception")
    error = f"{type(exc).__name__}: {exc}".strip() if isinstance(exc, BaseException) else str(exc or "unknown error")
    blockers, step = _blockers_and_step(exc)
    if conn is not None and table and (not blockers or not step):
        j_blockers, j_step = _from_journal(conn, config.state_schema, run_id, table)
        blockers, step = blockers or j_blockers, step or j_step
    if not blockers:
        blockers = [{"pid": int(p)} for p in dict.fromkeys(_PID.findall(error))]
    try:
        log_url = ti.log_url
    except Exception:
        log_url = None
    where = f"{dag_id}.{task_id}" + (f" [{table}]" if table else "")
    lines = [f"{where} failed (try {getattr(ti, 'try_number', '?')}, run {run_id}): {error[:1500]}"]
    if step:
        lines.append(f"step: {step}")
    for b in blockers:
        lines.append("blocked by " + describe_session(b))
    details = {"dag_id": dag_id, "task_id": task_id, "run_id": run_id, "table": table, "step": step,
               "error": error[:4000], "blockers": blockers, "log_url": log_url,
               "map_index": getattr(ti, "map_index", None), "try_number": getattr(ti, "try_number", None)}
    key = f"task:{dag_id}.{task_id}" + (f":{table}" if table else "")
    return Condition(key, "warning", "\n".join(lines), json.loads(json.dumps(details, default=str)))


def describe_session(s: dict) -> str:
    """'pid 123 (idle in transaction, transaction 312 s, holds AccessShareLock on public.x): SELECT ...'."""
    bits = [b for b in (
        s.get("state"),
        f"transaction {s['xact_seconds']:.0f} s" if isinstance(s.get("xact_seconds"), (int, float)) else None,
        f"waiting {s['waiting_seconds']:.0f} s" if isinstance(s.get("waiting_seconds"), (int, float)) else None,
        f"holds {s['mode']} on {s['relation']}" if s.get("mode") and s.get("relation") and s.get("granted", True) else None,
        f"wants {s['mode']} on {s['relation']}" if s.get("mode") and s.get("relation") and s.get("granted") is False else None,
        f"{s['usename']}@{s['application_name'] or '?'}" if s.get("usename") else None,
    ) if b]
    out = f"pid {s.get('pid')}" + (f" ({', '.join(bits)})" if bits else "")
    if s.get("query"):
        out += f": {' '.join(str(s['query']).split())[:300]!r}"
    return out


def _blockers_and_step(exc) -> tuple[list[dict], str | None]:
    """Blocking sessions and the failed step, if the exception (or its cause) carries them (execute.StepFailed)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        blockers = getattr(exc, "blockers", None)
        step = getattr(exc, "step", None)
        if blockers or step is not None:
            out = [asdict(b) if hasattr(b, "__dataclass_fields__") else dict(b) for b in blockers or []]
            step_text = f"{step.action} {step.target}" if hasattr(step, "action") else (str(step) if step else None)
            return out, step_text
        exc = exc.__cause__ or exc.__context__
    return [], None


def _from_journal(conn, schema: str, run_id: str | None, table: str) -> tuple[list[dict], str | None]:
    """The failed step of this DAG run for the table, and who blocked it, from the journal."""
    from psycopg import sql

    try:
        row = conn.execute(sql.SQL(
            "SELECT s.action || ' ' || s.target, s.blockers FROM {}.steps s JOIN {}.runs r USING (run_id) "
            "WHERE r.table_name = %s AND (%s::text IS NULL OR r.dag_run_id = %s) AND s.outcome = 'failed' "
            "ORDER BY s.step_id DESC LIMIT 1").format(sql.Identifier(schema), sql.Identifier(schema)),
            [table, run_id, run_id]).fetchone()
    except Exception as exc:
        log.info("no journal details for %s: %s", table, exc)
        return [], None
    return (list(row[1] or []), row[0]) if row else ([], None)


def _table_of(context, config: Config) -> str | None:
    """The configured table a task worked on: its `table` argument, map index name, or params."""
    names = set(config.table_names)
    ti = context.get("ti")
    task = getattr(ti, "task", None) or context.get("task")
    candidates = [
        (getattr(task, "op_kwargs", None) or {}).get("table"),
        context.get("table_name"),
        getattr(ti, "rendered_map_index", None),
        (context.get("params") or {}).get("table"),
    ]
    tables_param = (context.get("params") or {}).get("tables")
    if isinstance(tables_param, (list, tuple)) and len(tables_param) == 1:
        candidates.append(tables_param[0])
    for c in candidates:
        if isinstance(c, str) and c in names:
            return c
    return None


def _restates_upstream_failure(ti, context) -> bool:
    """True for a task (e.g. a summary with trigger_rule all_done) that failed because upstream tasks did."""
    task = getattr(ti, "task", None)
    upstream = sorted(getattr(task, "upstream_task_ids", None) or ())
    if not upstream or str(getattr(task, "trigger_rule", "all_success")) in ("all_success", "TriggerRule.ALL_SUCCESS"):
        return False
    try:
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=upstream, run_ids=[ti.run_id])
    except Exception as exc:
        log.debug("cannot read upstream task states: %s", exc)
        return False
    flat: list[str] = []

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif v is not None:
            flat.append(str(v))

    walk(states)
    return any(s in ("failed", "upstream_failed", "TaskInstanceState.FAILED") for s in flat)


__all__ = [
    "Condition",
    "ConditionState",
    "EscalationSettings",
    "Escalator",
    "MemoryStore",
    "PgStore",
    "Target",
    "on_task_failure",
    "open_escalator",
    "parse_escalation",
    "plan",
]
