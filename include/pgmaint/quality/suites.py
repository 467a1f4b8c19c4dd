"""Data-quality suites as code: config + run-time facts -> the checks a gate evaluates.

Pure functions, no database and no Great Expectations import: each check becomes one
`CheckSpec` (turned into a GX `UnexpectedRowsExpectation` by `runner.py`) whose SQL
returns ONE ROW PER PROBLEM with a `problem` column a responder can read ("no partition
for [2026-11-28 00:00Z, 2026-11-29 00:00Z)"). A check passes when its query returns no
rows. Queries return problems, never rows of user data, so results are safe to log.

The queries read catalog or journal facts wherever those can answer, so their cost
grows with the number of partitions, not rows:

========== ========================= ==========================================================
check      reads                     cost
========== ========================= ==========================================================
runway     pg_inherits + bounds      partitions
retention  pg_inherits + bounds      partitions
contiguity pg_inherits + bounds      partitions
default_   the DEFAULT, one bounded  one index probe per range (EXISTS-like: LIMIT 1001 rows)
clean      probe per range
not_null_  the DEFAULT, key IS NULL  an index range scan of the NULL keys (LIMIT 1001);
key                                  without an index on the key, a scan of the DEFAULT only
conserved  migration_figures         buckets (journal) + the rows the migration moved (they
           + drain table + moved     must be read to prove they are still there) + the rows
           ranges                    still in the drain table
========== ========================= ==========================================================

GX substitutes `{batch}` with `(SELECT ...) AS subselect` unless the query contains the
word JOIN, in which case it leaves the alias to the query author (see
`great_expectations/expectations/metrics/query_metric_provider.py`). So: no JOIN keyword
in expectation queries (comma joins, EXISTS and scalar subqueries instead) and `{batch}`
never aliased again; `check_query` enforces both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from include.pgmaint.catalog import WALL_CLOCK_KEY_TYPES, Range, TableFacts
from include.pgmaint.config import Config, TableConfig
from include.pgmaint.ddl import bound_text
from include.pgmaint.figures import (  # the migration computes its figures the same way
    bucket_expression,
    checksum_expression,
)
from include.pgmaint.plan import desired_ranges, retention_cutoff, timeline

CHECKS = ("runway", "retention", "contiguity", "default_clean", "not_null_key", "conserved")
COUNT_CAP = 1000  # bounded probes report "more than 1000 rows" instead of counting everything
RETENTION_GRACE = timedelta(minutes=10)  # see retention_check
MAX_INLINE_RANGES = 6  # ranges spelled out in an `expected` text before it says "... and N more"

# Assets (GX query assets): what `{batch}` stands for in a check's query.
CATALOG = "catalog"  # one row per partition: partition_name, is_default, detach_pending, lower_bound, upper_bound
DEFAULT = "default_partition"  # SELECT * FROM ONLY <the DEFAULT partition>
FIGURES = "migration_figures"  # the journal's figures of one migration: kind, bucket, rows, checksum


@dataclass(frozen=True)
class CheckSpec:
    """One expectation: its SQL (one row per problem) and the words a responder reads."""

    check: str  # one of CHECKS
    key: str  # unique within a gate, e.g. "conserved.journal"
    asset: str  # CATALOG | DEFAULT | FIGURES
    description: str  # "public.request_log: at least 4 partitions exist ahead of now"
    expected: str  # "partitions covering ... (5 intervals)"
    query: str  # GX unexpected_rows_query, with {batch}; returns a `problem` column


@dataclass(frozen=True)
class Skipped:
    check: str
    reason: str


@dataclass(frozen=True)
class MigrationFacts:
    """What the journal says about one migration (read by `facts.read_migration`)."""

    migration_id: int
    table_name: str
    phase: str
    partitions: tuple[str, ...]  # the partitions its swap attached
    buckets: tuple[str, ...]  # every bucket in its figures ('before' and 'moved')
    moved_buckets: tuple[str, ...]  # buckets with 'moved' figures
    drain_table: str | None  # quoted, qualified name if the drain table still exists
    checksum: str = "text"  # how the migration computed row checksums (figures.checksum_expression)
    method: str = "drain"  # 'copy' (copy first, swap last) or 'drain' (before 006)


@dataclass(frozen=True)
class GateSuite:
    """Everything one gate evaluates: assets (name -> query) and checks, plus checks with nothing to evaluate."""

    table: str
    assets: dict[str, str]
    checks: tuple[CheckSpec, ...]
    skipped: tuple[Skipped, ...] = field(default=())
    problems: tuple[str, ...] = field(default=())  # facts that already fail the gate (e.g. unknown migration)


# --- SQL helpers ---------------------------------------------------------------------------------


def ident(name: str) -> str:
    """A quoted SQL identifier (pure: no connection needed)."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A quoted SQL string literal (standard_conforming_strings, as every supported server has)."""
    return "'" + text.replace("'", "''") + "'"


