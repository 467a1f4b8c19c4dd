"""Pure planning: catalog facts + a time -> what maintenance should do.

Set arithmetic over ranges: missing = desired - current, expired = current
whose upper bound is at or before now - retention. Nothing here touches a
database, so every rule is unit-tested with plain values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from include.pgmaint.catalog import WALL_CLOCK_KEY_TYPES, Partition, Range, StrayIdentity, TableFacts
from include.pgmaint.config import TableConfig
from include.pgmaint.naming import MAX_IDENTIFIER_BYTES, NameChoice, NameFormat, choose, default_format, fit_identifier  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class CreatePartition:
    name: str
    range: Range
    reuse_leftover: bool = False  # a standalone table of ours from an interrupted run


@dataclass(frozen=True)
class RetirePartition:
    name: str
    range: Range
    concurrently: bool  # DETACH ... CONCURRENTLY is impossible while a DEFAULT exists
    drop: bool  # False when the table keeps detached partitions


@dataclass(frozen=True)
class FinalizeDetach:
    name: str
    drop: bool


@dataclass(frozen=True)
class NeedsMigration:
    name: str
    range: Range


@dataclass(frozen=True)
class MaintenancePlan:
    table: str
    now: datetime
    creates: tuple[CreatePartition, ...] = ()
    retires: tuple[RetirePartition, ...] = ()
    finalizes: tuple[FinalizeDetach, ...] = ()
    stale_checks: tuple[str, ...] = ()  # our exclusion CHECKs left on the DEFAULT by a crash
    identity_repairs: tuple[StrayIdentity, ...] = ()  # identity sequences earlier versions copied onto partitions
    needs_migration: tuple[NeedsMigration, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def is_noop(self) -> bool:
        return not (self.creates or self.retires or self.finalizes or self.stale_checks or self.identity_repairs)


def timeline(facts: TableFacts, now: datetime, tz: str) -> tuple[datetime, str]:
    """The clock a table's ranges live on.

    A timestamptz key holds instants: plan on the real clock, aligned in `tz`.
    A `timestamp` or `date` key holds wall-clock values of `tz`: plan on that
    wall clock itself (represented as UTC), so a day is always 00:00 to 00:00
    and an hourly range never collapses when clocks fall back.
    """
    if facts.key_type in WALL_CLOCK_KEY_TYPES:
        return now.astimezone(ZoneInfo(tz)).replace(tzinfo=timezone.utc), "UTC"
    return now, tz


def partition_name(cfg: TableConfig, start: datetime, tz: str, name_format: NameFormat | None = None) -> str:
    """`<parent>_p<suffix>`; `name_format` from `name_choice` (None: the configured one or the default)."""
    return fit_identifier(cfg.table, (name_format or name_choice(cfg, None, tz).format).suffix(start, tz))


def name_choice(cfg: TableConfig, facts: TableFacts | None, tz: str) -> NameChoice:
    """The naming scheme for new partitions: `name_format`, else the existing partitions' (naming.choose).

    `tz` is the timeline's zone (see `timeline`): names are written on the clock the ranges live on.
    """
    existing = [(p.name, p.range.lower) for p in facts.partitions if p.range.lower is not None] if facts else []
    return choose(cfg.table, cfg.interval.unit, cfg.name_format, existing, tz)


def desired_ranges(
    cfg: TableConfig, now: datetime, tz: str, name_format: NameFormat | None = None
) -> list[tuple[str, Range]]:
    """The interval containing `now` and `premake` intervals after it."""
    fmt = name_format or name_choice(cfg, None, tz).format
    return [
        (partition_name(cfg, rng.lower, tz, fmt), rng) for rng in desired_bounds(cfg.interval, cfg.premake, now, tz)
    ]


@functools.lru_cache(maxsize=1024)  # one run plans many tables with the same interval, premake, time and zone
def desired_bounds(interval, premake: int, now: datetime, tz: str) -> tuple[Range, ...]:
    """The bounds of the interval holding `now` and of the `premake` intervals after it, in zone `tz` (no names)."""
    out = []
    start = interval.floor(now, tz)
    for _ in range(premake + 1):
        end = interval.next(start, tz)
        out.append(Range(to_utc(start), to_utc(end)))
        start = end
    return tuple(out)


@functools.lru_cache(maxsize=1024)
def _window_bounds(interval, start: datetime, end: datetime, tz: str) -> tuple[Range, ...]:
    out, lo = [], interval.floor(start, tz)
    while to_utc(lo) < end:
        hi = interval.next(lo, tz)
        out.append(Range(to_utc(lo), to_utc(hi)))
        lo = hi
    return tuple(out)


def managed_ranges(
    cfg: TableConfig, facts: TableFacts, now: datetime, tz: str, as_of: datetime | None = None
) -> tuple[tuple[Range, ...], list[Range]]:
    """(ranges that must have a partition, ranges `as_of` asked for that lie before the retention cutoff).

    The managed window is every interval from the one holding now - retention (tables kept
    forever: the oldest existing partition) to the current interval and `premake` after it,
    so one run after an outage closes every gap. `as_of` adds its own interval and the
    `premake` after it (loading history, backfills); retention is always judged on the wall
    clock (`now`), so an interval `as_of` asks for that is already past retention is never made.
    """
    now_t, tz_t = timeline(facts, now, tz)
    ahead = desired_bounds(cfg.interval, cfg.premake, now_t, tz_t)
    cutoff = retention_cutoff(cfg, now_t, tz_t)
    if cutoff is not None:
        start = cutoff
    else:
        oldest = [p.range.lower for p in facts.partitions if p.range.lower is not None]
        start = min(oldest + [ahead[0].lower])
    ranges = _window_bounds(cfg.interval, start, ahead[-1].upper, tz_t)
    too_old = []
    if as_of is not None:
        extra = set(ranges)
        for rng in desired_bounds(cfg.interval, cfg.premake, timeline(facts, as_of, tz)[0], tz_t):
            if cutoff is not None and rng.upper <= cutoff:
                too_old.append(rng)
            else:
                extra.add(rng)
        ranges = tuple(sorted(extra))
    return ranges, too_old


def missing_ranges(
    cfg: TableConfig, facts: TableFacts, now: datetime, tz: str, as_of: datetime | None = None
) -> list[tuple[str, Range]]:
    """Managed ranges no attached partition has (gaps included), with the names they would get;
    the ones whose DEFAULT rows must be probed."""
    current = {p.range for p in facts.partitions}
    tz_t = timeline(facts, now, tz)[1]
    fmt = name_choice(cfg, facts, tz_t).format
    return [
        (partition_name(cfg, rng.lower, tz_t, fmt), rng)
        for rng in managed_ranges(cfg, facts, now, tz, as_of)[0]
        if rng not in current
    ]


def retention_cutoff(cfg: TableConfig, now: datetime, tz: str) -> datetime | None:
    return to_utc(cfg.retention.before(now, tz)) if cfg.retention else None


def plan_maintenance(
    cfg: TableConfig,
    facts: TableFacts,
    now: datetime,
    tz: str,
    default_occupied: frozenset[Range] = frozenset(),
    missing: list[tuple[str, Range]] | None = None,
    as_of: datetime | None = None,
) -> MaintenancePlan:
    """Everything one maintenance run should do for one table.

    `default_occupied` holds the missing ranges for which the DEFAULT partition
    has rows (probed by the caller); those are reported, never created, because
    ATTACH would fail and the rows must be migrated first. `missing` is
    `missing_ranges(...)` when the caller already computed it. `as_of` (see
    `managed_ranges`) only adds partitions to create; retirement is always judged at `now`.
    """
    notes: list[str] = []
    if as_of is not None:
        too_old = managed_ranges(cfg, facts, now, tz, as_of)[1]
        if too_old:
            notes.append(
                f"as_of {as_of.isoformat()}: {len(too_old)} interval(s) from {too_old[0]} lie before the retention "
                f"cutoff (now - {cfg.retention}): not created, retirement would drop them"
            )
    creates, migrations = _plan_creates(cfg, facts, now, tz, default_occupied, missing, as_of, notes)

    keep = cfg.retention_keep_table
    cutoff = retention_cutoff(cfg, *timeline(facts, now, tz))
    retires = [
        RetirePartition(p.name, p.range, concurrently=facts.default is None, drop=not keep)
        for p in facts.partitions
        if not p.detach_pending and _expired(p, cutoff)
    ]
    finalizes = [
        FinalizeDetach(p.name, drop=not keep and _expired(p, cutoff)) for p in facts.partitions if p.detach_pending
    ]
    stale = tuple(c for c in (facts.default.our_checks if facts.default else ()) if c.startswith("pgmaint_excl"))
    if facts.default and facts.default.estimated_rows > 0:
        notes.append(f"DEFAULT partition {facts.default.name} holds about {facts.default.estimated_rows} row(s)")
    return MaintenancePlan(
        table=cfg.name,
        now=now,
        creates=tuple(creates),
        retires=tuple(retires),
        finalizes=tuple(finalizes),
        stale_checks=stale,
        identity_repairs=facts.stray_identities,
        needs_migration=tuple(migrations),
        notes=tuple(notes),
    )


def _plan_creates(
    cfg: TableConfig,
    facts: TableFacts,
    now: datetime,
    tz: str,
    default_occupied: frozenset[Range],
    missing: list[tuple[str, Range]] | None,
    as_of: datetime | None,
    notes: list[str],
) -> tuple[list[CreatePartition], list[NeedsMigration]]:
    """The partitions to create, and the missing intervals whose rows wait in the DEFAULT (why not: `notes`)."""
    creates: list[CreatePartition] = []
    planned_names: set[str] = set()
    migrations: list[NeedsMigration] = []
    existing_names = {p.name for p in facts.partitions} | ({facts.default.name} if facts.default else set())
    now_t = timeline(facts, now, tz)[0]
    for name, rng in missing if missing is not None else missing_ranges(cfg, facts, now, tz, as_of):
        clash = next((p for p in facts.partitions if p.range.overlaps(rng)), None)
        if clash is not None:
            if rng.upper > now_t or as_of is not None:  # a past interval inside a wider partition is no gap
                notes.append(f"{rng} overlaps existing partition {clash.name} {clash.range}; not created")
        elif rng in default_occupied:
            migrations.append(NeedsMigration(name, rng))
        elif name in existing_names or name in planned_names:
            notes.append(f"{rng}: the name {name} is already used by another partition; not created")
        else:
            planned_names.add(name)
            creates.append(CreatePartition(name, rng, reuse_leftover=name in facts.leftovers))

    if creates:
        naming = name_choice(cfg, facts, timeline(facts, now, tz)[1])
        if naming.mixed or naming.format != default_format(cfg.interval.unit):  # say so when it is not the usual
            notes.append(naming.describe())
    return creates, migrations


def _expired(partition: Partition, cutoff: datetime | None) -> bool:
    # Safety rule 8: only a partition whose upper bound is at or before the cutoff.
    return cutoff is not None and partition.range.upper is not None and partition.range.upper <= cutoff


def to_utc(moment: datetime) -> datetime:
    return datetime.fromtimestamp(moment.timestamp(), tz=timezone.utc)
