"""Data-quality gates against a real PostgreSQL: each check passes on a healthy table and fails,
with a message naming what was expected and what was observed, on a crafted broken state."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from include.pgmaint.config import LockBudget
from include.pgmaint.quality import run_gate
from tests.fixtures.quality import KEY_TYPES, NOW, PREMAKE, healthy_table, partition_names
from tests.integration.helpers import add_partition, config_for, table_entry

pytestmark = [pytest.mark.pg, pytest.mark.usefixtures("gx_warm")]  # GX imported once per session
CATALOG_CHECKS = ["runway", "retention", "contiguity", "default_clean", "not_null_key"]


def gate(dsn, cfg, checks, **kw):
    return run_gate(dsn, cfg, cfg.tables[0], "test", checks, now=kw.pop("now", NOW), **kw)


def assert_passed(result):
    assert result.failures == [] and result.errors == [], result.failures + result.errors
    assert result.success and result.summary["success"]


@pytest.mark.parametrize("key_type", list(KEY_TYPES))
@pytest.mark.parametrize("tz", ["UTC", "America/Chicago"])
def test_every_check_passes_on_a_table_maintenance_keeps_healthy(conn, pg_dsn, scratch_schema, key_type, tz):
    cfg = healthy_table(conn, scratch_schema, key_type=key_type, tz=tz, nullable=True)

    result = gate(pg_dsn, cfg, CATALOG_CHECKS)

    assert_passed(result)
    assert [e["check"] for e in result.summary["expectations"]] == CATALOG_CHECKS
    assert all(e["success"] and e["observed_value"] == 0 for e in result.summary["expectations"])


def test_a_gap_fails_contiguity_naming_the_gap(conn, pg_dsn, scratch_schema):
    cfg = healthy_table(conn, scratch_schema)
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(scratch_schema, "ev_p20261030")))

    result = gate(pg_dsn, cfg, ["runway", "contiguity"])

    assert not result.success and result.errors == []
    assert result.failures == [
        f"{scratch_schema}.ev: no gaps and no overlaps between consecutive partitions in "
        "[2026-10-28 15:00Z, 2026-11-05 00:00Z): expected each partition ends exactly where the next one begins, "
        "observed 1 problem(s): gap [2026-10-30 00:00Z, 2026-10-31 00:00Z) between ev_p20261029 and ev_p20261031"
    ]
    assert [e["success"] for e in result.summary["expectations"]] == [True, False]  # runway starts today: intact


def test_a_gap_before_the_window_is_not_contiguitys_business(conn, pg_dsn, scratch_schema):
    cfg = healthy_table(conn, scratch_schema)
    # an old partition, expired, separated from the rest by a gap that ends before the cutoff
    add_partition(
        conn,
        scratch_schema,
        "ev",
        NOW.replace(hour=0) - timedelta(days=10),
        NOW.replace(hour=0) - timedelta(days=9),
        "ev_ancient",
    )
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(scratch_schema, "ev_p20261028")))
    # [10-28 12:00, 10-29): covers the cutoff
    add_partition(
        conn,
        scratch_schema,
        "ev",
        NOW.replace(hour=0) - timedelta(days=3) + timedelta(hours=12),
        NOW.replace(hour=0) - timedelta(days=2),
        "ev_half",
    )

    result = gate(pg_dsn, cfg, ["contiguity"])

    assert_passed(result)


def test_a_missing_future_partition_fails_runway_but_leaves_no_gap(conn, pg_dsn, scratch_schema):
    cfg = healthy_table(conn, scratch_schema)
    last = [n for n in partition_names(conn, scratch_schema) if n != "ev_default"][-1]
    assert last == "ev_p20261104"
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(scratch_schema, last)))

    result = gate(pg_dsn, cfg, ["runway", "contiguity"])

    assert result.failures == [
        f"{scratch_schema}.ev: at least {PREMAKE} partitions exist ahead of now: expected attached partitions covering "
        f"the current day and the next {PREMAKE} (2026-10-31 00:00Z to 2026-11-05 00:00Z), observed 1 problem(s): "
        "no partition for [2026-11-04 00:00Z, 2026-11-05 00:00Z)"
    ]
    assert [e["check"] for e in result.summary["expectations"] if e["success"]] == ["contiguity"]


def test_an_expired_partition_left_attached_fails_retention(conn, pg_dsn, scratch_schema):
    cfg = healthy_table(conn, scratch_schema)
    # [10-27, 10-28): ends before the cutoff 10-28 15:00
    add_partition(
        conn,
        scratch_schema,
        "ev",
        NOW.replace(hour=0) - timedelta(days=4),
        NOW.replace(hour=0) - timedelta(days=3),
        "ev_p20261027",
    )

    result = gate(pg_dsn, cfg, ["retention", "contiguity"])

    assert result.failures == [
        f"{scratch_schema}.ev: no attached partition lies entirely before now - 3 days: expected no partition whose "
        "upper bound is at or before 2026-10-28 14:50Z (now - 3 days - 10 minutes' grace), observed 1 problem(s): "
        "partition ev_p20261027 "
        "[2026-10-27 00:00Z, 2026-10-28 00:00Z) lies entirely before the cutoff"
    ]


def test_a_partition_that_expired_minutes_ago_is_within_the_grace(conn, pg_dsn, scratch_schema):
    """A gate right after a retire step whose clock read just before the boundary must not page anyone."""
    cfg = healthy_table(conn, scratch_schema)
    expiry = NOW.replace(hour=0) + timedelta(days=1)  # ev_p20261028 ends 10-29; now - 3 days passes it on 11-01 00:00

    assert_passed(gate(pg_dsn, cfg, ["retention"], now=expiry + timedelta(minutes=5)))
    late = gate(pg_dsn, cfg, ["retention"], now=expiry + timedelta(minutes=11))
    assert (
        len(late.failures) == 1 and "partition ev_p20261028 [2026-10-28 00:00Z, 2026-10-29 00:00Z)" in late.failures[0]
    )


def test_null_keys_in_the_default_fail_not_null_key(conn, pg_dsn, scratch_schema):
    cfg = healthy_table(conn, scratch_schema, nullable=True)
    conn.execute(
        sql.SQL("INSERT INTO {} (ts, payload) SELECT NULL, 'no key' FROM generate_series(1, 3)").format(
            sql.Identifier(scratch_schema, "ev")
        )
    )

    result = gate(pg_dsn, cfg, ["not_null_key"])

    assert result.failures == [
        f"{scratch_schema}.ev: the partition key ts is never NULL (only the DEFAULT partition could hold NULL keys): "
        "expected 0 rows with a NULL ts, observed 1 problem(s): the DEFAULT partition ev_default holds 3 row(s) whose ts is NULL"
    ]


def test_default_clean_probes_only_the_given_ranges(conn, pg_dsn, scratch_schema):
    cfg = healthy_table(conn, scratch_schema)
    day = NOW.replace(hour=0) + timedelta(days=10)  # beyond the horizon: such rows sit in the DEFAULT
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (ts, payload) SELECT %s::timestamptz + g * interval '1 second', 'late' "
            "FROM generate_series(1, 1500) g"
        ).format(sql.Identifier(scratch_schema, "ev")),
        [day],
    )
    clean = [(day - timedelta(days=1), day)]
    dirty = [(day - timedelta(days=1), day), (day, day + timedelta(days=1))]

    assert_passed(gate(pg_dsn, cfg, ["default_clean"], ranges=clean))
    result = gate(pg_dsn, cfg, ["default_clean"], ranges=dirty)
    empty = gate(pg_dsn, cfg, ["default_clean"])

    assert result.failures == [
        f"{scratch_schema}.ev: the DEFAULT partition ev_default holds no rows in the 2 migrated range(s): expected 0 rows "
        "in [2026-11-09 00:00Z, 2026-11-10 00:00Z), [2026-11-10 00:00Z, 2026-11-11 00:00Z), observed 1 problem(s): "
        "the DEFAULT partition ev_default holds more than 1000 row(s) in [2026-11-10 00:00Z, 2026-11-11 00:00Z)"
    ]
    assert empty.failures == [
        f"{scratch_schema}.ev: the DEFAULT partition ev_default is empty: expected 0 rows, observed 1 problem(s): "
        "the DEFAULT partition ev_default holds more than 1000 row(s)"
    ]


def test_a_table_that_is_not_as_configured_fails_the_gate(conn, pg_dsn, scratch_schema):
    cfg = config_for(scratch_schema, [table_entry(scratch_schema, "missing")])

    result = gate(pg_dsn, cfg, ["runway"])

    assert result.errors == [] and len(result.failures) == 1
    assert (
        "the table is range-partitioned as configured: expected a table range-partitioned on ts, observed"
        in result.failures[0]
    )
    assert "does not exist" in result.failures[0]


def test_a_connection_error_is_an_error_not_a_failure(conn, pg_dsn, scratch_schema):
    cfg = healthy_table(conn, scratch_schema)
    params = conninfo_to_dict(pg_dsn)
    wrong = make_conninfo(pg_dsn, port=str(int(params.get("port") or 5432) + 1), connect_timeout="3")

    result = gate(wrong, cfg, CATALOG_CHECKS)

    assert not result.success and result.failures == []
    [error] = result.errors
    assert error.startswith(f"{scratch_schema}.ev: could not read the catalog: OperationalError")
    assert result.summary["errors"] == 1 and result.summary["failed"] == 0


SHORT_BUDGET = LockBudget(total_seconds=1.5, backoff_base_seconds=0.1, backoff_cap_seconds=0.4)


def test_a_lock_held_past_the_budget_makes_the_gate_retryable_not_failed(conn, pg_dsn, scratch_schema):
    """A session holds ACCESS EXCLUSIVE on the DEFAULT for longer than the lock budget: the checks that read it
    are errors (retryable) naming the holder; the catalog checks are evaluated all the same."""
    cfg = replace(healthy_table(conn, scratch_schema), lock_budget=SHORT_BUDGET)
    with psycopg.connect(pg_dsn) as locker:
        locker.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(scratch_schema, "ev_default"))
        )
        holder = locker.info.backend_pid
        started = time.monotonic()
        result = gate(pg_dsn, cfg, ["runway", "default_clean", "not_null_key"])
        waited = time.monotonic() - started
        locker.rollback()

    assert result.failures == [] and not result.success
    assert len(result.errors) == 2, result.errors
    for error in result.errors:
        assert "lock timeout" in error and "still locked after" in error, error
        assert f"pid {holder} holds AccessExclusiveLock on {scratch_schema}.ev_default" in error
    assert [(e["check"], e["success"]) for e in result.summary["expectations"]] == [
        ("runway", True),
        ("default_clean", False),
        ("not_null_key", False),
    ]
    assert waited >= SHORT_BUDGET.total_seconds - SHORT_BUDGET.backoff_cap_seconds  # it did wait, within budget


@pytest.mark.parametrize("evaluator", ["gx", "sql"])
def test_a_gate_waits_for_another_sessions_ddl_on_the_default_and_then_passes(conn, pg_dsn, scratch_schema, evaluator):
    """Another session detaches a partition (ACCESS EXCLUSIVE on the parent, the partition and the DEFAULT) and
    ends its transaction about a second later: the gate, whose checks read the DEFAULT and the catalog, waits and
    passes. Before pgmaint waited for locks here, the first 200 ms lock timeout made it an error, and failed the
    maintenance run whose gate met another run's retire."""
    cfg = healthy_table(conn, scratch_schema)
    newest = partition_names(conn, scratch_schema, "ev")[-1]
    locked, release = threading.Event(), threading.Event()

    def detach():
        with psycopg.connect(pg_dsn) as other:
            other.execute(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                    sql.Identifier(scratch_schema, "ev"), sql.Identifier(scratch_schema, newest)
                )
            )
            locked.set()
            release.wait(10)
            time.sleep(1.0)
            other.rollback()  # the table as it was: the gate must pass

    thread = threading.Thread(target=detach)
    thread.start()
    try:
        assert locked.wait(10)
        release.set()
        started = time.monotonic()
        result = gate(pg_dsn, cfg, ["contiguity", "default_clean", "not_null_key"], evaluator=evaluator)
        waited = time.monotonic() - started
    finally:
        release.set()
        thread.join()

    assert_passed(result)
    assert waited >= 0.5, waited  # it met the lock and waited for the commit


