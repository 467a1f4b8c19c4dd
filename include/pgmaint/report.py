"""Health of each configured table, from catalog facts: runway, expired partitions, DEFAULT rows.

Used by the demo's before/after table and by anyone who wants a quick look
(`python -m include.pgmaint.report`). Reads the catalog only (ACCESS SHARE is
not even taken: catalog reads take no table locks).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timezone

from psycopg import sql

from include.pgmaint.catalog import CatalogError, TableFacts, read_catalog
from include.pgmaint.config import Config, TableConfig, load_config
from include.pgmaint.db import connect
from include.pgmaint.plan import desired_ranges, retention_cutoff, timeline


@dataclass(frozen=True)
class TableHealth:
    table: str
    partitions: int
    oldest: str
    newest: str
    runway: int  # consecutive intervals covered from the current one onwards (current included)
    expired_attached: int
    default_rows: int | None  # exact count; None when there is no DEFAULT partition
    error: str | None = None


def table_health(
    cfg: TableConfig, facts: TableFacts | CatalogError, now: datetime, tz: str, default_rows: int | None = None
) -> TableHealth:
    if isinstance(facts, CatalogError):
        return TableHealth(cfg.name, 0, "-", "-", 0, 0, None, str(facts))
    existing = {p.range for p in facts.partitions}
    now, tz = timeline(facts, now, tz)
    runway = 0
    for _, rng in desired_ranges(cfg, now, tz):
        if rng not in existing:
            break
        runway += 1
    cutoff = retention_cutoff(cfg, now, tz)
    expired = sum(1 for p in facts.partitions if cutoff and p.range.upper is not None and p.range.upper <= cutoff)
    names = [p.name for p in facts.partitions]
    return TableHealth(
        cfg.name, len(names), names[0] if names else "-", names[-1] if names else "-", runway, expired, default_rows
    )


def health(conn, config: Config, now: datetime | None = None) -> list[TableHealth]:
    """Health of every configured table. Counts DEFAULT rows exactly: meant for the demo and small tables."""

    now = now or datetime.now(timezone.utc)
    facts = read_catalog(conn, list(config.tables), config.timezone)
    out = []
    for cfg in config.tables:
        f = facts[cfg.name]
        rows = None
        if isinstance(f, TableFacts) and f.default is not None:
            rows = conn.execute(
                sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(f.schema, f.default.name))
            ).fetchone()[0]
        out.append(table_health(cfg, f, now, config.timezone, rows))
    return out


def render(rows: list[TableHealth], premake: dict[str, int] | None = None) -> str:
    header = ("table", "partitions", "oldest", "newest", "runway", "expired attached", "DEFAULT rows")
    lines = [header]
    for r in rows:
        if r.error:
            lines.append((r.table, "error", r.error, "", "", "", ""))
            continue
        want = f"/{premake[r.table] + 1}" if premake and r.table in premake else ""
        lines.append(
            (
                r.table,
                str(r.partitions),
                r.oldest,
                r.newest,
                f"{r.runway}{want}",
                str(r.expired_attached),
                "-" if r.default_rows is None else str(r.default_rows),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    fmt = lambda line: "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(lines[0]), fmt(tuple("-" * w for w in widths))] + [fmt(line) for line in lines[1:]])


def main(argv: list[str]) -> int:

    if len(argv) != 1:
        print("usage: python -m include.pgmaint.report CONNINFO   (config from $PGMAINT_CONFIG)", file=sys.stderr)
        return 2
    config = load_config()
    with connect(argv[0], config.lock_budget) as conn:
        print(render(health(conn, config), {t.name: t.premake for t in config.tables}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
