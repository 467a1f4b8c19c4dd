-- Copy-first migrations (default_partition_migration since 006): the rows are copied into
-- shadow partitions while a trigger mirrors every write, then one short swap attaches them.
--   preparing  shadow tables being created (nothing in use is touched yet)
--   copying    mirror trigger on the DEFAULT; rows being copied (next_page = first page not copied)
--   swapped    shadows attached, the old DEFAULT detached and kept as drain_table until verified
--   done       old DEFAULT dropped after the gate;  abandoned  cleaned up before the swap
--   draining   (before 006) the drain design; failed: stopped, needs a person
ALTER TABLE {schema}.migrations DROP CONSTRAINT IF EXISTS migrations_phase_check;
ALTER TABLE {schema}.migrations ADD CONSTRAINT migrations_phase_check
    CHECK (phase IN ('preparing', 'copying', 'swapped', 'draining', 'done', 'failed', 'abandoned'));
ALTER TABLE {schema}.migrations ALTER COLUMN drain_table DROP NOT NULL;
ALTER TABLE {schema}.migrations ADD COLUMN IF NOT EXISTS method text NOT NULL DEFAULT 'drain'
    CHECK (method IN ('drain', 'copy'));
ALTER TABLE {schema}.migrations ADD COLUMN IF NOT EXISTS rows_copied bigint NOT NULL DEFAULT 0;
ALTER TABLE {schema}.migrations ADD COLUMN IF NOT EXISTS swapped_at timestamptz;
ALTER TABLE {schema}.migrations ADD COLUMN IF NOT EXISTS verified_at timestamptz;
DROP INDEX IF EXISTS {schema}.migrations_one_active_per_table;
CREATE UNIQUE INDEX IF NOT EXISTS migrations_one_open_per_table
    ON {schema}.migrations (table_name) WHERE phase IN ('preparing', 'copying', 'swapped', 'draining');
-- What the migration moves ([{"partition", "lower", "upper", "rows"}]) and the parent's partitions
-- when it was prepared (the swap refuses if they changed: the replacement DEFAULT's CHECK was built for them).
ALTER TABLE {schema}.migrations ADD COLUMN IF NOT EXISTS moves jsonb;
ALTER TABLE {schema}.migrations ADD COLUMN IF NOT EXISTS partitions_before jsonb;
