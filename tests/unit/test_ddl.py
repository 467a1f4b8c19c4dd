"""Rendering of maintenance steps: quoting, bound literals, step order and lock notes.

`psycopg.sql` renders without a connection (`Step.render(None)`), so no database is needed.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from include.pgmaint.catalog import Partition, Range, StrayIdentity, TableFacts, parse_bound
from include.pgmaint.config import TableConfig, parse_config
from include.pgmaint.ddl import all_steps, bound_text, create_steps, detach_step, drop_step, partition_like_statements
from include.pgmaint.execute import Step
from include.pgmaint.plan import CreatePartition, RetirePartition, plan_maintenance

UTC = "UTC"
CHICAGO = "America/Chicago"
TSTZ = "timestamp with time zone"
TS = "timestamp without time zone"
NOW = datetime(2026, 11, 23, 10, 17, tzinfo=timezone.utc)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def cfg(
    schema_sql: str = "public",
    table_sql: str = "events",
    key_sql: str = "created_at",
    interval: str = "1 day",
    premake: int = 3,
    retention: str | None = "30 days",
    keep: bool = False,
    tz: str = UTC,
) -> TableConfig:
    table = {
        "name": f"{schema_sql}.{table_sql}",
        "partition_key": key_sql,
        "interval": interval,
        "premake": premake,
        "retention": retention,
        "retention_keep_table": keep,
    }
    return parse_config({"timezone": tz, "tables": [table]}).tables[0]


def facts_for(
    c: TableConfig, partitions=(), default: str | None = None, default_checks=(), key_type: str = TSTZ, leftovers=()
) -> TableFacts:
    d = Partition(c.schema, default, None, our_checks=tuple(default_checks)) if default else None
    parts = tuple(Partition(c.schema, n, Range(lo, hi), detach_pending=pending) for n, lo, hi, pending in partitions)
    return TableFacts(c.name, c.schema, c.table, c.partition_key, key_type, parts, d, tuple(leftovers))


def rendered(steps: list[Step]) -> list[tuple[str, str]]:
    out = []
    for step in steps:
        pairs = step.render(None)
        assert isinstance(pairs, list) and all(isinstance(s, str) and isinstance(lock, str) for s, lock in pairs)
        out += pairs
    return out


def sqls(step: Step) -> list[str]:
    return [s for s, _ in step.render(None)]


_QUOTED = re.compile(r"\"(?:[^\"]|\"\")*\"|'(?:[^']|'')*'")


def outside_quotes(text: str) -> str:
    """The SQL with every quoted identifier and string literal removed."""
    return _QUOTED.sub(" ", text)


# A plan that exercises every kind of step: stale check, finalize (+drop), creates, retires (+drop).
def full(schema_sql="public", table_sql="events", key_sql="created_at", with_default=True, key_type=TSTZ, keep=False):
    c = cfg(schema_sql, table_sql, key_sql, keep=keep)
    t = c.table
    f = facts_for(
        c,
        partitions=[
            (f"{t}_p20260901", utc(2026, 9, 1), utc(2026, 9, 2), False),
            (f"{t}_p20260902", utc(2026, 9, 2), utc(2026, 9, 3), True),  # detach pending
            *(
                (f"{t}_p{d:%Y%m%d}", d, d + timedelta(days=1), False)  # the rest of the retention window
                for d in (utc(2026, 10, 24) + timedelta(days=i) for i in range(30))
            ),
            (f"{t}_p20261123", utc(2026, 11, 23), utc(2026, 11, 24), False),
            (f"{t}_p20261124", utc(2026, 11, 24), utc(2026, 11, 25), False),
        ],
        default=f"{t}_default" if with_default else None,
        default_checks=("pgmaint_excl",) if with_default else (),
        key_type=key_type,
    )
    plan = plan_maintenance(c, f, NOW, UTC)
    assert len(plan.creates) == 2 and len(plan.retires) == 1 and len(plan.finalizes) == 1
    return c, f, plan, all_steps(f, plan, UTC)


# --- quoting -------------------------------------------------------------------------------------------


NAME_CASES = [
    ("plain", "public", "events", "created_at", "public", "events", "created_at"),
    ("odd", '"Odd ""Schema"""', '"Events Log"', '"Created At"', 'Odd "Schema"', "Events Log", "Created At"),
    ("apostrophe", "public", '"O\'Brien"', '"ts"', "public", "O'Brien", "ts"),
    ("keywords", '"select"', '"table"', '"order"', "select", "table", "order"),
]


