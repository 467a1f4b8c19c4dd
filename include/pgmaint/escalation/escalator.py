"""The escalator: applies the policy to what was observed, sends through the senders, records in a store."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from include.pgmaint.config import Config, EscalationSettings, LockBudget
from include.pgmaint.db import connect
from include.pgmaint.escalation.conditions import Condition, ConditionState, Notification
from include.pgmaint.escalation.policy import apply_deliveries, plan
from include.pgmaint.escalation.rendering import render
from include.pgmaint.escalation.senders import SENDERS
from include.pgmaint.escalation.stores import MemoryStore, PgStore, Store
from include.pgmaint.state import ensure_state_schema

log = logging.getLogger("pgmaint.escalation")


def settings_for(config: Config) -> EscalationSettings:
    """The target's escalation settings (parsed with its configuration)."""
    return config.escalation


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

    def __init__(
        self,
        settings: EscalationSettings,
        store: Store,
        *,
        clock: Callable[[], datetime] = utcnow,
        senders: dict[str, Callable] | None = None,
        source: str = "pgmaint",
        persisted: bool = True,
        target: str | None = None,
    ):
        self.settings, self.store, self.clock = settings, store, clock
        self.senders = {**SENDERS, **(senders or {})}
        self.source, self.persisted = source, persisted
        self.target = target  # fleet mode: messages and PagerDuty dedup keys carry the target ("orders/canary")

    def evaluate(
        self,
        observed: Iterable[Condition] = (),
        scope: Iterable[str] = (),
        resolve: Iterable[str] = (),
        recheck: bool = True,
    ) -> Evaluation:
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


@contextlib.contextmanager
def open_escalator(
    config: Config,
    settings: EscalationSettings | None = None,
    *,
    conninfo: str | None = None,
    clock: Callable[[], datetime] = utcnow,
    senders: dict | None = None,
    spill: MemoryStore | None = None,
) -> Iterator[tuple[Escalator, Any]]:
    """(Escalator, connection or None): state in the target database, or in `spill` when it is unreachable."""
    settings = settings or settings_for(config)
    if spill is None:  # outside Airflow (the CLI): state for this evaluation only; tasks pass the Variable spill
        spill = MemoryStore()
    source = f"pgmaint/{config.connection_id}"
    conn = None
    try:
        if conninfo is None:  # inside Airflow: the target's connection
            from include.pgmaint.airflow.connections import conninfo_from_airflow

            conninfo = conninfo_from_airflow(config.connection_id)
        conn = connect(conninfo, LockBudget(statement_timeout_ms=5000), application_name="pgmaint-escalation")
        ensure_state_schema(conn, config.state_schema)
        store = PgStore(conn, config.state_schema)
        absorbed = store.absorb(spill.load())
        if absorbed:
            log.info(
                "folded %d condition(s) kept while the state database was unreachable back into %s.conditions",
                absorbed,
                config.state_schema,
            )
            spill.clear()
        escalator = Escalator(settings, store, clock=clock, senders=senders, source=source, target=config.target)
    except Exception as exc:
        if conn is not None:
            conn.close()
            conn = None
        log.error(
            "state database unreachable (%s: %s); keeping condition state in the fallback store",
            type(exc).__name__,
            str(exc).strip(),
        )
        escalator = Escalator(
            settings, spill, clock=clock, senders=senders, source=source, persisted=False, target=config.target
        )
    try:
        yield escalator, conn
    finally:
        if conn is not None:
            conn.close()
