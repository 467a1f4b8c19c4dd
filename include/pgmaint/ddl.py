"""Turn a `MaintenancePlan` into executable steps, each statement with its lock.

New tables are shaped as `CREATE TABLE ... PARTITION OF parent` would make them on the server
(`partition_like_statements`): `LIKE parent INCLUDING ALL` minus IDENTITY, COMMENTS and
STATISTICS, in the parent's tablespace (and access method, PostgreSQL 17+). A native partition
gets no identity sequence of its own: on PostgreSQL 14-16 its column is plain NOT NULL and rows
inserted through the parent get the parent's identity; on 17+ ATTACH gives it the parent's
identity, sharing the parent's sequence (and refuses a table that has an identity of its own).
Column comments and extended statistics stay on the parent, as with PARTITION OF. ATTACH marks
the columns and constraints inherited, so after it (and after we drop our bound CHECK in the
same transaction) the catalog is the same as a native partition's; tests/integration/
test_partition_shape.py compares them.

Lock levels (PostgreSQL 15 docs, ALTER TABLE / CREATE TABLE; see
research/online_partitioning.md section 1):
- CREATE TABLE ... (LIKE parent ...): ACCESS SHARE on the parent only.
- ALTER TABLE parent ATTACH PARTITION: SHARE UPDATE EXCLUSIVE on the parent,
  ACCESS EXCLUSIVE on the new table and on the DEFAULT partition. It scans the
  new table unless a valid CHECK implies the bound, and the DEFAULT unless a
  valid CHECK excludes the range: we provide both, so ATTACH is catalog-only.
- ADD CONSTRAINT ... NOT VALID: brief ACCESS EXCLUSIVE, no scan.
  VALIDATE CONSTRAINT: SHARE UPDATE EXCLUSIVE while it scans; reads and
  writes go on.
- DETACH PARTITION: ACCESS EXCLUSIVE on the parent (catalog only).
  DETACH ... CONCURRENTLY: SHARE UPDATE EXCLUSIVE, but PostgreSQL refuses it
  while a DEFAULT partition exists.
- DROP TABLE of a detached table: no lock on the parent.
"""

from __future__ import annotations

from datetime import datetime, timezone

from psycopg import sql

from include.pgmaint.catalog import Range, StrayIdentity, TableFacts
from include.pgmaint.execute import Statement, Step
from include.pgmaint.plan import CreatePartition, FinalizeDetach, MaintenancePlan, RetirePartition

EXCLUSION_CHECK = "pgmaint_excl"
BOUND_CHECK = "pgmaint_bound"


def bound_text(moment: datetime, key_type: str, tz: str) -> str:
    """A bound value written in the key's own type, so PostgreSQL stores exactly this instant."""
    # date / timestamp ranges are kept on their wall clock as UTC (plan.timeline)
    wall = moment.astimezone(timezone.utc)
    if key_type == "timestamp with time zone":
        return wall.strftime("%Y-%m-%d %H:%M:%S+00")
    if key_type == "date":
        return wall.strftime("%Y-%m-%d")
    return wall.strftime("%Y-%m-%d %H:%M:%S")


def bound_literal(moment: datetime, key_type: str, tz: str) -> sql.Literal:
    # DDL cannot take bind parameters; psycopg quotes the literal.
    return sql.Literal(bound_text(moment, key_type, tz))


def _range_condition(key: str, rng: Range, key_type: str, tz: str) -> sql.Composable:
    parts = []
    if rng.lower is not None:
        parts.append(sql.SQL("{} >= {}").format(sql.Identifier(key), bound_literal(rng.lower, key_type, tz)))
    if rng.upper is not None:
        parts.append(sql.SQL("{} < {}").format(sql.Identifier(key), bound_literal(rng.upper, key_type, tz)))
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")


def _qualified(facts: TableFacts, name: str) -> sql.Identifier:
    return sql.Identifier(facts.schema, name)


def _text(facts: TableFacts, name: str) -> str:
    return sql.Identifier(facts.schema, name).as_string(None)


# What LIKE copies beyond a native partition: identity (its own sequence), comments, extended statistics.
_LIKE_AS_PARTITION = sql.SQL("INCLUDING ALL EXCLUDING IDENTITY EXCLUDING COMMENTS EXCLUDING STATISTICS")


