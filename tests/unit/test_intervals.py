"""Interval alignment (floor / next / suffix) and durations, in UTC and in real zones.

Every "now" is an explicit aware datetime; nothing reads the clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from include.pgmaint.intervals import INTERVALS, Duration, PartitionInterval

UTC = "UTC"
CHICAGO = "America/Chicago"  # DST: 2026-03-08 02:00 -> 03:00, 2026-11-01 02:00 -> 01:00
KOLKATA = "Asia/Kolkata"  # fixed +05:30

HOUR, DAY, WEEK, MONTH = (PartitionInterval(u) for u in ("hour", "day", "week", "month"))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def as_utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc)


# --- UTC ---------------------------------------------------------------------

UTC_CASES = [
    # interval, moment, floor, next, suffix
    (HOUR, utc(2026, 5, 17, 13, 45, 12), utc(2026, 5, 17, 13), utc(2026, 5, 17, 14), "_p20260517_130000"),
    (HOUR, utc(2026, 5, 17, 23, 59, 59), utc(2026, 5, 17, 23), utc(2026, 5, 18, 0), "_p20260517_230000"),
    (HOUR, utc(2026, 5, 17, 0, 0, 0), utc(2026, 5, 17, 0), utc(2026, 5, 17, 1), "_p20260517_000000"),
    (DAY, utc(2026, 5, 17, 13, 45, 12), utc(2026, 5, 17), utc(2026, 5, 18), "_p20260517"),
    (DAY, utc(2026, 12, 31, 23, 59, 59), utc(2026, 12, 31), utc(2027, 1, 1), "_p20261231"),
    (DAY, utc(2028, 2, 28, 12), utc(2028, 2, 28), utc(2028, 2, 29), "_p20280228"),
    # 2026-05-17 is a Sunday: the ISO week started on Monday 2026-05-11
    (WEEK, utc(2026, 5, 17, 23, 59), utc(2026, 5, 11), utc(2026, 5, 18), "_p20260511"),
    (WEEK, utc(2026, 5, 18, 0, 0), utc(2026, 5, 18), utc(2026, 5, 25), "_p20260518"),  # a Monday
    (WEEK, utc(2026, 12, 31, 8), utc(2026, 12, 28), utc(2027, 1, 4), "_p20261228"),  # week across new year
    (MONTH, utc(2026, 5, 17, 13), utc(2026, 5, 1), utc(2026, 6, 1), "_p20260501"),
    (MONTH, utc(2026, 1, 31, 23), utc(2026, 1, 1), utc(2026, 2, 1), "_p20260101"),
    (MONTH, utc(2026, 12, 15), utc(2026, 12, 1), utc(2027, 1, 1), "_p20261201"),
    (MONTH, utc(2028, 2, 29, 12), utc(2028, 2, 1), utc(2028, 3, 1), "_p20280201"),
]


@pytest.mark.parametrize("interval, moment, floor, nxt, suffix", UTC_CASES, ids=lambda v: str(v))
def test_utc_floor_next_suffix(interval, moment, floor, nxt, suffix):
    start = interval.floor(moment, UTC)
    assert as_utc(start) == floor
    assert as_utc(interval.next(start, UTC)) == nxt
    assert interval.suffix(start, UTC) == suffix


# --- America/Chicago across DST ----------------------------------------------


def test_chicago_day_of_spring_forward_is_23_hours():
    moment = utc(2026, 3, 8, 18)  # 13:00 CDT
    start = DAY.floor(moment, CHICAGO)
    end = DAY.next(start, CHICAGO)
    assert as_utc(start) == utc(2026, 3, 8, 6)  # local midnight, CST (-06:00)
    assert as_utc(end) == utc(2026, 3, 9, 5)  # next local midnight, CDT (-05:00)
    assert end - start == timedelta(hours=23)
    assert DAY.suffix(start, CHICAGO) == "_p20260308"


def test_chicago_day_of_fall_back_is_25_hours():
    moment = utc(2026, 11, 1, 20)  # 14:00 CST
    start = DAY.floor(moment, CHICAGO)
    end = DAY.next(start, CHICAGO)
    assert as_utc(start) == utc(2026, 11, 1, 5)  # local midnight, CDT
    assert as_utc(end) == utc(2026, 11, 2, 6)  # next local midnight, CST
    assert end - start == timedelta(hours=25)
    assert DAY.suffix(start, CHICAGO) == "_p20261101"


def test_chicago_daily_floor_uses_the_local_date():
    # 03:00 UTC on the 17th is still the evening of the 16th in Chicago
    start = DAY.floor(utc(2026, 5, 17, 3), CHICAGO)
    assert as_utc(start) == utc(2026, 5, 16, 5)
    assert DAY.suffix(start, CHICAGO) == "_p20260516"


def test_chicago_hourly_steps_are_real_hours_across_spring_forward():
    start = HOUR.floor(utc(2026, 3, 8, 7, 59), CHICAGO)  # 01:59 CST
    assert as_utc(start) == utc(2026, 3, 8, 7)
    nxt = HOUR.next(start, CHICAGO)
    assert as_utc(nxt) == utc(2026, 3, 8, 8)  # 03:00 CDT: 02:00 does not exist
    assert nxt - start == timedelta(hours=1)
    assert HOUR.suffix(start, CHICAGO) == "_p20260308_010000"
    assert HOUR.suffix(nxt, CHICAGO) == "_p20260308_030000"


def test_chicago_hourly_steps_are_real_hours_across_fall_back():
    start = HOUR.floor(utc(2026, 11, 1, 5, 30), CHICAGO)  # 00:30 CDT
    bounds = [start]
    for _ in range(4):
        bounds.append(HOUR.next(bounds[-1], CHICAGO))
    assert [as_utc(b) for b in bounds] == [utc(2026, 11, 1, h) for h in (5, 6, 7, 8, 9)]
    assert all(b - a == timedelta(hours=1) for a, b in zip(bounds, bounds[1:]))


@pytest.mark.parametrize(
    "moment, floor",
    [
        (utc(2026, 11, 1, 6, 30), utc(2026, 11, 1, 6)),  # 01:30 CDT (first 01:xx)
        (utc(2026, 11, 1, 7, 30), utc(2026, 11, 1, 7)),  # 01:30 CST (second 01:xx)
    ],
)
def test_chicago_hourly_floor_in_the_repeated_hour(moment, floor):
    assert as_utc(HOUR.floor(moment, CHICAGO)) == floor


def test_chicago_week_containing_spring_forward():
    start = WEEK.floor(utc(2026, 3, 8, 18), CHICAGO)  # Sunday
    end = WEEK.next(start, CHICAGO)
    assert as_utc(start) == utc(2026, 3, 2, 6)  # Monday 00:00 CST
    assert as_utc(end) == utc(2026, 3, 9, 5)  # Monday 00:00 CDT
    assert end - start == timedelta(days=7, hours=-1)
    assert WEEK.suffix(start, CHICAGO) == "_p20260302"


def test_chicago_month_containing_fall_back():
    start = MONTH.floor(utc(2026, 11, 15), CHICAGO)
    end = MONTH.next(start, CHICAGO)
    assert as_utc(start) == utc(2026, 11, 1, 5)
    assert as_utc(end) == utc(2026, 12, 1, 6)
    assert MONTH.suffix(start, CHICAGO) == "_p20261101"


# --- Asia/Kolkata (+05:30) -----------------------------------------------------


@pytest.mark.parametrize(
    "moment, floor, suffix",
    [
        (utc(2026, 5, 17, 13, 10), utc(2026, 5, 17, 12, 30), "_p20260517_180000"),  # 18:40 IST
        (utc(2026, 5, 17, 13, 45), utc(2026, 5, 17, 13, 30), "_p20260517_190000"),  # 19:15 IST
        (utc(2026, 5, 17, 18, 29), utc(2026, 5, 17, 17, 30), "_p20260517_230000"),  # 23:59 IST
        (utc(2026, 5, 17, 18, 30), utc(2026, 5, 17, 18, 30), "_p20260518_000000"),  # 00:00 IST next day
    ],
)
def test_kolkata_hourly_floor_is_on_the_local_hour(moment, floor, suffix):
    start = HOUR.floor(moment, KOLKATA)
    assert as_utc(start) == floor
    assert as_utc(HOUR.next(start, KOLKATA)) == floor + timedelta(hours=1)
    assert HOUR.suffix(start, KOLKATA) == suffix


def test_kolkata_daily_floor_is_local_midnight():
    start = DAY.floor(utc(2026, 5, 17, 12), KOLKATA)
    assert as_utc(start) == utc(2026, 5, 16, 18, 30)
    assert DAY.suffix(start, KOLKATA) == "_p20260517"


# --- properties over many moments ------------------------------------------------

MOMENTS = (
    [utc(2026, 3, 8, h, m) for h in range(4, 12) for m in (0, 29, 30, 59)]
    + [utc(2026, 11, 1, h, m) for h in range(4, 12) for m in (0, 30, 59)]
    + [utc(2026, 1, 1), utc(2026, 12, 31, 23, 59, 59), utc(2028, 2, 29, 12)]
)


@pytest.mark.parametrize("tz", [UTC, CHICAGO, KOLKATA])
@pytest.mark.parametrize("interval", [HOUR, DAY, WEEK, MONTH], ids=str)
def test_floor_contains_moment_and_is_idempotent(interval, tz):
    for moment in MOMENTS:
        start = interval.floor(moment, tz)
        end = interval.next(start, tz)
        assert start <= moment < end, (interval, tz, moment, start, end)
        assert interval.floor(start, tz) == start
        # the next interval starts where this one ends
        assert interval.floor(end, tz) == end


def test_floor_accepts_moments_in_any_zone():
    moment = utc(2026, 5, 17, 3)
    tokyo = moment.astimezone(ZoneInfo("Asia/Tokyo"))
    assert DAY.floor(tokyo, CHICAGO) == DAY.floor(moment, CHICAGO)


# --- PartitionInterval.parse -----------------------------------------------------


@pytest.mark.parametrize(
    "text, unit",
    [
        ("1 hour", "hour"),
        ("1 day", "day"),
        ("1 week", "week"),
        ("1 month", "month"),
        ("1 Day", "day"),
        (" 1   day ", "day"),
        ("1 MONTH", "month"),
    ],
)
def test_interval_parse_accepts(text, unit):
    interval = PartitionInterval.parse(text)
    assert interval.unit == unit
    assert str(interval) == f"1 {unit}"
    assert interval.duration == Duration(1, unit)


@pytest.mark.parametrize("text", ["2 days", "daily", 5, None, "", "1 year", "1 days", "hour", "1 minute", "1d"])
def test_interval_parse_rejects(text):
    with pytest.raises(ValueError) as exc:
        PartitionInterval.parse(text)
    assert "not a supported interval" in str(exc.value)
    for allowed in INTERVALS:
        assert allowed in str(exc.value)


# --- Duration ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, count, unit",
    [
        ("30 days", 30, "day"),
        ("1 day", 1, "day"),
        ("12 hours", 12, "hour"),
        ("1 hour", 1, "hour"),
        ("2 weeks", 2, "week"),
        ("3 months", 3, "month"),
        ("1 month", 1, "month"),
        ("1 year", 1, "year"),
        ("  30   DAYS  ", 30, "day"),
        ("90 Days", 90, "day"),
    ],
)
def test_duration_parse_accepts(text, count, unit):
    assert Duration.parse(text) == Duration(count, unit)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "30",
        "days",
        "30days",
        "-1 day",
        "0 days",
        "1.5 days",
        "30 minutes",
        "30 days ago",
        "thirty days",
        "1 day 2 hours",
        "P30D",
        30,
        None,
        ["30 days"],
    ],
)
def test_duration_parse_rejects(text):
    with pytest.raises(ValueError) as exc:
        Duration.parse(text)
    assert repr(text) in str(exc.value)


@pytest.mark.parametrize(
    "duration, text",
    [(Duration(30, "day"), "30 days"), (Duration(1, "month"), "1 month"), (Duration(12, "hour"), "12 hours")],
)
def test_duration_str(duration, text):
    assert str(duration) == text


@pytest.mark.parametrize(
    "duration, moment, tz, expected",
    [
        (Duration(1, "month"), utc(2026, 3, 31, 12), UTC, utc(2026, 2, 28, 12)),  # clamped to month end
        (Duration(1, "month"), utc(2028, 3, 31, 12), UTC, utc(2028, 2, 29, 12)),  # leap year
        (Duration(3, "month"), utc(2026, 5, 31), UTC, utc(2026, 2, 28)),
        (Duration(1, "month"), utc(2026, 3, 15), UTC, utc(2026, 2, 15)),
        (Duration(30, "day"), utc(2026, 11, 23), UTC, utc(2026, 10, 24)),
        (Duration(2, "week"), utc(2026, 11, 23), UTC, utc(2026, 11, 9)),
        (Duration(12, "hour"), utc(2026, 11, 23, 6), UTC, utc(2026, 11, 22, 18)),
        (Duration(1, "year"), utc(2028, 2, 29), UTC, utc(2027, 2, 28)),
        # days are wall-clock days in the zone: 01:00 CDT minus 1 day = 01:00 CST (23 real hours)
        (Duration(1, "day"), utc(2026, 3, 9, 6), CHICAGO, utc(2026, 3, 8, 7)),
        # hours are real hours, even across the change
        (Duration(2, "hour"), utc(2026, 3, 8, 8, 30), CHICAGO, utc(2026, 3, 8, 6, 30)),
        # month end in local time: 2026-03-31 20:00 CDT is 2026-04-01 01:00 UTC
        (Duration(1, "month"), utc(2026, 4, 1, 1), CHICAGO, utc(2026, 3, 1, 2)),
    ],
)
def test_duration_before(duration, moment, tz, expected):
    assert as_utc(duration.before(moment, tz)) == expected


def test_duration_after_is_inverse_for_days():
    moment = utc(2026, 3, 8, 7)  # 01:00 CST
    assert as_utc(Duration(1, "day").after(moment, CHICAGO)) == utc(2026, 3, 9, 6)  # 01:00 CDT


@pytest.mark.parametrize(
    "shorter, longer",
    [("12 hours", "1 day"), ("1 week", "1 month"), ("23 hours", "1 day"), ("6 days", "1 week"), ("4 weeks", "1 year")],
)
def test_duration_approx_hours_orders_lengths(shorter, longer):
    assert Duration.parse(shorter).approx_hours < Duration.parse(longer).approx_hours