@pytest.mark.parametrize("with_default", [True, False])
@pytest.mark.parametrize("case", NAME_CASES, ids=[c[0] for c in NAME_CASES])
def test_every_identifier_is_double_quoted(case, with_default):
    _, schema_sql, table_sql, key_sql, schema, table, key = case
    c, f, plan, steps = full(schema_sql, table_sql, key_sql, with_default=with_default)
    assert (c.schema, c.table, c.partition_key) == (schema, table, key)
    names = {schema, table, key, "pgmaint_excl", "pgmaint_bound"} | {p.name for p in f.partitions}
    names |= {cr.name for cr in plan.creates} | ({f.default.name} if f.default else set())
    for statement, _ in rendered(steps):
        rest = outside_quotes(statement)
        for name in names:
            for word in re.findall(r"\w+", name):
                if word.lower() in ("select", "table", "order") and word.lower() in rest.lower():
                    continue  # SQL keywords of the statement itself
                assert not re.search(rf"\b{re.escape(word)}\b", rest), (word, statement)


def test_qualified_names_are_escaped():
    c, f, plan, steps = full('"Odd ""Schema"""', '"Events Log"', '"Created At"')
    text = "\n".join(s for s, _ in rendered(steps))
    parent = '"Odd ""Schema"""."Events Log"'
    assert (
        f'CREATE TABLE {parent[:-1]}_p20261125" (LIKE {parent} INCLUDING ALL EXCLUDING IDENTITY EXCLUDING COMMENTS EXCLUDING STATISTICS)'
        in text
    )
    assert f'ALTER TABLE {parent} ATTACH PARTITION {parent[:-1]}_p20261125" FOR VALUES FROM ' in text
    assert '"Created At" IS NOT NULL AND "Created At" >= ' in text
    # the guard's regclass literal quotes the identifier inside a string literal
    assert 'inhrelid = \'"Odd ""Schema"""."Events Log_p20260901"\'::regclass' in text


def test_apostrophe_in_a_name_is_escaped_in_literals():
    c, f, plan, steps = full("public", '"O\'Brien"', "ts")
    drops = [s for s in steps if s.action == "drop"]
    guard = sqls(drops[0])[0]
    assert "'\"public\".\"O''Brien_p20260902\"'::regclass" in guard
    assert sqls(drops[0])[1] == 'DROP TABLE "public"."O\'Brien_p20260902"'


def test_lock_targets_are_quoted_qualified_names():
    _, _, _, steps = full('"Odd ""Schema"""', '"Events Log"', '"Created At"')
    for step in steps:
        assert step.lock_targets, step
        for target in step.lock_targets:
            assert target.startswith('"Odd ""Schema"""."'), target


# --- bound literals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "moment, key_type, tz, text",
    [
        (utc(2026, 11, 26), TSTZ, UTC, "2026-11-26 00:00:00+00"),
        (utc(2026, 11, 26, 6), TSTZ, CHICAGO, "2026-11-26 06:00:00+00"),  # timestamptz bounds are written in UTC
        # date / timestamp keys hold wall-clock values: their ranges live on that wall clock,
        # represented as UTC (plan.timeline), so the zone does not shift them.
        (utc(2026, 11, 26), "date", UTC, "2026-11-26"),
        (utc(2026, 11, 26), "date", CHICAGO, "2026-11-26"),
        (utc(2026, 7, 1), "date", CHICAGO, "2026-07-01"),
        (utc(2026, 11, 26), TS, UTC, "2026-11-26 00:00:00"),
        (utc(2026, 11, 26), TS, CHICAGO, "2026-11-26 00:00:00"),
        (utc(2026, 7, 1), TS, CHICAGO, "2026-07-01 00:00:00"),
        (utc(2026, 11, 26), TS, "Asia/Kolkata", "2026-11-26 00:00:00"),
        (utc(2026, 11, 26, 13), TS, UTC, "2026-11-26 13:00:00"),
    ],
)
def test_bound_text_in_the_key_type(moment, key_type, tz, text):
    assert bound_text(moment, key_type, tz) == text
    # what we write is what the catalog reads back: next run adopts the partition by its bounds
    expr = f"FOR VALUES FROM ('{text}') TO ('{text}')"
    assert parse_bound(expr, key_type, tz).lower == moment


