"""Tables pgmaint creates are shaped exactly as `CREATE TABLE … PARTITION OF` would make them.

Compared catalog by catalog (tests/integration/maintenance/shape.py): columns (types, defaults, identity,
generated, NOT NULL, storage, statistics targets, comments), the sequences a table's own columns
own, constraints, indexes and the parent index each is attached to, triggers, owner, ACL,
storage parameters, replica identity, tablespace, access method. On the embedded PostgreSQL 16
and, when its binaries are installed, on PostgreSQL 15. Also: the repair of partitions an earlier
version gave an identity sequence of their own, and new names following the table's scheme.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg import sql

from include.pgmaint import ddl
from include.pgmaint.catalog import read_catalog
from include.pgmaint.db import connect
from include.pgmaint.maintenance import run_maintenance
from include.pgmaint.migrate import migrate_table
from tests import pg15
from tests.integration.helpers import NOW, TODAY, add_partition, config_for, make_table, partitions, table_entry
from tests.integration.maintenance.shape import differences, relation_shape

pytestmark = pytest.mark.pg


@pytest.fixture
def role(conn):
    """A non-superuser role that will own the table (as a real deployment's `maint` does)."""
    name = f"maint_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def rich_parent(conn, schema: str, owner: str) -> None:
    """A parent with everything a partition could inherit or fail to: identity, defaults, generated
    column, CHECK, FK, indexes with storage parameters, trigger, column storage and statistics
    target, comments, extended statistics, grants, replica identity; owned by `owner`."""
    s, o = sql.Identifier(schema), sql.Identifier(owner)
    conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(s, o))
    conn.execute(sql.SQL("SET ROLE {}").format(o))
    try:
        conn.execute(
            sql.SQL("""
            CREATE TABLE {s}.ref (k int PRIMARY KEY);
            CREATE TABLE {s}.ev (
                id bigint GENERATED ALWAYS AS IDENTITY,
                ts timestamptz NOT NULL,
                payload text DEFAULT 'none',
                n int CHECK (n > 0),
                k int REFERENCES {s}.ref,
                doubled int GENERATED ALWAYS AS (n * 2) STORED,
                PRIMARY KEY (id, ts)
            ) PARTITION BY RANGE (ts);
            CREATE INDEX ev_payload ON {s}.ev (payload) WITH (fillfactor = 70);
            CREATE INDEX ev_ts ON {s}.ev (ts);
            ALTER TABLE {s}.ev ALTER COLUMN payload SET STORAGE EXTERNAL;
            ALTER TABLE {s}.ev ALTER COLUMN n SET STATISTICS 500;
            COMMENT ON COLUMN {s}.ev.payload IS 'request body';
            COMMENT ON TABLE {s}.ev IS 'events';
            CREATE STATISTICS {s}.ev_n_k ON n, k FROM {s}.ev;
            ALTER TABLE {s}.ev REPLICA IDENTITY FULL;
            GRANT SELECT ON {s}.ev TO PUBLIC;
            CREATE FUNCTION {s}.touch() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN RETURN NEW; END $f$;
            CREATE TRIGGER ev_touch BEFORE INSERT ON {s}.ev FOR EACH ROW EXECUTE FUNCTION {s}.touch();
            CREATE TABLE {s}.ev_default PARTITION OF {s}.ev DEFAULT;
        """).format(s=s)
        )
        add_partition(conn, schema, "ev", TODAY - timedelta(days=1), TODAY, "ev_native")
    finally:
        conn.execute("RESET ROLE")


