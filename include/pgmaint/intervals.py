"""Partition intervals and durations, aligned in a configured time zone.

Boundaries are computed on the wall clock of the configured zone (a daily
partition starts at local midnight, a weekly one on ISO Monday), so a day
across a DST change is 23 or 25 hours long, as users expect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import pendulum

from include.pgmaint.naming import default_format

# name -> (pendulum unit for add/subtract, approximate length in hours for comparisons)
_UNITS = {
    "hour": ("hours", 1),
    "day": ("days", 24),
    "week": ("weeks", 24 * 7),
    "month": ("months", 24 * 28),  # shortest month: used only to compare lengths
    "year": ("years", 24 * 365),
}

INTERVALS = ("1 hour", "1 day", "1 week", "1 month")

# Every duration in the configuration is "<count> <unit>[s]": one grammar, two vocabularies.
_COUNT_UNIT = re.compile(r"^\s*(\d+)\s+([a-z]+?)s?\s*$", re.IGNORECASE)
# Elapsed time (escalation timers): fixed lengths, so a timedelta.
_ELAPSED_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}


def _count_unit(text: str, units, example: str) -> tuple[int, str]:
    match = _COUNT_UNIT.match(text) if isinstance(text, str) else None
    if not match or match.group(2).lower() not in units:
        raise ValueError(f"{text!r} is not a duration like {example}")
    count, unit = int(match.group(1)), match.group(2).lower()
    if count < 1:
        raise ValueError(f"{text!r} must be at least 1 {unit}")
    return count, unit


def parse_elapsed(text: str) -> timedelta:
    """'24 hours', '30 minutes', '90 seconds', '2 days', '1 week' -> timedelta."""
    count, unit = _count_unit(text, _ELAPSED_SECONDS, "'24 hours', '30 minutes', '90 seconds'")
    return timedelta(seconds=count * _ELAPSED_SECONDS[unit])


@dataclass(frozen=True)
class Duration:
    """A calendar length such as `30 days` or `1 month`."""

    count: int
    unit: str  # one of _UNITS

    @classmethod
    def parse(cls, text: str) -> Duration:
        return cls(*_count_unit(text, _UNITS, "'30 days', '12 hours', '2 weeks', '3 months'"))

    @property
    def approx_hours(self) -> int:
        return self.count * _UNITS[self.unit][1]

    def before(self, moment: datetime, tz: str) -> datetime:
        """`moment` minus this duration, on the wall clock of `tz`."""
        local = pendulum.instance(moment).in_timezone(tz)
        return local.subtract(**{_UNITS[self.unit][0]: self.count})

    def after(self, moment: datetime, tz: str) -> datetime:
        local = pendulum.instance(moment).in_timezone(tz)
        return local.add(**{_UNITS[self.unit][0]: self.count})

    def __str__(self) -> str:
        return f"{self.count} {self.unit}{'s' if self.count != 1 else ''}"


@dataclass(frozen=True)
class PartitionInterval:
    """One of the four supported partition widths."""

    unit: str  # hour | day | week | month

    @classmethod
    def parse(cls, text: str) -> PartitionInterval:
        normalised = " ".join(str(text).lower().split()) if isinstance(text, str) else None
        if normalised not in INTERVALS:
            raise ValueError(f"{text!r} is not a supported interval; use one of {', '.join(INTERVALS)}")
        return cls(normalised.split()[1])

    @property
    def duration(self) -> Duration:
        return Duration(1, self.unit)

    def floor(self, moment: datetime, tz: str) -> pendulum.DateTime:
        """Start of the interval containing `moment`, in `tz`."""
        local = pendulum.instance(moment).in_timezone(tz)
        if self.unit == "week":
            return local.start_of("week")  # ISO weeks start on Monday
        return local.start_of(self.unit)

    def next(self, start: datetime, tz: str) -> pendulum.DateTime:
        local = pendulum.instance(start).in_timezone(tz)
        return local.add(**{_UNITS[self.unit][0]: 1})

    def suffix(self, start: datetime, tz: str) -> str:
        """The default name suffix (pg_partman 5): `_pYYYYMMDD`, hourly `_pYYYYMMDD_HH24MISS` (see naming)."""
        return default_format(self.unit).suffix(start, tz)

    def __str__(self) -> str:
        return f"1 {self.unit}"