@pytest.fixture
def reader_role(conn, pg_dsn, scratch_schema):
    """A role that may read the catalog but not the DEFAULT partition."""
    role = f"{scratch_schema}_reader"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(scratch_schema), sql.Identifier(role)))
    try:
        yield make_conninfo(pg_dsn, user=role)
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_sql_error_inside_gx_is_an_error_and_the_other_checks_still_count(conn, pg_dsn, scratch_schema, reader_role):
    cfg = healthy_table(conn, scratch_schema)

    result = gate(reader_role, cfg, ["runway", "default_clean", "not_null_key"])

    assert result.failures == [] and not result.success
    assert len(result.errors) == 2, result.errors
    assert all(": not evaluated: " in e and "permission denied" in e for e in result.errors)
    assert result.errors[0].startswith(
        f"{scratch_schema}.ev: the DEFAULT partition ev_default is empty: not evaluated:"
    )
    assert [(e["check"], e["success"], e["error"]) for e in result.summary["expectations"]] == [
        ("runway", True, False),
        ("default_clean", False, True),
        ("not_null_key", False, True),
    ]


def test_summary_is_small_json_and_data_docs_land_in_the_given_folder(conn, pg_dsn, scratch_schema, tmp_path):
    cfg = healthy_table(conn, scratch_schema)
    conn.execute(
        sql.SQL("INSERT INTO {} (ts, payload) VALUES (%s, 'secret payload')").format(
            sql.Identifier(scratch_schema, "ev")
        ),
        [NOW + timedelta(days=30)],
    )

    result = gate(pg_dsn, cfg, CATALOG_CHECKS, data_docs_dir=str(tmp_path))

    assert result.docs_path == str(tmp_path / f"{scratch_schema}.ev" / "test" / "index.html")
    assert (tmp_path / f"{scratch_schema}.ev" / "test" / "index.html").exists()
    text = json.dumps(result.summary)
    assert len(text) < 4000 and "secret payload" not in text and '"unexpected_rows"' not in text
    assert result.summary["failed"] == 1 and result.summary["evaluated"] == 5
    assert result.summary["docs_path"] == result.docs_path


def test_no_retention_and_no_default_are_skipped_and_reported(conn, pg_dsn, scratch_schema):
    cfg = healthy_table(conn, scratch_schema, retention=None, default=False)

    result = gate(pg_dsn, cfg, CATALOG_CHECKS)

    assert_passed(result)
    assert {s["check"] for s in result.summary["skipped"]} == {"retention", "default_clean", "not_null_key"}
