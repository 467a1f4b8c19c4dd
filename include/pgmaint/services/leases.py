"""Pause and resume services with leases in ``<state_schema>.service_leases``.

Every pause is a lease: who holds it (DAG id, run id), why, since when and
until when. The rules (safety rule 7: anything we pause, we resume):

* Services are paused in dependency order (dependents first) and resumed in
  reverse. If pausing one fails, everything this run paused is resumed (in
  reverse) before the error is raised.
* Before pausing, the adapter's snapshot is written into the lease; only then
  is the service paused. A process killed in between leaves a lease that can
  restore exactly the previous state.
* A service that is already paused and no live lease explains it was paused by
  someone else (a responder, another tool): it is left alone, reported, and
  never resumed by us.
* A service already held paused by another pgmaint run is *joined*: this run
  holds a lease on it too, and the service is resumed only when the last live
  lease ends. (Otherwise the first run to finish would resume it under the
  other run's feet.)
* Resume is idempotent and resumes only what this run holds.
* A live lease past ``lease_until`` belongs to a run that died (or overran):
  ``resume_expired_leases`` gives the service back. The watchdog schedules it.

Changes of the same service are serialised by a session-level advisory lock
(released by the server if the process dies).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from include.pgmaint.config import DEFAULT_LEASE_MINUTES, Config, ServiceConfig
from include.pgmaint.db import connect
from include.pgmaint.guards import waiting_lock
from include.pgmaint.services.airflow_dag import (
    AirflowDagAdapter,
    endpoint_from_airflow,
)
from include.pgmaint.services.base import Actor, Adapter, ServiceError
from include.pgmaint.services.flag import FlagAdapter
from include.pgmaint.services.http import HttpAdapter, redact_url
from include.pgmaint.services.ordering import pause_order
from include.pgmaint.services.pg_cron import PgCronAdapter
from include.pgmaint.services.pg_partman import PgPartmanAdapter, default_parents
from include.pgmaint.state import ensure_state_schema

log = logging.getLogger("pgmaint.services")

AdapterFactory = Callable[[ServiceConfig], Adapter]
LOCK_WAIT_SECONDS = 120.0
HELD = ("paused", "joined", "already_held")


# --- results -----------------------------------------------------------------------


@dataclass
class ServiceOutcome:
    service: str
    kind: str
    action: (
        str  # paused | joined | already_held | paused_by_someone_else | resumed | released | already_resumed | failed
    )
    lease_id: int | None = None
    detail: str = ""

    def __str__(self) -> str:
        lease = f" (lease {self.lease_id})" if self.lease_id else ""
        return f"{self.service} [{self.kind}]: {self.action}{lease}" + (f" - {self.detail}" if self.detail else "")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PauseReport:
    order: list[str]
    outcomes: list[ServiceOutcome] = field(default_factory=list)

    @property
    def held(self) -> list[str]:
        """Services this run now holds paused (its leases), in pause order."""
        return [o.service for o in self.outcomes if o.action in HELD]

    @property
    def left_alone(self) -> list[ServiceOutcome]:
        """Services found paused by someone else: not leased, never resumed by this run."""
        return [o for o in self.outcomes if o.action == "paused_by_someone_else"]


class ServicePauseError(ServiceError):
    def __init__(self, message: str, report: PauseReport, rollback: list[ServiceOutcome]):
        super().__init__(message)
        self.report, self.rollback = report, rollback


class ServiceResumeError(ServiceError):
    def __init__(self, message: str, outcomes: list[ServiceOutcome]):
        super().__init__(message)
        self.outcomes = outcomes


# --- adapters ------------------------------------------------------------------------


def make_adapter(service: ServiceConfig, config: Config, conn, *, endpoint_for=None, open_connection=None) -> Adapter:
    """The adapter for one service. `conn` is the target DB (flags, pg_partman, pg_cron)."""
    kind = service.kind
    if kind == "flag":
        return FlagAdapter(service, conn, config.state_schema)
    if kind == "pg_partman":
        return PgPartmanAdapter(service, conn, default_parents(config, service))
    if kind == "pg_cron":
        if open_connection is None:

            def open_connection(conn_id: str):
                from include.pgmaint.airflow.connections import conninfo_from_airflow

                return connect(conninfo_from_airflow(conn_id), config.lock_budget)

        return PgCronAdapter(service, conn, open_connection)
    if kind == "airflow_dag":
        return AirflowDagAdapter(service, endpoint_for or endpoint_from_airflow)
    if kind == "http":
        return HttpAdapter(service)
    raise ServiceError(f"service {service.name!r}: unknown kind {kind!r}")


def _factory(config: Config, conn, factory: AdapterFactory | None) -> AdapterFactory:
    return factory or (lambda service: make_adapter(service, config, conn))


def _service(config: Config, name: str) -> ServiceConfig:
    for s in config.services:
        if s.name == name:
            return s
    raise KeyError(f"service {name!r} is not configured")


def _stored_config(service: ServiceConfig) -> dict[str, Any]:
    """What a lease keeps to resume the service even if the config changes. Never a secret: no headers,
    URLs with their password replaced by *** (both come from the current config at resume)."""

    options = {
        k: redact_url(v) if k.endswith("_url") and isinstance(v, str) else v
        for k, v in service.options.items()
        if k != "headers"
    }
    return {"kind": service.kind, "options": options}


def _service_for_lease(config: Config, lease: dict) -> ServiceConfig:
    """The service as it was paused: options stored in the lease (headers, and the password of a URL that
    is still the same, from the current config)."""

    stored = dict((lease["service_config"] or {}).get("options", {}))
    for s in config.services:
        if s.name == lease["service"] and s.kind == lease["kind"]:
            if not stored:
                return s
            if "headers" in s.options:
                stored["headers"] = s.options["headers"]
            for key, value in s.options.items():
                if key.endswith("_url") and isinstance(value, str) and stored.get(key) == redact_url(value):
                    stored[key] = value
            return ServiceConfig(s.name, s.kind, s.depends_on, stored)
    log.warning(
        "service %r is no longer configured as %s; resuming it from the settings stored in lease %s",
        lease["service"],
        lease["kind"],
        lease["lease_id"],
    )
    return ServiceConfig(lease["service"], lease["kind"], (), stored)


# --- SQL -----------------------------------------------------------------------------

_COLUMNS = sql.SQL(
    "lease_id, service, kind, dag_id, run_id, reason, state, coalesce(episode, lease_id) AS episode, paused_at, "
    "lease_until, resumed_at, resumed_by, previous_state, service_config, error, "
    "lease_until <= coalesce(%(now)s::timestamptz, clock_timestamp()) AS expired"
)


def _table(config: Config) -> sql.Composable:
    return sql.Identifier(config.state_schema, "service_leases")


def _select(conn, config: Config, where: str, params: dict[str, Any], order: str = "lease_id") -> list[dict]:
    query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}").format(
        _COLUMNS, _table(config), sql.SQL(where), sql.SQL(order)
    )
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, {"now": None, **params}).fetchall()


def _owner(lease: dict) -> str:
    return f"{lease['dag_id']}/{lease['run_id']}"


@contextlib.contextmanager
def service_lock(conn, config: Config, name: str, wait_seconds: float = LOCK_WAIT_SECONDS):
    """Serialise pgmaint's changes of one service across sessions."""
    with waiting_lock(
        conn,
        f"{config.state_schema}:service:{name}",
        wait_seconds=wait_seconds,
        on_timeout=lambda: ServiceError(
            f"service {name!r}: another pgmaint session kept it locked for {wait_seconds:.0f}s"
        ),
    ):
        yield