def moment_label(moment: datetime | None, wall_clock: bool, unbounded: str = "MINVALUE") -> str:
    if moment is None:
        return unbounded
    text = moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")
    return text if wall_clock else text + "Z"


def range_label(rng: Range, wall_clock: bool) -> str:
    return f"[{moment_label(rng.lower, wall_clock)}, {moment_label(rng.upper, wall_clock, 'MAXVALUE')})"


def ranges_label(ranges: list[Range], wall_clock: bool) -> str:
    shown = [range_label(r, wall_clock) for r in ranges[:MAX_INLINE_RANGES]]
    more = len(ranges) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _tstz(moment: datetime | None, default: str) -> str:
    """A timestamptz literal on the timeline the catalog asset uses (wall-clock keys: wall clock as UTC)."""
    if moment is None:
        return f"{literal(default)}::timestamptz"
    return f"{literal(moment.astimezone(timezone.utc).strftime('%Y-%m-%d %H:%M:%S.%f+00'))}::timestamptz"


def _key_literal(moment: datetime, key_type: str) -> str:
    """A literal of the partition key's own type, so comparisons with the key can use its index."""
    return f"{literal(bound_text(moment, key_type, 'UTC'))}::{key_type}"


def _sql_moment(column: str, wall_clock: bool) -> str:
    """SQL text for a catalog-asset bound, formatted like `moment_label`."""
    suffix = "" if wall_clock else " || 'Z'"
    return (
        f"CASE WHEN isfinite({column}) THEN to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'){suffix} "
        f"ELSE {column}::text END"
    )


def _sql_range(lower: str, upper: str, wall_clock: bool) -> str:
    return f"'[' || {_sql_moment(lower, wall_clock)} || ', ' || {_sql_moment(upper, wall_clock)} || ')'"


_JOIN = re.compile(r"\bJOIN\b", re.IGNORECASE)
_ALIASED = re.compile(
    r"\{batch\}\s+(?!(?:WHERE|GROUP|ORDER|LIMIT|OFFSET|UNION|EXCEPT|INTERSECT|HAVING|WINDOW|FETCH)\b)"
    r"(?:AS\b|[A-Za-z_])",
    re.IGNORECASE,
)
_STRINGS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"", re.DOTALL)


def check_query(query: str) -> str:
    """Refuse queries GX would substitute differently from what they were written for (see module doc)."""
    bare = _STRINGS.sub(" ", query)
    if "{batch}" not in query:
        raise ValueError("an expectation query must read {batch}")
    if _JOIN.search(bare):
        raise ValueError("an expectation query must not use JOIN (GX then leaves {batch} without an alias)")
    if _ALIASED.search(query):
        raise ValueError("{batch} is already aliased by GX (AS subselect); wrap it as (SELECT * FROM {batch}) AS x")
    stripped = query.replace("{batch}", "")
    if "{" in stripped or "}" in stripped:
        raise ValueError("literal braces must be doubled in GX queries; use none")
    return query


# --- assets -----------------------------------------------------------------------------------------


