"""Fixtures for the Partitions view: a fresh database holding the demo's incident state."""
from __future__ import annotations

import os
import sys

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.conftest import REPO

if str(REPO / "plugins") not in sys.path:
    sys.path.append(str(REPO / "plugins"))


@pytest.fixture
def demo_dsn(pg_dsn):
    """A new database seeded by scripts/demo_seed.py (the incident's broken state); dropped afterwards."""
    import demo_seed  # scripts/demo_seed.py

    admin = make_conninfo(pg_dsn, dbname="postgres")
    name = f"pgmaint_overview_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(pg_dsn, dbname=name)
    demo_seed.seed(dsn)
    try:
        yield dsn
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
