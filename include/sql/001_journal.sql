-- pgmaint journal: every run and every step, written by the DAGs and read by
-- the watchdog and responders. `{schema}` is replaced by the quoted state_schema.
CREATE TABLE IF NOT EXISTS {schema}.runs (
    run_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job          text NOT NULL,              -- maintenance | migration | ...
    table_name   text NOT NULL,              -- as configured, e.g. public.request_log
    dag_id       text,
    dag_run_id   text,
    task_id      text,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz,
    outcome      text NOT NULL DEFAULT 'running'
                 CHECK (outcome IN ('running', 'success', 'failed', 'skipped')),
    summary      jsonb NOT NULL DEFAULT '{}'::jsonb,
    error        text
);
CREATE INDEX IF NOT EXISTS runs_table_job_started_idx ON {schema}.runs (table_name, job, started_at DESC);

CREATE TABLE IF NOT EXISTS {schema}.steps (
    step_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id       bigint NOT NULL REFERENCES {schema}.runs (run_id) ON DELETE CASCADE,
    action       text NOT NULL,              -- create_table | attach | detach | drop | ...
    target       text NOT NULL,              -- the partition or constraint it is about
    statements   text[] NOT NULL,
    locks        text[] NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    outcome      text NOT NULL CHECK (outcome IN ('success', 'failed')),
    attempts     integer NOT NULL,
    error        text,
    blockers     jsonb NOT NULL DEFAULT '[]'::jsonb
);
CREATE INDEX IF NOT EXISTS steps_run_idx ON {schema}.steps (run_id);
