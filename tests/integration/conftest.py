"""Fixtures for the integration tests (a real PostgreSQL; real servers on loopback), shared by every area.

The fixtures themselves live in `tests/fixtures/` (one module per kind), so that `tests/dags/` can
use the same ones: notification servers (notify), service adapters and PG15 (services), the
Partitions view's demo database (overview), the least-privilege set-up (security), healthy tables
for the gates (quality).
"""

from __future__ import annotations

import pytest

from include.pgmaint.db import connect
from tests.fixtures.notify import clock, mailbox, notify_connections, webhooks  # noqa: F401
from tests.fixtures.overview import demo_dsn  # noqa: F401
from tests.fixtures.quality import gx_warm  # noqa: F401
from tests.fixtures.security import least_privilege  # noqa: F401
from tests.fixtures.services import (  # noqa: F401
    airflow_api,
    cron_conn,
    http_service,
    make_config,
    partman_conn,
    pg15_server,
    pg15_state_schema,
    target,
)


@pytest.fixture
def conn(pg_dsn):
    """A pgmaint-style connection (autocommit, timeouts) to the test database."""
    with connect(pg_dsn) as c:
        yield c
