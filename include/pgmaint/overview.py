"""What the Partitions view shows: per managed table, its partitions on a timeline, the rows
waiting in its DEFAULT, open watchdog conditions, live service leases, the last runs and the
exact migration to trigger. Importable without Airflow; the plugin (plugins/pgmaint_partitions.py)
only serves it.

Cheap and never blocking, and a constant number of round trips however many tables (a test
counts them, tests/integration/overview/test_round_trips.py):
- the catalog in two set-based queries that take no lock at all (`read_partitions`: the parents,
  then every partition of all of them; bounds deparsed with `pg_get_expr(relpartbound, 0)`, which,
  unlike passing the partition's oid, opens no relation);
- who holds or waits for ACCESS EXCLUSIVE on a table or its partitions, from `pg_locks` in one
  query: such a table is shown as locked, naming the holder, and nothing of it is read further;
- the DEFAULTs' rows as the watchdog counts them (exact up to `default_exact_count_limit`,
  LIMIT-bounded, `canary_timeout_ms` statement timeout, above the limit the planner's estimate),
  but for all tables at once: one `pg_relation_size` query (an empty file is an empty DEFAULT;
  ACCESS SHARE taken and released per relation), then one bounded count of the non-empty ones;
  if a lock or the timeout stops that, the watchdog's own per-table count (`watchdog._default_rows`);
- the state schema (conditions, leases, runs, migrations) with one plain SELECT each, and only
  when it exists at the current version: the view never creates or upgrades anything;
- the session opened by `open_overview_connection` has a 200 ms lock_timeout and a 5 s
  statement_timeout (`watchdog.open_watchdog_connection`).

`gather(conn, config, settings)` returns a JSON-ready dict (the plugin's `api/overview`);
`timeline(...)` is the pure part: partitions and holes classified by state.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode

from include.pgmaint.catalog import CatalogError, Partition, TableFacts, facts_from_row, parse_bound
from include.pgmaint.config import Config, EscalationSettings, TableConfig
from include.pgmaint.escalation.rendering import ago
from include.pgmaint.plan import desired_bounds, to_utc
from include.pgmaint.plan import timeline as table_clock
from include.pgmaint.watchdog.results import key_table

MAINTENANCE_DAG = "partition_maintenance"
MIGRATION_DAG = "default_partition_migration"
WATCHDOG_DAG = "partition_watchdog"
DAG_IDS = (MAINTENANCE_DAG, MIGRATION_DAG, WATCHDOG_DAG)
JOBS = {"maintenance": MAINTENANCE_DAG, "migration": MIGRATION_DAG}
OPEN_MIGRATION_PHASES = ("preparing", "copying", "swapped", "draining")

# Segment kinds, in the order the legend lists them.
EXPIRED, RETAINED, CURRENT, AHEAD, GAP, MISSING = "expired", "retained", "current", "ahead", "gap", "missing"
KINDS = {
    EXPIRED: "past retention, still attached",
    RETAINED: "inside retention",
    CURRENT: "current interval",
    AHEAD: "runway ahead",
    GAP: "gap: no partition (rows go to the DEFAULT)",
    MISSING: "missing runway: no partition for the current or a coming interval",
}


class Segment(NamedTuple):  # a tuple: 60,000 of them are built per load at 1,000 x 60
    kind: str
    lower: datetime
    upper: datetime
    name: str | None = None  # None for gaps and missing intervals
    rows: int | None = None  # the planner's estimate for partitions

    def as_dict(self) -> dict:
        """One segment of the JSON (`segments=partitions`): a partition, or a hole (`partitions` 0)."""
        return {
            "kind": self.kind,
            "lower": _iso_utc(self.lower),
            "upper": _iso_utc(self.upper),
            "name": self.name,
            "last": self.name,
            "partitions": 0 if self.name is None else 1,
            "rows": self.rows,
        }


SEGMENT_DETAILS = ("runs", "partitions")


def runs(segments: list[Segment]) -> list[dict]:
    """The JSON's segments by default (`segments=runs`): each run of adjacent partitions of the same kind
    as one segment -- its bounds, first (`name`) and `last` partition, how many `partitions`, the sum of
    their estimated `rows` -- and each hole as itself. The same classification as one segment per
    partition (`Segment.as_dict`), in ~5 segments per table instead of one per partition."""
    out: list[dict] = []
    prev: Segment | None = None
    for seg in segments:
        if (
            prev is not None
            and seg.name is not None
            and prev.name is not None
            and seg.kind == prev.kind
            and seg.lower == prev.upper
        ):
            run = out[-1]
            run["upper"], run["last"] = _iso_utc(seg.upper), seg.name
            run["partitions"] += 1
            run["rows"] += seg.rows or 0
        else:
            run = seg.as_dict()
            if seg.name is not None:
                run["rows"] = seg.rows or 0
            out.append(run)
        prev = seg
    return out


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else _iso_utc(moment)


@functools.lru_cache(maxsize=16384)  # partition bounds repeat across tables: 60,000 segments, a few hundred instants
def _iso_utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def timeline(cfg: TableConfig, facts: TableFacts, now: datetime, tz: str) -> dict:
    """Partitions and the holes between them, classified, on the table's own clock (see plan.timeline).

    A partition is `expired` when its upper bound is at or before now - retention (what retention
    retires), `current` when it holds now, `ahead` when it starts after now, else `retained`.
    A hole before the current interval is a `gap`; a hole from the current interval up to the
    premake horizon is `missing` runway. Partitions with MINVALUE/MAXVALUE bounds are clipped to
    the window.
    """
    clock_now, clock_tz = table_clock(facts, now, tz)
    desired = desired_bounds(cfg.interval, cfg.premake, clock_now, clock_tz)  # plan.desired_ranges without the names
    current_start, horizon = desired[0].lower, desired[-1].upper
    cutoff = _cutoff(cfg.retention, clock_now, clock_tz)  # plan.retention_cutoff, once per clock
    ranges = [
        (p.range.lower, p.range.upper, p)
        for p in facts.partitions
        if p.range.lower is not None or p.range.upper is not None
    ]
    lowers = [lo for lo, _, _ in ranges if lo is not None]
    uppers = [hi for _, hi, _ in ranges if hi is not None]
    start = min(lowers + [current_start] + ([cutoff] if cutoff and not lowers else []))
    end = max(uppers + [horizon])
    segments: list[Segment] = []
    append = segments.append
    cursor = start
    for lower, upper, p in ranges:
        lo = start if lower is None else lower
        hi = end if upper is None else upper
        if lo > cursor:
            segments += _holes(cursor, lo, current_start, horizon)
        if cutoff is not None and upper is not None and upper <= cutoff:
            kind = EXPIRED
        elif lo <= clock_now < hi:
            kind = CURRENT
        elif lo > clock_now:
            kind = AHEAD
        else:
            kind = RETAINED
        append(Segment(kind, lo, hi, p.name, p.estimated_rows))
        if hi > cursor:
            cursor = hi
    if cursor < horizon:
        segments += _holes(cursor, horizon, current_start, horizon)
    existing = {(lo, hi) for lo, hi, _ in ranges}
    return {
        "start": start,
        "end": end,
        "now": clock_now,
        "cutoff": cutoff,
        "current_start": current_start,
        "horizon": horizon,
        "segments": segments,
        "missing": [rng for rng in desired if (rng.lower, rng.upper) not in existing],
    }


@functools.lru_cache(maxsize=1024)  # the same retention, clock and zone for most tables of a load
def _cutoff(retention, now: datetime, tz: str) -> datetime | None:
    return to_utc(retention.before(now, tz)) if retention else None


def _holes(lo: datetime, hi: datetime, current_start: datetime, horizon: datetime) -> list[Segment]:
    out = []
    if lo < min(hi, current_start):
        out.append(Segment(GAP, lo, min(hi, current_start)))
    if max(lo, current_start) < min(hi, horizon):
        out.append(Segment(MISSING, max(lo, current_start), min(hi, horizon)))
    if max(lo, horizon) < hi:
        out.append(Segment(GAP, max(lo, horizon), hi))
    return out


# --- Airflow UI links (the UI's own routes; the plugin passes its base path) --------------------------


def run_url(ui_base: str, dag_id: str | None, run_id: str | None) -> str | None:
    if not dag_id or not run_id:
        return None
    return f"{ui_base.rstrip('/')}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def dag_url(ui_base: str, dag_id: str) -> str:
    return f"{ui_base.rstrip('/')}/dags/{quote(dag_id, safe='')}"


def migration_trigger(table: str, ui_base: str, plugin_base: str) -> dict:
    """The exact default_partition_migration run that moves a table's DEFAULT rows, three ways."""
    conf = {"table": table}
    return {
        "dag_id": MIGRATION_DAG,
        "conf": conf,
        # The plugin's own trigger page: this conf, prefilled and editable, posted to Airflow's REST API
        # with the viewer's own identity (Airflow 3.3's trigger dialog takes no conf from its URL).
        "trigger_url": f"{plugin_base.rstrip('/')}/trigger/{MIGRATION_DAG}?" + urlencode({"conf": json.dumps(conf)}),
        "dag_url": dag_url(ui_base, MIGRATION_DAG),
        "cli": f"scripts/airflow dags trigger {MIGRATION_DAG} --conf '{json.dumps(conf)}'",
        "api": {
            "method": "POST",
            "path": f"/api/v2/dags/{MIGRATION_DAG}/dagRuns",
            "body": {"logical_date": None, "conf": conf},
        },
    }