def catalog_asset(facts: TableFacts) -> str:
    """One row per partition of the table, bounds parsed by PostgreSQL from pg_get_expr (relid 0: no lock taken).

    Bounds are timestamptz; wall-clock keys (timestamp, date) are read as UTC, the timeline
    `catalog.Range` and `plan.timeline` use. MINVALUE/MAXVALUE become -infinity/infinity.
    """
    if facts.key_type in WALL_CLOCK_KEY_TYPES:
        cast = "(btrim({v}, '''')::timestamp AT TIME ZONE 'UTC')"
    else:
        cast = "btrim({v}, '''')::timestamptz"

    def side(i: int) -> str:
        v = f"b.v[{i}]"
        return (
            f"CASE WHEN c.oid = pt.partdefid THEN NULL WHEN {v} = 'MINVALUE' THEN '-infinity'::timestamptz "
            f"WHEN {v} = 'MAXVALUE' THEN 'infinity'::timestamptz ELSE {cast.format(v=v)} END"
        )

    parent = literal(f"{ident(facts.schema)}.{ident(facts.table)}")
    return (
        "SELECT c.relname::text AS partition_name, c.oid = pt.partdefid AS is_default, "
        "i.inhdetachpending AS detach_pending, "
        f"{side(1)} AS lower_bound, {side(2)} AS upper_bound "
        "FROM pg_catalog.pg_inherits AS i "
        "JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid "
        "JOIN pg_catalog.pg_partitioned_table AS pt ON pt.partrelid = i.inhparent "
        "LEFT JOIN LATERAL regexp_match(pg_catalog.pg_get_expr(c.relpartbound, 0), "
        r"'^FOR VALUES FROM \((.+)\) TO \((.+)\)$') AS b(v) ON true "
        f"WHERE i.inhparent = {parent}::regclass"
    )


def default_asset(facts: TableFacts) -> str:
    return f"SELECT * FROM ONLY {ident(facts.schema)}.{ident(facts.default.name)}"


def figures_asset(state_schema: str, migration_id: int) -> str:
    return (
        f"SELECT kind, bucket, rows, checksum FROM {ident(state_schema)}.migration_figures "
        f"WHERE migration_id = {int(migration_id)}"
    )


# --- checks ------------------------------------------------------------------------------------------


def _wall(facts: TableFacts) -> bool:
    return facts.key_type in WALL_CLOCK_KEY_TYPES


def runway_check(cfg: TableConfig, facts: TableFacts, now: datetime, tz: str) -> CheckSpec:
    """The current interval and `premake` after it each lie inside one attached partition."""
    now_t, tz_t = timeline(facts, now, tz)
    wanted = [rng for _, rng in desired_ranges(cfg, now_t, tz_t)]
    wall = _wall(facts)
    rows = ", ".join(
        f"({_tstz(r.lower, '-infinity')}, {_tstz(r.upper, 'infinity')}, {literal(range_label(r, wall))})"
        for r in wanted
    )
    query = (
        "SELECT 'no partition for ' || r.label AS problem "
        f"FROM (VALUES {rows}) AS r(lo, hi, label) "
        "WHERE NOT EXISTS (SELECT 1 FROM {batch} WHERE NOT is_default AND NOT detach_pending "
        "AND lower_bound <= r.lo AND upper_bound >= r.hi) ORDER BY r.lo"
    )
    return CheckSpec(
        "runway",
        "runway",
        CATALOG,
        f"{cfg.name}: at least {cfg.premake} partitions exist ahead of now",
        f"attached partitions covering the current {cfg.interval.unit} and the next {cfg.premake} "
        f"({moment_label(wanted[0].lower, wall)} to {moment_label(wanted[-1].upper, wall)})",
        check_query(query),
    )