def partition_like_statements(
    facts: TableFacts, name: str, *, bound: Range | None = None, tz: str = "UTC", if_not_exists: bool = False
) -> tuple[Statement, ...]:
    """Statements creating the standalone table `name` shaped as a native partition of the parent.

    Once attached it has the catalog `CREATE TABLE name PARTITION OF parent` gives on this server:
    same columns, defaults, NOT NULL, CHECK constraints, indexes (ATTACH adopts them, nothing is
    built), storage; no identity sequence of its own; owner the current role; default privileges.
    `bound`: add our `pgmaint_bound` CHECK proving the range, so ATTACH does not scan the table
    (the attach step drops it again). `if_not_exists`: reuse a table left by an interrupted run;
    then the parent's identity columns are also stripped from it, in case an earlier version
    made it with `LIKE ... INCLUDING ALL` (PostgreSQL 17 refuses to attach a table with an
    identity; older versions would keep its stray sequence).
    """
    child = _qualified(facts, name)
    tail = []
    if facts.access_method:
        tail.append(sql.SQL("USING {}").format(sql.Identifier(facts.access_method)))
    if facts.tablespace:
        tail.append(sql.SQL("TABLESPACE {}").format(sql.Identifier(facts.tablespace)))
    create = sql.SQL("CREATE TABLE {exists}{child} (LIKE {parent} {like}){tail}").format(
        exists=sql.SQL("IF NOT EXISTS " if if_not_exists else ""),
        child=child,
        parent=_qualified(facts, facts.table),
        like=_LIKE_AS_PARTITION,
        tail=sql.SQL("").join(sql.SQL(" ") + t for t in tail),
    )
    statements = [
        Statement(
            create,
            f"ACCESS SHARE on {facts.table} (reads its definition); new empty table {name} "
            "shaped as a native partition, with the parent's indexes",
        )
    ]
    if if_not_exists:
        statements += _strip_identity(facts, name)
    if bound is not None:
        key = facts.key_column
        check = sql.SQL("{} IS NOT NULL AND {}").format(
            sql.Identifier(key), _range_condition(key, bound, facts.key_type, tz)
        )
        statements.append(
            Statement(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
                    child, sql.Identifier(BOUND_CHECK), check
                ),
                f"ACCESS EXCLUSIVE on {name} only (new, empty, not attached yet)",
            )
        )
    return tuple(statements)


def _strip_identity(facts: TableFacts, name: str) -> tuple[Statement, ...]:
    """For a standalone table an earlier version may have made with the parent's identity copied."""
    if not facts.identity_columns:
        return ()
    return (
        Statement(
            sql.SQL("ALTER TABLE {} {}").format(
                _qualified(facts, name),
                sql.SQL(", ").join(
                    sql.SQL("ALTER COLUMN {} DROP IDENTITY IF EXISTS").format(sql.Identifier(c))
                    for c in facts.identity_columns
                ),
            ),
            f"ACCESS EXCLUSIVE on {name} only (not attached; catalog only)",
        ),
    )


def create_steps(
    facts: TableFacts, creates: tuple[CreatePartition, ...], tz: str
) -> tuple[list[Step], list[Step], Step | None]:
    """(steps before attaching, attach steps, cleanup step to run whatever happens)."""
    parent = _qualified(facts, facts.table)
    key, key_type = facts.key_column, facts.key_type
    prepare: list[Step] = []
    for c in creates:
        if c.reuse_leftover:
            statements = (
                Statement(
                    sql.SQL("SELECT 1 FROM {} LIMIT 1").format(_qualified(facts, c.name)),
                    f"ACCESS SHARE on {c.name} (left over by an interrupted run; must be empty to reuse)",
                    expect_no_rows=True,
                ),
            ) + _strip_identity(facts, c.name)
        else:
            statements = partition_like_statements(facts, c.name, bound=c.range, tz=tz)
        prepare.append(Step("create_table", c.name, statements, lock_targets=(_text(facts, facts.table),)))

    cleanup = None
    if facts.default is not None and creates:
        default = _qualified(facts, facts.default.name)
        excluded = sql.SQL(" AND ").join(
            sql.SQL("NOT ({})").format(_range_condition(key, c.range, key_type, tz)) for c in creates
        )
        targets = (_text(facts, facts.default.name),)
        prepare.append(
            Step(
                "exclude_from_default",
                facts.default.name,
                (
                    Statement(
                        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({}) NOT VALID").format(
                            default, sql.Identifier(EXCLUSION_CHECK), excluded
                        ),
                        f"ACCESS EXCLUSIVE on {facts.default.name} (catalog only, no scan)",
                    ),
                ),
                lock_targets=targets,
            )
        )
        prepare.append(
            Step(
                "validate_exclusion",
                facts.default.name,
                (
                    Statement(
                        sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                            default, sql.Identifier(EXCLUSION_CHECK)
                        ),
                        f"SHARE UPDATE EXCLUSIVE on {facts.default.name} (scans it; reads and writes continue)",
                        scan=True,
                    ),
                ),
                lock_targets=targets,
            )
        )
        cleanup = Step(
            "drop_exclusion",
            facts.default.name,
            (
                Statement(
                    sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                        default, sql.Identifier(EXCLUSION_CHECK)
                    ),
                    f"ACCESS EXCLUSIVE on {facts.default.name} (catalog only)",
                ),
            ),
            lock_targets=targets,
        )

    attach = []
    for c in creates:
        default_note = f" and on {facts.default.name}" if facts.default else ""
        attach.append(
            Step(
                "attach",
                c.name,
                (
                    Statement(
                        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                            parent,
                            _qualified(facts, c.name),
                            bound_literal(c.range.lower, key_type, tz),
                            bound_literal(c.range.upper, key_type, tz),
                        ),
                        f"SHARE UPDATE EXCLUSIVE on {facts.table}; ACCESS EXCLUSIVE on {c.name}{default_note} "
                        "(catalog only: validated CHECKs prove the bounds, nothing is scanned)",
                    ),
                    # The partition constraint now says the same; a native partition has no such CHECK.
                    Statement(
                        sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                            _qualified(facts, c.name), sql.Identifier(BOUND_CHECK)
                        ),
                        f"ACCESS EXCLUSIVE on {c.name} (already held; catalog only)",
                    ),
                ),
                lock_targets=tuple(
                    _text(facts, n) for n in (facts.table, c.name) + ((facts.default.name,) if facts.default else ())
                ),
            )
        )
    return prepare, attach, cleanup


