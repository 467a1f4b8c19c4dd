"""Taking over from pg_partman 4.7 on PostgreSQL 15: import, round trip, hand-over, dual manager, the way back.

A database of its own in the throwaway PG15 cluster, whose default TimeZone is America/New_York
(pg_partman aligns daily partitions to New York midnight there). pg_partman's own functions run
on plain sessions (the database's zone), as its background worker would; pgmaint's run on
pgmaint sessions (db.connect: timeouts, TimeZone=UTC).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from include.pgmaint import partman
from include.pgmaint.config import parse_config
from include.pgmaint.db import connect
from include.pgmaint.escalation import settings_for
from include.pgmaint.maintenance import plan_run, run_maintenance
from include.pgmaint.state import ensure_state_schema
from include.pgmaint.watchdog import check_tables

REPO = Path(__file__).resolve().parents[3]
ZONE = "America/New_York"
ADOPTABLE = ["app.request_log", "app.monthly", "app.weekly", "app.hourly"]


@pytest.fixture(scope="module")
def partman_db(pg15_server):
    """conninfo of a fresh database with pg_partman and seven partman-managed parents."""
    if not pg15_server.has_partman:
        pytest.skip("pg_partman is not installed for PostgreSQL 15 (apt-get install postgresql-15-partman)")
    name = f"takeover_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg15_server.conninfo("postgres"), autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        c.execute(sql.SQL("ALTER DATABASE {} SET timezone = {}").format(sql.Identifier(name), sql.Literal(ZONE)))
    conninfo = pg15_server.conninfo(name)
    with psycopg.connect(conninfo, autocommit=True) as c:
        c.execute("CREATE SCHEMA partman; CREATE EXTENSION pg_partman SCHEMA partman; CREATE SCHEMA app")
        c.execute(
            "CREATE TABLE app.request_log (id bigint, created_at timestamptz NOT NULL) PARTITION BY RANGE (created_at)"
        )
        c.execute("CREATE INDEX ON app.request_log (created_at)")
        c.execute("SELECT partman.create_parent('app.request_log', 'created_at', 'native', 'daily')")
        c.execute(
            "UPDATE partman.part_config SET retention = '2 days', retention_keep_table = false "
            "WHERE parent_table = 'app.request_log'"
        )
        c.execute("CREATE TABLE app.monthly (id bigint, ts timestamp NOT NULL) PARTITION BY RANGE (ts)")
        c.execute("SELECT partman.create_parent('app.monthly', 'ts', 'native', 'monthly', p_premake := 2)")
        c.execute("CREATE TABLE app.weekly (id bigint, d date NOT NULL) PARTITION BY RANGE (d)")
        c.execute("SELECT partman.create_parent('app.weekly', 'd', 'native', 'weekly', p_premake := 3)")
        c.execute("CREATE TABLE app.hourly (id bigint, ts timestamptz NOT NULL) PARTITION BY RANGE (ts)")
        c.execute("SELECT partman.create_parent('app.hourly', 'ts', 'native', 'hourly', p_premake := 6)")
        c.execute("CREATE TABLE app.by_id (id bigint NOT NULL) PARTITION BY RANGE (id)")
        c.execute("SELECT partman.create_parent('app.by_id', 'id', 'native', '1000')")
        c.execute("CREATE TABLE app.templated (id bigint NOT NULL, ts timestamptz NOT NULL) PARTITION BY RANGE (ts)")
        c.execute("SELECT partman.create_parent('app.templated', 'ts', 'native', 'daily')")
        c.execute("CREATE UNIQUE INDEX ON partman.template_app_templated (id)")  # what the parent cannot have
        c.execute("CREATE TABLE app.unlogged (id bigint, ts timestamptz NOT NULL) PARTITION BY RANGE (ts)")
        c.execute("SELECT partman.create_parent('app.unlogged', 'ts', 'native', 'daily')")
        c.execute("ALTER TABLE partman.template_app_unlogged SET UNLOGGED")  # 4.7 makes new partitions UNLOGGED
        c.execute(
            "INSERT INTO app.request_log SELECT g, now() - g * interval '1 minute' FROM generate_series(1, 100) g"
        )
        c.execute("SELECT partman.run_maintenance()")  # partman's runway and retention in place
    yield conninfo
    with psycopg.connect(pg15_server.conninfo("postgres"), autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def conn(partman_db):
    with connect(partman_db) as c:
        c.execute("UPDATE partman.part_config SET automatic_maintenance = 'on'")  # every test starts before hand-over
        yield c


@pytest.fixture(scope="module")
def imported(partman_db):
    with connect(partman_db) as c:
        result = partman.import_config(c, partman_db)
    text = partman.render(result)
    return result, text


def config_from(text: str, state_schema: str, **table_changes):
    raw = yaml.safe_load(text)
    raw["state_schema"] = state_schema
    for table in raw["tables"]:
        table.update(table_changes)
    return parse_config(raw)


@pytest.fixture
def config(imported):
    schema = f"s_{uuid.uuid4().hex[:8]}"
    yield config_from(imported[1], schema)


def partition_set(c, parent: str) -> list[tuple[str, str]]:
    return c.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass ORDER BY 1",
        [parent],
    ).fetchall()


def automatic(c) -> dict[str, str]:
    return dict(c.execute("SELECT parent_table, automatic_maintenance FROM partman.part_config").fetchall())


def test_import_reads_part_config_and_says_what_it_cannot_express(imported):
    result, text = imported
    assert result.version.startswith("4.7")
    assert sorted(t.parent for t in result.imported) == sorted(ADOPTABLE)
    assert result.zone.zone == ZONE and "server's TimeZone (database)" in result.zone.reason
    raw = yaml.safe_load(text)
    cfg = parse_config(raw)  # the output is a valid pgmaint config as printed
    assert cfg.timezone == ZONE
    by_name = {t["name"]: t for t in raw["tables"]}
    assert by_name["app.request_log"] == {
        "name": "app.request_log",
        "partition_key": "created_at",
        "interval": "1 day",
        "premake": 4,
        "retention": "2 days",
        "retention_keep_table": False,
        "name_format": "YYYY_MM_DD",  # pg_partman 4.x's daily datetime_string: new partitions are named like its own
        "writers": ["pg_partman"],
    }
    assert (by_name["app.monthly"]["interval"], by_name["app.monthly"]["premake"]) == ("1 month", 2)
    assert (by_name["app.weekly"]["interval"], by_name["app.hourly"]["interval"]) == ("1 week", "1 hour")
    assert [by_name[t]["name_format"] for t in ("app.monthly", "app.weekly", "app.hourly")] == [
        "YYYY_MM",
        'IYYY"w"IW',
        "YYYY_MM_DD_HH24MI",
    ]
    assert raw["services"] == [{"name": "pg_partman", "kind": "pg_partman"}]
    left = {t.parent: " ".join(t.refused) for t in result.left_out}
    assert "id-based partitioning" in left["app.by_id"]
    assert "template_app_templated_id_idx" in left["app.templated"] and "CREATE UNIQUE INDEX" in left["app.templated"]
    assert "UNLOGGED (the parent is logged)" in left["app.unlogged"]
    assert "# - app.by_id: id-based partitioning" in text and "# - app.templated: template table" in text
    assert "# name_format: pg_partman's datetime_string 'YYYY_MM_DD': new partitions are named request_log_p<" in text
    assert "# not expressed: infinite_time_partitions off" in text


def test_round_trip_dry_run_on_the_imported_config_plans_nothing(conn, config):
    results = run_maintenance(conn, config, dry_run=True)
    for r in results:
        assert r.statements == [] and r.retires_planned == [] and r.needs_migration == [], (r.table, r.statements)
        assert not [n for n in r.notes if "not created" in n], r.notes  # no desired range clashes with partman's bounds
        assert any("dual_manager" in n for n in r.notes)  # before hand-over a real run would skip it


def test_round_trip_fails_in_the_wrong_zone(conn, imported):
    """The check above can fail: planned in UTC, New York's partitions clash with every desired range."""
    raw = yaml.safe_load(imported[1])
    raw.update(timezone="UTC", state_schema=f"s_{uuid.uuid4().hex[:8]}")
    result = {r.table: r for r in run_maintenance(conn, parse_config(raw), dry_run=True)}
    assert [n for n in result["app.request_log"].notes if "overlaps existing partition" in n]