def retention_check(cfg: TableConfig, facts: TableFacts, now: datetime, tz: str) -> CheckSpec | Skipped:
    if cfg.retention is None:
        return Skipped("retention", "no retention configured: partitions are kept forever")
    # Grace: a partition that expired moments ago is the next maintenance run's business, not a
    # failure (a gate right after a retire step whose clock read just before the boundary).
    cutoff = retention_cutoff(cfg, *timeline(facts, now, tz)) - RETENTION_GRACE
    wall = _wall(facts)
    query = (
        "SELECT 'partition ' || partition_name || ' ' || "
        + _sql_range("lower_bound", "upper_bound", wall)
        + " || ' lies entirely before the cutoff' "
        "|| CASE WHEN detach_pending THEN ' (detach pending)' ELSE '' END AS problem "
        f"FROM {{batch}} WHERE NOT is_default AND upper_bound <= {_tstz(cutoff, '-infinity')} "
        "ORDER BY lower_bound"
    )
    return CheckSpec(
        "retention",
        "retention",
        CATALOG,
        f"{cfg.name}: no attached partition lies entirely before now - {cfg.retention}",
        f"no partition whose upper bound is at or before {moment_label(cutoff, wall)} "
        f"(now - {cfg.retention} - {int(RETENTION_GRACE.total_seconds() // 60)} minutes' grace)",
        check_query(query),
    )


def merged(ranges: list[Range]) -> list[Range]:
    """Adjacent or overlapping ranges joined into maximal blocks, in order."""
    out: list[Range] = []
    for r in sorted(ranges):
        if out and out[-1].upper is not None and r.lower is not None and r.lower <= out[-1].upper:
            out[-1] = Range(out[-1].lower, max(out[-1].upper, r.upper) if r.upper is not None else None)
        else:
            out.append(r)
    return out


def contiguity_check(
    cfg: TableConfig, facts: TableFacts, now: datetime, tz: str, pending: list[Range] = ()
) -> CheckSpec:
    """Consecutive attached partitions meet exactly where the junction lies inside the managed window.

    A gap made only of `pending` intervals (no partition, rows in the DEFAULT: waiting for
    default_partition_migration) is tolerated: retiring what is past the window cannot make it
    worse. Any other gap or overlap fails, named.
    """
    now_t, tz_t = timeline(facts, now, tz)
    horizon = desired_ranges(cfg, now_t, tz_t)[-1][1].upper
    start = retention_cutoff(cfg, now_t, tz_t)
    wall = _wall(facts)
    ws, we = _tstz(start, "-infinity"), _tstz(horizon, "infinity")
    query = (
        "SELECT CASE WHEN prev_upper < lower_bound "
        "THEN 'gap ' || "
        + _sql_range("prev_upper", "lower_bound", wall)
        + " || ' between ' || prev_name || ' and ' || partition_name "
        "ELSE 'overlap ' || "
        + _sql_range("lower_bound", "prev_upper", wall)
        + " || ' between ' || prev_name || ' and ' || partition_name "
        "END AS problem "
        "FROM (SELECT partition_name, lower_bound, upper_bound, "
        "lag(partition_name) OVER (ORDER BY lower_bound, upper_bound) AS prev_name, "
        "lag(upper_bound) OVER (ORDER BY lower_bound, upper_bound) AS prev_upper "
        "FROM {batch} WHERE NOT is_default AND NOT detach_pending) AS s "
        "WHERE prev_name IS NOT NULL AND prev_upper <> lower_bound "
        f"AND least(prev_upper, lower_bound) < {we} AND greatest(prev_upper, lower_bound) > {ws} "
        "{tolerated}ORDER BY lower_bound"
    )
    blocks = merged(list(pending))
    tolerated = ""
    if blocks:
        rows = ", ".join(f"({_tstz(b.lower, '-infinity')}, {_tstz(b.upper, 'infinity')})" for b in blocks)
        tolerated = (
            f"AND NOT (prev_upper < lower_bound AND EXISTS (SELECT 1 FROM (VALUES {rows}) AS pgmaint_p(lo, hi) "
            "WHERE pgmaint_p.lo <= prev_upper AND pgmaint_p.hi >= lower_bound)) "
        )
    query = query.replace("{tolerated}", tolerated)
    window = f"[{moment_label(start, wall) if start else 'the oldest partition'}, {moment_label(horizon, wall)})"
    expected = "each partition ends exactly where the next one begins"
    if blocks:
        expected += (
            f", except gaps waiting for default_partition_migration (rows in the DEFAULT): {ranges_label(blocks, wall)}"
        )
    return CheckSpec(
        "contiguity",
        "contiguity",
        CATALOG,
        f"{cfg.name}: no gaps and no overlaps between consecutive partitions in {window}",
        expected,
        check_query(query),
    )