# --- gathering -----------------------------------------------------------------------------------------


def open_overview_connection(conninfo: str, config: Config):
    """The watchdog's session: 200 ms lock_timeout, statement_timeout at most 5 s, TimeZone UTC."""
    from include.pgmaint.watchdog import open_watchdog_connection

    return open_watchdog_connection(conninfo, config)


def _age(delta: timedelta) -> str:
    return ago(max(delta, timedelta(0)))  # the watchdog's words for a duration


def _state_reads(conn, config: Config, names: list[str]) -> dict[str, Any]:
    """Conditions, leases, last runs and open migrations: one SELECT each, nothing written."""
    from psycopg import sql
    from psycopg.rows import dict_row

    from include.pgmaint.services.leases import live_leases
    from include.pgmaint.state import latest_version, state_schema_version

    out: dict[str, Any] = {
        "version": None,
        "latest": latest_version(),
        "note": None,
        "conditions": [],
        "leases": [],
        "runs": [],
        "migrations": [],
    }
    version = state_schema_version(conn, config.state_schema)
    out["version"] = version
    if version is None:
        out["note"] = (
            f"state schema {config.state_schema!r} does not exist yet: no pgmaint run has written "
            "its journal, conditions or leases (the first run creates it)"
        )
        return out
    if version < out["latest"]:
        out["note"] = (
            f"state schema {config.state_schema!r} is at version {version}, this pgmaint expects "
            f"{out['latest']}: the next pgmaint run upgrades it; journal, conditions and leases not shown"
        )
        return out
    s = sql.Identifier(config.state_schema)
    with conn.cursor(row_factory=dict_row) as cur:
        out["conditions"] = cur.execute(
            sql.SQL(
                "SELECT key, severity, message, details, first_seen, last_seen, streak, quiet, paged_at "
                "FROM {}.conditions WHERE resolved_at IS NULL ORDER BY severity = 'critical' DESC, first_seen"
            ).format(s)
        ).fetchall()
        out["runs"] = cur.execute(
            sql.SQL(
                "SELECT t.name AS table_name, j.job, r.run_id, r.dag_id, r.dag_run_id, r.task_id, r.started_at, r.finished_at, "
                "r.outcome, left(r.error, 500) AS error "
                "FROM unnest(%s::text[]) AS t(name) CROSS JOIN unnest(%s::text[]) AS j(job) "
                "CROSS JOIN LATERAL (SELECT * FROM {}.runs WHERE table_name = t.name AND job = j.job "
                "ORDER BY started_at DESC LIMIT 1) r"
            ).format(s),
            [names, list(JOBS)],
        ).fetchall()
        out["migrations"] = cur.execute(
            sql.SQL(
                "SELECT migration_id, table_name, phase, method, rows_copied, rows_moved, started_at, updated_at "
                "FROM {}.migrations WHERE phase = ANY(%s)"
            ).format(s),
            [list(OPEN_MIGRATION_PHASES)],
        ).fetchall()
    out["leases"] = live_leases(conn, config)  # read-only once the schema is current
    return out


