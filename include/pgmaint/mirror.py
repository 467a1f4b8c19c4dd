"""The statements of a copy-first migration of a DEFAULT partition: `DefaultPartitionMigration`.

Copy first, swap last (as pg_repack and GitLab's partition_table_by_date do; see README):

1. prepare   a shadow parent SP (partitioned like the parent, with the mirror key's unique
             index), one shadow table per interval to move (shaped like a native partition,
             with its bound CHECK) attached to SP, and a replacement DEFAULT D' attached to SP
             as its DEFAULT, whose CHECK excludes every range the parent will have after the
             swap. Nothing the application uses is locked.
2. mirror    an AFTER ROW trigger on the DEFAULT D replays every INSERT, UPDATE and DELETE
             into SP by the mirror key (and a TRUNCATE trigger empties SP), in the writer's
             own transaction, counting each write in a sequence (the write mark) and logging
             the keys it wrote, with that count, in a table (the key log); both
             ENABLE ALWAYS (SHARE ROW EXCLUSIVE on D for a moment: it waits for in-flight
             writers, under the lock budget).
3. copy      batches copy D's rows into SP (`backfill.Backfill`), taking no row lock: never
             overwriting a mirrored change, every row still read from D through the parent.
             Then the copies of rows deleted while a batch held them uncommitted are removed
             (the key log names them; a last pass under SHARE on D for milliseconds), and a
             write cut (SHARE on D for milliseconds, snapshot exported with the write mark)
             at which the copies are verified against D.
4. swap      one transaction under the lock budget and the circuit breaker: ACCESS EXCLUSIVE
             on the parent first (statements wait before they are planned), then DETACH D,
             move the shadows and D' from SP to the parent (their CHECKs prove the bounds:
             nothing is scanned), rename; D becomes read-only (ALWAYS triggers that raise).
             Until it commits every reader sees D; after, the shadows. No instant in between.
             Unchanged write mark since the cut: the verified figures hold at the swap; else
             the rows of the logged keys are counted again (migrate.py, `recount_written`).
5. tidy      drop D's exclusion CHECK, the empty SP and the trigger function; the detached
             old DEFAULT is kept until conservation is proven, then dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone

from psycopg import sql

from include.pgmaint import ddl
from include.pgmaint.catalog import Range, TableFacts
from include.pgmaint.config import Config, TableConfig
from include.pgmaint.execute import Statement, Step
from include.pgmaint.guards import quoted
from include.pgmaint.plan import CreatePartition, fit_identifier, timeline

MIRROR_TRIGGER = "pgmaint_mirror"
MIRROR_TRUNCATE_TRIGGER = "pgmaint_mirror_truncate"  # counts a TRUNCATE of the DEFAULT as a write
# on the detached old DEFAULT until it is dropped
READ_ONLY_TRIGGERS = (
    "pgmaint_read_only",
    "pgmaint_read_only_truncate",
)
# For the passes over the key log: one index lookup per key it names, in the DEFAULT and in the copies. The log's
# statistics are stale once a pass has emptied it, and a hash or merge join would read the whole DEFAULT or every copy
# (under the last pass's SHARE lock, while writers wait).
KEY_LOOKUPS_ONLY = (sql.SQL("SET LOCAL enable_hashjoin = off"), sql.SQL("SET LOCAL enable_mergejoin = off"))
NEXT_DEFAULT_CHECK = "pgmaint_excl_next"  # "pgmaint_excl*" on a DEFAULT: maintenance drops it if left behind


@dataclass(frozen=True)
class MirrorKey:
    index: str
    columns: tuple[str, ...]


def mirror_key(conn, facts: TableFacts) -> MirrorKey | None:
    """The parent's primary key, else a unique index on NOT NULL plain columns (no predicate)."""
    row = conn.execute(
        """SELECT ic.relname, array_agg(a.attname ORDER BY k.ord)
           FROM pg_index i
           JOIN pg_class ic ON ic.oid = i.indexrelid
           CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
           GROUP BY ic.relname, i.indisprimary
           HAVING bool_and(a.attnotnull) AND bool_and(k.attnum > 0)
           ORDER BY i.indisprimary DESC, count(*), ic.relname LIMIT 1""",
        [quoted(facts.schema, facts.table)],
    ).fetchone()
    return MirrorKey(row[0], tuple(row[1])) if row else None