def default_clean_check(cfg: TableConfig, facts: TableFacts, ranges: list[Range] | None) -> CheckSpec | Skipped:
    """The DEFAULT holds no rows in `ranges` (one bounded probe per range); with no ranges, it is empty."""
    if facts.default is None:
        return Skipped("default_clean", "the table has no DEFAULT partition: no row can sit there")
    key, wall, name = ident(facts.key_column), _wall(facts), facts.default.name
    probe = f"SELECT count(*) AS n FROM (SELECT 1 FROM {{batch}} WHERE {{cond}} LIMIT {COUNT_CAP + 1}) AS x"
    count = f"CASE WHEN c.n > {COUNT_CAP} THEN 'more than {COUNT_CAP}' ELSE c.n::text END"
    holds = literal(f"the DEFAULT partition {name} holds ")
    if ranges is None:
        query = (
            f"SELECT {holds} || {count} || ' row(s)' AS problem "
            f"FROM ({probe.replace('{cond}', 'true')}) AS c WHERE c.n > 0"
        )
        return CheckSpec(
            "default_clean",
            "default_clean",
            DEFAULT,
            f"{cfg.name}: the DEFAULT partition {name} is empty",
            "0 rows",
            check_query(query),
        )
    if not ranges:
        return Skipped("default_clean", "no ranges to check")
    rows = ", ".join(
        f"({_key_literal(r.lower, facts.key_type)}, {_key_literal(r.upper, facts.key_type)}, {literal(range_label(r, wall))})"
        for r in ranges
    )
    cond = f"{key} >= pgmaint_r.lo AND {key} < pgmaint_r.hi"
    query = (
        f"SELECT {holds} || {count} || ' row(s) in ' || pgmaint_r.label AS problem "
        f"FROM (VALUES {rows}) AS pgmaint_r(lo, hi, label), LATERAL ({probe.replace('{cond}', cond)}) AS c "
        "WHERE c.n > 0 ORDER BY pgmaint_r.lo"
    )
    return CheckSpec(
        "default_clean",
        "default_clean",
        DEFAULT,
        f"{cfg.name}: the DEFAULT partition {name} holds no rows in the {len(ranges)} migrated range(s)",
        f"0 rows in {ranges_label(ranges, wall)}",
        check_query(query),
    )


def not_null_key_check(cfg: TableConfig, facts: TableFacts) -> CheckSpec | Skipped:
    """Range partitions reject NULL keys; only the DEFAULT can hold them."""
    if facts.default is None:
        return Skipped("not_null_key", "the table has no DEFAULT partition: a NULL key cannot be stored")
    key, name = ident(facts.key_column), facts.default.name
    query = (
        f"SELECT {literal(f'the DEFAULT partition {name} holds ')} || CASE WHEN c.n > {COUNT_CAP} THEN 'more than {COUNT_CAP}' "
        f"ELSE c.n::text END || {literal(f' row(s) whose {facts.key_column} is NULL')} AS problem "
        f"FROM (SELECT count(*) AS n FROM (SELECT 1 FROM {{batch}} WHERE {key} IS NULL LIMIT {COUNT_CAP + 1}) AS x) AS c "
        "WHERE c.n > 0"
    )
    return CheckSpec(
        "not_null_key",
        "not_null_key",
        DEFAULT,
        f"{cfg.name}: the partition key {facts.key_column} is never NULL (only the DEFAULT partition could hold NULL keys)",
        f"0 rows with a NULL {facts.key_column}",
        check_query(query),
    )