_PARENTS_SQL = """
SELECT cfg.name, p.oid, p.relkind::text, ns.nspname, p.relname, pt.partstrat::text, pt.partnatts,
       ka.attname, format_type(ka.atttypid, NULL), pt.partdefid
FROM unnest(%(names)s::text[]) WITH ORDINALITY AS cfg(name, ord)
LEFT JOIN pg_class p ON p.oid = to_regclass(cfg.name)
LEFT JOIN pg_namespace ns ON ns.oid = p.relnamespace
LEFT JOIN pg_partitioned_table pt ON pt.partrelid = p.oid
LEFT JOIN pg_attribute ka ON ka.attrelid = p.oid AND ka.attnum = pt.partattrs[0] AND pt.partattrs[0] <> 0
ORDER BY cfg.ord
"""

# Every partition of the given parents, one row each. `pg_get_expr(relpartbound, 0)`: a bound holds
# constants only, so it deparses without the relation -- with the partition's oid PostgreSQL 16 opens
# (ACCESS SHARE, relcache entry) each of the 60,000 partitions, seconds in a new session.
_PARTITIONS_SQL = """
SELECT i.inhparent, c.oid, cn.nspname, c.relname, pg_get_expr(c.relpartbound, 0), i.inhdetachpending,
       greatest(c.reltuples, pg_stat_get_live_tuples(c.oid), 0)::float8
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_namespace cn ON cn.oid = c.relnamespace
WHERE i.inhparent = ANY (%(parents)s::oid[])
"""

