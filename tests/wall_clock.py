"""The wall clock for tests whose data must sit around the real "now".

Migrations and the watchdog plan around the wall clock (their window is "now"), so those tests
build data around today. Read the clock when the test runs, never at import: a suite that starts
before midnight UTC and reaches the test after it would otherwise build yesterday's data.
`tests/conftest.py` also keeps a test from starting in the last seconds of a UTC day, so Python's
date and the database's now() agree for the test's whole (short) life.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

# A test that starts this close to midnight UTC waits for the new day first.
MIDNIGHT_MARGIN = timedelta(seconds=90)


def wall_now() -> datetime:
    return datetime.now(timezone.utc)


def wall_today() -> datetime:
    """Midnight UTC of the current day."""
    return wall_now().replace(hour=0, minute=0, second=0, microsecond=0)


def seconds_to_midnight() -> float:
    return (wall_today() + timedelta(days=1) - wall_now()).total_seconds()


def clear_of_midnight(margin: timedelta = MIDNIGHT_MARGIN) -> None:
    """Return at once, or, when midnight UTC is less than `margin` away, just after it."""
    left = seconds_to_midnight()
    if left < margin.total_seconds():
        time.sleep(left + 1)