def bucket_range(bucket: str, cfg: TableConfig, facts: TableFacts, tz: str) -> Range:
    """The interval a journal bucket (text of migrate.bucket_expression) stands for, on the table's timeline."""
    start = datetime.fromisoformat(bucket)
    start = start.replace(tzinfo=timezone.utc) if start.tzinfo is None else start.astimezone(timezone.utc)
    tz_t = timeline(facts, start, tz)[1]
    end = cfg.interval.next(start, tz_t)
    return Range(start, datetime.fromtimestamp(end.timestamp(), tz=timezone.utc))


def conserved_checks(config: Config, cfg: TableConfig, facts: TableFacts, migration: MigrationFacts) -> list[CheckSpec]:
    """Two expectations: the journal balances, and the moved rows are still where they were moved to.

    1. journal: per bucket, rows and checksum 'before' = 'moved' + what is still in the drain
       table (if it still exists). Catches rows lost or duplicated *by the drain*, or deleted
       from the drain table behind the migration's back.
    2. in place: per bucket, the table (read through the parent) now holds at least the rows
       moved in, with the same checksum when the count is equal. The journal alone cannot see
       a row deleted from its new partition after it was moved; this does. Rows written since
       (writers resumed) only add to the count, so they never fail it; a row deleted *and* one
       inserted in the same interval is the one change it cannot tell apart.

    Checksums are `sum(migrate.checksum_expression(<the migration's method>))`, exactly as migrate.py journals them
    (the drain table and the parent have the same row type: the drain table was the DEFAULT).
    """
    if migration.method == "copy":
        return copied_checks(config, cfg, facts, migration)
    mid = migration.migration_id
    journal, left = _drain_journal_query(config, cfg, facts, migration)
    in_place, ranged = _in_place_query(config, cfg, facts, migration)
    state = f"{config.state_schema}.migration_figures"
    return [
        CheckSpec(
            "conserved",
            "conserved.journal",
            FIGURES,
            f"{cfg.name}: migration {mid} lost and duplicated no rows (per interval, rows and checksum before "
            "= moved + still in the drain table)",
            f"in all {len(migration.buckets)} interval(s) of {state} for migration {mid}, the 'before' count and "
            f"checksum equal the 'moved' ones plus {left}",
            check_query(journal),
        ),
        CheckSpec(
            "conserved",
            "conserved.in_place",
            FIGURES,
            f"{cfg.name}: the rows migration {mid} moved are still in the table (per interval, at least the rows moved in)",
            f"at least the moved rows in all {len(ranged) + ('NULL' in migration.moved_buckets)} interval(s), "
            "same checksum where the count is unchanged",
            check_query(in_place),
        ),
    ]


def _drain_journal_query(
    config: Config, cfg: TableConfig, facts: TableFacts, migration: MigrationFacts
) -> tuple[str, str]:
    """The journal check of a drain-design migration: before = moved + still in the drain table, per bucket;
    and how the expectation words what is left behind."""
    if migration.drain_table:
        bucket = bucket_expression(facts, cfg, config.timezone, alias="m").as_string(None)
        remaining = (
            f"SELECT coalesce({bucket}::text, 'NULL') AS bucket, count(*) AS rows, "
            f"sum({checksum_expression(migration.checksum, 'm').as_string(None)}) AS checksum "
            f"FROM {migration.drain_table} AS m GROUP BY 1"
        )
        left = f"the rows still in the drain table {migration.drain_table}"
    else:
        remaining = "SELECT NULL::text AS bucket, 0::bigint AS rows, 0::numeric AS checksum WHERE false"
        left = "no rows left behind (the drain table is gone)"

    def fig(kind: str, column: str) -> str:
        return f"coalesce((SELECT f.{column} FROM f WHERE f.kind = '{kind}' AND f.bucket = k.bucket), 0)"

    journal = (
        "WITH f AS (SELECT kind, bucket, rows, checksum FROM {batch}), "
        f"r AS ({remaining}), "
        "k AS (SELECT bucket FROM f UNION SELECT bucket FROM r), "
        f"s AS (SELECT k.bucket, {fig('before', 'rows')} AS before_rows, {fig('before', 'checksum')} AS before_sum, "
        f"{fig('moved', 'rows')} AS moved_rows, {fig('moved', 'checksum')} AS moved_sum, "
        "coalesce((SELECT r.rows FROM r WHERE r.bucket = k.bucket), 0) AS left_rows, "
        "coalesce((SELECT r.checksum FROM r WHERE r.bucket = k.bucket), 0) AS left_sum FROM k) "
        "SELECT 'interval ' || bucket || ': ' || before_rows || ' row(s) before, ' || moved_rows || ' moved + ' "
        "|| left_rows || ' still in the drain table' || CASE "
        "WHEN before_rows > moved_rows + left_rows THEN ' (' || (before_rows - moved_rows - left_rows) || ' lost)' "
        "WHEN before_rows < moved_rows + left_rows THEN ' (' || (moved_rows + left_rows - before_rows) || ' extra)' "
        "ELSE ' (same count, checksums differ)' END AS problem "
        "FROM s WHERE before_rows <> moved_rows + left_rows OR before_sum <> moved_sum + left_sum ORDER BY bucket"
    )
    return journal, left


