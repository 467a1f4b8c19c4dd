"""Partition names: pg_partman's schemes, inference from existing partitions, `name_format`."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from include.pgmaint.catalog import Partition, Range, TableFacts
from include.pgmaint.config import ConfigError, parse_config
from include.pgmaint.naming import FORMATS, check_format, choose, default_format, formats_for
from include.pgmaint.plan import missing_ranges, name_choice, plan_maintenance

UTC = "UTC"
CHICAGO = "America/Chicago"
TOKYO = "Asia/Tokyo"
TSTZ = "timestamp with time zone"
NOW = datetime(2026, 11, 26, 10, 30, tzinfo=timezone.utc)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def cfg(
    interval: str = "1 day",
    name: str = "public.events",
    name_format: str | None = None,
    tz: str = UTC,
    premake: int = 2,
):
    table = {"name": name, "partition_key": "created_at", "interval": interval, "premake": premake}
    if name_format is not None:
        table["name_format"] = name_format
    return parse_config({"timezone": tz, "tables": [table]}).tables[0]


def facts(
    names_and_lowers, step: timedelta = timedelta(days=1), table: str = "events", key_type: str = TSTZ
) -> TableFacts:
    parts = tuple(Partition("public", n, Range(lo, lo + step)) for n, lo in names_and_lowers)
    return TableFacts(f"public.{table}", "public", table, "created_at", key_type, parts, None)


def days(fmt: str, first: datetime, count: int, table: str = "events"):
    return [(f"{table}_p{(first + timedelta(days=i)).strftime(fmt)}", first + timedelta(days=i)) for i in range(count)]


# --- every format writes what pg_partman writes -----------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, start, suffix",
    [
        ("YYYYMMDD", utc(2026, 11, 27), "_p20261127"),
        ("YYYYMMDD_HH24MISS", utc(2026, 11, 27, 14), "_p20261127_140000"),
        ("YYYY_MM_DD", utc(2026, 11, 27), "_p2026_11_27"),
        ("YYYY_MM_DD_HH24MI", utc(2026, 11, 27, 14), "_p2026_11_27_1400"),
        ("YYYY_MM_DD_HH24MISS", utc(2026, 11, 27, 14), "_p2026_11_27_140000"),
        ('IYYY"w"IW', utc(2026, 11, 23), "_p2026w48"),
        ('IYYY"w"IW', utc(2024, 12, 30), "_p2025w01"),  # ISO year, as to_char's IYYY: the week belongs to 2025
        ('IYYY"w"IW', utc(2026, 12, 28), "_p2026w53"),
        ("YYYY_MM", utc(2026, 11, 1), "_p2026_11"),
        ("YYYYMM", utc(2026, 11, 1), "_p202611"),
    ],
)
def test_suffixes(pattern, start, suffix):
    assert FORMATS[pattern].suffix(start, UTC) == suffix


def test_the_repeated_hour_gets_its_own_name_in_every_hourly_format():
    first, second = utc(2026, 11, 1, 6), utc(2026, 11, 1, 7)  # 01:00 CDT, then 01:00 CST
    for pattern in ("YYYYMMDD_HH24MISS", "YYYY_MM_DD_HH24MI", "YYYY_MM_DD_HH24MISS"):
        a, b = FORMATS[pattern].suffix(first, CHICAGO), FORMATS[pattern].suffix(second, CHICAGO)
        assert a != b and b == a + "_2"


def test_defaults_are_pg_partman_5s():
    assert (
        default_format("day").pattern == default_format("week").pattern == default_format("month").pattern == "YYYYMMDD"
    )
    assert default_format("hour").pattern == "YYYYMMDD_HH24MISS"


def test_formats_that_would_give_two_partitions_one_name_are_refused():
    assert formats_for("hour") == ["YYYYMMDD_HH24MISS", "YYYY_MM_DD_HH24MI", "YYYY_MM_DD_HH24MISS"]
    assert formats_for("day") == [
        "YYYYMMDD",
        "YYYYMMDD_HH24MISS",
        "YYYY_MM_DD",
        "YYYY_MM_DD_HH24MI",
        "YYYY_MM_DD_HH24MISS",
    ]
    assert 'IYYY"w"IW' in formats_for("week") and "YYYY_MM" not in formats_for("week")
    assert set(formats_for("month")) >= {"YYYY_MM", "YYYYMM", "YYYYMMDD", "YYYY_MM_DD"}
    with pytest.raises(ValueError, match="same name"):
        check_format("YYYY_MM", "day")
    with pytest.raises(ValueError, match="same name"):
        check_format('IYYY"w"IW', "day")
    with pytest.raises(ValueError, match="not a known partition name format"):
        check_format("YYYY-MM-DD", "day")


# --- inference ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "interval, step, existing, expected, first_new",
    [
        ("1 day", timedelta(days=1), days("%Y_%m_%d", utc(2026, 11, 20), 7), "YYYY_MM_DD", "events_p2026_11_27"),
        ("1 day", timedelta(days=1), days("%Y%m%d", utc(2026, 11, 20), 7), "YYYYMMDD", "events_p20261127"),
        (
            "1 month",
            None,
            [
                ("events_p2026_09", utc(2026, 9, 1)),
                ("events_p2026_10", utc(2026, 10, 1)),
                ("events_p2026_11", utc(2026, 11, 1)),
            ],
            "YYYY_MM",
            "events_p2026_12",
        ),
        (
            "1 month",
            None,
            [("events_p202610", utc(2026, 10, 1)), ("events_p202611", utc(2026, 11, 1))],
            "YYYYMM",
            "events_p202612",
        ),
        (
            "1 month",
            None,
            [("events_p20261001", utc(2026, 10, 1)), ("events_p20261101", utc(2026, 11, 1))],
            "YYYYMMDD",
            "events_p20261201",
        ),
        (
            "1 week",
            timedelta(weeks=1),
            [("events_p2026w46", utc(2026, 11, 9)), ("events_p2026w47", utc(2026, 11, 16))],
            'IYYY"w"IW',
            "events_p2026w48",
        ),
        (
            "1 hour",
            timedelta(hours=1),
            [(f"events_p2026_11_26_{h:02d}00", utc(2026, 11, 26, h)) for h in range(5, 11)],
            "YYYY_MM_DD_HH24MI",
            "events_p2026_11_26_1100",
        ),
        (
            "1 hour",
            timedelta(hours=1),
            [(f"events_p20261126_{h:02d}0000", utc(2026, 11, 26, h)) for h in range(5, 11)],
            "YYYYMMDD_HH24MISS",
            "events_p20261126_110000",
        ),
    ],
)
def test_new_names_follow_the_existing_scheme(interval, step, existing, expected, first_new):
    c = cfg(interval=interval)
    if step is None:  # months: each range to the next month
        parts = tuple(Partition("public", n, Range(lo, (lo + timedelta(days=32)).replace(day=1))) for n, lo in existing)
        f = TableFacts("public.events", "public", "events", "created_at", TSTZ, parts, None)
    else:
        f = facts(existing, step)
    choice = name_choice(c, f, UTC)
    assert (choice.format.pattern, choice.source) == (expected, "inferred")
    assert missing_ranges(c, f, NOW, UTC)[0][0] == first_new


def test_no_partition_in_a_known_scheme_means_the_default():
    f = facts([("events_old_1", utc(2026, 11, 24)), ("weird", utc(2026, 11, 25))])
    choice = name_choice(cfg(), f, UTC)
    assert (choice.format.pattern, choice.source) == ("YYYYMMDD", "default")
    assert name_choice(cfg(), facts([]), UTC).source == "default"  # a new table


def test_a_name_counts_only_if_it_is_the_name_of_its_own_bound():
    # Named like pg_partman 4, but after other days: they say nothing about the scheme.
    f = facts([("events_p2026_11_20", utc(2026, 11, 24)), ("events_p2026_11_21", utc(2026, 11, 25))])
    assert name_choice(cfg(), f, UTC).source == "default"


def test_mixed_names_the_majority_wins_and_the_note_says_so():
    # The table: pg_partman 4 names, then a few made by an earlier pgmaint in its own scheme.
    existing = days("%Y_%m_%d", utc(2026, 11, 1), 20) + days("%Y%m%d", utc(2026, 11, 21), 5)
    c, f = cfg(), facts(existing)
    choice = name_choice(c, f, UTC)
    assert choice.format.pattern == "YYYY_MM_DD" and choice.counts == (("YYYY_MM_DD", 20), ("YYYYMMDD", 5))
    plan = plan_maintenance(c, f, NOW, UTC)
    assert [cr.name for cr in plan.creates] == ["events_p2026_11_26", "events_p2026_11_27", "events_p2026_11_28"]
    [note] = [n for n in plan.notes if "scheme" in n]
    assert "YYYY_MM_DD: 20, YYYYMMDD: 5 of 25" in note and "mixed" in note and "name_format" in note


def test_mixed_names_a_tie_goes_to_the_newest_partitions_scheme():
    existing = days("%Y%m%d", utc(2026, 11, 20), 3) + days("%Y_%m_%d", utc(2026, 11, 23), 3)
    assert name_choice(cfg(), facts(existing), UTC).format.pattern == "YYYY_MM_DD"
    existing = days("%Y_%m_%d", utc(2026, 11, 20), 3) + days("%Y%m%d", utc(2026, 11, 23), 3)
    assert name_choice(cfg(), facts(existing), UTC).format.pattern == "YYYYMMDD"


def test_truncated_names_of_long_tables_are_recognised():
    table = "t" * 63
    existing = [("t" * 51 + f"_p{d:%Y_%m_%d}", d) for d in (utc(2026, 11, 24), utc(2026, 11, 25))]
    c = cfg(name=f"public.{table}")
    f = facts(existing, table=table)
    assert name_choice(c, f, UTC).format.pattern == "YYYY_MM_DD"
    assert missing_ranges(c, f, NOW, UTC)[0][0] == "t" * 51 + "_p2026_11_26"


def test_names_are_read_on_the_configured_clock():
    # timestamptz partitions of Tokyo days start at 15:00 UTC the day before; pg_partman 4 named them by the local date.
    existing = [(f"events_p2026_11_{d}", utc(2026, 11, d - 1, 15)) for d in (23, 24, 25)]
    c = cfg(tz=TOKYO)
    assert name_choice(c, facts(existing), TOKYO).format.pattern == "YYYY_MM_DD"
    assert name_choice(c, facts(existing), UTC).source == "default"  # on the UTC clock they are not their own names


def test_an_unused_format_is_not_reported():
    f = facts(days("%Y%m%d", utc(2026, 11, 20), 3))
    plan = plan_maintenance(cfg(), f, NOW, UTC)
    assert plan.creates and plan.notes == ()  # the usual scheme: nothing to say


# --- name_format ---------------------------------------------------------------------------------------------


def test_name_format_overrides_the_existing_scheme():
    c = cfg(name_format="YYYY_MM_DD")
    f = facts(days("%Y%m%d", utc(2026, 11, 20), 5))
    choice = name_choice(c, f, UTC)
    assert (choice.format.pattern, choice.source) == ("YYYY_MM_DD", "configured")
    plan = plan_maintenance(c, f, NOW, UTC)
    # the day after the last partition is a gap in the window (filled too), then today and premake
    assert [cr.name for cr in plan.creates] == [
        "events_p2026_11_25",
        "events_p2026_11_26",
        "events_p2026_11_27",
        "events_p2026_11_28",
    ]
    assert any("configured name_format YYYY_MM_DD" in n for n in plan.notes)


@pytest.mark.parametrize(
    "interval, value, fragment",
    [
        ("1 day", "YYYY-MM-DD", "not a known partition name format"),
        ("1 day", "YYYY_MM", "same name"),
        ("1 hour", "YYYYMMDD", "same name"),
        ("1 week", "YYYYMM", "same name"),
    ],
)
def test_a_bad_name_format_is_refused_naming_the_field(interval, value, fragment):
    with pytest.raises(ConfigError) as exc:
        cfg(interval=interval, name_format=value)
    [problem] = exc.value.problems
    assert problem.startswith("tables[0].name_format: ") and fragment in problem and repr(value) in problem


def test_name_format_must_be_a_string():
    with pytest.raises(ConfigError) as exc:
        parse_config(
            {
                "tables": [
                    {"name": "public.e", "partition_key": "k", "interval": "1 day", "premake": 1, "name_format": 8}
                ]
            }
        )
    assert "name_format" in str(exc.value)


def test_choose_without_partitions_or_setting_is_the_default():
    assert choose("events", "hour", None, [], UTC).format.pattern == "YYYYMMDD_HH24MISS"


@pytest.mark.parametrize("unit", ["hour", "day", "week", "month"])
def test_every_suffix_has_the_shape_of_its_own_format_only(unit):
    # Inference reads a name's format from its shape: the shapes must exclude each other.
    starts = [utc(2026, 11, 1, 6), utc(2026, 11, 1, 7), utc(2026, 1, 1), utc(2024, 12, 30), utc(2026, 12, 28, 23)]
    for pattern in formats_for(unit):
        for start in starts:
            name = "events_p2026_x" + FORMATS[pattern].suffix(start, CHICAGO)
            assert [p for p in formats_for(unit) if FORMATS[p].shape.search(name)] == [pattern], name
