"""The pure maintenance plan: catalog facts (built by hand) + a frozen "now" -> what to do."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from include.pgmaint.catalog import Partition, Range, TableFacts, parse_bound
from include.pgmaint.config import TableConfig, parse_config
from include.pgmaint.plan import (
    FinalizeDetach,
    MaintenancePlan,
    NeedsMigration,
    RetirePartition,
    desired_ranges,
    partition_name,
    plan_maintenance,
    retention_cutoff,
)

UTC = "UTC"
CHICAGO = "America/Chicago"
TSTZ = "timestamp with time zone"


# --- builders --------------------------------------------------------------------------------


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def cfg(
    interval: str = "1 day",
    premake: int = 3,
    retention: str | None = None,
    keep: bool = False,
    name: str = "public.events",
    tz: str = UTC,
) -> TableConfig:
    table = {"name": name, "partition_key": "created_at", "interval": interval, "premake": premake}
    if retention is not None:
        table["retention"] = retention
    if keep:
        table["retention_keep_table"] = True
    return parse_config({"timezone": tz, "tables": [table]}).tables[0]


def part(name: str, lower: datetime | None, upper: datetime | None, **kw) -> Partition:
    return Partition("public", name, Range(lower, upper), **kw)


def default(rows: int = 0, checks: tuple[str, ...] = ()) -> Partition:
    return Partition("public", "events_default", None, estimated_rows=rows, our_checks=checks)


def facts(
    *partitions: Partition,
    default: Partition | None = None,
    leftovers: tuple[str, ...] = (),
    table: str = "events",
    key_type: str = TSTZ,
) -> TableFacts:
    ordered = sorted(
        partitions,
        key=lambda p: (p.range.lower is not None, p.range.lower or datetime.min.replace(tzinfo=timezone.utc)),
    )
    return TableFacts(f"public.{table}", "public", table, "created_at", key_type, tuple(ordered), default, leftovers)


def daily(day: datetime, name: str | None = None, **kw) -> Partition:
    return part(name or f"events_p{day:%Y%m%d}", day, day + timedelta(days=1), **kw)


def created(plan: MaintenancePlan) -> list[tuple[str, Range]]:
    return [(c.name, c.range) for c in plan.creates]


def apply(f: TableFacts, plan: MaintenancePlan) -> TableFacts:
    """The facts after executing `plan` (what the catalog would show next run)."""
    retired = {r.name for r in plan.retires} | {fz.name for fz in plan.finalizes}
    kept = [p for p in f.partitions if p.name not in retired]
    new = [Partition(f.schema, c.name, c.range) for c in plan.creates]
    d = (
        replace(f.default, our_checks=tuple(c for c in f.default.our_checks if c not in plan.stale_checks))
        if f.default
        else None
    )
    return facts(*kept, *new, default=d, table=f.table, key_type=f.key_type)


NOW = utc(2026, 11, 23, 10, 17, 42)  # a Monday


# --- empty table: current + premake ranges --------------------------------------------------------


def test_empty_table_creates_current_and_premake_daily():
    plan = plan_maintenance(cfg(premake=3), facts(), NOW, UTC)
    assert created(plan) == [
        ("events_p20261123", Range(utc(2026, 11, 23), utc(2026, 11, 24))),
        ("events_p20261124", Range(utc(2026, 11, 24), utc(2026, 11, 25))),
        ("events_p20261125", Range(utc(2026, 11, 25), utc(2026, 11, 26))),
        ("events_p20261126", Range(utc(2026, 11, 26), utc(2026, 11, 27))),
    ]
    assert all(not c.reuse_leftover for c in plan.creates)
    assert plan.retires == plan.finalizes == plan.stale_checks == plan.needs_migration == ()
    assert plan.table == "public.events" and plan.now == NOW
    assert not plan.is_noop


@pytest.mark.parametrize(
    "interval, premake, expected",
    [
        (
            "1 hour",
            2,
            [
                ("events_p20261123_100000", utc(2026, 11, 23, 10), utc(2026, 11, 23, 11)),
                ("events_p20261123_110000", utc(2026, 11, 23, 11), utc(2026, 11, 23, 12)),
                ("events_p20261123_120000", utc(2026, 11, 23, 12), utc(2026, 11, 23, 13)),
            ],
        ),
        (
            "1 day",
            1,
            [
                ("events_p20261123", utc(2026, 11, 23), utc(2026, 11, 24)),
                ("events_p20261124", utc(2026, 11, 24), utc(2026, 11, 25)),
            ],
        ),
        (
            "1 week",
            2,
            [  # ISO weeks: Mondays
                ("events_p20261123", utc(2026, 11, 23), utc(2026, 11, 30)),
                ("events_p20261130", utc(2026, 11, 30), utc(2026, 12, 7)),
                ("events_p20261207", utc(2026, 12, 7), utc(2026, 12, 14)),
            ],
        ),
        (
            "1 month",
            2,
            [
                ("events_p20261101", utc(2026, 11, 1), utc(2026, 12, 1)),
                ("events_p20261201", utc(2026, 12, 1), utc(2027, 1, 1)),
                ("events_p20270101", utc(2027, 1, 1), utc(2027, 2, 1)),
            ],
        ),
    ],
)
def test_each_interval_on_an_empty_table(interval, premake, expected):
    plan = plan_maintenance(cfg(interval=interval, premake=premake), facts(), NOW, UTC)
    assert created(plan) == [(n, Range(lo, hi)) for n, lo, hi in expected]


def test_weekly_mid_week_starts_on_the_previous_monday():
    plan = plan_maintenance(cfg(interval="1 week", premake=1), facts(), utc(2026, 11, 29, 23, 59), UTC)  # Sunday
    assert created(plan)[0] == ("events_p20261123", Range(utc(2026, 11, 23), utc(2026, 11, 30)))


def test_ranges_are_contiguous_and_first_contains_now():
    for interval in ("1 hour", "1 day", "1 week", "1 month"):
        for tz in (UTC, CHICAGO, "Asia/Kolkata"):
            ranges = [r for _, r in desired_ranges(cfg(interval=interval, premake=5), NOW, tz)]
            assert len(ranges) == 6
            assert ranges[0].lower <= NOW < ranges[0].upper
            assert all(a.upper == b.lower for a, b in zip(ranges, ranges[1:]))
            assert all(r.lower.utcoffset() == timedelta(0) for r in ranges)


# --- a non-UTC zone ------------------------------------------------------------------------------


def test_chicago_daily_bounds_at_local_midnight_across_spring_forward():
    now = utc(2026, 3, 7, 18)  # noon CST, the day before DST starts
    plan = plan_maintenance(cfg(premake=2, tz=CHICAGO), facts(), now, CHICAGO)
    assert created(plan) == [
        ("events_p20260307", Range(utc(2026, 3, 7, 6), utc(2026, 3, 8, 6))),
        ("events_p20260308", Range(utc(2026, 3, 8, 6), utc(2026, 3, 9, 5))),  # 23 h
        ("events_p20260309", Range(utc(2026, 3, 9, 5), utc(2026, 3, 10, 5))),
    ]


def test_chicago_daily_bounds_at_local_midnight_across_fall_back():
    now = utc(2026, 10, 31, 17)  # noon CDT
    plan = plan_maintenance(cfg(premake=2, tz=CHICAGO), facts(), now, CHICAGO)
    assert created(plan) == [
        ("events_p20261031", Range(utc(2026, 10, 31, 5), utc(2026, 11, 1, 5))),
        ("events_p20261101", Range(utc(2026, 11, 1, 5), utc(2026, 11, 2, 6))),  # 25 h
        ("events_p20261102", Range(utc(2026, 11, 2, 6), utc(2026, 11, 3, 6))),
    ]


def test_chicago_names_use_the_local_date():
    now = utc(2026, 5, 17, 3)  # 22:00 CDT on the 16th
    plan = plan_maintenance(cfg(premake=1, tz=CHICAGO), facts(), now, CHICAGO)
    assert created(plan)[0] == ("events_p20260516", Range(utc(2026, 5, 16, 5), utc(2026, 5, 17, 5)))


def test_now_given_in_another_zone_gives_the_same_plan():
    local_now = NOW.astimezone(ZoneInfo("Asia/Tokyo"))
    c = cfg(premake=3, tz=CHICAGO)
    assert created(plan_maintenance(c, facts(), local_now, CHICAGO)) == created(
        plan_maintenance(c, facts(), NOW, CHICAGO)
    )


def test_chicago_hourly_across_fall_back_has_unique_names():
    # 00:30 CDT; the next hours are 01:00 CDT, 01:00 CST, 02:00 CST: two distinct partitions
    # would both be named ..._p20261101_010000, and the second CREATE TABLE would fail.
    now = utc(2026, 11, 1, 5, 30)
    plan = plan_maintenance(cfg(interval="1 hour", premake=3, tz=CHICAGO), facts(), now, CHICAGO)
    assert [c.range.lower for c in plan.creates] == [utc(2026, 11, 1, h) for h in (5, 6, 7, 8)]
    names = [c.name for c in plan.creates]
    assert len(set(names)) == len(names), names


def test_chicago_hourly_across_spring_forward_skips_the_missing_hour():
    now = utc(2026, 3, 8, 7, 10)  # 01:10 CST
    plan = plan_maintenance(cfg(interval="1 hour", premake=2, tz=CHICAGO), facts(), now, CHICAGO)
    assert created(plan) == [
        ("events_p20260308_010000", Range(utc(2026, 3, 8, 7), utc(2026, 3, 8, 8))),
        ("events_p20260308_030000", Range(utc(2026, 3, 8, 8), utc(2026, 3, 8, 9))),
        ("events_p20260308_040000", Range(utc(2026, 3, 8, 9), utc(2026, 3, 8, 10))),
    ]


# --- adoption by bounds ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["weird_name", "events_p2026_11_24", "EVENTS Today", "events_today_default"])
def test_existing_partition_adopted_by_bounds_whatever_its_name(name):
    # (A name in a known scheme that matches its own bound, like events_p2026_11_23 for the 23rd,
    # sets the scheme of new names: see test_naming.py. events_p2026_11_24 holding the 23rd does not.)
    today = daily(utc(2026, 11, 23), name=name)
    plan = plan_maintenance(cfg(premake=2), facts(today), NOW, UTC)
    assert created(plan) == [
        ("events_p20261124", Range(utc(2026, 11, 24), utc(2026, 11, 25))),
        ("events_p20261125", Range(utc(2026, 11, 25), utc(2026, 11, 26))),
    ]
    assert plan.notes == ()


def test_adopted_partition_whose_name_is_a_future_planned_name():
    # Today's range lives in a partition that is (mis)named after tomorrow: today is adopted,
    # tomorrow's range is free but its name is taken, so it is reported, not created.
    today = daily(utc(2026, 11, 23), name="events_p20261124")
    plan = plan_maintenance(cfg(premake=2), facts(today), NOW, UTC)
    assert [n for n, _ in created(plan)] == ["events_p20261125"]
    assert any("events_p20261124" in n and "already used" in n for n in plan.notes)


def test_partition_adopted_by_bounds_parsed_from_the_catalog():
    # The same instant written as PostgreSQL prints it for a timestamptz bound.
    rng = parse_bound("FOR VALUES FROM ('2026-11-23 00:00:00+00') TO ('2026-11-24 00:00:00+00')", TSTZ, UTC)
    plan = plan_maintenance(cfg(premake=1), facts(Partition("public", "whatever", rng)), NOW, UTC)
    assert [n for n, _ in created(plan)] == ["events_p20261124"]


def test_date_key_bounds_in_chicago_are_adopted():
    rng = parse_bound("FOR VALUES FROM ('2026-11-23') TO ('2026-11-24')", "date", CHICAGO)
    assert rng == Range(utc(2026, 11, 23), utc(2026, 11, 24))  # on the wall clock (plan.timeline)
    plan = plan_maintenance(
        cfg(premake=1, tz=CHICAGO), facts(Partition("public", "x", rng), key_type="date"), NOW, CHICAGO
    )
    assert [n for n, _ in created(plan)] == ["events_p20261124"]


def test_fully_covered_table_creates_nothing():
    existing = [daily(utc(2026, 11, 23) + timedelta(days=i)) for i in range(4)]
    plan = plan_maintenance(cfg(premake=3), facts(*existing), NOW, UTC)
    assert plan.is_noop and plan.notes == ()


def test_wider_existing_partition_is_not_split_or_overlapped():
    monthly = part("events_m202611", utc(2026, 11, 1), utc(2026, 12, 1))
    now = utc(2026, 11, 28, 9)
    plan = plan_maintenance(cfg(premake=4), facts(monthly), now, UTC)
    assert created(plan) == [
        ("events_p20261201", Range(utc(2026, 12, 1), utc(2026, 12, 2))),
        ("events_p20261202", Range(utc(2026, 12, 2), utc(2026, 12, 3))),
    ]
    overlap_notes = [n for n in plan.notes if "overlaps existing partition events_m202611" in n]
    assert len(overlap_notes) == 3  # 28th, 29th, 30th


def test_misaligned_existing_partition_blocks_the_ranges_it_touches():
    odd = part("events_noon", utc(2026, 11, 23, 12), utc(2026, 11, 24, 12))
    plan = plan_maintenance(cfg(premake=3), facts(odd), NOW, UTC)
    assert [r.lower for _, r in created(plan)] == [utc(2026, 11, 25), utc(2026, 11, 26)]
    assert len([n for n in plan.notes if "events_noon" in n]) == 2
    for _, rng in created(plan):
        assert not rng.overlaps(odd.range)


def test_maxvalue_partition_blocks_creates_and_is_never_retired():
    catch_all = part("events_future", utc(2020, 1, 1), None)
    plan = plan_maintenance(cfg(premake=2, retention="1 day"), facts(catch_all), NOW, UTC)
    assert plan.creates == ()
    assert plan.retires == ()
    assert len(plan.notes) == 3


def test_name_taken_by_a_partition_with_other_bounds_is_not_reused():
    squatter = part("events_p20261125", utc(2020, 1, 1), utc(2020, 1, 2))
    plan = plan_maintenance(cfg(premake=3, retention="1 day"), facts(squatter), NOW, UTC)
    assert "events_p20261125" not in [n for n, _ in created(plan)]
    assert [n for n, _ in created(plan)] == [
        "events_p20261122",
        "events_p20261123",
        "events_p20261124",
        "events_p20261126",
    ]
    assert any("events_p20261125" in n and "already used" in n for n in plan.notes)


def test_name_taken_by_the_default_partition_is_not_reused():
    d = Partition("public", "events_p20261123", None)
    plan = plan_maintenance(cfg(premake=1), facts(default=d), NOW, UTC)
    assert [n for n, _ in created(plan)] == ["events_p20261124"]


# --- DEFAULT rows: migrate, never create -------------------------------------------------------------


def test_range_with_rows_in_default_needs_migration_not_creation():
    today = Range(utc(2026, 11, 23), utc(2026, 11, 24))
    plan = plan_maintenance(
        cfg(premake=2), facts(default=default(rows=500)), NOW, UTC, default_occupied=frozenset({today})
    )
    assert plan.needs_migration == (NeedsMigration("events_p20261123", today),)
    assert today not in [r for _, r in created(plan)]
    assert [n for n, _ in created(plan)] == ["events_p20261124", "events_p20261125"]
    assert any("events_default" in n and "500" in n for n in plan.notes)


def test_only_needs_migration_is_a_noop_for_maintenance():
    existing = [daily(utc(2026, 11, 24)), daily(utc(2026, 11, 25))]
    today = Range(utc(2026, 11, 23), utc(2026, 11, 24))
    plan = plan_maintenance(
        cfg(premake=2), facts(*existing, default=default(rows=3)), NOW, UTC, default_occupied=frozenset({today})
    )
    assert plan.creates == () and plan.needs_migration
    assert plan.is_noop


# --- retention --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "now, retired",
    [
        (utc(2026, 11, 23, 0, 0, 0), True),  # cutoff 2026-10-24 00:00 == upper bound: expired
        (utc(2026, 11, 22, 23, 59, 59), False),  # upper bound one second after the cutoff: kept
        (utc(2026, 11, 23, 0, 0, 1), True),
    ],
)
def test_retention_boundary(now, retired):
    old = daily(utc(2026, 10, 23))  # upper bound 2026-10-24 00:00
    plan = plan_maintenance(cfg(premake=1, retention="30 days"), facts(old), now, UTC)
    assert retention_cutoff(cfg(retention="30 days"), now, UTC) == now - timedelta(days=30)
    assert [r.name for r in plan.retires] == (["events_p20261023"] if retired else [])


def test_retention_upper_bound_equal_vs_one_second_later():
    now = NOW
    cutoff = now - timedelta(days=30)
    at_cutoff = part("a", cutoff - timedelta(days=1), cutoff)
    just_inside = part("b", cutoff - timedelta(days=1, seconds=-1), cutoff + timedelta(seconds=1))
    plan = plan_maintenance(cfg(premake=1, retention="30 days"), facts(at_cutoff, just_inside), now, UTC)
    assert [r.name for r in plan.retires] == ["a"]


def test_retention_keeps_everything_inside_the_window():
    existing = [daily(utc(2026, 10, 1) + timedelta(days=i)) for i in range(60)]
    plan = plan_maintenance(cfg(premake=3, retention="30 days"), facts(*existing), NOW, UTC)
    cutoff = NOW - timedelta(days=30)
    assert plan.retires
    assert all(r.range.upper <= cutoff for r in plan.retires)
    kept = [p for p in existing if p.name not in {r.name for r in plan.retires}]
    assert all(p.range.upper > cutoff for p in kept)
    assert [r.name for r in plan.retires][-1] == "events_p20261023"


def test_retention_in_months_uses_calendar_months():
    now = utc(2026, 3, 31, 12)  # minus 1 month -> 2026-02-28 12:00
    existing = [daily(utc(2026, 2, 27)), daily(utc(2026, 2, 28))]
    plan = plan_maintenance(cfg(premake=1, retention="1 month"), facts(*existing), now, UTC)
    assert retention_cutoff(cfg(retention="1 month"), now, UTC) == utc(2026, 2, 28, 12)
    assert [r.name for r in plan.retires] == ["events_p20260227"]


def test_monthly_partitions_with_month_retention():
    now = utc(2026, 3, 31, 12)  # minus 2 months -> 2026-01-31 12:00
    existing = [
        part(f"m{m}", lo, hi)
        for m, lo, hi in [
            (12, utc(2025, 12, 1), utc(2026, 1, 1)),
            (1, utc(2026, 1, 1), utc(2026, 2, 1)),
            (2, utc(2026, 2, 1), utc(2026, 3, 1)),
        ]
    ]
    plan = plan_maintenance(cfg(interval="1 month", premake=1, retention="2 months"), facts(*existing), now, UTC)
    assert [r.name for r in plan.retires] == ["m12"]


def test_retention_on_the_local_wall_clock():
    now = utc(2026, 3, 9, 6)  # 01:00 CDT; minus 1 day = 2026-03-08 01:00 CST = 07:00 UTC
    c = cfg(premake=1, retention="1 day", tz=CHICAGO)
    assert retention_cutoff(c, now, CHICAGO) == utc(2026, 3, 8, 7)
    old = part("events_p20260307", utc(2026, 3, 7, 6), utc(2026, 3, 8, 6))
    plan = plan_maintenance(c, facts(old), now, CHICAGO)
    assert [r.name for r in plan.retires] == ["events_p20260307"]


def test_no_retention_retires_nothing():
    ancient = [daily(utc(2001, 1, 1)), part("events_old", None, utc(2002, 1, 1))]
    plan = plan_maintenance(cfg(premake=1), facts(*ancient), NOW, UTC)
    assert retention_cutoff(cfg(), NOW, UTC) is None
    assert plan.retires == () and plan.finalizes == ()


def test_minvalue_lower_bound_with_old_upper_is_retired():
    history = part("events_history", None, utc(2020, 1, 1))
    plan = plan_maintenance(cfg(premake=1, retention="30 days"), facts(history), NOW, UTC)
    assert plan.retires == (
        RetirePartition("events_history", Range(None, utc(2020, 1, 1)), concurrently=True, drop=True),
    )


def test_minvalue_partition_reaching_into_the_window_is_kept():
    history = part("events_history", None, utc(2026, 11, 1))
    plan = plan_maintenance(cfg(premake=1, retention="30 days"), facts(history), NOW, UTC)
    assert plan.retires == ()


def test_maxvalue_partition_with_old_lower_bound_is_never_retired():
    tail = part("events_tail", utc(2000, 1, 1), None)
    plan = plan_maintenance(cfg(premake=1, retention="1 day"), facts(tail), NOW, UTC)
    assert plan.retires == ()


@pytest.mark.parametrize("with_default, concurrently", [(True, False), (False, True)])
def test_retire_concurrently_only_without_default(with_default, concurrently):
    old = daily(utc(2026, 9, 1))
    f = facts(old, default=default() if with_default else None)
    plan = plan_maintenance(cfg(premake=1, retention="30 days"), f, NOW, UTC)
    assert plan.retires == (RetirePartition("events_p20260901", old.range, concurrently=concurrently, drop=True),)


def test_retention_keep_table_detaches_without_drop():
    old = daily(utc(2026, 9, 1))
    plan = plan_maintenance(cfg(premake=1, retention="30 days", keep=True), facts(old), NOW, UTC)
    assert plan.retires == (RetirePartition("events_p20260901", old.range, concurrently=True, drop=False),)


# --- detach pending (interrupted DETACH CONCURRENTLY) -------------------------------------------


@pytest.mark.parametrize(
    "start, keep, drop",
    [
        (utc(2026, 9, 1), False, True),  # expired, not kept -> finalize and drop
        (utc(2026, 9, 1), True, False),  # expired, kept -> finalize only
        (utc(2026, 11, 20), False, False),  # not expired -> finalize only (someone else detached it)
    ],
)
def test_detach_pending_is_finalized(start, keep, drop):
    pending = daily(start, detach_pending=True)
    plan = plan_maintenance(cfg(premake=1, retention="30 days", keep=keep), facts(pending), NOW, UTC)
    assert plan.finalizes == (FinalizeDetach(pending.name, drop=drop),)
    assert plan.retires == ()
    assert not plan.is_noop


def test_detach_pending_without_retention_is_finalized_and_kept():
    pending = daily(utc(2026, 9, 1), detach_pending=True)
    plan = plan_maintenance(cfg(premake=1), facts(pending), NOW, UTC)
    assert plan.finalizes == (FinalizeDetach(pending.name, drop=False),)


# --- leftovers and stale checks from interrupted runs --------------------------------------------


def test_leftover_standalone_table_with_the_planned_name_is_reused():
    plan = plan_maintenance(cfg(premake=2), facts(leftovers=("events_p20261124", "events_p20200101")), NOW, UTC)
    assert [(c.name, c.reuse_leftover) for c in plan.creates] == [
        ("events_p20261123", False),
        ("events_p20261124", True),
        ("events_p20261125", False),
    ]


def test_stale_exclusion_check_on_default_is_dropped():
    d = default(checks=("pgmaint_bound", "pgmaint_excl", "pgmaint_other"))
    existing = [daily(utc(2026, 11, 23) + timedelta(days=i)) for i in range(2)]
    plan = plan_maintenance(cfg(premake=1), facts(*existing, default=d), NOW, UTC)
    assert plan.stale_checks == ("pgmaint_excl",)
    assert plan.creates == ()
    assert not plan.is_noop


def test_no_default_no_stale_checks():
    plan = plan_maintenance(cfg(premake=1), facts(), NOW, UTC)
    assert plan.stale_checks == ()


# --- names ---------------------------------------------------------------------------------------------


def test_long_table_names_are_truncated_to_63_bytes():
    long = "t" * 63
    c = cfg(name=f"public.{long}")
    name = partition_name(c, NOW, UTC)
    assert len(name.encode()) == 63
    assert name == "t" * 53 + "_p20261123"
    hourly = partition_name(cfg(name=f"public.{long}", interval="1 hour"), utc(2026, 11, 23, 10), UTC)
    assert hourly == "t" * 46 + "_p20261123_100000"
    assert len(hourly.encode()) == 63


def test_multibyte_table_names_are_truncated_on_a_character_boundary():
    c = cfg(name='public."' + "é" * 31 + '"')  # 62 bytes
    name = partition_name(c, NOW, UTC)
    assert len(name.encode()) <= 63
    assert name == "é" * 26 + "_p20261123"  # 53 bytes allowed: the 27th é would be cut in half


# --- a second plan after applying the first is a no-op -------------------------------------------------


SCENARIOS = {
    "utc-daily-with-default-and-retention": (
        cfg(premake=4, retention="30 days"),
        facts(
            *[daily(utc(2026, 10, 1) + timedelta(days=i)) for i in range(50)],
            default=default(rows=0, checks=("pgmaint_excl",)),
        ),
        NOW,
        UTC,
    ),
    "utc-daily-empty-no-default": (cfg(premake=3), facts(), NOW, UTC),
    "chicago-daily-dst": (
        cfg(premake=5, retention="3 days", tz=CHICAGO),
        facts(
            part("events_p20261028", utc(2026, 10, 28, 5), utc(2026, 10, 29, 5)),
            # detach pending, and past retention (one inside the window would leave a gap that only the
            # next plan can fill: premake runs before retire finalizes it)
            part("oddly", utc(2026, 10, 26, 5), utc(2026, 10, 27, 5), detach_pending=True),
        ),
        utc(2026, 10, 31, 17),
        CHICAGO,
    ),
    "chicago-hourly-spring-forward": (
        cfg(interval="1 hour", premake=6, retention="2 hours", tz=CHICAGO),
        facts(),
        utc(2026, 3, 8, 6, 45),
        CHICAGO,
    ),
    "weekly-keep-table": (
        cfg(interval="1 week", premake=2, retention="2 weeks", keep=True),
        facts(part("w1", utc(2026, 10, 26), utc(2026, 11, 2)), part("w0", None, utc(2026, 10, 26))),
        NOW,
        UTC,
    ),
    "monthly-with-wide-legacy-partition": (
        cfg(interval="1 month", premake=3, retention="3 months"),
        facts(part("legacy_2026", utc(2026, 1, 1), utc(2026, 12, 1)), default=default()),
        NOW,
        UTC,
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_second_plan_after_applying_the_first_is_a_noop(name):
    c, f, now, tz = SCENARIOS[name]
    first = plan_maintenance(c, f, now, tz)
    assert not first.is_noop
    second = plan_maintenance(c, apply(f, first), now, tz)
    assert second.is_noop, second
    assert second.creates == second.retires == second.finalizes == second.stale_checks == ()


def test_plan_is_deterministic():
    c, f, now, tz = SCENARIOS["utc-daily-with-default-and-retention"]
    assert plan_maintenance(c, f, now, tz) == plan_maintenance(c, f, now, tz)