@pytest.mark.parametrize(
    "key_type, tz, lower, upper",
    [
        (TSTZ, UTC, "'2026-11-26 00:00:00+00'", "'2026-11-27 00:00:00+00'"),
        ("date", UTC, "'2026-11-26'", "'2026-11-27'"),
        (TS, UTC, "'2026-11-26 00:00:00'", "'2026-11-27 00:00:00'"),
        (TSTZ, CHICAGO, "'2026-11-26 06:00:00+00'", "'2026-11-27 06:00:00+00'"),
        ("date", CHICAGO, "'2026-11-26'", "'2026-11-27'"),
        (TS, CHICAGO, "'2026-11-26 00:00:00'", "'2026-11-27 00:00:00'"),
    ],
)
def test_create_statements_use_the_key_type_format(key_type, tz, lower, upper):
    c = cfg(tz=tz, premake=3)
    f = facts_for(c, key_type=key_type)
    plan = plan_maintenance(c, f, NOW, tz)
    last = plan.creates[-1]
    assert last.name == "events_p20261126"
    prepare, attach, cleanup = create_steps(f, (last,), tz)
    assert sqls(prepare[0]) == [
        'CREATE TABLE "public"."events_p20261126" (LIKE "public"."events" INCLUDING ALL EXCLUDING IDENTITY EXCLUDING COMMENTS EXCLUDING STATISTICS)',
        'ALTER TABLE "public"."events_p20261126" ADD CONSTRAINT "pgmaint_bound" CHECK '
        f'("created_at" IS NOT NULL AND "created_at" >= {lower} AND "created_at" < {upper})',
    ]
    assert sqls(attach[0]) == [
        f'ALTER TABLE "public"."events" ATTACH PARTITION "public"."events_p20261126" FOR VALUES FROM ({lower}) TO ({upper})',
        'ALTER TABLE "public"."events_p20261126" DROP CONSTRAINT IF EXISTS "pgmaint_bound"',
    ]
    assert cleanup is None


def test_wall_clock_hourly_bounds_across_fall_back_are_not_empty():
    # timestamp-without-time-zone key, hourly, America/Chicago, around 2026-11-01 01:00 (twice).
    c = cfg(interval="1 hour", premake=3, retention=None, tz=CHICAGO)
    f = facts_for(c, key_type=TS)
    plan = plan_maintenance(c, f, utc(2026, 11, 1, 5, 30), CHICAGO)
    _, attach, _ = create_steps(f, plan.creates, CHICAGO)
    bounds = []
    for step in attach:
        lower, upper = re.search(r"FROM \('([^']*)'\) TO \('([^']*)'\)", sqls(step)[0]).groups()
        bounds.append((lower, upper))
    assert all(lower < upper for lower, upper in bounds), bounds  # PostgreSQL: "empty range bound specified"
    assert all(a[1] <= b[0] for a, b in zip(bounds, bounds[1:])), bounds


# --- the create sequence -----------------------------------------------------------------------------------


def two_creates():
    return (
        CreatePartition("events_p20261125", Range(utc(2026, 11, 25), utc(2026, 11, 26))),
        CreatePartition("events_p20261126", Range(utc(2026, 11, 26), utc(2026, 11, 27))),
    )