def _in_place_query(
    config: Config, cfg: TableConfig, facts: TableFacts, migration: MigrationFacts
) -> tuple[str, list[str]]:
    """The in-place check: per moved bucket, the table still holds at least the rows moved in; and those buckets."""
    key, parent = ident(facts.key_column), f"{ident(facts.schema)}.{ident(facts.table)}"
    digest = f"count(*) AS rows, coalesce(sum({checksum_expression(migration.checksum, 't').as_string(None)}), 0) AS checksum"
    branches = []
    ranged = [b for b in migration.moved_buckets if b != "NULL"]
    if ranged:
        values = []
        for b in ranged:
            rng = bucket_range(b, cfg, facts, config.timezone)
            values.append(
                f"({literal(b)}, {_key_literal(rng.lower, facts.key_type)}, {_key_literal(rng.upper, facts.key_type)})"
            )
        branches.append(
            f"SELECT pgmaint_r.bucket, l.rows, l.checksum FROM (VALUES {', '.join(values)}) AS pgmaint_r(bucket, lo, hi), "
            f"LATERAL (SELECT {digest} FROM {parent} AS t WHERE t.{key} >= pgmaint_r.lo AND t.{key} < pgmaint_r.hi) AS l"
        )
    if "NULL" in migration.moved_buckets:
        branches.append(f"SELECT 'NULL'::text, {digest} FROM {parent} AS t WHERE t.{key} IS NULL")
    if not branches:
        branches.append("SELECT NULL::text, 0::bigint, 0::numeric WHERE false")
    in_place = (
        "WITH f AS (SELECT bucket, rows, checksum FROM {batch} WHERE kind = 'moved'), "
        f"live(bucket, rows, checksum) AS ({' UNION ALL '.join(branches)}) "
        "SELECT 'interval ' || f.bucket || ': ' || f.rows || ' row(s) moved in, ' || live.rows || ' there now' || CASE "
        "WHEN live.rows < f.rows THEN ' (' || (f.rows - live.rows) || ' missing)' "
        "ELSE ' (same count, checksums differ: rows changed after the move)' END AS problem "
        "FROM f, live WHERE f.bucket = live.bucket "
        "AND (live.rows < f.rows OR (live.rows = f.rows AND live.checksum <> f.checksum)) ORDER BY f.bucket"
    )
    return in_place, ranged


