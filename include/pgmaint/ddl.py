"""Turn a `MaintenancePlan` into executable steps, each statement with its lock.

Lock levels (PostgreSQL 15 docs, ALTER TABLE / CREATE TABLE; see
research/online_partitioning.md section 1):
- CREATE TABLE ... (LIKE parent INCLUDING ALL): ACCESS SHARE on the parent only.
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

from include.pgmaint.catalog import Range, TableFacts
from include.pgmaint.execute import Statement, Step
from include.pgmaint.plan import CreatePartition, FinalizeDetach, MaintenancePlan, RetirePartition

EXCLUSION_CHECK = "pgmaint_excl"
BOUND_CHECK = "pgmaint_bound"


def bound_text(moment: datetime, key_type: str, tz: str) -> str:
    """A bound value written in the key's own type, so PostgreSQL stores exactly this instant."""
    wall = moment.astimezone(timezone.utc)  # date / timestamp ranges are kept on their wall clock as UTC (plan.timeline)
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


def create_steps(facts: TableFacts, creates: tuple[CreatePartition, ...], tz: str) -> tuple[list[Step], list[Step], Step | None]:
    """(steps before attaching, attach steps, cleanup step to run whatever happens)."""
    parent = _qualified(facts, facts.table)
    key, key_type = facts.key_column, facts.key_type
    prepare: list[Step] = []
    for c in creates:
        child = _qualified(facts, c.name)
        bound = sql.SQL("{} IS NOT NULL AND {}").format(sql.Identifier(key), _range_condition(key, c.range, key_type, tz))
        if c.reuse_leftover:
            statements = (
                Statement(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(child),
                          f"ACCESS SHARE on {c.name} (left over by an interrupted run; must be empty to reuse)",
                          expect_no_rows=True),
            )
        else:
            statements = (
                Statement(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(child, parent),
                          f"ACCESS SHARE on {facts.table} (reads its definition); new empty table {c.name} with the parent's indexes"),
                Statement(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(child, sql.Identifier(BOUND_CHECK), bound),
                          f"ACCESS EXCLUSIVE on {c.name} only (new, empty, not attached yet)"),
            )
        prepare.append(Step("create_table", c.name, statements, lock_targets=(_text(facts, facts.table),)))

    cleanup = None
    if facts.default is not None and creates:
        default = _qualified(facts, facts.default.name)
        excluded = sql.SQL(" AND ").join(
            sql.SQL("NOT ({})").format(_range_condition(key, c.range, key_type, tz)) for c in creates
        )
        targets = (_text(facts, facts.default.name),)
        prepare.append(Step("exclude_from_default", facts.default.name, (
            Statement(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({}) NOT VALID").format(default, sql.Identifier(EXCLUSION_CHECK), excluded),
                      f"ACCESS EXCLUSIVE on {facts.default.name} (catalog only, no scan)"),
        ), lock_targets=targets))
        prepare.append(Step("validate_exclusion", facts.default.name, (
            Statement(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(default, sql.Identifier(EXCLUSION_CHECK)),
                      f"SHARE UPDATE EXCLUSIVE on {facts.default.name} (scans it; reads and writes continue)", scan=True),
        ), lock_targets=targets))
        cleanup = Step("drop_exclusion", facts.default.name, (
            Statement(sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(default, sql.Identifier(EXCLUSION_CHECK)),
                      f"ACCESS EXCLUSIVE on {facts.default.name} (catalog only)"),
        ), lock_targets=targets)

    attach = []
    for c in creates:
        default_note = f" and on {facts.default.name}" if facts.default else ""
        attach.append(Step("attach", c.name, (
            Statement(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                parent, _qualified(facts, c.name), bound_literal(c.range.lower, key_type, tz), bound_literal(c.range.upper, key_type, tz)),
                f"SHARE UPDATE EXCLUSIVE on {facts.table}; ACCESS EXCLUSIVE on {c.name}{default_note} "
                "(catalog only: validated CHECKs prove the bounds, nothing is scanned)"),
        ), lock_targets=tuple(_text(facts, n) for n in (facts.table, c.name) + ((facts.default.name,) if facts.default else ()))))
    return prepare, attach, cleanup


def detach_step(facts: TableFacts, r: RetirePartition) -> Step:
    parent, child = _qualified(facts, facts.table), _qualified(facts, r.name)
    targets = (_text(facts, facts.table), _text(facts, r.name))
    if r.concurrently:
        return Step("detach", r.name, (
            Statement(sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(parent, child),
                      f"SHARE UPDATE EXCLUSIVE on {facts.table} and {r.name}; waits for transactions already using the table"),
        ), lock_targets=targets, transactional=False)
    return Step("detach", r.name, (
        Statement(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, child),
                  f"ACCESS EXCLUSIVE on {facts.table} and {r.name} (catalog only; CONCURRENTLY is impossible while a DEFAULT exists)"),
    ), lock_targets=targets)


def finalize_step(facts: TableFacts, name: str) -> Step:
    return Step("finalize_detach", name, (
        Statement(sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(_qualified(facts, facts.table), _qualified(facts, name)),
                  f"SHARE UPDATE EXCLUSIVE on {facts.table}; ACCESS EXCLUSIVE on {name}"),
    ), lock_targets=(_text(facts, facts.table), _text(facts, name)), transactional=False)


def drop_step(facts: TableFacts, name: str) -> Step:
    child = _qualified(facts, name)
    return Step("drop", name, (
        # Never drop a table that is still attached: that would lock the parent (and lose live data).
        Statement(sql.SQL("SELECT 1 FROM pg_inherits WHERE inhrelid = {}::regclass").format(sql.Literal(_text(facts, name))),
                  "none (catalog read: refuses if the table is still a partition)", expect_no_rows=True),
        Statement(sql.SQL("DROP TABLE {}").format(child), f"ACCESS EXCLUSIVE on the detached table {name} only"),
    ), lock_targets=(_text(facts, name),))


def stale_check_step(facts: TableFacts, constraint: str) -> Step:
    return Step("drop_stale_exclusion", f"{facts.default.name}.{constraint}", (
        Statement(sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(_qualified(facts, facts.default.name), sql.Identifier(constraint)),
                  f"ACCESS EXCLUSIVE on {facts.default.name} (catalog only)"),
    ), lock_targets=(_text(facts, facts.default.name),))


def all_steps(facts: TableFacts, plan: MaintenancePlan, tz: str) -> list[Step]:
    """Every step in execution order (for dry runs and logs)."""
    steps = [stale_check_step(facts, c) for c in plan.stale_checks]
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


__all__ = ["all_steps", "create_steps", "detach_step", "drop_step", "finalize_step", "stale_check_step", "FinalizeDetach"]