def test_create_sequence_with_default():
    c = cfg()
    f = facts_for(c, default="events_default")
    prepare, attach, cleanup = create_steps(f, two_creates(), UTC)
    steps = prepare + attach + [cleanup]
    assert [(s.action, s.target) for s in steps] == [
        ("create_table", "events_p20261125"),
        ("create_table", "events_p20261126"),
        ("exclude_from_default", "events_default"),
        ("validate_exclusion", "events_default"),
        ("attach", "events_p20261125"),
        ("attach", "events_p20261126"),
        ("drop_exclusion", "events_default"),
    ]
    (exclude,) = steps[2].statements
    assert exclude.sql.as_string(None) == (
        'ALTER TABLE "public"."events_default" ADD CONSTRAINT "pgmaint_excl" CHECK ('
        "NOT (\"created_at\" >= '2026-11-25 00:00:00+00' AND \"created_at\" < '2026-11-26 00:00:00+00') AND "
        "NOT (\"created_at\" >= '2026-11-26 00:00:00+00' AND \"created_at\" < '2026-11-27 00:00:00+00')) NOT VALID"
    )
    assert not exclude.scan
    (validate,) = steps[3].statements
    assert validate.sql.as_string(None) == 'ALTER TABLE "public"."events_default" VALIDATE CONSTRAINT "pgmaint_excl"'
    assert validate.scan is True
    assert "SHARE UPDATE EXCLUSIVE" in validate.lock
    assert sqls(steps[6]) == ['ALTER TABLE "public"."events_default" DROP CONSTRAINT IF EXISTS "pgmaint_excl"']
    for attach_step in steps[4:6]:
        assert '"public"."events_default"' in attach_step.lock_targets
        assert "events_default" in attach_step.statements[0].lock


def test_create_sequence_without_default_has_no_exclusion_step():
    f = facts_for(cfg())
    prepare, attach, cleanup = create_steps(f, two_creates(), UTC)
    assert [s.action for s in prepare + attach] == ["create_table", "create_table", "attach", "attach"]
    assert cleanup is None
    text = "\n".join(s for s, _ in rendered(prepare + attach))
    assert "pgmaint_excl" not in text and "NOT VALID" not in text


def test_nothing_to_create_means_no_steps_even_with_default():
    f = facts_for(cfg(), default="events_default")
    assert create_steps(f, (), UTC) == ([], [], None)


def test_leftover_is_reused_after_checking_it_is_empty():
    f = facts_for(cfg(), default="events_default")
    creates = (CreatePartition("events_p20261125", Range(utc(2026, 11, 25), utc(2026, 11, 26)), reuse_leftover=True),)
    prepare, attach, _ = create_steps(f, creates, UTC)
    (guard,) = prepare[0].statements
    assert prepare[0].action == "create_table"
    assert guard.expect_no_rows is True
    assert guard.sql.as_string(None) == 'SELECT 1 FROM "public"."events_p20261125" LIMIT 1'
    assert "CREATE TABLE" not in "\n".join(s for s, _ in rendered(prepare))
    assert [s.action for s in prepare] == ["create_table", "exclude_from_default", "validate_exclusion"]
    assert len(attach) == 1


def test_no_scan_under_access_exclusive():
    _, _, _, steps = full()
    scans = [(step.action, st) for step in steps for st in step.statements if st.scan]
    assert [a for a, _ in scans] == ["validate_exclusion"]
    assert all("ACCESS EXCLUSIVE" not in st.lock for _, st in scans)
    for step in steps:
        if step.action == "attach":
            assert "nothing is scanned" in step.statements[0].lock


# --- full order, detach, drop -------------------------------------------------------------------------------


def test_all_steps_order_with_default():
    _, _, _, steps = full(with_default=True)
    assert [(s.action, s.target) for s in steps] == [
        ("drop_stale_exclusion", "events_default.pgmaint_excl"),
        ("finalize_detach", "events_p20260902"),
        ("drop", "events_p20260902"),
        ("create_table", "events_p20261125"),
        ("create_table", "events_p20261126"),
        ("exclude_from_default", "events_default"),
        ("validate_exclusion", "events_default"),
        ("attach", "events_p20261125"),
        ("attach", "events_p20261126"),
        ("drop_exclusion", "events_default"),
        ("detach", "events_p20260901"),
        ("drop", "events_p20260901"),
    ]
    assert sqls(steps[0]) == ['ALTER TABLE "public"."events_default" DROP CONSTRAINT IF EXISTS "pgmaint_excl"']
    assert sqls(steps[1]) == ['ALTER TABLE "public"."events" DETACH PARTITION "public"."events_p20260902" FINALIZE']
    assert steps[1].transactional is False


