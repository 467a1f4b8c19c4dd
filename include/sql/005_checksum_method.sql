-- How a migration's row checksums are computed, so every reader (the drain, the verification,
-- the data-quality gate) computes them the same way: 'record' = hash_record_extended(row, 0)
-- (fast: hashes the values, PostgreSQL 14+); 'text' = hashtextextended(row::text, 0) (for
-- tables with a column type that has no hash function, e.g. json or point).
ALTER TABLE {schema}.migrations ADD COLUMN IF NOT EXISTS checksum text NOT NULL DEFAULT 'text'
    CHECK (checksum IN ('record', 'text'));