def assert_pgmaint_partition_is_native(conn, schema: str, role: str) -> None:
    conn.execute(
        sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(conn.info.dbname), sql.Identifier(role))
    )
    conn.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(role)))  # preflight must see other sessions
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    try:
        [result] = run_maintenance(
            conn, config_for(schema, [table_entry(schema, "ev", premake=1, retention=None)]), now=NOW
        )
    finally:
        conn.execute("RESET ROLE")
    assert result.outcome == "success", result.errors
    ours = f"ev_p{TODAY:%Y%m%d}"
    assert result.created == [ours, f"ev_p{TODAY + timedelta(days=1):%Y%m%d}"]

    native, made = relation_shape(conn, schema, "ev_native"), relation_shape(conn, schema, ours)
    assert differences(native, made) == {}
    # What the issue was about, spelled out: no sequence of its own, no identity copied onto it ...
    assert made["owned_sequences"] == []
    assert [c[5] for c in made["columns"] if c[0] == "id"] == [[c[5] for c in native["columns"] if c[0] == "id"][0]]
    # ... and what the comparison is worth: the parent's grants, comment and statistics are not a partition's.
    assert made["owner"] == role and made["acl"] is None and made["statistics"] == [] and made["comment"] is None
    assert (
        "ev_touch",
        f"CREATE TRIGGER ev_touch BEFORE INSERT ON {schema}.<t> FOR EACH ROW EXECUTE FUNCTION {schema}.touch()",
        "O",
    ) in made["triggers"]
    assert sorted(i[7] for i in made["indexes"]) == ["ev_payload", "ev_pkey", "ev_ts"]  # attached to the parent's

    # Rows through the parent keep getting the parent's identity; a direct INSERT behaves as on a native partition.
    parent = sql.Identifier(schema, "ev")
    ids = [
        r[0]
        for r in conn.execute(
            sql.SQL("INSERT INTO {} (ts, n) VALUES (%s, 1), (%s, 1) RETURNING id").format(parent),
            [TODAY - timedelta(hours=1), TODAY + timedelta(hours=1)],
        ).fetchall()
    ]
    assert ids[1] == ids[0] + 1
    outcomes = []
    for name, at in (("ev_native", TODAY - timedelta(hours=2)), (ours, TODAY + timedelta(hours=2))):
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("INSERT INTO {} (ts, n) VALUES (%s, 1)").format(sql.Identifier(schema, name)), [at]
                )
            outcomes.append("inserted")
        except psycopg.Error as exc:
            outcomes.append(type(exc).__name__)
    assert outcomes[0] == outcomes[1]


def test_a_partition_pgmaint_makes_has_the_catalog_of_a_native_one(conn, scratch_schema, role):
    rich_parent(conn, scratch_schema, role)
    assert_pgmaint_partition_is_native(conn, scratch_schema, role)


def test_the_same_on_postgresql_15():
    try:
        server = pg15.start(partman=False, cron=False)
    except pg15.Unavailable as exc:
        pytest.skip(str(exc))
    with server, connect(server.conninfo()) as conn:
        conn.execute("CREATE SCHEMA s15")
        conn.execute("CREATE ROLE maint15")
        assert conn.info.server_version // 10000 == 15
        rich_parent(conn, "s15", "maint15")
        assert_pgmaint_partition_is_native(conn, "s15", "maint15")


def test_the_replacement_default_of_a_migration_has_the_catalog_of_a_native_default(conn, pg_dsn, scratch_schema):
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    make_table(conn, scratch_schema, "ev", days=range(-4, -2), anchor=today)
    parent = sql.Identifier(scratch_schema, "ev")
    conn.execute(sql.SQL("COMMENT ON COLUMN {}.payload IS 'body'").format(parent))
    conn.execute(sql.SQL("GRANT SELECT ON {} TO PUBLIC").format(parent))
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (ts, payload) SELECT %s::timestamptz + g * interval '1 minute', 'x' "
            "FROM generate_series(1, 200) g"
        ).format(parent),
        [today - timedelta(days=1)],
    )
    native_default = relation_shape(conn, scratch_schema, "ev_default")
    cfg = config_for(scratch_schema, [table_entry(scratch_schema, "ev", premake=1)])

    result = migrate_table(conn, pg_dsn, cfg, cfg.tables[0])

    assert result.outcome == "success", result
    replacement = relation_shape(conn, scratch_schema, "ev_default")
    # Its index and key names come from the name it was built under (the old DEFAULT, being drained,
    # still holds ev_default_pkey at the swap): everything else is the native DEFAULT's.
    assert differences(native_default, replacement).keys() == {"constraints", "indexes"}
    assert differences(native_default, _renamed(replacement, "<t>_pgmaint_next", "<t>")) == {}
    moved_into = f"ev_p{today - timedelta(days=1):%Y%m%d}"
    moved_shape = relation_shape(conn, scratch_schema, moved_into)
    assert moved_shape["owned_sequences"] == []
    native = f"ev_native_{today:%Y%m%d}"  # what PARTITION OF gives, for the partition the migration attached
    conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM (%s) TO (%s)")
        .format(sql.Identifier(scratch_schema, native), parent)
        .as_string(conn)
        % (
            sql.Literal(today + timedelta(days=30)).as_string(conn),
            sql.Literal(today + timedelta(days=31)).as_string(conn),
        )
    )
    assert differences(relation_shape(conn, scratch_schema, native), moved_shape) == {}
    assert own_sequences(conn, scratch_schema) == ["ev_id_seq"]


def _renamed(shape: dict, old: str, new: str) -> dict:
    def swap(value):
        if isinstance(value, str):
            return value.replace(old, new)
        if isinstance(value, (list, tuple)):
            return type(value)(swap(v) for v in value)
        return value

    return {k: swap(v) for k, v in shape.items()}