# Sessions holding, or queued for, ACCESS EXCLUSIVE on a relation of this database: reading such a
# table (or maintaining it) waits. Few rows; matched to the tables by oid in Python.
_EXCLUSIVE_SQL = """
SELECT DISTINCT l.relation FROM pg_locks l
WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock' AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@dataclass
class Partitions:
    """What `read_partitions` read: facts per table, and the oids that map locks and DEFAULTs back to tables."""

    facts: dict[str, TableFacts | CatalogError]
    relations: dict[int, tuple[str, tuple[str, str]]]  # oid of a parent or partition -> (table name, (schema, name))
    defaults: dict[str, int]  # table name -> its DEFAULT's oid


def read_partitions(conn, tables: list[TableConfig], tz: str) -> Partitions:
    """The catalog facts the view draws, in two queries that take no lock: the same checks (`catalog.facts_from_row`)
    and the same partitions, bounds parsed by the same `catalog.parse_bound`, as `catalog.read_catalog`;
    without what only maintenance needs (leftover tables, identity columns and sequences, pgmaint's
    CHECK constraints on partitions: left empty)."""
    by_name = {t.name: t for t in tables}
    parents = conn.execute(_PARENTS_SQL, {"names": list(by_name)}).fetchall()
    facts: dict[str, TableFacts | CatalogError] = {}
    valid: dict[int, tuple] = {}  # parent oid -> (name, key type, DEFAULT's oid, partitions, default)
    relations: dict[int, tuple[str, tuple[str, str]]] = {}
    for name, oid, relkind, schema, table, strategy, key_count, key_column, key_type, default_oid in parents:
        # the parent's checks only; partitions below
        row = (
            name,
            oid is not None,
            relkind,
            schema,
            table,
            strategy,
            key_count,
            key_column,
            key_type,
            [],
            (),
            (),
            None,
            None,
            (),
        )
        facts[name] = facts_from_row(by_name[name], row, tz)
        if isinstance(facts[name], TableFacts):
            valid[oid] = (name, key_type, default_oid, [], [])
            relations[oid] = (name, (schema, table))
    defaults: dict[str, int] = {}
    broken: dict[str, str] = {}
    if valid:
        for parent, oid, schema, name, bound, pending, estimate in conn.execute(
            _PARTITIONS_SQL, {"parents": list(valid)}
        ).fetchall():
            table, key_type, default_oid, parts, default = valid[parent]
            relations[oid] = (table, (schema, name))
            if oid == default_oid:
                default.append(Partition(schema, name, None, pending, int(estimate)))
                defaults[table] = oid
                continue
            try:
                parts.append(Partition(schema, name, parse_bound(bound, key_type, tz), pending, int(estimate)))
            except CatalogError as exc:
                broken[table] = f"{table}: {exc}"
    for table, _, _, parts, default in valid.values():
        if table in broken:
            facts[table] = CatalogError(broken[table])
            continue
        parts.sort(key=_by_lower)  # as catalog.facts_from_row: MINVALUE first, then by lower bound
        facts[table] = replace(facts[table], partitions=tuple(parts), default=default[0] if default else None)
    return Partitions(facts, relations, defaults)


_MIN = datetime.min.replace(tzinfo=timezone.utc)


def _by_lower(p: Partition) -> tuple:
    return (p.range.lower is not None, p.range.lower or _MIN)


def _locked(conn, found: Partitions) -> dict[str, CatalogError]:
    """Tables a session holds or waits for ACCESS EXCLUSIVE on (the parent, a partition or the DEFAULT),
    as the error the view shows instead of them, naming the holders (`execute.find_blockers`)."""
    from include.pgmaint.execute import find_blockers
    from include.pgmaint.guards import quoted

    hit: dict[str, set[tuple[str, str]]] = {}
    for (relation,) in conn.execute(_EXCLUSIVE_SQL).fetchall():
        if relation in found.relations:
            table, qualified = found.relations[relation]
            hit.setdefault(table, set()).add(qualified)
    out = {}
    for table, relations in hit.items():  # only the locked tables: none on a healthy database
        facts = found.facts[table]
        parents = [(facts.schema, facts.table)] if isinstance(facts, TableFacts) else []
        names = [quoted(*r) for r in parents + sorted(relations - set(parents))]
        holders = "; ".join(str(b) for b in find_blockers(conn, tuple(names)))
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more of its partitions" if len(names) > 3 else "")
        out[table] = CatalogError(
            f"{table}: locked: a session holds or waits for ACCESS EXCLUSIVE on {shown}; "
            f"reading or maintaining the table waits for it; lock held by {holders or 'another session'}"
        )
    return out


def _runbook(settings: EscalationSettings, key: str, plugin_base: str) -> str:
    """The runbook section of a condition: `escalation.runbook_url` when it is a URL, else the copy the plugin serves."""
    from include.pgmaint.config.escalation_settings import anchor

    if "://" in settings.runbook_url:
        return settings.runbook(key)
    return f"{plugin_base.rstrip('/')}/runbook#{anchor(key)}"


def _default_rows(conn, cfg: TableConfig, facts: TableFacts, settings: EscalationSettings) -> dict | None:
    """The DEFAULT's rows as the watchdog counts them (its own query, called as is)."""
    from include.pgmaint.watchdog.tables import _default_rows as watchdog_default_rows

    if facts.default is None:
        return None
    found = watchdog_default_rows(conn, cfg, facts, settings)
    base = {
        "name": f"{facts.schema}.{facts.default.name}",
        "rows": 0,
        "exact": True,
        "min": None,
        "max": None,
        "note": "; ".join(found.notes) or None,
    }
    for c in found.conditions:
        d = c.details
        base.update(rows=d["rows"], exact=d["exact"], min=d["min"], max=d["max"])
    if not found.conditions and facts.default.estimated_rows > settings.default_exact_count_limit:
        base.update(rows=facts.default.estimated_rows, exact=False)
    return base


