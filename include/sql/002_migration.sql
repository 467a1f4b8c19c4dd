-- default_partition_migration: one row per migration of a table's DEFAULT partition, written
-- in the same transaction as the swap that starts it, and advanced in the same transaction as
-- every batch of rows it moves (so a killed run resumes exactly where it stopped).
CREATE TABLE IF NOT EXISTS {schema}.migrations (
    migration_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name    text NOT NULL,              -- as configured
    drain_table   text NOT NULL,              -- the detached old DEFAULT, quoted and qualified
    phase         text NOT NULL DEFAULT 'draining' CHECK (phase IN ('draining', 'done', 'failed')),
    partitions    jsonb NOT NULL,             -- the partitions attached by the swap
    total_pages   bigint,                     -- drain table size when draining began
    next_page     bigint,                     -- pages >= next_page are drained (we drain backwards)
    rows_moved    bigint NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at   timestamptz,
    summary       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE UNIQUE INDEX IF NOT EXISTS migrations_one_active_per_table
    ON {schema}.migrations (table_name) WHERE phase = 'draining';

-- Row counts and order-independent checksums per interval bucket: 'before' (the drain table
-- when draining began) and 'moved' (summed over batches). Equal per bucket = nothing lost or
-- duplicated.
CREATE TABLE IF NOT EXISTS {schema}.migration_figures (
    migration_id  bigint NOT NULL REFERENCES {schema}.migrations ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('before', 'moved')),
    bucket        text NOT NULL,              -- interval start, or 'NULL' for rows without a key
    rows          bigint NOT NULL,
    checksum      numeric NOT NULL,
    PRIMARY KEY (migration_id, kind, bucket)
);