def _ensure_schema(conn, config: Config) -> None:

    ensure_state_schema(conn, config.state_schema)


# --- pause ---------------------------------------------------------------------------


def _pause_one(
    conn,
    config: Config,
    service: ServiceConfig,
    dag_id: str,
    run_id: str,
    reason: str | None,
    lease_minutes: int | None,
    min_lease_minutes: int | None,
    now: datetime | None,
    factory: AdapterFactory,
) -> ServiceOutcome:
    actor = Actor(f"{dag_id}/{run_id}", reason)
    minutes = max(lease_minutes or service.options.get("lease_minutes", DEFAULT_LEASE_MINUTES), min_lease_minutes or 0)
    until = sql.SQL("coalesce(%(now)s::timestamptz, clock_timestamp()) + make_interval(mins => %(minutes)s)")
    params = {
        "now": now,
        "minutes": minutes,
        "service": service.name,
        "kind": service.kind,
        "dag_id": dag_id,
        "run_id": run_id,
        "reason": reason,
        "config": json.dumps(_stored_config(service)),
    }

    def insert(state: str, episode: int | None, previous: dict | None) -> int:
        return conn.execute(
            sql.SQL(
                "INSERT INTO {} (service, kind, dag_id, run_id, reason, state, episode, lease_until, previous_state, service_config) "
                "VALUES (%(service)s, %(kind)s, %(dag_id)s, %(run_id)s, %(reason)s, %(state)s, %(episode)s, {}, "
                "%(previous)s::jsonb, %(config)s::jsonb) RETURNING lease_id"
            ).format(_table(config), until),
            {
                **params,
                "state": state,
                "episode": episode,
                "previous": None if previous is None else json.dumps(previous),
            },
        ).fetchone()[0]

    with service_lock(conn, config, service.name):
        live = _select(conn, config, "service = %(service)s AND resumed_at IS NULL", params)
        mine = [lease for lease in live if lease["dag_id"] == dag_id and lease["run_id"] == run_id]
        if mine:
            lease = mine[0]
            if lease["state"] == "pausing":  # an earlier attempt of this run stopped half-way: finish it
                adapter = factory(service)
                snap = adapter.status()
                if snap.paused is not True:
                    adapter.pause(snap, actor)
                conn.execute(
                    sql.SQL("UPDATE {} SET state = 'paused', episode = lease_id WHERE lease_id = %(id)s").format(
                        _table(config)
                    ),
                    {"id": lease["lease_id"]},
                )
            conn.execute(
                sql.SQL("UPDATE {} SET lease_until = greatest(lease_until, {}) WHERE lease_id = %(id)s").format(
                    _table(config), until
                ),
                {**params, "id": lease["lease_id"]},
            )
            return ServiceOutcome(
                service.name, service.kind, "already_held", lease["lease_id"], "this run already holds it paused"
            )

        adapter = factory(service)
        snap = adapter.status()
        if live:  # held paused by another pgmaint run (alive or not): hold it too
            holders = ", ".join(sorted({_owner(lease) for lease in live}))
            lease_id = insert("joined", live[0]["episode"], None)
            detail = f"already held paused by pgmaint run {holders}; this run holds it paused too"
            if snap.paused is not True:  # someone resumed it in the meantime
                adapter.pause(snap, actor)
                detail += f" (it was running again: {snap.detail}; paused it)"
            return ServiceOutcome(service.name, service.kind, "joined", lease_id, detail)
        if snap.paused is True:
            return ServiceOutcome(
                service.name,
                service.kind,
                "paused_by_someone_else",
                None,
                f"already paused, not by pgmaint ({snap.detail}); left alone and will not be resumed by this run",
            )
        lease_id = insert("pausing", None, snap.state)
        adapter.pause(snap, actor)
        conn.execute(
            sql.SQL("UPDATE {} SET state = 'paused', episode = lease_id WHERE lease_id = %(id)s").format(
                _table(config)
            ),
            {"id": lease_id},
        )
        return ServiceOutcome(service.name, service.kind, "paused", lease_id, f"was: {snap.detail}")