def _default_entry(
    cfg: TableConfig,
    facts: TableFacts,
    rows: int,
    exact: bool,
    low: str | None,
    high: str | None,
    note: str | None = None,
) -> dict:
    if rows > 0 and cfg.auto_migrate and note is None:
        note = f"{cfg.name}: auto_migrate: the watchdog asks default_partition_migration to move them"
    return {
        "name": f"{facts.schema}.{facts.default.name}",
        "rows": rows,
        "exact": exact,
        "min": low if rows > 0 else None,
        "max": high if rows > 0 else None,
        "note": note,
    }


def _defaults(conn, found: Partitions, tables: list[TableConfig], settings: EscalationSettings) -> dict[str, dict]:
    """The DEFAULTs' rows, as the watchdog counts them, for all `tables` (each with a DEFAULT) in a fixed
    number of statements: their sizes in one query (0 bytes: empty, nothing to count), then one count of
    the non-empty ones, LIMIT-bounded per DEFAULT, under `canary_timeout_ms`. Above
    `default_exact_count_limit` rows by the estimate, the estimate (as the watchdog). If a lock or the
    timeout stops a set-based statement, the watchdog's own count, table by table."""
    from psycopg import errors, sql

    limit = settings.default_exact_count_limit
    out: dict[str, dict] = {}
    by_oid = {found.defaults[cfg.name]: cfg for cfg in tables}
    one_by_one: list[TableConfig] = []
    try:
        sizes = (
            dict(conn.execute("SELECT d, pg_relation_size(d) FROM unnest(%s::oid[]) AS d", [list(by_oid)]).fetchall())
            if by_oid
            else {}
        )
    except (errors.LockNotAvailable, errors.QueryCanceled):
        sizes, one_by_one = {}, list(tables)
    to_count: list[TableConfig] = []
    for oid, cfg in by_oid.items() if not one_by_one else ():
        facts, size = found.facts[cfg.name], sizes.get(oid)
        if size == 0:  # no page at all: no row, whatever the statistics say
            out[cfg.name] = _default_entry(cfg, facts, 0, True, None, None)
        elif facts.default.estimated_rows > limit:
            out[cfg.name] = _default_entry(cfg, facts, facts.default.estimated_rows, False, None, None)
        elif size is None:  # dropped meanwhile: let the watchdog's count say what it finds
            one_by_one.append(cfg)
        else:
            to_count.append(cfg)
    if to_count:
        query = sql.SQL(" UNION ALL ").join(
            sql.SQL(
                "SELECT {i}, count(*), min(k)::text, max(k)::text FROM (SELECT {key} AS k FROM ONLY {default} "
                "LIMIT %(limit)s) s"
            ).format(
                i=sql.Literal(i),
                key=sql.Identifier(found.facts[cfg.name].key_column),
                default=sql.Identifier(found.facts[cfg.name].schema, found.facts[cfg.name].default.name),
            )
            for i, cfg in enumerate(to_count)
        )
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('statement_timeout', %s, true)", [f"{settings.canary_timeout_ms}ms"])
                counted = conn.execute(query, {"limit": limit + 1}).fetchall()
        except (errors.QueryCanceled, errors.LockNotAvailable):
            one_by_one += to_count
        else:
            for i, count, low, high in counted:
                cfg = to_count[i]
                facts = found.facts[cfg.name]
                rows, exact = (count, True) if count <= limit else (max(count, facts.default.estimated_rows), False)
                out[cfg.name] = _default_entry(cfg, facts, rows, exact, low, high)
    for cfg in one_by_one:
        out[cfg.name] = _default_rows(conn, cfg, found.facts[cfg.name], settings)
    return out


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused():
    """Python's cyclic garbage collector off while a load builds its ~250,000 long-lived objects (1,000 x 60):
    in the API server, whose heap already tracks hundreds of thousands of objects, the full collections
    those allocations trigger cost a third of a load. Reference counting still frees everything at once;
    cycles made meanwhile (anywhere in the process) wait for the next collection, which runs as usual
    once the collector is back on: when the last concurrent load ends, if it was on before."""
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