def refusals(conn, facts: TableFacts) -> list[str]:
    """Why a copy-first migration cannot run on this table (empty: it can)."""
    problems = []
    if mirror_key(conn, facts) is None:
        problems.append(
            f"{facts.schema}.{facts.table} has no primary key or unique index on NOT NULL columns: the mirror trigger "
            "replays updates and deletes by key, so rows cannot be moved online. Add a primary key that includes the "
            f"partition key (e.g. ALTER TABLE ... ADD PRIMARY KEY (id, {facts.key_column})) and run again"
        )
    refs = conn.execute(
        """SELECT c.conname, c.conrelid::regclass::text FROM pg_constraint c
           WHERE c.contype = 'f' AND c.confrelid = to_regclass(%s) AND c.conparentid = 0""",
        [quoted(facts.schema, facts.table)],
    ).fetchall()
    for name, table in refs:
        problems.append(
            f"foreign key {name} on {table} references {facts.schema}.{facts.table}: detaching the DEFAULT would "
            f"check {table} under an exclusive lock on the parent. Migrate with the foreign key dropped (and re-added "
            "NOT VALID + VALIDATE afterwards), or move the rows by hand"
        )
    return problems


def merged_spans(ranges: list[Range]) -> list[Range]:
    """Union of ranges as the fewest disjoint spans (touching ranges merge)."""

    def low(r):
        return (r.lower is not None, r.lower or datetime.min.replace(tzinfo=timezone.utc))

    out: list[Range] = []
    for r in sorted(ranges, key=low):
        if out and (out[-1].upper is None or (r.lower is not None and r.lower <= out[-1].upper)):
            last = out[-1]
            upper = None if last.upper is None or r.upper is None else max(last.upper, r.upper)
            out[-1] = Range(last.lower, upper)
        else:
            out.append(r)
    return out


