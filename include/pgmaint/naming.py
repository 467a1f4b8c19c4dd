"""Partition names: the schemes pg_partman writes, and which one a table already uses.

A partition is named `<parent>_p<suffix>`, the parent's name shortened so the whole name fits
PostgreSQL's 63 bytes (as pg_partman does). The suffix is the partition's lower bound written
with one of these formats (PostgreSQL `to_char` spelling, as pg_partman stores it in
`part_config.datetime_string`):

| format                | example suffix     | written by                                   |
|-----------------------|--------------------|----------------------------------------------|
| `YYYYMMDD`            | `_p20261127`       | pg_partman 5, any interval of a day or more  |
| `YYYYMMDD_HH24MISS`   | `_p20261127_140000`| pg_partman 5, intervals under a day          |
| `YYYY_MM_DD`          | `_p2026_11_27`     | pg_partman 4, daily                          |
| `YYYY_MM_DD_HH24MI`   | `_p2026_11_27_1400`| pg_partman 4, hourly                         |
| `YYYY_MM_DD_HH24MISS` | `_p2026_11_27_140000` | pg_partman 4 with a date_trunc_interval under a day |
| `IYYY"w"IW`           | `_p2026w48`        | pg_partman 4, weekly (ISO year and week)     |
| `YYYY_MM`             | `_p2026_11`        | pg_partman 4, monthly                        |
| `YYYYMM`              | `_p202611`         | monthly, compact                             |

New partitions follow, in this order: the table's `name_format` setting; else the scheme the
table's existing partitions use (`infer`); else pg_partman 5's (`YYYYMMDD`, hourly
`YYYYMMDD_HH24MISS`). Names never decide what a partition *is*: partitions are recognised by
their bounds. A name is counted as using a format only if it is exactly the name that format
gives the partition's own lower bound (so `events_p2026_11_27` holding 28 November is not).

The hour repeated when clocks fall back gets `_2` appended in every hourly format, so it has a
name of its own.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

MAX_IDENTIFIER_BYTES = 63
_RANK = {"hour": 0, "day": 1, "week": 2, "month": 3}


@dataclass(frozen=True)
class NameFormat:
    pattern: str  # to_char spelling, the value of the `name_format` setting
    strftime: str
    finest: str  # the finest unit it tells apart: hour | day | week | month
    shape: re.Pattern  # what the end of a name written with it looks like

    def suffix(self, start: datetime, tz: str) -> str:
        local = start.astimezone(ZoneInfo(tz))
        text = "_p" + local.strftime(self.strftime)
        if self.finest == "hour" and local.fold:
            text += "_2"
        return text

    def names_uniquely(self, unit: str) -> bool:
        """Whether two different `unit` intervals always get different suffixes."""
        if self.finest == "week":  # an ISO week names weeks only: two days of one week would clash
            return unit == "week"
        return _RANK[self.finest] <= _RANK[unit]


def _fmt(pattern: str, strftime: str, finest: str, shape: str) -> NameFormat:
    return NameFormat(
        pattern, strftime, finest, re.compile(r"_p" + shape + ("(?:_2)?" if finest == "hour" else "") + r"\Z")
    )


FORMATS: dict[str, NameFormat] = {
    f.pattern: f
    for f in (
        _fmt("YYYYMMDD", "%Y%m%d", "day", r"\d{8}"),
        _fmt("YYYYMMDD_HH24MISS", "%Y%m%d_%H%M%S", "hour", r"\d{8}_\d{6}"),
        _fmt("YYYY_MM_DD", "%Y_%m_%d", "day", r"\d{4}_\d{2}_\d{2}"),
        _fmt("YYYY_MM_DD_HH24MI", "%Y_%m_%d_%H%M", "hour", r"\d{4}_\d{2}_\d{2}_\d{4}"),
        _fmt("YYYY_MM_DD_HH24MISS", "%Y_%m_%d_%H%M%S", "hour", r"\d{4}_\d{2}_\d{2}_\d{6}"),
        _fmt('IYYY"w"IW', "%Gw%V", "week", r"\d{4}w\d{2}"),
        _fmt("YYYY_MM", "%Y_%m", "month", r"\d{4}_\d{2}"),
        _fmt("YYYYMM", "%Y%m", "month", r"\d{6}"),
    )
}


def default_format(unit: str) -> NameFormat:
    """pg_partman 5's: `YYYYMMDD`, and `YYYYMMDD_HH24MISS` under a day (the project's contract for new tables)."""
    return FORMATS["YYYYMMDD_HH24MISS" if unit == "hour" else "YYYYMMDD"]


def formats_for(unit: str) -> list[str]:
    return [p for p, f in FORMATS.items() if f.names_uniquely(unit)]


def check_format(pattern: str, unit: str) -> NameFormat:
    """The format called `pattern`, if it can name `1 <unit>` partitions; ValueError saying why not."""
    fmt = FORMATS.get(pattern)
    if fmt is None:
        raise ValueError(f"{pattern!r} is not a known partition name format; use one of {', '.join(formats_for(unit))}")
    if not fmt.names_uniquely(unit):
        raise ValueError(
            f"{pattern!r} would give two 1 {unit} partitions the same name; "
            f"for 1 {unit} use one of {', '.join(formats_for(unit))}"
        )
    return fmt


def fit_identifier(base: str, suffix: str) -> str:
    """`base` + `suffix`, `base` shortened so the name stays within PostgreSQL's 63 bytes (as pg_partman does)."""
    return base.encode()[: MAX_IDENTIFIER_BYTES - len(suffix.encode())].decode(errors="ignore") + suffix


