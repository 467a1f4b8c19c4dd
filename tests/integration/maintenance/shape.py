"""The catalog shape of one table: what a partition "looks like" to PostgreSQL and to its users.

`relation_shape(conn, schema, name)` reads columns (type, collation, NOT NULL, default, identity,
generated, storage, compression, statistics target), the identity or serial sequences the table's
own columns own, constraints, indexes (and which parent index each is attached to), triggers,
policies, extended statistics, comments, owner, ACL, storage parameters, replica identity,
persistence, tablespace, access method and row security. The table's own name is replaced by
`<t>` everywhere (index, constraint, sequence names and definitions), so a partition made by
pgmaint and one made by `CREATE TABLE … PARTITION OF` can be compared with `==`.
"""

from __future__ import annotations

from psycopg import sql

_RELATION = """
SELECT pg_get_userbyid(c.relowner), c.relacl::text, c.reloptions, c.relreplident::text, c.relpersistence::text,
       coalesce(ts.spcname, ''), coalesce(am.amname, ''), c.relrowsecurity, c.relforcerowsecurity,
       obj_description(c.oid, 'pg_class'), c.relispartition
FROM pg_class c
LEFT JOIN pg_tablespace ts ON ts.oid = c.reltablespace
LEFT JOIN pg_am am ON am.oid = c.relam
WHERE c.oid = %(rel)s::regclass
"""

_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), coalesce(co.collname, ''), a.attnotnull,
       coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attidentity::text, a.attgenerated::text,
       a.attstorage::text, a.attcompression::text, coalesce(a.attstattarget::int, -1),
       coalesce(col_description(a.attrelid, a.attnum), ''), a.attislocal, a.attinhcount::int
FROM pg_attribute a
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 0
WHERE a.attrelid = %(rel)s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

# Sequences owned by a column of this very table (an identity's or a serial's own sequence).
_OWNED_SEQUENCES = """
SELECT s.relname, a.attname, d.deptype::text
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid = %(rel)s::regclass AND d.deptype IN ('a', 'i')
ORDER BY 1
"""

_CONSTRAINTS = """
SELECT k.conname, k.contype::text, pg_get_constraintdef(k.oid), k.convalidated, k.condeferrable, k.condeferred,
       coalesce(obj_description(k.oid, 'pg_constraint'), ''), k.conislocal, k.coninhcount::int
FROM pg_constraint k
WHERE k.conrelid = %(rel)s::regclass
ORDER BY k.contype, pg_get_constraintdef(k.oid)
"""

_INDEXES = """
SELECT ic.relname, pg_get_indexdef(i.indexrelid), i.indisprimary, i.indisunique, i.indisreplident,
       ic.reloptions, coalesce(ts.spcname, ''), coalesce(pc.relname, ''),
       coalesce(obj_description(i.indexrelid, 'pg_class'), '')
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
LEFT JOIN pg_tablespace ts ON ts.oid = ic.reltablespace
LEFT JOIN pg_inherits h ON h.inhrelid = i.indexrelid
LEFT JOIN pg_class pc ON pc.oid = h.inhparent
WHERE i.indrelid = %(rel)s::regclass
ORDER BY pg_get_indexdef(i.indexrelid)
"""

_TRIGGERS = """
SELECT t.tgname, pg_get_triggerdef(t.oid), t.tgenabled::text
FROM pg_trigger t
WHERE t.tgrelid = %(rel)s::regclass AND NOT t.tgisinternal
ORDER BY 1
"""

_OTHER = """
SELECT (SELECT coalesce(array_agg(polname::text ORDER BY polname), '{}') FROM pg_policy WHERE polrelid = %(rel)s::regclass),
       (SELECT coalesce(array_agg(stxname::text ORDER BY stxname), '{}') FROM pg_statistic_ext WHERE stxrelid = %(rel)s::regclass),
       (SELECT coalesce(array_agg(rulename::text ORDER BY rulename), '{}') FROM pg_rewrite WHERE ev_class = %(rel)s::regclass)
"""


def relation_shape(conn, schema: str, name: str) -> dict:
    rel = sql.Identifier(schema, name).as_string(None)
    args = {"rel": rel}

    def norm(value):
        if isinstance(value, str):
            return value.replace(rel, "<t>").replace(name, "<t>")
        if isinstance(value, (list, tuple)):
            return type(value)(norm(v) for v in value)
        return value

    def rows(query: str) -> list[tuple]:
        return [norm(tuple(r)) for r in conn.execute(query, args).fetchall()]

    owner, acl, options, replident, persistence, tablespace, am, rls, force_rls, comment, is_partition = conn.execute(
        _RELATION, args
    ).fetchone()
    policies, statistics, rules = conn.execute(_OTHER, args).fetchone()
    return {
        "owner": owner,
        "acl": acl,
        "reloptions": options,
        "replica_identity": replident,
        "persistence": persistence,
        "tablespace": tablespace,
        "access_method": am,
        "row_security": (rls, force_rls),
        "comment": comment,
        "is_partition": is_partition,
        "columns": rows(_COLUMNS),
        "owned_sequences": rows(_OWNED_SEQUENCES),
        "constraints": sorted(rows(_CONSTRAINTS)),
        "indexes": sorted(rows(_INDEXES)),
        "triggers": rows(_TRIGGERS),
        "policies": norm(list(policies)),
        "statistics": norm(list(statistics)),
        "rules": norm(list(rules)),
    }


def differences(a: dict, b: dict) -> dict:
    """{key: (a's value, b's value)} for every key on which the shapes differ."""
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
