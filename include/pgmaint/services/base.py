"""What every service adapter offers: status, pause, resume.

An adapter is small and stateless apart from what it needs to reach its
service. The lease logic (include.pgmaint.services.leases) drives it:

1. ``status()`` takes a snapshot *before* the pause. The snapshot's ``state``
   is stored in the lease, so it can be restored even if the process dies
   during ``pause``.
2. ``pause(before)`` pauses what ``before`` shows running. It may be called
   again after a partial failure: it must be idempotent.
3. ``resume(previous)`` restores ``previous`` (a snapshot state from step 1):
   only what was running then is started again. Idempotent too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from psycopg import errors

from include.pgmaint.config import ServiceConfig

log = logging.getLogger("pgmaint.services")

T = TypeVar("T")


class ServiceError(RuntimeError):
    """A service could not be paused, resumed or inspected; the message says which and why."""


@dataclass(frozen=True)
class Snapshot:
    paused: bool | None  # True: fully paused; False: running (at least in part); None: cannot tell
    state: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable; what resume() restores
    detail: str = ""  # for people: what was seen


@dataclass(frozen=True)
class Actor:
    """Who acts on a service, and why (written where the service can record it, e.g. service_flags)."""

    who: str
    reason: str | None = None


class Adapter(Protocol):
    service: ServiceConfig

    def status(self) -> Snapshot: ...

    def pause(self, before: Snapshot, actor: Actor) -> None: ...

    def resume(self, previous: dict[str, Any], actor: Actor) -> None: ...


def retry_lock_timeouts(fn: Callable[[], T], what: str, total_seconds: float = 10.0) -> T:
    """Run a short statement sequence; retry it while it only fails on lock_timeout (safety rule 1)."""

    deadline = time.monotonic() + total_seconds
    delay = 0.05
    while True:
        try:
            return fn()
        except errors.LockNotAvailable as exc:
            if time.monotonic() + delay > deadline:
                raise ServiceError(
                    f"{what}: still blocked by another session's lock after {total_seconds:.0f}s ({exc})"
                ) from exc
            log.info("%s: lock busy, retrying in %.2fs", what, delay)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def extension_schema(conn, extension: str) -> str | None:
    row = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = %s",
        [extension],
    ).fetchone()
    return row[0] if row else None
