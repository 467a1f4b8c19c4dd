-- pgmaint's database role, with exactly what pgmaint needs and nothing more (docs/security.md).
-- Run as an administrator (a superuser, or a role with CREATEROLE that has ADMIN on the owner
-- role and owns the schemas), once per database and per schema of managed tables; idempotent:
--
--   psql "host=db dbname=app user=admin" -f include/sql/roles/pgmaint_role.sql \
--        -v owner=app_owner -v table_schema=public
--   psql "host=db dbname=app user=admin" -c '\password pgmaint'     -- then store it in your secrets backend
--
-- Variables (-v name=value):
--   owner            required: the role that owns the partitioned tables, their partitions and DEFAULTs
--   table_schema     schema of the managed tables (default: public); run again for each other schema
--   role             pgmaint's login role (default: pgmaint)
--   state_schema     pgmaint's state_schema (default: pgmaint)
--   connection_limit the role's CONNECTION LIMIT (default: 16; the Airflow pool's slots, the
--                    watchdog's two sessions, and a second session per migration's circuit breaker)
-- No password is set here: secrets do not belong in SQL files or shell history.
\set ON_ERROR_STOP on
\if :{?role}
\else
\set role pgmaint
\endif
\if :{?table_schema}
\else
\set table_schema public
\endif
\if :{?state_schema}
\else
\set state_schema pgmaint
\endif
\if :{?connection_limit}
\else
\set connection_limit 16
\endif
\if :{?owner}
\else
DO $$ BEGIN RAISE EXCEPTION 'pgmaint_role.sql: set -v owner=<the role that owns the partitioned tables>'; END $$;
\endif

-- 1. A login role that is not a superuser and cannot create databases, roles or replication
--    connections, nor bypass row security.
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') AS pgmaint_role_create \gset
\if :pgmaint_role_create
CREATE ROLE :"role" LOGIN;
\endif
ALTER ROLE :"role" LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    CONNECTION LIMIT :connection_limit;
-- pgmaint sets these on every session; on the role they also hold behind a pooler that drops startup options.
ALTER ROLE :"role" SET lock_timeout = '200ms';
ALTER ROLE :"role" SET statement_timeout = '10s';
ALTER ROLE :"role" SET idle_in_transaction_session_timeout = '30s';

-- 2. Ownership of the partitioned tables, through membership in their owner role: ATTACH / DETACH
--    PARTITION, the DEFAULT's CHECK constraints, DROP of expired partitions. (Membership counts
--    as ownership; ALTER TABLE parent OWNER TO would not cascade to the partitions.)
GRANT :"owner" TO :"role";

-- 3. Reach the tables and create new partitions (and the migration's replacement DEFAULT) beside them.
GRANT USAGE, CREATE ON SCHEMA :"table_schema" TO :"role";

-- 4. The state schema, owned by the role: pgmaint creates its tables there on first use and
--    upgrades them (CREATE on it, ownership of them). No CREATE on the database is needed.
SELECT NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :'state_schema') AS pgmaint_role_new_state \gset
\if :pgmaint_role_new_state
CREATE SCHEMA :"state_schema" AUTHORIZATION :"role";
\else
ALTER SCHEMA :"state_schema" OWNER TO :"role";
-- Objects an earlier run under another role created: give them to the role (the next upgrade alters them).
SELECT format('ALTER TABLE %I.%I OWNER TO %I', n.nspname, c.relname, :'role')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = :'state_schema' AND c.relkind IN ('r', 'p') AND c.relowner <> to_regrole(quote_ident(:'role'))
ORDER BY c.relname \gexec
SELECT format('ALTER FUNCTION %s OWNER TO %I', p.oid::regprocedure, :'role')
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = :'state_schema' AND p.proowner <> to_regrole(quote_ident(:'role'))
ORDER BY 1 \gexec
\endif

-- 5. See other roles' sessions in pg_stat_activity (pg_monitor includes pg_read_all_stats):
--    preflight, the watchdog's long-transaction and lock-wait checks, and the migration's wait
--    for old snapshots refuse to run blind without it.
GRANT pg_monitor TO :"role";

-- 6. Not needed once the state schema exists: CREATE on the database.
SELECT format('REVOKE CREATE ON DATABASE %I FROM %I', current_database(), :'role') \gexec

-- What the role has now (docs/security.md: and what it must not have).
SELECT r.rolname AS role, r.rolsuper AS superuser, r.rolcreatedb AS createdb, r.rolcreaterole AS createrole,
       r.rolreplication AS replication, r.rolbypassrls AS bypassrls, r.rolconnlimit AS connection_limit,
       (SELECT string_agg(m.roleid::regrole::text, ', ' ORDER BY 1) FROM pg_auth_members m WHERE m.member = r.oid) AS member_of
FROM pg_roles r WHERE r.rolname = :'role';