def test_all_steps_order_without_default():
    _, _, _, steps = full(with_default=False)
    assert [s.action for s in steps] == [
        "finalize_detach",
        "drop",
        "create_table",
        "create_table",
        "attach",
        "attach",
        "detach",
        "drop",
    ]


@pytest.mark.parametrize("with_default", [True, False])
def test_detach_concurrently_only_without_default(with_default):
    _, _, plan, steps = full(with_default=with_default)
    (detach,) = [s for s in steps if s.action == "detach"]
    (sql_text,) = sqls(detach)
    if with_default:
        assert sql_text == 'ALTER TABLE "public"."events" DETACH PARTITION "public"."events_p20260901"'
        assert detach.transactional is True
        assert "ACCESS EXCLUSIVE" in detach.statements[0].lock
    else:
        assert sql_text == 'ALTER TABLE "public"."events" DETACH PARTITION "public"."events_p20260901" CONCURRENTLY'
        assert detach.transactional is False
        assert "SHARE UPDATE EXCLUSIVE" in detach.statements[0].lock


@pytest.mark.parametrize("with_default", [True, False])
def test_concurrently_never_runs_inside_a_transaction(with_default):
    _, _, _, steps = full(with_default=with_default)
    for step in steps:
        if any("CONCURRENTLY" in s for s in sqls(step)):
            assert step.transactional is False, step


def test_detach_step_follows_the_retire_flag():
    f = facts_for(cfg())
    rng = Range(utc(2026, 9, 1), utc(2026, 9, 2))
    assert detach_step(f, RetirePartition("x", rng, concurrently=True, drop=True)).transactional is False
    assert "CONCURRENTLY" not in sqls(detach_step(f, RetirePartition("x", rng, concurrently=False, drop=True)))[0]


@pytest.mark.parametrize("with_default", [True, False])
def test_every_drop_starts_with_the_attached_guard(with_default):
    _, f, _, steps = full(with_default=with_default)
    drops = [s for s in steps if s.action == "drop"]
    assert len(drops) == 2
    for step in drops:
        guard, drop = step.statements
        assert guard.expect_no_rows is True
        assert guard.sql.as_string(None) == (
            f'SELECT 1 FROM pg_inherits WHERE inhrelid = \'"public"."{step.target}"\'::regclass'
        )
        assert drop.expect_no_rows is False
        assert drop.sql.as_string(None) == f'DROP TABLE "public"."{step.target}"'
        assert step.lock_targets == (f'"public"."{step.target}"',)
    # each drop comes right after the detach / finalize of the same table
    for i, step in enumerate(steps):
        if step.action == "drop":
            assert steps[i - 1].action in ("detach", "finalize_detach")
            assert steps[i - 1].target == step.target


def test_drop_step_directly():
    step = drop_step(facts_for(cfg()), "events_p20200101")
    assert [st.expect_no_rows for st in step.statements] == [True, False]


def test_keep_table_detaches_without_drop():
    _, _, plan, steps = full(keep=True)
    assert [s.action for s in steps if s.action in ("detach", "drop", "finalize_detach")] == [
        "finalize_detach",
        "detach",
    ]
    assert not any("DROP TABLE" in s for s, _ in rendered(steps))


# --- lock descriptions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_default", [True, False])
@pytest.mark.parametrize("key_type", [TSTZ, TS, "date"])
def test_every_statement_names_its_lock(with_default, key_type):
    _, _, _, steps = full(with_default=with_default, key_type=key_type)
    assert steps
    for step in steps:
        assert step.statements, step
        for statement in step.statements:
            assert statement.lock and statement.lock.strip(), (step.action, statement)
        for sql_text, lock in step.render(None):
            assert sql_text.strip() and lock.strip()


