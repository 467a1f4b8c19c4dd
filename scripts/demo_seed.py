"""Seed the demo database with the incident's broken state.

Two daily-partitioned tables like the incident's (API request log and change
events), 30-day retention, where partition maintenance stopped a few days ago:

- public.inbound_requests: partitions end three days ago (runway zero), the
  last days' requests piled up in the DEFAULT partition, and partitions older
  than 30 days are still attached.
- public.event_deltas: one day of runway left, expired partitions attached,
  and a day's partition dropped by hand, whose late events landed in the DEFAULT.

Usage: python scripts/demo_seed.py CONNINFO   (drops and recreates both tables)
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from psycopg import sql

from include.pgmaint.db import connect


def _partition(conn, parent: str, day: datetime) -> None:
    name = f"{parent}_p{day:%Y%m%d}"
    conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier("public", name),
            sql.Identifier("public", parent),
            sql.Literal(day.isoformat()),
            sql.Literal((day + timedelta(days=1)).isoformat()),
        )
    )


def seed(conninfo: str, now: datetime | None = None) -> None:
    now = now or datetime.now(timezone.utc)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    with connect(conninfo) as conn, conn.transaction():
        conn.execute("SET LOCAL statement_timeout = '120s'")
        conn.execute("DROP TABLE IF EXISTS public.inbound_requests, public.event_deltas CASCADE")
        conn.execute("""
            CREATE TABLE public.inbound_requests (
                id          bigint GENERATED ALWAYS AS IDENTITY,
                created_at  timestamptz NOT NULL,
                client_id   integer NOT NULL,
                method      text NOT NULL,
                path        text NOT NULL,
                status      smallint NOT NULL,
                duration_ms integer NOT NULL,
                PRIMARY KEY (id, created_at)
            ) PARTITION BY RANGE (created_at)""")
        conn.execute("CREATE INDEX ON public.inbound_requests (created_at)")
        conn.execute("CREATE TABLE public.inbound_requests_default PARTITION OF public.inbound_requests DEFAULT")
        for d in range(-36, -2):  # maintenance stopped: the newest partition is for three days ago
            _partition(conn, "inbound_requests", today + timedelta(days=d))
        # ~1 request a minute in every existing partition; the last two days and today so far land in the DEFAULT.
        conn.execute(
            """
            INSERT INTO public.inbound_requests (created_at, client_id, method, path, status, duration_ms)
            SELECT ts, mod(g, 97) + 1, (ARRAY['GET','POST','PUT'])[mod(g, 3) + 1], '/api/v1/people/' || mod(g, 5000),
                   (ARRAY[200,200,200,201,404,500])[mod(g, 6) + 1], 5 + mod(g * 7919, 400)
            FROM generate_series(%s::timestamptz, %s::timestamptz, interval '1 minute') WITH ORDINALITY AS s(ts, g)""",
            [today - timedelta(days=36), now],
        )

        conn.execute("""
            CREATE TABLE public.event_deltas (
                id          bigserial,
                occurred_at timestamptz NOT NULL,
                entity      text NOT NULL,
                change      jsonb NOT NULL,
                PRIMARY KEY (id, occurred_at)
            ) PARTITION BY RANGE (occurred_at)""")
        conn.execute("CREATE TABLE public.event_deltas_default PARTITION OF public.event_deltas DEFAULT")
        for d in range(-34, 2):  # one day of runway left
            _partition(conn, "event_deltas", today + timedelta(days=d))
        conn.execute(
            """
            INSERT INTO public.event_deltas (occurred_at, entity, change)
            SELECT ts, (ARRAY['person','class','enrollment'])[mod(g, 3) + 1], jsonb_build_object('seq', g)
            FROM generate_series(%s::timestamptz, %s::timestamptz, interval '2 minutes') WITH ORDINALITY AS s(ts, g)""",
            [today - timedelta(days=34), now],
        )
        # A partition dropped by hand during an earlier clean-up: that day's late events landed in the DEFAULT.
        lost_day = today - timedelta(days=5)
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("public", f"event_deltas_p{lost_day:%Y%m%d}")))
        conn.execute(
            """
            INSERT INTO public.event_deltas (occurred_at, entity, change)
            SELECT %s::timestamptz + g * interval '10 minutes', 'person', jsonb_build_object('late', g)
            FROM generate_series(1, 120) g""",
            [lost_day],
        )
    with connect(conninfo) as conn:
        conn.execute("ANALYZE public.inbound_requests, public.event_deltas")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    seed(sys.argv[1])