def test_dual_manager_is_detected_and_maintenance_skips(conn, config):
    ensure_state_schema(conn, config.state_schema)
    found = check_tables(conn, config, settings_for(config))
    keys = {c.key for c in found.conditions}
    assert {f"dual_manager:{t}" for t in ADOPTABLE} <= keys
    assert all(f"dual_manager:{t}" in found.scope for t in ADOPTABLE)
    before = {t: partition_set(conn, t) for t in ADOPTABLE}
    # what the partition_maintenance DAG maps: nothing, every table skipped with the reason (and journalled once)
    planned = plan_run(conn, config)
    assert planned["work"] == []
    assert {t: v["status"] for t, v in planned["tables"].items()} == dict.fromkeys(ADOPTABLE, "skipped")
    assert all(v["why"].startswith(f"dual_manager: {t} ") for t, v in planned["tables"].items())
    assert {t: r["skipped_reason"][: len("dual_manager:")] for t, r in planned["results"].items()} == dict.fromkeys(
        ADOPTABLE, "dual_manager:"
    )
    assert planned["journalled"] == 4
    assert {t: partition_set(conn, t) for t in ADOPTABLE} == before
    conn.execute(
        sql.SQL("DELETE FROM {}.runs").format(sql.Identifier(config.state_schema))
    )  # the run below journals too
    results = run_maintenance(conn, config)
    assert {r.table: r.outcome for r in results} == dict.fromkeys(ADOPTABLE, "skipped")
    assert all(r.skipped_reason.startswith("dual_manager:") for r in results)
    assert {t: partition_set(conn, t) for t in ADOPTABLE} == before
    journal = conn.execute(
        sql.SQL("SELECT outcome, error FROM {}.runs WHERE job = 'maintenance'").format(
            sql.Identifier(config.state_schema)
        )
    ).fetchall()
    assert len(journal) == 4 and all(o == "skipped" and e.startswith("dual_manager:") for o, e in journal)