# --- tables shaped as native partitions; identity repair ---------------------------------------------------

LIKE_AS_PARTITION = "INCLUDING ALL EXCLUDING IDENTITY EXCLUDING COMMENTS EXCLUDING STATISTICS"


def test_partition_like_statements_copy_no_identity_comments_or_statistics():
    f = replace(facts_for(cfg()), identity_columns=("id",))
    [create, check] = partition_like_statements(
        f, "events_p20261125", bound=Range(utc(2026, 11, 25), utc(2026, 11, 26))
    )
    assert (
        create.sql.as_string(None)
        == f'CREATE TABLE "public"."events_p20261125" (LIKE "public"."events" {LIKE_AS_PARTITION})'
    )
    assert check.sql.as_string(None).startswith(
        'ALTER TABLE "public"."events_p20261125" ADD CONSTRAINT "pgmaint_bound" CHECK '
    )


def test_partition_like_statements_use_the_parents_tablespace_and_access_method():
    f = replace(facts_for(cfg()), tablespace="fast ssd", access_method="heap")
    [create] = partition_like_statements(f, "events_p20261125")
    assert create.sql.as_string(None).endswith(f'{LIKE_AS_PARTITION}) USING "heap" TABLESPACE "fast ssd"')


def test_a_reused_table_loses_an_identity_an_earlier_version_copied():
    f = replace(facts_for(cfg()), identity_columns=("id", "Other Id"))
    statements = partition_like_statements(f, "events_default_pgmaint_next", if_not_exists=True)
    assert [s.sql.as_string(None) for s in statements] == [
        f'CREATE TABLE IF NOT EXISTS "public"."events_default_pgmaint_next" (LIKE "public"."events" {LIKE_AS_PARTITION})',
        'ALTER TABLE "public"."events_default_pgmaint_next" ALTER COLUMN "id" DROP IDENTITY IF EXISTS, '
        'ALTER COLUMN "Other Id" DROP IDENTITY IF EXISTS',
    ]
    # A leftover of an interrupted maintenance run too (it is not created again).
    creates = (CreatePartition("events_p20261125", Range(utc(2026, 11, 25), utc(2026, 11, 26)), reuse_leftover=True),)
    prepare, _, _ = create_steps(f, creates, UTC)
    assert sqls(prepare[0])[1] == (
        'ALTER TABLE "public"."events_p20261125" ALTER COLUMN "id" DROP IDENTITY IF EXISTS, '
        'ALTER COLUMN "Other Id" DROP IDENTITY IF EXISTS'
    )
    # Nothing to strip when the parent has no identity.
    assert len(partition_like_statements(facts_for(cfg()), "x", if_not_exists=True)) == 1


def test_attach_drops_the_bound_check_in_the_same_transaction():
    _, attach, _ = create_steps(facts_for(cfg()), two_creates()[:1], UTC)
    [step] = attach
    assert step.transactional and len(step.statements) == 2
    assert sqls(step)[1] == 'ALTER TABLE "public"."events_p20261125" DROP CONSTRAINT IF EXISTS "pgmaint_bound"'


def test_identity_repair_step_and_its_lock_in_the_dry_run():
    stray = StrayIdentity("events_p20261124", "id", "events_p20261124_id_seq")
    f = replace(
        facts_for(cfg(), partitions=[("events_p20261124", utc(2026, 11, 24), utc(2026, 11, 25), False)]),
        stray_identities=(stray,),
    )
    plan = plan_maintenance(cfg(premake=1, retention=None), f, NOW, UTC)
    assert plan.identity_repairs == (stray,) and not plan.is_noop
    [repair] = [s for s in all_steps(f, plan, UTC) if s.action == "drop_partition_identity"]
    [(text, lock)] = repair.render(None)
    assert text == 'ALTER TABLE "public"."events_p20261124" ALTER COLUMN "id" DROP IDENTITY IF EXISTS'
    assert (
        lock.startswith("ACCESS EXCLUSIVE on the partition events_p20261124 only") and "events_p20261124_id_seq" in lock
    )
    assert repair.lock_targets == ('"public"."events_p20261124"',) and repair.transactional
