-- Services that write to partitioned tables: the `flag` kind's switches, the
-- function applications call, and the leases that record every pause.
-- `{schema}` is replaced by the quoted state_schema. See docs/services.md.

-- One row per `flag` service. A missing row means "enabled".
CREATE TABLE IF NOT EXISTS {schema}.service_flags (
    name        text PRIMARY KEY,
    enabled     boolean NOT NULL DEFAULT true,
    changed_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    changed_by  text,                        -- e.g. 'default_partition_migration/manual__2026-…' or a responder
    reason      text
);

-- What applications call before doing the work a flag guards:
--   IF pgmaint.service_enabled('request_logging') THEN INSERT INTO inbound_requests ...
-- SECURITY DEFINER with a fixed search_path: callers need USAGE on the schema only.
CREATE OR REPLACE FUNCTION {schema}.service_enabled(name text) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT f.enabled FROM {schema}.service_flags f WHERE f.name = $1), true)
$$;
GRANT EXECUTE ON FUNCTION {schema}.service_enabled(text) TO PUBLIC;

-- One row per (service, run) that holds a service paused.
--   state 'pausing'  the pause was started (previous_state already recorded, so it can be undone)
--         'paused'   this lease paused the service (episode = lease_id; previous_state is what to restore)
--         'joined'   the service was already paused by another live lease (episode = that lease);
--                    the service is resumed when the last live lease of the episode ends
--         'resumed'  this lease ended and the service was given back
--         'released' this lease ended while another live lease still held the service paused
-- Live = resumed_at IS NULL. A live lease past lease_until belongs to a run that died (or overran):
-- resume_expired_leases() gives the service back.
CREATE TABLE IF NOT EXISTS {schema}.service_leases (
    lease_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    service         text NOT NULL,
    kind            text NOT NULL,
    dag_id          text NOT NULL,           -- paused by: DAG id ...
    run_id          text NOT NULL,           -- ... and run id
    reason          text,
    state           text NOT NULL CHECK (state IN ('pausing', 'paused', 'joined', 'resumed', 'released')),
    episode         bigint,                  -- lease_id of the lease that actually paused the service
    paused_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_until     timestamptz NOT NULL,
    resumed_at      timestamptz,
    resumed_by      text,                    -- 'dag_id/run_id', or 'lease expired'
    previous_state  jsonb,                   -- adapter snapshot before the pause (what resume restores)
    service_config  jsonb NOT NULL DEFAULT '{}'::jsonb,  -- kind + options at pause time (headers left out)
    error           text                     -- last resume error, if any
);
-- A run holds at most one live lease per service; a service has at most one live pausing lease.
CREATE UNIQUE INDEX IF NOT EXISTS service_leases_live_run_idx
    ON {schema}.service_leases (service, dag_id, run_id) WHERE resumed_at IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS service_leases_live_episode_idx
    ON {schema}.service_leases (service) WHERE resumed_at IS NULL AND state IN ('pausing', 'paused');
CREATE INDEX IF NOT EXISTS service_leases_live_until_idx
    ON {schema}.service_leases (lease_until) WHERE resumed_at IS NULL;