def test_partitions_in_the_parents_tablespace_like_native_ones(conn, scratch_schema):
    """A parent with a tablespace: native partitions are created in it, so ours are too."""
    location = conn.execute("SELECT current_setting('data_directory')").fetchone()[0]
    try:
        owner = os.stat(location).st_uid
        directory = tempfile.mkdtemp(prefix="pgmaint-ts-", dir="/tmp")
        os.chown(directory, owner, -1)
    except OSError as exc:
        pytest.skip(f"cannot prepare a tablespace directory for this server: {exc}")
    space = f"pgmaint_ts_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(sql.Identifier(space), sql.Literal(directory)))
    try:
        s = sql.Identifier(scratch_schema)
        conn.execute(
            sql.SQL("CREATE TABLE {}.ev (ts timestamptz NOT NULL, v int) PARTITION BY RANGE (ts) TABLESPACE {}").format(
                s, sql.Identifier(space)
            )
        )
        conn.execute(sql.SQL("CREATE INDEX ON {}.ev (ts)").format(s))
        add_partition(conn, scratch_schema, "ev", TODAY - timedelta(days=1), TODAY, "ev_native")
        [result] = run_maintenance(
            conn, config_for(scratch_schema, [table_entry(scratch_schema, "ev", premake=1, retention=None)]), now=NOW
        )
        assert result.outcome == "success", result.errors
        made = relation_shape(conn, scratch_schema, f"ev_p{TODAY:%Y%m%d}")
        assert made["tablespace"] == space
        assert differences(relation_shape(conn, scratch_schema, "ev_native"), made) == {}
    finally:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}.ev").format(sql.Identifier(scratch_schema)))
        # DROP TABLESPACE waits for a checkpoint: on a busy machine longer than pgmaint's 10 s statement timeout.
        conn.execute("SET statement_timeout = '5min'")
        conn.execute(sql.SQL("DROP TABLESPACE {}").format(sql.Identifier(space)))


# --- repair of what earlier versions made ------------------------------------------------------------------


def old_version_partition(conn, schema: str, name: str, *, lo=None, hi=None, default: bool = False) -> None:
    """What pgmaint did before: LIKE … INCLUDING ALL (copies the identity: a sequence of its own), then ATTACH."""
    child, parent = sql.Identifier(schema, name), sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(child, parent))
    bound = (
        sql.SQL("DEFAULT")
        if default
        else sql.SQL("FOR VALUES FROM ({}) TO ({})").format(sql.Literal(lo), sql.Literal(hi))
    )
    conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(parent, child, bound))