def gather(
    conn,
    config: Config,
    settings: EscalationSettings,
    *,
    now: datetime | None = None,
    ui_base: str = "",
    plugin_base: str = "/pgmaint",
    tables: list[str] | None = None,
    segments: str = "runs",
) -> dict:
    """Everything the view shows, as a JSON-ready dict (see README, "The Partitions view").

    `tables`: only these configured tables (unknown names raise KeyError naming them). `segments`:
    `runs` (adjacent partitions of the same kind as one segment, see `runs`) or `partitions` (one
    segment per partition)."""
    if segments not in SEGMENT_DETAILS:
        raise ValueError(f"segments: {segments!r} is not one of {', '.join(SEGMENT_DETAILS)}")
    with _gc_paused():
        return _gather(
            conn, config, settings, now=now, ui_base=ui_base, plugin_base=plugin_base, tables=tables, segments=segments
        )


def _gather(
    conn,
    config: Config,
    settings: EscalationSettings,
    *,
    now: datetime | None,
    ui_base: str,
    plugin_base: str,
    tables: list[str] | None,
    segments: str,
) -> dict:
    started = time.perf_counter()
    now = now or datetime.now(timezone.utc)
    if tables:
        unknown = [t for t in tables if t not in config.table_names]
        if unknown:
            raise KeyError(f"not configured: {', '.join(unknown)}")
        config = replace(config, tables=tuple(t for t in config.tables if t.name in tables))
    names = list(config.table_names)
    found = read_partitions(conn, list(config.tables), config.timezone)
    facts = {**found.facts, **_locked(conn, found)}
    defaults = _defaults(
        conn,
        found,
        [cfg for cfg in config.tables if isinstance(facts[cfg.name], TableFacts) and facts[cfg.name].default],
        settings,
    )
    state = _state_reads(conn, config, names)
    by_table, database_conditions, leases = _state_by_table(state, config, names, now, settings, ui_base, plugin_base)
    tables = [
        _table_entry(
            cfg,
            facts[cfg.name],
            by_table[cfg.name],
            defaults.get(cfg.name),
            now,
            config.timezone,
            segments,
            ui_base,
            plugin_base,
        )
        for cfg in config.tables
    ]
    return {
        "generated_at": _iso(now),
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
        "timezone": config.timezone,
        "state_schema": config.state_schema,
        "state": {"version": state["version"], "latest": state["latest"], "note": state["note"]},
        "legend": KINDS,
        "database_conditions": database_conditions,
        "leases": leases,
        "dags": {d: dag_url(ui_base, d) for d in DAG_IDS},
        "tables": tables,
    }