@dataclass(frozen=True)
class NameChoice:
    format: NameFormat
    source: str  # "configured" | "inferred" | "default"
    counts: tuple[tuple[str, int], ...] = ()  # inferred: (format, partitions named with it), most used first
    considered: int = 0  # inferred: partitions with a bound looked at

    @property
    def mixed(self) -> bool:
        return len(self.counts) > 1

    def describe(self) -> str:
        if self.source == "configured":
            return f"new partition names use the configured name_format {self.format.pattern}"
        if self.source == "default":
            return f"new partition names use the default {self.format.pattern} (no existing partition follows a known scheme)"
        used = ", ".join(f"{p}: {n}" for p, n in self.counts)
        text = f"new partition names follow {self.format.pattern}, the scheme of the existing partitions ({used} of {self.considered})"
        if self.mixed:
            text += "; the names are mixed: the most used scheme wins (ties: the newest partition's); set name_format to choose"
        return text


def choose(
    table: str, unit: str, configured: str | None, partitions: Iterable[tuple[str, datetime]], tz: str
) -> NameChoice:
    """Which format new partitions of `table` get. `partitions`: (name, lower bound) of the existing ones, oldest first.

    Inference: every format that can name `unit` intervals is tried on every partition; a
    partition votes for the format that gives exactly its name from its lower bound. The format
    with the most votes wins; a tie goes to the format of the newest voting partition. No votes:
    the default.
    """
    if configured is not None:
        return NameChoice(FORMATS[configured], "configured")
    return _infer(table, unit, tuple(partitions), tz)


@functools.lru_cache(maxsize=4096)  # one run plans each table several times with the same partitions
def _infer(table: str, unit: str, partitions: tuple[tuple[str, datetime], ...], tz: str) -> NameChoice:
    shapes, candidates = _shapes(unit)
    votes: Counter[str] = Counter()
    newest: dict[str, int] = {}
    for position, (name, lower) in enumerate(partitions):
        match = shapes.search(name)  # the shapes exclude each other: at most one format can have written it
        if match is None:
            continue
        pattern = candidates[match.lastindex - 1]
        if fit_identifier(table, _suffix(pattern, lower, tz)) == name:
            votes[pattern] += 1
            newest[pattern] = position
    if not votes:
        return NameChoice(default_format(unit), "default", considered=len(partitions))
    ranked = sorted(votes, key=lambda p: (votes[p], newest[p]), reverse=True)
    return NameChoice(FORMATS[ranked[0]], "inferred", tuple((p, votes[p]) for p in ranked), len(partitions))


@functools.lru_cache(maxsize=8)
def _shapes(unit: str) -> tuple[re.Pattern, list[str]]:
    """One regex telling which candidate format's shape a name ends with (group i+1 = candidate i)."""
    candidates = formats_for(unit)
    return re.compile("|".join(f"({FORMATS[p].shape.pattern})" for p in candidates)), candidates


@functools.lru_cache(maxsize=65536)  # tables share their partitions' bounds
def _suffix(pattern: str, start: datetime, tz: str) -> str:
    return FORMATS[pattern].suffix(start, tz)


__all__ = [
    "FORMATS",
    "NameChoice",
    "NameFormat",
    "check_format",
    "choose",
    "default_format",
    "fit_identifier",
    "formats_for",
]