def pause_services(
    conn,
    config: Config,
    names,
    *,
    dag_id: str,
    run_id: str,
    reason: str | None = None,
    lease_minutes: int | None = None,
    min_lease_minutes: int | None = None,
    now: datetime | None = None,
    factory: AdapterFactory | None = None,
) -> PauseReport:
    """Pause `names` in dependency order with leases owned by (dag_id, run_id).

    Lease length: `lease_minutes` if given, else each service's `lease_minutes` (default 120);
    at least `min_lease_minutes` (e.g. the run's time box plus a margin, so the watchdog does
    not resume services under a run that is still working).

    Idempotent (a second call holds the same leases). If one service fails,
    everything this run holds among `names` is resumed in reverse order and
    ServicePauseError is raised (its message lists what was resumed).
    """
    _ensure_schema(conn, config)
    factory = _factory(config, conn, factory)
    report = PauseReport(order=pause_order(config, names))
    log.info("pausing in dependency order: %s", " -> ".join(report.order) or "(nothing)")
    for name in report.order:
        service = _service(config, name)
        try:
            outcome = _pause_one(
                conn, config, service, dag_id, run_id, reason, lease_minutes, min_lease_minutes, now, factory
            )
        except BaseException as exc:
            log.error("pausing %s (%s) failed: %s; resuming what this run paused", name, service.kind, exc)
            try:
                rollback = resume_services(
                    conn,
                    config,
                    dag_id=dag_id,
                    run_id=run_id,
                    names=report.order,
                    now=now,
                    factory=factory,
                    raise_on_error=False,
                )
            except Exception as rollback_exc:
                message = (
                    f"pausing service {name!r} ({service.kind}) failed: {exc}; resuming the services this run paused "
                    f"failed too ({rollback_exc}); their leases stay and resume_expired_leases() gives them back "
                    "when they expire"
                )
                raise ServicePauseError(message, report, []) from exc
            if not isinstance(exc, Exception):
                raise
            resumed = [o.service for o in rollback if o.action in ("resumed", "released")]
            failed = [str(o) for o in rollback if o.action == "failed"]
            message = (
                f"pausing service {name!r} ({service.kind}) failed: {exc}. "
                f"Resumed what this run had paused, in reverse order: {', '.join(resumed) or 'nothing'}"
            )
            if failed:
                message += "; COULD NOT RESUME: " + "; ".join(failed) + " (leases kept: the watchdog retries them)"
            raise ServicePauseError(message, report, rollback) from exc
        report.outcomes.append(outcome)
        log.info("%s", outcome)
    return report