def own_sequences(conn, schema: str) -> list[str]:
    """Sequences of the `ev` family (the schema also holds the state tables' own)."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'S' AND relnamespace = %s::regnamespace "
            "AND relname LIKE 'ev%%' ORDER BY 1",
            [schema],
        ).fetchall()
    ]


def test_identity_sequences_copied_onto_partitions_are_repaired(conn, scratch_schema):
    if conn.info.server_version >= 170000:
        pytest.skip("PostgreSQL 17 refuses to attach a table with an identity: earlier versions could not make these")
    make_table(conn, scratch_schema, "ev", days=range(-2, 0), default=False)
    old_version_partition(conn, scratch_schema, "ev_default", default=True)  # e.g. a migration's replacement DEFAULT
    old_version_partition(conn, scratch_schema, "ev_p20261126", lo=TODAY, hi=TODAY + timedelta(days=1))
    native = relation_shape(conn, scratch_schema, "ev_old_99")
    assert own_sequences(conn, scratch_schema) == ["ev_default_id_seq", "ev_id_seq", "ev_p20261126_id_seq"]
    # The harm: a direct INSERT into such a partition hands out ids the parent already used.
    parent = sql.Identifier(scratch_schema, "ev")
    conn.execute(
        sql.SQL("INSERT INTO {} (ts) SELECT %s FROM generate_series(1, 5)").format(parent), [TODAY + timedelta(hours=1)]
    )
    direct = conn.execute(
        sql.SQL("INSERT INTO {} (ts) VALUES (%s) RETURNING id").format(sql.Identifier(scratch_schema, "ev_p20261126")),
        [TODAY + timedelta(hours=2)],
    ).fetchone()[0]
    assert direct == 1
    cfg = config_for(scratch_schema, [table_entry(scratch_schema, "ev", premake=1, retention=None)])

    [dry] = run_maintenance(conn, cfg, now=NOW, dry_run=True)
    repairs = [s for s in dry.statements if s["step"] == "drop_partition_identity"]
    assert [r["sql"] for r in repairs] == [
        f'ALTER TABLE "{scratch_schema}"."{name}" ALTER COLUMN "id" DROP IDENTITY IF EXISTS'
        for name in ("ev_default", "ev_p20261126")
    ]
    assert all(
        r["lock"].startswith("ACCESS EXCLUSIVE on the partition ") and " only (catalog only" in r["lock"]
        for r in repairs
    )
    assert len(own_sequences(conn, scratch_schema)) == 3  # the dry run changed nothing

    # The lock the step takes, looked at from inside its transaction: the partition (and its own sequence), never the parent.
    facts = read_catalog(conn, cfg.tables, cfg.timezone)[cfg.tables[0].name]
    step = ddl.drop_identity_step(facts, next(s for s in facts.stray_identities if s.table == "ev_p20261126"))
    with pytest.raises(_Rollback), conn.transaction():
        for statement in step.statements:
            conn.execute(statement.sql)
        held = conn.execute(
            "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE l.pid = pg_backend_pid() AND c.relnamespace = %s::regnamespace ORDER BY 1",
            [scratch_schema],
        ).fetchall()
        on_parent = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND relation = %s::regclass",
            [f'"{scratch_schema}"."ev"'],
        ).fetchone()[0]
        raise _Rollback
    # (the dropped sequence is no longer in pg_class)
    assert held == [("ev_p20261126", "AccessExclusiveLock")] and on_parent == 0

    [result] = run_maintenance(conn, cfg, now=NOW)

    assert result.outcome == "success", result.errors
    assert own_sequences(conn, scratch_schema) == ["ev_id_seq"]
    for name in ("ev_default", "ev_p20261126"):
        assert differences(native, relation_shape(conn, scratch_schema, name)).keys() <= {"constraints", "indexes"}, (
            name
        )
        assert relation_shape(conn, scratch_schema, name)["owned_sequences"] == []
    steps = conn.execute(
        sql.SQL(
            "SELECT action, target, outcome FROM {}.steps WHERE action = 'drop_partition_identity' ORDER BY target"
        ).format(sql.Identifier(scratch_schema))
    ).fetchall()
    assert steps == [
        ("drop_partition_identity", "ev_default.id", "success"),
        ("drop_partition_identity", "ev_p20261126.id", "success"),
    ]
    # Through the parent, ids go on from the parent's sequence; rows already there are untouched.
    next_id = conn.execute(
        sql.SQL("INSERT INTO {} (ts) VALUES (%s) RETURNING id").format(parent), [TODAY + timedelta(hours=3)]
    ).fetchone()[0]
    assert next_id == 6
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(parent)).fetchone()[0] == 7
    [again] = run_maintenance(conn, cfg, now=NOW)
    assert again.outcome == "success" and not again.errors
    # nothing left to repair
    assert (
        conn.execute(
            sql.SQL("SELECT count(*) FROM {}.steps WHERE action = 'drop_partition_identity'").format(
                sql.Identifier(scratch_schema)
            )
        ).fetchone()[0]
        == 2
    )


class _Rollback(Exception):
    pass


# --- names follow the table's scheme ----------------------------------------------------------------------


def test_a_table_named_by_pg_partman_4_gets_pg_partman_4_names(conn, scratch_schema):
    make_table(conn, scratch_schema, "ev", days=range(0))
    for d in range(-5, 0):
        lo = TODAY + timedelta(days=d)
        add_partition(conn, scratch_schema, "ev", lo, lo + timedelta(days=1), f"ev_p{lo:%Y_%m_%d}")
    cfg = config_for(scratch_schema, [table_entry(scratch_schema, "ev", premake=2, retention=None)])

    [result] = run_maintenance(conn, cfg, now=NOW)

    assert result.outcome == "success", result.errors
    assert result.created == [f"ev_p{TODAY + timedelta(days=d):%Y_%m_%d}" for d in (0, 1, 2)]
    assert any("YYYY_MM_DD" in n and "5 of 5" in n for n in result.notes)
    bounds = partitions(conn, scratch_schema, "ev")
    assert bounds["ev_p2026_11_27"] == "FOR VALUES FROM ('2026-11-27 00:00:00+00') TO ('2026-11-28 00:00:00+00')"

    # name_format overrides what the table shows.
    cfg = config_for(
        scratch_schema, [table_entry(scratch_schema, "ev", premake=3, retention=None, name_format="YYYYMMDD")]
    )
    [result] = run_maintenance(conn, cfg, now=NOW)
    assert result.created == ["ev_p20261129"]
