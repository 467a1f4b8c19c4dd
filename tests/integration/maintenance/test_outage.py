"""Maintenance after an outage (issue 10): one run restores the whole window, gates stop only on
unexplained gaps, tables without a DEFAULT are first-class, `as_of` creates what history needs,
and concurrent runs converge. Against a real PostgreSQL (GX gates included)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from psycopg import sql

from include.pgmaint.db import connect
from include.pgmaint.escalation import settings_for
from include.pgmaint.maintenance import run_maintenance
from include.pgmaint.quality import run_gate
from include.pgmaint.state import ensure_state_schema
from include.pgmaint.watchdog import check_tables
from tests.integration.helpers import NOW, TODAY, add_partition, config_for, make_table, partitions, table_entry

pytestmark = pytest.mark.pg
CHICAGO = ZoneInfo("America/Chicago")
s = sql.Identifier


def chicago_table(
    conn, schema: str, name: str, key: str, first: datetime, last: datetime, *, default: bool = True
) -> None:
    """A daily table on Chicago days [first, last] (dates), keys and names as given (quoted)."""
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY, {} timestamptz NOT NULL, payload text, "
            "PRIMARY KEY (id, {})) PARTITION BY RANGE ({})"
        ).format(s(schema, name), s(key), s(key), s(key))
    )
    if default:
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(s(schema, f"{name} default"), s(schema, name))
        )
    day = first
    while day <= last:
        nxt = day + timedelta(days=1)
        lo, hi = (datetime(d.year, d.month, d.day, tzinfo=CHICAGO) for d in (day, nxt))
        add_partition(conn, schema, name, lo, hi, f"{name} {day:%m-%d}")
        day = nxt


def bounds(conn, schema: str, name: str) -> dict[str, str]:
    return partitions(conn, schema, name)


def gate(pg_dsn, cfg, checks, now):
    return run_gate(pg_dsn, cfg, cfg.tables[0], "before_retire", checks, now=now)


# 2026-11-03 09:00 in Chicago; clocks fell back on 2026-11-01 (a 25-hour day).
AFTER_DST = datetime(2026, 11, 3, 15, 0, tzinfo=timezone.utc)


def test_a_multi_day_gap_over_a_dst_change_is_closed_in_one_run(conn, pg_dsn, scratch_schema):
    """Partitions end three days ago (maintenance stopped), empty DEFAULT, America/Chicago, quoted mixed-case names."""
    chicago_table(conn, scratch_schema, "Request Log", "Created At", datetime(2026, 9, 25), datetime(2026, 10, 30))
    entry = table_entry(scratch_schema, '"Request Log"', partition_key='"Created At"', premake=2)
    cfg = config_for(scratch_schema, [entry], timezone="America/Chicago")

    [result] = run_maintenance(conn, cfg, now=AFTER_DST)

    assert result.outcome == "success", result.errors
    # the missed days (10-31, the 25-hour 11-01, 11-02), today (11-03) and two ahead
    assert result.created == [f"Request Log_p202610{d}" for d in ("31",)] + [
        f"Request Log_p2026110{d}" for d in range(1, 6)
    ]
    assert bounds(conn, scratch_schema, "Request Log")["Request Log_p20261101"] == (
        "FOR VALUES FROM ('2026-11-01 05:00:00+00') TO ('2026-11-02 06:00:00+00')"
    )
    # expired ones retired in the same run: 30 days before 11-03 09:00 Chicago is 10-04 09:00
    assert result.dropped == [
        f"Request Log {d:%m-%d}" for d in (datetime(2026, 9, 25) + timedelta(days=i) for i in range(9))
    ]
    verdict = gate(pg_dsn, cfg, ["contiguity", "runway"], AFTER_DST)
    assert verdict.success, verdict.failures + verdict.errors
    [again] = run_maintenance(conn, cfg, now=AFTER_DST + timedelta(minutes=15))
    assert again.outcome == "success" and (again.created, again.detached) == ([], [])


def test_rows_in_the_default_for_some_missed_days_need_migration_and_block_nothing_else(conn, pg_dsn, scratch_schema):
    make_table(conn, scratch_schema, "ev", days=range(-35, -4))  # partitions end four days ago
    conn.execute(
        sql.SQL("INSERT INTO {} (ts, payload) VALUES (%s, 'late'), (%s, 'late')").format(s(scratch_schema, "ev")),
        [TODAY - timedelta(days=3, hours=-2), TODAY - timedelta(days=1, hours=-5)],
    )
    cfg = config_for(scratch_schema, [table_entry(scratch_schema, "ev", auto_migrate=True)])

    [premade] = run_maintenance(conn, cfg, now=NOW, phases=("premake",))

    assert premade.outcome == "success", premade.errors
    pending = [m["partition"] for m in premade.needs_migration]
    assert pending == ["ev_p20261123", "ev_p20261125"]
    assert premade.needs_migration[0]["trigger"] == (
        f'scripts/airflow dags trigger default_partition_migration --conf \'{{"table": "{scratch_schema}.ev"}}\''
    )
    assert all(m["requested"] for m in premade.needs_migration)  # auto_migrate: the DAG emits the asset event
    assert premade.created == ["ev_p20261122", "ev_p20261124", "ev_p20261126", "ev_p20261127", "ev_p20261128"]
    # The gate before retire tolerates exactly those gaps and says so ...
    verdict = gate(pg_dsn, cfg, ["contiguity", "not_null_key"], NOW)
    assert verdict.success, verdict.failures + verdict.errors
    # ... so retirement proceeds: disk never fills because of a gap waiting for migration.
    [retired] = run_maintenance(conn, cfg, now=NOW, phases=("retire",))
    assert retired.dropped == ["ev_old_65", "ev_old_66", "ev_old_67", "ev_old_68", "ev_old_69"]
    rows = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(s(scratch_schema, "ev_default"))).fetchone()[0]
    assert rows == 2  # nothing moved, nothing lost

    # A gap maintenance cannot explain or fill (the name it would use is taken) still stops retirement, named.
    conn.execute(
        sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(s(scratch_schema, "ev"), s(scratch_schema, "ev_old_90"))
    )
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(s(scratch_schema, "ev_old_91"), s("ev_p20261116")))
    [blocked] = run_maintenance(conn, cfg, now=NOW, phases=("premake",))
    assert any("ev_p20261116" in n and "already used" in n for n in blocked.notes)
    verdict = gate(pg_dsn, cfg, ["contiguity"], NOW)
    assert not verdict.success
    assert any("gap [2026-11-16 00:00Z, 2026-11-17 00:00Z)" in line for line in verdict.failures), verdict.failures


def test_a_table_without_default_gets_its_gaps_and_the_watchdog_pages_one_interval_earlier(conn, scratch_schema):
    make_table(conn, scratch_schema, "ev", days=range(-30, -2), default=False)
    make_table(conn, scratch_schema, "ok", days=range(-30, 2), default=False)
    cfg = config_for(scratch_schema, [table_entry(scratch_schema, "ev"), table_entry(scratch_schema, "ok")])
    ensure_state_schema(conn, scratch_schema)  # the watchdog reads the journal

    before = {c.key: c for c in check_tables(conn, cfg, settings_for(cfg), now=NOW).conditions}
    gaps = before[f"gaps:{scratch_schema}.ev"]
    assert gaps.details["missing"] == [
        "[2026-11-24 00:00:00Z, 2026-11-25 00:00:00Z)",
        "[2026-11-25 00:00:00Z, 2026-11-26 00:00:00Z)",
    ]
    assert "rejected (there is no DEFAULT partition)" in gaps.message
    assert before[f"runway:{scratch_schema}.ev"].severity == "critical"
    # one partition ahead of today, premake 2: a table with a DEFAULT would only warn; without one, inserts are
    # one interval from failing, so it is critical
    runway_ok = before[f"runway:{scratch_schema}.ok"]
    assert runway_ok.severity == "critical" and "no DEFAULT partition" in runway_ok.message

    ev, ok = run_maintenance(conn, cfg, now=NOW)

    assert ev.outcome == ok.outcome == "success", ev.errors + ok.errors
    assert ev.created == ["ev_p20261124", "ev_p20261125", "ev_p20261126", "ev_p20261127", "ev_p20261128"]
    after = {c.key for c in check_tables(conn, cfg, settings_for(cfg), now=NOW).conditions}
    assert not {k for k in after if k.startswith(("gaps:", "runway:"))}, after


def test_as_of_creates_what_history_needs_and_never_what_retention_drops(conn, scratch_schema):
    make_table(conn, scratch_schema, "ev", days=range(-30, 3))  # healthy
    entry = table_entry(scratch_schema, "hist", premake=1)
    del entry["retention"]  # kept forever: loading old history
    make_table(conn, scratch_schema, "hist", days=range(-1, 2))
    cfg = config_for(scratch_schema, [table_entry(scratch_schema, "ev"), entry])

    # in the past, for a table kept forever: as_of's day and the premake after it
    past = NOW - timedelta(days=100)
    [hist] = run_maintenance(conn, cfg, [cfg.tables[1]], now=NOW, as_of=past)
    assert hist.created == ["hist_p20260818", "hist_p20260819"]
    # the next plain run closes the window that now starts at the oldest partition
    [hist] = run_maintenance(conn, cfg, [cfg.tables[1]], now=NOW)
    assert len(hist.created) == 100 - 2 - 1 and hist.created[0] == "hist_p20260820"

    # older than retention: nothing is created, the summary says why, nothing inside retention is retired
    [ev] = run_maintenance(conn, cfg, [cfg.tables[0]], now=NOW, as_of=NOW - timedelta(days=45))
    assert ev.outcome == "success" and ev.created == [] and ev.dropped == []
    assert any("before the retention cutoff" in n and "not created" in n for n in ev.notes), ev.notes

    # in the future: its day and the premake after it; retirement still judged on the wall clock
    [ev] = run_maintenance(conn, cfg, [cfg.tables[0]], now=NOW, as_of=NOW + timedelta(days=10))
    assert ev.created == ["ev_p20261206", "ev_p20261207", "ev_p20261208"] and ev.dropped == []
    assert "ev_old_70" in partitions(conn, scratch_schema, "ev")  # inside today's retention: kept

    with pytest.raises(ValueError, match="as_of must carry a time zone"):
        run_maintenance(conn, cfg, now=NOW, as_of=datetime(2026, 1, 1))


def test_concurrent_runs_end_like_one_run_with_no_failure(pg_dsn, scratch_schema):
    """Backfill runs (each with its own as_of), a scheduled and a manual run at once: one runner per table,
    the others skip and say why; the partitions are those one run makes."""
    with connect(pg_dsn) as conn:
        make_table(conn, scratch_schema, "ev", days=range(-35, -3))
        make_table(conn, scratch_schema, "ref", days=range(-35, -3))
    cfg = config_for(scratch_schema, [table_entry(scratch_schema, "ev")])
    ref_cfg = config_for(scratch_schema, [table_entry(scratch_schema, "ref")])
    as_ofs = [NOW - timedelta(hours=h) for h in range(0, 96, 8)] + [None, None]
    results, barrier = [], threading.Barrier(len(as_ofs))

    def one(as_of):
        with connect(pg_dsn) as c:
            barrier.wait()
            results.extend(run_maintenance(c, cfg, now=NOW, as_of=as_of))

    threads = [threading.Thread(target=one, args=(a,)) for a in as_ofs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with connect(pg_dsn) as conn:
        run_maintenance(conn, cfg, now=NOW)  # whatever the skipped ones left, a later run finishes
        run_maintenance(conn, ref_cfg, now=NOW)
        got = {n.removeprefix("ev"): b for n, b in partitions(conn, scratch_schema, "ev").items()}
        want = {n.removeprefix("ref"): b for n, b in partitions(conn, scratch_schema, "ref").items()}

    assert len(results) == len(as_ofs)
    assert {r.outcome for r in results} <= {"success", "skipped"} and not [r for r in results if r.errors]
    assert all("runner lock" in r.skipped_reason for r in results if r.outcome == "skipped")
    assert got == want