class DefaultPartitionMigration:
    """Every statement of one copy-first migration of one table's DEFAULT partition, with its lock."""

    def __init__(
        self,
        config: Config,
        cfg: TableConfig,
        facts: TableFacts,
        plan,
        key: MirrorKey,
        columns: list[tuple[str, bool, bool]],
    ):
        self.config, self.cfg, self.facts, self.plan, self.key = config, cfg, facts, plan, key
        self.tz = timeline(facts, datetime.now(timezone.utc), config.timezone)[1]
        self.schema = facts.schema
        self.parent = sql.Identifier(facts.schema, facts.table)
        self.default_name = facts.default.name
        self.shadow_parent = fit_identifier(facts.default.name, "_pgmaint_copy")
        self.next_name = fit_identifier(facts.default.name, "_pgmaint_next")
        self.old_name = fit_identifier(facts.default.name, "_pgmaint_old")
        self.function = fit_identifier(facts.table, "_pgmaint_mirror")
        self.writes = fit_identifier(facts.default.name, "_pgmaint_writes")  # the mirror's write counter (a sequence)
        # The keys the mirror wrote, with each write's count: at the swap only the rows written after the cut are counted again.
        self.written = fit_identifier(facts.default.name, "_pgmaint_written")
        self.read_only_function = fit_identifier(facts.table, "_pgmaint_read_only")
        self.columns = [c for c, _, _ in columns]
        self.writable = [c for c, generated, _ in columns if not generated]
        self.identity = any(always for _, _, always in columns)
        self.state = sql.Identifier(config.state_schema)

    def q(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    def text(self, name: str) -> str:
        return quoted(self.schema, name)

    def compared(self, *, swapped: bool) -> tuple[str, list[str]]:
        """The two sides a count compares, by name: (the DEFAULT, the moved rows' new homes). Before the swap: the
        DEFAULT and the shadows with the replacement DEFAULT; after it committed, the old DEFAULT under its new name
        and the new partitions with the new DEFAULT."""
        moved = [r.partition for r in self.plan.move]
        if swapped:
            return self.old_name, [*moved, self.default_name]
        return self.default_name, [*moved, self.next_name]

    def _bounds(self, rng: Range) -> sql.Composable:
        lit = lambda d, inf: sql.SQL(inf) if d is None else ddl.bound_literal(d, self.facts.key_type, self.tz)  # noqa: E731
        return sql.SQL("FROM ({}) TO ({})").format(lit(rng.lower, "MINVALUE"), lit(rng.upper, "MAXVALUE"))

    def _outside(self, spans: list[Range]) -> sql.Composable:
        """CHECK body: the key lies in none of `spans` (NULL keys pass, as in any DEFAULT)."""
        key = sql.Identifier(self.facts.key_column)
        parts = []
        for s in spans:
            inside = []
            if s.lower is not None:
                inside.append(sql.SQL("{} >= {}").format(key, ddl.bound_literal(s.lower, self.facts.key_type, self.tz)))
            if s.upper is not None:
                inside.append(sql.SQL("{} < {}").format(key, ddl.bound_literal(s.upper, self.facts.key_type, self.tz)))
            parts.append(sql.SQL("NOT ({})").format(sql.SQL(" AND ").join(inside) if inside else sql.SQL("true")))
        return sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")

    def ranges_after_swap(self) -> list[Range]:
        return [p.range for p in self.facts.partitions if p.range is not None] + [r.range for r in self.plan.move]

    # --- 1. prepare ---------------------------------------------------------------------------

    def prepare_steps(self) -> list[Step]:
        sp, f = self.q(self.shadow_parent), self.facts
        # INCLUDING INDEXES: the parent's keys as constraints of the same kind (a bare unique index would leave the
        # shadows' primary key half-detached after they move to the parent: conislocal false, coninhcount 0).
        steps = [
            Step(
                "create_shadow_parent",
                self.shadow_parent,
                (
                    Statement(
                        sql.SQL(
                            "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING INDEXES) "
                            "PARTITION BY RANGE ({})"
                        ).format(sp, self.parent, sql.Identifier(f.key_column)),
                        f"ACCESS SHARE on {f.table} (reads its definition); new empty partitioned table {self.shadow_parent} "
                        f"with the parent's keys (the mirror key: {', '.join(self.key.columns)})",
                    ),
                ),
                lock_targets=(self.text(f.table),),
            )
        ]
        creates = tuple(CreatePartition(r.partition, r.range, r.partition in f.leftovers) for r in self.plan.move)
        shadows, _, _ = ddl.create_steps(replace(f, default=None), creates, self.tz)
        for step, r in zip(shadows, self.plan.move):
            steps.append(replace(step, action="create_shadow"))
            steps.append(
                Step(
                    "attach_shadow",
                    r.partition,
                    (
                        Statement(
                            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
                                sp, self.q(r.partition), sql.SQL("FOR VALUES ") + self._bounds(r.range)
                            ),
                            f"ACCESS EXCLUSIVE on {r.partition}, SHARE UPDATE EXCLUSIVE on {self.shadow_parent} (ours, empty)",
                        ),
                        # The copy makes each shadow due for an (insert) autovacuum, whose SHARE UPDATE EXCLUSIVE the swap would
                        # queue behind, try after try (its lock timeout is shorter than the deadlock_timeout that cancels
                        # autovacuum): off until the swap, reset by `tidy_steps`.
                        Statement(
                            sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(self.q(r.partition)),
                            f"(held) {r.partition}: no autovacuum until it is swapped in",
                        ),
                    ),
                    lock_targets=(self.text(r.partition),),
                )
            )
        nxt = self.q(self.next_name)
        spans = merged_spans(self.ranges_after_swap())
        steps.append(
            Step(
                "create_next_default",
                self.next_name,
                (
                    *ddl.partition_like_statements(f, self.next_name),
                    Statement(
                        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
                            nxt, sql.Identifier(NEXT_DEFAULT_CHECK), self._outside(spans)
                        ),
                        f"ACCESS EXCLUSIVE on {self.next_name} only (new, empty): proves it holds no row of the "
                        f"{len(spans)} span(s) partitioned after the swap, so attaching it as DEFAULT scans nothing",
                    ),
                    Statement(
                        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} DEFAULT").format(sp, nxt),
                        f"ACCESS EXCLUSIVE on {self.next_name}, SHARE UPDATE EXCLUSIVE on {self.shadow_parent} (ours, empty)",
                    ),
                ),
                lock_targets=(self.text(f.table),),
            )
        )
        return steps

    # --- 2. mirror ----------------------------------------------------------------------------

    def mirror_function(self) -> sql.Composable:
        sp = self.q(self.shadow_parent)
        keys = sql.SQL(", ").join(map(sql.Identifier, self.key.columns))
        old_keys = sql.SQL(", ").join(sql.SQL("OLD.{}").format(sql.Identifier(k)) for k in self.key.columns)
        cols = sql.SQL(", ").join(map(sql.Identifier, self.writable))
        new_vals = sql.SQL(", ").join(sql.SQL("NEW.{}").format(sql.Identifier(c)) for c in self.writable)
        updates = [c for c in self.writable if c not in self.key.columns]
        on_conflict = (
            (
                sql.SQL("DO UPDATE SET ")
                + sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates)
            )
            if updates
            else sql.SQL("DO NOTHING")
        )
        overriding = sql.SQL(" OVERRIDING SYSTEM VALUE") if self.identity else sql.SQL("")
        new_keys = sql.SQL(", ").join(sql.SQL("NEW.{}").format(sql.Identifier(k)) for k in self.key.columns)
        body = sql.SQL(
            "DECLARE\n"
            "  w bigint;\n"
            "BEGIN\n"
            # Non-transactional and contention-free: lets the swap tell that no write reached the DEFAULT since the
            # verification (`write_mark`). Counted before the write, so a write in progress is never missed.
            "  w := nextval({writes});\n"
            "  IF TG_OP = 'TRUNCATE' THEN\n"  # the DEFAULT emptied: so are its copies (same transaction)
            "    INSERT INTO {written} (seq) VALUES (w);\n"  # NULL keys: every row changed
            "    TRUNCATE {sp};\n"
            "    RETURN NULL;\n"
            "  END IF;\n"
            "  IF TG_OP <> 'INSERT' THEN\n"
            "    INSERT INTO {written} VALUES (w, {old_keys});\n"
            "    DELETE FROM {sp} WHERE ({keys}) = ({old_keys});\n"
            "  END IF;\n"
            "  IF TG_OP <> 'DELETE' THEN\n"
            "    IF TG_OP = 'INSERT' OR ({new_keys}) IS DISTINCT FROM ({old_keys}) THEN\n"
            "      INSERT INTO {written} VALUES (w, {new_keys});\n"
            "    END IF;\n"
            "    INSERT INTO {sp} ({cols}){overriding} VALUES ({new_vals}) ON CONFLICT ({keys}) {on_conflict};\n"
            "  END IF;\n"
            "  RETURN NULL;\n"
            "END"
        ).format(
            writes=sql.Literal(self.text(self.writes)),
            written=self.q(self.written),
            new_keys=new_keys,
            sp=sp,
            keys=keys,
            old_keys=old_keys,
            cols=cols,
            overriding=overriding,
            new_vals=new_vals,
            on_conflict=on_conflict,
        )
        return body

    def mirror_step(self, migration_id: int, body: str) -> Step:
        """CREATE the trigger and start copying in one transaction: every write committed after it is mirrored,
        every row committed before it lies in the pages counted here."""
        d = self.q(self.default_name)
        keys = sql.SQL(", ").join(map(sql.Identifier, self.key.columns))
        return Step(
            "mirror_writes",
            self.default_name,
            (
                Statement(
                    sql.SQL("CREATE SEQUENCE {} AS bigint").format(self.q(self.writes)),
                    "none (a new sequence: the mirror counts the DEFAULT's writes in it)",
                ),
                # Logged: after the copy, the keys it logged tell which copies may be of rows deleted meanwhile
                # (`deleted_copies`); that must survive a server crash as the copies do.
                Statement(
                    sql.SQL("CREATE TABLE {} AS SELECT NULL::bigint AS seq, {} FROM ONLY {} WITH NO DATA").format(
                        self.q(self.written), keys, d
                    ),
                    "none (a new table: the mirror logs the keys it writes in it, with the write's count)",
                ),
                # SECURITY DEFINER: the application's roles write to D and may hold no privilege on our shadow tables.
                Statement(
                    sql.SQL(
                        "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
                        "SET search_path = pg_catalog, pg_temp AS {}"
                    ).format(self.q(self.function), sql.Literal(body)),
                    "none (a new function)",
                ),
                Statement(
                    sql.SQL(
                        "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()"
                    ).format(sql.Identifier(MIRROR_TRIGGER), d, self.q(self.function)),
                    f"SHARE ROW EXCLUSIVE on {self.default_name}: waits for in-flight writers (lock budget), reads go on",
                ),
                Statement(
                    sql.SQL("CREATE TRIGGER {} AFTER TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(
                        sql.Identifier(MIRROR_TRUNCATE_TRIGGER), d, self.q(self.function)
                    ),
                    "(held) catalog only",
                ),
                # ALWAYS: also for writers running with session_replication_role = replica (logical replication's apply).
                Statement(
                    sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}, ENABLE ALWAYS TRIGGER {}").format(
                        d, sql.Identifier(MIRROR_TRIGGER), sql.Identifier(MIRROR_TRUNCATE_TRIGGER)
                    ),
                    "(held) catalog only",
                ),
                Statement(
                    sql.SQL(
                        "UPDATE {}.migrations SET phase = 'copying', next_page = 0, "
                        "total_pages = pg_relation_size({}) / current_setting('block_size')::int, updated_at = clock_timestamp() "
                        "WHERE migration_id = {}"
                    ).format(self.state, sql.Literal(self.text(self.default_name)), sql.Literal(migration_id)),
                    "ROW EXCLUSIVE on the journal (same transaction: copying starts when mirroring does)",
                ),
            ),
            lock_targets=(self.text(self.default_name),),
            strong_lock=True,
        )

    def write_mark(self) -> sql.Composable:
        """A text that changes whenever a write may have reached the DEFAULT: the mirror's write counter, and the
        catalog rows of its triggers (disabling or re-enabling one rewrites its row). NULL when the mirror is not
        in place as this version builds it (both triggers ALWAYS, the counter): then nothing is inferred from it."""
        return sql.SQL(
            "SELECT CASE WHEN w.seq IS NOT NULL AND t.n = 2 AND t.always THEN t.mark || '|' || coalesce(pg_sequence_last_value(w.seq), 0) END "
            "FROM (SELECT to_regclass({seq}) AS seq) AS w, "
            "(SELECT count(*) AS n, bool_and(tgenabled = 'A') AS always, string_agg(tgname || ':' || xmin::text, ',' ORDER BY tgname) AS mark "
            "FROM pg_trigger WHERE tgrelid = to_regclass({d}) AND tgname IN ({a}, {b})) AS t"
        ).format(
            seq=sql.Literal(self.text(self.writes)),
            d=sql.Literal(self.text(self.default_name)),
            a=sql.Literal(MIRROR_TRIGGER),
            b=sql.Literal(MIRROR_TRUNCATE_TRIGGER),
        )

    def deleted_copies(self) -> sql.Composable:
        """Forget the key log's entries and remove the copies of the rows among them that the DEFAULT no longer has.

        Batches take no row locks. A write's mirror deletes a row's copy by key, and it cannot see a copy a batch
        has made but not committed yet: a DELETE (or a key-changing UPDATE) of a row at that moment leaves its
        copy behind once the batch commits. The mirror logged that key, so after the last batch the copies of logged
        keys that the DEFAULT no longer holds are exactly those left behind; every later write is mirrored exactly
        (no batch runs any more). The statement's one row: (log entries forgotten, copies removed)."""
        keys = self.key.columns
        cols = sql.SQL(", ").join(map(sql.Identifier, keys))

        def of(alias: str) -> sql.Composable:
            return sql.SQL(", ").join(sql.Identifier(alias, k) for k in keys)

        return sql.SQL(
            "WITH taken AS (DELETE FROM {log} RETURNING {cols}), "
            "gone AS (SELECT DISTINCT {t} FROM taken t WHERE ({t}) IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM ONLY {d} x WHERE ({x}) = ({t}))), "
            "removed AS (DELETE FROM {sp} s USING gone g WHERE ({s}) = ({g}) RETURNING 1) "
            "SELECT (SELECT count(*) FROM taken), (SELECT count(*) FROM removed)"
        ).format(
            log=self.q(self.written),
            cols=cols,
            d=self.q(self.default_name),
            sp=self.q(self.shadow_parent),
            t=of("t"),
            x=of("x"),
            s=of("s"),
            g=of("g"),
        )

    def vacuum_key_log_step(self) -> Step:
        """After passes that emptied a large key log: the last pass, under SHARE, reads the log whole, dead entries
        included, unless VACUUM has cleared them (and cut the emptied pages off)."""
        return Step(
            "vacuum_key_log",
            self.written,
            (
                Statement(
                    sql.SQL("VACUUM {}").format(self.q(self.written)),
                    "(only after passes that emptied a large key log) SHARE UPDATE EXCLUSIVE on our key log (the "
                    "mirror's inserts go on; cutting emptied pages off "
                    "takes its ACCESS EXCLUSIVE only when free, and gives it up as soon as a write waits)",
                    scan=True,
                ),
            ),
            transactional=False,
        )

    def deleted_copies_step(self, then=None) -> Step:
        """`deleted_copies` for the log's last entries with no write to the DEFAULT in flight: exact whatever the
        application does, since none of its writes (nor their mirroring) can run meanwhile."""
        d = self.q(self.default_name)
        return Step(
            "drop_deleted_copies",
            self.default_name,
            (
                Statement(
                    sql.SQL("LOCK TABLE ONLY {} IN SHARE MODE").format(d),
                    f"SHARE on {self.default_name} for milliseconds: waits for in-flight writers (lock budget, circuit "
                    "breaker), holds new writes back; reads go on",
                ),
                *(Statement(setting, "none (planner setting, this transaction)") for setting in KEY_LOOKUPS_ONLY),
                Statement(
                    self.deleted_copies(),
                    f"(held) ROW EXCLUSIVE on our key log and copies; index lookups in {self.default_name} for the "
                    "keys written since the last pass",
                    then=then,
                ),
            ),
            lock_targets=(self.text(self.default_name),),
            strong_lock=True,
        )

    def verify_cut_step(self, on_snapshot=None) -> Step:
        """The instant the copies are verified at: no write to the DEFAULT is in flight (SHARE waits for them and holds
        new ones back for the few milliseconds of the export), so every later write counts in the write mark (and
        is logged in the key log with a count above the mark's)."""
        d = self.q(self.default_name)
        return Step(
            "verify_cut",
            self.default_name,
            (
                # Made here, not under the swap's lock: the swap's read-only triggers on the old DEFAULT call it.
                Statement(
                    sql.SQL("CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
                        self.q(self.read_only_function),
                        sql.Literal(
                            "BEGIN RAISE EXCEPTION 'pgmaint: %.% is the DEFAULT partition detached by a migration, kept read-only until "
                            "the rows it held are proven conserved and it is dropped (see the migrations journal)', TG_TABLE_SCHEMA, "
                            "TG_TABLE_NAME USING ERRCODE = 'read_only_sql_transaction'; END"
                        ),
                    ),
                    "none (our function)",
                ),
                Statement(
                    sql.SQL("LOCK TABLE ONLY {} IN SHARE MODE").format(d),
                    f"SHARE on {self.default_name} for milliseconds: waits for in-flight writers (lock budget, circuit "
                    "breaker), holds new writes back until the snapshot is exported; reads go on",
                ),
                Statement(
                    sql.SQL("SELECT pg_export_snapshot(), ({})").format(self.write_mark()),
                    "none (exports this instant's snapshot for the verification, with the write mark)",
                    then=on_snapshot,
                ),
            ),
            lock_targets=(self.text(self.default_name),),
            strong_lock=True,
        )

    def read_only_mark(self, name: str) -> sql.Composable:
        """The detached old DEFAULT `name` cannot have changed while this text is unchanged: its read-only triggers
        (ALWAYS) stand, untouched since the swap (catalog row versions), on the same file. NULL if not so."""
        return sql.SQL(
            "SELECT pg_relation_filenode(c.oid)::text || '|' || string_agg(t.tgname || ':' || t.xmin::text, ',' ORDER BY t.tgname) "
            "FROM pg_class c, pg_trigger t WHERE c.oid = to_regclass({n}) AND t.tgrelid = c.oid AND t.tgname IN ({a}, {b}) "
            "GROUP BY c.oid HAVING count(*) = 2 AND bool_and(t.tgenabled = 'A')"
        ).format(
            n=sql.Literal(self.text(name)), a=sql.Literal(READ_ONLY_TRIGGERS[0]), b=sql.Literal(READ_ONLY_TRIGGERS[1])
        )

    def analyze_step(self) -> Step:
        """Statistics for the shadows before they go live: never analyzed, a freshly attached partition gets plans
        for an empty table (a 'last minute' count turned into a scan of the whole day: 2 ms -> 250 ms per query,
        an API backlog of 20 s in the incident replay)."""
        tables = [r.partition for r in self.plan.move] + [self.next_name]
        return Step(
            "analyze_shadows",
            self.shadow_parent,
            (
                Statement(
                    sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(self.q(t) for t in tables)),
                    f"SHARE UPDATE EXCLUSIVE on our {len(tables)} shadow table(s) (samples them; mirrored writes go on)",
                    scan=True,
                ),
            ),
            lock_targets=tuple(self.text(t) for t in tables),
        )

    # --- 4. swap ------------------------------------------------------------------------------

    def swap_step(self, migration_id: int, on_snapshot=None, guard: sql.Composable | None = None) -> Step:
        f, sp = self.facts, self.q(self.shadow_parent)
        d, nxt = self.q(self.default_name), self.q(self.next_name)
        st = [
            Statement(
                sql.SQL("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE").format(self.parent),
                f"ACCESS EXCLUSIVE on {f.table} until commit: later statements wait before they are planned",
            ),
            Statement(
                sql.SQL("LOCK TABLE ONLY {}, {} IN ACCESS EXCLUSIVE MODE").format(d, sp),
                f"ACCESS EXCLUSIVE on {self.default_name} and {self.shadow_parent} (no writer can reach them now)",
            ),
        ]
        st.append(
            Statement(
                sql.SQL(
                    "UPDATE {}.migrations SET summary = summary || jsonb_build_object('write_mark_at_swap', ({})) "
                    "WHERE migration_id = {}"
                ).format(self.state, self.write_mark(), sql.Literal(migration_id)),
                "ROW EXCLUSIVE on the journal (no write can reach the DEFAULT any more: its write mark now)",
            )
        )
        if guard is not None:
            st.append(
                Statement(
                    guard,
                    "none (catalog read: the parent's partitions are still those the shadows were built for)",
                    expect_no_rows=True,
                )
            )
        st.append(
            Statement(
                sql.SQL("SELECT pg_export_snapshot()"),
                "none (the instant of the swap, exported so the moved rows are counted exactly as they are now)",
                then=on_snapshot,
            )
        )
        st += [
            Statement(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(self.parent, d),
                f"(held) catalog only: {self.default_name} leaves the parent",
            ),
            Statement(
                sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(MIRROR_TRIGGER), d), "(held) catalog only"
            ),
            Statement(
                sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(MIRROR_TRUNCATE_TRIGGER), d),
                "(held) catalog only",
            ),
            # From now on the old DEFAULT is read-only, so "unchanged since the swap" is a catalog check when it is dropped.
            Statement(
                sql.SQL(
                    "CREATE TRIGGER {} BEFORE INSERT OR UPDATE OR DELETE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()"
                ).format(sql.Identifier(READ_ONLY_TRIGGERS[0]), d, self.q(self.read_only_function)),
                "(held) catalog only",
            ),
            Statement(
                sql.SQL("CREATE TRIGGER {} BEFORE TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(
                    sql.Identifier(READ_ONLY_TRIGGERS[1]), d, self.q(self.read_only_function)
                ),
                "(held) catalog only",
            ),
            Statement(
                sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}, ENABLE ALWAYS TRIGGER {}").format(
                    d, sql.Identifier(READ_ONLY_TRIGGERS[0]), sql.Identifier(READ_ONLY_TRIGGERS[1])
                ),
                "(held) catalog only",
            ),
        ]
        for r in self.plan.move:
            st.append(
                Statement(
                    sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(sp, self.q(r.partition)),
                    f"ACCESS EXCLUSIVE on {r.partition} (catalog only)",
                )
            )
        st.append(
            Statement(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(sp, nxt),
                f"ACCESS EXCLUSIVE on {self.next_name} (catalog only)",
            )
        )
        for r in self.plan.move:
            st.append(
                Statement(
                    sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
                        self.parent, self.q(r.partition), sql.SQL("FOR VALUES ") + self._bounds(r.range)
                    ),
                    "(held) catalog only: its CHECK proves the bound and no DEFAULT is attached at this instant",
                )
            )
        for r in self.plan.move:  # proved the bound for ATTACH; a native partition has no such CHECK
            st.append(
                Statement(
                    sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                        self.q(r.partition), sql.Identifier(ddl.BOUND_CHECK)
                    ),
                    "(held) catalog only",
                )
            )
        st += [
            Statement(
                sql.SQL("ALTER TABLE {} ATTACH PARTITION {} DEFAULT").format(self.parent, nxt),
                f"(held) catalog only: {NEXT_DEFAULT_CHECK} proves it holds no row of any partition's range",
            ),
            Statement(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(d, sql.Identifier(self.old_name)), "(held) catalog only"
            ),
            Statement(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(nxt, sql.Identifier(self.default_name)),
                "(held) catalog only",
            ),
            # The old DEFAULT is only read (verification) and dropped; an autovacuum would only delay the DROP.
            Statement(
                sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(self.q(self.old_name)),
                "(held) catalog only",
            ),
            Statement(
                sql.SQL("COMMENT ON TABLE {} IS {}").format(
                    self.q(self.old_name),
                    sql.Literal(
                        f"pgmaint: {self.cfg.name}'s DEFAULT partition before migration {migration_id}; dropped once "
                        f"its rows are proven conserved (see {self.config.state_schema}.migrations)"
                    ),
                ),
                "(held) catalog only",
            ),
            Statement(
                sql.SQL(
                    "UPDATE {}.migrations SET phase = 'swapped', swapped_at = clock_timestamp(), updated_at = clock_timestamp(), "
                    "summary = summary || jsonb_build_object('read_only_mark', ({})) "
                    "WHERE migration_id = {}"
                ).format(self.state, self.read_only_mark(self.old_name), sql.Literal(migration_id)),
                "ROW EXCLUSIVE on the journal (same transaction as the swap)",
            ),
        ]
        targets = tuple(self.text(n) for n in (f.table, self.default_name))
        return Step("swap", f.table, tuple(st), lock_targets=targets, strong_lock=True, batched=True)

    # --- 5. tidy, or give up before the swap ----------------------------------------------------

    def tidy_steps(self) -> list[Step]:
        """After the swap: autovacuum back on for the new partitions, the new DEFAULT's exclusion CHECK (it would reject
        rows of a range retired later), the empty shadow parent, the trigger function. Each idempotent."""
        return [
            Step(
                "enable_autovacuum",
                self.facts.table,
                tuple(
                    Statement(
                        sql.SQL("ALTER TABLE {} RESET (autovacuum_enabled)").format(self.q(r.partition)),
                        f"SHARE UPDATE EXCLUSIVE on {r.partition} (a storage parameter; reads and writes go on)",
                    )
                    for r in self.plan.move
                ),
                lock_targets=tuple(self.text(r.partition) for r in self.plan.move),
            ),
            Step(
                "drop_next_default_check",
                self.default_name,
                (
                    Statement(
                        sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                            self.q(self.default_name), sql.Identifier(NEXT_DEFAULT_CHECK)
                        ),
                        f"ACCESS EXCLUSIVE on {self.default_name} (catalog only; under the lock budget and circuit breaker)",
                    ),
                ),
                lock_targets=(self.text(self.default_name),),
                strong_lock=True,
            ),
            Step(
                "drop_shadow_parent",
                self.shadow_parent,
                (
                    Statement(
                        sql.SQL("DROP TABLE IF EXISTS {}").format(self.q(self.shadow_parent)),
                        f"ACCESS EXCLUSIVE on {self.shadow_parent} only (ours, no partitions left)",
                    ),
                    Statement(
                        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(self.q(self.function)), "none (our function)"
                    ),
                    Statement(
                        sql.SQL("DROP SEQUENCE IF EXISTS {}").format(self.q(self.writes)), "none (our write counter)"
                    ),
                    Statement(sql.SQL("DROP TABLE IF EXISTS {}").format(self.q(self.written)), "none (our key log)"),
                ),
                lock_targets=(self.text(self.shadow_parent),),
            ),
        ]

    def abandon_steps(self) -> list[Step]:
        """Before the swap: remove the trigger, the shadows and the replacement DEFAULT. The DEFAULT keeps every row,
        as it did all along; nothing the application sees changes."""
        d = self.q(self.default_name)
        trigger_exists = sql.SQL(
            "SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass({}) AND tgname IN ({}, {})"
        ).format(
            sql.Literal(self.text(self.default_name)), sql.Literal(MIRROR_TRIGGER), sql.Literal(MIRROR_TRUNCATE_TRIGGER)
        )
        return [
            Step(
                "drop_mirror_trigger",
                self.default_name,
                (
                    Statement(
                        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(MIRROR_TRIGGER), d),
                        f"ACCESS EXCLUSIVE on {self.default_name} (catalog only; under the lock budget and circuit breaker)",
                    ),
                    Statement(
                        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(MIRROR_TRUNCATE_TRIGGER), d),
                        "(held) catalog only",
                    ),
                ),
                lock_targets=(self.text(self.default_name),),
                strong_lock=True,
            ),
            Step(
                "drop_shadows",
                self.shadow_parent,
                (
                    Statement(trigger_exists, "none (catalog read: the trigger is gone)", expect_no_rows=True),
                    Statement(
                        sql.SQL("DROP TABLE IF EXISTS {}").format(self.q(self.shadow_parent)),
                        f"ACCESS EXCLUSIVE on {self.shadow_parent} and its partitions (ours, never attached to {self.facts.table})",
                    ),
                    Statement(
                        sql.SQL("DROP TABLE IF EXISTS {}").format(self.q(self.next_name)),
                        f"ACCESS EXCLUSIVE on {self.next_name} (ours, never attached to {self.facts.table})",
                    ),
                    Statement(
                        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(self.q(self.function)), "none (our function)"
                    ),
                    Statement(
                        sql.SQL("DROP SEQUENCE IF EXISTS {}").format(self.q(self.writes)), "none (our write counter)"
                    ),
                    Statement(sql.SQL("DROP TABLE IF EXISTS {}").format(self.q(self.written)), "none (our key log)"),
                    Statement(
                        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(self.q(self.read_only_function)),
                        "none (our function)",
                    ),
                ),
                lock_targets=(self.text(self.shadow_parent),),
            ),
        ]

    def partitions_unchanged_guard(self, expected: list[str]) -> sql.Composable:
        """Returns a row if the parent's partitions differ from `expected`, those the replacement DEFAULT's CHECK was built for."""
        return sql.SQL(
            "SELECT 1 WHERE (SELECT coalesce(array_agg(c.relname::text ORDER BY c.relname::text), '{{}}') FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass({}) AND c.relname <> {}) "
            "IS DISTINCT FROM {}::text[]"
        ).format(
            sql.Literal(self.text(self.facts.table)), sql.Literal(self.default_name), sql.Literal(sorted(expected))
        )


__all__ = ["DefaultPartitionMigration", "MirrorKey", "merged_spans", "mirror_key", "refusals"]