def _state_by_table(
    state: dict,
    config: Config,
    names: list[str],
    now: datetime,
    settings: EscalationSettings,
    ui_base: str,
    plugin_base: str,
) -> tuple[dict[str, dict], list[dict], list[dict]]:
    """The state schema's rows (conditions, leases, last runs, open migrations) filed under their tables."""
    by_table: dict[str, dict] = {n: {"conditions": [], "leases": [], "runs": {}, "migration": None} for n in names}
    database_conditions = []
    for c in state["conditions"]:
        item = {
            "key": c["key"],
            "severity": c["severity"],
            "message": c["message"],
            "since": _iso(c["first_seen"]),
            "last_seen": _iso(c["last_seen"]),
            "age_seconds": round((now - c["first_seen"]).total_seconds()),
            "age": _age(now - c["first_seen"]),
            "paged": c["paged_at"] is not None,
            "quiet": c["quiet"],
            "runbook": _runbook(settings, c["key"], plugin_base),
        }
        table = key_table(c["key"])
        (by_table[table]["conditions"] if table in by_table else database_conditions).append(item)
    writers = {t.name: set(t.writers) for t in config.tables}
    leases = []
    for lease in state["leases"]:
        item = {
            "service": lease["service"],
            "kind": lease["kind"],
            "state": lease["state"],
            "paused_by": f"{lease['dag_id']}/{lease['run_id']}",
            "dag_id": lease["dag_id"],
            "run_id": lease["run_id"],
            "reason": lease["reason"],
            "paused_at": _iso(lease["paused_at"]),
            "lease_until": _iso(lease["lease_until"]),
            "expired": bool(lease["expired"]),
            "run_url": run_url(ui_base, lease["dag_id"], lease["run_id"]),
            "tables": sorted(n for n, w in writers.items() if lease["service"] in w),
        }
        leases.append(item)
        for n in item["tables"]:
            by_table[n]["leases"].append(item)
    for r in state["runs"]:
        by_table[r["table_name"]]["runs"][r["job"]] = {
            "run_id": r["run_id"],
            "dag_id": r["dag_id"],
            "dag_run_id": r["dag_run_id"],
            "task_id": r["task_id"],
            "started_at": _iso(r["started_at"]),
            "finished_at": _iso(r["finished_at"]),
            "outcome": r["outcome"],
            "error": r["error"],
            "url": run_url(ui_base, r["dag_id"], r["dag_run_id"]),
        }
    for m in state["migrations"]:
        if m["table_name"] in by_table:
            by_table[m["table_name"]]["migration"] = {
                k: (_iso(v) if isinstance(v, datetime) else v) for k, v in m.items()
            }
    return by_table, database_conditions, leases


