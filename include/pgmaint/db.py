"""Connections to the target database, always with timeouts in force.

Every session pgmaint opens starts with a lock_timeout, statement_timeout and
idle-in-transaction timeout (libpq `options`), so even catalog reads and
journal writes can never queue unboundedly or hold locks if a worker dies
mid-transaction. TimeZone is UTC so partition bounds read back unambiguously.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import make_conninfo

from include.pgmaint.config import LockBudget

APPLICATION_NAME = "pgmaint"


def session_options(budget: LockBudget) -> str:
    # One process per query: pgmaint is a background job, so its big reads (the survey, the checks of the copies)
    # leave the other cores and the server's parallel workers to the application. Measured on 4 M rows: the check
    # ran no slower without workers (2.2 s, 2.7 s with two), and with them it held every core of a 2-core server.
    # backend_flush_after: the pages a copy writes out are handed to the disk every 256 kB instead of piling up in
    # the kernel's page cache (1.6 GB dirty during a 4 M-row copy) until its 30 s expiry writes them back at once,
    # when every fsync on the disk, the application's commits included, waits behind them.
    return (
        f"-c lock_timeout={budget.max_lock_timeout_ms} "
        f"-c statement_timeout={budget.statement_timeout_ms} "
        "-c idle_in_transaction_session_timeout=30000 "
        "-c max_parallel_workers_per_gather=0 "
        "-c backend_flush_after=256kB "
        "-c TimeZone=UTC"
    )


def connect(
    conninfo: str, budget: LockBudget = LockBudget(), application_name: str = APPLICATION_NAME
) -> psycopg.Connection:
    conn = psycopg.connect(
        make_conninfo(conninfo, application_name=application_name, options=session_options(budget)),
        autocommit=True,
        connect_timeout=10,
    )
    lock_timeout, statement_timeout = conn.execute(
        "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
    ).fetchone()
    if lock_timeout == "0" or statement_timeout == "0":  # e.g. a pooler that drops startup options
        conn.close()
        raise RuntimeError(
            f"the server did not apply pgmaint's session timeouts (lock_timeout={lock_timeout}, "
            f"statement_timeout={statement_timeout}); if a connection pooler strips startup options, "
            "set them on pgmaint's database role instead (ALTER ROLE ... SET lock_timeout = '200ms')"
        )
    return conn