def detach_step(facts: TableFacts, r: RetirePartition) -> Step:
    parent, child = _qualified(facts, facts.table), _qualified(facts, r.name)
    targets = (_text(facts, facts.table), _text(facts, r.name))
    if r.concurrently:
        return Step(
            "detach",
            r.name,
            (
                Statement(
                    sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(parent, child),
                    f"SHARE UPDATE EXCLUSIVE on {facts.table} and {r.name}; waits for transactions already using the table",
                ),
            ),
            lock_targets=targets,
            transactional=False,
        )
    return Step(
        "detach",
        r.name,
        (
            Statement(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, child),
                f"ACCESS EXCLUSIVE on {facts.table} and {r.name} (catalog only; CONCURRENTLY is impossible while a DEFAULT exists)",
            ),
        ),
        lock_targets=targets,
    )


def finalize_step(facts: TableFacts, name: str) -> Step:
    return Step(
        "finalize_detach",
        name,
        (
            Statement(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(
                    _qualified(facts, facts.table), _qualified(facts, name)
                ),
                f"SHARE UPDATE EXCLUSIVE on {facts.table}; ACCESS EXCLUSIVE on {name}",
            ),
        ),
        lock_targets=(_text(facts, facts.table), _text(facts, name)),
        transactional=False,
    )


def drop_step(facts: TableFacts, name: str) -> Step:
    child = _qualified(facts, name)
    return Step(
        "drop",
        name,
        (
            # Never drop a table that is still attached: that would lock the parent (and lose live data).
            Statement(
                sql.SQL("SELECT 1 FROM pg_inherits WHERE inhrelid = {}::regclass").format(
                    sql.Literal(_text(facts, name))
                ),
                "none (catalog read: refuses if the table is still a partition)",
                expect_no_rows=True,
            ),
            Statement(sql.SQL("DROP TABLE {}").format(child), f"ACCESS EXCLUSIVE on the detached table {name} only"),
        ),
        lock_targets=(_text(facts, name),),
    )


def stale_check_step(facts: TableFacts, constraint: str) -> Step:
    return Step(
        "drop_stale_exclusion",
        f"{facts.default.name}.{constraint}",
        (
            Statement(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                    _qualified(facts, facts.default.name), sql.Identifier(constraint)
                ),
                f"ACCESS EXCLUSIVE on {facts.default.name} (catalog only)",
            ),
        ),
        lock_targets=(_text(facts, facts.default.name),),
    )


def drop_identity_step(facts: TableFacts, stray: StrayIdentity) -> Step:
    """Repair: remove an identity (and its own sequence) that an earlier version copied onto a partition."""
    return Step(
        "drop_partition_identity",
        f"{stray.table}.{stray.column}",
        (
            Statement(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP IDENTITY IF EXISTS").format(
                    _qualified(facts, stray.table), sql.Identifier(stray.column)
                ),
                f"ACCESS EXCLUSIVE on the partition {stray.table} only (catalog only, no scan; drops its own sequence "
                f"{stray.sequence}; rows through {facts.table} keep getting the parent's identity)",
            ),
        ),
        lock_targets=(_text(facts, stray.table),),
    )


def all_steps(facts: TableFacts, plan: MaintenancePlan, tz: str) -> list[Step]:
    """Every step in execution order (for dry runs and logs)."""
    steps = [stale_check_step(facts, c) for c in plan.stale_checks]
    steps += [drop_identity_step(facts, s) for s in plan.identity_repairs]
    for f in plan.finalizes:
        steps.append(finalize_step(facts, f.name))
        if f.drop:
            steps.append(drop_step(facts, f.name))
    prepare, attach, cleanup = create_steps(facts, plan.creates, tz)
    steps += prepare + attach + ([cleanup] if cleanup else [])
    for r in plan.retires:
        steps.append(detach_step(facts, r))
        if r.drop:
            steps.append(drop_step(facts, r.name))
    return steps


__all__ = [
    "all_steps",
    "create_steps",
    "detach_step",
    "drop_identity_step",
    "drop_step",
    "finalize_step",
    "partition_like_statements",
    "stale_check_step",
    "FinalizeDetach",
]