# --- resume --------------------------------------------------------------------------


def _end_lease(
    conn, config: Config, lease_id: int, by: str, now: datetime | None, factory: AdapterFactory
) -> ServiceOutcome:
    [lease] = _select(conn, config, "lease_id = %(id)s", {"id": lease_id})
    name, kind = lease["service"], lease["kind"]
    with service_lock(conn, config, name):
        [lease] = _select(conn, config, "lease_id = %(id)s", {"id": lease_id, "now": now})
        if lease["resumed_at"] is not None:
            return ServiceOutcome(name, kind, "already_resumed", lease_id, f"{lease['state']} by {lease['resumed_by']}")
        live = _select(conn, config, "service = %(service)s AND resumed_at IS NULL", {"service": name, "now": now})
        others = [other for other in live if other["lease_id"] != lease_id and not other["expired"]]
        finish = sql.SQL(
            "UPDATE {} SET state = %(state)s, resumed_at = clock_timestamp(), resumed_by = %(by)s, error = NULL "
            "WHERE lease_id = ANY(%(ids)s) AND resumed_at IS NULL"
        ).format(_table(config))
        if others:
            holders = ", ".join(sorted({_owner(other) for other in others}))
            conn.execute(finish, {"state": "released", "by": by, "ids": [lease_id]})
            return ServiceOutcome(
                name, kind, "released", lease_id, f"still held paused by pgmaint run {holders}; resumed when it ends"
            )
        [root] = _select(conn, config, "lease_id = %(id)s", {"id": lease["episode"]})
        service = _service_for_lease(config, lease)
        try:
            factory(service).resume(root["previous_state"] or {}, Actor(by))
        except Exception as exc:
            # Keep the lease live and due, so resume_expired_leases() retries it at the next watchdog run.
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET error = %(error)s, lease_until = least(lease_until, coalesce(%(now)s::timestamptz, clock_timestamp())) "
                    "WHERE lease_id = %(id)s"
                ).format(_table(config)),
                {"error": str(exc), "now": now, "id": lease_id},
            )
            return ServiceOutcome(name, kind, "failed", lease_id, str(exc))
        conn.execute(finish, {"state": "resumed", "by": by, "ids": [other["lease_id"] for other in live]})
        ended = [other for other in live if other["lease_id"] != lease_id]
        detail = "restored " + json.dumps(root["previous_state"] or {})
        if ended:
            detail += "; also ended expired lease(s) of " + ", ".join(sorted({_owner(other) for other in ended}))
        return ServiceOutcome(name, kind, "resumed", lease_id, detail)


def _end_all(
    conn, config: Config, leases: list[dict], by: Callable[[dict], str], now, factory, raise_on_error: bool, what: str
) -> list[ServiceOutcome]:
    outcomes = []
    for lease in leases:  # newest first: the reverse of the order they were paused in
        try:
            outcome = _end_lease(conn, config, lease["lease_id"], by(lease), now, factory)
        except Exception as exc:  # e.g. the service lock: keep going, give the others back
            outcome = ServiceOutcome(lease["service"], lease["kind"], "failed", lease["lease_id"], str(exc))
        outcomes.append(outcome)
        (log.error if outcome.action == "failed" else log.info)("%s", outcome)
    failed = [o for o in outcomes if o.action == "failed"]
    if failed and raise_on_error:
        raise ServiceResumeError(f"{what}: could not resume " + "; ".join(map(str, failed)), outcomes)
    return outcomes