def copied_checks(config: Config, cfg: TableConfig, facts: TableFacts, migration: MigrationFacts) -> list[CheckSpec]:
    """A copy-first migration counts the rows at the instant of its swap (the swap's exported snapshot):

    journal: per interval, the old DEFAULT's rows and checksum at the swap equal those of the rows
       in their new homes at the same instant. After the swap, application writes are legitimate and
       change the new partitions, so nothing later is compared with them.
    That the old DEFAULT still holds exactly what it held at the swap (nobody wrote to it behind
    our back) is checked where it matters, by the DROP itself, in the same transaction
    (`migrate.drop_old_default`): one read of it instead of two more here.
    """
    mid = migration.migration_id
    state = f"{config.state_schema}.migration_figures"

    def fig(kind: str, column: str) -> str:
        return f"coalesce((SELECT f.{column} FROM f WHERE f.kind = '{kind}' AND f.bucket = k.bucket), 0)"

    journal = (
        "WITH f AS (SELECT kind, bucket, rows, checksum FROM {batch}), k AS (SELECT DISTINCT bucket FROM f), "
        f"s AS (SELECT k.bucket, {fig('before', 'rows')} AS before_rows, {fig('before', 'checksum')} AS before_sum, "
        f"{fig('moved', 'rows')} AS moved_rows, {fig('moved', 'checksum')} AS moved_sum FROM k) "
        "SELECT 'interval ' || bucket || ': ' || before_rows || ' row(s) in the DEFAULT at the swap, ' || moved_rows "
        "|| ' in their new partitions' || CASE WHEN before_rows > moved_rows THEN ' (' || (before_rows - moved_rows) || ' lost)' "
        "WHEN before_rows < moved_rows THEN ' (' || (moved_rows - before_rows) || ' extra)' "
        "ELSE ' (same count, checksums differ)' END AS problem "
        "FROM s WHERE before_rows <> moved_rows OR before_sum <> moved_sum ORDER BY bucket"
    )
    specs = [
        CheckSpec(
            "conserved",
            "conserved.journal",
            FIGURES,
            f"{cfg.name}: migration {mid} lost and duplicated no rows (per interval, rows and checksum in the DEFAULT "
            "= in their new partitions, counted at the instant of the swap)",
            f"in all {len(migration.buckets)} interval(s) of {state} for migration {mid}, the 'before' count and checksum "
            "equal the 'moved' ones",
            check_query(journal),
        )
    ]
    return specs


# --- the gate ----------------------------------------------------------------------------------------


def build_suite(
    config: Config,
    cfg: TableConfig,
    facts: TableFacts,
    checks: list[str],
    *,
    now: datetime,
    ranges: list[Range] | None = None,
    migration: MigrationFacts | None = None,
    migration_problem: str | None = None,
    pending: list[Range] = (),
) -> GateSuite:
    """All checks of one gate, and the assets they read. Pure: facts in, SQL and words out."""
    tz = config.timezone
    specs: list[CheckSpec] = []
    skipped: list[Skipped] = []
    problems: list[str] = []
    for check in dict.fromkeys(checks):  # keep order, drop repeats
        if check == "runway":
            made = [runway_check(cfg, facts, now, tz)]
        elif check == "retention":
            made = [retention_check(cfg, facts, now, tz)]
        elif check == "contiguity":
            made = [contiguity_check(cfg, facts, now, tz, pending)]
        elif check == "default_clean":
            made = [default_clean_check(cfg, facts, ranges)]
        elif check == "not_null_key":
            made = [not_null_key_check(cfg, facts)]
        elif check == "conserved":
            if migration_problem or migration is None:
                problems.append(migration_problem or f"{cfg.name}: no migration to check")
                continue
            made = conserved_checks(config, cfg, facts, migration)
        else:
            raise ValueError(f"unknown check {check!r}; known: {', '.join(CHECKS)}")
        for item in made:
            (skipped if isinstance(item, Skipped) else specs).append(item)
    assets: dict[str, str] = {}
    for spec in specs:
        if spec.asset == CATALOG:
            assets[CATALOG] = catalog_asset(facts)
        elif spec.asset == DEFAULT:
            assets[DEFAULT] = default_asset(facts)
        elif spec.asset == FIGURES:
            assets[FIGURES] = figures_asset(config.state_schema, migration.migration_id)
    return GateSuite(cfg.name, assets, tuple(specs), tuple(skipped), tuple(problems))
