"""`scripts/replay.py --quick` (what `make replay` runs in full): report and picture written, figures measured."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.conftest import REPO


def test_replay_quick_writes_a_report_with_the_measured_figures(pg_dsn, tmp_path):
    admin = make_conninfo(pg_dsn, dbname="postgres")
    name = f"pgmaint_replay_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        out = subprocess.run([sys.executable, str(REPO / "scripts" / "replay.py"), "--quick", "--dsn",
                              make_conninfo(pg_dsn, dbname=name), "--out", str(tmp_path)],
                             capture_output=True, text=True, timeout=300, cwd=REPO)
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run,) = list(tmp_path.iterdir())
    report, png, results = run / "report.html", run / "replay.png", json.loads((run / "results.json").read_text())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    page = report.read_text()
    assert "replay.png" in page
    by_name = {c["name"]: c for c in results["contenders"]}
    for name, contender in by_name.items():
        v = contender["verdict"]
        # The figures in the report are the ones measured from the recorded requests.
        with open(run / f"requests-{name}.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == v["requests"] > 100
        assert sum(r["outcome"] != "ok" for r in rows) == v["errors"]
        assert max(float(r["latency_ms"]) for r in rows) == v["max_stall_ms"] or abs(
            max(float(r["latency_ms"]) for r in rows) - v["max_stall_ms"]) < 0.1
        assert sum(s["requests"] for s in contender["seconds"]) == v["requests"]
        for key in ("errors", "max_stall_ms", "p99_ms", "requests", "time_to_finish_s"):
            assert f"<td>{v[key]}</td>" in page, (name, key, v[key])
        assert v["default_rows_after"] == 0 < v["default_rows_before"], v  # both moved every row out of the DEFAULT
        assert f"| {name} |" in out.stdout
    # The incident's shape for the naive run, a flat line for pgmaint's: measured, not assumed.
    naive, pgmaint = by_name["naive"]["verdict"], by_name["pgmaint"]["verdict"]
    assert naive["timeouts"] + naive["pool_timeouts"] > 0 and naive["max_stall_ms"] > 2000, naive
    assert pgmaint["errors"] == 0 and pgmaint["max_stall_ms"] < 2000, pgmaint
    assert any("ACCESS EXCLUSIVE" in s["lock"] for s in by_name["naive"]["steps"])
    assert any(s["name"].startswith("migrate") and s["outcome"] == "ok" for s in by_name["pgmaint"]["steps"])