def resume_services(
    conn,
    config: Config,
    *,
    dag_id: str,
    run_id: str,
    names=None,
    now: datetime | None = None,
    factory: AdapterFactory | None = None,
    raise_on_error: bool = True,
) -> list[ServiceOutcome]:
    """Resume everything (dag_id, run_id) holds paused (only `names`, if given), newest lease first.

    Idempotent and safe when nothing was paused. Tries every lease even if one
    fails; then raises ServiceResumeError (unless raise_on_error=False). A
    failed lease stays live and due, so resume_expired_leases() retries it.
    """
    _ensure_schema(conn, config)
    where = "dag_id = %(dag_id)s AND run_id = %(run_id)s AND resumed_at IS NULL"
    params: dict[str, Any] = {"dag_id": dag_id, "run_id": run_id, "now": now}
    if names is not None:
        where += " AND service = ANY(%(names)s)"
        params["names"] = list(names)
    leases = _select(conn, config, where, params, order="lease_id DESC")
    if not leases:
        log.info("run %s/%s holds no paused services: nothing to resume", dag_id, run_id)
    return _end_all(
        conn,
        config,
        leases,
        lambda lease: f"{dag_id}/{run_id}",
        now,
        _factory(config, conn, factory),
        raise_on_error,
        f"run {dag_id}/{run_id}",
    )


def resume_expired_leases(
    conn,
    config: Config,
    now: datetime | None = None,
    *,
    factory: AdapterFactory | None = None,
    raise_on_error: bool = True,
) -> list[ServiceOutcome]:
    """Give back the services whose lease expired (their run died or overran). For the watchdog.

    A service is resumed only if no other live, unexpired lease holds it.
    Raises ServiceResumeError after trying all if any resume failed.
    """
    _ensure_schema(conn, config)
    leases = _select(
        conn,
        config,
        "resumed_at IS NULL AND lease_until <= coalesce(%(now)s::timestamptz, clock_timestamp())",
        {"now": now},
        order="lease_id DESC",
    )
    if leases:
        log.warning(
            "%d expired service lease(s): %s",
            len(leases),
            ", ".join(f"{lease['service']} held by {_owner(lease)} until {lease['lease_until']}" for lease in leases),
        )
    return _end_all(
        conn,
        config,
        leases,
        lambda lease: f"lease expired (held by {_owner(lease)})",
        now,
        _factory(config, conn, factory),
        raise_on_error,
        "expired leases",
    )


# --- inspection and renewal ---------------------------------------------------------------


def renew_leases(
    conn, config: Config, *, dag_id: str, run_id: str, minutes: int | None = None, now: datetime | None = None
) -> int:
    """Push the run's live leases to now + minutes (default: each service's lease_minutes). For long runs."""
    leases = _select(
        conn,
        config,
        "dag_id = %(dag_id)s AND run_id = %(run_id)s AND resumed_at IS NULL",
        {"dag_id": dag_id, "run_id": run_id},
    )
    for lease in leases:
        try:
            default = _service(config, lease["service"]).options.get("lease_minutes", DEFAULT_LEASE_MINUTES)
        except KeyError:
            default = DEFAULT_LEASE_MINUTES
        conn.execute(
            sql.SQL(
                "UPDATE {} SET lease_until = greatest(lease_until, coalesce(%(now)s::timestamptz, clock_timestamp()) "
                "+ make_interval(mins => %(minutes)s)) WHERE lease_id = %(id)s AND resumed_at IS NULL"
            ).format(_table(config)),
            {"now": now, "minutes": minutes or default, "id": lease["lease_id"]},
        )
    return len(leases)


def live_leases(conn, config: Config, now: datetime | None = None) -> list[dict]:
    """Every live lease (with `expired`), oldest first: for the watchdog's stale-pause report and responders."""
    _ensure_schema(conn, config)
    return _select(conn, config, "resumed_at IS NULL", {"now": now})


def service_status(conn, config: Config, name: str, *, factory: AdapterFactory | None = None) -> dict[str, Any]:
    """The service's current state as its adapter sees it, plus its live leases."""
    _ensure_schema(conn, config)
    service = _service(config, name)
    snap = _factory(config, conn, factory)(service).status()
    leases = _select(conn, config, "service = %(service)s AND resumed_at IS NULL", {"service": name})
    return {
        "service": name,
        "kind": service.kind,
        "paused": snap.paused,
        "detail": snap.detail,
        "state": snap.state,
        "leases": [
            {
                "lease_id": lease["lease_id"],
                "held_by": _owner(lease),
                "state": lease["state"],
                "lease_until": lease["lease_until"],
                "expired": lease["expired"],
            }
            for lease in leases
        ],
    }
