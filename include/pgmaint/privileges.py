"""Every privilege pgmaint's jobs need on the target database, checked up front.

Dry runs and `python -m include.pgmaint.doctor` use this so that missing privileges are found
all at once, with the statement that grants each, instead of one `permission denied` per real
run. Only the catalog and the `has_*_privilege` / `pg_has_role` functions are read: nothing is
locked beyond ACCESS SHARE on catalog tables, nothing is written.

What each job needs (README "Privileges" lists the same):

  maintenance, migration   USAGE and CREATE on each table's schema (new partitions are created
                           there); ownership of the parent, of every partition and of the DEFAULT
                           (ATTACH / DETACH / DROP / ADD CONSTRAINT need the owner, and
                           `ALTER TABLE parent OWNER TO` does not cascade to partitions)
  watchdog                 USAGE on each table's schema; SELECT on the parent and the DEFAULT
  every job                the privileges of pg_read_all_stats (GRANT pg_monitor): other roles'
                           transactions are hidden in pg_stat_activity without them, and preflight,
                           the watchdog and the migration's wait for old snapshots need to see them
  every job                the state schema: if it does not exist yet, CREATE on the database
                           (pgmaint creates it on first use) — or create it beforehand for the
                           role; if it exists, USAGE on it and the table privileges in
                           STATE_TABLES; if it is older than this pgmaint, CREATE on it and
                           ownership of its objects (the upgrade alters them)
  migration, watchdog      what the service adapters of the checked tables' `writers` need (the
                           migration pauses and resumes them; the watchdog resumes them when a
                           lease expires). pg_partman: USAGE on its schema, SELECT on part_config
                           and UPDATE of its automatic_maintenance column. pg_cron: USAGE on schema
                           cron, EXECUTE on cron.alter_job, and the jobs themselves owned by the
                           role (cron.job.username; alter_job refuses anyone else's job). A pg_cron
                           service with its own connection_id lives in another database: not
                           checked here. The real run does not re-check these before its first
                           DDL: the writers are paused (or deliberately not) by then.

Ownership counts through role membership (`pg_has_role(role, owner, 'USAGE')`), as PostgreSQL
checks it (except a pg_cron job's owner, which pg_cron compares by name).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from include.pgmaint.config import Config, ServiceConfig, TableConfig
from include.pgmaint.plan import retention_cutoff, timeline
from include.pgmaint.services.base import extension_schema
from include.pgmaint.state import latest_version

log = logging.getLogger("pgmaint.privileges")
JOBS = ("maintenance", "migration", "watchdog")
SERVICE_JOBS = ("migration", "watchdog")  # the jobs that pause or resume a table's writers

# The privileges each job's writes and reads need on pgmaint's own tables (include/sql/).
STATE_TABLES: dict[str, tuple[str, ...]] = {
    "schema_version": ("SELECT",),
    "runs": ("SELECT", "INSERT", "UPDATE"),
    "steps": ("SELECT", "INSERT"),
    "migrations": ("SELECT", "INSERT", "UPDATE"),
    "migration_figures": ("SELECT", "INSERT", "UPDATE"),
    "service_flags": ("SELECT", "INSERT", "UPDATE"),
    "service_leases": ("SELECT", "INSERT", "UPDATE"),
    "conditions": ("SELECT", "INSERT", "UPDATE"),
    "alerts": ("SELECT", "INSERT"),
}


def ident(*names: str) -> str:
    """Quoted (and dot-joined) identifier, as it must appear in a statement."""
    return sql.Identifier(*names).as_string(None)


@dataclass(frozen=True)
class Missing:
    """One missing privilege: what, on which object, which jobs need it and why, and the fix."""

    privilege: str  # e.g. 'USAGE, CREATE' or 'ownership'
    target: str  # e.g. 'schema "api"', 'table "api"."request_log_default"'
    needed_by: tuple[str, ...]
    why: str
    fix: str  # one or more SQL statements, ';'-terminated

    def __str__(self) -> str:
        return (
            f"missing {self.privilege} on {self.target} (needed by {', '.join(self.needed_by)}: {self.why}); "
            f"fix: {self.fix}"
        )


def current_role(conn) -> str:
    return conn.execute("SELECT current_user").fetchone()[0]


def check(
    conn,
    config: Config,
    tables: list[TableConfig] | None = None,
    *,
    jobs: tuple[str, ...] = JOBS,
    role: str | None = None,
    services: bool = True,
) -> list[Missing]:
    """Every privilege `role` (default: the session's user) lacks for `jobs` on `tables` (default: all configured);
    with `services`, also what the adapters of the tables' writers need (migration and watchdog only)."""
    unknown = set(jobs) - set(JOBS)
    if unknown or not jobs:
        raise ValueError(f"jobs must be a non-empty subset of {JOBS}, got {jobs}")
    role = role or current_role(conn)
    if not conn.execute("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", [role]).fetchone()[0]:
        raise ValueError(f"role {role!r} does not exist")
    tables = list(tables or config.tables)
    ddl_jobs = tuple(j for j in jobs if j in ("maintenance", "migration"))
    missing: list[Missing] = []
    for schema in dict.fromkeys(t.schema for t in tables):
        missing += _table_schema(conn, role, schema, ddl_jobs, jobs)
    for cfg in tables:
        missing += _table_family(conn, role, cfg, ddl_jobs, "watchdog" in jobs)
    missing += _state_schema(conn, role, config.state_schema, jobs)
    missing += _session_visibility(conn, role, jobs)
    if services:
        missing += _writer_services(conn, role, config, tables, tuple(j for j in jobs if j in SERVICE_JOBS))
    return missing


def _session_visibility(conn, role: str, jobs: tuple[str, ...]) -> list[Missing]:
    if conn.execute("SELECT pg_has_role(%s, 'pg_read_all_stats', 'USAGE')", [role]).fetchone()[0]:
        return []
    return [
        Missing(
            "membership",
            'role "pg_read_all_stats" (pg_monitor includes it)',
            jobs,
            "other roles' transactions, states and queries are hidden in pg_stat_activity without it: preflight "
            "and the watchdog could not see a long transaction, the migration could not wait for old snapshots",
            f"GRANT pg_monitor TO {ident(role)};",
        )
    ]


def problems(conn, config: Config, cfg: TableConfig, job: str, *, services: bool = True) -> list[str]:
    """For a dry run of `job` on one table: one line per missing privilege (empty when all are there)."""
    found = check(conn, config, [cfg], jobs=(job,), services=services)
    if not found:
        return []
    role = current_role(conn)
    return [
        f"role {role!r} lacks {len(found)} privilege(s) the real {job} run needs "
        "(grant them, then dry-run again; `python -m include.pgmaint.doctor CONNINFO` lists them for every table):"
    ] + [str(m) for m in found]


class MissingPrivileges(PermissionError):
    """A real run found privileges missing before its first statement: it did nothing."""


def require(conn, config: Config, cfg: TableConfig, job: str) -> None:
    """Before a real run's first DDL on a table: raise MissingPrivileges listing every missing
    privilege (with its fix), so that a run never stops half-way on `permission denied`."""
    found = problems(conn, config, cfg, job, services=False)  # the writers are paused (or deliberately not) by now
    if found:
        raise MissingPrivileges(
            found[0].replace("(grant them, then dry-run again; ", "(nothing was done; grant them; ")
            + "\n"
            + "\n".join(found[1:])
        )


def _table_schema(conn, role: str, schema: str, ddl_jobs: tuple[str, ...], jobs: tuple[str, ...]) -> list[Missing]:
    row = conn.execute(
        "SELECT has_schema_privilege(%(r)s, n.oid, 'USAGE'), has_schema_privilege(%(r)s, n.oid, 'CREATE') "
        "FROM pg_namespace n WHERE n.nspname = %(s)s",
        {"r": role, "s": schema},
    ).fetchone()
    if row is None:
        return []  # the table check reports the missing table
    usage, create = row
    lacking = (["USAGE"] if not usage else []) + (["CREATE"] if ddl_jobs and not create else [])
    if not lacking:
        return []
    why = " and ".join(
        {"USAGE": "reach the partitioned tables in it", "CREATE": "create new partitions there"}[p] for p in lacking
    )
    return [
        Missing(
            ", ".join(lacking),
            f"schema {ident(schema)}",
            jobs if "USAGE" in lacking else ddl_jobs,
            why,
            f"GRANT {', '.join(lacking)} ON SCHEMA {ident(schema)} TO {ident(role)};",
        )
    ]


_FAMILY_SQL = """
WITH parent AS (
    SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %(schema)s AND c.relname = %(table)s
)
SELECT n.nspname, c.relname,
       CASE WHEN c.oid = p.oid THEN 'parent'
            WHEN pg_get_expr(c.relpartbound, 0) = 'DEFAULT' THEN 'default' ELSE 'partition' END AS role_in_family,
       pg_get_userbyid(c.relowner) AS owner,
       pg_has_role(%(role)s, c.relowner, 'USAGE') AS owns,
       has_table_privilege(%(role)s, c.oid, 'SELECT') AS can_select
FROM parent p
JOIN pg_class c ON c.oid = p.oid OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = p.oid)
JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY c.oid <> p.oid, c.relname
"""


def _table_family(conn, role: str, cfg: TableConfig, ddl_jobs: tuple[str, ...], watchdog: bool) -> list[Missing]:
    rows = conn.execute(_FAMILY_SQL, {"schema": cfg.schema, "table": cfg.table, "role": role}).fetchall()
    if not rows:
        return [
            Missing(
                "existence",
                f"table {ident(cfg.schema, cfg.table)}",
                ddl_jobs + (("watchdog",) if watchdog else ()),
                f"{cfg.name} is configured but does not exist",
                f"-- create {ident(cfg.schema, cfg.table)} (PARTITION BY RANGE), or fix its `name` in the config",
            )
        ]
    out = []
    for schema, name, kind, owner, owns, can_select in rows:
        target = f"{'partitioned table' if kind == 'parent' else kind if kind != 'default' else 'DEFAULT partition'} {ident(schema, name)}"
        if ddl_jobs and not owns:
            why = {
                "parent": "ATTACH and DETACH PARTITION alter the parent",
                "default": "the DEFAULT is fenced with a CHECK constraint, or swapped out by the migration",
                "partition": "detached and dropped when it expires (ALTER TABLE parent OWNER does not cascade to partitions)",
            }[kind]
            reads = ("watchdog",) if watchdog and kind != "partition" and not can_select else ()  # ownership covers it
            out.append(
                Missing(
                    f"ownership (owner: {owner})",
                    target,
                    ddl_jobs + reads,
                    why,
                    f"ALTER TABLE {ident(schema, name)} OWNER TO {ident(role)};",
                )
            )
        elif watchdog and kind in ("parent", "default") and not can_select:
            why = (
                "the canary reads the current interval through the parent"
                if kind == "parent"
                else "the watchdog counts the rows in the DEFAULT"
            )
            out.append(
                Missing(
                    "SELECT",
                    target,
                    ("watchdog",),
                    why,
                    f"GRANT SELECT ON TABLE {ident(schema, name)} TO {ident(role)};",
                )
            )
    return out


def _state_schema(conn, role: str, schema: str, jobs: tuple[str, ...]) -> list[Missing]:

    db, create_db = conn.execute(
        "SELECT current_database(), has_database_privilege(%s, current_database(), 'CREATE')", [role]
    ).fetchone()
    row = conn.execute(
        "SELECT n.oid, has_schema_privilege(%(r)s, n.oid, 'USAGE'), has_schema_privilege(%(r)s, n.oid, 'CREATE'), "
        "pg_get_userbyid(n.nspowner) FROM pg_namespace n WHERE n.nspname = %(s)s",
        {"r": role, "s": schema},
    ).fetchone()
    if row is None:
        if create_db:
            return []
        return [
            Missing(
                "CREATE",
                f"database {ident(db)}",
                jobs,
                f"the state schema {ident(schema)} does not exist yet and pgmaint creates it on first use",
                f"CREATE SCHEMA {ident(schema)} AUTHORIZATION {ident(role)};  "
                f"-- or: GRANT CREATE ON DATABASE {ident(db)} TO {ident(role)};",
            )
        ]
    oid, usage, create, owner = row
    out = []
    if not usage:
        out.append(
            Missing(
                "USAGE",
                f"schema {ident(schema)}",
                jobs,
                "pgmaint's journal and state live there",
                f"GRANT USAGE ON SCHEMA {ident(schema)} TO {ident(role)};",
            )
        )
    objects = conn.execute(
        "SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner), pg_has_role(%(r)s, c.relowner, 'USAGE'), "
        "has_table_privilege(%(r)s, c.oid, 'SELECT'), has_table_privilege(%(r)s, c.oid, 'INSERT'), "
        "has_table_privilege(%(r)s, c.oid, 'UPDATE') "
        "FROM pg_class c WHERE c.relnamespace = %(oid)s AND c.relkind IN ('r', 'p') ORDER BY c.relname",
        {"r": role, "oid": oid},
    ).fetchall()
    version = None
    if (
        any(o[0] == "schema_version" for o in objects)
        and usage
        and next(o for o in objects if o[0] == "schema_version")[4]
    ):
        version = conn.execute(
            sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_version").format(sql.Identifier(schema))
        ).fetchone()[0]
    elif not any(o[0] == "schema_version" for o in objects):
        version = 0
    if version is not None and version < latest_version():
        why = f"it is at version {version}, this pgmaint upgrades it to {latest_version()} (creates and alters its objects)"
        if not create:
            out.append(
                Missing(
                    "CREATE",
                    f"schema {ident(schema)}",
                    jobs,
                    why,
                    f"GRANT CREATE ON SCHEMA {ident(schema)} TO {ident(role)};",
                )
            )
        for name, _, obj_owner, owns, *_ in objects:
            if not owns:
                out.append(
                    Missing(
                        f"ownership (owner: {obj_owner})",
                        f"table {ident(schema, name)}",
                        jobs,
                        why,
                        f"ALTER TABLE {ident(schema, name)} OWNER TO {ident(role)};",
                    )
                )
        return out
    for name, _, _, _, *have in objects:
        needed = STATE_TABLES.get(name)
        if not needed:
            continue
        lacking = [p for p, ok in zip(("SELECT", "INSERT", "UPDATE"), have) if not ok and p in needed]
        if lacking:
            out.append(
                Missing(
                    ", ".join(lacking),
                    f"table {ident(schema, name)}",
                    jobs,
                    "pgmaint's journal and state",
                    f"GRANT {', '.join(lacking)} ON TABLE {ident(schema, name)} TO {ident(role)};",
                )
            )
    return out


# --- the writers' service adapters --------------------------------------------------------------


def _writer_services(
    conn, role: str, config: Config, tables: list[TableConfig], jobs: tuple[str, ...]
) -> list[Missing]:
    if not jobs:
        return []
    names = dict.fromkeys(w for t in tables for w in t.writers)
    used = [s for s in config.services if s.name in names]
    partman = [s for s in used if s.kind == "pg_partman"]
    cron = [s for s in used if s.kind == "pg_cron" and not s.options.get("connection_id")]
    return (_pg_partman(conn, role, partman, jobs) if partman else []) + (
        _pg_cron(conn, role, cron, jobs) if cron else []
    )


def _services_why(services: list[ServiceConfig], what: str) -> str:
    named = ", ".join(repr(s.name) for s in services)
    return (
        f"the writer service{'s' if len(services) > 1 else ''} {named} ({services[0].kind}) {what} while rows move "
        "(pause_services, on by default) and when the watchdog resumes an expired lease"
    )


def _absent(name: str, services: list[ServiceConfig], jobs: tuple[str, ...]) -> list[Missing]:
    named = ", ".join(s.name for s in services)
    return [
        Missing(
            "existence",
            f"extension {ident(name)}",
            jobs,
            f"{name} is not installed in this database, and the tables' writers name {named} (kind {name})",
            f"-- install {name} in this database, or remove {named} from the tables' writers",
        )
    ]


def _pg_partman(conn, role: str, services: list[ServiceConfig], jobs: tuple[str, ...]) -> list[Missing]:
    schema = extension_schema(conn, "pg_partman")
    if schema is None:
        return _absent("pg_partman", services, jobs)
    why = _services_why(services, "switches automatic_maintenance in part_config off and on again")
    usage, select, update = conn.execute(
        "SELECT has_schema_privilege(%(r)s, n.oid, 'USAGE'), "
        "has_column_privilege(%(r)s, c.oid, 'parent_table', 'SELECT') "
        "AND has_column_privilege(%(r)s, c.oid, 'automatic_maintenance', 'SELECT'), "
        "has_column_privilege(%(r)s, c.oid, 'automatic_maintenance', 'UPDATE') "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %(s)s AND c.relname = 'part_config'",
        {"r": role, "s": schema},
    ).fetchone()
    table, r = ident(schema, "part_config"), ident(role)
    out = []
    if not usage:
        out.append(
            Missing("USAGE", f"schema {ident(schema)}", jobs, why, f"GRANT USAGE ON SCHEMA {ident(schema)} TO {r};")
        )
    if not select:
        out.append(Missing("SELECT", f"table {table}", jobs, why, f"GRANT SELECT ON TABLE {table} TO {r};"))
    if not update:
        out.append(
            Missing(
                "UPDATE (automatic_maintenance)",
                f"table {table}",
                jobs,
                why,
                f"GRANT UPDATE (automatic_maintenance) ON TABLE {table} TO {r};",
            )
        )
    return out


def _pg_cron(conn, role: str, services: list[ServiceConfig], jobs: tuple[str, ...]) -> list[Missing]:
    if extension_schema(conn, "pg_cron") is None:
        return _absent("pg_cron", services, jobs)
    schema = "cron"  # pg_cron's objects live in schema cron whatever the extension's own schema says
    schema_oid = conn.execute("SELECT oid::int FROM pg_namespace WHERE nspname = %s", [schema]).fetchone()[0]
    why = _services_why(services, "deactivates and reactivates its jobs with cron.alter_job")
    r = ident(role)
    usage, session_usage, superuser = conn.execute(
        "SELECT has_schema_privilege(%(r)s, %(s)s::oid, 'USAGE'), has_schema_privilege(current_user, %(s)s::oid, "
        "'USAGE'), (SELECT rolsuper FROM pg_roles WHERE rolname = %(r)s)",
        {"r": role, "s": schema_oid},
    ).fetchone()
    out = []
    if not usage:
        out.append(
            Missing("USAGE", f"schema {ident(schema)}", jobs, why, f"GRANT USAGE ON SCHEMA {ident(schema)} TO {r};")
        )
    for signature, execute in conn.execute(
        "SELECT format('%%s(%%s)', %s::text, pg_get_function_identity_arguments(p.oid)), "
        "has_function_privilege(%s, p.oid, 'EXECUTE') "
        "FROM pg_proc p WHERE p.pronamespace = %s::oid AND p.proname = 'alter_job'",
        [ident(schema, "alter_job"), role, schema_oid],
    ):
        if not execute:
            out.append(
                Missing("EXECUTE", f"function {signature}", jobs, why, f"GRANT EXECUTE ON FUNCTION {signature} TO {r};")
            )
    if superuser or not session_usage:  # a superuser may alter any job; else: checked once USAGE is granted
        return out
    wanted = sorted({j for s in services for j in s.options.get("jobs") or ()})
    owners: dict[str, set[str]] = {}
    for jobname, username in conn.execute(
        sql.SQL("SELECT jobname, username FROM {} WHERE jobname = ANY(%s)").format(sql.Identifier(schema, "job")),
        [wanted],
    ):
        owners.setdefault(jobname, set()).add(username)
    foreign = [j for j in wanted if role not in owners.get(j, ())]
    if foreign:
        seen = "; ".join(
            f"{j}: owned by {', '.join(sorted(owners[j]))}" if owners.get(j) else f"{j}: not visible to this session"
            for j in foreign
        )
        names = ", ".join(sql.Literal(j).as_string(conn) for j in foreign)
        out.append(
            Missing(
                f"ownership ({seen})",
                f"pg_cron job{'s' if len(foreign) > 1 else ''} {', '.join(foreign)}",
                jobs,
                why + "; cron.alter_job changes only the jobs of the calling role (cron.job.username), and "
                "cron.job shows each role only its own jobs. A job not visible here does not exist or belongs to "
                "another role. Changing a job's owner makes its command run as that role",
                f"SELECT {ident(schema, 'alter_job')}(jobid, username := {sql.Literal(role).as_string(conn)}) "
                f"FROM {ident(schema, 'job')} WHERE jobname IN ({names});  -- as a superuser, who sees every job; "
                f"or schedule the jobs as {r}",
            )
        )
    return out


# --- default_partition_migration ----------------------------------------------------------------


def migration_warnings(config: Config, cfg: TableConfig, facts, plan, now: datetime) -> list[str]:
    """Partitions the migration would create for intervals already past retention (only with
    `move_out_of_window`): the next partition_maintenance retires them, rows and all. Logged as warnings."""

    now_t, tz_t = timeline(facts, now, config.timezone)
    cutoff = retention_cutoff(cfg, now_t, tz_t)
    if cutoff is None:
        return []
    fate = "detaches it (retention_keep_table keeps the table)" if cfg.retention_keep_table else "detaches and DROPS it"
    warnings = [
        f"{r.partition} ({r.range}, {r.rows:,} row(s)) would be created older than the {cfg.retention} "
        f"retention: the next partition_maintenance run {fate} with those rows"
        for r in plan.move
        if r.range is not None and r.range.upper <= cutoff
    ]
    for warning in warnings:
        log.warning("%s: move_out_of_window: %s", cfg.name, warning)
    return warnings


__all__ = [
    "JOBS",
    "Missing",
    "MissingPrivileges",
    "STATE_TABLES",
    "check",
    "current_role",
    "migration_warnings",
    "problems",
    "require",
]