def _table_entry(
    cfg: TableConfig,
    f,
    state: dict,
    default: dict | None,
    now: datetime,
    tz: str,
    segments: str,
    ui_base: str,
    plugin_base: str,
) -> dict:
    """One table as the view shows it: its settings, timeline, runway, DEFAULT and state."""
    entry: dict[str, Any] = {
        "name": cfg.name,
        "interval": str(cfg.interval),
        "premake": cfg.premake,
        "retention": str(cfg.retention) if cfg.retention else None,
        "maintained_by": cfg.maintained_by,
        "writers": list(cfg.writers),
        "error": None,
        **state,
    }
    if isinstance(f, CatalogError):
        entry.update(error=str(f), timeline=None, default=None, runway=None, expired_attached=None, migrate=None)
        return entry
    tl = timeline(cfg, f, now, tz)
    segs = tl["segments"]
    ahead = sum(1 for s in segs if s.kind == AHEAD and s.lower < tl["horizon"])
    has_current = any(s.kind == CURRENT for s in segs)
    covered = max((p.range.upper for p in f.partitions if p.range.upper is not None), default=None)
    entry.update(
        key=f.key_column,
        key_type=f.key_type,
        partitions=len(f.partitions),
        timeline={
            "start": _iso(tl["start"]),
            "end": _iso(tl["end"]),
            "now": _iso(tl["now"]),
            "cutoff": _iso(tl["cutoff"]),
            "horizon": _iso(tl["horizon"]),
            "segments": [s.as_dict() for s in segs] if segments == "partitions" else runs(segs),
        },
        runway={
            "current": has_current,
            "ahead": ahead,
            "premake": cfg.premake,
            "missing_intervals": len(tl["missing"]),
            "covered_until": _iso(covered),
        },
        gaps=sum(1 for s in segs if s.kind == GAP),
        expired_attached=sum(1 for s in segs if s.kind == EXPIRED),
        default=default,
        migrate=migration_trigger(cfg.name, ui_base, plugin_base) if default and default["rows"] > 0 else None,
    )
    return entry


def attention(t: dict) -> tuple:
    """Sort key: tables that need a person first (critical conditions, missing runway, DEFAULT rows, errors)."""
    conditions = t.get("conditions") or []
    return (
        -sum(c["severity"] == "critical" for c in conditions),
        -(t.get("error") is not None),
        -(t.get("runway") is not None and not t["runway"]["current"]),
        -((t.get("default") or {}).get("rows") or 0),
        -len(conditions),
        -len(t.get("leases") or []),
        t["name"],
    )


__all__ = [
    "attention",
    "DAG_IDS",
    "KINDS",
    "SEGMENT_DETAILS",
    "Segment",
    "gather",
    "migration_trigger",
    "open_overview_connection",
    "read_partitions",
    "runs",
    "timeline",
]
