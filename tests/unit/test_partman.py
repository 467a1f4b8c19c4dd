"""pg_partman import, pure parts: part_config rows of 4.x and 5.x shape, intervals, zones, rendering."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import yaml

from include.pgmaint.catalog import Partition, Range, TableFacts
from include.pgmaint.config import ConfigError, parse_config
from include.pgmaint.partman import (
    ImportResult,
    ParentFacts,
    PartConfig,
    ZoneChoice,
    choose_zone,
    config_name,
    misaligned,
    parse_pg_interval,
    pgmaint_duration,
    pgmaint_interval,
    render,
    translate,
)

# Columns of 5.x's part_config (sql/tables/tables.sql of pg_partman 5.1, plus partition_timezone from 5.4.4),
# with the values create_parent(p_parent_table := 'public.events', p_control := 'created_at', p_interval := '1 day') stores.
ROW_5X = {
    "parent_table": "public.events",
    "control": "created_at",
    "partition_interval": "1 day",
    "partition_type": "range",
    "premake": 4,
    "automatic_maintenance": "on",
    "template_table": "partman.template_public_events",
    "retention": None,
    "retention_schema": None,
    "retention_keep_index": True,
    "retention_keep_table": True,
    "epoch": "none",
    "constraint_cols": None,
    "optimize_constraint": 30,
    "infinite_time_partitions": False,
    "datetime_string": "YYYYMMDD",
    "jobmon": True,
    "sub_partition_set_full": False,
    "undo_in_progress": False,
    "inherit_privileges": False,
    "constraint_valid": True,
    "ignore_default_data": True,
    "default_table": True,
    "date_trunc_interval": None,
    "maintenance_order": None,
    "retention_keep_publication": False,
    "maintenance_last_run": None,
    "partition_timezone": None,
}
# 4.7's extra (trigger-era) columns; partition_type 'native'.
ROW_4X = {
    **{
        k: v
        for k, v in ROW_5X.items()
        if k
        not in (
            "default_table",
            "date_trunc_interval",
            "maintenance_order",
            "retention_keep_publication",
            "maintenance_last_run",
            "partition_timezone",
        )
    },
    "partition_type": "native",
    "optimize_trigger": 4,
    "inherit_fk": True,
    "trigger_exception_handling": False,
    "upsert": "",
    "trigger_return_null": True,
    "publications": None,
    "subscription_refresh": None,
    "drop_cascade_fk": False,
    "ignore_default_data": False,
    "datetime_string": "YYYY_MM_DD",
}
TIMESTAMPTZ = ParentFacts(control_type="timestamp with time zone")


def row(base=ROW_5X, **changes) -> PartConfig:
    return PartConfig.from_row({**base, **changes})


@pytest.mark.parametrize(
    "text, parts",
    [
        ("1 day", (0, 1, 0)),
        ("7 days", (0, 7, 0)),
        ("1 mon", (1, 0, 0)),
        ("3 mons", (3, 0, 0)),
        ("1 year", (12, 0, 0)),
        ("01:00:00", (0, 0, 3600)),
        ("1 day 02:00:00", (0, 1, 7200)),
        ("30 days", (0, 30, 0)),
        ("1 week", (0, 7, 0)),
        ("48 hours", (0, 0, 172800)),
        ("100000", None),
        ("", None),
        (None, None),
        ("daily", None),
    ],
)
def test_parse_pg_interval(text, parts):
    assert parse_pg_interval(text) == parts


def test_intervals_and_durations():
    assert [
        pgmaint_interval(parse_pg_interval(t)) for t in ("01:00:00", "1 day", "7 days", "1 mon", "2 days", "1 year")
    ] == ["1 hour", "1 day", "1 week", "1 month", None, None]
    assert [
        pgmaint_duration(parse_pg_interval(t))
        for t in ("30 days", "14 days", "1 mon", "24 mons", "48:00:00", "1 mon 2 days", "00:30:00")
    ] == ["30 days", "2 weeks", "1 month", "2 years", "48 hours", None, None]


def test_5x_row_is_read_with_its_column_set():
    r = row(retention="30 days")
    assert r.generation == "5.x" and r.native_range and r.retention_keep_table
    t = translate(r, TIMESTAMPTZ)
    assert t.refused == []
    assert t.item == {
        "name": "public.events",
        "partition_key": "created_at",
        "interval": "1 day",
        "premake": 4,
        "retention": "30 days",
        "retention_keep_table": True,
        "name_format": "YYYYMMDD",
        "writers": ["pg_partman"],
    }
    assert t.name_format == "YYYYMMDD"
    assert translate(row(partition_type="list"), TIMESTAMPTZ).refused == [
        "partition_type 'list': pgmaint manages native range partitioning only"
    ]


def test_4x_row_is_read_with_its_column_set():
    r = row(ROW_4X, retention="3 mons", retention_keep_table=False)
    assert r.generation == "4.x" and r.native_range
    t = translate(r, TIMESTAMPTZ)
    assert t.item["retention"] == "3 months" and t.item["retention_keep_table"] is False
    assert "trigger-based" in translate(row(ROW_4X, partition_type="partman"), TIMESTAMPTZ).refused[0]
    assert not row(ROW_4X, partition_type="range").native_range  # 'range' is 5.x's word


def test_5x_partition_timezone_is_kept_for_the_zone_choice():
    t = translate(row(partition_timezone="Europe/Berlin"), TIMESTAMPTZ)
    assert t.partition_timezone == "Europe/Berlin"


@pytest.mark.parametrize(
    "changes, facts, reason",
    [
        (
            {"partition_interval": "100000", "control": "id"},
            ParentFacts(control_type="bigint"),
            "id-based partitioning (control id is bigint",
        ),
        ({"epoch": "seconds", "control": "ts_epoch"}, ParentFacts(control_type="bigint"), "epoch 'seconds'"),
        ({"partition_interval": "2 days"}, TIMESTAMPTZ, "interval '2 days' cannot be expressed"),
        ({}, ParentFacts(control_type="timestamp with time zone", has_sub_partitions=True), "sub-partitioned"),
        (
            {},
            ParentFacts(control_type="timestamp with time zone", partition_of="public.all_events"),
            "a sub-partition of public.all_events",
        ),
        ({"undo_in_progress": True}, TIMESTAMPTZ, "undo_in_progress"),
        ({"retention": "1 mon 2 days"}, TIMESTAMPTZ, "retention '1 mon 2 days' cannot be expressed"),
        ({"retention": "12:00:00"}, TIMESTAMPTZ, "shorter than one interval"),
        ({}, ParentFacts(found=False), "does not exist"),
        ({}, ParentFacts(relkind="r", control_type="timestamp with time zone"), "not a natively partitioned table"),
        ({"date_trunc_interval": "month"}, TIMESTAMPTZ, "date_trunc_interval 'month'"),
        (
            {},
            ParentFacts(
                control_type="timestamp with time zone",
                template_extras=(
                    "index: CREATE UNIQUE INDEX t_id ON partman.template_public_events USING btree (id)",
                    "storage parameters: fillfactor=70",
                ),
            ),
            "carries what the parent lacks and pg_partman adds to every new partition: index: CREATE UNIQUE INDEX t_id",
        ),
        (
            {},
            ParentFacts(control_type="timestamp with time zone", template_found=False),
            "template_table partman.template_public_events does not exist",
        ),
    ],
)
def test_what_cannot_be_taken_over_is_refused_with_the_reason(changes, facts, reason):
    t = translate(row(**changes), facts)
    assert t.item is None
    assert any(reason in r for r in t.refused), t.refused


def test_sub_partition_config_row_refuses_the_parent():
    t = translate(row(), TIMESTAMPTZ, subs={"public.events"})
    assert t.item is None and "sub-partitioned" in t.refused[0]


def test_what_pgmaint_does_differently_is_noted_not_dropped():
    t = translate(
        row(
            retention="30 days",
            retention_schema="archive",
            retention_keep_table=False,
            retention_keep_index=False,
            constraint_cols=["account_id"],
            inherit_privileges=True,
            retention_keep_publication=True,
        ),
        TIMESTAMPTZ,
    )
    assert t.item["retention_keep_table"] is True  # detach, never drop, as pg_partman never dropped them
    text = " | ".join(t.notes)
    for expected in (
        "retention_schema archive",
        "retention_keep_index false",
        "constraint_cols ['account_id']",
        "inherit_privileges",
        "publications",
        "infinite_time_partitions off",
    ):
        assert expected in text
    assert not [n for n in translate(row(infinite_time_partitions=True), TIMESTAMPTZ).notes if "infinite" in n]


@pytest.mark.parametrize("retention", [None, "30 days"])
def test_4x_publications_subscription_refresh_and_drop_cascade_fk_are_noted_with_or_without_retention(retention):
    t = translate(
        row(
            ROW_4X,
            retention=retention,
            retention_keep_table=False,
            publications=["to_warehouse"],
            subscription_refresh="from_origin",
            drop_cascade_fk=True,
        ),
        TIMESTAMPTZ,
    )
    assert t.item is not None
    publications = [n for n in t.notes if n.startswith("publications ['to_warehouse']")]
    assert len(publications) == 1 and "ALTER PUBLICATION" in publications[0]
    assert [n for n in t.notes if n.startswith("subscription_refresh from_origin") and "REFRESH PUBLICATION" in n]
    assert [n for n in t.notes if n.startswith("drop_cascade_fk") and "CASCADE" in n]
    text = render(ImportResult("partman", "4.7.2", "app", ZoneChoice("UTC", "the server's TimeZone"), [t]))
    for expected in (
        "# not expressed: publications",
        "# not expressed: subscription_refresh",
        "# not expressed: drop_cascade_fk",
    ):
        assert expected in text


def test_4x_defaults_add_no_publication_notes():
    notes = " | ".join(translate(row(ROW_4X, retention="30 days"), TIMESTAMPTZ).notes)
    assert "publication" not in notes and "subscription_refresh" not in notes and "drop_cascade_fk" not in notes


def test_date_trunc_interval_matching_the_interval_is_fine():
    assert translate(row(date_trunc_interval="day"), TIMESTAMPTZ).item is not None
    assert (
        translate(row(partition_interval="7 days", date_trunc_interval="week"), TIMESTAMPTZ).item["interval"]
        == "1 week"
    )


def test_keep_partman_emits_the_split():
    assert translate(row(), TIMESTAMPTZ, keep_partman=True).item["maintained_by"] == "pg_partman"


def test_config_names_are_quoted_only_when_needed():
    assert config_name("public.events") == "public.events"
    assert config_name("Sales.Events 2") == '"Sales"."Events 2"'
    assert (
        translate(row(parent_table="App.Log", control="CreatedAt"), TIMESTAMPTZ).item["partition_key"] == '"CreatedAt"'
    )


def _facts(bounds: list[tuple[datetime, datetime]], key_type="timestamp with time zone") -> TableFacts:
    parts = tuple(Partition("public", f"p{i}", Range(lo, hi)) for i, (lo, hi) in enumerate(bounds))
    return TableFacts("public.events", "public", "events", "created_at", key_type, parts, None)


def utc(*a) -> datetime:
    return datetime(*a, tzinfo=timezone.utc)


def test_alignment_depends_on_the_zone():
    # DST starts
    new_york_days = _facts([(utc(2024, 3, 9, 5), utc(2024, 3, 10, 5)), (utc(2024, 3, 10, 5), utc(2024, 3, 11, 4))])
    assert misaligned(new_york_days, "1 day", "America/New_York") == []
    assert len(misaligned(new_york_days, "1 day", "UTC")) == 2
    wall = _facts([(utc(2024, 3, 1), utc(2024, 4, 1))], key_type="date")
    assert misaligned(wall, "1 month", "America/New_York") == []  # wall-clock keys: the zone does not matter
    assert misaligned(_facts([(utc(2024, 3, 1), utc(2024, 3, 3))]), "1 day", "UTC") == [
        "p0 [2024-03-01 00:00:00Z, 2024-03-03 00:00:00Z)"
    ]


def test_zone_choice():
    both = {"Europe/Berlin": {"a": True, "b": True}, "UTC": {"a": False, "b": False}}
    assert choose_zone("Europe/Berlin", "postgresql.conf", both, None).zone == "Europe/Berlin"
    utc_aligned = {"Europe/Berlin": {"a": False, "b": False}, "UTC": {"a": True, "b": True}}
    choice = choose_zone("Europe/Berlin", "postgresql.conf", utc_aligned, None)
    assert choice.zone == "UTC" and "not to the server's TimeZone Europe/Berlin" in choice.reason
    split = {"Europe/Berlin": {"a": True, "b": False}, "UTC": {"a": False, "b": True}}
    choice = choose_zone("Europe/Berlin", "database", split, None)
    assert choice.zone == "Europe/Berlin" and "1 table(s) do not align" in choice.reason
    assert choose_zone("UTC", "default", {}, None).zone == "UTC"
    assert choose_zone("UTC", "default", both, "Asia/Tokyo").zone == "Asia/Tokyo"


def test_render_is_a_valid_config_with_comments():
    ok = translate(row(retention="30 days"), TIMESTAMPTZ)
    refused = translate(
        row(parent_table="public.ids", control="id", partition_interval="1000"), ParentFacts(control_type="bigint")
    )
    text = render(
        ImportResult("partman", "5.1.0", "app", ZoneChoice("Europe/Berlin", "the server's TimeZone"), [ok, refused])
    )
    cfg = parse_config(yaml.safe_load(text))
    assert cfg.timezone == "Europe/Berlin" and cfg.table_names == ["public.events"]
    assert cfg.tables[0].writers == ("pg_partman",) and cfg.services[0].kind == "pg_partman"
    assert "# - public.ids: id-based partitioning" in text
    assert "# timezone: Europe/Berlin - the server's TimeZone" in text
    assert cfg.tables[0].name_format == "YYYYMMDD"  # new partitions are named as pg_partman names them
    assert "# name_format: pg_partman's datetime_string 'YYYYMMDD': new partitions are named events_p<YYYYMMDD>" in text
    assert "_pYYYYMMDD until" not in text


def test_name_format_follows_datetime_string_when_pgmaint_can_write_it():
    for changes, expected in (
        ({"partition_interval": "01:00:00", "datetime_string": "YYYY_MM_DD_HH24MI"}, "YYYY_MM_DD_HH24MI"),
        ({"partition_interval": "7 days", "datetime_string": 'IYYY"w"IW'}, 'IYYY"w"IW'),
        ({"partition_interval": "1 mon", "datetime_string": "YYYY_MM"}, "YYYY_MM"),
    ):
        t = translate(row(ROW_4X, **changes), TIMESTAMPTZ)
        assert t.item["name_format"] == expected
        parse_config({"tables": [t.item], "services": [{"name": "pg_partman", "kind": "pg_partman"}]})
    odd = translate(row(ROW_4X, datetime_string="YYYY-MM-DD"), TIMESTAMPTZ)
    assert "name_format" not in odd.item
    assert [n for n in odd.notes if n.startswith("datetime_string 'YYYY-MM-DD'") and "not a known" in n]
    assert "name_format" not in translate(row(datetime_string=None), TIMESTAMPTZ).item


def test_maintained_by_pg_partman_needs_a_pg_partman_writer():
    table = {
        "name": "public.events",
        "partition_key": "created_at",
        "interval": "1 day",
        "premake": 4,
        "maintained_by": "pg_partman",
    }
    with pytest.raises(ConfigError, match=r"tables\[0\]\.maintained_by: pg_partman needs a writer of kind pg_partman"):
        parse_config({"tables": [table]})
    cfg = parse_config({"tables": [{**table, "writers": ["pm"]}], "services": [{"name": "pm", "kind": "pg_partman"}]})
    assert cfg.tables[0].maintained_by == "pg_partman"
    with pytest.raises(ConfigError, match=r"tables\[0\]\.maintained_by"):
        parse_config({"tables": [{**table, "maintained_by": "cron"}]})
    assert (
        parse_config({"tables": [{k: v for k, v in table.items() if k != "maintained_by"}]}).tables[0].maintained_by
        == "pgmaint"
    )
