"""Suites as code, without a database: every check builds SQL GX will run as written, with words a responder reads."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from include.pgmaint.catalog import Partition, Range, TableFacts
from include.pgmaint.quality import MIGRATED, run_gate
from include.pgmaint.quality.facts import as_ranges
from include.pgmaint.quality.runner import error_message, sqlalchemy_url
from include.pgmaint.quality.suites import (
    CHECKS,
    MigrationFacts,
    Skipped,
    bucket_range,
    build_suite,
    check_query,
    default_clean_check,
    retention_check,
)
from tests.integration.helpers import config_for, table_entry

pytestmark = pytest.mark.usefixtures("gx_warm")  # GX imported once per session

REPO = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 10, 31, 15, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
TODAY = NOW.replace(hour=0)


def _facts(key_type="timestamp with time zone", default=True, days=range(-3, 5)) -> TableFacts:
    parts = tuple(
        Partition("s", f"ev_p{(TODAY + d * DAY):%Y%m%d}", Range(TODAY + d * DAY, TODAY + (d + 1) * DAY)) for d in days
    )
    return TableFacts("s.ev", "s", "ev", "ts", key_type, parts, Partition("s", "ev_default", None) if default else None)


def _config(**entry):
    return config_for("s", [table_entry("s", "ev", premake=4, retention="3 days", **entry)])


MIGRATION = MigrationFacts(
    7,
    "s.ev",
    "done",
    ("ev_p20261030",),
    ("2026-10-30 00:00:00+00", "NULL"),
    ("2026-10-30 00:00:00+00", "NULL"),
    '"s"."ev_default_pgmaint_drain"',
)


@pytest.mark.parametrize("key_type", ["timestamp with time zone", "timestamp without time zone", "date"])
def test_every_check_builds_a_query_gx_runs_as_written(key_type):
    cfg = _config()
    suite = build_suite(
        cfg,
        cfg.tables[0],
        _facts(key_type),
        list(CHECKS),
        now=NOW,
        ranges=[Range(TODAY, TODAY + DAY)],
        migration=MIGRATION,
    )
    assert {s.check for s in suite.checks} == set(CHECKS)
    assert [s.key for s in suite.checks if s.check == "conserved"] == ["conserved.journal", "conserved.in_place"]
    assert set(suite.assets) == {"catalog", "default_partition", "migration_figures"}
    for spec in suite.checks:
        assert spec.description.startswith("s.ev: ") and spec.expected
        assert check_query(spec.query) == spec.query
        # SQLAlchemy's text() would turn ":name" into a bind parameter: there must be none.
        assert sa.text(spec.query).compile().params == {}, spec.key
        spec.query.format(batch="(SELECT 1) AS subselect")  # GX's substitution: no stray braces
        assert " problem" in spec.query  # one row per problem, named
    for query in suite.assets.values():
        assert query.startswith("SELECT ")  # GX QueryAsset requirement
        assert sa.text(query).compile().params == {}


def test_descriptions_say_what_is_checked():
    cfg = _config()
    suite = build_suite(cfg, cfg.tables[0], _facts(), ["runway", "retention", "contiguity", "not_null_key"], now=NOW)
    by_check = {s.check: s for s in suite.checks}
    assert by_check["runway"].description == "s.ev: at least 4 partitions exist ahead of now"
    assert by_check["runway"].expected == (
        "attached partitions covering the current day and the next 4 (2026-10-31 00:00Z to 2026-11-05 00:00Z)"
    )
    assert by_check["retention"].description == "s.ev: no attached partition lies entirely before now - 3 days"
    assert by_check["retention"].expected == (
        "no partition whose upper bound is at or before 2026-10-28 14:50Z (now - 3 days - 10 minutes' grace)"
    )
    assert "[2026-10-28 15:00Z, 2026-11-05 00:00Z)" in by_check["contiguity"].description
    assert by_check["not_null_key"].description.startswith("s.ev: the partition key ts is never NULL")


def test_checks_with_nothing_to_check_are_skipped_not_failed():
    no_retention = config_for("s", [table_entry("s", "ev", retention=None)])
    assert isinstance(retention_check(no_retention.tables[0], _facts(), NOW, "UTC"), Skipped)
    cfg = _config()
    suite = build_suite(cfg, cfg.tables[0], _facts(default=False), ["default_clean", "not_null_key"], now=NOW)
    assert suite.checks == () and {s.check for s in suite.skipped} == {"default_clean", "not_null_key"}
    assert isinstance(default_clean_check(cfg.tables[0], _facts(), []), Skipped)


def test_unknown_check_and_missing_migration_id_are_caller_errors():
    cfg = _config()
    with pytest.raises(ValueError, match="unknown"):
        run_gate("host=/nonexistent", cfg, cfg.tables[0], "g", ["bogus"])
    with pytest.raises(ValueError, match="migration_id"):
        run_gate("host=/nonexistent", cfg, cfg.tables[0], "g", ["conserved"])
    with pytest.raises(ValueError, match="migration_id"):
        run_gate("host=/nonexistent", cfg, cfg.tables[0], "g", ["default_clean"], ranges=MIGRATED)


@pytest.mark.parametrize(
    "query, message",
    [
        ("SELECT 1 AS problem FROM x", "must read {batch}"),
        ("SELECT 1 AS problem FROM {batch} JOIN y ON true", "must not use JOIN"),
        ("SELECT s.x AS problem FROM {batch} s", "already aliased"),
        ("SELECT s.x AS problem FROM {batch} AS s", "already aliased"),
        ("SELECT '{x}' AS problem FROM {batch}", "braces"),
    ],
)
def test_check_query_refuses_what_gx_would_rewrite(query, message):
    with pytest.raises(ValueError, match=message):
        check_query(query)


def test_check_query_accepts_join_inside_strings_and_keywords_after_batch():
    assert check_query("SELECT 'a JOIN b' AS problem FROM {batch} WHERE true ORDER BY 1")


def test_bucket_range_follows_the_configured_clock():
    chicago = config_for("s", [table_entry("s", "ev")], timezone="America/Chicago")
    # 2026-11-01 local midnight in Chicago is 05:00 UTC; that day has 25 hours (DST ends)
    rng = bucket_range("2026-11-01 05:00:00+00", chicago.tables[0], _facts(), "America/Chicago")
    assert rng == Range(datetime(2026, 11, 1, 5, tzinfo=timezone.utc), datetime(2026, 11, 2, 6, tzinfo=timezone.utc))
    wall = bucket_range(
        "2026-11-01 00:00:00", chicago.tables[0], _facts("timestamp without time zone"), "America/Chicago"
    )
    assert wall == Range(datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 2, tzinfo=timezone.utc))


def test_ranges_accept_datetimes_iso_strings_and_ranges():
    got = as_ranges(
        [
            ("2026-10-30T00:00:00Z", "2026-10-31T00:00:00+00:00"),
            (datetime(2026, 10, 31), datetime(2026, 11, 1)),
            Range(TODAY, TODAY + DAY),
        ]
    )
    assert got[0] == Range(datetime(2026, 10, 30, tzinfo=timezone.utc), datetime(2026, 10, 31, tzinfo=timezone.utc))
    assert got[1].lower.tzinfo is not None and got[2] == Range(TODAY, TODAY + DAY)


@pytest.mark.parametrize(
    "conninfo, expect_host_in_query",
    [
        ("host=/tmp/pgmaint-pg-x port=5433 user=postgres dbname=db1", True),
        ("host=db.example.com port=5432 user=app password=p@ss:w/rd%x dbname=db1 sslmode=require", False),
        ("postgresql://app:p%40ss@db.example.com:6543/db1?sslmode=verify-full&options=-c%20search_path%3Dx", False),
    ],
)
def test_sqlalchemy_url_round_trips_libpq_parameters(conninfo, expect_host_in_query):
    from psycopg.conninfo import conninfo_to_dict

    url, extra = sqlalchemy_url(conninfo)
    parsed = sa.engine.make_url(url)
    assert parsed.drivername == "postgresql+psycopg"
    want = {k: v for k, v in conninfo_to_dict(conninfo).items() if v is not None}
    assert ("host" in parsed.query) is expect_host_in_query
    assert (parsed.query.get("host") or parsed.host) == want["host"]
    assert str(parsed.port) == str(want["port"])
    assert (
        parsed.username == want["user"]
        and parsed.password == want.get("password")
        and parsed.database == want["dbname"]
    )
    if "sslmode" in want:
        assert parsed.query["sslmode"] == want["sslmode"]
    assert extra == ({"options": want["options"]} if "options" in want else {})


def test_error_message_reads_both_exception_info_shapes():
    assert error_message({"raised_exception": False, "exception_message": None}) is None
    assert error_message({"raised_exception": True, "exception_message": "boom\nLINE 1"}) == "boom"
    assert (
        error_message({"metric-a": {"raised_exception": True, "exception_message": "(psycopg.errors.X) bad\n[SQL"}})
        == "(psycopg.errors.X) bad"
    )


def test_importing_the_gate_modules_does_not_import_great_expectations():
    """GX (~3 s, ~250 MB) loads only when a gate runs: the engine's gate modules import neither GX nor
    Airflow, and the gate task's module (imported inside the task) adds Airflow but not GX."""
    probe = (
        "import sys\n"
        "import include.pgmaint.quality, include.pgmaint.quality.suites, include.pgmaint.quality.facts\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('great_expectations', 'airflow', 'sqlalchemy')]\n"
        "assert not heavy, heavy[:5]\n"
        "import include.pgmaint.airflow.quality\n"
        "gx = [m for m in sys.modules if m.split('.')[0] == 'great_expectations']\n"
        "assert not gx, gx[:5]\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_dag_files_parse_without_importing_great_expectations():
    probe = (
        "import runpy, sys, pathlib\n"
        "import airflow.sdk\n"
        f"for path in sorted(pathlib.Path({str(REPO / 'dags')!r}).glob('*.py')):\n"
        "    runpy.run_path(str(path))\n"
        "assert 'great_expectations' not in sys.modules\n"
        "print('ok')\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "AIRFLOW_CONN_PGMAINT_TARGET": '{"conn_type": "postgres", "host": "192.0.2.1"}',
    }
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_great_expectations_is_imported_quietly():
    """Imported plainly under an INFO root logger, GX prints ~200 INFO lines; through import_gx, none."""
    probe = (
        "import logging\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from include.pgmaint.quality.runner import import_gx\n"
        "gx = import_gx()\n"
        "gx.get_context(mode='ephemeral')\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "default", "-c", probe],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    assert out.stderr == ""