def test_handover_then_maintenance_changes_nothing_and_partman_skips(conn, config, partman_db):
    before = {t: partition_set(conn, t) for t in ADOPTABLE}
    results = partman.handover(conn, config, who="alice (change 4711)", wait_seconds=5)
    assert {r.table: r.action for r in results} == dict.fromkeys(ADOPTABLE, "handed_over")
    assert all(not r.problems for r in results), [str(r) for r in results]
    assert all(any("skips the table" in n for n in r.notes) for r in results)
    assert all(any("nothing to do" in n for n in r.notes) for r in results)
    states = automatic(conn)
    assert {t: states[t] for t in ADOPTABLE} == dict.fromkeys(ADOPTABLE, "off")
    assert states["app.by_id"] == states["app.templated"] == "on"  # not adopted: left to pg_partman
    rows = conn.execute(
        sql.SQL(
            "SELECT table_name, outcome, summary->>'who', summary->'automatic_maintenance', started_at "
            "FROM {}.runs WHERE job = 'partman_handover'"
        ).format(sql.Identifier(config.state_schema))
    ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(ADOPTABLE)
    assert all(
        r[1] == "success" and r[2] == "alice (change 4711)" and r[3] == {"before": "on", "after": "off"} for r in rows
    )

    # pgmaint maintains them now, and its first run changes nothing pg_partman had made
    maintained = run_maintenance(conn, config)
    assert {r.table: r.outcome for r in maintained} == dict.fromkeys(ADOPTABLE, "success")
    assert all(not (r.created or r.detached or r.dropped) for r in maintained)
    assert {t: partition_set(conn, t) for t in ADOPTABLE} == before
    ensure_state_schema(conn, config.state_schema)
    assert not [
        c.key for c in check_tables(conn, config, settings_for(config)).conditions if c.key.startswith("dual_manager:")
    ]

    # pg_partman's worker (run_maintenance() without a parent) leaves them alone even when it would premake more
    conn.execute("UPDATE partman.part_config SET premake = premake + 3")
    try:
        with psycopg.connect(partman_db, autocommit=True) as plain:
            plain.execute("SELECT partman.run_maintenance()")
        assert {t: partition_set(conn, t) for t in ADOPTABLE} == before
        assert len(partition_set(conn, "app.templated")) > 0
    finally:
        conn.execute("UPDATE partman.part_config SET premake = premake - 3")

    lines = partman.status(conn, config)
    assert all(
        "pgmaint (handed over)" in line and "alice (change 4711)" in line for line in lines if line.startswith("app.")
    )

    # the way back: one call; pgmaint then skips the tables again
    back = partman.handback(conn, config, who="bob")
    assert {r.table: r.action for r in back} == dict.fromkeys(ADOPTABLE, "handed_back")
    assert {t: automatic(conn)[t] for t in ADOPTABLE} == dict.fromkeys(ADOPTABLE, "on")
    assert {r.outcome for r in run_maintenance(conn, config)} == {"skipped"}
    keys = {c.key for c in check_tables(conn, config, settings_for(config)).conditions}
    assert {f"dual_manager:{t}" for t in ADOPTABLE} <= keys
    who = conn.execute(
        sql.SQL("SELECT summary->>'who' FROM {}.runs WHERE job = 'partman_handback'").format(
            sql.Identifier(config.state_schema)
        )
    ).fetchall()
    assert who == [("bob",)] * 4
    assert all(
        "DUAL MANAGER" in line and "handback" in line
        for line in partman.status(conn, config)
        if line.startswith("app.")
    )


def test_handback_without_a_recorded_handover_changes_nothing(conn, config):
    conn.execute("UPDATE partman.part_config SET automatic_maintenance = 'off' WHERE parent_table = 'app.weekly'")
    results = partman.handback(conn, config, ["app.weekly"], who="carol")
    assert [(r.action, r.previous) for r in results] == [("unchanged", "off")]
    assert automatic(conn)["app.weekly"] == "off"


def test_split_partman_premakes_pgmaint_only_migrates(conn, imported):
    schema = f"s_{uuid.uuid4().hex[:8]}"
    cfg = config_from(imported[1], schema, maintained_by="pg_partman")
    results = run_maintenance(conn, cfg)
    assert {r.outcome for r in results} == {"skipped"}
    assert all(r.skipped_reason.startswith("maintained_by: pg_partman") for r in results)
    ensure_state_schema(conn, schema)
    keys = {c.key for c in check_tables(conn, cfg, settings_for(cfg)).conditions}
    assert not [k for k in keys if k.startswith(("dual_manager:", "cadence:"))]
    handed = partman.handover(conn, cfg, who="dave")
    assert {r.action for r in handed} == {"refused"}  # the split keeps pg_partman on
    assert {automatic(conn)[t] for t in ADOPTABLE} == {"on"}


def test_cli_import_and_handover(partman_db, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [str(REPO / "scripts" / "pgmaint-partman"), "import", partman_db, "--tables", "app.request_log", "app.by_id"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 1, out.stderr  # one table could not be imported
    assert "NOT IMPORTED app.by_id: id-based partitioning" in out.stderr
    notes = [line for line in out.stderr.splitlines() if line.startswith("not expressed for app.request_log: ")]
    assert [n for n in notes if "infinite_time_partitions off" in n and "ahead of now" in n], out.stderr
    assert f"timezone {ZONE}:" in out.stderr
    raw = yaml.safe_load(out.stdout)
    assert [t["name"] for t in raw["tables"]] == ["app.request_log"]
    raw["state_schema"] = f"s_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "pgmaint.yaml"
    path.write_text(yaml.safe_dump(raw))
    with connect(partman_db) as c:
        c.execute("UPDATE partman.part_config SET automatic_maintenance = 'on'")
    for command, expected in (
        ("handover", "app.request_log: handed_over"),
        ("status", "pgmaint (handed over)"),
        ("handback", "app.request_log: handed_back"),
        ("status", "DUAL MANAGER"),
    ):
        out = subprocess.run(
            [
                str(REPO / "scripts" / "pgmaint-partman"),
                command,
                partman_db,
                "--config",
                str(path),
                *(["--who", "erin"] if command != "status" else []),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert expected in out.stdout, out.stdout
    bad = subprocess.run(
        [str(REPO / "scripts" / "pgmaint-partman"), "import", partman_db, "--tables", "app.nope"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert bad.returncode == 2 and "not in partman.part_config: app.nope" in bad.stderr
